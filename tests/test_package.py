"""The deployment artifact works on its own, and the stages it deploys to are bounded and least-privileged.

`chalice package --stage prod` is built once per test session: about 12 s on a fresh checkout
(it downloads the Lambda wheels), about 2 s once .chalice/deployments caches them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools import embedded
from tests.conftest import CHALICE, ENCRYPTION_KEY, ROOT, SERVER_OPENAI_KEY

CONFIG = json.loads((ROOT / ".chalice" / "config.json").read_text())
DEPLOYED_STAGES = ("staging", "prod")
API_GATEWAY_TIMEOUT = 29
# Seconds a function keeps after the upstream budget: the two database round trips and the answer.
ANSWER_ROOM = 3
# Run inside the unzipped package, as Lambda would: migrate, make a user with the package's own code,
# answer a tools/call and a health check. Prints where each module came from, and the answers.
PROBE = """
import importlib.util, json, os, sys, uuid

import app
from chalicelib import auth
from chalicelib.db import get_database

migrated = app.migrate({}, None)
user_id = "pkg-" + uuid.uuid4().hex[:8]
token = auth.new_token()
get_database().one("add_user", user_id=user_id, display_name=user_id, role="user")
get_database().one("issue_token", user_id=user_id, token_hash=auth.hash_token(token), label="pkg", expires_days=None)

def event(method, path, headers, body=None):
    headers = {"Host": "127.0.0.1", **headers}
    return {"resource": path, "path": path, "httpMethod": method, "headers": headers,
            "multiValueHeaders": {name: [value] for name, value in headers.items()},
            "queryStringParameters": None, "multiValueQueryStringParameters": None, "pathParameters": None,
            "stageVariables": None, "body": body, "isBase64Encoded": False,
            "requestContext": {"resourcePath": path, "httpMethod": method, "path": "/api" + path, "stage": "api",
                               "requestId": str(uuid.uuid4()), "identity": {"sourceIp": "127.0.0.1"}}}

body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "chatgpt_complete", "arguments": {"messages": [{"role": "user", "content": "from the package"}]}}})
call = app.app(event("POST", "/mcp", {"Authorization": "Bearer " + token, "Content-Type": "application/json",
                                      "Accept": "application/json, text/event-stream",
                                      "MCP-Protocol-Version": "2025-11-25"}, body), None)
health = app.app(event("GET", "/health", {}), None)
here = os.getcwd()
print(json.dumps({
    "migrated": migrated,
    "call": json.loads(call["body"]),
    "health": {"status": health["statusCode"], "body": json.loads(health["body"])},
    "outside": sorted(name for name, module in sys.modules.items()
                      if name.split(".")[0] in ("app", "chalicelib", "chalice")
                      and not (getattr(module, "__file__", None) or here).startswith(here)),
    "checkout_reachable": [name for name in ("devtools", "tests", "bench") if importlib.util.find_spec(name)],
}))
"""


@dataclass(frozen=True)
class Package:
    """`chalice package --stage prod`: its folder (deployment.zip, sam.json) and the zip unpacked."""

    output: Path
    unzipped: Path

    @property
    def names(self) -> list[str]:
        with zipfile.ZipFile(self.output / "deployment.zip") as archive:
            return archive.namelist()


@pytest.fixture(scope="session")
def package(tmp_path_factory: pytest.TempPathFactory) -> Package:
    output = tmp_path_factory.mktemp("package")
    env = {**os.environ, "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"}
    subprocess.run(
        [CHALICE, "package", "--stage", "prod", str(output)], cwd=ROOT, env=env, check=True, capture_output=True
    )
    unzipped = tmp_path_factory.mktemp("deployment")
    with zipfile.ZipFile(output / "deployment.zip") as archive:
        archive.extractall(unzipped)
    return Package(output=output, unzipped=unzipped)


def test_the_package_alone_migrates_a_fresh_database_and_answers_a_tool_call(package, admin_database_url, fake_openai):
    name = f"chitty_package_{uuid.uuid4().hex[:8]}"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("CHITTY_", "OPENAI_", "PYTHON"))}
    env.update(
        PYTHONPATH=str(package.unzipped),
        CHITTY_DATABASE_URL=embedded.with_database(admin_database_url, name),
        OPENAI_BASE_URL=fake_openai.base_url,
        OPENAI_API_KEY=SERVER_OPENAI_KEY,
        CHITTY_ENCRYPTION_KEY=ENCRYPTION_KEY,
    )
    try:
        completed = subprocess.run(
            [sys.executable, "-c", PROBE], cwd=package.unzipped, env=env, capture_output=True, text=True, check=False
        )
    finally:
        embedded.drop_database(admin_database_url, name)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    migrations = sorted(path.name for path in (ROOT / "sql" / "migrations").glob("*.sql"))
    definitions = sorted(f"definitions/{path.name}" for path in (ROOT / "sql" / "definitions").glob("*.sql"))
    catalogues = sorted(f"catalogue/{path.name}" for path in (ROOT / "sql" / "catalogue").glob("*.json"))
    assert report["migrated"]["applied"] == migrations + definitions + catalogues
    result = report["call"]["result"]
    assert result["isError"] is False, result
    assert result["content"][0]["text"] == "echo: from the package"
    assert report["health"]["status"] == 200
    assert report["health"]["body"]["status"] == "ok"
    assert report["outside"] == []
    assert report["checkout_reachable"] == []


def test_the_package_carries_the_sql_and_none_of_the_development_files(package):
    names = package.names

    for folder, files in (
        ("migrations", "*.sql"),
        ("definitions", "*.sql"),
        ("queries", "*.sql"),
        ("catalogue", "*.json"),
    ):
        shipped = sorted(name.rsplit("/", 1)[1] for name in names if name.startswith(f"sql/{folder}/"))
        assert shipped == sorted(path.name for path in (ROOT / "sql" / folder).glob(files))
        assert shipped
    assert {"app.py", "chalicelib/service.py", "chalicelib/telemetry.py"} <= set(names)
    assert not [name for name in names if name.split("/")[0] in ("tests", "devtools", "bench", "vendor", ".chalice")]


def test_the_sam_template_passes_cfn_lint(package):
    linted = subprocess.run(
        [str(Path(sys.executable).parent / "cfn-lint"), str(package.output / "sam.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_template_deploys_the_migrate_function_with_a_longer_timeout_than_the_api(package):
    resources = json.loads((package.output / "sam.json").read_text())["Resources"]

    assert resources["Migrate"]["Properties"]["Handler"] == "app.migrate"
    assert resources["Migrate"]["Properties"]["Timeout"] > resources["APIHandler"]["Properties"]["Timeout"]


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_a_deployed_stage_always_answers_before_api_gateway_gives_up(stage):
    settings = CONFIG["stages"][stage]
    upstream = float(settings["environment_variables"]["CHITTY_UPSTREAM_TIMEOUT"])

    assert upstream + ANSWER_ROOM <= settings["lambda_timeout"] < API_GATEWAY_TIMEOUT


@pytest.mark.parametrize("stage", DEPLOYED_STAGES)
def test_a_deployed_stage_may_read_only_its_own_secret_and_kms_key(stage):
    settings = CONFIG["stages"][stage]
    variables = settings["environment_variables"]
    assert CONFIG["autogen_policy"] is False
    policy = json.loads((ROOT / ".chalice" / settings["iam_policy_file"]).read_text())
    statements = {statement["Sid"]: statement for statement in policy["Statement"]}

    assert all(statement["Effect"] == "Allow" and "*" not in statement["Action"] for statement in statements.values())
    assert statements["ReadStageSecret"]["Action"] == "secretsmanager:GetSecretValue"
    assert statements["ReadStageSecret"]["Resource"].endswith(f":secret:{variables['CHITTY_SECRET_ID']}-??????")
    kms = statements["SealStoredApiKeys"]
    assert sorted(kms["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]
    assert kms["Condition"]["ForAnyValue:StringEquals"]["kms:ResourceAliases"] == variables["CHITTY_KMS_KEY_ID"]
    assert statements["WriteOwnLogs"]["Resource"].endswith(f":log-group:/aws/lambda/chitty-chatgpt-mcp-{stage}*")
    # The only function a stage may invoke is its own jobs function, asynchronously, for background completions.
    jobs = statements["StartBackgroundJobs"]
    assert jobs["Action"] == "lambda:InvokeFunction"
    assert jobs["Resource"] == f"arn:aws:lambda:*:*:function:chitty-chatgpt-mcp-{stage}-jobs"
    assert settings["lambda_functions"]["jobs"]["lambda_timeout"] == 900
    assert variables["CHITTY_JOB_RUNNER"] == "lambda"
    assert set(statements) == {"WriteOwnLogs", "ReadStageSecret", "SealStoredApiKeys", "StartBackgroundJobs"}

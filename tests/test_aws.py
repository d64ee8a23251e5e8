"""Running on AWS: secrets from Secrets Manager, KMS envelopes for stored keys, EMF metrics, the migrate function.

AWS is moto's. Whatever runs the app does so in a fresh process, as a Lambda container would:
the probe below imports app.py and hands it API Gateway events, under moto when a test needs AWS.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time
import uuid

import pytest
from moto import mock_aws

from chalicelib import config, crypto, migrate
from chalicelib.config import ConfigError
from chalicelib.crypto import EnvelopeSealer, SealBroken, Sealer, open_envelope, parse_key
from chalicelib.db import connection
from chalicelib.migrate import discover, discover_catalogues, discover_definitions
from devtools import embedded
from devtools.fake_openai import Reply, bad_request
from tests.clients import post
from tests.conftest import ENCRYPTION_KEY, ROOT, server_env

FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
KMS_ALIAS = "alias/chitty-test"
# Runs tools/call requests through app.app as Lambda would, after setting up moto's AWS when asked.
# argv: setup (JSON: kms_alias, secret_id, secret), calls (JSON: [token, tool, arguments]...).
PROBE = """
import json, sys
setup, calls = json.loads(sys.argv[1]), json.loads(sys.argv[2])
if setup:
    from moto import mock_aws
    mock_aws().start()
    import boto3
    if setup.get("kms_alias"):
        kms = boto3.client("kms")
        kms.create_alias(AliasName=setup["kms_alias"], TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
    if setup.get("secret_id"):
        boto3.client("secretsmanager").create_secret(Name=setup["secret_id"], SecretString=json.dumps(setup["secret"]))

from devtools.apigateway import LambdaContext, proxy_event
import app

kms_operations = []
if setup:
    from chalicelib import crypto
    crypto.kms_client().meta.events.register("before-call.kms", lambda model, **_: kms_operations.append(model.name))

answers = []
for rpc_id, (token, name, arguments) in enumerate(calls, start=1):
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
               "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
    body = json.dumps({"jsonrpc": "2.0", "id": rpc_id, "method": "tools/call",
                       "params": {"name": name, "arguments": arguments}})
    event = proxy_event("POST", "/mcp", headers, body)
    answer = app.app(event, LambdaContext())
    answers.append({"request_id": event["requestContext"]["requestId"], "rpc_id": rpc_id,
                    "result": json.loads(answer["body"])["result"]})
print(json.dumps({"answers": answers, "kms_operations": kms_operations,
                  "imported": sorted(name for name in ("boto3", "openai", "aws_xray_sdk") if name in sys.modules)}))
"""


def run_probe(env, calls, setup=None):
    """Run PROBE in a fresh process; returns its report and the JSON lines it wrote before it."""
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(setup or {}), json.dumps(calls)],
        cwd=ROOT,
        env={**os.environ, **FAKE_AWS, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.strip().splitlines()
    return json.loads(lines[-1]), [json.loads(line) for line in lines[:-1] if line.startswith("{")]


def ask(user, text="hello"):
    return [user.token, "chatgpt_complete", {"messages": [{"role": "user", "content": text}]}]


def rows(database_url, sql, **params):
    with connection(database_url) as conn:
        result = conn.run(sql, **params)
        names = [column["name"] for column in conn.columns or []]
    return [dict(zip(names, row, strict=True)) for row in result]


@pytest.fixture
def fresh_settings(monkeypatch):
    """Settings, secrets and the KMS client read anew in this test (under moto's AWS), and again after it."""
    from aws_lambda_powertools.utilities import parameters

    def forget():
        config.get_settings.cache_clear()
        config.stored_secrets.cache_clear()
        crypto.kms_client.cache_clear()
        parameters.clear_caches()

    for name, value in FAKE_AWS.items():
        monkeypatch.setenv(name, value)
    for name in (*config.SECRET_SETTINGS, "CHITTY_SECRET_ID", "CHITTY_KMS_KEY_ID", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    forget()
    with mock_aws():
        yield
    forget()


def store_secret(value):
    import boto3

    secret_id = f"chitty/test-{uuid.uuid4().hex[:8]}"
    secret_string = value if isinstance(value, str) else json.dumps(value)
    boto3.client("secretsmanager").create_secret(Name=secret_id, SecretString=secret_string)
    return secret_id


# Secrets


def test_secret_settings_come_from_the_stage_secret_when_the_environment_has_none(fresh_settings, monkeypatch):
    secret = {
        "OPENAI_API_KEY": "sk-from-secrets-manager-0001",
        "CHITTY_DATABASE_URL": "postgres://chitty:pw@db.example.com/chitty",
        "CHITTY_ENCRYPTION_KEY": ENCRYPTION_KEY,
    }
    monkeypatch.setenv("CHITTY_SECRET_ID", store_secret(secret))

    settings = config.get_settings()

    assert settings.openai_api_key == secret["OPENAI_API_KEY"]
    assert settings.database_url == secret["CHITTY_DATABASE_URL"]
    assert settings.encryption_key == ENCRYPTION_KEY


def test_an_environment_variable_wins_over_the_secret(fresh_settings, monkeypatch):
    secret_id = store_secret({"OPENAI_API_KEY": "sk-from-secret", "CHITTY_DATABASE_URL": "postgres://secret/db"})
    monkeypatch.setenv("CHITTY_SECRET_ID", secret_id)
    monkeypatch.setenv("CHITTY_DATABASE_URL", "postgres://from-env/db")

    settings = config.get_settings()

    assert settings.database_url == "postgres://from-env/db"
    assert settings.openai_api_key == "sk-from-secret"
    assert settings.encryption_key is None


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot be read"),
        ("postgres://not-json", "is not JSON"),
        ('["a list"]', "must hold a JSON object"),
        ({"DATABASE_URL": "postgres://typo/db"}, "unknown keys ['DATABASE_URL']"),
    ],
)
def test_an_unreadable_or_malformed_secret_is_a_configuration_error_naming_it(
    fresh_settings, monkeypatch, content, message
):
    secret_id = "chitty/absent" if content is None else store_secret(content)
    monkeypatch.setenv("CHITTY_SECRET_ID", secret_id)

    with pytest.raises(ConfigError, match="CHITTY_SECRET_ID") as raised:
        _ = config.get_settings().database_url

    assert secret_id in str(raised.value)
    assert message in str(raised.value)


def test_a_completion_runs_on_the_database_and_key_from_secrets_manager(database_url, fake_openai, alice):
    secret_key = "sk-from-secrets-manager-" + "m" * 12 + "SMGR"
    secret = {
        "CHITTY_DATABASE_URL": database_url,
        "OPENAI_API_KEY": secret_key,
        "CHITTY_ENCRYPTION_KEY": ENCRYPTION_KEY,
    }
    env = {name: "" for name in config.SECRET_SETTINGS}
    env.update(CHITTY_SECRET_ID="chitty/test", OPENAI_BASE_URL=fake_openai.base_url)

    report, _ = run_probe(env, [ask(alice)], setup={"secret_id": "chitty/test", "secret": secret})

    assert report["answers"][0]["result"]["isError"] is False
    assert fake_openai.chat_requests[-1].api_key == secret_key


def test_without_a_secret_source_neither_boto3_nor_the_xray_sdk_is_imported(database_url, fake_openai, alice):
    report, _ = run_probe(
        server_env(database_url, fake_openai),
        [[alice.token, "chitty_api_key_set", {"api_key": "sk-alice-local-" + "l" * 16}], ask(alice)],
    )

    assert [answer["result"]["isError"] for answer in report["answers"]] == [False, False]
    assert report["imported"] == ["openai"]


# KMS envelope encryption of stored keys


def kms_env(database_url, fake, alias=KMS_ALIAS):
    return {**server_env(database_url, fake), "CHITTY_KMS_KEY_ID": alias}


def test_with_kms_a_stored_key_is_wrapped_by_kms_and_a_completion_unwraps_it(database_url, fake_openai, alice):
    api_key = "sk-alice-kms-" + "k" * 20 + "AKMS"

    report, _ = run_probe(
        kms_env(database_url, fake_openai),
        [[alice.token, "chitty_api_key_set", {"api_key": api_key}], ask(alice)],
        setup={"kms_alias": KMS_ALIAS},
    )

    assert [answer["result"]["isError"] for answer in report["answers"]] == [False, False]
    assert report["kms_operations"] == ["GenerateDataKey", "Decrypt"]
    assert fake_openai.chat_requests[-1].api_key == api_key
    (row,) = rows(database_url, "SELECT * FROM api_keys WHERE user_id = :user_id", user_id=alice.user_id)
    assert row["wrapped_data_key"]
    assert row["key_fingerprint"].startswith("kms:")
    assert api_key.encode() not in bytes(row["ciphertext"])
    with pytest.raises(SealBroken):
        Sealer(parse_key(ENCRYPTION_KEY)).open(
            crypto.Sealed(bytes(row["ciphertext"]), bytes(row["nonce"]), row["key_fingerprint"]),
            alice.user_id,
            str(row["id"]),
        )


def test_keys_sealed_locally_before_kms_was_turned_on_still_open_without_kms(server, database_url, fake_openai, bob):
    api_key = "sk-bob-local-" + "b" * 20 + "BLOC"
    stored = post(
        server.mcp_url,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "chitty_api_key_set", "arguments": {"api_key": api_key}},
        },
        token=bob.token,
    )
    assert stored.json()["result"]["isError"] is False

    report, _ = run_probe(kms_env(database_url, fake_openai), [ask(bob)], setup={"kms_alias": KMS_ALIAS})

    assert report["answers"][0]["result"]["isError"] is False
    assert fake_openai.chat_requests[-1].api_key == api_key
    assert report["kms_operations"] == []


def test_when_kms_refuses_setting_a_key_says_so_and_stores_nothing(database_url, fake_openai, alice):
    report, _ = run_probe(
        kms_env(database_url, fake_openai, alias="alias/chitty-missing"),
        [[alice.token, "chitty_api_key_set", {"api_key": "sk-alice-" + "x" * 24}]],
        setup={"kms_alias": KMS_ALIAS},
    )

    result = report["answers"][0]["result"]
    assert result["isError"] is True
    assert "AWS KMS refused" in result["content"][0]["text"]
    assert "NotFoundException" in result["content"][0]["text"]
    assert rows(database_url, "SELECT id FROM api_keys WHERE user_id = :user_id", user_id=alice.user_id) == []


def test_a_wrapped_key_opens_only_for_its_own_user_and_key_id(fresh_settings):
    import boto3

    kms = boto3.client("kms")
    kms.create_alias(AliasName=KMS_ALIAS, TargetKeyId=kms.create_key()["KeyMetadata"]["KeyId"])
    sealed = EnvelopeSealer(KMS_ALIAS).seal("sk-secret-value-1234", "alice", "key-1")

    assert open_envelope(sealed, "alice", "key-1") == "sk-secret-value-1234"
    with pytest.raises(SealBroken):
        open_envelope(sealed, "mallory", "key-1")
    with pytest.raises(SealBroken):
        open_envelope(sealed, "alice", "key-2")


def test_rotating_the_local_encryption_key_leaves_kms_sealed_keys_alone(admin_database_url):
    name = f"chitty_rotate_{uuid.uuid4().hex[:8]}"
    url = embedded.with_database(admin_database_url, name)
    insert = """INSERT INTO api_keys (id, user_id, last_four, ciphertext, nonce, key_fingerprint, wrapped_data_key)
                VALUES (CAST(:id AS uuid), :user_id, 'abcd', :ciphertext, :nonce, :fingerprint, :wrapped)"""
    local_id, kms_id = str(uuid.uuid4()), str(uuid.uuid4())
    local = Sealer(parse_key(ENCRYPTION_KEY)).seal("sk-local-" + "l" * 20, "carol", local_id)
    new_key = base64.b64encode(os.urandom(32)).decode()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHITTY_")}
    env.update(CHITTY_DATABASE_URL=url, CHITTY_OLD_ENCRYPTION_KEY=ENCRYPTION_KEY, CHITTY_ENCRYPTION_KEY=new_key)
    try:
        with connection(url) as conn:
            migrate.apply(conn)
            conn.run("INSERT INTO users (id, display_name) VALUES ('carol', 'carol')")
            conn.run(
                insert,
                id=local_id,
                user_id="carol",
                ciphertext=local.ciphertext,
                nonce=local.nonce,
                fingerprint=local.fingerprint,
                wrapped=None,
            )
            # A user has one active key: the one sealed before KMS was turned on was replaced since.
            conn.run("UPDATE api_keys SET status = 'revoked' WHERE id = CAST(:id AS uuid)", id=local_id)
            conn.run(
                insert,
                id=kms_id,
                user_id="carol",
                ciphertext=b"sealed under a data key",
                nonce=b"n" * 12,
                fingerprint="kms:0123456789abcdef",
                wrapped=b"wrapped by KMS",
            )
        rotated = subprocess.run(
            [sys.executable, "-m", "chalicelib.cli", "keys", "reencrypt"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        kms_row, local_row = (
            rows(url, "SELECT * FROM api_keys WHERE id = CAST(:id AS uuid)", id=key_id)[0]
            for key_id in (kms_id, local_id)
        )
    finally:
        embedded.drop_database(admin_database_url, name)

    assert rotated.returncode == 0, rotated.stderr
    assert "re-encrypted 1 stored key" in rotated.stdout
    assert (bytes(kms_row["ciphertext"]), kms_row["key_fingerprint"]) == (
        b"sealed under a data key",
        "kms:0123456789abcdef",
    )
    assert local_row["key_fingerprint"] == Sealer(parse_key(new_key)).fingerprint


# Metrics (EMF) and logs


def emf_user(database_url) -> str:
    """A fresh user's token."""
    from chalicelib import auth
    from chalicelib.db import SQL_DIR, Database, load_queries

    db = Database(url=database_url, queries=load_queries(SQL_DIR / "queries"))
    user_id = f"emf-{uuid.uuid4().hex[:8]}"
    db.one("add_user", user_id=user_id, display_name=user_id, role="user")
    token = auth.new_token()
    db.one("issue_token", user_id=user_id, token_hash=auth.hash_token(token), label="emf", expires_days=None)
    db.discard()
    return token


def probe_three_calls(database_url, fake_openai_server, **env):
    """A completion, a failed completion and a failed tool call in one process: its report and JSON lines."""
    token = emf_user(database_url)
    calls = [
        [token, "chatgpt_complete", {"messages": [{"role": "user", "content": "count my tokens"}]}],
        [token, "chatgpt_complete", {"messages": [{"role": "user", "content": "this one fails"}]}],
        [token, "chitty_chat_session_get", {"session_id": str(uuid.uuid4())}],
    ]
    fake_openai_server.reset()
    fake_openai_server.script(Reply("counted"), bad_request("Refused by the fake."))
    try:
        return run_probe({**server_env(database_url, fake_openai_server), **env}, calls)
    finally:
        fake_openai_server.reset()


@pytest.fixture(scope="module")
def completion_output(database_url, fake_openai_server):
    return probe_three_calls(database_url, fake_openai_server)


def emf_lines(lines):
    return [line for line in lines if "_aws" in line]


def directive_with(line, metric):
    """The CloudWatchMetrics directive of an EMF line that names `metric`."""
    (directive,) = [
        directive
        for directive in line["_aws"]["CloudWatchMetrics"]
        if metric in {entry["Name"] for entry in directive["Metrics"]}
    ]
    return directive


def assert_valid_emf(line):
    """What CloudWatch requires of an EMF line: every named metric and dimension is a member beside _aws."""
    assert abs(line["_aws"]["Timestamp"] / 1000 - time.time()) < 3600
    for directive in line["_aws"]["CloudWatchMetrics"]:
        assert directive["Namespace"] == "ChittyChatGPT"
        assert all(isinstance(line[metric["Name"]], (int, float)) for metric in directive["Metrics"])
        assert all(isinstance(line[name], str) for dimensions in directive["Dimensions"] for name in dimensions)


def test_a_completion_emits_tokens_cost_and_latency_by_model_and_tool_as_emf(completion_output):
    report, lines = completion_output
    answer = report["answers"][0]["result"]["structuredContent"]
    emf = emf_lines(lines)[0]

    assert_valid_emf(emf)
    directive = directive_with(emf, "PromptTokens")
    assert [set(dimensions) for dimensions in directive["Dimensions"]] == [{"service", "model", "tool"}]
    assert {metric["Name"] for metric in directive["Metrics"]} >= {
        "Completions",
        "PromptTokens",
        "CompletionTokens",
        "CachedTokens",
        "ReasoningTokens",
        "CostUSD",
        "UpstreamLatency",
        "UpstreamErrors",
    }
    assert emf["service"] == "chitty-chatgpt-mcp"
    assert emf["tool"] == "chatgpt_complete"
    assert emf["model"] == answer["model"]
    assert emf["PromptTokens"] == answer["usage"]["prompt_tokens"]
    assert emf["CompletionTokens"] == answer["usage"]["completion_tokens"]
    assert emf["CostUSD"] == pytest.approx(answer["cost_usd"])
    assert emf["UpstreamLatency"] == answer["latency_ms"]
    assert emf["UpstreamErrors"] == 0


def test_the_metrics_ride_on_the_request_log_line(completion_output):
    _, lines = completion_output

    assert [line.get("message") for line in emf_lines(lines)] == ["mcp request"] * 3
    assert len([line for line in lines if line.get("message") == "mcp request"]) == 3


def test_with_info_lines_off_the_metrics_get_lines_of_their_own(database_url, fake_openai_server):
    report, lines = probe_three_calls(database_url, fake_openai_server, LOG_LEVEL="WARNING")

    emf = emf_lines(lines)
    assert [answer["result"]["isError"] for answer in report["answers"]] == [False, True, True]
    assert [line.get("message") for line in lines] == [None, None, None]
    for line in emf:
        assert_valid_emf(line)
    assert emf[0]["PromptTokens"] == report["answers"][0]["result"]["structuredContent"]["usage"]["prompt_tokens"]
    assert [line.get("ToolErrors") for line in emf] == [None, 1, 1]


def test_with_metrics_disabled_no_line_carries_metrics(database_url, fake_openai_server):
    report, lines = probe_three_calls(database_url, fake_openai_server, POWERTOOLS_METRICS_DISABLED="true")

    assert [answer["result"]["isError"] for answer in report["answers"]] == [False, True, True]
    assert [line.get("message") for line in lines] == ["mcp request"] * 3
    assert emf_lines(lines) == []


def test_a_failed_completion_counts_an_upstream_error_by_model_and_tool(completion_output):
    report, lines = completion_output
    assert report["answers"][1]["result"]["isError"] is True

    emf = emf_lines(lines)[1]

    assert_valid_emf(emf)
    assert [set(dimensions) for dimensions in directive_with(emf, "UpstreamErrors")["Dimensions"]] == [
        {"service", "model", "tool"}
    ]
    assert (emf["model"], emf["tool"]) == ("gpt-5.4-mini", "chatgpt_complete")  # the server's default model
    assert emf["UpstreamErrors"] == 1
    assert emf["Completions"] == 1
    assert "PromptTokens" not in emf


def test_a_failed_tool_call_counts_an_error_for_its_tool(completion_output):
    report, lines = completion_output
    assert [answer["result"]["isError"] for answer in report["answers"]] == [False, True, True]

    errors = [line for line in emf_lines(lines) if "ToolErrors" in line]

    assert [(line["tool"], line["ToolErrors"]) for line in errors] == [
        ("chatgpt_complete", 1),
        ("chitty_chat_session_get", 1),
    ]
    for line in errors:
        assert [set(dimensions) for dimensions in directive_with(line, "ToolErrors")["Dimensions"]] == [
            {"service", "tool"}
        ]


def test_each_request_log_line_carries_the_api_gateway_request_id_and_the_json_rpc_id(completion_output):
    report, lines = completion_output
    request_lines = [line for line in lines if line.get("message") == "mcp request"]

    assert [(line["correlation_id"], line["rpc_id"]) for line in request_lines] == [
        (answer["request_id"], answer["rpc_id"]) for answer in report["answers"]
    ]


# Tracing


def test_with_tracing_on_each_request_is_an_annotated_xray_subsegment(database_url, fake_openai, alice):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as daemon:
        daemon.bind(("127.0.0.1", 0))
        daemon.settimeout(0.5)  # read after the probe has exited: what it sent is already queued
        env = {
            **server_env(database_url, fake_openai),
            "CHITTY_TRACING": "1",
            # What Lambda sets for a sampled, traced invocation, and where its X-Ray daemon listens.
            "LAMBDA_TASK_ROOT": str(ROOT),
            "AWS_LAMBDA_FUNCTION_NAME": "chitty-chatgpt-mcp-dev",
            "_X_AMZN_TRACE_ID": "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1",
            "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{daemon.getsockname()[1]}",
        }
        report, _ = run_probe(env, [ask(alice)])
        sent = []
        while True:
            try:
                sent.append(daemon.recv(65536).decode().split("\n", 1)[1])
            except TimeoutError:
                break

    assert report["answers"][0]["result"]["isError"] is False
    assert "aws_xray_sdk" in report["imported"]
    subsegments = [json.loads(document) for document in sent]
    (request,) = [segment for segment in subsegments if segment["name"] == "## mcp request"]
    assert request["annotations"] == {"rpc_method": "tools/call", "tool": "chatgpt_complete", "user": alice.user_id}


# The migrate function


@pytest.mark.parametrize("variable", ["CHITTY_DATABASE_URL", "CHITTY_MIGRATION_DATABASE_URL"])
def test_the_migrate_function_applies_every_migration_to_a_fresh_database_once(
    admin_database_url, fresh_settings, monkeypatch, variable
):
    from chalice.test import Client

    name = f"chitty_migrate_{uuid.uuid4().hex[:8]}"
    # When a direct migration URL is given, the (pooled) database URL must not be used: here it leads nowhere.
    monkeypatch.setenv("CHITTY_DATABASE_URL", "postgres://chitty@pooled.invalid/chitty")
    monkeypatch.setenv(variable, embedded.with_database(admin_database_url, name))
    import app

    try:
        with Client(app.app, project_dir=str(ROOT)) as client:
            first = client.lambda_.invoke("migrate", {}).payload
            second = client.lambda_.invoke("migrate", {}).payload
    finally:
        embedded.drop_database(admin_database_url, name)

    migrations = discover()
    assert first == {
        "applied": [migration.file_name for migration in migrations]
        + [definition.file_name for definition in discover_definitions()]
        + [catalogue.file_name for catalogue in discover_catalogues()],
        "schema_version": migrations[-1].version,
    }
    assert second == {"applied": [], "schema_version": migrations[-1].version}

"""The paths a cold Lambda takes first stay light: no openai import for initialize, tools/list, /health."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import json, sys
from devtools.apigateway import LambdaContext, proxy_event
import app

token = sys.argv[1]
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json",
           "Accept": "application/json, text/event-stream"}
def rpc(method, params, version=None):
    extra = {"MCP-Protocol-Version": version} if version else {}
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    return app.app(proxy_event("POST", "/mcp", {**headers, **extra}, body), LambdaContext())

answers = {
    "initialize": rpc("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                     "clientInfo": {"name": "probe", "version": "1"}}),
    "tools/list": rpc("tools/list", {}, "2025-11-25"),
    "health": app.app(proxy_event("GET", "/health"), LambdaContext()),
}
print(json.dumps({"status": {name: answer["statusCode"] for name, answer in answers.items()},
                  "tools": len(json.loads(answers["tools/list"]["body"])["result"]["tools"]),
                  "openai_imported": "openai" in sys.modules}))
"""


def test_initialize_tools_list_and_health_do_not_import_openai(database_url, alice):
    env = {**os.environ, "CHITTY_DATABASE_URL": database_url}
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, alice.token], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["status"] == {"initialize": 200, "tools/list": 200, "health": 200}
    assert report["tools"] >= 5
    assert report["openai_imported"] is False

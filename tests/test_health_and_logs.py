"""GET /health, and the log line every request leaves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import httpx2
import pytest

from tests.clients import post
from tests.conftest import ROOT, free_port, start_server


def log_lines(server) -> list[dict]:
    lines = []
    for line in server.log_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_health_reports_the_database_and_schema_without_auth(server):
    response = httpx2.get(f"{server.base_url}/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["schema_version"] == body["schema_expected"] >= 1
    assert body["version"]


@pytest.fixture(scope="module")
def server_without_database(tmp_path_factory):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/chitty"
    running = start_server(
        tmp_path_factory.mktemp("nodb"), {"CHITTY_DATABASE_URL": dead, "CHITTY_DB_TIMEOUT": "2"}, wait_for_health=False
    )
    yield running
    running.stop()


def test_health_is_503_with_a_clear_body_when_the_database_is_unreachable(server_without_database):
    response = httpx2.get(f"{server_without_database.base_url}/health", timeout=30)
    assert response.status_code == 503
    assert response.json()["database"] == "unreachable"
    assert "postgres" not in response.text


def test_tools_answer_503_with_a_json_rpc_error_when_the_database_is_unreachable(server_without_database):
    response = post(
        server_without_database.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, token="chitty_whatever"
    )
    assert response.status_code == 503
    assert response.json()["error"]["message"] == "The database is unavailable; try again shortly."


def test_each_request_logs_one_json_line_with_method_tool_user_status_and_duration(server, alice):
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call"}
    body["params"] = {"name": "chitty_chat_session_list", "arguments": {}}
    assert post(server.mcp_url, body, token=alice.token).status_code == 200
    mine = [line for line in log_lines(server) if line.get("user") == alice.user_id]
    assert len(mine) == 1
    line = mine[0]
    assert line["rpc_method"] == "tools/call"
    assert line["tool"] == "chitty_chat_session_list"
    assert line["http_status"] == 200
    assert line["is_error"] is False
    assert isinstance(line["duration_ms"], float)
    assert line["service"] == "chitty-chatgpt-mcp"
    # The shape of every Powertools line, so one Logs Insights query reads them all.
    assert (line["level"], line["message"]) == ("INFO", "mcp request")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\+0000", line["timestamp"])
    assert "location" in line


def test_tokens_never_reach_the_logs(server, alice):
    wrong = "chitty_" + "x" * 43
    post(server.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, token=alice.token)
    post(server.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, token=wrong)
    text = server.log_text()
    assert alice.token not in text
    assert wrong not in text


def test_secrets_a_client_puts_in_the_method_or_the_id_are_scrubbed_from_the_request_line(server, alice):
    key = "sk-proj-" + "c" * 40
    token = "chitty_" + "d" * 43
    post(server.mcp_url, {"jsonrpc": "2.0", "id": f"id {key}", "method": f"Bearer {token}"}, token=alice.token)

    text = server.log_text()
    assert "c" * 40 not in text
    assert "d" * 43 not in text
    (line,) = [line for line in log_lines(server) if line.get("rpc_id") == "id [REDACTED]"]
    assert line["rpc_method"] == "[REDACTED]"


@pytest.fixture(scope="module")
def debug_server(database_url, tmp_path_factory):
    running = start_server(
        tmp_path_factory.mktemp("debug"), {"CHITTY_DATABASE_URL": database_url, "DEBUG": "chitty:mcp:chatgpt"}
    )
    yield running
    running.stop()


def test_debug_namespace_turns_on_debug_logs_that_still_hide_the_token(debug_server, alice):
    post(debug_server.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, token=alice.token)

    received = [line for line in log_lines(debug_server) if line["message"] == "mcp request received"]
    assert received
    assert received[0]["level"] == "DEBUG"
    assert "authorization" not in received[0]["headers"]
    assert alice.token not in debug_server.log_text()


def test_debug_logs_show_only_headers_known_to_carry_no_credential(debug_server, alice):
    # Secrets that look like nothing the log scrubber knows: only leaving the header out keeps them out.
    secrets = {
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0LTAx",
        "X-Auth-Token": "secret-02-auth-token",
        "X-Api-Key": "secret-03-api-key",
        "Cookie": "session=secret-04-cookie",
        "X-Amz-Security-Token": "secret-05-sts",
        "X-Custom-Credential": "secret-06-custom",
    }
    sent = {**secrets, "User-Agent": "debug-header-test/1", "MCP-Protocol-Version": "2025-06-18"}
    post(debug_server.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "ping"}, token=alice.token, headers=sent)

    text = debug_server.log_text()
    for value in secrets.values():
        assert value not in text
    (received,) = [
        line
        for line in log_lines(debug_server)
        if line["message"] == "mcp request received" and line["headers"].get("user-agent") == "debug-header-test/1"
    ]
    assert received["headers"]["mcp-protocol-version"] == "2025-06-18"
    assert received["headers"]["content-type"] == "application/json"
    assert not {name.lower() for name in secrets} & set(received["headers"])


@pytest.mark.parametrize(("debug", "level"), [("chitty:mcp:chatgpt", "DEBUG"), ("chitty:*", "DEBUG"), ("", "INFO")])
def test_debug_variable_sets_the_log_level(debug, level):
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "import logging; from chalicelib.logs import logger; print(logging.getLevelName(logger.log_level))",
        ],
        cwd=ROOT,
        env={**os.environ, "DEBUG": debug},
        capture_output=True,
        text=True,
        check=True,
    )
    assert completed.stdout.strip() == level


def test_secrets_are_scrubbed_from_messages_their_arguments_and_extra_fields():
    script = (
        "from chalicelib.logs import logger\n"
        "key = 'sk-proj-' + 'a' * 40\n"
        "token = 'chitty_' + 'b' * 43\n"
        "logger.info('calling with %s', key, extra={'detail': 'Bearer ' + token, 'count': 3})\n"
        "logger.warning('token ' + token)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=os.environ, capture_output=True, text=True, check=True
    )
    first, second = (json.loads(line) for line in completed.stdout.splitlines())

    assert "a" * 40 not in completed.stdout
    assert "b" * 43 not in completed.stdout
    assert first["message"] == "calling with [REDACTED]"
    assert (first["detail"], first["count"]) == ("[REDACTED]", 3)
    assert second["message"] == "token [REDACTED]"

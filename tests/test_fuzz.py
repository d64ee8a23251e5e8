"""Fuzzing the endpoint as Lambda invokes it: random and mutated envelopes, headers and tool arguments.

Whatever arrives, the answer is never a 5xx, never shows a traceback or an internal detail,
and is either 202 with no body, a valid JSON-RPC error, or a result (tool failures as isError).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.apigateway import LambdaContext, proxy_event
from tests.conftest import server_env

EXAMPLES = 350
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
LEAKS = ("Traceback", 'File "', "pg8000", "site-packages", "psycopg", "chalicelib", "Exception", "sk-server")

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
METHODS = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "server/discover",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "prompts/list",
    "prompts/get",
    "notifications/initialized",
]
methods = st.sampled_from(METHODS) | st.text(max_size=20)
versions = st.sampled_from(["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26", "1900-01-01", ""]) | st.text(
    max_size=12
)


@pytest.fixture(scope="module")
def lambda_app(database_url, fake_openai_server):
    """The app imported in this process, configured like a Lambda container of the test server."""
    from chalicelib import config, db, service

    saved = dict(os.environ)
    os.environ.update(server_env(database_url, fake_openai_server))
    config.get_settings.cache_clear()
    service.mcp_server.cache_clear()
    db._database = None
    import app

    yield app.app
    os.environ.clear()
    os.environ.update(saved)
    config.get_settings.cache_clear()
    service.mcp_server.cache_clear()
    db._database = None


def invoke(lambda_app, body: str | bytes, headers: dict[str, str]) -> dict[str, Any]:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return lambda_app(proxy_event("POST", "/mcp", headers, text), LambdaContext())


def check(answer: dict[str, Any]) -> None:
    """The properties every answer must have, whatever was asked."""
    status, body = answer["statusCode"], answer["body"]
    assert status < 500, body
    for leak in LEAKS:
        assert leak not in body, body
    if status == 202:
        assert body == ""
        return
    content_type = answer["headers"].get("Content-Type", "")
    if content_type == "text/event-stream":
        messages = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]
        message = messages[-1]
    else:
        assert content_type == "application/json", answer
        message = json.loads(body)
    assert message["jsonrpc"] == "2.0"
    if "error" in message:
        assert isinstance(message["error"]["code"], int)
        assert isinstance(message["error"]["message"], str)
        assert message["error"]["message"]
        assert "result" not in message
    else:
        assert isinstance(message["result"], dict)
        if "content" in message["result"]:
            assert isinstance(message["result"]["isError"], bool)


def headers_for(token: str, **extra: str) -> dict[str, str]:
    return {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        **extra,
    }


@FUZZ
@given(body=st.binary(max_size=300) | st.text(max_size=300) | json_values.map(json.dumps))
def test_random_bodies(lambda_app, alice, body):
    check(invoke(lambda_app, body, headers_for(alice.token)))


@FUZZ
@given(
    jsonrpc=st.sampled_from(["2.0", "1.0", None]) | json_scalars,
    request_id=st.one_of(st.integers(), st.text(max_size=10), st.none(), st.floats(allow_nan=False), st.booleans()),
    method=methods,
    params=json_values,
    meta=st.dictionaries(
        st.sampled_from(
            ["io.modelcontextprotocol/protocolVersion", "io.modelcontextprotocol/clientCapabilities", "progressToken"]
        ),
        json_values,
    ),
    drop=st.sets(st.sampled_from(["jsonrpc", "id", "method", "params"])),
)
def test_mutated_envelopes(lambda_app, alice, jsonrpc, request_id, method, params, meta, drop):
    if isinstance(params, dict):
        params = {**params, "_meta": meta}
    message = {"jsonrpc": jsonrpc, "id": request_id, "method": method, "params": params}
    for key in drop:
        message.pop(key)
    check(invoke(lambda_app, json.dumps(message), headers_for(alice.token)))


@FUZZ
@given(
    version=versions,
    method_header=methods,
    name_header=st.text(max_size=30),
    content_type=st.sampled_from(["application/json", "text/plain", "application/json; charset=utf-8", ""]),
    accept=st.sampled_from(["application/json, text/event-stream", "text/event-stream", "text/html", "*/*", ""]),
    origin=st.sampled_from(["", "http://localhost:3000", "https://evil.example", "null"]) | st.text(max_size=20),
    authorization=st.sampled_from(["good", "", "Bearer", "Basic abc"]) | st.text(max_size=30),
    method=methods,
    meta_version=versions,
)
def test_mutated_headers(
    lambda_app,
    alice,
    version,
    method_header,
    name_header,
    content_type,
    accept,
    origin,
    authorization,
    method,
    meta_version,
):
    headers = {
        "Authorization": f"Bearer {alice.token}" if authorization == "good" else authorization,
        "Content-Type": content_type,
        "Accept": accept,
        "MCP-Protocol-Version": version,
        "Mcp-Method": method_header,
        "Mcp-Name": name_header,
        "Origin": origin,
    }
    headers = {name: value for name, value in headers.items() if value and value.isprintable()}
    meta = {
        "io.modelcontextprotocol/protocolVersion": meta_version,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": {"name": name_header, "_meta": meta}}
    check(invoke(lambda_app, json.dumps(body), headers))


TOOL_BASES: dict[str, dict[str, Any]] = {
    "chatgpt_complete": {"messages": [{"role": "user", "content": "hi"}]},
    "chitty_chat_session_create": {"session_name": "fuzz", "metadata": {"case_id": "c"}},
    "chitty_chat_session_list": {"limit": 5},
    "chitty_chat_session_get": {"session_id": "00000000-0000-0000-0000-000000000000"},
    "chitty_usage_analytics": {"start_date": "2026-01-01", "end_date": "2026-01-02", "granularity": "day"},
    "chitty_model_config_create": {"name": "fuzz", "model": "gpt-4o-mini"},
    "chitty_session_template_create": {"name": "fuzz", "description": "d", "system_prompt": "{{x}}"},
    "chitty_api_key_revoke": {"key_id": "00000000-0000-0000-0000-000000000000"},
    "chitty_usage_limits_get": {},
}


@FUZZ
@given(
    tool=st.sampled_from(sorted(TOOL_BASES)),
    changes=st.dictionaries(
        st.sampled_from(
            [
                "messages",
                "session_name",
                "session_id",
                "metadata",
                "limit",
                "cursor",
                "start_date",
                "end_date",
                "granularity",
                "timezone",
                "name",
                "model",
                "temperature",
                "max_tokens",
                "user_id",
                "key_id",
                "system_prompt",
                "variables",
                "template",
                "group_by",
            ]
        )
        | st.text(max_size=8),
        json_values,
        max_size=3,
    ),
    removed=st.sets(st.sampled_from(["messages", "session_name", "session_id", "start_date", "name", "key_id"])),
)
def test_mutated_tool_arguments(lambda_app, alice, tool, changes, removed):
    arguments = {**TOOL_BASES[tool], **changes}
    for key in removed:
        arguments.pop(key, None)
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    answer = invoke(lambda_app, json.dumps(body), headers_for(alice.token))
    check(answer)
    assert answer["statusCode"] == 200
    assert "result" in json.loads(answer["body"])

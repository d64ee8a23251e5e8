"""The protocol layer over raw HTTP: JSON-RPC, both protocol eras, Streamable HTTP rules, tool schemas."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx2
import pytest
from jsonschema import Draft202012Validator
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client

from chalicelib.db import connection
from chalicelib.mcp import HttpRequest, McpServer, Registry, ServerInfo, Tool
from tests.clients import MODERN, modern_headers, modern_meta, modern_request, post, sse_messages

HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
HEADER_MISMATCH = -32020
UNSUPPORTED_VERSION = -32022


def legacy_request(method, params=None, request_id=1):
    message = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        message["params"] = params
    return message


def initialize(version):
    return legacy_request(
        "initialize", {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "tests", "version": "1"}}
    )


def error_of(response, status, code):
    """The JSON-RPC error of a response, after checking its status, content type and code."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert "result" not in body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)
    return body


def result_of(response):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert "error" not in body, body
    return body["result"]


def modern_post(server, user, method, params=None, *, name=None, headers=None, request_id=1):
    sent = {**modern_headers(method, name), **(headers or {})}
    return post(server.mcp_url, modern_request(method, params, request_id), token=user.token, headers=sent)


def sessions_of(database_url, user):
    with connection(database_url) as conn:
        return conn.run("SELECT count(*) FROM chat_sessions WHERE user_id = :user_id", user_id=user.user_id)[0][0]


# JSON-RPC framing


def test_a_body_that_is_not_json_is_a_parse_error_with_a_null_id(server, alice):
    body = error_of(post(server.mcp_url, '{"jsonrpc": "2.0", "id": 1,', token=alice.token), 400, -32700)
    assert body["id"] is None


@pytest.mark.parametrize("version", ["2025-11-25", "2025-06-18"])
def test_a_batch_is_refused_under_the_versions_that_removed_batches(server, alice, version):
    batch = [legacy_request("ping", request_id=1), legacy_request("ping", request_id=2)]
    headers = {"MCP-Protocol-Version": version}
    body = error_of(post(server.mcp_url, batch, token=alice.token, headers=headers), 400, -32600)
    assert body["id"] is None


def test_a_batch_is_refused_under_2026_07_28(server, alice):
    batch = [modern_request("tools/list", request_id=1), modern_request("tools/list", request_id=2)]
    error_of(post(server.mcp_url, batch, token=alice.token, headers=modern_headers("tools/list")), 400, -32600)


@pytest.mark.parametrize("header", [{"MCP-Protocol-Version": "2025-03-26"}, {}], ids=["2025-03-26", "no-header"])
def test_a_batch_under_2025_03_26_is_answered_as_one_batch(server, alice, header):
    batch = [
        legacy_request("ping", request_id="a"),
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        legacy_request("tools/call", {"name": "chitty_chat_session_list", "arguments": {}}, request_id=7),
        legacy_request("no/such/method", request_id=8),
        legacy_request("initialize", {"protocolVersion": "2025-03-26"}, request_id=9),
        {"jsonrpc": "2.0", "id": 10},
    ]
    response = post(server.mcp_url, batch, token=alice.token, headers=header)

    assert response.status_code == 200, response.text
    answers = {answer["id"]: answer for answer in response.json()}
    assert set(answers) == {"a", 7, 8, 9, 10}
    assert answers["a"]["result"] == {}
    assert answers[7]["result"]["isError"] is False
    assert answers[8]["error"]["code"] == -32601
    assert answers[9]["error"]["code"] == -32600
    assert answers[10]["error"]["code"] == -32600


def test_a_batch_of_notifications_only_is_accepted_with_202(server, alice):
    batch = [
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}},
    ]
    response = post(server.mcp_url, batch, token=alice.token, headers={"MCP-Protocol-Version": "2025-03-26"})
    assert response.status_code == 202
    assert response.text == ""


def test_a_batch_with_a_bad_token_gets_401(server):
    batch = [legacy_request("ping", request_id=1)]
    response = post(server.mcp_url, batch, token="chitty_" + "x" * 43, headers={"MCP-Protocol-Version": "2025-03-26"})
    assert response.status_code == 401


@pytest.mark.parametrize("message", ["5", '"ping"', "null", "true"])
def test_a_message_that_is_not_an_object_is_an_invalid_request(server, alice, message):
    error_of(post(server.mcp_url, message, token=alice.token), 400, -32600)


@pytest.mark.parametrize("version", ["1.0", 2.0, None, "missing"])
def test_a_message_without_jsonrpc_2_0_is_an_invalid_request(server, alice, version):
    message = legacy_request("ping")
    if version == "missing":
        del message["jsonrpc"]
    else:
        message["jsonrpc"] = version
    error_of(post(server.mcp_url, message, token=alice.token), 400, -32600)


def test_a_request_without_a_method_is_an_invalid_request(server, alice):
    message = {"jsonrpc": "2.0", "id": 1, "params": {}}
    error_of(post(server.mcp_url, message, token=alice.token), 400, -32600)


@pytest.mark.parametrize("method", [5, None, ["ping"], {"name": "ping"}, ""])
def test_a_method_that_is_not_a_string_is_an_invalid_request(server, alice, method):
    message = {"jsonrpc": "2.0", "id": 1, "method": method}
    error_of(post(server.mcp_url, message, token=alice.token), 400, -32600)


@pytest.mark.parametrize("request_id", [None, True, 1.5, {"n": 1}, [1]])
def test_an_id_that_is_not_a_string_or_an_integer_is_an_invalid_request(server, alice, request_id):
    message = {"jsonrpc": "2.0", "id": request_id, "method": "ping"}
    error_of(post(server.mcp_url, message, token=alice.token), 400, -32600)


@pytest.mark.parametrize("params", [[1, 2], "x", 5, None])
def test_params_that_are_not_an_object_are_invalid_params(server, alice, params):
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": params}
    error_of(post(server.mcp_url, message, token=alice.token), 400, -32602)


def test_an_error_answers_with_the_request_id(server, alice):
    body = error_of(post(server.mcp_url, legacy_request("no/such", request_id="req-7"), token=alice.token), 200, -32601)
    assert body["id"] == "req-7"


def test_an_unknown_method_in_the_handshake_era_is_method_not_found_in_a_200(server, alice):
    body = error_of(post(server.mcp_url, legacy_request("no/such/method"), token=alice.token), 200, -32601)
    assert body["id"] == 1


@pytest.mark.parametrize("method", ["notifications/initialized", "notifications/cancelled", "no/such/notification"])
def test_a_notification_is_accepted_with_202_and_an_empty_body(server, alice, method):
    response = post(server.mcp_url, {"jsonrpc": "2.0", "method": method}, token=alice.token)
    assert response.status_code == 202
    assert response.content == b""


def test_a_notification_in_2026_is_accepted_with_202_and_an_empty_body(server, alice):
    message = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"_meta": modern_meta()}}
    response = post(server.mcp_url, message, token=alice.token, headers=modern_headers("notifications/cancelled"))
    assert response.status_code == 202
    assert response.content == b""


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": 5, "result": {}},
        {"jsonrpc": "2.0", "id": "abc", "error": {"code": -32601, "message": "no"}},
    ],
)
def test_a_client_response_is_accepted_with_202_and_an_empty_body(server, alice, message):
    response = post(server.mcp_url, message, token=alice.token)
    assert response.status_code == 202
    assert response.content == b""


# The handshake era: 2025-11-25, 2025-06-18, 2025-03-26


@pytest.mark.parametrize("version", HANDSHAKE_VERSIONS)
def test_initialize_echoes_a_supported_version(server, alice, version):
    result = result_of(post(server.mcp_url, initialize(version), token=alice.token))
    assert result["protocolVersion"] == version


@pytest.mark.parametrize("version", ["2024-01-01", "9999-01-01", "not a version"])
def test_initialize_answers_an_unknown_version_with_the_latest_handshake_version(server, alice, version):
    result = result_of(post(server.mcp_url, initialize(version), token=alice.token))
    assert result["protocolVersion"] == "2025-11-25"


def test_initialize_describes_the_server(server, alice):
    result = result_of(post(server.mcp_url, initialize("2025-11-25"), token=alice.token))
    assert result["serverInfo"]["name"] == "chitty-chatgpt-mcp"
    assert isinstance(result["serverInfo"]["version"], str)
    assert result["serverInfo"]["version"]
    assert isinstance(result["capabilities"]["tools"], dict)
    assert isinstance(result["instructions"], str)
    assert "chitty_chat_session_create" in result["instructions"]


def test_no_response_ever_carries_a_session_id(server, alice):
    responses = [
        post(server.mcp_url, initialize("2025-11-25"), token=alice.token),
        post(server.mcp_url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, token=alice.token),
        post(server.mcp_url, legacy_request("tools/list"), token=alice.token, headers={"Mcp-Session-Id": "abc"}),
        post(server.mcp_url, legacy_request("ping"), token=alice.token),
        post(server.mcp_url, legacy_request("no/such"), token=alice.token),
        post(server.mcp_url, "not json", token=alice.token),
        post(server.mcp_url, legacy_request("ping"), token=None),
        post(server.mcp_url, "", token=alice.token, method="GET"),
        modern_post(server, alice, "server/discover"),
        modern_post(server, alice, "tools/call", {"name": "chitty_chat_session_list"}, name="chitty_chat_session_list"),
    ]
    assert {response.status_code for response in responses} == {200, 202, 400, 401, 405}
    for response in responses:
        assert "mcp-session-id" not in response.headers


def test_ping_answers_an_empty_result(server, alice):
    response = post(server.mcp_url, legacy_request("ping", request_id=42), token=alice.token)
    assert result_of(response) == {}
    assert response.json()["id"] == 42


@pytest.mark.parametrize("version", ["1999-01-01", "2024-11-05", "garbage"])
def test_an_unsupported_protocol_version_header_is_refused_with_the_supported_versions(server, alice, version):
    response = post(
        server.mcp_url, legacy_request("tools/list"), token=alice.token, headers={"MCP-Protocol-Version": version}
    )
    assert response.status_code == 400
    data = response.json()["error"]["data"]
    assert set(HANDSHAKE_VERSIONS) <= set(data["supported"])
    assert version not in data["supported"]


@pytest.mark.parametrize("version", HANDSHAKE_VERSIONS)
def test_a_supported_protocol_version_header_is_accepted(server, alice, version):
    response = post(
        server.mcp_url, legacy_request("tools/list"), token=alice.token, headers={"MCP-Protocol-Version": version}
    )
    assert result_of(response)["tools"]


def test_a_handshake_era_tools_list_carries_no_2026_fields(server, alice):
    result = result_of(post(server.mcp_url, legacy_request("tools/list"), token=alice.token))
    assert "resultType" not in result
    assert "ttlMs" not in result


# 2026-07-28: stateless, per-request _meta and routing headers


def test_discover_answers_a_complete_result_listing_every_supported_version(server, alice):
    result = result_of(modern_post(server, alice, "server/discover"))
    assert result["resultType"] == "complete"
    assert {MODERN, *HANDSHAKE_VERSIONS} <= set(result["supportedVersions"])


def test_discover_describes_capabilities_and_instructions(server, alice):
    result = result_of(modern_post(server, alice, "server/discover"))
    assert isinstance(result["capabilities"]["tools"], dict)
    assert isinstance(result["instructions"], str)
    assert result["instructions"]


def test_discover_carries_caching_hints(server, alice):
    result = result_of(modern_post(server, alice, "server/discover"))
    assert isinstance(result["ttlMs"], int)
    assert not isinstance(result["ttlMs"], bool)
    assert result["ttlMs"] >= 0
    assert result["cacheScope"] in {"public", "private"}


def test_discover_names_the_server_in_result_meta(server, alice):
    result = result_of(modern_post(server, alice, "server/discover"))
    info = result["_meta"]["io.modelcontextprotocol/serverInfo"]
    assert info["name"] == "chitty-chatgpt-mcp"
    assert isinstance(info["version"], str)
    assert "serverInfo" not in result


def test_tools_list_in_2026_carries_result_type_and_caching_hints(server, alice):
    result = result_of(modern_post(server, alice, "tools/list"))
    assert result["resultType"] == "complete"
    assert isinstance(result["ttlMs"], int)
    assert result["ttlMs"] >= 0
    assert result["cacheScope"] in {"public", "private"}
    assert result["tools"]


def test_tools_call_in_2026_answers_a_complete_result(server, alice):
    params = {"name": "chitty_chat_session_list", "arguments": {}}
    result = result_of(modern_post(server, alice, "tools/call", params, name="chitty_chat_session_list"))
    assert result["resultType"] == "complete"
    assert result["isError"] is False
    assert result["structuredContent"]["sessions"] == []


def test_a_tool_error_in_2026_is_a_complete_result_too(server, alice):
    params = {"name": "chitty_chat_session_create", "arguments": {}}
    result = result_of(modern_post(server, alice, "tools/call", params, name="chitty_chat_session_create"))
    assert result["resultType"] == "complete"
    assert result["isError"] is True


@pytest.mark.parametrize(
    "missing", ["io.modelcontextprotocol/protocolVersion", "io.modelcontextprotocol/clientCapabilities"]
)
def test_a_2026_request_missing_a_required_meta_field_is_invalid_params(server, alice, missing):
    message = modern_request("tools/list")
    del message["params"]["_meta"][missing]
    response = post(server.mcp_url, message, token=alice.token, headers=modern_headers("tools/list"))
    error_of(response, 400, -32602)


def test_a_2026_request_without_a_protocol_version_header_is_a_header_mismatch(server, alice):
    response = post(
        server.mcp_url, modern_request("tools/list"), token=alice.token, headers={"Mcp-Method": "tools/list"}
    )
    error_of(response, 400, HEADER_MISMATCH)


def test_a_protocol_version_header_that_differs_from_meta_is_a_header_mismatch(server, alice):
    headers = modern_headers("tools/list", version="2025-11-25")
    response = post(server.mcp_url, modern_request("tools/list"), token=alice.token, headers=headers)
    error_of(response, 400, HEADER_MISMATCH)


def test_a_2026_request_without_an_mcp_method_header_is_a_header_mismatch(server, alice):
    headers = {"MCP-Protocol-Version": MODERN}
    response = post(server.mcp_url, modern_request("tools/list"), token=alice.token, headers=headers)
    error_of(response, 400, HEADER_MISMATCH)


def test_an_mcp_method_header_that_differs_from_the_body_is_a_header_mismatch(server, alice):
    response = post(
        server.mcp_url, modern_request("tools/list"), token=alice.token, headers=modern_headers("server/discover")
    )
    error_of(response, 400, HEADER_MISMATCH)


def test_an_mcp_method_header_is_compared_case_sensitively(server, alice):
    response = post(
        server.mcp_url, modern_request("tools/list"), token=alice.token, headers=modern_headers("TOOLS/LIST")
    )
    error_of(response, 400, HEADER_MISMATCH)


def test_a_tools_call_without_an_mcp_name_header_is_a_header_mismatch_and_runs_nothing(server, alice, database_url):
    params = {"name": "chitty_chat_session_create", "arguments": {"session_name": "never"}}
    error_of(modern_post(server, alice, "tools/call", params), 400, HEADER_MISMATCH)
    assert sessions_of(database_url, alice) == 0


def test_an_mcp_name_header_that_differs_from_the_tool_is_a_header_mismatch_and_runs_nothing(
    server, alice, database_url
):
    params = {"name": "chitty_chat_session_create", "arguments": {"session_name": "never"}}
    response = modern_post(server, alice, "tools/call", params, name="chitty_chat_session_list")
    error_of(response, 400, HEADER_MISMATCH)
    assert sessions_of(database_url, alice) == 0


def test_an_mcp_name_header_in_base64_sentinel_form_is_accepted(server, alice):
    encoded = base64.b64encode(b"chitty_chat_session_list").decode()
    params = {"name": "chitty_chat_session_list", "arguments": {}}
    response = modern_post(server, alice, "tools/call", params, name=f"=?base64?{encoded}?=")
    assert result_of(response)["isError"] is False


def test_an_mcp_name_header_in_base64_of_another_name_is_a_header_mismatch(server, alice):
    encoded = base64.b64encode(b"chitty_chat_session_get").decode()
    params = {"name": "chitty_chat_session_list", "arguments": {}}
    response = modern_post(server, alice, "tools/call", params, name=f"=?base64?{encoded}?=")
    error_of(response, 400, HEADER_MISMATCH)


def test_an_mcp_name_header_that_is_not_valid_base64_is_a_header_mismatch(server, alice):
    params = {"name": "chitty_chat_session_list", "arguments": {}}
    response = modern_post(server, alice, "tools/call", params, name="=?base64?not base64!?=")
    error_of(response, 400, HEADER_MISMATCH)


def test_an_unsupported_meta_version_with_a_matching_header_is_refused_with_the_supported_versions(server, alice):
    message = modern_request("tools/list")
    message["params"]["_meta"] = modern_meta("2099-01-01")
    response = post(
        server.mcp_url, message, token=alice.token, headers=modern_headers("tools/list", version="2099-01-01")
    )
    body = error_of(response, 400, UNSUPPORTED_VERSION)
    assert body["id"] == 1
    data = body["error"]["data"]
    assert isinstance(data["supported"], list)
    assert MODERN in data["supported"]
    assert data["requested"] == "2099-01-01"


def test_an_unknown_method_in_2026_is_404_method_not_found(server, alice):
    body = error_of(modern_post(server, alice, "no/such/method"), 404, -32601)
    assert body["id"] == 1


def test_ping_does_not_exist_in_2026(server, alice):
    error_of(modern_post(server, alice, "ping"), 404, -32601)


def test_initialize_does_not_exist_in_2026(server, alice):
    params = {"protocolVersion": MODERN, "capabilities": {}, "clientInfo": {"name": "tests", "version": "1"}}
    error_of(modern_post(server, alice, "initialize", params), 404, -32601)


# DNS rebinding: Origin and Host


@pytest.mark.parametrize("origin", ["http://evil.example.com", "https://localhost.evil.example.com", "null"])
def test_a_foreign_origin_is_forbidden(server, alice, origin):
    response = post(server.mcp_url, legacy_request("ping"), token=alice.token, headers={"Origin": origin})
    assert response.status_code == 403
    assert response.json()["id"] is None


@pytest.mark.parametrize(
    "origin", ["http://localhost:1234", "http://127.0.0.1:9", "http://localhost", "http://[::1]:8000"]
)
def test_a_local_origin_on_any_port_is_allowed(server, alice, origin):
    response = post(server.mcp_url, legacy_request("ping"), token=alice.token, headers={"Origin": origin})
    assert result_of(response) == {}


@pytest.mark.parametrize("host", ["evil.example.com", "evil.example.com:8000", "localhost.evil.example.com"])
def test_a_foreign_host_is_forbidden(server, alice, host):
    response = post(server.mcp_url, legacy_request("ping"), token=alice.token, headers={"Host": host})
    assert response.status_code == 403


@pytest.mark.parametrize("host", ["localhost:1234", "localhost", "127.0.0.1:9", "[::1]:8000", "[::1]"])
def test_a_local_host_on_any_port_is_allowed(server, alice, host):
    response = post(server.mcp_url, legacy_request("ping"), token=alice.token, headers={"Host": host})
    assert result_of(response) == {}


def test_a_foreign_origin_is_forbidden_before_authentication(server):
    response = post(server.mcp_url, legacy_request("ping"), token=None, headers={"Origin": "http://evil.example.com"})
    assert response.status_code == 403
    assert "www-authenticate" not in response.headers


def test_a_foreign_host_is_forbidden_before_authentication(server):
    response = post(server.mcp_url, legacy_request("ping"), token=None, headers={"Host": "evil.example.com"})
    assert response.status_code == 403


# HTTP rules of Streamable HTTP


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_only_post_is_allowed(server, alice, method):
    response = httpx2.request(method, server.mcp_url, headers=alice.headers, timeout=30)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_a_body_over_one_mebibyte_is_too_large(server, alice):
    message = json.dumps(legacy_request("ping"))
    padded = message + " " * (1024 * 1024 + 1 - len(message))
    response = post(server.mcp_url, padded, token=alice.token)
    assert response.status_code == 413


def test_a_body_of_exactly_one_mebibyte_is_served(server, alice):
    message = json.dumps(legacy_request("ping"))
    padded = message + " " * (1024 * 1024 - len(message))
    assert result_of(post(server.mcp_url, padded, token=alice.token)) == {}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_a_body_that_is_not_declared_json_is_an_unsupported_media_type(server, alice, content_type):
    response = post(server.mcp_url, legacy_request("ping"), token=alice.token, headers={"Content-Type": content_type})
    assert response.status_code == 415


def test_a_json_content_type_with_a_charset_is_served(server, alice):
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert result_of(post(server.mcp_url, legacy_request("ping"), token=alice.token, headers=headers)) == {}


@pytest.mark.parametrize("accept", ["text/html", "image/png, text/plain"])
def test_an_accept_header_admitting_neither_json_nor_event_streams_is_not_acceptable(server, alice, accept):
    response = post(server.mcp_url, legacy_request("ping"), token=alice.token, headers={"Accept": accept})
    assert response.status_code == 406


def test_an_accept_header_admitting_only_json_gets_json(server, alice):
    response = post(server.mcp_url, legacy_request("ping"), token=alice.token, headers={"Accept": "application/json"})
    assert result_of(response) == {}


# tools/list


@pytest.fixture
def tools(server, alice):
    response = post(server.mcp_url, legacy_request("tools/list"), token=alice.token)
    return {tool["name"]: tool for tool in result_of(response)["tools"]}


def test_every_tool_has_a_2020_12_input_schema_of_type_object(tools):
    assert tools
    for tool in tools.values():
        assert tool["inputSchema"]["$schema"] == SCHEMA_DIALECT, tool["name"]
        assert tool["inputSchema"]["type"] == "object", tool["name"]


def test_every_tool_has_an_output_schema(tools):
    for tool in tools.values():
        assert isinstance(tool["outputSchema"], dict), tool["name"]
        assert tool["outputSchema"]["type"] == "object", tool["name"]


def test_every_tool_declares_all_four_behaviour_hints(tools):
    for tool in tools.values():
        annotations = tool["annotations"]
        for hint in ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint"):
            assert isinstance(annotations[hint], bool), (tool["name"], hint)


def test_listing_sessions_is_read_only(tools):
    hints = tools["chitty_chat_session_list"]["annotations"]
    assert hints["readOnlyHint"] is True
    assert hints["destructiveHint"] is False


def test_deleting_a_session_is_destructive(tools):
    hints = tools["chitty_chat_session_delete"]["annotations"]
    assert hints["destructiveHint"] is True
    assert hints["readOnlyHint"] is False


def test_every_tool_schema_is_a_valid_2020_12_schema(tools):
    for tool in tools.values():
        Draft202012Validator.check_schema(tool["inputSchema"])
        Draft202012Validator.check_schema(tool["outputSchema"])


def test_tools_are_listed_in_the_same_order_every_time(server, alice, tools):
    again = result_of(post(server.mcp_url, legacy_request("tools/list"), token=alice.token))["tools"]
    assert [tool["name"] for tool in again] == list(tools)


def test_an_unknown_cursor_is_invalid_params(server, alice):
    response = post(server.mcp_url, legacy_request("tools/list", {"cursor": "nope"}), token=alice.token)
    assert response.json()["error"]["code"] == -32602


# tools/call: arguments


def call_tool(server, user, name, arguments):
    message = legacy_request("tools/call", {"name": name, "arguments": arguments})
    return post(server.mcp_url, message, token=user.token)


def tool_error_text(response):
    result = result_of(response)
    assert result["isError"] is True
    return " ".join(block["text"] for block in result["content"] if block["type"] == "text")


def test_a_missing_required_argument_is_a_tool_error_naming_it(server, alice, database_url):
    text = tool_error_text(call_tool(server, alice, "chitty_chat_session_create", {}))
    assert "session_name" in text
    assert sessions_of(database_url, alice) == 0


def test_an_argument_of_the_wrong_type_is_a_tool_error_naming_it(server, alice, database_url):
    text = tool_error_text(call_tool(server, alice, "chitty_chat_session_create", {"session_name": 5}))
    assert "session_name" in text
    assert sessions_of(database_url, alice) == 0


def test_an_unknown_argument_is_a_tool_error_naming_it(server, alice, database_url):
    arguments = {"session_name": "ok", "colour": "blue"}
    text = tool_error_text(call_tool(server, alice, "chitty_chat_session_create", arguments))
    assert "colour" in text
    assert sessions_of(database_url, alice) == 0


def test_a_malformed_session_id_is_a_tool_error_naming_it(server, alice):
    text = tool_error_text(call_tool(server, alice, "chitty_chat_session_get", {"session_id": "not-a-uuid"}))
    assert "session_id" in text


def test_an_unknown_tool_is_invalid_params(server, alice):
    body = error_of(call_tool(server, alice, "chitty_no_such_tool", {}), 200, -32602)
    assert "chitty_no_such_tool" in body["error"]["message"]


@pytest.mark.parametrize("name", [["chitty_chat_session_list"], {"name": "chitty_chat_session_list"}, 5, None])
def test_a_tool_name_that_is_not_a_string_is_invalid_params(server, alice, name):
    body = error_of(call_tool(server, alice, name, {}), 200, -32602)
    assert body["error"]["message"] == "Invalid params: name must be a string"


@pytest.mark.parametrize("arguments", [["session_name"], "session_name=x", 5])
def test_arguments_that_are_not_an_object_are_invalid_params(server, alice, arguments):
    error_of(call_tool(server, alice, "chitty_chat_session_create", arguments), 200, -32602)


def test_valid_arguments_run_the_tool(server, alice, database_url):
    result = result_of(call_tool(server, alice, "chitty_chat_session_create", {"session_name": "first"}))
    assert result["isError"] is False
    assert result["structuredContent"]["session_name"] == "first"
    assert sessions_of(database_url, alice) == 1


# Progress over an event stream, in process (no production tool reports progress yet)

PROGRESS_TOOL = "count_to_two"
STUTTER_TOOL = "stutter"
LOCAL = "127.0.0.1"


def count_to_two(call):
    call.report_progress(1, 2, "half")
    call.report_progress(2, 2, "done")
    return {"counted": 2}


def stutter(call):
    for progress in (1, 1, 0.5, 2):
        call.report_progress(progress)
    return {"counted": 2}


def progress_tool(name, handler):
    return Tool(
        name=name,
        title=name,
        description="Counts to two, reporting progress.",
        input_schema={"type": "object", "properties": {}, "additionalProperties": False},
        output_schema={"type": "object", "properties": {"counted": {"type": "integer"}}, "required": ["counted"]},
        handler=handler,
        read_only=True,
    )


def progress_server():
    registry = Registry()
    registry.add_tool(progress_tool(PROGRESS_TOOL, count_to_two))
    registry.add_tool(progress_tool(STUTTER_TOOL, stutter))
    return McpServer(
        registry=registry,
        authenticate=lambda authorization, defer: "tester" if authorization == "Bearer secret" else None,
        info=ServerInfo(name="progress-test", title="Progress test", version="0", instructions="Counts."),
        allowed_hosts=(LOCAL,),
        allowed_origins=(),
        logger=logging.getLogger("tests.progress"),
    )


def progress_call(modern, token=None, accept="application/json, text/event-stream", tool=PROGRESS_TOOL):
    params = {"name": tool, "arguments": {}}
    if modern:
        message = modern_request("tools/call", params, request_id=3)
        headers = {name.lower(): value for name, value in modern_headers("tools/call", tool).items()}
        if token is not None:
            message["params"]["_meta"]["progressToken"] = token
    else:
        message = legacy_request("tools/call", params, request_id=3)
        headers = {}
        if token is not None:
            message["params"]["_meta"] = {"progressToken": token}
    headers.update(
        {"host": LOCAL, "authorization": "Bearer secret", "content-type": "application/json", "accept": accept}
    )
    return progress_server().handle(HttpRequest(method="POST", headers=headers, body=json.dumps(message).encode()))


ERAS = pytest.mark.parametrize("modern", [False, True], ids=["legacy", MODERN])


@ERAS
@pytest.mark.parametrize("token", ["progress-1", 99])
def test_progress_is_streamed_before_the_result_when_the_request_asks_for_it(modern, token):
    response = progress_call(modern, token)
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    messages = sse_messages(response.body)
    *notifications, final = messages
    assert [note["method"] for note in notifications] == ["notifications/progress"] * 2
    assert [note["params"]["progressToken"] for note in notifications] == [token, token]
    assert [(note["params"]["progress"], note["params"]["message"]) for note in notifications] == [
        (1, "half"),
        (2, "done"),
    ]
    assert final["id"] == 3
    assert final["result"]["structuredContent"] == {"counted": 2}


@ERAS
def test_each_progress_event_is_one_json_data_line_without_an_event_id(modern):
    body = progress_call(modern, "t").body
    events = [event for event in body.replace("\r\n", "\n").split("\n\n") if event.strip()]
    assert len(events) == 3
    for event in events:
        lines = event.split("\n")
        assert not [line for line in lines if line.startswith("id:")]
        data = [line for line in lines if line.startswith("data: ")]
        assert len(data) == 1
        json.loads(data[0][len("data: ") :])
        assert set(lines) - set(data) <= {"event: message"}


@ERAS
def test_progress_that_does_not_increase_is_not_sent(modern):
    notifications = sse_messages(progress_call(modern, "t", tool=STUTTER_TOOL).body)[:-1]
    assert [note["params"]["progress"] for note in notifications] == [1, 2]


@ERAS
def test_without_a_progress_token_the_answer_is_plain_json(modern):
    response = progress_call(modern)
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.body)["result"]["structuredContent"] == {"counted": 2}


@ERAS
def test_a_client_that_accepts_only_json_gets_plain_json_even_with_a_progress_token(modern):
    response = progress_call(modern, "t", accept="application/json")
    assert response.headers["Content-Type"] == "application/json"
    answer = json.loads(response.body)
    assert answer["id"] == 3
    assert answer["result"]["structuredContent"] == {"counted": 2}


def test_a_2026_streamed_result_is_complete():
    final = sse_messages(progress_call(True, "t").body)[-1]
    assert final["result"]["resultType"] == "complete"


class McpHandler(BaseHTTPRequestHandler):
    """Hands each request to the in-process McpServer, as app.py does under Chalice."""

    mcp: McpServer

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        headers = {name.lower(): value for name, value in self.headers.items()}
        request = HttpRequest(method=self.command, headers=headers, body=self.rfile.read(length))
        response = self.mcp.handle(request)
        body = response.body.encode("utf-8")
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET = do_DELETE = answer

    def log_message(self, format, *args):
        """Quiet: the test output is not the place for access logs."""


@pytest.fixture(scope="module")
def progress_url():
    handler = type("Handler", (McpHandler,), {"mcp": progress_server()})
    httpd = ThreadingHTTPServer((LOCAL, 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://{LOCAL}:{httpd.server_address[1]}/mcp"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.mark.parametrize("mode", ["legacy", MODERN])
def test_the_official_client_receives_progress_then_the_result(progress_url, mode):
    updates = []

    async def on_progress(progress, total, message):
        updates.append((progress, total, message))

    async def session():
        http = httpx2.AsyncClient(headers={"Authorization": "Bearer secret"}, timeout=30)
        async with Client(streamable_http_client(progress_url, http_client=http), mode=mode) as client:  # type: ignore[arg-type]
            return await client.call_tool(PROGRESS_TOOL, {}, progress_callback=on_progress)

    result = asyncio.run(session())
    assert updates == [(1, 2, "half"), (2, 2, "done")]
    assert result.is_error is False
    assert result.structured_content == {"counted": 2}


# CORS, for browser-based clients on an allowed origin


def test_a_preflight_from_an_allowed_origin_says_what_mcp_clients_may_send(server):
    response = httpx2.request(
        "OPTIONS",
        server.mcp_url,
        headers={
            "Origin": "http://localhost:6274",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, mcp-protocol-version",
        },
    )
    assert response.status_code == 204
    assert response.headers["access-control-allow-origin"] == "http://localhost:6274"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = {name.strip().lower() for name in response.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "accept", "mcp-protocol-version", "mcp-method", "mcp-name"} <= allowed


def test_an_answer_to_an_allowed_origin_can_be_read_by_its_page(server, alice):
    response = post(
        server.mcp_url, legacy_request("ping"), token=alice.token, headers={"Origin": "http://127.0.0.1:5173"}
    )
    refused = post(server.mcp_url, legacy_request("ping"), token="nope", headers={"Origin": "http://127.0.0.1:5173"})

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    assert "origin" in response.headers["vary"].lower()
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "http://127.0.0.1:5173"
    assert "www-authenticate" in refused.headers["access-control-expose-headers"].lower()


def test_a_disallowed_origin_still_gets_403_and_no_cors_headers(server, alice):
    preflight = httpx2.request(
        "OPTIONS", server.mcp_url, headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    response = post(
        server.mcp_url, legacy_request("ping"), token=alice.token, headers={"Origin": "https://evil.example"}
    )
    for answer in (preflight, response):
        assert answer.status_code == 403
        assert "access-control-allow-origin" not in answer.headers

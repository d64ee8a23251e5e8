"""What a request may carry: nesting limits, text PostgreSQL and UTF-8 can hold, JSON numbers only.

No request gets a 5xx for what it contains: a body nested past the limit is an invalid request;
tool arguments nested too deep, or holding U+0000, a lone surrogate (keys too) or NaN/Infinity,
get the usual isError result naming the field before the tool runs; prompt arguments and resource
URIs holding such text are invalid params; integral floats reach integer fields as integers.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from chalicelib.mcp.wire import MAX_ARGUMENT_DEPTH, MAX_JSON_DEPTH
from tests.clients import error_details, modern_headers, modern_request, post
from tests.test_protocol import error_of, result_of, sessions_of

NUL = "\x00"
LONE_SURROGATE = "\ud800"


def rpc(method: str, params: dict[str, Any], request_id: int | str = 1) -> str:
    """A JSON-RPC request as text; json.dumps writes U+0000 and lone surrogates as \\u escapes."""
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def call(name: str, arguments: dict[str, Any]) -> str:
    return rpc("tools/call", {"name": name, "arguments": arguments})


def raw_call(name: str, arguments: str) -> str:
    """A tools/call whose arguments are JSON text as given (literals json.dumps would not write)."""
    return call(name, {}).replace('"arguments": {}', f'"arguments": {arguments}')


def nested(levels: int, leaf: Any = 1) -> Any:
    """`leaf` inside `levels` objects: nested(2) == {"a": {"a": 1}}."""
    value = leaf
    for _ in range(levels):
        value = {"a": value}
    return value


def refusal(response) -> tuple[str, dict[str, Any]]:
    """The text and structured content of an isError tool result."""
    result = result_of(response)
    assert result["isError"] is True, result
    return result["content"][0]["text"], error_details(result)


# Nesting of the whole body


def test_a_body_nested_past_the_limit_is_an_invalid_request(server, alice):
    body = error_of(post(server.mcp_url, "[" * 100_000, token=alice.token), 400, -32600)

    assert body["id"] is None
    assert body["error"]["message"] == f"Invalid Request: JSON nested more than {MAX_JSON_DEPTH} levels deep"


@pytest.mark.parametrize("token", ["chitty_" + "x" * 43, None], ids=["bad token", "no token"])
def test_a_deeply_nested_body_without_a_valid_token_is_401(server, token):
    response = post(server.mcp_url, "[" * 100_000, token=token)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == -32001


def test_a_body_nested_exactly_to_the_limit_is_served(server, alice):
    # The message, its params and the value under "x" are the first three levels.
    at_limit = rpc("ping", {"x": nested(MAX_JSON_DEPTH - 3, leaf={})})

    assert result_of(post(server.mcp_url, at_limit, token=alice.token)) == {}


def test_a_body_one_level_past_the_limit_is_refused(server, alice):
    past = rpc("ping", {"x": nested(MAX_JSON_DEPTH - 2, leaf={})})

    error_of(post(server.mcp_url, past, token=alice.token), 400, -32600)


def test_brackets_inside_strings_do_not_count_as_nesting(server, alice):
    text = "[{" * MAX_JSON_DEPTH
    arguments = {"session_name": "brackets", "initial_system_prompt": text}
    result = result_of(post(server.mcp_url, call("chitty_chat_session_create", arguments), token=alice.token))

    assert result["isError"] is False


# Nesting of tool arguments


def test_tool_arguments_nested_too_deep_are_refused_by_field_before_the_tool_runs(server, alice, database_url):
    arguments = {"session_name": "deep", "metadata": nested(500)}
    text, structured = refusal(post(server.mcp_url, call("chitty_chat_session_create", arguments), token=alice.token))

    # The arguments object is the first level, so the object at metadata/a/.../a (31 a's) is the 33rd.
    field = "metadata" + "/a" * (MAX_ARGUMENT_DEPTH - 1)
    assert text == f"Invalid arguments for chitty_chat_session_create: {field}: nested more than 32 levels deep"
    assert structured["field"] == field
    assert sessions_of(database_url, alice) == 0


def test_tool_arguments_nested_exactly_to_the_limit_run_the_tool(server, alice):
    # The arguments object is the first level, the metadata object the second.
    metadata = nested(MAX_ARGUMENT_DEPTH - 2, leaf={})
    arguments = {"session_name": "deep enough", "metadata": metadata}
    result = result_of(post(server.mcp_url, call("chitty_chat_session_create", arguments), token=alice.token))

    assert result["isError"] is False
    assert result["structuredContent"]["metadata"] == metadata


# Text no database or UTF-8 can hold


@pytest.mark.parametrize(
    ("arguments", "field", "problem"),
    [
        ({"session_name": f"a{NUL}b"}, "session_name", "contains U+0000 (NUL), which cannot be stored"),
        (
            {"session_name": f"a{LONE_SURROGATE}"},
            "session_name",
            "contains a lone surrogate (U+D800), which is not valid Unicode",
        ),
        (
            {"session_name": "ok", "metadata": {f"case{NUL}": "c"}},
            "metadata",
            "a key contains U+0000 (NUL), which cannot be stored",
        ),
        (
            {"session_name": "ok", "metadata": {"\udc00": "c"}},
            "metadata",
            "a key contains a lone surrogate (U+DC00), which is not valid Unicode",
        ),
        (
            {"session_name": "ok", "metadata": {"document_ids": ["d1", f"d{NUL}2"]}},
            "metadata/document_ids/1",
            "contains U+0000 (NUL), which cannot be stored",
        ),
    ],
    ids=["nul", "surrogate", "nul in a key", "surrogate in a key", "nul in a list"],
)
def test_text_that_cannot_be_stored_is_refused_by_field_before_the_tool_runs(
    server, alice, database_url, arguments, field, problem
):
    text, structured = refusal(post(server.mcp_url, call("chitty_chat_session_create", arguments), token=alice.token))

    assert text == f"Invalid arguments for chitty_chat_session_create: {field}: {problem}"
    assert structured["field"] == field
    assert sessions_of(database_url, alice) == 0


def test_a_chat_message_holding_a_nul_is_refused_and_nothing_is_sent_upstream(server, alice, fake_openai):
    arguments = {"messages": [{"role": "user", "content": f"hello{NUL}"}]}
    text, structured = refusal(post(server.mcp_url, call("chatgpt_complete", arguments), token=alice.token))

    assert structured["field"] == "messages/0/content"
    assert "U+0000" in text
    assert fake_openai.chat_requests == []


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"subject": f"a claim{NUL}", "audience": "readers"}, "arguments/subject"),
        ({"subject": "a claim", "audience": "readers", f"x{LONE_SURROGATE}": "y"}, "arguments"),
    ],
    ids=["nul in a value", "surrogate in a key"],
)
def test_prompt_arguments_that_cannot_be_held_are_invalid_params_naming_them(server, alice, arguments, field):
    message = rpc("prompts/get", {"name": "fact-checking", "arguments": arguments})
    body = error_of(post(server.mcp_url, message, token=alice.token), 200, -32602)

    assert body["error"]["message"].startswith(f"Invalid params: {field}: ")
    assert body["error"]["data"] == {"field": field}


def test_a_2026_prompt_name_with_a_nul_is_invalid_params_in_a_400(server, alice):
    name = f"fact-checking{NUL}"
    header_name = "=?base64?" + base64.b64encode(name.encode()).decode() + "?="
    response = post(
        server.mcp_url,
        json.dumps(modern_request("prompts/get", {"name": name})),
        token=alice.token,
        headers=modern_headers("prompts/get", header_name),
    )

    body = error_of(response, 400, -32602)
    assert body["error"]["data"] == {"field": "name"}


@pytest.mark.parametrize(
    ("uri", "problem"),
    [
        (f"chitty://sessions/{NUL}", "contains U+0000 (NUL), which cannot be stored"),
        (f"chitty://sessions/{LONE_SURROGATE}", "contains a lone surrogate (U+D800), which is not valid Unicode"),
    ],
    ids=["nul", "surrogate"],
)
def test_a_resource_uri_that_cannot_be_held_is_invalid_params(server, alice, uri, problem):
    body = error_of(post(server.mcp_url, rpc("resources/read", {"uri": uri}), token=alice.token), 200, -32602)

    assert body["error"] == {"code": -32602, "message": f"Invalid params: uri: {problem}", "data": {"field": "uri"}}


def test_a_lone_surrogate_in_the_id_is_echoed_escaped_in_valid_utf_8(server, alice):
    response = post(server.mcp_url, rpc("ping", {}, request_id=LONE_SURROGATE), token=alice.token)

    assert response.status_code == 200
    assert "\\ud800" in response.content.decode("utf-8")
    assert response.json() == {"jsonrpc": "2.0", "id": LONE_SURROGATE, "result": {}}


@pytest.mark.parametrize(
    ("message", "code"),
    [(rpc(LONE_SURROGATE, {}), -32601), (call(LONE_SURROGATE, {}), -32602)],
    ids=["as the method", "as the tool name"],
)
def test_a_lone_surrogate_as_a_name_is_an_ordinary_error(server, alice, message, code):
    response = post(server.mcp_url, message, token=alice.token)

    error_of(response, 200, code)
    assert LONE_SURROGATE in response.json()["error"]["message"]


# NaN and Infinity, which are not JSON


@pytest.mark.parametrize(
    ("literal", "name"), [("NaN", "NaN"), ("Infinity", "Infinity"), ("-Infinity", "-Infinity"), ("1e400", "Infinity")]
)
def test_a_non_finite_tool_argument_is_refused_by_field_and_nothing_is_sent_upstream(
    server, alice, fake_openai, literal, name
):
    arguments = f'{{"messages": [{{"role": "user", "content": "hi"}}], "temperature": {literal}}}'
    message = raw_call("chatgpt_complete", arguments)
    text, structured = refusal(post(server.mcp_url, message, token=alice.token))

    assert text == f"Invalid arguments for chatgpt_complete: temperature: {name} is not a JSON number"
    assert structured["field"] == "temperature"
    assert fake_openai.chat_requests == []


@pytest.mark.parametrize(
    "message",
    [
        '{"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": NaN}}',
        '{"jsonrpc": "2.0", "id": 1, "method": "tools/call",'
        ' "params": {"name": "chitty_chat_session_list", "arguments": {}, "_meta": {"progressToken": Infinity}}}',
        '{"jsonrpc": "2.0", "method": "notifications/initialized", "params": {"x": -Infinity}}',
    ],
    ids=["in a ping", "outside tool arguments", "in a notification"],
)
def test_nan_or_infinity_outside_tool_arguments_is_a_parse_error(server, alice, message):
    body = error_of(post(server.mcp_url, message, token=alice.token), 400, -32700)

    assert body["error"]["message"] == "Parse error: NaN, Infinity and -Infinity are not JSON numbers"


# Integral floats in integer fields


def test_an_integral_float_for_an_integer_field_is_stored_as_an_integer(server, alice):
    message = raw_call("chitty_model_config_create", '{"name": "hundred", "model": "gpt-4o-mini", "max_tokens": 1e2}')
    result = result_of(post(server.mcp_url, message, token=alice.token))

    assert result["isError"] is False
    assert result["structuredContent"]["max_tokens"] == 100


def test_an_integral_float_for_an_integer_field_reaches_openai_as_an_integer(server, alice, fake_openai):
    arguments = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 64.0}
    result = result_of(post(server.mcp_url, call("chatgpt_complete", arguments), token=alice.token))

    assert result["isError"] is False
    sent = fake_openai.chat_requests[-1].max_completion_tokens
    assert (sent, type(sent)) == (64, int)


def test_an_integral_float_page_size_lists_sessions(server, alice):
    result = result_of(post(server.mcp_url, call("chitty_chat_session_list", {"limit": 5.0}), token=alice.token))

    assert result["isError"] is False
    assert result["structuredContent"]["sessions"] == []


def test_a_fractional_float_for_an_integer_field_is_still_refused_by_field(server, alice):
    text, structured = refusal(
        post(server.mcp_url, call("chitty_chat_session_list", {"limit": 5.5}), token=alice.token)
    )

    assert structured["field"] == "limit"
    assert "Invalid arguments for chitty_chat_session_list: limit:" in text

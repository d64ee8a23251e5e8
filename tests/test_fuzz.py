"""Fuzzing the endpoint as Lambda invokes it: random and mutated envelopes, headers and tool arguments.

Whatever arrives, the answer is never a 5xx, never shows a traceback or an internal detail, is
valid UTF-8, and is either 202 with no body, a valid JSON-RPC error, or a result (tool failures
as isError). Besides well-formed JSON the inputs carry what a server trips on: bodies and arguments
nested past every limit, U+0000 and lone surrogates in strings and keys, NaN and Infinity, 100.0
where an integer belongs, and such strings as resource URIs, prompt names and prompt arguments.
"""

from __future__ import annotations

import copy
import json
import math
import os
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chalicelib.mcp.wire import MAX_ARGUMENT_DEPTH, MAX_JSON_DEPTH
from devtools.apigateway import LambdaContext, proxy_event
from tests.conftest import server_env

EXAMPLES = 350
PYTHON_RECURSION_LIMIT = 1000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)
LEAKS = ("Traceback", 'File "', "pg8000", "site-packages", "psycopg", "chalicelib", "Exception", "sk-server")

# Text a database can store and UTF-8 can carry.
storable_characters = st.characters(codec="utf-8", exclude_characters="\x00")
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(storable_characters, max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(storable_characters, max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)

# Text no database or UTF-8 can hold: U+0000 and lone surrogates (json.dumps writes them as \u escapes).
odd_text = st.sampled_from(["\x00", "\ud800", "\udfff", "a\x00b", "x\udc00"]) | st.text(
    st.characters(exclude_categories=()), max_size=20
)
# What Python's parser accepts and JSON has not (json.dumps writes NaN, Infinity), and 100.0 for 100.
odd_numbers = st.sampled_from([math.nan, math.inf, -math.inf]) | st.floats() | st.integers(-5, 300).map(float)
hostile_scalars = json_scalars | odd_text | odd_numbers
hostile_values = st.recursive(
    hostile_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(storable_characters, max_size=12) | odd_text, children, max_size=4)
    ),
    max_leaves=12,
)


def nest(value: Any, levels: int) -> Any:
    """`value` inside `levels` arrays and objects, alternately."""
    for level in range(levels):
        value = [value] if level % 2 else {"n": value}
    return value


# Around the argument limit and well past it, yet within the body's limit: these reach the tools.
depths = st.sampled_from([0, 1, 2, MAX_ARGUMENT_DEPTH - 2, MAX_ARGUMENT_DEPTH - 1, MAX_ARGUMENT_DEPTH, 480])
deep_values = st.builds(nest, hostile_values, depths)
any_values = hostile_values | deep_values
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
    # Hypothesis raises the recursion limit while a test runs; a Lambda container keeps Python's default.
    raised = sys.getrecursionlimit()
    sys.setrecursionlimit(PYTHON_RECURSION_LIMIT)
    try:
        return lambda_app(proxy_event("POST", "/mcp", headers, text), LambdaContext())
    finally:
        sys.setrecursionlimit(raised)


def check(answer: dict[str, Any]) -> None:
    """The properties every answer must have, whatever was asked."""
    status, body = answer["statusCode"], answer["body"]
    assert status < 500, body
    body.encode("utf-8")  # API Gateway sends it as UTF-8: a lone surrogate echoed raw would fail there
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
    # A batch (accepted under 2025-03-26) is answered with an array of such messages.
    for one in message if isinstance(message, list) else [message]:
        check_message(one)


def check_message(message: dict[str, Any]) -> None:
    """A JSON-RPC response: an error with a code and a message, or a result object."""
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
@given(body=st.binary(max_size=300) | st.text(max_size=300) | any_values.map(json.dumps))
def test_random_bodies(lambda_app, alice, body):
    check(invoke(lambda_app, body, headers_for(alice.token)))


def deep_body(levels: int, opener: str, closed: bool, place: str) -> str:
    """A body nesting `levels` arrays or objects, closed or not, as the whole body or inside a request."""
    inner = opener * levels + ("1" + ("]" if opener == "[" else "}") * levels if closed else "")
    if place == "body":
        return inner
    if place == "params":
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "ping", "params": {"x": "HOLE"}}
    else:
        arguments = {"session_name": "deep", "metadata": {"x": "HOLE"}}
        params = {"name": "chitty_chat_session_create", "arguments": arguments}
        message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params}
    return json.dumps(message).replace('"HOLE"', inner)


@settings(FUZZ, max_examples=120)
@given(
    levels=st.integers(0, 2_000)
    | st.sampled_from([MAX_JSON_DEPTH - 5, MAX_JSON_DEPTH - 4, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 100_000]),
    opener=st.sampled_from(["[", '{"a":']),
    closed=st.booleans(),
    place=st.sampled_from(["body", "params", "arguments"]),
    token=st.sampled_from(["good", "bad", "none"]),
)
def test_deeply_nested_bodies(lambda_app, alice, levels, opener, closed, place, token):
    headers = headers_for(alice.token if token == "good" else "chitty_" + "x" * 43)
    if token == "none":
        del headers["Authorization"]
    answer = invoke(lambda_app, deep_body(levels, opener, closed, place), headers)
    check(answer)
    if token != "good":
        assert answer["statusCode"] == 401


@FUZZ
@given(
    jsonrpc=st.sampled_from(["2.0", "1.0", None]) | json_scalars,
    request_id=st.one_of(st.integers(), st.text(max_size=10), odd_text, st.none(), st.floats(), st.booleans()),
    method=methods | odd_text,
    params=any_values,
    meta=st.dictionaries(
        st.sampled_from(
            ["io.modelcontextprotocol/protocolVersion", "io.modelcontextprotocol/clientCapabilities", "progressToken"]
        ),
        any_values,
    ),
    drop=st.sets(st.sampled_from(["jsonrpc", "id", "method", "params"])),
    answer=st.sampled_from([None, "result", "error"]),
)
def test_mutated_envelopes(lambda_app, alice, jsonrpc, request_id, method, params, meta, drop, answer):
    if isinstance(params, dict):
        params = {**params, "_meta": meta}
    message = {"jsonrpc": jsonrpc, "id": request_id, "method": method, "params": params}
    if answer is not None:  # a client's response to the server carries one of these instead of params
        message[answer] = message.pop("params")
    for key in drop:
        message.pop(key, None)
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


EDGES = st.sampled_from(["", "x\n", " ", "\u0663", 1.0, 0, -1, 2**64, True, None, [], {}, 0.5]) | json_values


def values_for(
    schema: dict[str, Any], mutate: bool, *, integral_floats: bool = False, hostile: bool = False
) -> st.SearchStrategy[Any]:
    """Values a JSON Schema accepts. With `mutate`, any part may be swapped for an edge case and keys
    may go missing or be added; with `integral_floats`, integers may come as floats (100.0, which
    JSON Schema counts as an integer); with `hostile`, any string may hold U+0000 or a lone
    surrogate, any number be NaN or Infinity, and free-form values be any of `any_values`."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds] if kinds else []
    options: list[st.SearchStrategy[Any]] = [
        values_for(branch, mutate, integral_floats=integral_floats, hostile=hostile)
        for branch in schema.get("anyOf", [])
    ]
    if "enum" in schema:
        options.append(st.sampled_from(schema["enum"]))
    for kind in [] if "enum" in schema else kinds:
        if kind == "string" and "pattern" in schema:
            pattern = st.from_regex(schema["pattern"], fullmatch=True)
            options.append(pattern.filter(lambda text: len(text) <= schema.get("maxLength", 10**6)))
        elif kind == "string":
            length = {"min_size": schema.get("minLength", 0), "max_size": min(schema.get("maxLength", 40), 40)}
            options.append(st.text(storable_characters, **length))
        elif kind == "integer":
            integers = st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))
            options.append(integers | integers.map(float) if integral_floats else integers)
        elif kind == "number":
            options.append(st.floats(schema.get("minimum"), schema.get("maximum"), allow_nan=False))
        elif kind == "boolean":
            options.append(st.booleans())
        elif kind == "null":
            options.append(st.none())
        elif kind == "array":
            items = values_for(schema.get("items", {}), mutate, integral_floats=integral_floats, hostile=hostile)
            size = {"min_size": schema.get("minItems", 0), "max_size": min(schema.get("maxItems", 3), 3)}
            options.append(st.lists(items, **size))
        elif kind == "object":
            options.append(objects_for(schema, mutate, integral_floats=integral_floats, hostile=hostile))
        if hostile and kind == "string":
            options.append(odd_text)
        elif hostile and kind in ("number", "integer"):
            options.append(odd_numbers)
    valid = st.one_of(options) if options else any_values if hostile else json_values
    return st.one_of(valid, EDGES) if mutate else valid


def objects_for(
    schema: dict[str, Any], mutate: bool, *, integral_floats: bool = False, hostile: bool = False
) -> st.SearchStrategy[dict[str, Any]]:
    properties = schema.get("properties", {})
    required = set() if mutate else set(schema.get("required", []))  # with `mutate`, required keys may go missing
    drawn = {
        name: values_for(sub, mutate, integral_floats=integral_floats, hostile=hostile)
        for name, sub in properties.items()
    }
    objects = st.fixed_dictionaries(
        {name: drawn[name] for name in required},
        optional={name: value for name, value in drawn.items() if name not in required},
    )
    if schema.get("maxProperties") is not None:
        objects = objects.filter(lambda value: len(value) <= schema["maxProperties"])
    if mutate or (hostile and schema.get("additionalProperties") is not False):
        keys = st.text(max_size=8) | odd_text if hostile else st.text(max_size=8)
        extra = st.dictionaries(keys, any_values if hostile else json_values, max_size=2)
        objects = st.builds(lambda base, more: {**more, **base}, objects, extra)
    return objects


TOOL_BASES: dict[str, dict[str, Any]] = {
    "chatgpt_complete": {"messages": [{"role": "user", "content": "hi"}], "temperature": 0.5, "max_tokens": 50},
    "chitty_chat_session_create": {"session_name": "fuzz", "metadata": {"case_id": "c", "document_ids": ["d"]}},
    "chitty_chat_session_list": {"limit": 5},
    "chitty_chat_session_get": {"session_id": "00000000-0000-0000-0000-000000000000"},
    "chitty_usage_analytics": {"start_date": "2026-01-01", "end_date": "2026-01-02", "granularity": "day"},
    "chitty_model_config_create": {"name": "fuzz", "model": "gpt-4o-mini"},
    "chitty_session_template_create": {
        "name": "fuzz",
        "description": "d",
        "system_prompt": "{{x}}",
        "default_metadata": {"case_type": "t"},
    },
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
        | st.text(max_size=8)
        | odd_text,
        any_values,
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


def plant(arguments: dict[str, Any], data: st.DataObject) -> None:
    """Put one hostile thing among arguments, keeping its kind: U+0000 or a lone surrogate in a string
    or a key, NaN, Infinity or 100.0 for a number, something nested too deep inside an object or array."""
    places: list[tuple[Any, Any]] = []  # (container, key or index) of every value, at any depth
    stack: list[Any] = [arguments]
    while stack:
        container = stack.pop()
        for step, item in container.items() if isinstance(container, dict) else enumerate(container):
            places.append((container, step))
            if isinstance(item, (dict, list)):
                stack.append(item)
    values = [container[step] for container, step in places]
    texts = [place for place, value in zip(places, values, strict=True) if isinstance(value, str)]
    numbers = [
        place
        for place, value in zip(places, values, strict=True)
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    containers = [arguments, *(value for value in values if isinstance(value, (dict, list)))]
    kinds = ["nesting", "key"] + ["text"] * bool(texts) + ["number"] * bool(numbers)
    kind = data.draw(st.sampled_from(kinds))
    if kind in ("text", "number"):
        container, step = data.draw(st.sampled_from(texts if kind == "text" else numbers))
        value = container[step]
        bad = odd_text if kind == "text" else st.sampled_from([math.nan, math.inf, -math.inf, float(value)])
        container[step] = data.draw(bad)
        return
    target = data.draw(
        st.sampled_from(containers if kind == "nesting" else [c for c in containers if isinstance(c, dict)])
    )
    if kind == "key":
        target[data.draw(odd_text)] = "x"
        return
    deep = nest(1, data.draw(st.sampled_from([480, MAX_ARGUMENT_DEPTH])))  # the first is drawn most
    if isinstance(target, list):
        target.append(deep)
    else:
        target["deep"] = deep


@FUZZ
@given(tool=st.sampled_from(sorted(TOOL_BASES)), data=st.data())
def test_one_hostile_value_among_tool_arguments_that_work(lambda_app, alice, tool, data):
    arguments = copy.deepcopy(TOOL_BASES[tool])
    plant(arguments, data)
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    answer = invoke(lambda_app, json.dumps(body), headers_for(alice.token))
    check(answer)
    assert answer["statusCode"] == 200
    assert "result" in json.loads(answer["body"])


@FUZZ
@given(data=st.data())
def test_tool_arguments_shaped_by_each_schema(lambda_app, alice, data):
    from chalicelib.service import mcp_server

    tools = mcp_server().registry.tools
    tool = data.draw(st.sampled_from(sorted(tools)))
    shape = data.draw(st.sampled_from(["valid", "mutated", "planted"]))
    mutate = shape == "mutated"
    arguments = data.draw(objects_for(tools[tool].input_schema, mutate, integral_floats=True, hostile=mutate))
    if shape == "planted":
        plant(arguments, data)
    body = {"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": tool, "arguments": arguments}}
    answer = invoke(lambda_app, json.dumps(body), headers_for(alice.token))
    check(answer)
    assert answer["statusCode"] == 200
    assert "result" in json.loads(answer["body"])


PROMPT_NAMES = ["fact-checking", "legal-research", "contract-review", "case-analysis"]
PROMPT_ARGUMENTS = ["subject", "audience", "jurisdiction", "practice_area", "document_type"]
URI_PREFIXES = ["chitty://sessions/", "chitty://sessions/00000000-0000-0000-0000-00000000000", "chitty://", "", "x:"]


@FUZZ
@given(
    request_id=st.integers() | odd_text,
    method=st.sampled_from(["resources/read", "prompts/get", "tools/call"]) | odd_text,
    uri=st.builds(str.__add__, st.sampled_from(URI_PREFIXES), odd_text | st.text(max_size=20)) | any_values,
    name=st.sampled_from(PROMPT_NAMES) | odd_text | any_values,
    arguments=st.dictionaries(
        st.sampled_from(PROMPT_ARGUMENTS) | odd_text | st.text(max_size=8),
        odd_text | st.text(max_size=30) | any_values,
        max_size=3,
    )
    | any_values,
)
def test_odd_strings_as_ids_methods_resource_uris_and_prompt_names_and_arguments(
    lambda_app, alice, request_id, method, uri, name, arguments
):
    params = {"uri": uri} if method == "resources/read" else {"name": name, "arguments": arguments}
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
    check(invoke(lambda_app, json.dumps(body), headers_for(alice.token)))

"""OpenAI as it is today: both wire formats, reasoning controls, content parts, structured output, function
tools, web search, service tiers and the safety identifier, each through the server over HTTP against the
local fake, which refuses what OpenAI refuses.

Money: every call here that reaches the fake is recorded through the same idempotent record_completion as
any other turn, and the books of the shared test database are checked to balance at the end of the session
(tests/books.py); the tests that refuse a call check that nothing was sent and nothing reserved is left.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.auth import hash_token
from devtools.fake_openai import Reply, StreamError, ToolCalls, count_tokens
from tests.clients import error_details
from tests.conftest import ENCRYPTION_KEY, Server, server_env, start_server
from tests.test_chat import new_session, rows, tool

MILLION = Decimal(1_000_000)
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n fake image").decode()
PDF = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4 a contract").decode()
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def responses_server(database_url, fake_openai_server, tmp_path_factory) -> Iterator[Server]:
    """The app speaking OpenAI's Responses API to the fake (as it does to OpenAI itself)."""
    env = {**server_env(database_url, fake_openai_server), "CHITTY_UPSTREAM_API": "responses"}
    running = start_server(tmp_path_factory.mktemp("responses"), env)
    yield running
    running.stop()


@pytest.fixture(params=["chat", "responses"])
def api(request, server, responses_server) -> tuple[str, Server]:
    """Each wire format in turn: Chat Completions (an OpenAI-compatible upstream) and Responses."""
    return request.param, server if request.param == "chat" else responses_server


def complete(server, user, messages, **arguments) -> dict[str, Any]:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return tool(server, user, "chatgpt_complete", {"messages": messages, **arguments})


def sent(fake, kind: str) -> list[Any]:
    return fake.chat_requests if kind == "chat" else fake.responses_requests


def turn_row(database_url, turn_id) -> dict[str, Any]:
    (row,) = rows(
        database_url,
        "SELECT * FROM chat_messages WHERE turn_id = CAST(:t AS uuid) AND role = 'assistant'",
        t=turn_id,
    )
    return row


def test_both_wire_formats_give_the_same_answer_usage_and_cost(api, fake_openai, alice, database_url):
    kind, server = api
    fake_openai.cached_tokens, fake_openai.reasoning_tokens = 4, 7
    result = complete(server, alice, "hello there", model="gpt-4.1-mini")
    structured = result["structuredContent"]
    (request,) = sent(fake_openai, kind)
    assert request.path == ("/v1/chat/completions" if kind == "chat" else "/v1/responses")
    if kind == "responses":
        assert request.json["store"] is False
        assert request.json["input"] == [{"role": "user", "content": "hello there"}]
    assert structured["content"] == "echo: hello there"
    usage = structured["usage"]
    assert usage["prompt_tokens"] == 1 + count_tokens("hello there")
    assert usage["completion_tokens"] == count_tokens("echo: hello there") + 7
    assert (usage["cached_tokens"], usage["reasoning_tokens"]) == (4, 7)
    row = turn_row(database_url, structured["turn_id"])
    expected = (
        (usage["prompt_tokens"] - 4) * Decimal("0.40")
        + 4 * Decimal("0.10")
        + usage["completion_tokens"] * Decimal("1.60")
    ) / MILLION
    assert row["cost_usd"] == expected
    assert Decimal(str(structured["cost_usd"])) == expected


def test_both_wire_formats_stream_text_deltas_as_progress(api, fake_openai, alice, database_url):
    kind, server = api
    messages = tool(
        server,
        alice,
        "chatgpt_stream",
        {"messages": [{"role": "user", "content": "stream this please"}], "model": "gpt-4.1-mini"},
        meta={"progressToken": "p1"},
    )
    progress = [m["params"] for m in messages if m.get("method") == "notifications/progress"]
    result = messages[-1]["result"]
    assert "".join(p["message"] for p in progress) == "echo: stream this please"
    assert result["structuredContent"]["content"] == "echo: stream this please"
    assert len(sent(fake_openai, kind)) == 1
    assert sent(fake_openai, kind)[0].json["stream"] is True


def test_a_broken_responses_stream_is_billed_for_what_came_back(responses_server, fake_openai, alice, database_url):
    fake_openai.script(StreamError(after_chunks=6))
    result = tool(
        responses_server,
        alice,
        "chatgpt_stream",
        {"messages": [{"role": "user", "content": "a long answer please"}], "model": "gpt-4.1-mini"},
    )
    details = error_details(result)
    assert details["billed_tokens"] > 0
    row = turn_row(database_url, details["turn_id"])
    assert row["status"] == "error"
    assert row["usage_estimated"] is True
    assert row["cost_usd"] > 0


def test_reasoning_effort_and_verbosity_reach_the_model_where_each_api_wants_them(api, fake_openai, alice):
    kind, server = api
    result = complete(server, alice, "think", model="gpt-5.4-mini", reasoning_effort="high", verbosity="low")
    assert not result.get("isError"), result
    (request,) = sent(fake_openai, kind)
    if kind == "chat":
        assert (request.json["reasoning_effort"], request.json["verbosity"]) == ("high", "low")
    else:
        assert request.json["reasoning"] == {"effort": "high"}
        assert request.json["text"] == {"verbosity": "low"}


@pytest.mark.parametrize("parameter", ["temperature", "top_p"])
def test_sampling_on_a_reasoning_model_is_refused_before_anything_is_sent(api, fake_openai, alice, parameter):
    _kind, server = api
    result = complete(server, alice, "hi", model="gpt-5.4-mini", **{parameter: 0.5})
    details = error_details(result)
    text = result["content"][0]["text"]
    assert parameter in text
    assert "gpt-5.4-mini" in text
    assert "Nothing was sent" in text
    assert (details["parameter"], details["model"]) == (parameter, "gpt-5.4-mini")
    assert fake_openai.requests == []
    # At reasoning effort none the model takes it (OpenAI's rule for the GPT-5.1 family on).
    accepted = complete(server, alice, "hi", model="gpt-5.4-mini", reasoning_effort="none", **{parameter: 0.5})
    assert not accepted.get("isError"), accepted


def test_sampling_from_a_model_config_is_refused_too_and_says_so(server, fake_openai, alice, database_url):
    created = tool(server, alice, "chitty_model_config_create", {"name": "warm", "model": "o3", "temperature": 0.9})
    assert not created.get("isError"), created
    result = complete(server, alice, "hi", model_config="warm")
    text = result["content"][0]["text"]
    assert error_details(result)["parameter"] == "temperature"
    assert "model config 'warm'" in text
    assert "'o3'" in text
    assert fake_openai.requests == []
    reservations = rows(
        database_url, "SELECT count(*) AS n FROM usage_reservations WHERE user_id = :u", u=alice.user_id
    )
    assert reservations[0]["n"] == 0


def test_an_effort_the_model_does_not_take_is_refused_with_what_it_takes(server, fake_openai, alice):
    result = complete(server, alice, "hi", model="gpt-5.4-mini", reasoning_effort="minimal")
    details = error_details(result)
    assert details["parameter"] == "reasoning_effort"
    assert "minimal" not in details["accepted"]
    assert "none" in details["accepted"]
    assert "xhigh" in details["accepted"]
    assert complete(server, alice, "hi", model="gpt-4.1-mini", reasoning_effort="low")["isError"] is True
    assert fake_openai.requests == []


def test_a_reasoning_summary_comes_back_as_structured_content(responses_server, server, fake_openai, alice):
    result = complete(responses_server, alice, "why", model="gpt-5.4-mini", reasoning_summary="auto")
    assert result["structuredContent"]["reasoning_summary"]
    (request,) = fake_openai.responses_requests
    assert request.json["reasoning"] == {"summary": "auto"}
    refused = complete(server, alice, "why", model="gpt-5.4-mini", reasoning_summary="auto")
    assert "Responses API" in refused["content"][0]["text"]
    assert refused["isError"] is True
    assert len(fake_openai.requests) == 1


def test_an_answer_cut_at_the_limit_before_any_text_says_so(api, fake_openai, alice):
    _kind, server = api
    fake_openai.reasoning_tokens = 50
    fake_openai.script(Reply("", finish_reason="length"))
    result = complete(server, alice, "hard problem", model="gpt-5.4-mini", max_tokens=50)
    text = result["content"][0]["text"]
    assert result["structuredContent"]["finish_reason"] == "length"
    assert "output limit (50 tokens)" in text
    assert "reasoning" in text


def test_under_a_budget_a_reasoning_model_gets_room_to_think(api, fake_openai, make_user, admin):
    kind, server = api
    user = make_user()
    tool(server, admin, "chitty_usage_limits_set", {"user_id": user.user_id, "monthly_budget_usd": 10})
    complete(server, user, "hi", model="gpt-5.4-mini")
    complete(server, user, "hi", model="gpt-4.1-mini")
    reasoning, plain = sent(fake_openai, kind)
    key = "max_completion_tokens" if kind == "chat" else "max_output_tokens"
    assert (reasoning.json[key], plain.json[key]) == (32768, 4096)


def test_images_files_and_the_developer_role_reach_the_model_in_each_apis_shape(api, fake_openai, alice):
    kind, server = api
    content = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": PNG}},
        {"type": "file", "file": {"file_data": PDF, "filename": "contract.pdf"}},
    ]
    messages = [{"role": "developer", "content": "Answer briefly."}, {"role": "user", "content": content}]
    result = complete(server, alice, messages, model="gpt-4.1-mini")
    assert not result.get("isError"), result
    (request,) = sent(fake_openai, kind)
    if kind == "chat":
        assert request.json["messages"] == messages
    else:
        assert request.json["input"] == [
            {"role": "developer", "content": "Answer briefly."},
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in these?"},
                    {"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "low"},
                    {"type": "input_image", "image_url": PNG, "detail": "auto"},
                    {"type": "input_file", "file_data": PDF, "filename": "contract.pdf"},
                ],
            },
        ]


def test_a_file_by_url_needs_the_responses_api(server, responses_server, fake_openai, alice):
    content = [{"type": "text", "text": "Summarise"}, {"type": "file", "file": {"file_url": "https://e.com/c.pdf"}}]
    refused = complete(server, alice, [{"role": "user", "content": content}], model="gpt-4.1-mini")
    assert error_details(refused)["parameter"] == "file_url"
    assert fake_openai.requests == []
    accepted = complete(responses_server, alice, [{"role": "user", "content": content}], model="gpt-4.1-mini")
    assert not accepted.get("isError"), accepted
    assert fake_openai.responses_requests[0].json["input"][0]["content"][1] == {
        "type": "input_file",
        "file_url": "https://e.com/c.pdf",
    }


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}, "messages[0].content[0]"),
        (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://e.com/a.png"}}]},
            "messages[0].content[0]",
        ),
        ({"role": "user", "content": [{"type": "file", "file": {"file_data": PDF}}]}, "messages[0].content[0]"),
        (
            {
                "role": "user",
                "content": [
                    {"type": "file", "file": {"file_data": PDF, "file_url": "https://e.com/a", "filename": "a"}}
                ],
            },
            "messages[0].content[0]",
        ),
        (
            {"role": "user", "content": [{"type": "text", "text": "a", "image_url": {"url": PNG}}]},
            "messages[0].content[0]",
        ),
        ({"role": "tool", "content": "42"}, "messages[0]"),
        ({"role": "user", "content": "hi", "tool_call_id": "call_1"}, "messages[0]"),
        ({"role": "assistant"}, "messages[0]"),
    ],
)
def test_malformed_messages_are_clear_errors_and_send_nothing(server, fake_openai, alice, message, field):
    result = complete(server, alice, [message], model="gpt-4.1-mini")
    assert error_details(result)["field"] == field
    assert fake_openai.requests == []


def test_structured_output_comes_back_parsed(api, fake_openai, alice):
    kind, server = api
    schema = {
        "type": "object",
        "properties": {"party": {"type": "string"}, "amount": {"type": "number"}},
        "required": ["party", "amount"],
        "additionalProperties": False,
    }
    fake_openai.reply = json.dumps({"party": "Acme", "amount": 12.5})
    response_format = {"type": "json_schema", "json_schema": {"name": "invoice", "schema": schema, "strict": True}}
    result = complete(server, alice, "extract", model="gpt-4.1-mini", response_format=response_format)
    assert result["structuredContent"]["parsed"] == {"party": "Acme", "amount": 12.5}
    (request,) = sent(fake_openai, kind)
    if kind == "chat":
        assert request.json["response_format"] == response_format
    else:
        assert request.json["text"]["format"] == {
            "type": "json_schema",
            "name": "invoice",
            "schema": schema,
            "strict": True,
        }


def test_a_reply_that_does_not_parse_is_an_error_but_is_billed(api, fake_openai, alice, database_url):
    _kind, server = api
    fake_openai.reply = "not json at all"
    result = complete(server, alice, "extract", model="gpt-4.1-mini", response_format={"type": "json_object"})
    details = error_details(result)
    assert "not the JSON" in result["content"][0]["text"]
    row = turn_row(database_url, details["turn_id"])
    assert row["cost_usd"] > 0
    assert Decimal(str(details["cost_usd"])) == row["cost_usd"]


def test_function_tools_round_trip_through_a_session(api, fake_openai, alice, database_url):
    kind, server = api
    session = new_session(server, alice)
    fake_openai.script(ToolCalls([("get_weather", {"city": "Paris"})]))
    first = complete(server, alice, "weather in Paris?", model="gpt-4.1-mini", session_id=session, tools=[WEATHER])
    structured = first["structuredContent"]
    assert structured["finish_reason"] == "tool_calls"
    (call,) = structured["tool_calls"]
    assert call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris"}
    assert "get_weather" in first["content"][0]["text"]
    # The result goes back as a tool message; the session's history carries the call it answers.
    second = complete(
        server,
        alice,
        [{"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 18}'}],
        model="gpt-4.1-mini",
        session_id=session,
        tools=[WEATHER],
    )
    assert not second.get("isError"), second
    last = sent(fake_openai, kind)[-1].json
    if kind == "chat":
        assistant, result = last["messages"][-2:]
        assert assistant["tool_calls"] == [
            {"id": call["id"], "type": "function", "function": {"name": "get_weather", "arguments": call["arguments"]}}
        ]
        assert result == {"role": "tool", "tool_call_id": call["id"], "content": '{"temp_c": 18}'}
    else:
        function_call, output = last["input"][-2:]
        assert function_call == {
            "type": "function_call",
            "call_id": call["id"],
            "name": "get_weather",
            "arguments": call["arguments"],
        }
        assert output == {"type": "function_call_output", "call_id": call["id"], "output": '{"temp_c": 18}'}
    stored = rows(
        database_url,
        "SELECT role, tool_calls, tool_call_id FROM chat_messages WHERE session_id = CAST(:s AS uuid) ORDER BY seq",
        s=session,
    )
    assert [row["role"] for row in stored] == ["user", "assistant", "tool", "assistant"]
    assert stored[1]["tool_calls"][0]["id"] == call["id"]
    assert stored[2]["tool_call_id"] == call["id"]


def test_a_tool_result_without_its_call_is_refused_as_openai_refuses_it(api, fake_openai, alice):
    _kind, server = api
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "call_nope", "content": "1"}]
    result = complete(server, alice, messages, model="gpt-4.1-mini")
    assert error_details(result)["upstream_status"] == 400


def test_web_search_returns_citations_and_bills_each_search(responses_server, server, fake_openai, alice, database_url):
    fake_openai.citations = [("https://example.com/news", "News")]
    fake_openai.web_searches = 2
    result = complete(responses_server, alice, "latest news", model="gpt-5.4-mini", web_search=True)
    structured = result["structuredContent"]
    assert structured["citations"] == [{"url": "https://example.com/news", "title": "News"}]
    assert structured["usage"]["web_search_calls"] == 2
    assert "https://example.com/news" in result["content"][0]["text"]
    (request,) = fake_openai.responses_requests
    assert {"type": "web_search", "search_context_size": "medium"} in request.json["tools"]
    row = turn_row(database_url, structured["turn_id"])
    (price,) = rows(
        database_url,
        "SELECT (usage_cost(price_in_force('gpt-5.4-mini', now()), :p, 0, 0, :c, 'default', 2)) AS cost",
        p=structured["usage"]["prompt_tokens"],
        c=structured["usage"]["completion_tokens"],
    )
    (bare,) = rows(
        database_url,
        "SELECT (usage_cost(price_in_force('gpt-5.4-mini', now()), :p, 0, 0, :c, 'default', 0)) AS cost",
        p=structured["usage"]["prompt_tokens"],
        c=structured["usage"]["completion_tokens"],
    )
    assert row["web_search_calls"] == 2
    assert row["cost_usd"] == price["cost"] > bare["cost"]
    refused = complete(server, alice, "latest news", model="gpt-5.4-mini", web_search=True)
    assert error_details(refused)["parameter"] == "web_search"


def test_the_tier_that_served_the_call_prices_it(api, fake_openai, alice, database_url):
    kind, server = api
    fake_openai.served_tier = "priority"
    result = complete(server, alice, "fast please", model="gpt-5.4-mini", service_tier="priority")
    structured = result["structuredContent"]
    assert structured["service_tier"] == "priority"
    assert sent(fake_openai, kind)[0].json["service_tier"] == "priority"
    row = turn_row(database_url, structured["turn_id"])
    usage = structured["usage"]
    priority = (usage["prompt_tokens"] * Decimal("1.5") + usage["completion_tokens"] * Decimal("9")) / MILLION
    assert row["service_tier"] == "priority"
    assert row["cost_usd"] == priority


def test_stop_and_seed_go_to_chat_completions_and_are_refused_on_responses(
    server, responses_server, fake_openai, alice
):
    result = complete(server, alice, "count", model="gpt-4.1-mini", stop=["\n\n"], seed=7)
    assert not result.get("isError"), result
    assert (fake_openai.chat_requests[0].json["stop"], fake_openai.chat_requests[0].json["seed"]) == (["\n\n"], 7)
    refused = complete(responses_server, alice, "count", model="gpt-4.1-mini", seed=7)
    assert error_details(refused)["field"] == "seed"
    assert len(fake_openai.requests) == 1


def test_every_call_carries_a_stable_pseudonymous_safety_identifier(api, fake_openai, alice, bob):
    kind, server = api
    complete(server, alice, "one", model="gpt-4.1-mini")
    complete(server, alice, "two", model="gpt-4.1-mini")
    complete(server, bob, "three", model="gpt-4.1-mini")
    identifiers = [request.json["safety_identifier"] for request in sent(fake_openai, kind)]
    assert identifiers[0] == identifiers[1] != identifiers[2]
    assert all(alice.user_id not in value and bob.user_id not in value for value in identifiers)
    key = hashlib.sha256(b"chitty safety identifier\x00" + ENCRYPTION_KEY.encode()).digest()
    assert identifiers[0] == "chitty-" + hmac.new(key, alice.user_id.encode(), hashlib.sha256).hexdigest()[:32]


def test_a_retired_model_on_openai_is_refused_naming_its_successor(db, alice):
    settings = json.dumps(
        {
            "default_model": "gpt-5.4-mini",
            "api": "responses",
            "official_openai": True,
            "server_key": True,
            "lock_timeout_ms": 1000,
            "reservation_seconds": 60,
        }
    )
    options = json.dumps(
        {"settings": {}, "features": {"images": 0, "files": 0, "file_urls": 0, "tools": False}, "extra_bytes": 0}
    )

    def prepare(model: str) -> dict[str, Any]:
        row = db.one(
            "prepare_completion",
            token_hash=hash_token(alice.token),
            for_user=None,
            session_id=None,
            model_config=None,
            history_limit=50,
            turn_id=str(uuid.uuid4()),
            model=model,
            max_tokens=None,
            messages=json.dumps([{"role": "user", "content": "hi"}]),
            options=options,
            settings=settings,
        )
        assert row is not None
        return row["prepared"]

    retired = prepare("gpt-4")
    assert retired["error"] == "model_retired"
    assert retired["successor"] == "gpt-5.6-sol"
    assert prepare("gpt-5.4-mini").get("error") is None


@pytest.mark.parametrize(
    ("choice", "base_url", "api", "official"),
    [
        ("auto", None, "responses", True),
        ("auto", "https://api.openai.com/v1", "responses", True),
        ("auto", "http://127.0.0.1:4000/v1", "chat", False),
        ("auto", "https://example.openai.azure.com/openai/v1", "chat", False),
        ("chat", None, "chat", True),
        ("responses", "http://127.0.0.1:4000/v1", "responses", False),
    ],
)
def test_the_wire_format_follows_the_upstream_unless_chosen(monkeypatch, choice, base_url, api, official):
    from chalicelib.config import get_settings

    monkeypatch.setenv("CHITTY_UPSTREAM_API", choice)
    if base_url is None:
        monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    else:
        monkeypatch.setenv("OPENAI_BASE_URL", base_url)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert (settings.upstream_api, settings.official_openai) == (api, official)
    finally:
        get_settings.cache_clear()


def test_an_unknown_wire_format_is_a_configuration_error(monkeypatch):
    from chalicelib.config import ConfigError, get_settings

    monkeypatch.setenv("CHITTY_UPSTREAM_API", "soap")
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match="CHITTY_UPSTREAM_API"):
            get_settings()
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize("sdk", ["v1", "v2"])
def test_the_typescript_clients_read_every_new_kind_of_answer(responses_server, fake_openai, alice, sdk):
    """The TypeScript SDK checks each result against the tool's output schema: tool calls, citations, a
    reasoning summary and a parsed structured answer must all pass it."""
    from tests.ts_client import run_plan

    fake_openai.script(ToolCalls([("get_weather", {"city": "Oslo"})]))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    steps = [
        {"op": "listTools"},
        {
            "op": "callTool",
            "name": "chatgpt_complete",
            "arguments": {"messages": [{"role": "user", "content": "weather?"}], "tools": [WEATHER]},
        },
        {
            "op": "callTool",
            "name": "chatgpt_stream",
            "arguments": {
                "messages": [{"role": "user", "content": "news about Oslo"}],
                "web_search": {"search_context_size": "low"},
                "reasoning_summary": "concise",
                "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
            },
        },
    ]
    answer = run_plan(sdk, responses_server.mcp_url, alice.token, steps)
    calls, searched = (result["ok"] for result in answer["results"][1:])
    assert calls["isError"] is False
    assert calls["structuredContent"]["tool_calls"][0]["name"] == "get_weather"
    assert searched["isError"] is False
    structured = searched["structuredContent"]
    assert structured["citations"]
    assert structured["reasoning_summary"]
    assert structured["parsed"] == {"city": "example"}

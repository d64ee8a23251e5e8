"""chatgpt_complete and chatgpt_stream: sessions, history, exact usage and cost, progress, concurrency."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from devtools.fake_openai import make_usage
from tests.clients import CLIENT_MODES, post, sse_messages, with_client
from tests.conftest import ROOT, SERVER_OPENAI_KEY, server_env, start_server

# The server's default model (CHITTY_DEFAULT_MODEL unset) and its prices: input, cached input, output per 1M tokens.
DEFAULT_MODEL = "gpt-5.4-mini"
DEFAULT_MODEL_PRICES = (Decimal("0.75"), Decimal("0.075"), Decimal("4.5"))


def rows(database_url, sql, **params):
    from chalicelib.db import connection

    with connection(database_url) as conn:
        result = conn.run(sql, **params)
        names = [column["name"] for column in conn.columns or []]
    return [dict(zip(names, row, strict=True)) for row in result]


def tool(server, user, name, arguments, request_id=1, meta=None, accept=None):
    params = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    headers = {"Accept": accept} if accept else None
    response = post(
        server.mcp_url,
        {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params},
        token=user.token,
        headers=headers,
    )
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        return sse_messages(response.text)
    return response.json()["result"]


def ask(server, user, text, **arguments):
    return tool(server, user, "chatgpt_complete", {"messages": [{"role": "user", "content": text}], **arguments})


def new_session(server, user, prompt=None, **arguments):
    if prompt is not None:
        arguments["initial_system_prompt"] = prompt
    result = tool(server, user, "chitty_chat_session_create", {"session_name": "chat", **arguments})
    return result["structuredContent"]["session_id"]


def cost(usage, prices=DEFAULT_MODEL_PRICES):
    price_in, price_cached, price_out = prices
    prompt, cached = usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]
    return ((prompt - cached) * price_in + cached * price_cached + usage["completion_tokens"] * price_out) / 1_000_000


def test_a_one_off_completion_answers_and_records_usage_and_exact_cost(server, fake_openai, alice, database_url):
    result = ask(server, alice, "Explain quantum computing")

    sent = fake_openai.chat_requests[-1]
    assert sent.api_key == SERVER_OPENAI_KEY
    assert sent.model == DEFAULT_MODEL
    assert sent.messages == [{"role": "user", "content": "Explain quantum computing"}]
    expected = make_usage(sent.messages, "echo: Explain quantum computing")
    answer = result["structuredContent"]
    assert result["isError"] is False
    assert result["content"][0]["text"] == "echo: Explain quantum computing"
    assert answer["content"] == "echo: Explain quantum computing"
    assert answer["finish_reason"] == "stop"
    assert answer["session_id"] is None
    assert answer["usage"]["prompt_tokens"] == expected["prompt_tokens"]
    assert answer["usage"]["completion_tokens"] == expected["completion_tokens"]
    assert answer["usage"]["total_tokens"] == expected["total_tokens"]
    assert Decimal(str(answer["cost_usd"])) == cost(expected)
    (row,) = rows(database_url, "SELECT * FROM chat_messages WHERE id = :id", id=answer["message_ids"][0])
    assert row["session_id"] is None
    assert row["user_id"] == alice.user_id
    assert row["role"] == "assistant"
    assert row["content"] is None
    assert row["cost_usd"] == cost(expected)
    assert row["upstream_request_id"].startswith("req_")


def test_a_session_sends_its_system_prompt_and_history_and_stores_each_turn(server, fake_openai, alice, database_url):
    session_id = new_session(server, alice, "You are a legal research assistant.")
    first = ask(server, alice, "What is consideration?", session_id=session_id)["structuredContent"]
    second = ask(server, alice, "And estoppel?", session_id=session_id)["structuredContent"]

    assert fake_openai.chat_requests[-1].messages == [
        {"role": "system", "content": "You are a legal research assistant."},
        {"role": "user", "content": "What is consideration?"},
        {"role": "assistant", "content": "echo: What is consideration?"},
        {"role": "user", "content": "And estoppel?"},
    ]
    stored = rows(
        database_url, "SELECT seq, role, content FROM chat_messages WHERE session_id = :s ORDER BY seq", s=session_id
    )
    assert stored == [
        {"seq": 1, "role": "user", "content": "What is consideration?"},
        {"seq": 2, "role": "assistant", "content": "echo: What is consideration?"},
        {"seq": 3, "role": "user", "content": "And estoppel?"},
        {"seq": 4, "role": "assistant", "content": "echo: And estoppel?"},
    ]
    assert first["message_ids"] + second["message_ids"] == sorted(first["message_ids"] + second["message_ids"])
    assert len(second["message_ids"]) == 2


def test_session_totals_equal_the_sums_of_its_rows(server, alice, database_url):
    session_id = new_session(server, alice)
    for text in ("one", "two", "three"):
        ask(server, alice, text, session_id=session_id)
    (session,) = rows(database_url, "SELECT * FROM chat_sessions WHERE id = :s", s=session_id)
    (sums,) = rows(
        database_url,
        "SELECT count(*) AS n, sum(prompt_tokens) AS p, sum(completion_tokens) AS c, sum(cost_usd) AS cost, "
        "max(created_at) AS last FROM chat_messages WHERE session_id = :s",
        s=session_id,
    )
    assert session["message_count"] == sums["n"] == 6
    assert session["prompt_tokens"] == sums["p"]
    assert session["completion_tokens"] == sums["c"]
    assert session["total_cost_usd"] == sums["cost"]
    assert session["last_activity_at"] == sums["last"]


def test_thirty_two_concurrent_completions_into_one_session_stay_exact(server, alice, database_url):
    session_id = new_session(server, alice)

    def one(index):
        return ask(server, alice, f"question {index}", session_id=session_id)

    with ThreadPoolExecutor(max_workers=32) as pool:
        results = list(pool.map(one, range(32)))

    assert all(result["isError"] is False for result in results)
    stored = rows(
        database_url,
        "SELECT seq, role, content, turn_id FROM chat_messages WHERE session_id = :s ORDER BY seq",
        s=session_id,
    )
    assert [row["seq"] for row in stored] == list(range(1, 65))
    for question, reply in zip(stored[::2], stored[1::2], strict=True):
        assert question["role"] == "user"
        assert reply["role"] == "assistant"
        assert question["turn_id"] == reply["turn_id"]
        assert reply["content"] == "echo: " + question["content"]
    (session,) = rows(database_url, "SELECT * FROM chat_sessions WHERE id = :s", s=session_id)
    (sums,) = rows(
        database_url,
        "SELECT count(*) AS n, sum(prompt_tokens) AS p, sum(completion_tokens) AS c, sum(cost_usd) AS cost "
        "FROM chat_messages WHERE session_id = :s",
        s=session_id,
    )
    assert session["message_count"] == 64
    assert session["last_seq"] == 64
    assert (session["prompt_tokens"], session["completion_tokens"]) == (sums["p"], sums["c"])
    assert session["total_cost_usd"] == sums["cost"]


def test_the_model_comes_from_the_argument_then_the_config_then_the_session_then_the_server(
    server, fake_openai, alice, database_url
):
    config_id = str(uuid.uuid4())
    rows(
        database_url,
        "INSERT INTO model_configs (id, user_id, name, model, temperature, max_tokens, system_prompt) "
        "VALUES (CAST(:id AS uuid), :u, 'precise', 'gpt-4.1', 0.1, 300, 'Be precise.') RETURNING id",
        id=config_id,
        u=alice.user_id,
    )
    ask(server, alice, "a")
    assert fake_openai.chat_requests[-1].model == DEFAULT_MODEL
    ask(server, alice, "b", model_config="precise")
    sent = fake_openai.chat_requests[-1]
    assert (sent.model, sent.json["temperature"], sent.max_completion_tokens) == ("gpt-4.1", 0.1, 300)
    assert sent.messages[0] == {"role": "system", "content": "Be precise."}
    ask(server, alice, "c", model_config="precise", model="gpt-4o", temperature=0.9)
    sent = fake_openai.chat_requests[-1]
    assert (sent.model, sent.json["temperature"]) == ("gpt-4o", 0.9)
    session_id = new_session(server, alice)
    rows(
        database_url,
        "UPDATE chat_sessions SET model_config_id = CAST(:c AS uuid) WHERE id = CAST(:s AS uuid) RETURNING id",
        c=config_id,
        s=session_id,
    )
    ask(server, alice, "d", session_id=session_id)
    assert fake_openai.chat_requests[-1].model == "gpt-4.1"


def test_an_unknown_model_config_is_a_clear_error(server, alice):
    result = ask(server, alice, "x", model_config="nope")
    assert result["isError"] is True
    assert "No model config 'nope'" in result["content"][0]["text"]


def test_another_users_session_answers_like_a_missing_one_and_sends_nothing(server, fake_openai, alice, bob):
    theirs = new_session(server, alice)
    on_theirs = ask(server, bob, "hello", session_id=theirs)
    missing = str(uuid.uuid4())
    on_missing = ask(server, bob, "hello", session_id=missing)
    assert on_theirs["isError"] is True
    assert on_theirs["content"][0]["text"].replace(theirs, "ID") == on_missing["content"][0]["text"].replace(
        missing, "ID"
    )
    assert fake_openai.chat_requests == []


def test_an_admin_may_continue_a_users_session(server, fake_openai, alice, admin, database_url):
    session_id = new_session(server, alice)
    result = ask(server, admin, "on behalf", session_id=session_id)
    assert result["isError"] is False
    owners = rows(database_url, "SELECT DISTINCT user_id FROM chat_messages WHERE session_id = :s", s=session_id)
    assert owners == [{"user_id": alice.user_id}]


def test_an_archived_session_must_be_reactivated_first(server, fake_openai, alice):
    session_id = new_session(server, alice)
    tool(server, alice, "chitty_chat_session_update", {"session_id": session_id, "status": "archived"})
    result = ask(server, alice, "hello", session_id=session_id)
    assert result["isError"] is True
    assert "archived" in result["content"][0]["text"]
    assert fake_openai.chat_requests == []


def test_deleting_a_session_erases_its_words_but_keeps_its_usage(server, alice, database_url):
    session_id = new_session(server, alice)
    reply = ask(server, alice, "confidential", session_id=session_id)["structuredContent"]
    tool(server, alice, "chitty_chat_session_delete", {"session_id": session_id})
    kept = rows(database_url, "SELECT * FROM chat_messages WHERE id = ANY(:ids)", ids=reply["message_ids"])
    assert len(kept) == 2
    assert all(row["session_id"] is None and row["content"] is None for row in kept)
    assert sum(row["cost_usd"] or 0 for row in kept) == Decimal(str(reply["cost_usd"]))


def test_stream_sends_each_delta_as_progress_then_the_result(server, fake_openai, alice, database_url):
    messages = tool(
        server,
        alice,
        "chatgpt_stream",
        {"messages": [{"role": "user", "content": "stream a few words back"}]},
        meta={"progressToken": "tok-1"},
    )
    *progress, final = messages
    assert progress
    assert all(message["method"] == "notifications/progress" for message in progress)
    assert all(message["params"]["progressToken"] == "tok-1" for message in progress)
    positions = [message["params"]["progress"] for message in progress]
    assert positions == sorted(set(positions))
    streamed = "".join(message["params"]["message"] for message in progress)
    answer = final["result"]["structuredContent"]
    assert streamed == answer["content"] == "echo: stream a few words back"
    sent = fake_openai.chat_requests[-1]
    assert sent.stream is True
    assert sent.json["stream_options"] == {"include_usage": True}
    expected = make_usage(sent.messages, answer["content"])
    assert answer["usage"]["prompt_tokens"] == expected["prompt_tokens"]
    assert answer["usage"]["estimated"] is False
    (row,) = rows(database_url, "SELECT cost_usd FROM chat_messages WHERE id = :id", id=answer["message_ids"][-1])
    assert row["cost_usd"] == cost(expected)


def test_stream_without_a_progress_token_answers_plain_json(server, alice):
    result = tool(server, alice, "chatgpt_stream", {"messages": [{"role": "user", "content": "hi"}]})
    assert result["structuredContent"]["content"] == "echo: hi"


@pytest.mark.parametrize("mode", CLIENT_MODES)
def test_the_official_client_receives_streamed_deltas_as_progress(server, alice, mode):
    updates = []

    async def on_progress(progress, total, message):
        updates.append(message)

    async def work(client):
        return await client.call_tool(
            "chatgpt_stream",
            {"messages": [{"role": "user", "content": "progress please"}]},
            progress_callback=on_progress,
        )

    result = with_client(server.mcp_url, alice.token, mode, work)
    assert result.is_error is False
    assert "".join(updates) == result.structured_content["content"] == "echo: progress please"


ROUND_TRIPS_PROBE = """
import json, sys
from devtools.apigateway import LambdaContext, proxy_event
import app
from chalicelib.db import get_database

token, session_id = sys.argv[1], sys.argv[2]
headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json", "Accept": "application/json"}
def call(arguments):
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                       "params": {"name": "chatgpt_complete", "arguments": arguments}})
    answer = app.app(proxy_event("POST", "/mcp", headers, body), LambdaContext())
    return json.loads(answer["body"])["result"]
counts = []
for arguments in ({"messages": [{"role": "user", "content": "first"}]},
                  {"messages": [{"role": "user", "content": "in a session"}], "session_id": session_id},
                  {"messages": [{"role": "user", "content": "again"}], "session_id": session_id}):
    before = get_database().round_trips
    result = call(arguments)
    assert not result["isError"], result
    counts.append(get_database().round_trips - before)
print(json.dumps(counts))
"""


def test_a_completion_takes_two_database_round_trips_once_its_statements_are_prepared(
    server, fake_openai_server, alice, database_url
):
    session_id = new_session(server, alice)
    env = {**os.environ, **server_env(database_url, fake_openai_server)}
    completed = subprocess.run(
        [sys.executable, "-c", ROUND_TRIPS_PROBE, alice.token, session_id],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    # A fresh container prepares its two statements on the first call (one round trip each), then reuses them.
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == [4, 2, 2]


@pytest.fixture(scope="module")
def keyless_server(database_url, fake_openai_server, tmp_path_factory):
    env = {**server_env(database_url, fake_openai_server), "OPENAI_API_KEY": "", "CHITTY_HISTORY_MESSAGES": "4"}
    running = start_server(tmp_path_factory.mktemp("keyless"), env)
    yield running
    running.stop()


def test_without_any_key_the_error_says_how_to_set_one(keyless_server, fake_openai, alice):
    result = ask(keyless_server, alice, "hello")
    assert result["isError"] is True
    assert "chitty_api_key_set" in result["content"][0]["text"]
    assert fake_openai.chat_requests == []


def test_history_is_bounded_by_the_configured_window(keyless_server, fake_openai, alice):
    tool(keyless_server, alice, "chitty_api_key_set", {"api_key": "sk-window-" + "w" * 20})
    session_id = new_session(keyless_server, alice, "System.")
    for index in range(4):
        ask(keyless_server, alice, f"turn {index}", session_id=session_id)
    sent = fake_openai.chat_requests[-1].messages
    assert sent[0] == {"role": "system", "content": "System."}
    assert [message["content"] for message in sent[1:]] == [
        "turn 1",
        "echo: turn 1",
        "turn 2",
        "echo: turn 2",
        "turn 3",
    ]


@pytest.mark.parametrize("mode", CLIENT_MODES)
def test_sessions_are_resources_with_a_markdown_transcript(server, alice, bob, mode):
    session_id = new_session(server, alice, "Be brief.", metadata={"case_id": "case-9"})
    ask(server, alice, "Summarise *the* brief | with pipes", session_id=session_id)
    uri = f"chitty://sessions/{session_id}"

    async def work(client):
        listed = await client.list_resources()
        templates = await client.list_resource_templates()
        read = await client.read_resource(uri)
        return listed, templates, read

    listed, templates, read = with_client(server.mcp_url, alice.token, mode, work)
    assert uri in [str(resource.uri) for resource in listed.resources]
    assert [template.uri_template for template in templates.resource_templates] == ["chitty://sessions/{session_id}"]
    text = read.contents[0].text
    assert read.contents[0].mime_type == "text/markdown"
    assert "Be brief." in text
    assert "case_id: case-9" in text
    assert "## 1. user" in text
    assert "Summarise *the* brief | with pipes" in text
    assert "echo: Summarise *the* brief | with pipes" in text


def test_another_users_session_resource_reads_as_not_found(server, alice, bob):
    session_id = new_session(server, alice)
    for uri in (f"chitty://sessions/{session_id}", f"chitty://sessions/{uuid.uuid4()}", "chitty://sessions/nope"):
        response = post(
            server.mcp_url,
            {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": uri}},
            token=bob.token,
        )
        assert response.json()["error"]["message"] == "Resource not found"
        assert response.json()["error"]["data"] == {"uri": uri}
    listed = post(
        server.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "resources/list", "params": {}}, token=bob.token
    ).json()
    assert f"chitty://sessions/{session_id}" not in json.dumps(listed)


@pytest.mark.parametrize("in_session", [False, True], ids=["one-off", "session"])
def test_recording_a_turn_again_writes_nothing_twice_and_answers_the_same(server, db, alice, in_session):
    # What a retry after an unacknowledged COMMIT does: the same turn id, recorded a second time.
    session_id = new_session(server, alice) if in_session else None
    reply = {
        "status": "ok",
        "content": "once",
        "model": DEFAULT_MODEL,
        "finish_reason": "stop",
        "prompt_tokens": 11,
        "completion_tokens": 7,
        "cached_tokens": 0,
        "reasoning_tokens": 0,
        "latency_ms": 3,
    }
    arguments = {
        "user_id": alice.user_id,
        "session_id": session_id,
        "turn_id": str(uuid.uuid4()),
        "messages": json.dumps([{"role": "user", "content": "hello"}] if in_session else []),
        "reply": json.dumps(reply),
        "api_key_id": None,
        "settings": json.dumps({"lock_timeout_ms": 2000}),
    }

    first = db.one("record_completion", **arguments)
    session = {"session_id": session_id, "caller": alice.user_id, "caller_is_admin": False}
    totals = db.one("get_session", **session) if in_session else None
    again = db.one("record_completion", **arguments)

    assert again["recorded"]["already_recorded"] is True
    assert again["recorded"]["message_ids"] == first["recorded"]["message_ids"]
    assert again["recorded"]["reply"]["id"] == first["recorded"]["reply"]["id"]
    assert again["recorded"]["reply"]["cost_usd"] == first["recorded"]["reply"]["cost_usd"]
    assert len(first["recorded"]["message_ids"]) == (2 if in_session else 1)
    usage = {"prompt_tokens": 11, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 0}}
    assert Decimal(str(first["recorded"]["reply"]["cost_usd"])) == pytest.approx(cost(usage))
    turn = rows(
        db.url, "SELECT count(*) AS n FROM chat_messages WHERE turn_id = CAST(:t AS uuid)", t=arguments["turn_id"]
    )
    assert turn == [{"n": 2 if in_session else 1}]
    if in_session:
        assert db.one("get_session", **session) == totals

"""Upstream failures against the local fake OpenAI: what the user sees, and what the database keeps.

The chosen design: a failed turn IS recorded. Its new user messages and one assistant row all get
status 'error' (the assistant row carries the error text and any partial streamed reply), tokens 0
and cost 0. They take sequence numbers like any other row but are never sent again as history;
the session's message_count counts only 'ok' rows, and its token and cost totals stay the sums of
its rows. Tool errors are HTTP 200 with isError, never a 5xx, and never show an API key.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.db import connection
from chalicelib.upstream import estimate_tokens
from devtools.fake_openai import (
    BreakStream,
    ErrorResponse,
    FakeOpenAI,
    Hang,
    NoUsage,
    Reset,
    bad_request,
    model_not_found,
    quota_exceeded,
    rate_limited,
    server_error,
)
from tests.clients import error_details, modern_headers, modern_request, post, sse_messages
from tests.conftest import SERVER_OPENAI_KEY, Server, User, server_env, start_server

BUDGET = 3.0  # CHITTY_UPSTREAM_TIMEOUT of this module's server: the whole upstream call's deadline
ATTEMPTS = 3  # CHITTY_UPSTREAM_ATTEMPTS
USER_KEY = "sk-user-" + "u" * 24 + "WXYZ"
ASK = [{"role": "user", "content": "hello there friend"}]


@pytest.fixture(scope="module")
def faulty_server(
    database_url: str, fake_openai_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The app with a short upstream budget, so timeouts and retries are quick to see."""
    env = {
        **server_env(database_url, fake_openai_server),
        "CHITTY_UPSTREAM_TIMEOUT": str(int(BUDGET)),
        "CHITTY_UPSTREAM_ATTEMPTS": str(ATTEMPTS),
    }
    running = start_server(tmp_path_factory.mktemp("faults"), env)
    yield running
    running.stop()


@pytest.fixture
def reject_key(fake_openai: FakeOpenAI) -> Iterator[Callable[[str], None]]:
    """Make the fake answer 401 to a key, for this test only."""
    rejected: list[str] = []

    def reject(key: str) -> None:
        fake_openai.rejected_keys.add(key)
        rejected.append(key)

    yield reject
    for key in rejected:
        fake_openai.rejected_keys.discard(key)


def call_tool_messages(
    server: Server, user: User, name: str, arguments: dict[str, Any], progress_token: str | None = None
) -> list[dict[str, Any]]:
    """tools/call over raw HTTP: the JSON-RPC messages of the answer, after checking what every answer
    must be: HTTP 200 (tool failures are isError results, never a 5xx) and no API key anywhere in it."""
    request = modern_request("tools/call", {"name": name, "arguments": arguments})
    if progress_token is not None:
        request["params"]["_meta"]["progressToken"] = progress_token
    response = post(server.mcp_url, request, token=user.token, headers=modern_headers("tools/call", name))
    assert response.status_code == 200, response.text
    for key in (SERVER_OPENAI_KEY, USER_KEY):
        assert key not in response.text
    if response.headers["content-type"].startswith("text/event-stream"):
        return sse_messages(response.text)
    return [response.json()]


def call_tool(server: Server, user: User, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The result of a tools/call over raw HTTP."""
    [*_, body] = call_tool_messages(server, user, name, arguments)
    assert "error" not in body, body
    return body["result"]


def complete(server: Server, user: User, *, stream: bool = False, **arguments: Any) -> dict[str, Any]:
    return call_tool(server, user, "chatgpt_stream" if stream else "chatgpt_complete", {"messages": ASK, **arguments})


def text_of(result: dict[str, Any]) -> str:
    return " ".join(block["text"] for block in result["content"] if block.get("type") == "text")


def query(database_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    with connection(database_url) as conn:
        rows = conn.run(sql, **params)
        names = [column["name"] for column in conn.columns or []]
    return [dict(zip(names, row, strict=True)) for row in rows]


def assistant_rows(database_url: str, user: User) -> list[dict[str, Any]]:
    return query(
        database_url,
        "SELECT status, error, content, cost_usd, prompt_tokens, completion_tokens, cached_tokens, "
        "reasoning_tokens, usage_estimated, model, created_at FROM chat_messages "
        "WHERE user_id = :user_id AND role = 'assistant' ORDER BY id",
        user_id=user.user_id,
    )


def assert_error_turn_recorded(database_url: str, user: User, message: str) -> dict[str, Any]:
    """The user's only completion is an error row with the message shown, no tokens and no cost."""
    [row] = assistant_rows(database_url, user)
    assert row["status"] == "error"
    assert row["error"] == message
    assert row["cost_usd"] == 0
    assert row["prompt_tokens"] == row["completion_tokens"] == row["cached_tokens"] == row["reasoning_tokens"] == 0
    return row


def assert_billed_partial_turn(
    database_url: str, user: User, message: str, sent: list[dict[str, str]]
) -> dict[str, Any]:
    """The user's only completion is an error row with the message shown, billed for what went out and what
    came back: the prompt and the partial reply, estimated at four characters a token and flagged."""
    [row] = assistant_rows(database_url, user)
    assert row["status"] == "error"
    assert row["error"] == message
    assert row["usage_estimated"] is True
    assert row["prompt_tokens"] == sum(estimate_tokens(m["content"]) + 4 for m in sent)
    assert row["completion_tokens"] == estimate_tokens(row["content"])
    assert row["completion_tokens"] > 0
    assert row["cost_usd"] > 0
    return row


def assert_no_part_of_key(text: str, key: str) -> None:
    """Nothing of the key but its last four characters: no eight-character stretch of it appears."""
    for start in range(len(key) - 7):
        assert key[start : start + 8] not in text, key[start : start + 8]


def assert_ok(result: dict[str, Any]) -> None:
    assert result["isError"] is False, text_of(result)


def assert_error(result: dict[str, Any]) -> str:
    assert result["isError"] is True, result
    return text_of(result)


# Rejected keys (401)


def test_a_rejected_server_key_is_named_by_its_last_four_and_not_retried(
    faulty_server, database_url, fake_openai, reject_key, alice
):
    reject_key(SERVER_OPENAI_KEY)
    result = complete(faulty_server, alice)
    message = assert_error(result)
    assert f"...{SERVER_OPENAI_KEY[-4:]}" in message
    assert "401" in message
    assert_no_part_of_key(json.dumps(result), SERVER_OPENAI_KEY)
    assert error_details(result)["upstream_status"] == 401
    assert len(fake_openai.chat_requests) == 1
    assert_error_turn_recorded(database_url, alice, message)
    assert SERVER_OPENAI_KEY not in faulty_server.log_text()


def test_a_rejected_stored_key_is_named_by_its_last_four(faulty_server, database_url, fake_openai, reject_key, alice):
    stored = call_tool(faulty_server, alice, "chitty_api_key_set", {"api_key": USER_KEY})
    assert_ok(stored)
    reject_key(USER_KEY)
    result = complete(faulty_server, alice)
    message = assert_error(result)
    assert "...WXYZ" in message
    assert SERVER_OPENAI_KEY[-4:] not in message
    assert_no_part_of_key(json.dumps(result), USER_KEY)
    [sent] = fake_openai.chat_requests
    assert sent.api_key == USER_KEY
    assert_error_turn_recorded(database_url, alice, message)


def test_an_upstream_error_that_quotes_the_callers_key_never_shows_it(faulty_server, database_url, fake_openai, alice):
    # An OpenAI-compatible endpoint whose keys are not shaped like OpenAI's, echoing the key and a bearer token.
    odd_key = "gw-live-" + "k" * 30 + "QRST"
    assert_ok(call_tool(faulty_server, alice, "chitty_api_key_set", {"api_key": odd_key}))
    echoed = f"Key {odd_key} is not allowed here (sent as Authorization: Bearer {odd_key}; caller {alice.token})."
    fake_openai.script(bad_request(echoed))
    result = complete(faulty_server, alice)
    message = assert_error(result)

    assert "is not allowed here" in message
    [row] = assistant_rows(database_url, alice)
    for place in (json.dumps(result), row["error"], faulty_server.log_text()):
        assert_no_part_of_key(place, odd_key)
        assert alice.token not in place


# Rate limits (429)


@pytest.mark.parametrize(
    ("limited", "wait"),
    [(rate_limited(retry_after=1), 1.0), (rate_limited(retry_after=None, retry_after_ms=600), 0.6)],
    ids=["retry-after", "retry-after-ms"],
)
def test_a_429_is_retried_after_the_wait_upstream_asks_for(faulty_server, fake_openai, alice, limited, wait):
    fake_openai.script(limited)
    result = complete(faulty_server, alice)
    assert_ok(result)
    first, second = fake_openai.chat_requests
    assert second.received_at - first.received_at >= wait * 0.95


def test_a_429_with_retry_after_beyond_the_budget_says_when_to_retry(faulty_server, database_url, fake_openai, alice):
    fake_openai.script(rate_limited(retry_after=120))
    result = complete(faulty_server, alice)
    message = assert_error(result)
    assert "429" in message
    assert "120" in message
    assert error_details(result)["retry_after_s"] == 120
    assert len(fake_openai.chat_requests) == 1
    assert_error_turn_recorded(database_url, alice, message)


def test_a_429_every_time_gives_up_after_the_attempt_bound(faulty_server, database_url, fake_openai, alice):
    fake_openai.script(*[rate_limited(retry_after=0.2)] * (ATTEMPTS + 2))
    result = complete(faulty_server, alice)
    message = assert_error(result)
    assert "429" in message
    assert "retry after" in message
    assert len(fake_openai.chat_requests) == ATTEMPTS
    assert_error_turn_recorded(database_url, alice, message)


def test_an_exhausted_quota_is_not_retried(faulty_server, database_url, fake_openai, alice):
    fake_openai.script(quota_exceeded(), quota_exceeded())
    result = complete(faulty_server, alice)
    message = assert_error(result)
    assert "quota" in message
    assert len(fake_openai.chat_requests) == 1
    assert_error_turn_recorded(database_url, alice, message)


def test_a_success_status_with_a_body_that_is_no_completion_is_a_clear_error(
    faulty_server, database_url, fake_openai, alice
):
    # A proxy's HTML page with a 200, say: the request is not retried (upstream may have billed it).
    fake_openai.script(ErrorResponse(200, "<html><body>Welcome to the proxy</body></html>"))
    result = complete(faulty_server, alice)
    message = assert_error(result)
    assert "not a chat completion" in message
    assert len(fake_openai.chat_requests) == 1
    assert_error_turn_recorded(database_url, alice, message)


# Server errors, timeouts, resets


@pytest.mark.parametrize("status", [500, 502, 503])
def test_a_server_error_once_is_retried_and_succeeds(faulty_server, database_url, fake_openai, alice, status):
    fake_openai.script(server_error(status))
    result = complete(faulty_server, alice)
    assert_ok(result)
    assert len(fake_openai.chat_requests) == 2
    assert [row["status"] for row in assistant_rows(database_url, alice)] == ["ok"]


def test_server_errors_every_time_give_up_after_the_attempt_bound(faulty_server, database_url, fake_openai, alice):
    fake_openai.script(*[server_error(503)] * (ATTEMPTS + 2))
    result = complete(faulty_server, alice)
    message = assert_error(result)
    assert "503" in message
    assert f"{ATTEMPTS} attempts" in message
    assert len(fake_openai.chat_requests) == ATTEMPTS
    assert_error_turn_recorded(database_url, alice, message)


def test_a_hang_past_the_budget_ends_within_the_deadline(faulty_server, database_url, fake_openai, alice):
    fake_openai.script(*[Hang(10.0)] * ATTEMPTS)
    started = time.monotonic()
    result = complete(faulty_server, alice)
    elapsed = time.monotonic() - started
    message = assert_error(result)
    assert "did not answer in time" in message
    assert elapsed < 3 * BUDGET
    assert 1 <= len(fake_openai.chat_requests) <= ATTEMPTS
    assert_error_turn_recorded(database_url, alice, message)


@pytest.mark.parametrize("fault", [Reset(), BreakStream()], ids=["reset", "cut-body"])
def test_a_dropped_connection_once_is_retried_and_succeeds(faulty_server, fake_openai, alice, fault):
    fake_openai.script(fault)
    result = complete(faulty_server, alice)
    assert_ok(result)
    assert len(fake_openai.chat_requests) == 2


def test_connection_resets_every_time_give_up_after_the_attempt_bound(faulty_server, database_url, fake_openai, alice):
    fake_openai.script(*[Reset()] * (ATTEMPTS + 2))
    result = complete(faulty_server, alice)
    message = assert_error(result)
    assert "could not be reached" in message
    assert len(fake_openai.chat_requests) == ATTEMPTS
    assert_error_turn_recorded(database_url, alice, message)


# Requests upstream refuses (4xx)


@pytest.mark.parametrize(
    ("refusal", "status", "said"),
    [
        (
            bad_request("This model's maximum context length is 128000 tokens.", "messages", "context_length_exceeded"),
            400,
            "maximum context length is 128000 tokens",
        ),
        (model_not_found("gpt-4o-mini"), 404, "The model `gpt-4o-mini` does not exist"),
    ],
    ids=["400", "404"],
)
def test_a_refused_request_is_not_retried_and_carries_upstreams_message(
    faulty_server, database_url, fake_openai, alice, refusal, status, said
):
    fake_openai.script(refusal, refusal)
    result = complete(faulty_server, alice)
    message = assert_error(result)
    assert f"({status})" in message
    assert said in message
    assert error_details(result)["upstream_status"] == status
    assert len(fake_openai.chat_requests) == 1
    assert_error_turn_recorded(database_url, alice, message)


# Streams


def new_session(server: Server, user: User, system_prompt: str | None = None) -> str:
    arguments: dict[str, Any] = {"session_name": "faults"}
    if system_prompt is not None:
        arguments["initial_system_prompt"] = system_prompt
    created = call_tool(server, user, "chitty_chat_session_create", arguments)
    assert_ok(created)
    return created["structuredContent"]["session_id"]


def test_a_stream_that_breaks_midway_is_an_error_with_the_partial_reply_recorded(
    faulty_server, database_url, fake_openai, alice
):
    session_id = new_session(faulty_server, alice)
    fake_openai.script(BreakStream(after_chunks=3), BreakStream(after_chunks=3))
    arguments = {"messages": ASK, "session_id": session_id}
    *notifications, answer = call_tool_messages(faulty_server, alice, "chatgpt_stream", arguments, "p1")
    assert [note["params"]["message"] for note in notifications] == ["echo:", " hello"]
    message = assert_error(answer["result"])
    assert "stream broke" in message
    assert len(fake_openai.chat_requests) == 1
    row = assert_billed_partial_turn(database_url, alice, message, ASK)
    assert row["content"] == "echo: hello"


def test_a_stream_that_stalls_midway_past_the_budget_is_an_error_with_the_partial_reply(
    faulty_server, database_url, fake_openai, alice
):
    session_id = new_session(faulty_server, alice)
    fake_openai.script(Hang(10.0, after_chunks=3))
    started = time.monotonic()
    result = complete(faulty_server, alice, stream=True, session_id=session_id)
    elapsed = time.monotonic() - started
    message = assert_error(result)
    assert "the reply is incomplete" in message
    assert elapsed < BUDGET + 2
    assert len(fake_openai.chat_requests) == 1
    assert assert_billed_partial_turn(database_url, alice, message, ASK)["content"] == "echo: hello"


def test_a_stream_that_runs_past_the_budget_is_cut_at_the_deadline(
    faulty_server, database_url, fake_openai, alice, monkeypatch
):
    monkeypatch.setattr(fake_openai, "stream_chunk_delay", 0.3)
    session_id = new_session(faulty_server, alice)
    words = [{"role": "user", "content": " ".join(f"word{n}" for n in range(30))}]
    started = time.monotonic()
    result = complete(faulty_server, alice, stream=True, session_id=session_id, messages=words)
    elapsed = time.monotonic() - started
    message = assert_error(result)
    assert "the reply is incomplete" in message
    assert elapsed < BUDGET + 2
    assert len(fake_openai.chat_requests) == 1
    assert assert_billed_partial_turn(database_url, alice, message, words)["content"].startswith("echo: word0")


def test_a_stream_that_breaks_before_any_text_is_retried(faulty_server, fake_openai, alice):
    fake_openai.script(BreakStream(after_chunks=1))
    result = complete(faulty_server, alice, stream=True)
    assert_ok(result)
    assert result["structuredContent"]["content"] == "echo: hello there friend"
    assert len(fake_openai.chat_requests) == 2


def test_a_stream_without_usage_is_estimated_and_priced(faulty_server, database_url, fake_openai, alice):
    fake_openai.script(NoUsage())
    result = complete(faulty_server, alice, stream=True)
    assert_ok(result)
    usage = result["structuredContent"]["usage"]
    assert usage["estimated"] is True
    assert usage["prompt_tokens"] > 0
    assert usage["completion_tokens"] > 0
    [row] = assistant_rows(database_url, alice)
    assert row["status"] == "ok"
    assert row["usage_estimated"] is True
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    [price] = query(
        database_url,
        "SELECT input_per_mtok, output_per_mtok FROM model_pricing WHERE model = :model "
        "AND effective_from <= :at ORDER BY effective_from DESC LIMIT 1",
        model=row["model"],
        at=row["created_at"],
    )
    billed = row["prompt_tokens"] * price["input_per_mtok"] + row["completion_tokens"] * price["output_per_mtok"]
    expected = billed / Decimal(1_000_000)
    assert row["cost_usd"] > 0
    assert row["cost_usd"] == expected.quantize(Decimal("1e-10"))
    assert Decimal(str(result["structuredContent"]["cost_usd"])) == row["cost_usd"]


# The session after a failure


def test_a_failed_turn_leaves_the_session_consistent(faulty_server, database_url, fake_openai, alice):
    session_id = new_session(faulty_server, alice, system_prompt="Be brief.")
    first = [{"role": "user", "content": "first question"}]
    assert_ok(complete(faulty_server, alice, session_id=session_id, messages=first))
    errors_before = sum(row["status"] == "error" for row in assistant_rows(database_url, alice))
    fake_openai.script(BreakStream(after_chunks=3))
    failed = complete(
        faulty_server, alice, stream=True, session_id=session_id, messages=[{"role": "user", "content": "second one"}]
    )
    assert_error(failed)
    third = [{"role": "user", "content": "third question"}]
    assert_ok(complete(faulty_server, alice, session_id=session_id, messages=third))

    assert fake_openai.chat_requests[-1].messages == [
        {"role": "system", "content": "Be brief."},
        *first,
        {"role": "assistant", "content": "echo: first question"},
        *third,
    ]
    rows = query(
        database_url,
        "SELECT seq, role, status, content, cost_usd, prompt_tokens, completion_tokens, cached_tokens, "
        "reasoning_tokens FROM chat_messages WHERE session_id = CAST(:session_id AS uuid) ORDER BY seq",
        session_id=session_id,
    )
    assert [row["seq"] for row in rows] == list(range(1, len(rows) + 1))
    assert [(row["role"], row["status"]) for row in rows] == [
        ("user", "ok"),
        ("assistant", "ok"),
        ("user", "error"),
        ("assistant", "error"),
        ("user", "ok"),
        ("assistant", "ok"),
    ]
    assert rows[3]["content"] == "echo: second"
    # The broken stream was billed (estimated) and counts in the session's totals, though its text is never history.
    assert rows[3]["cost_usd"] > 0
    assert rows[2]["prompt_tokens"] == rows[2]["completion_tokens"] == 0
    [session] = query(
        database_url,
        "SELECT message_count, last_seq, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, "
        "total_cost_usd FROM chat_sessions WHERE id = CAST(:session_id AS uuid)",
        session_id=session_id,
    )
    assert session["message_count"] == sum(row["status"] == "ok" for row in rows) == 4
    assert session["last_seq"] == len(rows)
    for column in ("prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens"):
        assert session[column] == sum(row[column] for row in rows), column
    assert session["total_cost_usd"] == sum(row["cost_usd"] or 0 for row in rows)
    assert session["total_cost_usd"] > 0
    errors_after = sum(row["status"] == "error" for row in assistant_rows(database_url, alice))
    assert errors_after == errors_before + 1


def test_a_timed_out_attempt_is_retried_when_attempts_are_shorter_than_the_budget(fake_openai):
    from chalicelib.upstream import CompletionRequest, Upstream

    fake_openai.script(Hang(5.0))
    upstream = Upstream(base_url=fake_openai.base_url, attempt_timeout=0.5, deadline=4.0)
    reply = upstream.complete(
        SERVER_OPENAI_KEY, CompletionRequest(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
    )
    assert reply.content == "echo: hi"
    assert len(fake_openai.chat_requests) == 2

"""The books: once OpenAI may have billed a call, its usage is recorded exactly once, whatever fails after.

Each test says how a completion keeps that promise: the month's spend, the session's totals and the
turn's rows are checked against what the local upstream reported (or, where it sent no usage, the
documented estimate of four characters a token).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest

from chalicelib import auth
from chalicelib.db import connection
from chalicelib.upstream import estimate_tokens
from devtools.fake_openai import EndStream, FakeOpenAI, Reply, StreamError, make_usage
from tests.books import assert_books_balance
from tests.clients import error_details, post
from tests.conftest import Server, User, migrated_database, server_env, start_server

BUDGET = Decimal("0.003")


def tool(server: Server, user: User, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    response = post(server.mcp_url, body, token=user.token)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def ask(server: Server, user: User, text: str, stream: bool = False, **arguments: Any) -> dict[str, Any]:
    # A cheap chat model, which the budgets below are sized for (the server's default is a reasoning model).
    messages = [{"role": "user", "content": text}]
    name = "chatgpt_stream" if stream else "chatgpt_complete"
    return tool(server, user, name, {"messages": messages, "model": "gpt-4o-mini", **arguments})


def text_of(result: dict[str, Any]) -> str:
    return " ".join(block["text"] for block in result["content"] if block.get("type") == "text")


def rows(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    with connection(url) as conn:
        found = conn.run(sql, **params)
        names = [column["name"] for column in conn.columns or []]
    return [dict(zip(names, row, strict=True)) for row in found]


def month_spend(url: str, user: User) -> Decimal:
    found = rows(
        url,
        "SELECT coalesce(sum(cost_usd), 0) AS spent FROM usage_monthly WHERE user_id = :u "
        "AND month = date_trunc('month', now() AT TIME ZONE 'UTC')::date",
        u=user.user_id,
    )
    return found[0]["spent"]


def price_of(url: str, model: str, prompt: int, completion: int, cached: int = 0) -> Decimal:
    """What the price table makes of a usage, computed here from the rule the README states."""
    [price] = rows(
        url,
        "SELECT input_per_mtok, coalesce(cached_input_per_mtok, input_per_mtok) AS cached, output_per_mtok "
        "FROM model_pricing WHERE model = :m AND effective_from <= now() ORDER BY effective_from DESC LIMIT 1",
        m=model,
    )
    total = (prompt - cached) * price["input_per_mtok"] + cached * price["cached"]
    return ((total + completion * price["output_per_mtok"]) / 1_000_000).quantize(Decimal("1e-10"))


def set_limits(server: Server, admin: User, user: User, **limits: Any) -> None:
    result = tool(server, admin, "chitty_usage_limits_set", {"user_id": user.user_id, **limits})
    assert result["isError"] is False, result


def new_session(server: Server, user: User, **arguments: Any) -> str:
    result = tool(server, user, "chitty_chat_session_create", {"session_name": "books", **arguments})
    assert result["isError"] is False, result
    return result["structuredContent"]["session_id"]


def wait_for_requests(fake: FakeOpenAI, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(fake.chat_requests) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fake.chat_requests) >= count


def estimated_prompt(messages: list[dict[str, str]]) -> int:
    return sum(estimate_tokens(message["content"]) + 4 for message in messages)


# The three ways a billed call used to escape the books, each under a budget.


def test_a_nul_in_a_message_is_refused_before_openai_is_called(server, fake_openai, admin, alice, database_url):
    set_limits(server, admin, alice, monthly_budget_usd=float(BUDGET))
    result = ask(server, alice, "before\x00after")

    assert result["isError"] is True
    assert "messages" in text_of(result)
    assert fake_openai.chat_requests == []
    assert rows(database_url, "SELECT id FROM chat_messages WHERE user_id = :u", u=alice.user_id) == []


def test_a_session_deleted_while_openai_answers_still_books_the_usage(server, fake_openai, admin, alice, database_url):
    set_limits(server, admin, alice, monthly_budget_usd=float(BUDGET))
    session_id = new_session(server, alice)
    fake_openai.delay = 0.5
    answers: list[dict[str, Any]] = []
    asking = threading.Thread(target=lambda: answers.append(ask(server, alice, "going, going", session_id=session_id)))
    asking.start()
    wait_for_requests(fake_openai, 1)
    deleted = tool(server, alice, "chitty_chat_session_delete", {"session_id": session_id})
    asking.join(timeout=30)

    assert deleted["isError"] is False
    [result] = answers
    assert result["isError"] is False, text_of(result)
    answer = result["structuredContent"]
    assert answer["recorded"] == "usage_only"
    assert answer["session_id"] is None
    assert "session was deleted" in answer["notice"]
    usage = make_usage(fake_openai.chat_requests[0].messages, answer["content"])
    [row] = rows(
        database_url,
        "SELECT session_id, usage_only, content, prompt_tokens, completion_tokens, cost_usd FROM chat_messages "
        "WHERE user_id = :u",
        u=alice.user_id,
    )
    assert row["session_id"] is None
    assert row["usage_only"] is True
    assert row["content"] is None
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    expected = price_of(database_url, "gpt-4o-mini", usage["prompt_tokens"], usage["completion_tokens"])
    assert row["cost_usd"] == expected > 0
    assert month_spend(database_url, alice) == expected
    assert rows(database_url, "SELECT turn_id FROM usage_reservations WHERE user_id = :u", u=alice.user_id) == []


def test_an_error_event_midway_through_a_stream_books_what_went_out_and_came_back(
    server, fake_openai, admin, alice, database_url
):
    set_limits(server, admin, alice, monthly_budget_usd=float(BUDGET))
    fake_openai.script(StreamError(after_chunks=3, message="The model crashed (sk-proj-abcdefghijklmnopqrstuv)."))
    result = ask(server, alice, "hello there friend", stream=True)

    assert result["isError"] is True
    message = text_of(result)
    assert "OpenAI reported an error after 11 characters of the reply" in message
    assert "sk-proj" not in message
    [row] = rows(
        database_url,
        "SELECT status, usage_estimated, prompt_tokens, completion_tokens, cost_usd FROM chat_messages "
        "WHERE user_id = :u",
        u=alice.user_id,
    )
    sent = fake_openai.chat_requests[0].messages
    assert row["status"] == "error"
    assert row["usage_estimated"] is True
    assert row["prompt_tokens"] == estimated_prompt(sent)
    assert row["completion_tokens"] == estimate_tokens("echo: hello")
    expected = price_of(database_url, "gpt-4o-mini", row["prompt_tokens"], row["completion_tokens"])
    assert row["cost_usd"] == expected > 0
    assert month_spend(database_url, alice) == expected
    assert error_details(result)["billed_tokens"] == row["prompt_tokens"] + row["completion_tokens"]


def test_eight_calls_that_fail_after_the_answer_all_reach_the_months_spend(
    server, fake_openai, admin, alice, database_url
):
    set_limits(server, admin, alice, monthly_budget_usd=float(BUDGET))
    fake_openai.script(*[StreamError(after_chunks=3) for _ in range(4)], *[EndStream(after_chunks=3) for _ in range(4)])
    results = [ask(server, alice, f"call {index}", stream=True) for index in range(8)]

    assert all(result["isError"] for result in results)
    costs = rows(database_url, "SELECT cost_usd FROM chat_messages WHERE user_id = :u ORDER BY id", u=alice.user_id)
    assert len(costs) == 8
    assert all(row["cost_usd"] > 0 for row in costs)
    assert month_spend(database_url, alice) == sum(row["cost_usd"] for row in costs)


# Streams that do not end well are billed for what went out and what came back.


def test_a_stream_that_ends_without_its_last_event_is_reported_cut_and_billed(server, fake_openai, alice, database_url):
    fake_openai.script(EndStream(after_chunks=3))
    result = ask(server, alice, "hello there friend", stream=True)

    assert result["isError"] is True
    assert "without its last event" in text_of(result)
    assert len(fake_openai.chat_requests) == 1
    [row] = rows(
        database_url,
        "SELECT status, content, usage_estimated, prompt_tokens, completion_tokens, cost_usd FROM chat_messages "
        "WHERE user_id = :u",
        u=alice.user_id,
    )
    assert row["status"] == "error"
    assert row["usage_estimated"] is True
    assert row["prompt_tokens"] == estimated_prompt(fake_openai.chat_requests[0].messages)
    assert row["completion_tokens"] == estimate_tokens("echo: hello")
    assert row["cost_usd"] > 0


def test_a_cut_stream_counts_against_tokens_per_minute(server, fake_openai, admin, alice, database_url):
    set_limits(server, admin, alice, tokens_per_minute=100_000)
    fake_openai.script(EndStream(after_chunks=3))
    ask(server, alice, "hello there friend", stream=True)

    limits = tool(server, alice, "chitty_usage_limits_get", {})["structuredContent"]
    [row] = rows(
        database_url,
        "SELECT prompt_tokens + completion_tokens AS tokens FROM chat_messages WHERE user_id = :u",
        u=alice.user_id,
    )
    assert row["tokens"] > 0
    assert limits["tokens_last_minute"] == row["tokens"]


# The reservation is the worst case of exactly the request that is sent.


def test_an_empty_session_prompt_reserves_the_config_prompt_that_is_sent(
    server, fake_openai, admin, alice, database_url
):
    config = tool(
        server,
        alice,
        "chitty_model_config_create",
        {"name": f"long-{uuid.uuid4().hex[:6]}", "model": "gpt-4o-mini", "system_prompt": "x" * 100_000},
    )
    assert config["isError"] is False, config
    name = config["structuredContent"]["name"]
    session_id = new_session(server, alice, initial_system_prompt="", model_config=name)
    set_limits(server, admin, alice, monthly_budget_usd=0.01)

    refused = ask(server, alice, "hi", session_id=session_id, max_tokens=10)

    assert refused["isError"] is True
    assert text_of(refused).startswith("Monthly budget reached")
    assert fake_openai.chat_requests == []


def test_the_reservation_is_computed_from_the_messages_that_are_sent(server, fake_openai, admin, alice, database_url):
    config = tool(
        server,
        alice,
        "chitty_model_config_create",
        {"name": f"prompted-{uuid.uuid4().hex[:6]}", "model": "gpt-4o-mini", "system_prompt": "Be brief. " * 50},
    )
    name = config["structuredContent"]["name"]
    session_id = new_session(server, alice, initial_system_prompt="", model_config=name)
    assert ask(server, alice, "first", session_id=session_id)["isError"] is False
    set_limits(server, admin, alice, monthly_budget_usd=5)
    fake_openai.delay = 0.5
    held: list[list[dict[str, Any]]] = []
    asking = threading.Thread(
        target=lambda: ask(server, alice, "second question", session_id=session_id, max_tokens=64)
    )
    asking.start()
    wait_for_requests(fake_openai, 2)
    held.append(rows(database_url, "SELECT tokens FROM usage_reservations WHERE user_id = :u", u=alice.user_id))
    asking.join(timeout=30)

    sent = fake_openai.chat_requests[1].messages
    assert sent[0] == {"role": "system", "content": "Be brief. " * 50}
    bound = sum(len(message["content"].encode()) for message in sent) + 4 * (len(sent) + 1)
    assert held == [[{"tokens": bound + 64}]]


# Recording is idempotent and waits are bounded by the server.


@pytest.fixture(scope="module")
def books_database(admin_database_url: str) -> Iterator[str]:
    """A database of this module's own, which its tests may lock and constrain."""
    with migrated_database(admin_database_url, f"chitty_books_{uuid.uuid4().hex[:8]}") as url:
        yield url


@pytest.fixture(scope="module")
def impatient(books_database: str, fake_openai_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory):
    """A server that waits at most two seconds for the database."""
    env = {**server_env(books_database, fake_openai_server), "CHITTY_DB_TIMEOUT": "2"}
    running = start_server(tmp_path_factory.mktemp("books"), env)
    yield running
    running.stop()


@pytest.fixture
def carol(books_database: str) -> User:
    user_id = f"carol-{uuid.uuid4().hex[:8]}"
    token = auth.new_token()
    with connection(books_database) as conn:
        conn.run("INSERT INTO users (id, display_name) VALUES (:u, :u)", u=user_id)
        [[token_id]] = conn.run(
            "INSERT INTO access_tokens (user_id, token_hash) VALUES (:u, :h) RETURNING id",
            u=user_id,
            h=auth.hash_token(token),
        )
    return User(user_id=user_id, token=token, token_id=str(token_id))


def test_a_session_row_locked_past_the_database_timeout_gets_its_turn_stored_once(
    impatient, books_database, fake_openai, carol
):
    session_id = new_session(impatient, carol)
    locked = threading.Event()

    def hold_the_session() -> None:
        with connection(books_database) as conn:
            conn.run("BEGIN")
            conn.run("SELECT 1 FROM chat_sessions WHERE id = CAST(:s AS uuid) FOR UPDATE", s=session_id)
            locked.set()
            time.sleep(3.0)  # longer than CHITTY_DB_TIMEOUT
            conn.run("COMMIT")

    holder = threading.Thread(target=hold_the_session)
    holder.start()
    assert locked.wait(10)
    result = ask(impatient, carol, "patience", session_id=session_id)
    holder.join(timeout=30)

    assert result["isError"] is False, text_of(result)
    answer = result["structuredContent"]
    assert answer["recorded"] == "turn"
    assert answer["session_id"] == session_id
    turn = rows(
        books_database,
        "SELECT role, seq FROM chat_messages WHERE turn_id = CAST(:t AS uuid) ORDER BY seq",
        t=answer["turn_id"],
    )
    assert turn == [{"role": "user", "seq": 1}, {"role": "assistant", "seq": 2}]
    assert len(fake_openai.chat_requests) == 1


def test_forty_concurrent_long_turns_into_one_session_are_each_stored_once(
    impatient, books_database, fake_openai, carol
):
    session_id = new_session(impatient, carol)
    fake_openai.delay = 0.3
    texts = [f"turn {index:02d}" for index in range(40)]
    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(lambda text: ask(impatient, carol, text, session_id=session_id), texts))

    assert [text_of(result) for result in results if result["isError"]] == []
    turns = rows(
        books_database,
        "SELECT turn_id, count(*) AS n FROM chat_messages WHERE session_id = CAST(:s AS uuid) GROUP BY turn_id",
        s=session_id,
    )
    assert sorted(str(row["turn_id"]) for row in turns) == sorted(r["structuredContent"]["turn_id"] for r in results)
    assert {row["n"] for row in turns} == {2}
    [session] = rows(
        books_database, "SELECT message_count, last_seq FROM chat_sessions WHERE id = CAST(:s AS uuid)", s=session_id
    )
    assert session == {"message_count": 80, "last_seq": 80}
    with connection(books_database) as conn:
        assert_books_balance(conn)


def test_a_turn_the_database_refuses_to_store_is_booked_as_its_usage_alone(
    impatient, books_database, fake_openai, carol
):
    session_id = new_session(impatient, carol)
    constraint = f"refuse_poison_{uuid.uuid4().hex[:6]}"
    with connection(books_database) as conn:
        conn.run(f"ALTER TABLE chat_messages ADD CONSTRAINT {constraint} CHECK (content IS DISTINCT FROM 'poison')")
    try:
        fake_openai.script(Reply("poison"))
        result = ask(impatient, carol, "antidote", session_id=session_id)
    finally:
        with connection(books_database) as conn:
            conn.run(f"ALTER TABLE chat_messages DROP CONSTRAINT {constraint}")

    assert result["isError"] is False, text_of(result)
    answer = result["structuredContent"]
    assert answer["content"] == "poison"
    assert answer["recorded"] == "usage_only"
    assert "could not be stored in the session" in answer["notice"]
    [row] = rows(
        books_database,
        "SELECT session_id, usage_only, content, prompt_tokens, cost_usd FROM chat_messages "
        "WHERE turn_id = CAST(:t AS uuid)",
        t=answer["turn_id"],
    )
    assert row["session_id"] is None
    assert row["usage_only"] is True
    assert row["content"] is None
    assert row["prompt_tokens"] > 0
    assert row["cost_usd"] > 0


def test_text_from_openai_that_the_database_cannot_hold_is_stored_replaced_and_said(
    server, fake_openai, alice, database_url
):
    session_id = new_session(server, alice)
    fake_openai.script(Reply("nul\x00 and half a pair \ud800 here"))
    result = ask(server, alice, "say something odd", session_id=session_id)

    assert result["isError"] is False, text_of(result)
    answer = result["structuredContent"]
    assert answer["content"] == "nul\ufffd and half a pair \ufffd here"
    assert "U+FFFD" in answer["notice"]
    assert answer["recorded"] == "turn"
    stored = rows(
        database_url,
        "SELECT content FROM chat_messages WHERE turn_id = CAST(:t AS uuid) AND role = 'assistant'",
        t=answer["turn_id"],
    )
    assert stored == [{"content": "nul\ufffd and half a pair \ufffd here"}]


def test_a_turn_can_be_looked_up_by_its_owner_only(server, alice, bob):
    answer = ask(server, alice, "remember me")["structuredContent"]

    mine = tool(server, alice, "chatgpt_turn_get", {"turn_id": answer["turn_id"]})
    theirs = tool(server, bob, "chatgpt_turn_get", {"turn_id": answer["turn_id"]})
    missing = str(uuid.uuid4())
    unknown = tool(server, alice, "chatgpt_turn_get", {"turn_id": missing})

    assert mine["isError"] is False
    assert mine["structuredContent"]["message_ids"] == answer["message_ids"]
    assert Decimal(str(mine["structuredContent"]["reply"]["cost_usd"])) == Decimal(str(answer["cost_usd"]))
    assert theirs["isError"] is True
    assert text_of(theirs).replace(answer["turn_id"], "<id>") == text_of(unknown).replace(missing, "<id>")


def test_a_turn_that_would_pass_its_sessions_message_quota_is_refused_before_openai(
    server, fake_openai, admin, alice, database_url
):
    set_limits(server, admin, alice, messages_per_session=3)
    session_id = new_session(server, alice)
    first = ask(server, alice, "one", session_id=session_id)
    second = ask(server, alice, "two", session_id=session_id)

    assert first["isError"] is False
    assert second["isError"] is True
    assert text_of(second).startswith("Session quota reached: at most 3 messages per session")
    assert error_details(second)["quota"] == "messages_per_session"
    assert len(fake_openai.chat_requests) == 1


def test_concurrent_turns_into_one_session_never_pass_its_message_quota_together(
    server, fake_openai, admin, alice, database_url
):
    set_limits(server, admin, alice, messages_per_session=10)
    session_id = new_session(server, alice)
    fake_openai.delay = 0.2
    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(lambda n: ask(server, alice, f"turn {n}", session_id=session_id), range(12)))

    stored = rows(
        database_url, "SELECT count(*) AS n FROM chat_messages WHERE session_id = CAST(:s AS uuid)", s=session_id
    )
    assert sum(not result["isError"] for result in results) == 5
    assert stored == [{"n": 10}]
    assert all("Session quota reached" in text_of(result) for result in results if result["isError"])

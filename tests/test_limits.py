"""Per-user limits: budgets and rates enforced atomically with reservations."""

from __future__ import annotations

import datetime
import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from chalicelib.db import connection
from devtools.fake_openai import server_error
from tests.clients import error_details, post
from tests.conftest import server_env, start_server

GPT_4O_MINI_IN, GPT_4O_MINI_OUT = Decimal("0.15"), Decimal("0.60")


def tool(server, user, name, arguments):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    response = post(server.mcp_url, body, token=user.token)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def ask(server, user, text, **arguments):
    # gpt-4o-mini, which worst_case_cost prices (the server's default is a reasoning model, capped higher).
    arguments = {"model": "gpt-4o-mini", **arguments}
    return tool(server, user, "chatgpt_complete", {"messages": [{"role": "user", "content": text}], **arguments})


def set_limits(server, admin, user, **limits):
    result = tool(server, admin, "chitty_usage_limits_set", {"user_id": user.user_id, **limits})
    assert result["isError"] is False, result
    return result["structuredContent"]


def scalar(database_url, sql, **params):
    with connection(database_url) as conn:
        return conn.run(sql, **params)[0][0]


def worst_case_cost(text: str, max_tokens: int) -> Decimal:
    prompt_bound = len(text.encode()) + 4 * 2
    return (prompt_bound * GPT_4O_MINI_IN + max_tokens * GPT_4O_MINI_OUT) / 1_000_000


def next_month_start() -> datetime.datetime:
    now = datetime.datetime.now(datetime.UTC)
    return (now.replace(day=28) + datetime.timedelta(days=4)).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def test_forty_concurrent_calls_never_spend_past_a_budget_for_ten(server, fake_openai, admin, make_user, database_url):
    user = make_user()
    texts = [f"question {index:02d}" for index in range(40)]
    budget = 10 * worst_case_cost(texts[0], 20)
    set_limits(server, admin, user, monthly_budget_usd=float(budget))

    with ThreadPoolExecutor(max_workers=40) as pool:
        results = list(pool.map(lambda text: ask(server, user, text, max_tokens=20), texts))

    spent = scalar(
        database_url, "SELECT coalesce(sum(cost_usd), 0) FROM chat_messages WHERE user_id = :u", u=user.user_id
    )
    assert spent <= budget
    succeeded = [result for result in results if not result["isError"]]
    refused = [result for result in results if result["isError"]]
    assert len(succeeded) >= 10
    assert refused
    assert len(fake_openai.chat_requests) == len(succeeded)
    for result in refused:
        message = result["content"][0]["text"]
        assert message.startswith("Monthly budget reached for " + user.user_id)
        assert "this call could cost up to $" in message
        data = error_details(result)
        assert data["limit"] == "monthly_budget_usd"
        assert Decimal(str(data["limit_value"])) == Decimal(str(float(budget)))
        assert datetime.datetime.fromisoformat(data["resets_at"]) == next_month_start()
    leftover = scalar(database_url, "SELECT count(*) FROM usage_reservations WHERE user_id = :u", u=user.user_id)
    assert leftover == 0


def test_requests_per_minute_refuses_the_call_past_the_limit_and_says_when_to_retry(
    server, fake_openai, admin, make_user
):
    user = make_user()
    set_limits(server, admin, user, requests_per_minute=3)
    results = [ask(server, user, f"q{index}") for index in range(5)]
    assert [result["isError"] for result in results] == [False, False, False, True, True]
    refused = results[3]
    assert "Requests-per-minute limit reached" in refused["content"][0]["text"]
    assert error_details(refused)["used"] == 3
    resets = datetime.datetime.fromisoformat(error_details(refused)["resets_at"])
    assert datetime.timedelta(0) < resets - datetime.datetime.now(datetime.UTC) <= datetime.timedelta(minutes=1)
    assert len(fake_openai.chat_requests) == 3


def test_tokens_per_minute_counts_the_worst_case_of_the_call(server, admin, make_user):
    user = make_user()
    set_limits(server, admin, user, tokens_per_minute=100)
    assert ask(server, user, "short", max_tokens=10)["isError"] is False
    refused = ask(server, user, "short", max_tokens=500)
    assert refused["isError"] is True
    assert error_details(refused)["limit"] == "tokens_per_minute"
    assert error_details(refused)["requested"] > 500


def test_a_call_under_a_budget_without_max_tokens_is_capped_upstream(server, fake_openai, admin, make_user):
    user = make_user()
    set_limits(server, admin, user, monthly_budget_usd=5)
    assert ask(server, user, "hello")["isError"] is False
    assert fake_openai.chat_requests[-1].max_completion_tokens == 4096


def test_a_failed_call_settles_its_reservation(server, fake_openai, admin, make_user, database_url):
    user = make_user()
    set_limits(server, admin, user, monthly_budget_usd=5)
    fake_openai.script(server_error(400))
    assert ask(server, user, "hello")["isError"] is True
    assert scalar(database_url, "SELECT count(*) FROM usage_reservations WHERE user_id = :u", u=user.user_id) == 0


def test_a_reservation_of_a_call_that_died_stops_counting_when_it_expires(server, admin, make_user, database_url):
    user = make_user()
    budget = worst_case_cost("hello", 20) * 3 / 2
    set_limits(server, admin, user, monthly_budget_usd=float(budget))
    with connection(database_url) as conn:
        conn.run(
            "INSERT INTO usage_reservations (turn_id, user_id, cost_usd, tokens, expires_at) "
            "VALUES (gen_random_uuid(), :u, :c, 10, now() + interval '1 hour')",
            u=user.user_id,
            c=str(budget),
        )
    assert ask(server, user, "hello", max_tokens=20)["isError"] is True
    with connection(database_url) as conn:
        conn.run(
            "UPDATE usage_reservations SET expires_at = now() - interval '1 second' WHERE user_id = :u", u=user.user_id
        )
    assert ask(server, user, "hello", max_tokens=20)["isError"] is False


def test_an_unpriced_model_is_refused_under_a_budget_and_allowed_without(server, admin, make_user):
    user = make_user()
    assert ask(server, user, "hi", model="my-local-model")["isError"] is False
    set_limits(server, admin, user, monthly_budget_usd=5)
    refused = ask(server, user, "hi", model="my-local-model")
    assert refused["isError"] is True
    assert "has no price" in refused["content"][0]["text"]


def test_users_read_their_own_limits_and_admins_anyones(server, admin, alice, bob):
    own = tool(server, alice, "chitty_usage_limits_get", {})
    assert own["structuredContent"]["user_id"] == alice.user_id
    assert own["structuredContent"]["limits"]["monthly_budget_usd"] == {"value": None, "source": "none"}
    assert tool(server, alice, "chitty_usage_limits_get", {"user_id": bob.user_id})["isError"] is True
    assert tool(server, admin, "chitty_usage_limits_get", {"user_id": bob.user_id})["isError"] is False


def test_only_admins_set_limits_and_null_removes_one(server, admin, alice):
    refused = tool(server, alice, "chitty_usage_limits_set", {"user_id": alice.user_id, "requests_per_minute": 1000})
    assert refused["isError"] is True
    assert "Only admins" in refused["content"][0]["text"]
    status = set_limits(server, admin, alice, requests_per_minute=7, monthly_budget_usd=12.5)
    assert status["limits"]["requests_per_minute"] == {"value": 7, "source": "user"}
    assert status["limits"]["monthly_budget_usd"] == {"value": 12.5, "source": "user"}
    status = set_limits(server, admin, alice, requests_per_minute=None)
    assert status["limits"]["requests_per_minute"] == {"value": None, "source": "none"}
    assert status["limits"]["monthly_budget_usd"]["value"] == 12.5


def test_setting_limits_for_an_unknown_user_is_not_found(server, admin):
    result = tool(server, admin, "chitty_usage_limits_set", {"user_id": "nobody-here", "requests_per_minute": 1})
    assert result["isError"] is True
    assert "No user" in result["content"][0]["text"]


@pytest.fixture(scope="module")
def server_with_defaults(database_url, fake_openai_server, tmp_path_factory):
    env = {**server_env(database_url, fake_openai_server), "CHITTY_DEFAULT_REQUESTS_PER_MINUTE": "2"}
    running = start_server(tmp_path_factory.mktemp("defaults"), env)
    yield running
    running.stop()


def test_default_limits_come_from_configuration_until_a_user_has_their_own(server_with_defaults, admin, make_user):
    user = make_user()
    status = tool(server_with_defaults, user, "chitty_usage_limits_get", {})["structuredContent"]
    assert status["limits"]["requests_per_minute"] == {"value": 2, "source": "default"}
    assert [ask(server_with_defaults, user, "x")["isError"] for _ in range(3)] == [False, False, True]
    set_limits(server_with_defaults, admin, user, requests_per_minute=None)
    assert ask(server_with_defaults, user, "x")["isError"] is False


def test_month_spend_is_reported_exactly(server, make_user, database_url):
    user = make_user()
    costs = [ask(server, user, f"spend {index}")["structuredContent"]["cost_usd"] for index in range(3)]
    status = tool(server, user, "chitty_usage_limits_get", {})["structuredContent"]
    assert Decimal(str(status["month_spent_usd"])) == sum(Decimal(str(cost)) for cost in costs)
    assert json.loads(json.dumps(status["month_resets_at"])) == next_month_start().isoformat()

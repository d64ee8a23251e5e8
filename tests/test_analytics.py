"""Usage analytics: the hourly rollup, its refresh, the scheduled functions, and chitty_usage_analytics.

The test database is shared by the whole run, so every assertion is scoped to fresh users; a
refresh rolls up everyone's queued rows, which is fine: before counting what a refresh does,
a test first drains the queue.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import subprocess
import sys
import threading
from decimal import Decimal
from typing import Any

import pytest

from chalicelib.db import connection
from chalicelib.upkeep import RollUp, roll_up_usage
from tests.clients import post, run_cli
from tests.conftest import ROOT

MODELS = ("gpt-4o", "gpt-4o-mini-2024-07-18", "o4-mini", "no-such-model")
FIGURES = (
    "requests",
    "errors",
    "unpriced_requests",
    "prompt_tokens",
    "completion_tokens",
    "cached_tokens",
    "reasoning_tokens",
    "cost_usd",
    "avg_latency_ms",
    "max_latency_ms",
)
DATA_START = datetime.datetime(2025, 2, 15, tzinfo=datetime.UTC)
DATA_DAYS = 70


def rows(database_url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    with connection(database_url) as conn:
        result = conn.run(sql, **params)
        names = [column["name"] for column in conn.columns or []]
    return [dict(zip(names, row, strict=True)) for row in result or []]


def refresh(database_url: str, limit: int | None = None) -> int:
    return rows(database_url, "SELECT refresh_usage_analytics(CAST(:limit AS integer)) AS n", limit=limit)[0]["n"]


def drain(database_url: str) -> None:
    """Roll up whatever other tests left queued, so a test can count exactly what it adds."""
    refresh(database_url)


def new_sessions(database_url: str, user_id: str, count: int) -> list[str]:
    return [
        str(row["id"])
        for row in rows(
            database_url,
            "INSERT INTO chat_sessions (user_id, session_name) SELECT :u, 'analytics ' || i "
            "FROM generate_series(1, CAST(:n AS integer)) i RETURNING id",
            u=user_id,
            n=count,
        )
    ]


def completions(
    count: int,
    seed: int,
    start: datetime.datetime = DATA_START,
    days: float = DATA_DAYS,
    sessions: tuple[str | None, ...] = (None,),
) -> list[dict[str, Any]]:
    """Assistant rows spread over `days` from `start`: several models (one unpriced), errors, untimed calls."""
    chance = random.Random(seed)
    made = []
    for _ in range(count):
        failed = chance.random() < 0.1
        prompt, completion = chance.randint(10, 3000), chance.randint(1, 900)
        model = chance.choice(MODELS)
        made.append(
            {
                "role": "assistant",
                "session_id": chance.choice(sessions),
                "model": model,
                "status": "error" if failed else "ok",
                "prompt_tokens": 0 if failed else prompt,
                "completion_tokens": 0 if failed else completion,
                "cached_tokens": 0 if failed else chance.randint(0, prompt // 2),
                "reasoning_tokens": 0 if failed or model != "o4-mini" else chance.randint(0, completion),
                "latency_ms": None if chance.random() < 0.1 else chance.randint(100, 9000),
                "created_at": (start + datetime.timedelta(seconds=chance.uniform(0, days * 86400))).isoformat(),
            }
        )
    return made


def insert(database_url: str, user_id: str, messages: list[dict[str, Any]], conn: Any = None) -> list[int]:
    """Insert chat_messages rows as given (cost follows by trigger); returns their ids."""
    sql = """
        INSERT INTO chat_messages (user_id, session_id, turn_id, role, content, model, status, prompt_tokens,
                                   completion_tokens, cached_tokens, reasoning_tokens, latency_ms, created_at)
        SELECT CAST(:user_id AS text), r.session_id, gen_random_uuid(), r.role, 'text', r.model, r.status,
               coalesce(r.prompt_tokens, 0), coalesce(r.completion_tokens, 0), coalesce(r.cached_tokens, 0),
               coalesce(r.reasoning_tokens, 0), r.latency_ms, r.created_at
        FROM jsonb_to_recordset(CAST(:messages AS jsonb)) AS r (
            role text, session_id uuid, model text, status text, prompt_tokens integer, completion_tokens integer,
            cached_tokens integer, reasoning_tokens integer, latency_ms integer, created_at timestamptz)
        ORDER BY r.created_at
        RETURNING id"""
    params = {"user_id": user_id, "messages": json.dumps(messages)}
    if conn is not None:
        return [row[0] for row in conn.run(sql, **params)]
    return [row["id"] for row in rows(database_url, sql, **params)]


def usage(server, user, **arguments: Any) -> dict[str, Any]:
    """A chitty_usage_analytics call's result."""
    response = post(
        server.mcp_url,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "chitty_usage_analytics", "arguments": arguments},
        },
        token=user.token,
    )
    assert response.status_code == 200, response.text
    return response.json()["result"]


def report(server, user, **arguments: Any) -> dict[str, Any]:
    result = usage(server, user, **arguments)
    assert result["isError"] is False, result
    return result["structuredContent"]


def error_text(result: dict[str, Any]) -> str:
    assert result["isError"] is True, result
    return result["content"][0]["text"]


def figures(row: dict[str, Any]) -> dict[str, Any]:
    """Database figures as the tool shows them (money and averages as JSON numbers)."""
    return {name: float(row[name]) if isinstance(row[name], Decimal) else row[name] for name in FIGURES if name in row}


def direct_sums(
    database_url: str,
    user_id: str | None,
    start: datetime.datetime,
    end: datetime.datetime,
    timezone: str,
    unit: str,
    group_by: str,
) -> tuple[dict[tuple[datetime.datetime, Any], dict[str, Any]], dict[str, Any]]:
    """Buckets and totals summed straight from chat_messages, for a local [start, end) in `timezone`."""
    select = """
        count(*) AS requests,
        count(*) FILTER (WHERE status = 'error') AS errors,
        count(*) FILTER (WHERE cost_usd IS NULL) AS unpriced_requests,
        sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
        sum(cached_tokens) AS cached_tokens, sum(reasoning_tokens) AS reasoning_tokens,
        coalesce(sum(cost_usd), 0) AS cost_usd,
        round(sum(latency_ms)::numeric / nullif(count(latency_ms), 0), 2) AS avg_latency_ms,
        max(latency_ms) AS max_latency_ms"""
    where = """
        FROM chat_messages
        WHERE role = 'assistant'
          AND (CAST(:user_id AS text) IS NULL OR user_id = CAST(:user_id AS text))
          AND created_at >= CAST(:start AS timestamp) AT TIME ZONE CAST(:tz AS text)
          AND created_at < CAST(:end AS timestamp) AT TIME ZONE CAST(:tz AS text)"""
    params = {"user_id": user_id, "start": start, "end": end, "tz": timezone}
    key = {"none": "NULL::text", "model": "model", "session": "session_id::text"}[group_by]
    buckets = rows(
        database_url,
        f"SELECT date_trunc(CAST(:unit AS text), created_at AT TIME ZONE CAST(:tz AS text)) AS bucket, "
        f"{key} AS key, {select} {where} GROUP BY 1, 2",
        unit=unit,
        **params,
    )
    (totals,) = rows(database_url, f"SELECT {select} {where}", **params)
    totals = {**totals, **{name: totals[name] or 0 for name in FIGURES[:7]}}
    return {(row["bucket"], row["key"]): figures(row) for row in buckets}, figures(totals)


def tool_sums(result: dict[str, Any]) -> dict[tuple[datetime.datetime, Any], dict[str, Any]]:
    """The tool's buckets keyed like direct_sums: local start (without offset) and group key."""
    key = {"none": None, "model": "model", "session": "session_id"}[result["group_by"]]
    return {
        (
            datetime.datetime.fromisoformat(bucket["start"]).replace(tzinfo=None),
            bucket[key] if key else None,
        ): {name: bucket[name] for name in FIGURES}
        for bucket in result["buckets"]
    }


@pytest.fixture
def busy_user(make_user, database_url):
    """A user with 600 completions over 70 days (from 2025-02-15), in two sessions and outside any."""
    user = make_user(prefix="usage")
    drain(database_url)
    sessions = (*new_sessions(database_url, user.user_id, 2), None)
    insert(database_url, user.user_id, completions(600, seed=7, sessions=sessions))
    insert(
        database_url,
        user.user_id,
        [{"role": "user", "model": None, "status": "ok", "created_at": "2025-03-03T10:00:00Z"}],
    )
    return user


# The rollup and its refresh


def test_refresh_is_incremental_it_rolls_up_exactly_the_rows_added_since(database_url, make_user):
    user = make_user()
    drain(database_url)
    assert refresh(database_url) == 0
    insert(database_url, user.user_id, completions(37, seed=1))
    assert refresh(database_url) == 37
    assert refresh(database_url) == 0


def test_only_assistant_rows_are_queued(database_url, make_user):
    user = make_user()
    drain(database_url)
    insert(database_url, user.user_id, [{"role": "user", "model": None, "status": "ok", "created_at": "2025-03-01"}])
    insert(database_url, user.user_id, [{"role": "system", "model": None, "status": "ok", "created_at": "2025-03-01"}])
    assert refresh(database_url) == 0


def rollup_of(database_url: str, user_id: str) -> list[dict[str, Any]]:
    return rows(
        database_url,
        "SELECT hour_start, model, requests, errors, unpriced_requests, prompt_tokens, completion_tokens, "
        "cached_tokens, reasoning_tokens, cost_usd, latency_ms_sum, latency_ms_max, timed_requests "
        "FROM usage_analytics WHERE user_id = :u ORDER BY hour_start, model",
        u=user_id,
    )


def sums_by_hour(database_url: str, user_id: str) -> list[dict[str, Any]]:
    return rows(
        database_url,
        "SELECT date_trunc('hour', created_at, 'UTC') AS hour_start, model, count(*)::integer AS requests, "
        "(count(*) FILTER (WHERE status = 'error'))::integer AS errors, "
        "(count(*) FILTER (WHERE cost_usd IS NULL))::integer AS unpriced_requests, "
        "sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens, "
        "sum(cached_tokens)::bigint AS cached_tokens, sum(reasoning_tokens)::bigint AS reasoning_tokens, "
        "coalesce(sum(cost_usd), 0) AS cost_usd, coalesce(sum(latency_ms), 0)::bigint AS latency_ms_sum, "
        "max(latency_ms) AS latency_ms_max, count(latency_ms)::integer AS timed_requests "
        "FROM chat_messages WHERE user_id = :u AND role = 'assistant' GROUP BY 1, 2 ORDER BY 1, 2",
        u=user_id,
    )


def test_the_rollup_equals_the_sums_of_chat_messages_per_hour_and_model(database_url, busy_user):
    refresh(database_url)
    assert rollup_of(database_url, busy_user.user_id) == sums_by_hour(database_url, busy_user.user_id)


def test_refresh_is_idempotent_a_second_run_changes_nothing(database_url, busy_user):
    refresh(database_url)
    before = rollup_of(database_url, busy_user.user_id)
    assert refresh(database_url) == 0
    assert rollup_of(database_url, busy_user.user_id) == before


def test_rows_added_to_rolled_up_hours_are_added_to_their_counters(database_url, make_user):
    user = make_user()
    insert(database_url, user.user_id, completions(50, seed=2, days=0.5))
    refresh(database_url)
    insert(database_url, user.user_id, completions(50, seed=3, days=0.5))
    refresh(database_url)
    assert rollup_of(database_url, user.user_id) == sums_by_hour(database_url, user.user_id)


def test_refresh_in_batches_counts_each_row_once(database_url, make_user):
    user = make_user()
    drain(database_url)
    insert(database_url, user.user_id, completions(100, seed=4))
    batches = []
    while batch := refresh(database_url, limit=7):
        batches.append(batch)
    assert sum(batches) == 100
    assert max(batches) == 7
    assert rollup_of(database_url, user.user_id) == sums_by_hour(database_url, user.user_id)


def test_a_scheduled_refresh_works_in_batches_and_stops_when_its_time_is_up(db, database_url, make_user):
    user = make_user()
    drain(database_url)
    insert(database_url, user.user_id, completions(12, seed=12))
    assert roll_up_usage(db, budget_s=0, batch=5) == RollUp(rolled_up=5, batches=1, complete=False)
    assert roll_up_usage(db, batch=5) == RollUp(rolled_up=7, batches=2, complete=True)
    assert rollup_of(database_url, user.user_id) == sums_by_hour(database_url, user.user_id)


def test_a_late_commit_is_counted_by_the_tool_at_once_and_rolled_up_by_the_next_refresh(
    server, database_url, make_user
):
    user = make_user()
    insert(database_url, user.user_id, completions(20, seed=5, days=10))
    drain(database_url)
    range_ = {"start_date": "2025-02-01", "end_date": "2025-03-31"}
    late = completions(1, seed=6, start=datetime.datetime(2025, 2, 16, tzinfo=datetime.UTC), days=0.1)
    with connection(database_url) as other:
        other.run("BEGIN")
        insert(database_url, user.user_id, late, conn=other)
        assert refresh(database_url) == 0  # not committed yet: invisible, so not lost either
        assert report(server, user, **range_)["totals"]["requests"] == 20
        other.run("COMMIT")

    counted = report(server, user, **range_)
    assert counted["computed_from"] == "rollup"
    assert counted["totals"]["requests"] == 21
    _, expected = direct_sums(
        database_url, user.user_id, datetime.datetime(2025, 2, 1), datetime.datetime(2025, 4, 1), "UTC", "day", "none"
    )
    assert counted["totals"] == expected
    assert refresh(database_url) == 1
    assert report(server, user, **range_)["totals"] == expected
    assert rollup_of(database_url, user.user_id) == sums_by_hour(database_url, user.user_id)


def test_concurrent_refreshes_count_each_row_once_without_blocking_or_deadlock(database_url, make_user):
    users = [make_user(), make_user()]
    drain(database_url)
    # Few hours and models, so both refreshes keep upserting the same rollup rows.
    for index, user in enumerate(users):
        insert(database_url, user.user_id, completions(1500, seed=10 + index, days=0.25))
    start = threading.Barrier(2)
    counts: list[int] = []
    errors: list[BaseException] = []

    def refresh_in_batches() -> None:
        try:
            with connection(database_url, timeout=60) as conn:
                start.wait()
                while rolled := conn.run("SELECT refresh_usage_analytics(40)")[0][0]:
                    counts.append(rolled)
        except BaseException as error:  # reported below, with the thread's own traceback
            errors.append(error)

    threads = [threading.Thread(target=refresh_in_batches) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert sum(counts) + refresh(database_url) == 3000
    for user in users:
        assert rollup_of(database_url, user.user_id) == sums_by_hour(database_url, user.user_id)


def test_deleting_a_session_keeps_its_usage(server, database_url, busy_user):
    refresh(database_url)
    range_ = {"start_date": "2025-02-15", "end_date": "2025-04-30", "granularity": "month"}
    by_model = report(server, busy_user, **range_, group_by="model")
    (session,) = rows(database_url, "SELECT id FROM chat_sessions WHERE user_id = :u LIMIT 1", u=busy_user.user_id)
    session_id = str(session["id"])
    rows(database_url, "DELETE FROM chat_sessions WHERE id = CAST(:s AS uuid)", s=session_id)

    assert report(server, busy_user, **range_, group_by="model") == by_model
    by_session = report(server, busy_user, **range_, group_by="session")
    assert session_id not in {bucket["session_id"] for bucket in by_session["buckets"]}
    assert None in {bucket["session_id"] for bucket in by_session["buckets"]}
    assert by_session["totals"] == by_model["totals"]


def test_deleting_a_user_deletes_their_rollup_and_queue(database_url, make_user):
    user = make_user()
    insert(database_url, user.user_id, completions(30, seed=8))
    refresh(database_url)
    insert(database_url, user.user_id, completions(5, seed=9))
    rows(database_url, "DELETE FROM users WHERE id = :u", u=user.user_id)
    assert rollup_of(database_url, user.user_id) == []
    assert rows(database_url, "SELECT count(*) AS n FROM usage_pending WHERE user_id = :u", u=user.user_id) == [
        {"n": 0}
    ]


# chitty_usage_analytics equals the sums over chat_messages

CASES = [
    # timezone, granularity, group_by, start_date, end_date, computed from
    ("UTC", "day", "none", "2025-02-20", "2025-04-10", "rollup"),
    ("UTC", "month", "model", "2025-02-01", "2025-04-30", "rollup"),
    ("UTC", "hour", "none", "2025-03-01", "2025-03-04", "rollup"),
    ("UTC", "day", "session", "2025-02-15", "2025-04-30", "messages"),
    ("America/New_York", "day", "model", "2025-03-01", "2025-03-20", "rollup"),
    ("America/New_York", "week", "none", "2025-02-17", "2025-04-20", "rollup"),
    ("America/New_York", "month", "none", "2025-02-01", "2025-04-30", "rollup"),
    ("America/New_York", "hour", "model", "2025-03-01", "2025-03-04", "rollup"),
    ("Asia/Kolkata", "day", "none", "2025-02-20", "2025-04-10", "messages"),
    ("Asia/Kolkata", "month", "model", "2025-02-01", "2025-04-30", "messages"),
    ("Asia/Kolkata", "hour", "none", "2025-03-01", "2025-03-04", "messages"),
    ("Australia/Adelaide", "week", "session", "2025-02-17", "2025-04-20", "messages"),
]


@pytest.mark.parametrize(("timezone", "granularity", "group_by", "start", "end", "source"), CASES)
def test_the_tool_equals_direct_sums_before_during_and_after_refresh(
    server, database_url, busy_user, timezone, granularity, group_by, start, end, source
):
    local_start = datetime.datetime.fromisoformat(start)
    local_end = datetime.datetime.fromisoformat(end) + datetime.timedelta(days=1)
    expected = direct_sums(database_url, busy_user.user_id, local_start, local_end, timezone, granularity, group_by)
    arguments = {"start_date": start, "end_date": end, "granularity": granularity, "group_by": group_by}
    for step in ("queued", "half rolled up", "rolled up"):
        if step == "half rolled up":
            refresh(database_url, limit=300)
        elif step == "rolled up":
            refresh(database_url)
        result = report(server, busy_user, **arguments, timezone=timezone)
        assert result["computed_from"] == source, step
        assert (tool_sums(result), result["totals"]) == expected, step
        assert result["totals"]["requests"] > 0


def test_date_times_with_an_offset_are_instants_and_without_one_are_local(server, database_url, busy_user):
    refresh(database_url)
    aware = report(server, busy_user, start_date="2025-03-01T10:15:00+00:00", end_date="2025-03-02T22:00:00Z")
    local = report(
        server, busy_user, start_date="2025-03-01T05:15:00", end_date="2025-03-02T17:00", timezone="America/New_York"
    )
    expected = direct_sums(
        database_url,
        busy_user.user_id,
        datetime.datetime(2025, 3, 1, 10, 15),
        datetime.datetime(2025, 3, 2, 22),
        "UTC",
        "day",
        "none",
    )
    assert aware["computed_from"] == "messages"  # a start inside an hour cannot come from the hourly rollup
    assert (tool_sums(aware), aware["totals"]) == expected
    assert local["totals"] == aware["totals"]
    assert local["start"] == "2025-03-01T05:15:00-05:00"
    assert local["end"] == "2025-03-02T17:00:00-05:00"


def test_buckets_start_and_end_in_the_requested_time_zone(server, database_url, busy_user):
    result = report(
        server,
        busy_user,
        start_date="2025-03-08",
        end_date="2025-03-10",
        granularity="day",
        timezone="America/New_York",
    )
    assert [(bucket["start"], bucket["end"]) for bucket in result["buckets"]] == [
        ("2025-03-08T00:00:00-05:00", "2025-03-09T00:00:00-05:00"),
        ("2025-03-09T00:00:00-05:00", "2025-03-10T00:00:00-04:00"),  # the day daylight saving time began
        ("2025-03-10T00:00:00-04:00", "2025-03-11T00:00:00-04:00"),
    ]
    assert result["start"] == "2025-03-08T00:00:00-05:00"
    assert result["end"] == "2025-03-11T00:00:00-04:00"
    kolkata = report(server, busy_user, start_date="2025-03-08", end_date="2025-03-08", timezone="Asia/Kolkata")
    assert kolkata["buckets"][0]["start"] == "2025-03-08T00:00:00+05:30"


def test_weeks_start_on_monday(server, busy_user):
    result = report(server, busy_user, start_date="2025-03-05", end_date="2025-03-25", granularity="week")
    starts = [datetime.datetime.fromisoformat(bucket["start"]) for bucket in result["buckets"]]
    assert [start.strftime("%A %H:%M") for start in starts] == ["Monday 00:00"] * 4
    assert starts[0].date() == datetime.date(2025, 3, 3)


def test_a_range_without_usage_has_no_buckets_and_zero_totals(server, busy_user):
    result = report(server, busy_user, start_date="2024-01-01", end_date="2024-01-31")
    assert result["buckets"] == []
    assert result["totals"] == {name: 0 for name in FIGURES} | {"avg_latency_ms": None, "max_latency_ms": None}


# Who may see what


def test_users_see_their_own_usage_by_default(server, database_url, busy_user):
    result = report(server, busy_user, start_date="2025-02-15", end_date="2025-04-30", granularity="month")
    assert result["user_id"] == busy_user.user_id
    assert result["totals"]["requests"] == 600


def test_a_user_naming_another_user_gets_the_same_forbidden_error_as_other_tools(server, busy_user, bob):
    refused = error_text(usage(server, bob, user_id=busy_user.user_id, start_date="2025-03-01", end_date="2025-03-02"))
    response = post(
        server.mcp_url,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "chitty_chat_session_list", "arguments": {"user_id": busy_user.user_id}},
        },
        token=bob.token,
    )
    assert refused == error_text(response.json()["result"])
    assert error_text(usage(server, bob, user_id="*", start_date="2025-03-01", end_date="2025-03-02")) == refused


def test_an_admin_may_see_any_user_and_all_users(server, database_url, admin, make_user):
    first, second = make_user(), make_user()
    # A month of its own, so everyone's usage in it is exactly these two users'.
    month = datetime.datetime(2019, 6, 1, tzinfo=datetime.UTC)
    insert(database_url, first.user_id, completions(40, seed=20, start=month, days=29))
    insert(database_url, second.user_id, completions(60, seed=21, start=month, days=29))
    range_ = {"start_date": "2019-06-01", "end_date": "2019-06-30", "granularity": "week"}

    theirs = report(server, admin, user_id=second.user_id, **range_)
    everyone = report(server, admin, user_id="*", **range_)

    assert theirs["user_id"] == second.user_id
    assert theirs["totals"]["requests"] == 60
    assert everyone["user_id"] == "*"
    assert everyone["totals"]["requests"] == 100
    expected = direct_sums(
        database_url, None, datetime.datetime(2019, 6, 1), datetime.datetime(2019, 7, 1), "UTC", "week", "none"
    )
    assert (tool_sums(everyone), everyone["totals"]) == expected


def test_an_admin_naming_an_unknown_user_gets_not_found(server, admin):
    text = error_text(usage(server, admin, user_id="nobody-here", start_date="2025-03-01", end_date="2025-03-02"))
    assert text == "No user 'nobody-here'."


# Validation


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"start_date": "2025-03-10", "end_date": "2025-03-01"}, "end_date is before start_date"),
        ({"start_date": "2025-03-01T10:00:00Z", "end_date": "2025-03-01T10:00:00Z"}, "end_date is before start_date"),
        ({"start_date": "2025-01-01", "end_date": "2025-02-01", "granularity": "hour"}, "granularity hour allows"),
        ({"start_date": "2024-01-01", "end_date": "2025-03-01"}, "granularity day allows at most 400 days"),
        ({"start_date": "2025-02-30", "end_date": "2025-03-01"}, "start_date: '2025-02-30' is not a date"),
        ({"start_date": "March 1", "end_date": "2025-03-01"}, "start_date"),
        ({"start_date": "2025-03-01", "end_date": "2025-03-02", "timezone": "Mars/Olympus"}, "'Mars/Olympus' is not"),
        ({"start_date": "2025-03-01", "end_date": "2025-03-02", "timezone": "EST5"}, "timezone"),
        ({"start_date": "2025-03-01", "end_date": "2025-03-02", "granularity": "year"}, "granularity"),
        ({"start_date": "2025-03-01", "end_date": "2025-03-02", "group_by": "user"}, "group_by"),
    ],
)
def test_invalid_arguments_are_a_clear_error_naming_the_problem(server, alice, arguments, says):
    assert says in error_text(usage(server, alice, **arguments))


def test_a_range_of_exactly_the_limit_is_accepted_across_a_dst_change(server, alice):
    # 31 local days by hour, one of them 25 hours long (New York, November 2).
    result = usage(
        server, alice, start_date="2025-10-15", end_date="2025-11-14", granularity="hour", timezone="America/New_York"
    )
    assert result["isError"] is False, result


# Scheduled functions and the command line

PROBE = """
import json, sys
from chalice.test import Client
import app

with Client(app.app, stage_name="dev") as client:
    event = client.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={},
        resources=["arn:aws:events:us-east-1:123456789012:rule/probe"])
    answers = {name: client.lambda_.invoke(name, event).payload for name in sys.argv[1:]}
print(json.dumps(answers))
"""


def test_the_scheduled_functions_roll_usage_up_and_log_their_counts(database_url, make_user):
    user = make_user()
    drain(database_url)
    insert(database_url, user.user_id, completions(25, seed=30))
    with connection(database_url) as conn:
        conn.run(
            "INSERT INTO usage_reservations (turn_id, user_id, cost_usd, tokens, expires_at) "
            "VALUES (gen_random_uuid(), :u, 1, 10, now() - interval '1 minute')",
            u=user.user_id,
        )
    env = {key: value for key, value in os.environ.items() if key != "DEBUG"}
    completed = subprocess.run(
        [sys.executable, "-c", PROBE, "refresh_usage", "daily_upkeep"],
        cwd=ROOT,
        env={**env, "CHITTY_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    *logs, answer = completed.stdout.strip().splitlines()
    answers = json.loads(answer)
    assert answers["daily_upkeep"].pop("expired_reservations_purged") >= 1
    # Jobs other tests left behind may be reaped or purged here; how many is theirs to say (tests/test_jobs.py).
    assert answers["refresh_usage"].pop("jobs_reaped") >= 0
    assert answers["daily_upkeep"].pop("jobs_purged") >= 0
    for purged in ("sign_in_records_purged", "grants_purged", "clients_purged"):  # tests/test_oauth_sql.py
        assert answers["daily_upkeep"].pop(purged) >= 0
    assert answers == {
        "refresh_usage": {"rolled_up": 25, "batches": 1, "complete": True},
        "daily_upkeep": {"rolled_up": 0, "batches": 1, "complete": True},
    }
    with connection(database_url) as conn:
        assert conn.run("SELECT count(*) FROM usage_reservations WHERE expires_at < now()") == [[0]]
    logged = [json.loads(line) for line in logs]
    assert [(line["message"], line["rolled_up"]) for line in logged] == [
        ("usage rolled up", 25),
        ("daily upkeep done", 0),
    ]
    assert rollup_of(database_url, user.user_id) == sums_by_hour(database_url, user.user_id)


def test_the_command_line_refreshes_by_hand(database_url, make_user):
    user = make_user()
    drain(database_url)
    insert(database_url, user.user_id, completions(12, seed=31))
    completed = run_cli("analytics", "refresh", database_url=database_url)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == "rolled up 12 completion(s) into usage_analytics\n"
    assert rollup_of(database_url, user.user_id) == sums_by_hour(database_url, user.user_id)

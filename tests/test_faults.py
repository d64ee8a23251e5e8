"""Faults: the database going away mid-request and for a while, upstream faults under concurrency,
and strings built to break SQL, JSON or markdown."""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import httpx2
import pytest

from chalicelib.db import connection
from devtools.fake_openai import Reset, rate_limited, server_error
from tests.clients import post
from tests.conftest import migrated_database, server_env, start_server


@pytest.fixture(scope="module")
def own_database(admin_database_url):
    """A database this module may take offline without disturbing other tests."""
    name = f"chitty_faults_{uuid.uuid4().hex[:8]}"
    with migrated_database(admin_database_url, name) as url:
        yield name, url


@pytest.fixture(scope="module")
def faulty(own_database, fake_openai_server, tmp_path_factory):
    _, url = own_database
    env = {**server_env(url, fake_openai_server), "CHITTY_DB_TIMEOUT": "2"}
    running = start_server(tmp_path_factory.mktemp("faults"), env)
    yield running
    running.stop()


@pytest.fixture
def user(own_database):
    from chalicelib import auth

    _, url = own_database
    user_id = f"u-{uuid.uuid4().hex[:8]}"
    token = auth.new_token()
    with connection(url) as conn:
        conn.run("INSERT INTO users (id, display_name) VALUES (:u, :u)", u=user_id)
        conn.run("INSERT INTO access_tokens (user_id, token_hash) VALUES (:u, :h)", u=user_id, h=auth.hash_token(token))
    return user_id, token


@contextmanager
def database_offline(admin_database_url, name):
    """Refuse new connections to the database and end the open ones, until the block exits."""
    with connection(admin_database_url) as admin:
        admin.run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.run("SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE datname = :n", n=name)
        try:
            yield
        finally:
            admin.run(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


def call(server, token, name, arguments, request_id=1):
    body = {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": arguments},
    }
    return post(server.mcp_url, body, token=token)


def rows(url, sql, **params):
    with connection(url) as conn:
        return conn.run(sql, **params)


def test_health_is_503_while_the_database_is_down_and_200_once_it_is_back(faulty, own_database, admin_database_url):
    name, _ = own_database
    assert httpx2.get(f"{faulty.base_url}/health").status_code == 200
    with database_offline(admin_database_url, name):
        down = httpx2.get(f"{faulty.base_url}/health", timeout=30)
        assert down.status_code == 503
        assert down.json() == {"status": "unavailable", "database": "unreachable", "version": down.json()["version"]}
    back = httpx2.get(f"{faulty.base_url}/health")
    assert back.status_code == 200
    assert back.json()["database"] == "ok"


@pytest.mark.parametrize("tool", ["chitty_chat_session_list", "chatgpt_complete"])
def test_tools_give_a_clear_error_while_the_database_is_down_and_work_once_it_is_back(
    faulty, own_database, admin_database_url, user, tool
):
    name, _ = own_database
    _, token = user
    arguments = {"messages": [{"role": "user", "content": "hi"}]} if tool == "chatgpt_complete" else {}
    with database_offline(admin_database_url, name):
        down = call(faulty, token, tool, arguments)
        assert down.status_code in (200, 503)
        text = json.dumps(down.json())
        assert "The database is unavailable; try again shortly." in text
        assert "Traceback" not in text
        assert "pg8000" not in text
    back = call(faulty, token, tool, arguments)
    assert back.status_code == 200
    assert back.json()["result"]["isError"] is False


def test_the_database_going_away_during_a_completion_leaves_no_half_written_turn(
    faulty, own_database, admin_database_url, fake_openai, user
):
    name, url = own_database
    _, token = user
    session = call(faulty, token, "chitty_chat_session_create", {"session_name": "fragile"}).json()
    session_id = session["result"]["structuredContent"]["session_id"]
    call(
        faulty, token, "chatgpt_complete", {"messages": [{"role": "user", "content": "one"}], "session_id": session_id}
    )
    fake_openai.delay = 1.0
    outcome: dict = {}

    def complete():
        arguments = {"messages": [{"role": "user", "content": "two"}], "session_id": session_id}
        outcome["response"] = call(faulty, token, "chatgpt_complete", arguments)

    worker = threading.Thread(target=complete)
    worker.start()
    deadline = time.monotonic() + 10
    while not fake_openai.chat_requests[1:] and time.monotonic() < deadline:
        time.sleep(0.01)
    with database_offline(admin_database_url, name):
        worker.join(timeout=30)
    result = outcome["response"].json()["result"]
    assert result["isError"] is True
    assert "could not be recorded" in result["content"][0]["text"]
    stored = rows(
        url, "SELECT seq, status FROM chat_messages WHERE session_id = CAST(:s AS uuid) ORDER BY seq", s=session_id
    )
    assert stored == [[1, "ok"], [2, "ok"]]
    (session_row,) = rows(
        url, "SELECT last_seq, message_count FROM chat_sessions WHERE id = CAST(:s AS uuid)", s=session_id
    )
    assert session_row == [2, 2]
    after = call(
        faulty,
        token,
        "chatgpt_complete",
        {"messages": [{"role": "user", "content": "three"}], "session_id": session_id},
    )
    assert after.json()["result"]["isError"] is False
    assert fake_openai.chat_requests[-1].messages[-3:] == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": "echo: one"},
        {"role": "user", "content": "three"},
    ]


def test_upstream_faults_under_concurrency_keep_a_session_exact(faulty, own_database, fake_openai, user):
    _, url = own_database
    _, token = user
    session_id = call(faulty, token, "chitty_chat_session_create", {"session_name": "busy"}).json()["result"][
        "structuredContent"
    ]["session_id"]
    fake_openai.script(
        server_error(500),
        Reset(),
        rate_limited(retry_after=0.1),
        server_error(503),
        server_error(500),
        Reset(),
        server_error(502),
        rate_limited(retry_after=0.1),
    )

    def one(index):
        arguments = {"messages": [{"role": "user", "content": f"q{index}"}], "session_id": session_id}
        return call(faulty, token, "chatgpt_complete", arguments, request_id=index)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(one, range(16)))

    assert all(response.status_code == 200 for response in responses)
    results = [response.json()["result"] for response in responses]
    ok = [result for result in results if not result["isError"]]
    assert ok
    stored = rows(
        url,
        "SELECT seq, role, status, cost_usd, prompt_tokens FROM chat_messages "
        "WHERE session_id = CAST(:s AS uuid) ORDER BY seq",
        s=session_id,
    )
    assert [row[0] for row in stored] == list(range(1, len(stored) + 1))
    assert len([row for row in stored if row[1] == "assistant" and row[2] == "ok"]) == len(ok)
    assert all(row[3] == 0 and row[4] == 0 for row in stored if row[2] == "error" and row[1] == "assistant")
    (totals,) = rows(
        url,
        "SELECT s.message_count, s.total_cost_usd, (SELECT count(*) FROM chat_messages m "
        "WHERE m.session_id = s.id AND m.status = 'ok'), (SELECT sum(cost_usd) FROM chat_messages m "
        "WHERE m.session_id = s.id) FROM chat_sessions s WHERE s.id = CAST(:s AS uuid)",
        s=session_id,
    )
    assert totals[0] == totals[2]
    assert totals[1] == totals[3]


BREAKERS = [
    "Robert'); DROP TABLE chat_sessions;--",
    '{"jsonrpc": "2.0", "method": "x"} \\u0000-free but \\" quoted',
    "# Heading\n\n```\ncode fence\n```\n| a | b |\n<script>alert(1)</script> [link](javascript:x)",
    "$1 :name ::uuid %s {0} ${x} \\N \\\\",
    "emoji \U0001f600 rtl \u202e arabic \u0627 zero-width \u200b",
]


@pytest.mark.parametrize("text", BREAKERS)
def test_strings_built_to_break_sql_json_or_markdown_are_stored_and_returned_verbatim(faulty, own_database, user, text):
    _, url = own_database
    _, token = user
    created = call(
        faulty,
        token,
        "chitty_chat_session_create",
        {"session_name": text[:200], "initial_system_prompt": text, "metadata": {"case_id": text, "note": [text]}},
    ).json()["result"]["structuredContent"]
    assert created["session_name"] == text[:200]
    assert created["system_prompt"] == text
    assert created["metadata"] == {"case_id": text, "note": [text]}
    reply = call(
        faulty,
        token,
        "chatgpt_complete",
        {"messages": [{"role": "user", "content": text}], "session_id": created["session_id"]},
    ).json()["result"]
    assert reply["structuredContent"]["content"] == "echo: " + text
    listed = call(faulty, token, "chitty_chat_session_list", {"case_id": text}).json()["result"]["structuredContent"]
    assert [session["session_id"] for session in listed["sessions"]] == [created["session_id"]]
    stored = rows(
        url,
        "SELECT content FROM chat_messages WHERE session_id = CAST(:s AS uuid) ORDER BY seq",
        s=created["session_id"],
    )
    assert stored == [[text], ["echo: " + text]]
    transcript = post(
        faulty.mcp_url,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "resources/read",
            "params": {"uri": f"chitty://sessions/{created['session_id']}"},
        },
        token=token,
    ).json()["result"]["contents"][0]["text"]
    assert text in transcript
    assert "echo: " + text in transcript

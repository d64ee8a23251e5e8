"""Background completions: answers that take minutes, as jobs with partial text, and as MCP tasks.

Against `make run`'s own server (devtools.local, the local job runner: one worker process per job) and a fake
upstream that streams slowly. Money: a job is recorded once, by record_completion, whether its worker
finishes, is cancelled (billed for what was streamed) or dies (failed by the reaper, billed from its text);
the shared test database's books are checked to balance at the end of the session (tests/books.py).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.clients import modern_headers, modern_meta, post
from tests.conftest import Server, server_env, start_make_run
from tests.test_chat import rows, tool

# 80 pieces of about four characters, 0.4 s apart: an answer that takes over 30 s.
SLOW_REPLY = "".join(f"w{index:03d} " for index in range(80)).strip()
SLOW_CHUNK_S = 0.4
TASKS = {"extensions": {"io.modelcontextprotocol/tasks": {}}}


@pytest.fixture(scope="module")
def run_server(database_url, fake_openai_server, tmp_path_factory) -> Iterator[Server]:
    """`make run`'s program serving the test database, with jobs run by local worker processes."""
    server = start_make_run(
        tmp_path_factory.mktemp("make-run"),
        database_url,
        fake_openai_server,
        {"CHITTY_JOB_RUNNER": "local", "CHITTY_JOB_STALE_SECONDS": "3"},
    )
    yield server
    server.stop()


@pytest.fixture
def slow(fake_openai):
    fake_openai.reply = SLOW_REPLY
    fake_openai.stream_chunk_delay = SLOW_CHUNK_S
    return fake_openai


def start_job(server, user, text="write slowly", **arguments) -> dict[str, Any]:
    result = tool(
        server,
        user,
        "chatgpt_stream",
        {"messages": [{"role": "user", "content": text}], "model": "gpt-4.1-mini", "background": True, **arguments},
    )
    assert result["isError"] is False, result
    return result


def job(server, user, job_id, **arguments) -> dict[str, Any]:
    result = tool(server, user, "chatgpt_job_get", {"job_id": job_id, **arguments})
    assert result["isError"] is False, result
    return result["structuredContent"]


def until(server, user, job_id, done, timeout=90.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    state = job(server, user, job_id)
    while not done(state) and time.monotonic() < deadline:
        state = job(server, user, job_id, wait_seconds=5)
    assert done(state), state
    return state


def turn_rows(database_url, turn_id) -> list[dict[str, Any]]:
    return rows(
        database_url,
        "SELECT role, status, content, prompt_tokens, completion_tokens, usage_estimated, cost_usd "
        "FROM chat_messages WHERE turn_id = CAST(:t AS uuid) ORDER BY id",
        t=turn_id,
    )


def test_a_background_completion_answers_at_once_shows_its_text_and_completes(run_server, slow, alice, database_url):
    started = start_job(run_server, alice)
    structured = started["structuredContent"]
    assert structured["status"] == "queued"
    assert structured["poll_after_ms"] > 0
    assert "chatgpt_job_get" in started["content"][0]["text"]
    time.sleep(5)
    partial = job(run_server, alice, structured["job_id"])
    assert partial["status"] == "running"
    assert partial["content"]
    assert SLOW_REPLY.startswith(partial["content"])
    assert len(partial["content"]) < len(SLOW_REPLY)
    done = until(run_server, alice, structured["job_id"], lambda state: state["status"] == "completed")
    result = done["result"]
    assert done["content"] == result["content"] == SLOW_REPLY
    assert result["usage"]["completion_tokens"] > 0
    assert result["cost_usd"] > 0
    (row,) = turn_rows(database_url, done["turn_id"])
    assert (row["status"], row["usage_estimated"]) == ("ok", False)
    assert float(row["cost_usd"]) == result["cost_usd"]
    left = rows(
        database_url, "SELECT count(*) AS n FROM usage_reservations WHERE turn_id = CAST(:t AS uuid)", t=done["turn_id"]
    )
    assert left[0]["n"] == 0


def test_a_cancelled_job_stops_the_stream_and_bills_what_was_used(run_server, slow, alice, database_url):
    job_id = start_job(run_server, alice)["structuredContent"]["job_id"]
    time.sleep(5)
    cancelled = tool(run_server, alice, "chatgpt_job_cancel", {"job_id": job_id})
    assert cancelled["isError"] is False
    done = until(run_server, alice, job_id, lambda state: state["status"] == "cancelled", timeout=20)
    assert done["content"]
    assert len(done["content"]) < len(SLOW_REPLY)
    (row,) = turn_rows(database_url, done["turn_id"])
    assert row["status"] == "error"
    assert row["completion_tokens"] > 0
    assert row["cost_usd"] > 0
    # A finished job stays as it ended.
    again = tool(run_server, alice, "chatgpt_job_cancel", {"job_id": job_id})
    assert again["structuredContent"]["status"] == "cancelled"


def test_a_job_whose_worker_dies_fails_with_its_text_and_is_billed(run_server, slow, alice, database_url):
    job_id = start_job(run_server, alice)["structuredContent"]["job_id"]
    time.sleep(5)
    (worker,) = rows(database_url, "SELECT worker FROM completion_jobs WHERE id = CAST(:j AS uuid)", j=job_id)
    os.kill(int(worker["worker"].removeprefix("pid ")), signal.SIGKILL)
    done = until(run_server, alice, job_id, lambda state: state["status"] == "failed", timeout=30)
    assert "worker stopped" in done["error"]
    assert done["content"]
    assert SLOW_REPLY.startswith(done["content"])
    (row,) = turn_rows(database_url, done["turn_id"])
    assert row["status"] == "error"
    assert row["usage_estimated"] is True
    assert row["completion_tokens"] > 0
    assert row["cost_usd"] > 0


def test_a_job_in_a_session_keeps_the_sessions_order(run_server, fake_openai, alice, database_url):
    session = tool(run_server, alice, "chitty_chat_session_create", {"session_name": "jobs"})["structuredContent"]
    job_id = start_job(run_server, alice, "first", session_id=session["session_id"])["structuredContent"]["job_id"]
    until(run_server, alice, job_id, lambda state: state["status"] == "completed")
    tool(
        run_server,
        alice,
        "chatgpt_complete",
        {
            "messages": [{"role": "user", "content": "second"}],
            "model": "gpt-4.1-mini",
            "session_id": session["session_id"],
        },
    )
    stored = rows(
        database_url,
        "SELECT seq, role, content FROM chat_messages WHERE session_id = CAST(:s AS uuid) ORDER BY seq",
        s=session["session_id"],
    )
    assert [(r["role"], r["content"]) for r in stored] == [
        ("user", "first"),
        ("assistant", "echo: first"),
        ("user", "second"),
        ("assistant", "echo: second"),
    ]
    assert fake_openai.chat_requests[-1].messages[:2] == [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "echo: first"},
    ]


def test_jobs_belong_to_their_user(run_server, fake_openai, alice, bob, admin):
    job_id = start_job(run_server, alice)["structuredContent"]["job_id"]
    for name in ("chatgpt_job_get", "chatgpt_job_cancel"):
        refused = tool(run_server, bob, name, {"job_id": job_id})
        assert refused["isError"] is True
        assert f"No job {job_id}" in refused["content"][0]["text"]
    assert job(run_server, admin, job_id)["job_id"] == job_id
    listed = tool(run_server, alice, "chatgpt_job_list", {})["structuredContent"]["jobs"]
    assert job_id in [entry["job_id"] for entry in listed]
    assert tool(run_server, bob, "chatgpt_job_list", {})["structuredContent"]["jobs"] == []
    until(run_server, alice, job_id, lambda state: state["status"] == "completed")


def test_concurrent_jobs_are_limited_and_a_refused_one_holds_nothing(run_server, slow, make_user, admin, database_url):
    user = make_user()
    tool(
        run_server,
        admin,
        "chitty_usage_limits_set",
        {"user_id": user.user_id, "concurrent_jobs": 1, "monthly_budget_usd": 5},
    )
    first = start_job(run_server, user)["structuredContent"]["job_id"]
    refused = tool(
        run_server,
        user,
        "chatgpt_complete",
        {"messages": [{"role": "user", "content": "another"}], "model": "gpt-4.1-mini", "background": True},
    )
    assert refused["isError"] is True
    assert "Concurrent jobs limit reached" in refused["content"][0]["text"]
    held = rows(database_url, "SELECT count(*) AS n FROM usage_reservations WHERE user_id = :u", u=user.user_id)
    assert held[0]["n"] == 1  # the running job's, and only it
    tool(run_server, user, "chatgpt_job_cancel", {"job_id": first})
    until(run_server, user, first, lambda state: state["status"] == "cancelled", timeout=20)


def modern(server, user, method, params, name=None, capabilities=None):
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": method,
        "params": {
            **params,
            "_meta": modern_meta(**{"io.modelcontextprotocol/clientCapabilities": capabilities or {}}),
        },
    }
    return post(server.mcp_url, body, token=user.token, headers=modern_headers(method, name))


def test_clients_that_declare_tasks_get_a_task_they_can_follow_and_cancel(run_server, fake_openai, alice):
    discovered = modern(run_server, alice, "server/discover", {}).json()["result"]
    assert discovered["capabilities"]["extensions"]["io.modelcontextprotocol/tasks"] == {}
    arguments = {"messages": [{"role": "user", "content": "a task"}], "model": "gpt-4.1-mini", "background": True}
    call = {"name": "chatgpt_complete", "arguments": arguments}
    created = modern(run_server, alice, "tools/call", call, "chatgpt_complete", TASKS).json()["result"]
    assert created["resultType"] == "task"
    assert created["status"] == "working"
    assert {"taskId", "createdAt", "lastUpdatedAt", "ttlMs", "pollIntervalMs"} <= set(created)
    task_id = created["taskId"]
    deadline = time.monotonic() + 60
    while True:
        got = modern(run_server, alice, "tasks/get", {"taskId": task_id}, task_id, TASKS).json()["result"]
        if got["status"] != "working" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert got["status"] == "completed"
    assert got["resultType"] == "complete"
    assert got["result"]["structuredContent"]["content"] == "echo: a task"
    assert modern(run_server, alice, "tasks/cancel", {"taskId": task_id}, task_id, TASKS).json()["result"] == {
        "resultType": "complete",
        "_meta": got["_meta"],
    }
    # Without the extension declared, tasks/get is refused before any lookup; another user's task is unknown.
    missing = modern(run_server, alice, "tasks/get", {"taskId": task_id}, task_id)
    assert missing.json()["error"]["code"] == -32021
    bob_sees = modern(run_server, alice, "tasks/get", {"taskId": "nope"}, "nope", TASKS).json()
    assert bob_sees["error"]["code"] == -32602
    # A client that does not declare tasks gets the plain job answer.
    plain = modern(run_server, alice, "tools/call", call, "chatgpt_complete").json()["result"]
    assert plain["resultType"] == "complete"
    assert plain["structuredContent"]["status"] == "queued"


@pytest.fixture
def in_process(monkeypatch, database_url, fake_openai):
    """The app's settings for a test that calls it in process, as Lambda would, with the lambda job runner."""
    from chalicelib.config import get_settings

    for name, value in {**server_env(database_url, fake_openai), "CHITTY_JOB_RUNNER": "lambda"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CHITTY_STAGE", "prod")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def test_on_aws_a_job_is_an_asynchronous_invocation_of_the_jobs_function(monkeypatch, in_process):
    import boto3
    from botocore.stub import Stubber

    from chalicelib import jobs

    client = boto3.client("lambda", region_name="us-east-1")
    stub = Stubber(client)
    payload = json.dumps({"job_id": "0f8fad5b-d9cb-469f-a165-70867728950e"}).encode()
    expected = {"FunctionName": "chitty-chatgpt-mcp-prod-jobs", "InvocationType": "Event", "Payload": payload}
    stub.add_response("invoke", {"StatusCode": 202}, expected)
    monkeypatch.setattr(boto3, "client", lambda name, **_: client)
    with stub:
        jobs.dispatch("0f8fad5b-d9cb-469f-a165-70867728950e")
    stub.assert_no_pending_responses()


def test_the_jobs_function_runs_the_job_it_is_given(monkeypatch, in_process, db, fake_openai, alice, database_url):
    from chalicelib import auth, jobs, service
    from chalicelib.mcp import ToolCall
    from chalicelib.tools import build_registry

    dispatched: list[str] = []
    monkeypatch.setattr(jobs, "dispatch", dispatched.append)
    handler = build_registry(db).tools["chatgpt_complete"].handler
    arguments = {"messages": [{"role": "user", "content": "on lambda"}], "model": "gpt-4.1-mini", "background": True}
    answer = handler(
        ToolCall(name="chatgpt_complete", arguments=arguments, principal=auth.Credential(auth.hash_token(alice.token)))
    )
    (job_id,) = dispatched
    assert answer.structured == {"job_id": job_id, "status": "queued", "poll_after_ms": jobs.POLL_AFTER_MS}
    monkeypatch.setattr(service, "get_database", lambda: db)

    class Context:
        aws_request_id = "request-1"

    event = json.loads(json.dumps({"job_id": job_id}))  # exactly what the invocation carries
    assert service.run_job(event, Context()) == {"job_id": job_id, "status": "completed"}
    (row,) = rows(
        database_url, "SELECT status, worker, result FROM completion_jobs WHERE id = CAST(:j AS uuid)", j=job_id
    )
    assert (row["status"], row["worker"]) == ("completed", "lambda request-1")
    assert row["result"]["structuredContent"]["content"] == "echo: on lambda"
    # A second invocation of the same event (Lambda retries asynchronous ones) finds the job taken.
    assert service.run_job(event, Context()) == {"job_id": job_id, "status": None}


def test_a_dead_workers_job_is_booked_even_if_nobody_polls_it(run_server, slow, alice, database_url):
    job_id = start_job(run_server, alice)["structuredContent"]["job_id"]
    time.sleep(3)
    (worker,) = rows(database_url, "SELECT worker FROM completion_jobs WHERE id = CAST(:j AS uuid)", j=job_id)
    os.kill(int(worker["worker"].removeprefix("pid ")), signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # no chatgpt_job_get: `make run` reaps on its own, as the upkeep does
        (state,) = rows(
            database_url, "SELECT status, turn_id FROM completion_jobs WHERE id = CAST(:j AS uuid)", j=job_id
        )
        if state["status"] != "running":
            break
        time.sleep(0.5)
    assert state["status"] == "failed"
    (row,) = turn_rows(database_url, str(state["turn_id"]))
    assert row["completion_tokens"] > 0
    assert row["cost_usd"] > 0


def test_finished_jobs_are_purged_after_their_retention(run_server, fake_openai, alice, db, database_url):
    from chalicelib import jobs

    job_id = start_job(run_server, alice, "keep me a while")["structuredContent"]["job_id"]
    until(run_server, alice, job_id, lambda state: state["status"] == "completed")
    jobs.purge(db)
    assert job(run_server, alice, job_id)["status"] == "completed"  # a job within its retention stays
    rows(
        database_url,
        "UPDATE completion_jobs SET finished_at = now() - interval '8 days' WHERE id = CAST(:j AS uuid) RETURNING id",
        j=job_id,
    )
    assert jobs.purge(db) >= 1
    gone = tool(run_server, alice, "chatgpt_job_get", {"job_id": job_id})
    assert gone["isError"] is True


def test_a_job_whose_text_postgresql_cannot_hold_still_completes(run_server, fake_openai, alice):
    from devtools.fake_openai import Reply

    fake_openai.script(Reply("nul\x00 and half a pair \ud800 here"))
    job_id = start_job(run_server, alice)["structuredContent"]["job_id"]
    done = until(run_server, alice, job_id, lambda state: state["status"] == "completed")
    assert done["content"] == "nul\ufffd and half a pair \ufffd here"
    assert "U+FFFD" in done["result"]["notice"]


def test_a_job_that_cannot_be_started_ends_and_holds_nothing(monkeypatch, in_process, db, make_user, database_url):
    from chalicelib import auth, jobs
    from chalicelib.mcp import ToolCall, ToolError
    from chalicelib.tools import build_registry

    user = make_user()
    db.one("set_limit", user_id=user.user_id, kind="monthly_budget_usd", value="5")

    def unreachable(job_id: str) -> None:
        raise ConnectionError("the Lambda API is unreachable")

    monkeypatch.setattr(jobs, "dispatch", unreachable)
    handler = build_registry(db).tools["chatgpt_complete"].handler
    arguments = {"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4.1-mini", "background": True}
    with pytest.raises(ToolError, match="could not be started; nothing was sent") as refused:
        handler(
            ToolCall(
                name="chatgpt_complete", arguments=arguments, principal=auth.Credential(auth.hash_token(user.token))
            )
        )
    job_id = refused.value.data["job_id"]
    (row,) = rows(database_url, "SELECT status, turn_id FROM completion_jobs WHERE id = CAST(:j AS uuid)", j=job_id)
    assert row["status"] == "failed"
    held = rows(database_url, "SELECT count(*) AS n FROM usage_reservations WHERE user_id = :u", u=user.user_id)
    assert held[0]["n"] == 0

"""Storage quotas: what one user may keep, refused before anything is written, atomically, with the numbers."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pg8000.native
import pytest

from chalicelib.config import DEFAULT_QUOTAS
from chalicelib.db import connection
from tests.clients import error_details, post


def tool(server, user, name, arguments):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    response = post(server.mcp_url, json.dumps(body, ensure_ascii=False).encode(), token=user.token)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def ok(result):
    assert result["isError"] is False, result["content"][0]["text"]
    return result["structuredContent"]


def refused(result, quota):
    assert result["isError"] is True, result
    assert error_details(result)["quota"] == quota, result
    return result["content"][0]["text"], error_details(result)


def set_limits(server, admin, user, **limits):
    return ok(tool(server, admin, "chitty_usage_limits_set", {"user_id": user.user_id, **limits}))


def scalar(database_url, sql, **params):
    with connection(database_url) as conn:
        return conn.run(sql, **params)[0][0]


def new_session(server, user, **arguments):
    return tool(server, user, "chitty_chat_session_create", {"session_name": "s", **arguments})


def add_messages(database_url, user, session_id, count, content="x"):
    """Messages stored in a session as a recorded turn stores them (sequence and totals by trigger)."""
    with connection(database_url) as conn:
        conn.run(
            "INSERT INTO chat_messages (session_id, user_id, turn_id, role, content) "
            "SELECT CAST(:s AS uuid), :u, gen_random_uuid(), 'user', :c FROM generate_series(1, :n)",
            s=session_id,
            u=user.user_id,
            c=content,
            n=count,
        )


def metadata_of_size(size: int) -> dict[str, str]:
    """Metadata whose JSON text (as PostgreSQL writes it) takes exactly `size` bytes."""
    overhead = len(json.dumps({"notes": ""}))  # {"notes": ""}
    return {"notes": "n" * (size - overhead)}


# Defaults and what counts


def test_every_quota_has_a_default_until_an_admin_sets_one(server, admin, make_user):
    user = make_user()
    new_session(server, user)
    status = ok(tool(server, user, "chitty_usage_limits_get", {}))
    for kind, value in DEFAULT_QUOTAS.items():
        assert status["limits"][kind] == {"value": value, "source": "default"}
    assert status["stored"] == {"sessions": 1, "session_templates": 0, "model_configs": 0, "api_keys": 0}

    status = set_limits(server, admin, user, sessions=7, bytes_per_session=None)
    assert status["limits"]["sessions"] == {"value": 7, "source": "user"}
    assert status["limits"]["bytes_per_session"] == {"value": None, "source": "none"}
    assert status["limits"]["messages_per_session"] == {
        "value": DEFAULT_QUOTAS["messages_per_session"],
        "source": "default",
    }


def test_the_default_metadata_quota_refuses_what_stored_112_mb_in_nine_seconds(server, make_user, database_url):
    user = make_user()
    text, data = refused(new_session(server, user, metadata=metadata_of_size(900_000)), "metadata_bytes_per_session")
    assert text.startswith("Metadata quota: at most 16384 bytes of metadata (as JSON text) per session")
    assert data == {
        "message": text,
        "quota": "metadata_bytes_per_session",
        "limit": 16384,
        "used": 0,
        "requested": 900_000,
    }
    assert scalar(database_url, "SELECT count(*) FROM chat_sessions WHERE user_id = :u", u=user.user_id) == 0


# Sessions


def test_a_session_past_the_sessions_quota_is_refused_and_not_stored(server, admin, make_user, database_url):
    user = make_user()
    set_limits(server, admin, user, sessions=2)
    assert [new_session(server, user)["isError"] for _ in range(2)] == [False, False]
    text, data = refused(new_session(server, user), "sessions")
    assert text == (
        "Session quota reached: at most 2 sessions, and 2 are stored. Delete sessions that are no longer needed "
        "(chitty_chat_session_delete), or ask an admin to raise sessions."
    )
    assert (data["limit"], data["used"], data["requested"]) == (2, 2, 1)
    assert scalar(database_url, "SELECT count(*) FROM chat_sessions WHERE user_id = :u", u=user.user_id) == 2


def test_a_deleted_session_makes_room_for_a_new_one(server, admin, make_user):
    user = make_user()
    set_limits(server, admin, user, sessions=1)
    first = ok(new_session(server, user))
    assert new_session(server, user)["isError"] is True
    ok(tool(server, user, "chitty_chat_session_delete", {"session_id": first["session_id"]}))
    ok(new_session(server, user))


def test_concurrent_creates_never_pass_the_sessions_quota(server, admin, make_user, database_url):
    user = make_user()
    set_limits(server, admin, user, sessions=5)
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: new_session(server, user), range(20)))
    assert sum(not result["isError"] for result in results) == 5
    assert all(error_details(result)["quota"] == "sessions" for result in results if result["isError"])
    assert scalar(database_url, "SELECT count(*) FROM chat_sessions WHERE user_id = :u", u=user.user_id) == 5


def test_an_admin_acting_for_a_user_meets_that_users_quota(server, admin, make_user):
    user = make_user()
    set_limits(server, admin, user, sessions=0)
    text, data = refused(new_session(server, admin, user_id=user.user_id), "sessions")
    assert "at most 0 sessions" in text
    assert (data["limit"], data["used"]) == (0, 0)
    assert not new_session(server, admin)["isError"]


def test_a_system_prompt_counts_towards_the_bytes_of_its_session(server, admin, make_user):
    user = make_user()
    set_limits(server, admin, user, bytes_per_session=1000)
    text, data = refused(new_session(server, user, initial_system_prompt="é" * 501), "bytes_per_session")
    assert "at most 1000 bytes of text per session" in text
    assert (data["limit"], data["used"], data["requested"]) == (1000, 0, 1002)
    ok(new_session(server, user, initial_system_prompt="é" * 500))


# Metadata


def test_metadata_merged_past_the_quota_is_refused_and_left_as_it_was(server, admin, make_user):
    user = make_user()
    set_limits(server, admin, user, metadata_bytes_per_session=1000)
    session = ok(new_session(server, user, metadata={"case_id": "c1", **metadata_of_size(900)}))
    change = {"session_id": session["session_id"], "metadata": {"more": "m" * 200}, "session_name": "renamed"}
    text, data = refused(tool(server, user, "chitty_chat_session_update", change), "metadata_bytes_per_session")
    assert text.startswith("Metadata quota: at most 1000 bytes")
    assert (data["limit"], data["used"]) == (1000, 900 + len(', "case_id": "c1"'))
    assert data["requested"] > 1000
    after = ok(tool(server, user, "chitty_chat_session_get", {"session_id": session["session_id"]}))
    assert after["metadata"] == session["metadata"]
    assert after["session_name"] == "s"


def test_metadata_over_a_lowered_quota_may_still_shrink(server, admin, make_user):
    user = make_user()
    session = ok(new_session(server, user, metadata={"a": "a" * 3000, "b": "b" * 3000}))
    set_limits(server, admin, user, metadata_bytes_per_session=1000)
    grow = {"session_id": session["session_id"], "metadata": {"c": "c"}}
    refused(tool(server, user, "chitty_chat_session_update", grow), "metadata_bytes_per_session")
    shrink = {"session_id": session["session_id"], "metadata": {"a": None}}
    assert ok(tool(server, user, "chitty_chat_session_update", shrink))["metadata"] == {"b": "b" * 3000}


def test_no_metadata_quota_still_keeps_one_sessions_metadata_under_256_kib(server, admin, make_user):
    user = make_user()
    set_limits(server, admin, user, metadata_bytes_per_session=None)
    ok(new_session(server, user, metadata=metadata_of_size(262_144)))
    text, data = refused(new_session(server, user, metadata=metadata_of_size(262_145)), "metadata_bytes_per_session")
    assert "at most 262144 bytes" in text
    assert data["limit"] == 262_144


def test_a_template_lends_its_default_metadata_within_the_quota(server, admin, make_user):
    user = make_user()
    set_limits(server, admin, user, metadata_bytes_per_session=1000)
    template = {"name": "t", "description": "d", "system_prompt": "Hello {{who}}."}
    refused(
        tool(server, user, "chitty_session_template_create", {**template, "default_metadata": metadata_of_size(1001)}),
        "metadata_bytes_per_session",
    )
    ok(tool(server, user, "chitty_session_template_create", {**template, "default_metadata": metadata_of_size(600)}))
    refused(
        tool(server, user, "chitty_session_template_update", {"name": "t", "default_metadata": metadata_of_size(2000)}),
        "metadata_bytes_per_session",
    )
    arguments = {"template": "t", "variables": {"who": "you"}, "metadata": metadata_of_size(600) | {"x": "y" * 500}}
    refused(new_session(server, user, **arguments), "metadata_bytes_per_session")


def test_a_template_filled_past_the_longest_system_prompt_is_refused(server, make_user, database_url):
    user = make_user()
    template = {"name": "echo", "description": "d", "system_prompt": "{{v}} " * 10}
    ok(tool(server, user, "chitty_session_template_create", template))
    result = new_session(server, user, template="echo", variables={"v": "w" * 10_001})
    assert result["isError"] is True
    assert error_details(result)["field"] == "variables"
    assert "at most 100000" in result["content"][0]["text"]
    assert scalar(database_url, "SELECT count(*) FROM chat_sessions WHERE user_id = :u", u=user.user_id) == 0


# Templates, configs, keys


def test_session_templates_past_the_quota_are_refused(server, admin, make_user, database_url):
    user = make_user()
    set_limits(server, admin, user, session_templates=1)
    template = {"description": "d", "system_prompt": "p"}
    ok(tool(server, user, "chitty_session_template_create", {"name": "one", **template}))
    text, data = refused(
        tool(server, user, "chitty_session_template_create", {"name": "two", **template}), "session_templates"
    )
    assert text.startswith("Session template quota reached: at most 1 session templates, and 1 are stored.")
    assert (data["limit"], data["used"], data["requested"]) == (1, 1, 1)
    assert scalar(database_url, "SELECT count(*) FROM session_templates WHERE user_id = :u", u=user.user_id) == 1


def test_a_template_has_at_most_a_hundred_variables(server, make_user):
    user = make_user()
    prompt = " ".join(f"{{{{v{index}}}}}" for index in range(101))
    result = tool(
        server, user, "chitty_session_template_create", {"name": "many", "description": "d", "system_prompt": prompt}
    )
    assert result["isError"] is True
    assert error_details(result)["field"] == "system_prompt"
    assert "at most 100" in result["content"][0]["text"]


def test_model_configs_past_the_quota_are_refused(server, admin, make_user, database_url):
    user = make_user()
    set_limits(server, admin, user, model_configs=1)
    ok(tool(server, user, "chitty_model_config_create", {"name": "a", "model": "gpt-4o-mini"}))
    text, data = refused(
        tool(server, user, "chitty_model_config_create", {"name": "b", "model": "gpt-4o-mini"}), "model_configs"
    )
    assert text.startswith("Model config quota reached: at most 1 model configs, and 1 are stored.")
    assert (data["limit"], data["used"], data["requested"]) == (1, 1, 1)
    assert scalar(database_url, "SELECT count(*) FROM model_configs WHERE user_id = :u", u=user.user_id) == 1


def test_storing_a_key_at_the_quota_deletes_the_oldest_revoked_ones(server, admin, make_user, database_url):
    user = make_user()
    set_limits(server, admin, user, api_keys=3)
    stored = [
        ok(tool(server, user, "chitty_api_key_set", {"api_key": f"sk-quota-{index:02d}-" + "k" * 20}))["key_id"]
        for index in range(5)
    ]
    listed = ok(tool(server, user, "chitty_api_key_list", {}))["keys"]
    assert [key["key_id"] for key in listed] == list(reversed(stored[2:]))
    assert [key["status"] for key in listed] == ["active", "revoked", "revoked"]
    assert scalar(database_url, "SELECT count(*) FROM api_keys WHERE user_id = :u", u=user.user_id) == 3


def test_no_key_is_stored_under_a_key_quota_of_zero(server, admin, make_user, database_url):
    user = make_user()
    set_limits(server, admin, user, api_keys=0)
    text, data = refused(tool(server, user, "chitty_api_key_set", {"api_key": "sk-never-" + "k" * 20}), "api_keys")
    assert "at most 0 stored API keys" in text
    assert (data["limit"], data["used"], data["requested"]) == (0, 0, 1)
    assert scalar(database_url, "SELECT count(*) FROM api_keys WHERE user_id = :u", u=user.user_id) == 0


# session_storage_refusal: what prepare_completion asks before a turn


def storage_refusal(conn, user, session_id, messages, size, defaults):
    return conn.run(
        "SELECT session_storage_refusal(:u, CAST(:s AS uuid), :m, :b, CAST(:d AS jsonb))",
        u=user.user_id,
        s=session_id,
        m=messages,
        b=size,
        d=json.dumps(defaults),
    )[0][0]


def test_a_turn_past_the_messages_of_a_session_is_refused_with_a_sentence_a_user_can_read(
    server, make_user, database_url
):
    user = make_user()
    session_id = ok(new_session(server, user))["session_id"]
    add_messages(database_url, user, session_id, 1998)
    defaults = {"messages_per_session": 2000}
    with connection(database_url) as conn:
        assert storage_refusal(conn, user, session_id, 2, 100, defaults) is None
        add_messages(database_url, user, session_id, 1)
        refusal = storage_refusal(conn, user, session_id, 2, 100, defaults)
    assert refusal == {
        "error": "quota",
        "quota": "messages_per_session",
        "limit": 2000,
        "used": 1999,
        "requested": 2,
        "message": "Session quota reached: at most 2000 messages per session (this session has 1999, this turn "
        "adds 2). Start a new session, or ask an admin to raise messages_per_session.",
    }


def test_the_bytes_of_a_session_count_its_system_prompt_and_its_messages(server, make_user, database_url):
    user = make_user()
    session_id = ok(new_session(server, user, initial_system_prompt="p" * 100))["session_id"]
    add_messages(database_url, user, session_id, 3, content="ü" * 100)  # 200 bytes each
    defaults = {"bytes_per_session": 1000}
    with connection(database_url) as conn:
        assert storage_refusal(conn, user, session_id, 2, 300, defaults) is None
        refusal = storage_refusal(conn, user, session_id, 2, 301, defaults)
    assert {key: refusal[key] for key in ("quota", "limit", "used", "requested")} == {
        "quota": "bytes_per_session",
        "limit": 1000,
        "used": 700,
        "requested": 301,
    }
    assert refusal["message"].startswith("Session quota reached: at most 1000 bytes of text per session")


def test_a_users_own_quota_wins_over_the_default_and_null_means_none(server, admin, make_user, database_url):
    user = make_user()
    session_id = ok(new_session(server, user))["session_id"]
    add_messages(database_url, user, session_id, 10)
    defaults = {"messages_per_session": 5, "bytes_per_session": 5}
    with connection(database_url) as conn:
        assert storage_refusal(conn, user, session_id, 1, 1, defaults)["quota"] == "messages_per_session"
        set_limits(server, admin, user, messages_per_session=20, bytes_per_session=None)
        assert storage_refusal(conn, user, session_id, 2, 10_000, defaults) is None
        assert storage_refusal(conn, user, session_id, 11, 1, defaults)["limit"] == 20


def test_turns_in_progress_hold_their_room_in_the_session(server, make_user, database_url):
    user = make_user()
    session_id = ok(new_session(server, user))["session_id"]
    add_messages(database_url, user, session_id, 2)
    defaults = {"messages_per_session": 6, "bytes_per_session": 1000}
    with connection(database_url) as conn:
        conn.run(
            "INSERT INTO usage_reservations (turn_id, user_id, tokens, expires_at, session_id, messages, bytes) "
            "VALUES (gen_random_uuid(), :u, 0, now() + interval '1 minute', CAST(:s AS uuid), 3, 500)",
            u=user.user_id,
            s=session_id,
        )
        refusal = storage_refusal(conn, user, session_id, 2, 10, defaults)
        assert (refusal["quota"], refusal["used"]) == ("messages_per_session", 5)
        conn.run("UPDATE usage_reservations SET expires_at = now() WHERE session_id = CAST(:s AS uuid)", s=session_id)
        assert storage_refusal(conn, user, session_id, 2, 10, defaults) is None


def test_a_check_waits_for_the_turn_that_holds_the_users_lock_and_then_counts_its_reservation(
    server, make_user, database_url
):
    user = make_user()
    session_id = ok(new_session(server, user))["session_id"]
    defaults = {"messages_per_session": 4}
    answers: list[Any] = []
    with connection(database_url) as first, connection(database_url) as second:
        first.run("BEGIN")
        assert storage_refusal(first, user, session_id, 3, 0, defaults) is None
        first.run(
            "INSERT INTO usage_reservations (turn_id, user_id, tokens, expires_at, session_id, messages) "
            "VALUES (gen_random_uuid(), :u, 0, now() + interval '1 minute', CAST(:s AS uuid), 3)",
            u=user.user_id,
            s=session_id,
        )
        waiter_pid = second.run("SELECT pg_backend_pid()")[0][0]
        thread = threading.Thread(
            target=lambda: answers.append(storage_refusal(second, user, session_id, 3, 0, defaults))
        )
        thread.start()
        wait_until_waiting_for_a_lock(first, waiter_pid)
        assert answers == []
        first.run("COMMIT")
        thread.join(timeout=30)
    assert answers[0]["quota"] == "messages_per_session"
    assert answers[0]["used"] == 3


def wait_until_waiting_for_a_lock(conn: pg8000.native.Connection, pid: int) -> None:
    for _ in range(10_000):
        if conn.run("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p", p=pid)[0][0]:
            return
    pytest.fail("the second check never waited for the lock")


def test_a_session_of_another_user_is_nothing_to_bound(server, make_user, database_url):
    owner, other = make_user(), make_user()
    session_id = ok(new_session(server, owner))["session_id"]
    with connection(database_url) as conn:
        assert storage_refusal(conn, other, session_id, 10_000, 10**9, {"messages_per_session": 1}) is None
        assert storage_refusal(conn, owner, str(uuid.uuid4()), 10_000, 10**9, {"messages_per_session": 1}) is None

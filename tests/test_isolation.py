"""Isolation matrix: every tool, every id it takes, called by one user with another's.

For each id a tool takes: another user's id and a missing id answer the same not-found (or,
for user ids, the same refusal); a malformed id is a validation error naming the argument;
an admin may use it; a revoked or expired token can do nothing at all. The table must name
every tool the server lists, so a new tool cannot skip it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from chalicelib.db import connection
from tests.clients import post
from tests.conftest import make_grant

HI = [{"role": "user", "content": "hi"}]
ANALYTICS = {"start_date": "2026-01-01", "end_date": "2026-01-31", "granularity": "day"}


def call(server, token, name, arguments):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    return post(server.mcp_url, body, token=token)


def result_of(server, token, name, arguments):
    response = call(server, token, name, arguments)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def text(result) -> str:
    return " ".join(block["text"] for block in result["content"])


# How to make an object of each kind for a user; returns the id another user will try.
def own_session(server, user) -> str:
    result = result_of(server, user.token, "chitty_chat_session_create", {"session_name": "theirs"})
    return result["structuredContent"]["session_id"]


def own_turn(server, user) -> str:
    result = result_of(server, user.token, "chatgpt_complete", {"messages": HI})
    return result["structuredContent"]["turn_id"]


def own_job(server, user) -> str:
    result = result_of(server, user.token, "chatgpt_complete", {"messages": HI, "background": True})
    return result["structuredContent"]["job_id"]


DATABASE: dict[str, str] = {}


@pytest.fixture(autouse=True, scope="module")
def _database(database_url):
    DATABASE["url"] = database_url


def own_grant(server, user) -> str:
    return make_grant(DATABASE["url"], user.user_id)


def own_key(server, user) -> str:
    result = result_of(server, user.token, "chitty_api_key_set", {"api_key": "sk-theirs-" + uuid.uuid4().hex})
    return result["structuredContent"]["key_id"]


def own_config(server, user) -> str:
    name = f"cfg-{uuid.uuid4().hex[:8]}"
    result_of(server, user.token, "chitty_model_config_create", {"name": name, "model": "gpt-4o-mini"})
    return name


def own_template(server, user) -> str:
    name = f"tpl-{uuid.uuid4().hex[:8]}"
    arguments = {"name": name, "description": "theirs", "system_prompt": "You help {{who}}."}
    result_of(server, user.token, "chitty_session_template_create", arguments)
    return name


def own_user_id(server, user) -> str:
    return user.user_id


@dataclass(frozen=True)
class IdArgument:
    """An argument naming something that belongs to a user."""

    name: str
    make: Callable[[Any, Any], str]
    missing: Callable[[], str]
    malformed: str
    base: dict[str, Any] = field(default_factory=dict)
    # What an admin adds to act on the other user's object (names are looked up per user).
    admin_extra: Callable[[Any, Any], dict[str, Any]] = lambda server, owner: {}
    # Arguments that must name something of the owner's for the call to make sense (e.g. which config).
    context: Callable[[Any, Any, Any], dict[str, Any]] = lambda server, owner, caller: {}


def session_id(base=None) -> IdArgument:
    return IdArgument("session_id", own_session, lambda: str(uuid.uuid4()), "not-a-uuid", base or {})


def user_id(base=None, context=None) -> IdArgument:
    return IdArgument(
        "user_id",
        own_user_id,
        lambda: f"nobody-{uuid.uuid4().hex[:8]}",
        "bad id!",
        base or {},
        context=context or (lambda server, owner, caller: {}),
    )


def config_name(argument="name", base=None) -> IdArgument:
    return IdArgument(
        argument,
        own_config,
        lambda: f"cfg-{uuid.uuid4().hex[:8]}",
        "bad name!",
        base or {},
        lambda server, owner: {"user_id": owner.user_id},
    )


def template_name(argument="name", base=None) -> IdArgument:
    return IdArgument(
        argument,
        own_template,
        lambda: f"tpl-{uuid.uuid4().hex[:8]}",
        "bad name!",
        base or {},
        lambda server, owner: {"user_id": owner.user_id},
    )


# Id-like arguments that refer to nothing owned: a ChittyOS case id is a label sessions are filtered
# by, and the name given to create something is the new thing's own.
NOT_OWNED = {"case_id"}
NEW_NAMES = {"chitty_model_config_create": {"name"}, "chitty_session_template_create": {"name"}}
MATRIX: dict[str, list[IdArgument]] = {
    "chatgpt_complete": [
        session_id({"messages": HI}),
        user_id({"messages": HI}),
        config_name("model_config", {"messages": HI}),
    ],
    "chatgpt_stream": [
        session_id({"messages": HI}),
        user_id({"messages": HI}),
        config_name("model_config", {"messages": HI}),
    ],
    "chatgpt_turn_get": [IdArgument("turn_id", own_turn, lambda: str(uuid.uuid4()), "not-a-uuid")],
    "chatgpt_job_get": [IdArgument("job_id", own_job, lambda: str(uuid.uuid4()), "not-a-uuid")],
    "chatgpt_job_cancel": [IdArgument("job_id", own_job, lambda: str(uuid.uuid4()), "not-a-uuid")],
    "chatgpt_job_list": [user_id()],
    "chitty_oauth_grants_list": [user_id()],
    "chitty_oauth_grants_revoke": [
        IdArgument(
            "grant_id",
            own_grant,
            lambda: str(uuid.uuid4()),
            "not-a-uuid",
            admin_extra=lambda server, owner: {"user_id": owner.user_id},
        ),
        user_id(context=lambda server, owner, caller: {"grant_id": own_grant(server, owner)}),
    ],
    "chitty_chat_session_create": [
        user_id({"session_name": "x"}),
        config_name("model_config", {"session_name": "x"}),
        template_name("template", {"session_name": "x", "variables": {"who": "me"}}),
    ],
    "chitty_chat_session_list": [user_id()],
    "chitty_chat_session_get": [session_id()],
    "chitty_chat_session_messages": [session_id()],
    "chitty_chat_session_update": [
        session_id({"session_name": "renamed"}),
        IdArgument(
            "model_config",
            own_config,
            lambda: f"cfg-{uuid.uuid4().hex[:8]}",
            "bad name!",
            context=lambda server, owner, caller: {"session_id": own_session(server, caller)},
            admin_extra=lambda server, owner: {"session_id": own_session(server, owner)},
        ),
    ],
    "chitty_chat_session_delete": [session_id()],
    "chitty_api_key_set": [],
    "chitty_api_key_list": [user_id()],
    "chitty_api_key_revoke": [
        IdArgument("key_id", own_key, lambda: str(uuid.uuid4()), "not-a-uuid"),
    ],
    "chitty_usage_limits_get": [user_id()],
    "chitty_usage_limits_set": [user_id({"requests_per_minute": 1000})],
    "chitty_usage_analytics": [user_id(ANALYTICS)],
    "chitty_model_config_create": [user_id({"name": "mine", "model": "gpt-4o-mini"})],
    "chitty_model_config_list": [user_id()],
    "chitty_model_config_update": [
        config_name(base={"temperature": 0.5}),
        user_id({"temperature": 0.5}, lambda server, owner, caller: {"name": own_config(server, owner)}),
    ],
    "chitty_model_config_delete": [
        config_name(),
        user_id(context=lambda server, owner, caller: {"name": own_config(server, owner)}),
    ],
    "chitty_models_list": [user_id()],
    "chitty_session_template_create": [
        user_id({"name": "mine", "description": "d", "system_prompt": "p"}),
        config_name("model_config", {"name": "t-with-config", "description": "d", "system_prompt": "p"}),
    ],
    "chitty_session_template_list": [user_id()],
    "chitty_session_template_update": [
        template_name(base={"description": "changed"}),
        IdArgument(
            "model_config",
            own_config,
            lambda: f"cfg-{uuid.uuid4().hex[:8]}",
            "bad name!",
            context=lambda server, owner, caller: {"name": own_template(server, caller)},
            admin_extra=lambda server, owner: {"name": own_template(server, owner), "user_id": owner.user_id},
        ),
        user_id({"description": "changed"}, lambda server, owner, caller: {"name": own_template(server, owner)}),
    ],
    "chitty_session_template_delete": [
        template_name(),
        user_id(context=lambda server, owner, caller: {"name": own_template(server, owner)}),
    ],
}
CASES = [(tool, argument) for tool, arguments in MATRIX.items() for argument in arguments]


def test_the_matrix_names_every_tool_the_server_lists(server, alice):
    listed = post(server.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, token=alice.token).json()
    assert sorted(tool["name"] for tool in listed["result"]["tools"]) == sorted(MATRIX)
    for tool in listed["result"]["tools"]:
        properties = set(tool["inputSchema"].get("properties", {}))
        id_like = {name for name in properties if name.endswith("_id") or name in ("name", "model_config", "template")}
        id_like -= NOT_OWNED | NEW_NAMES.get(tool["name"], set())
        assert id_like <= {argument.name for argument in MATRIX[tool["name"]]}, tool["name"]


@pytest.mark.parametrize(("tool", "argument"), CASES, ids=[f"{tool}-{argument.name}" for tool, argument in CASES])
def test_another_users_id_answers_like_a_missing_one_and_a_malformed_one_is_invalid(
    server, make_user, admin, tool, argument
):
    caller, owner = make_user(prefix="a"), make_user(prefix="b")
    theirs, missing = argument.make(server, owner), argument.missing()
    base = {**argument.base, **argument.context(server, owner, caller)}

    on_theirs = result_of(server, caller.token, tool, {**base, argument.name: theirs})
    on_missing = result_of(server, caller.token, tool, {**base, argument.name: missing})
    on_malformed = result_of(server, caller.token, tool, {**base, argument.name: argument.malformed})

    assert on_theirs["isError"] is True
    assert on_missing["isError"] is True
    assert text(on_theirs).replace(theirs, "<id>") == text(on_missing).replace(missing, "<id>")
    assert on_malformed["isError"] is True
    assert text(on_malformed).startswith(f"Invalid arguments for {tool}: {argument.name}")
    as_admin = result_of(
        server, admin.token, tool, {**base, argument.name: theirs, **argument.admin_extra(server, owner)}
    )
    assert as_admin["isError"] is False, text(as_admin)


@pytest.mark.parametrize("how", ["revoked", "expired"])
@pytest.mark.parametrize("tool", sorted(MATRIX))
def test_a_dead_token_can_do_nothing(server, make_user, database_url, tool, how):
    user = make_user()
    with connection(database_url) as conn:
        column = "revoked_at" if how == "revoked" else "expires_at"
        conn.run(f"UPDATE access_tokens SET {column} = now() - interval '1 second' WHERE user_id = :u", u=user.user_id)
        before = conn.run("SELECT (SELECT count(*) FROM chat_sessions), (SELECT count(*) FROM chat_messages)")
    arguments = {**(MATRIX[tool][0].base if MATRIX[tool] else {}), "session_name": "x", "messages": HI}
    response = call(server, user.token, tool, arguments)
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    with connection(database_url) as conn:
        assert conn.run("SELECT (SELECT count(*) FROM chat_sessions), (SELECT count(*) FROM chat_messages)") == before

"""Session tools through the official MCP client, in both protocol eras."""

from __future__ import annotations

import uuid

import pytest

from tests.clients import CLIENT_MODES, with_client


def call(server, user, mode, name, arguments):
    async def work(client):
        return await client.call_tool(name, arguments)

    return with_client(server.mcp_url, user.token, mode, work)


def text_of(result) -> str:
    return " ".join(block.text for block in result.content if getattr(block, "type", None) == "text")


@pytest.mark.parametrize("mode", CLIENT_MODES)
def test_a_session_lives_from_create_to_delete(server, alice, mode):
    async def work(client):
        created = await client.call_tool(
            "chitty_chat_session_create",
            {
                "session_name": "Case Analysis: Smith v. Jones",
                "initial_system_prompt": "You are a legal research assistant.",
                "metadata": {"case_id": "case456", "case_type": "contract_dispute", "document_ids": ["doc123"]},
            },
        )
        session_id = created.structured_content["session_id"]
        fetched = await client.call_tool("chitty_chat_session_get", {"session_id": session_id})
        updated = await client.call_tool(
            "chitty_chat_session_update",
            {"session_id": session_id, "session_name": "Smith v. Jones", "status": "archived"},
        )
        deleted = await client.call_tool("chitty_chat_session_delete", {"session_id": session_id})
        after = await client.call_tool("chitty_chat_session_get", {"session_id": session_id})
        return created, fetched, updated, deleted, after

    created, fetched, updated, deleted, after = with_client(server.mcp_url, alice.token, mode, work)
    assert not created.is_error
    assert created.structured_content["user_id"] == alice.user_id
    assert created.structured_content["metadata"]["case_id"] == "case456"
    assert created.structured_content["system_prompt"] == "You are a legal research assistant."
    assert fetched.structured_content == created.structured_content
    assert updated.structured_content["session_name"] == "Smith v. Jones"
    assert updated.structured_content["status"] == "archived"
    assert deleted.structured_content == {"session_id": created.structured_content["session_id"], "deleted": True}
    assert after.is_error
    assert "No session" in text_of(after)


def test_update_merges_metadata_and_null_removes_a_key(server, alice):
    created = call(
        server, alice, "legacy", "chitty_chat_session_create", {"session_name": "m", "metadata": {"case_id": "c1"}}
    )
    session_id = created.structured_content["session_id"]
    merged = call(
        server,
        alice,
        "legacy",
        "chitty_chat_session_update",
        {"session_id": session_id, "metadata": {"document_ids": ["d1"], "case_id": None}},
    )
    assert merged.structured_content["metadata"] == {"document_ids": ["d1"]}


@pytest.mark.parametrize(
    "tool", ["chitty_chat_session_get", "chitty_chat_session_update", "chitty_chat_session_delete"]
)
def test_another_users_session_answers_exactly_like_a_missing_one(server, alice, bob, tool):
    created = call(server, alice, "legacy", "chitty_chat_session_create", {"session_name": "private"})
    theirs = created.structured_content["session_id"]
    missing = str(uuid.uuid4())

    def as_bob(session_id):
        arguments = {"session_id": session_id}
        if tool == "chitty_chat_session_update":
            arguments["session_name"] = "hijacked"
        return call(server, bob, "legacy", tool, arguments)

    on_theirs, on_missing = as_bob(theirs), as_bob(missing)
    assert on_theirs.is_error
    assert on_missing.is_error
    assert text_of(on_theirs).replace(theirs, "ID") == text_of(on_missing).replace(missing, "ID")
    still_there = call(server, alice, "legacy", "chitty_chat_session_get", {"session_id": theirs})
    assert still_there.structured_content["session_name"] == "private"


def test_a_user_lists_only_their_own_sessions(server, alice, bob):
    call(server, alice, "legacy", "chitty_chat_session_create", {"session_name": "alice's"})
    call(server, bob, "legacy", "chitty_chat_session_create", {"session_name": "bob's"})
    listed = call(server, bob, "legacy", "chitty_chat_session_list", {})
    assert [s["session_name"] for s in listed.structured_content["sessions"]] == ["bob's"]


def test_a_user_cannot_act_for_another_user(server, alice, bob):
    refused = call(server, alice, "legacy", "chitty_chat_session_create", {"session_name": "x", "user_id": bob.user_id})
    assert refused.is_error
    assert "Only admins" in text_of(refused)
    listed = call(server, bob, "legacy", "chitty_chat_session_list", {})
    assert listed.structured_content["sessions"] == []


def test_an_admin_may_act_for_any_user(server, alice, admin):
    created = call(
        server, admin, "legacy", "chitty_chat_session_create", {"session_name": "for alice", "user_id": alice.user_id}
    )
    assert created.structured_content["user_id"] == alice.user_id
    session_id = created.structured_content["session_id"]
    assert not call(server, admin, "legacy", "chitty_chat_session_get", {"session_id": session_id}).is_error
    listed = call(server, admin, "legacy", "chitty_chat_session_list", {"user_id": alice.user_id})
    assert [s["session_id"] for s in listed.structured_content["sessions"]] == [session_id]
    own = call(server, alice, "legacy", "chitty_chat_session_get", {"session_id": session_id})
    assert own.structured_content["session_name"] == "for alice"


def test_an_admin_naming_an_unknown_user_gets_not_found(server, admin):
    result = call(server, admin, "legacy", "chitty_chat_session_create", {"session_name": "x", "user_id": "nobody-x"})
    assert result.is_error
    assert "No user" in text_of(result)


@pytest.mark.parametrize("mode", CLIENT_MODES)
def test_list_pages_through_every_session_once_with_opaque_cursors(server, make_user, mode):
    user = make_user()
    names = [f"s{index}" for index in range(7)]

    async def work(client):
        for name in names:
            await client.call_tool("chitty_chat_session_create", {"session_name": name})
        seen, cursor, pages = [], None, 0
        while True:
            arguments = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            page = (await client.call_tool("chitty_chat_session_list", arguments)).structured_content
            seen += [session["session_name"] for session in page["sessions"]]
            pages += 1
            cursor = page["next_cursor"]
            if cursor is None:
                return seen, pages

    seen, pages = with_client(server.mcp_url, user.token, mode, work)
    assert seen == list(reversed(names))
    assert pages == 3


def test_list_filters_by_case_and_status(server, make_user):
    user = make_user()
    for name, case_id in (("a", "case-1"), ("b", "case-2"), ("c", "case-1")):
        call(
            server,
            user,
            "legacy",
            "chitty_chat_session_create",
            {"session_name": name, "metadata": {"case_id": case_id}},
        )
    by_case = call(server, user, "legacy", "chitty_chat_session_list", {"case_id": "case-1"}).structured_content
    assert sorted(s["session_name"] for s in by_case["sessions"]) == ["a", "c"]
    archived_id = by_case["sessions"][0]["session_id"]
    call(server, user, "legacy", "chitty_chat_session_update", {"session_id": archived_id, "status": "archived"})
    active = call(server, user, "legacy", "chitty_chat_session_list", {"status": "active"}).structured_content
    assert archived_id not in [s["session_id"] for s in active["sessions"]]
    assert len(active["sessions"]) == 2


def test_a_forged_cursor_is_a_clear_error(server, alice):
    result = call(server, alice, "legacy", "chitty_chat_session_list", {"cursor": "not-a-cursor"})
    assert result.is_error
    assert "cursor" in text_of(result)

"""Model configs: CRUD by name, isolation, use in completions and as a session's default; models and prices."""

from __future__ import annotations

import pytest

from tests.clients import CLIENT_MODES, post, with_client


def tool(server, user, name, arguments):
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    response = post(server.mcp_url, message, token=user.token)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def text_of(result):
    return result["content"][0]["text"]


def ok(result):
    assert result["isError"] is False, text_of(result)
    return result["structuredContent"]


PRECISE = {"name": "precise", "model": "gpt-4.1", "temperature": 0.1, "max_tokens": 300, "system_prompt": "Be precise."}


@pytest.mark.parametrize("mode", CLIENT_MODES)
def test_a_config_lives_from_create_to_delete(server, make_user, mode):
    user = make_user()

    async def work(client):
        created = await client.call_tool("chitty_model_config_create", PRECISE)
        listed = await client.call_tool("chitty_model_config_list", {})
        updated = await client.call_tool(
            "chitty_model_config_update", {"name": "precise", "new_name": "careful", "top_p": 0.5, "temperature": None}
        )
        deleted = await client.call_tool("chitty_model_config_delete", {"name": "careful"})
        after = await client.call_tool("chitty_model_config_list", {})
        return created, listed, updated, deleted, after

    created, listed, updated, deleted, after = with_client(server.mcp_url, user.token, mode, work)
    assert not created.is_error
    config = created.structured_content
    assert {key: config[key] for key in PRECISE} == PRECISE
    assert config["top_p"] is None
    assert config["user_id"] == user.user_id
    assert listed.structured_content["configs"] == [config]
    changed = updated.structured_content
    assert (changed["name"], changed["model"], changed["top_p"], changed["temperature"]) == (
        "careful",
        "gpt-4.1",
        0.5,
        None,
    )
    assert changed["max_tokens"] == 300
    assert changed["system_prompt"] == "Be precise."
    assert deleted.structured_content == {"name": "careful", "deleted": True}
    assert after.structured_content["configs"] == []


def test_a_taken_name_is_a_clear_error(server, alice):
    ok(tool(server, alice, "chitty_model_config_create", PRECISE))
    again = tool(server, alice, "chitty_model_config_create", {**PRECISE, "model": "gpt-4o"})
    assert again["isError"] is True
    assert "A model config named 'precise' already exists" in text_of(again)
    [only] = ok(tool(server, alice, "chitty_model_config_list", {}))["configs"]
    assert only["model"] == "gpt-4.1"


def test_renaming_onto_a_taken_name_is_a_clear_error(server, alice):
    ok(tool(server, alice, "chitty_model_config_create", {"name": "one", "model": "gpt-4o"}))
    ok(tool(server, alice, "chitty_model_config_create", {"name": "two", "model": "gpt-4o"}))
    clash = tool(server, alice, "chitty_model_config_update", {"name": "one", "new_name": "two"})
    assert clash["isError"] is True
    assert "'two' already exists" in text_of(clash)


def test_two_users_may_use_the_same_name(server, alice, bob):
    ok(tool(server, alice, "chitty_model_config_create", PRECISE))
    assert ok(tool(server, bob, "chitty_model_config_create", {**PRECISE, "model": "gpt-4o"}))["model"] == "gpt-4o"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "gpt 4o; drop table"),
        ("model", ""),
        ("temperature", 2.5),
        ("temperature", -0.1),
        ("top_p", 1.5),
        ("max_tokens", 0),
        ("name", "has spaces"),
    ],
)
def test_settings_out_of_range_are_tool_errors_naming_the_field(server, alice, field, value):
    result = tool(server, alice, "chitty_model_config_create", {**PRECISE, field: value})
    assert result["isError"] is True
    assert field in text_of(result)
    assert ok(tool(server, alice, "chitty_model_config_list", {}))["configs"] == []


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("chitty_model_config_update", {"name": "precise", "model": "gpt-4o"}),
        ("chitty_model_config_delete", {"name": "precise"}),
    ],
)
def test_another_users_config_answers_like_a_missing_one(server, alice, bob, name, arguments):
    ok(tool(server, alice, "chitty_model_config_create", PRECISE))
    on_theirs = tool(server, bob, name, arguments)
    on_missing = tool(server, bob, name, {**arguments, "name": "nothing"})
    assert on_theirs["isError"] is True
    assert text_of(on_theirs).replace("'precise'", "NAME") == text_of(on_missing).replace("'nothing'", "NAME")
    [still] = ok(tool(server, alice, "chitty_model_config_list", {}))["configs"]
    assert still["model"] == "gpt-4.1"


def test_another_users_config_cannot_be_used_in_a_completion_or_a_session(server, fake_openai, alice, bob):
    ok(tool(server, alice, "chitty_model_config_create", PRECISE))
    completion = tool(
        server, bob, "chatgpt_complete", {"messages": [{"role": "user", "content": "x"}], "model_config": "precise"}
    )
    session = tool(server, bob, "chitty_chat_session_create", {"session_name": "s", "model_config": "precise"})
    for result in (completion, session):
        assert result["isError"] is True
        assert "No model config 'precise'" in text_of(result)
    assert fake_openai.chat_requests == []
    assert ok(tool(server, bob, "chitty_chat_session_list", {}))["sessions"] == []


@pytest.mark.parametrize("tool_name", ["chatgpt_complete", "chatgpt_stream"])
def test_a_completion_uses_the_settings_of_the_named_config(server, fake_openai, alice, tool_name):
    ok(tool(server, alice, "chitty_model_config_create", {**PRECISE, "top_p": 0.9}))
    answer = ok(
        tool(server, alice, tool_name, {"messages": [{"role": "user", "content": "hi"}], "model_config": "precise"})
    )
    sent = fake_openai.chat_requests[-1]
    assert (sent.model, sent.json["temperature"], sent.json["top_p"], sent.max_completion_tokens) == (
        "gpt-4.1",
        0.1,
        0.9,
        300,
    )
    assert sent.messages == [{"role": "system", "content": "Be precise."}, {"role": "user", "content": "hi"}]
    assert answer["model"] == "gpt-4.1"


def test_a_session_with_a_default_config_sends_its_settings(server, fake_openai, alice):
    ok(tool(server, alice, "chitty_model_config_create", PRECISE))
    session = ok(tool(server, alice, "chitty_chat_session_create", {"session_name": "s", "model_config": "precise"}))
    assert session["model_config"] == "precise"
    ok(
        tool(
            server,
            alice,
            "chatgpt_complete",
            {"messages": [{"role": "user", "content": "q"}], "session_id": session["session_id"]},
        )
    )
    sent = fake_openai.chat_requests[-1]
    assert (sent.model, sent.json["temperature"], sent.max_completion_tokens) == ("gpt-4.1", 0.1, 300)
    assert sent.messages[0] == {"role": "system", "content": "Be precise."}
    fetched = ok(tool(server, alice, "chitty_chat_session_get", {"session_id": session["session_id"]}))
    assert fetched["model_config"] == "precise"


def test_a_sessions_config_is_changed_and_removed_by_update(server, fake_openai, alice):
    ok(tool(server, alice, "chitty_model_config_create", PRECISE))
    session_id = ok(tool(server, alice, "chitty_chat_session_create", {"session_name": "s"}))["session_id"]
    assert ok(tool(server, alice, "chitty_chat_session_get", {"session_id": session_id}))["model_config"] is None

    set_ = ok(tool(server, alice, "chitty_chat_session_update", {"session_id": session_id, "model_config": "precise"}))
    renamed = ok(tool(server, alice, "chitty_chat_session_update", {"session_id": session_id, "session_name": "t"}))
    cleared = ok(tool(server, alice, "chitty_chat_session_update", {"session_id": session_id, "model_config": None}))

    assert set_["model_config"] == "precise"
    assert renamed["model_config"] == "precise"
    assert cleared["model_config"] is None
    ok(
        tool(
            server,
            alice,
            "chatgpt_complete",
            {"messages": [{"role": "user", "content": "q"}], "session_id": session_id},
        )
    )
    assert fake_openai.chat_requests[-1].model == "gpt-4o-mini"


def test_updating_a_session_to_an_unknown_config_changes_nothing(server, alice):
    session_id = ok(tool(server, alice, "chitty_chat_session_create", {"session_name": "s"}))["session_id"]
    result = tool(
        server,
        alice,
        "chitty_chat_session_update",
        {"session_id": session_id, "session_name": "t", "model_config": "no"},
    )
    assert result["isError"] is True
    assert "No model config 'no'" in text_of(result)
    assert ok(tool(server, alice, "chitty_chat_session_get", {"session_id": session_id}))["session_name"] == "s"


def test_sessions_follow_a_renamed_config_and_lose_a_deleted_one(server, alice):
    ok(tool(server, alice, "chitty_model_config_create", PRECISE))
    session_id = ok(
        tool(server, alice, "chitty_chat_session_create", {"session_name": "s", "model_config": "precise"})
    )["session_id"]
    ok(tool(server, alice, "chitty_model_config_update", {"name": "precise", "new_name": "exact"}))
    assert ok(tool(server, alice, "chitty_chat_session_get", {"session_id": session_id}))["model_config"] == "exact"
    ok(tool(server, alice, "chitty_model_config_delete", {"name": "exact"}))
    assert ok(tool(server, alice, "chitty_chat_session_get", {"session_id": session_id}))["model_config"] is None


def test_an_admin_manages_a_users_configs(server, alice, admin):
    created = ok(tool(server, admin, "chitty_model_config_create", {**PRECISE, "user_id": alice.user_id}))
    assert created["user_id"] == alice.user_id
    assert [c["name"] for c in ok(tool(server, alice, "chitty_model_config_list", {}))["configs"]] == ["precise"]
    assert ok(tool(server, admin, "chitty_model_config_list", {}))["configs"] == []


def test_a_user_cannot_manage_another_users_configs(server, alice, bob):
    result = tool(server, bob, "chitty_model_config_create", {**PRECISE, "user_id": alice.user_id})
    assert result["isError"] is True
    assert "Only admins" in text_of(result)


def test_models_list_shows_prices_in_force_and_the_callers_configs(server, alice, bob):
    ok(tool(server, alice, "chitty_model_config_create", {"name": "daily", "model": "gpt-4o"}))
    ok(tool(server, alice, "chitty_model_config_create", {"name": "pinned", "model": "gpt-4o-2024-08-06"}))
    ok(tool(server, alice, "chitty_model_config_create", {"name": "local", "model": "my-local-model"}))
    ok(tool(server, bob, "chitty_model_config_create", {"name": "bobs", "model": "gpt-4o"}))

    models = {entry["model"]: entry for entry in ok(tool(server, alice, "chitty_models_list", {}))["models"]}

    gpt_4o = models["gpt-4o"]
    assert (gpt_4o["input_per_mtok"], gpt_4o["cached_input_per_mtok"], gpt_4o["output_per_mtok"]) == (2.5, 1.25, 10)
    assert gpt_4o["priced"] is True
    assert gpt_4o["has_config"] is True
    assert gpt_4o["config_names"] == ["daily", "pinned"]
    assert models["gpt-4o-mini"]["config_names"] == []
    assert models["gpt-4o-mini"]["has_config"] is False
    assert models["gpt-4"]["cached_input_per_mtok"] == models["gpt-4"]["input_per_mtok"] == 30
    unpriced = models["my-local-model"]
    assert (unpriced["priced"], unpriced["input_per_mtok"], unpriced["config_names"]) == (False, None, ["local"])
    assert "bobs" not in str(models)
    for_bob = {entry["model"]: entry for entry in ok(tool(server, bob, "chitty_models_list", {}))["models"]}
    assert for_bob["gpt-4o"]["config_names"] == ["bobs"]
    assert "my-local-model" not in for_bob

"""Model configs: CRUD by name, isolation, use in completions and as a session's default; models and prices."""

from __future__ import annotations

import json
import uuid

import pytest
from jsonschema import Draft202012Validator
from pg8000.exceptions import DatabaseError

from chalicelib import pricing
from chalicelib.db import connection
from tests.clients import CLIENT_MODES, post, run_cli, with_client


def call_message(name, arguments):
    return {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


def tool(server, user, name, arguments):
    response = post(server.mcp_url, call_message(name, arguments), token=user.token)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def tools_of(server, user):
    response = post(server.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, token=user.token)
    return response.json()["result"]["tools"]


def text_of(result):
    return result["content"][0]["text"]


def ok(result):
    assert result["isError"] is False, text_of(result)
    return result["structuredContent"]


PRECISE = {"name": "precise", "model": "gpt-4.1", "temperature": 0.1, "max_tokens": 300, "system_prompt": "Be precise."}
# A catalogue entry as LiteLLM lists it: an OpenAI chat model at $1 / $4 per million tokens.
CHAT_MODEL = {
    "litellm_provider": "openai",
    "mode": "chat",
    "input_cost_per_token": 1e-06,
    "output_cost_per_token": 4e-06,
}


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
    assert fake_openai.chat_requests[-1].model == "gpt-5.4-mini"


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
    # A snapshot without a price of its own, billed as gpt-4o.
    ok(tool(server, alice, "chitty_model_config_create", {"name": "pinned", "model": "gpt-4o-2026-11-20"}))
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
    assert "gpt-4" not in models  # retired: listed only when asked for
    with_retired = {
        entry["model"]: entry
        for entry in ok(tool(server, alice, "chitty_models_list", {"include_retired": True}))["models"]
    }
    assert with_retired["gpt-4"]["cached_input_per_mtok"] == with_retired["gpt-4"]["input_per_mtok"] == 30
    assert with_retired["gpt-4"]["retired"] is True
    unpriced = models["my-local-model"]
    assert (unpriced["priced"], unpriced["input_per_mtok"], unpriced["config_names"]) == (False, None, ["local"])
    assert "bobs" not in str(models)
    for_bob = {entry["model"]: entry for entry in ok(tool(server, bob, "chitty_models_list", {}))["models"]}
    assert for_bob["gpt-4o"]["config_names"] == ["bobs"]
    assert "my-local-model" not in for_bob


def test_models_list_shows_every_rate_capabilities_and_the_announced_shutdown(server, alice):
    models = {
        entry["model"]: entry for entry in ok(tool(server, alice, "chitty_models_list", {"search": "GPT-"}))["models"]
    }

    gpt_54 = models["gpt-5.4"]
    assert (gpt_54["input_per_mtok"], gpt_54["cached_input_per_mtok"], gpt_54["output_per_mtok"]) == (2.5, 0.25, 15)
    assert gpt_54["cache_write_per_mtok"] == 2.5
    assert gpt_54["long_context"] == {
        "above_tokens": 272_000,
        "input_per_mtok": 5,
        "cached_input_per_mtok": 0.5,
        "cache_write_per_mtok": 5,
        "output_per_mtok": 22.5,
    }
    assert gpt_54["tiers"]["flex"]["output_per_mtok"] == 7.5
    assert gpt_54["tiers"]["flex"]["long_context"]["output_per_mtok"] == 11.25
    assert gpt_54["tiers"]["priority"] == {
        "input_per_mtok": 5,
        "cached_input_per_mtok": 0.5,
        "cache_write_per_mtok": 5,
        "output_per_mtok": 30,
        "long_context": None,
    }
    assert gpt_54["capabilities"]["efforts"] == ["none", "low", "medium", "high", "xhigh"]
    assert gpt_54["capabilities"]["apis"] == ["chat", "responses"]
    assert (gpt_54["shutdown_on"], gpt_54["retired"]) == (None, False)
    assert models["gpt-5.4-mini"]["web_search_per_call"] == {"low": 0.01, "medium": 0.01, "high": 0.01}
    gpt_4o = models["gpt-4o"]
    assert (gpt_4o["shutdown_on"], gpt_4o["successor"], gpt_4o["retired"]) == ("2027-01-14", "gpt-6-luna", False)
    assert gpt_4o["tiers"]["priority"]["input_per_mtok"] == 4.25
    assert all("gpt-" in name.lower() for name in models)


def test_retired_models_are_listed_when_asked_for_or_when_a_config_uses_them(server, alice, database_url):
    prefix = f"museum-{uuid.uuid4().hex[:8]}"
    gone, used, current = f"{prefix}-gone", f"{prefix}-used", f"{prefix}-current"
    table = {
        gone: {**CHAT_MODEL, "deprecation_date": "2020-01-01", "successor_model": "gpt-5.4-mini"},
        used: {**CHAT_MODEL, "deprecation_date": "2020-01-01"},
        current: {**CHAT_MODEL, "deprecation_date": "2099-06-30"},
    }
    with connection(database_url) as conn:
        conn.run(
            "SELECT import_model_catalogue(CAST(:m AS jsonb), now(), '2024-01-01')",
            m=json.dumps(pricing.catalogue_entries(table)),
        )
    ok(tool(server, alice, "chitty_model_config_create", {"name": "old", "model": used}))

    default = ok(tool(server, alice, "chitty_models_list", {"search": prefix}))["models"]
    everything = ok(tool(server, alice, "chitty_models_list", {"search": prefix, "include_retired": True}))["models"]

    assert [(m["model"], m["retired"], m["config_names"]) for m in default] == [
        (current, False, []),
        (used, True, ["old"]),
    ]
    shown = {m["model"]: m for m in everything}
    assert list(shown) == [current, gone, used]
    assert (shown[gone]["retired"], shown[gone]["shutdown_on"], shown[gone]["successor"]) == (
        True,
        "2020-01-01",
        "gpt-5.4-mini",
    )
    assert shown[current]["shutdown_on"] == "2099-06-30"


def test_models_list_names_the_aliases(server, alice, database_url):
    alias = f"azure-{uuid.uuid4().hex[:8]}"
    assert run_cli("pricing", "alias", alias, "gpt-4.1", database_url=database_url).returncode == 0
    aliases = ok(tool(server, alice, "chitty_models_list", {"search": "no model is named like this"}))["aliases"]
    assert {"name": alias, "model": "gpt-4.1"} in aliases


def test_every_models_list_answer_matches_its_output_schema_and_stays_small(server, alice):
    [listed] = [t for t in tools_of(server, alice) if t["name"] == "chitty_models_list"]
    validator = Draft202012Validator(listed["outputSchema"])
    for arguments in ({}, {"include_retired": True}, {"search": "gpt-5"}, {"search": "nothing like it"}):
        response = post(server.mcp_url, call_message("chitty_models_list", arguments), token=alice.token)
        result = response.json()["result"]
        assert list(validator.iter_errors(ok(result))) == []
        assert len(response.content) < 4 * 1024 * 1024


OPTIONS = {
    "reasoning_effort": "high",
    "verbosity": "low",
    "reasoning_summary": "concise",
    "service_tier": "flex",
    "web_search": "high",
}


def test_a_configs_reasoning_verbosity_tier_and_web_search_round_trip(server, alice):
    created = ok(tool(server, alice, "chitty_model_config_create", {**PRECISE, "model": "gpt-5.4", **OPTIONS}))
    [listed] = ok(tool(server, alice, "chitty_model_config_list", {}))["configs"]
    changed = ok(
        tool(
            server,
            alice,
            "chitty_model_config_update",
            {"name": "precise", "reasoning_effort": None, "service_tier": "priority", "web_search": True},
        )
    )
    off = ok(tool(server, alice, "chitty_model_config_update", {"name": "precise", "web_search": False}))

    assert {key: created[key] for key in OPTIONS} == OPTIONS
    assert listed == created
    assert {key: changed[key] for key in OPTIONS} == {
        **OPTIONS,
        "reasoning_effort": None,
        "service_tier": "priority",
        "web_search": "medium",
    }
    assert off["web_search"] is None
    assert off["verbosity"] == "low"


def test_web_search_true_on_create_means_the_medium_search_context(server, alice):
    created = ok(
        tool(server, alice, "chitty_model_config_create", {"name": "searcher", "model": "gpt-5.4", "web_search": True})
    )
    assert created["web_search"] == "medium"
    assert (created["reasoning_effort"], created["verbosity"], created["service_tier"]) == (None, None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reasoning_effort", "extreme"),
        ("reasoning_effort", "max"),
        ("verbosity", "terse"),
        ("reasoning_summary", "full"),
        ("service_tier", "scale"),
        ("web_search", "huge"),
        ("web_search", 1),
    ],
)
def test_a_bad_option_is_a_tool_error_naming_the_field(server, alice, field, value):
    created = tool(server, alice, "chitty_model_config_create", {**PRECISE, field: value})
    ok(tool(server, alice, "chitty_model_config_create", PRECISE))
    updated = tool(server, alice, "chitty_model_config_update", {"name": "precise", field: value})
    for result in (created, updated):
        assert result["isError"] is True
        assert field in text_of(result)
    [kept] = ok(tool(server, alice, "chitty_model_config_list", {}))["configs"]
    assert kept[field] is None


def test_the_database_refuses_an_option_the_tools_would_not_send(database_url, alice):
    with connection(database_url) as conn, pytest.raises(DatabaseError, match="model_configs_service_tier_check"):
        conn.run(
            "INSERT INTO model_configs (user_id, name, model, service_tier) VALUES (:u, 'raw', 'gpt-4o', 'scale')",
            u=alice.user_id,
        )

"""Session templates: CRUD, built-ins, sessions created from a template, and templates as MCP prompts."""

from __future__ import annotations

import json
import logging

import pytest
from mcp.shared.exceptions import MCPError

from chalicelib.mcp import HttpRequest, McpServer, Registry, ServerInfo
from tests.clients import CLIENT_MODES, MODERN, error_details, modern_headers, modern_request, post, with_client

INVALID_PARAMS = -32602
BUILT_INS = {
    "legal-research": {"jurisdiction", "practice_area"},
    "contract-review": {"contract_type", "party_represented", "jurisdiction"},
    "case-analysis": {"case_name", "jurisdiction", "client_role"},
    "document-analysis": {"document_type", "analysis_goal"},
    "financial-analysis": {"entity_name", "period", "accounting_framework"},
    "fact-checking": {"subject", "audience"},
}
INTAKE = {
    "name": "intake",
    "title": "Client intake",
    "description": "First conversation with a new client.",
    "system_prompt": "You interview {{client}} about {{matter}}. Ask {{client}} one question at a time.",
    "variable_descriptions": {"client": "Who the client is."},
    "default_metadata": {"case_type": "intake", "stage": "new"},
}


def tool(server, user, name, arguments):
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    response = post(server.mcp_url, message, token=user.token)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def rpc(server, user, method, params):
    response = post(server.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}, token=user.token)
    return response.json()


def text_of(result):
    return result["content"][0]["text"]


def ok(result):
    assert result["isError"] is False, text_of(result)
    return result["structuredContent"]


def templates_of(server, user):
    return {
        (t["name"], t["builtin"]): t for t in ok(tool(server, user, "chitty_session_template_list", {}))["templates"]
    }


# Built-ins


def test_the_built_in_templates_are_there_for_everyone(server, alice, bob):
    for user in (alice, bob):
        listed = templates_of(server, user)
        builtins = {name: t for (name, builtin), t in listed.items() if builtin}
        assert set(builtins) == set(BUILT_INS)
        for name, template in builtins.items():
            assert {variable["name"] for variable in template["variables"]} == BUILT_INS[name]
            assert all(variable["description"] for variable in template["variables"])
            assert template["user_id"] is None
            assert template["title"] != name
            assert template["default_metadata"] == {"workflow": name}


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("chitty_session_template_update", {"name": "legal-research", "description": "mine now"}),
        ("chitty_session_template_delete", {"name": "legal-research"}),
    ],
)
def test_built_in_templates_are_read_only(server, admin, name, arguments):
    result = tool(server, admin, name, arguments)
    assert result["isError"] is True
    assert "'legal-research' is a built-in template and is read-only" in text_of(result)
    assert templates_of(server, admin)[("legal-research", True)]["description"] != "mine now"


# A user's templates


def test_a_template_lives_from_create_to_delete(server, alice):
    created = ok(tool(server, alice, "chitty_session_template_create", INTAKE))
    listed = templates_of(server, alice)
    updated = ok(
        tool(
            server,
            alice,
            "chitty_session_template_update",
            {"name": "intake", "new_name": "first-meeting", "title": None, "default_metadata": {"stage": "first"}},
        )
    )
    deleted = ok(tool(server, alice, "chitty_session_template_delete", {"name": "first-meeting"}))

    assert created["name"] == "intake"
    assert created["title"] == "Client intake"
    assert created["builtin"] is False
    assert created["user_id"] == alice.user_id
    assert created["variables"] == [
        {"name": "client", "description": "Who the client is."},
        {"name": "matter", "description": None},
    ]
    assert created["default_metadata"] == {"case_type": "intake", "stage": "new"}
    assert listed[("intake", False)] == created
    assert (updated["name"], updated["title"], updated["default_metadata"]) == (
        "first-meeting",
        "first-meeting",
        {"stage": "first"},
    )
    assert updated["system_prompt"] == INTAKE["system_prompt"]
    assert deleted == {"name": "first-meeting", "deleted": True}
    assert ("first-meeting", False) not in templates_of(server, alice)


def test_a_taken_template_name_is_a_clear_error(server, alice):
    ok(tool(server, alice, "chitty_session_template_create", INTAKE))
    again = tool(server, alice, "chitty_session_template_create", {**INTAKE, "description": "other"})
    assert again["isError"] is True
    assert "You already have a session template named 'intake'" in text_of(again)


def test_help_text_must_name_a_placeholder(server, alice):
    created = tool(
        server, alice, "chitty_session_template_create", {**INTAKE, "variable_descriptions": {"clinet": "typo"}}
    )
    assert created["isError"] is True
    assert "clinet is not a placeholder" in text_of(created)
    ok(tool(server, alice, "chitty_session_template_create", INTAKE))
    orphaning = tool(
        server, alice, "chitty_session_template_update", {"name": "intake", "system_prompt": "About {{matter}}."}
    )
    assert orphaning["isError"] is True
    assert "client is not a placeholder" in text_of(orphaning)
    assert templates_of(server, alice)[("intake", False)]["system_prompt"] == INTAKE["system_prompt"]


@pytest.mark.parametrize(
    ("name", "arguments"),
    [
        ("chitty_session_template_update", {"name": "intake", "description": "hijacked"}),
        ("chitty_session_template_delete", {"name": "intake"}),
        ("chitty_chat_session_create", {"session_name": "s", "template": "intake"}),
    ],
)
def test_another_users_template_answers_like_a_missing_one(server, alice, bob, name, arguments):
    ok(tool(server, alice, "chitty_session_template_create", INTAKE))
    on_theirs = tool(server, bob, name, arguments)
    missing = "template" if "template" in arguments else "name"
    on_missing = tool(server, bob, name, {**arguments, missing: "nothing"})
    assert on_theirs["isError"] is True
    assert text_of(on_theirs).replace("'intake'", "NAME") == text_of(on_missing).replace("'nothing'", "NAME")
    assert templates_of(server, alice)[("intake", False)]["description"] == INTAKE["description"]
    assert ("intake", False) not in templates_of(server, bob)


def test_a_template_may_name_only_the_users_own_model_config(server, alice, bob):
    ok(tool(server, alice, "chitty_model_config_create", {"name": "precise", "model": "gpt-4.1"}))
    mine = ok(tool(server, alice, "chitty_session_template_create", {**INTAKE, "model_config": "precise"}))
    theirs = tool(server, bob, "chitty_session_template_create", {**INTAKE, "model_config": "precise"})
    assert mine["model_config"] == "precise"
    assert theirs["isError"] is True
    assert "No model config 'precise'" in text_of(theirs)
    ok(tool(server, bob, "chitty_session_template_create", INTAKE))
    relinked = tool(server, bob, "chitty_session_template_update", {"name": "intake", "model_config": "precise"})
    assert relinked["isError"] is True
    assert "No model config 'precise'" in text_of(relinked)


# Sessions from templates


def test_a_session_from_a_template_sends_the_rendered_system_prompt_upstream(server, fake_openai, alice):
    session = ok(
        tool(
            server,
            alice,
            "chitty_chat_session_create",
            {
                "session_name": "Smith v. Jones",
                "template": "case-analysis",
                "variables": {"case_name": "Smith v. Jones", "jurisdiction": "N.D. Cal.", "client_role": "defendant"},
                "metadata": {"case_id": "case456"},
            },
        )
    )
    ok(
        tool(
            server,
            alice,
            "chatgpt_complete",
            {"messages": [{"role": "user", "content": "Where are we weak?"}], "session_id": session["session_id"]},
        )
    )
    system = fake_openai.chat_requests[-1].messages[0]
    assert system["role"] == "system"
    assert system["content"] == session["system_prompt"]
    assert "represents the defendant in Smith v. Jones, a matter in N.D. Cal." in system["content"]
    assert "{{" not in system["content"]
    assert session["metadata"] == {"workflow": "case-analysis", "case_id": "case456"}


def test_a_session_from_a_template_takes_its_metadata_and_model_config(server, fake_openai, alice):
    ok(tool(server, alice, "chitty_model_config_create", {"name": "precise", "model": "gpt-4.1", "temperature": 0.2}))
    ok(tool(server, alice, "chitty_model_config_create", {"name": "quick", "model": "gpt-4o-mini"}))
    ok(tool(server, alice, "chitty_session_template_create", {**INTAKE, "model_config": "precise"}))
    variables = {"client": "Ms. Chen", "matter": "a lease dispute"}

    session = ok(
        tool(
            server,
            alice,
            "chitty_chat_session_create",
            {"session_name": "s", "template": "intake", "variables": variables, "metadata": {"stage": "second"}},
        )
    )
    chosen = ok(
        tool(
            server,
            alice,
            "chitty_chat_session_create",
            {"session_name": "t", "template": "intake", "variables": variables, "model_config": "quick"},
        )
    )

    assert session["system_prompt"] == (
        "You interview Ms. Chen about a lease dispute. Ask Ms. Chen one question at a time."
    )
    assert session["metadata"] == {"case_type": "intake", "stage": "second"}
    assert session["model_config"] == "precise"
    assert chosen["model_config"] == "quick"
    ok(
        tool(
            server,
            alice,
            "chatgpt_complete",
            {"messages": [{"role": "user", "content": "hi"}], "session_id": session["session_id"]},
        )
    )
    sent = fake_openai.chat_requests[-1]
    assert (sent.model, sent.json["temperature"]) == ("gpt-4.1", 0.2)


@pytest.mark.parametrize("variables", [{"client": "Ms. Chen"}, {"client": "Ms. Chen", "matter": "  "}])
def test_a_missing_variable_is_a_clear_error_naming_it(server, alice, variables):
    ok(tool(server, alice, "chitty_session_template_create", INTAKE))
    result = tool(
        server, alice, "chitty_chat_session_create", {"session_name": "s", "template": "intake", "variables": variables}
    )
    assert result["isError"] is True
    assert text_of(result) == "Template 'intake' needs a value for matter (it takes: client, matter)."
    assert error_details(result)["missing"] == ["matter"]
    assert ok(tool(server, alice, "chitty_chat_session_list", {}))["sessions"] == []


def test_an_unknown_variable_is_a_clear_error_naming_it(server, alice):
    variables = {"jurisdiction": "Delaware", "practice_area": "corporate", "jurisdicton": "typo"}
    result = tool(
        server,
        alice,
        "chitty_chat_session_create",
        {"session_name": "s", "template": "legal-research", "variables": variables},
    )
    assert result["isError"] is True
    assert "has no variable jurisdicton" in text_of(result)
    assert ok(tool(server, alice, "chitty_chat_session_list", {}))["sessions"] == []


def test_a_template_and_an_initial_system_prompt_do_not_mix(server, alice):
    both = tool(
        server,
        alice,
        "chitty_chat_session_create",
        {"session_name": "s", "template": "fact-checking", "initial_system_prompt": "Mine."},
    )
    variables_alone = tool(
        server, alice, "chitty_chat_session_create", {"session_name": "s", "variables": {"subject": "x"}}
    )
    assert both["isError"] is True
    assert "either template or initial_system_prompt" in text_of(both)
    assert variables_alone["isError"] is True
    assert "name the template too" in text_of(variables_alone)


def test_a_users_template_shadows_the_built_in_of_its_name(server, alice, bob):
    mine = {"name": "fact-checking", "description": "Mine.", "system_prompt": "Check {{subject}} briefly."}
    ok(tool(server, alice, "chitty_session_template_create", mine))
    listed = templates_of(server, alice)
    session = ok(
        tool(
            server,
            alice,
            "chitty_chat_session_create",
            {"session_name": "s", "template": "fact-checking", "variables": {"subject": "the memo"}},
        )
    )
    for_bob = ok(
        tool(
            server,
            bob,
            "chitty_chat_session_create",
            {
                "session_name": "s",
                "template": "fact-checking",
                "variables": {"subject": "the memo", "audience": "the team"},
            },
        )
    )

    assert listed[("fact-checking", True)]["shadowed"] is True
    assert listed[("fact-checking", False)]["shadowed"] is False
    assert session["system_prompt"] == "Check the memo briefly."
    assert for_bob["system_prompt"].startswith("You are a rigorous fact-checker.")
    ok(tool(server, alice, "chitty_session_template_delete", {"name": "fact-checking"}))
    assert templates_of(server, alice)[("fact-checking", True)]["shadowed"] is False


# Templates as MCP prompts


@pytest.mark.parametrize("mode", CLIENT_MODES)
def test_prompts_list_shows_the_built_ins_and_the_callers_own_templates(server, alice, bob, mode):
    ok(tool(server, alice, "chitty_session_template_create", INTAKE))
    ok(tool(server, bob, "chitty_session_template_create", {**INTAKE, "name": "bobs-intake"}))

    async def work(client):
        return await client.list_prompts()

    prompts = {prompt.name: prompt for prompt in with_client(server.mcp_url, alice.token, mode, work).prompts}
    assert set(prompts) == {*BUILT_INS, "intake"}
    intake = prompts["intake"]
    assert (intake.title, intake.description) == ("Client intake", "First conversation with a new client.")
    assert [(a.name, a.description, a.required) for a in intake.arguments] == [
        ("client", "Who the client is.", True),
        ("matter", None, True),
    ]
    legal = prompts["legal-research"]
    assert legal.title == "Legal research"
    assert {argument.name for argument in legal.arguments} == BUILT_INS["legal-research"]
    assert all(argument.required and argument.description for argument in legal.arguments)


@pytest.mark.parametrize("mode", CLIENT_MODES)
def test_prompts_get_renders_the_template_as_a_user_message(server, alice, mode):
    async def work(client):
        return await client.get_prompt(
            "contract-review",
            {"contract_type": "commercial lease", "party_represented": "the tenant", "jurisdiction": "New York"},
        )

    prompt = with_client(server.mcp_url, alice.token, mode, work)
    assert prompt.description.startswith("Review a contract clause by clause")
    [message] = prompt.messages
    assert message.role == "user"
    assert message.content.type == "text"
    assert message.content.text.startswith(
        "You are an experienced contract reviewer assisting counsel for the tenant in reviewing a commercial lease "
        "governed by the law of New York."
    )
    assert "{{" not in message.content.text


@pytest.mark.parametrize("mode", CLIENT_MODES)
def test_an_unknown_prompt_is_invalid_params(server, alice, bob, mode):
    ok(tool(server, alice, "chitty_session_template_create", INTAKE))

    async def work(client):
        errors = []
        for name in ("no-such-template", "intake"):
            with pytest.raises(MCPError) as raised:
                await client.get_prompt(name, {"client": "c", "matter": "m"})
            errors.append(raised.value)
        return errors

    missing, theirs = with_client(server.mcp_url, bob.token, mode, work)
    assert missing.code == theirs.code == INVALID_PARAMS
    assert missing.message == "Unknown prompt: no-such-template"
    assert theirs.message == "Unknown prompt: intake"


@pytest.mark.parametrize("mode", CLIENT_MODES)
def test_a_missing_prompt_argument_is_invalid_params_naming_it(server, alice, mode):
    async def work(client):
        with pytest.raises(MCPError) as raised:
            await client.get_prompt("legal-research", {"jurisdiction": "Delaware"})
        return raised.value

    error = with_client(server.mcp_url, alice.token, mode, work)
    assert error.code == INVALID_PARAMS
    assert "needs a value for practice_area" in error.message
    assert error.data == {"missing": ["practice_area"]}


def test_prompts_in_2026_are_complete_private_and_never_cached(server, alice):
    listed = post(
        server.mcp_url,
        modern_request("prompts/list"),
        token=alice.token,
        headers=modern_headers("prompts/list"),
    ).json()["result"]
    params = {"name": "fact-checking", "arguments": {"subject": "a claim", "audience": "readers"}}
    got = post(
        server.mcp_url,
        modern_request("prompts/get", params),
        token=alice.token,
        headers=modern_headers("prompts/get", "fact-checking"),
    ).json()["result"]
    assert (listed["resultType"], listed["ttlMs"], listed["cacheScope"]) == ("complete", 0, "private")
    assert got["resultType"] == "complete"
    assert got["messages"][0]["role"] == "user"


def test_a_2026_unknown_prompt_answers_400_with_invalid_params(server, alice):
    response = post(
        server.mcp_url,
        modern_request("prompts/get", {"name": "nope"}),
        token=alice.token,
        headers=modern_headers("prompts/get", "nope"),
    )
    assert response.status_code == 400
    assert response.json()["error"] == {
        "code": INVALID_PARAMS,
        "message": "Unknown prompt: nope",
        "data": {"name": "nope"},
    }


def test_a_prompts_get_whose_mcp_name_differs_is_a_header_mismatch(server, alice):
    response = post(
        server.mcp_url,
        modern_request("prompts/get", {"name": "fact-checking"}),
        token=alice.token,
        headers=modern_headers("prompts/get", "legal-research"),
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == -32020


@pytest.mark.parametrize("arguments", [["a"], {"subject": 5}, "subject"])
def test_prompt_arguments_must_be_an_object_of_strings(server, alice, arguments):
    answer = rpc(server, alice, "prompts/get", {"name": "fact-checking", "arguments": arguments})
    assert answer["error"]["code"] == INVALID_PARAMS


def test_the_server_declares_prompts_in_both_eras(server, alice):
    initialized = rpc(
        server,
        alice,
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "tests", "version": "1"}},
    )
    discovered = post(
        server.mcp_url,
        modern_request("server/discover"),
        token=alice.token,
        headers=modern_headers("server/discover"),
    ).json()
    assert initialized["result"]["capabilities"]["prompts"] == {"listChanged": False}
    assert discovered["result"]["capabilities"]["prompts"] == {"listChanged": False}


def bare_server_answer(message, headers=None):
    server = McpServer(
        registry=Registry(),
        authenticate=lambda authorization, defer: "tester",
        info=ServerInfo(name="bare", title="Bare", version="0", instructions="Nothing."),
        allowed_hosts=("127.0.0.1",),
        allowed_origins=(),
        logger=logging.getLogger("tests.bare"),
    )
    sent = {
        "host": "127.0.0.1",
        "authorization": "Bearer x",
        "content-type": "application/json",
        "accept": "application/json",
        **(headers or {}),
    }
    response = server.handle(HttpRequest(method="POST", headers=sent, body=json.dumps(message).encode()))
    return response.status, json.loads(response.body)


def test_a_server_without_prompts_neither_declares_nor_answers_them():
    _, initialized = bare_server_answer(
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25"}}
    )
    status, listed = bare_server_answer(
        modern_request("prompts/list"),
        {name.lower(): value for name, value in modern_headers("prompts/list", version=MODERN).items()},
    )
    assert "prompts" not in initialized["result"]["capabilities"]
    assert (status, listed["error"]["code"]) == (404, -32601)

"""The official TypeScript clients read every answer: every tool, every error path, progress, resources, prompts.

The TypeScript SDK (the base of Claude Code, Cursor, VS Code and the Inspector) checks each tool result
against the tool's output schema, error results included, and throws where the Python SDK does not.
Each plan lists the tools first, as those clients do, so that the client holds the output schemas.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from devtools.fake_openai import rate_limited, server_error
from tests.clients import post
from tests.conftest import SERVER_OPENAI_KEY, Server, User, make_grant
from tests.ts_client import SDKS, run_plan

VERSIONS = {"v1": "2025-11-25", "v2": "2026-07-28"}
HI = [{"role": "user", "content": "hi"}]


def call(server: Server, user: User, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    response = post(server.mcp_url, body, token=user.token)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["isError"] is False, result
    return result["structuredContent"]


def text_of(result: dict[str, Any]) -> str:
    return " ".join(block.get("text", "") for block in result["content"])


def tool_step(name: str, arguments: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"op": "callTool", "name": name, "arguments": arguments, **extra}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("sdk", SDKS)
def test_every_tool_answers_a_typescript_client(server, fake_openai, alice, admin, sdk, database_url):
    session_id = call(server, alice, "chitty_chat_session_create", {"session_name": "ts"})["session_id"]
    doomed = call(server, alice, "chitty_chat_session_create", {"session_name": "doomed"})["session_id"]
    turn_id = call(server, alice, "chatgpt_complete", {"messages": HI})["turn_id"]
    job_id = call(server, alice, "chatgpt_complete", {"messages": HI, "background": True})["job_id"]
    grant_id = make_grant(database_url, alice.user_id)
    config, gone_config = unique("cfg"), unique("cfg")
    call(server, alice, "chitty_model_config_create", {"name": gone_config, "model": "gpt-4o-mini"})
    template, gone_template = unique("tpl"), unique("tpl")
    call(
        server,
        alice,
        "chitty_session_template_create",
        {"name": gone_template, "description": "d", "system_prompt": "p"},
    )
    steps = [
        {"op": "listTools"},
        tool_step("chatgpt_complete", {"messages": HI}),
        tool_step("chatgpt_stream", {"messages": HI, "session_id": session_id}),
        tool_step("chatgpt_turn_get", {"turn_id": turn_id}),
        tool_step("chatgpt_complete", {"messages": HI, "background": True}),
        tool_step("chatgpt_job_get", {"job_id": job_id, "wait_seconds": 1}),
        tool_step("chatgpt_job_list", {}),
        tool_step("chatgpt_job_cancel", {"job_id": job_id}),
        tool_step("chitty_oauth_grants_list", {"include_revoked": True}),
        tool_step("chitty_oauth_grants_revoke", {"grant_id": grant_id}),
        tool_step("chitty_chat_session_create", {"session_name": "made by ts", "metadata": {"case_id": "C-1"}}),
        tool_step("chitty_chat_session_list", {}),
        tool_step("chitty_chat_session_get", {"session_id": session_id}),
        tool_step("chitty_chat_session_messages", {"session_id": session_id, "limit": 10}),
        tool_step("chitty_chat_session_update", {"session_id": session_id, "session_name": "renamed"}),
        tool_step("chitty_chat_session_delete", {"session_id": doomed}),
        tool_step("chitty_model_config_create", {"name": config, "model": "gpt-4o-mini", "temperature": 0.2}),
        tool_step("chitty_model_config_list", {}),
        tool_step("chitty_model_config_update", {"name": config, "max_tokens": 100}),
        tool_step("chitty_model_config_delete", {"name": gone_config}),
        tool_step("chitty_models_list", {}),
        tool_step(
            "chitty_session_template_create",
            {"name": template, "description": "for {{who}}", "system_prompt": "You help {{who}}."},
        ),
        tool_step("chitty_session_template_list", {}),
        tool_step("chitty_session_template_update", {"name": template, "title": "Helper"}),
        tool_step("chitty_session_template_delete", {"name": gone_template}),
        tool_step("chitty_api_key_set", {"api_key": "sk-ts-" + uuid.uuid4().hex}),
        tool_step("chitty_api_key_list", {}),
        tool_step("chitty_usage_analytics", {"start_date": "2026-01-01", "end_date": "2026-01-31"}),
        tool_step("chitty_usage_limits_get", {}),
    ]
    answer = run_plan(sdk, server.mcp_url, alice.token, steps)
    admin_answer = run_plan(
        sdk,
        server.mcp_url,
        admin.token,
        [
            {"op": "listTools"},
            tool_step("chitty_usage_limits_set", {"user_id": alice.user_id, "requests_per_minute": 500}),
        ],
    )

    assert answer["protocolVersion"] == VERSIONS[sdk]
    listed = {tool["name"] for tool in answer["results"][0]["ok"]["tools"]}
    called = {step["name"] for step in steps[1:]} | {"chitty_usage_limits_set", "chitty_api_key_revoke"}
    assert called == listed
    for step, result in zip([*steps[1:], None], answer["results"][1:] + admin_answer["results"][1:], strict=True):
        assert "ok" in result, (step, result)
        assert result["ok"]["isError"] is False, (step, text_of(result["ok"]))
        assert "structuredContent" in result["ok"], step
    keys = answer["results"][steps.index(tool_step("chitty_api_key_list", {}))]["ok"]["structuredContent"]
    revoked = run_plan(
        sdk,
        server.mcp_url,
        alice.token,
        [{"op": "listTools"}, tool_step("chitty_api_key_revoke", {"key_id": keys["keys"][0]["key_id"]})],
    )
    assert revoked["results"][1]["ok"]["isError"] is False


@pytest.mark.parametrize("sdk", SDKS)
def test_error_results_reach_a_typescript_client_with_their_message(server, fake_openai, make_user, admin, alice, sdk):
    limited = make_user(prefix="limited")
    call(server, admin, "chitty_usage_limits_set", {"user_id": limited.user_id, "requests_per_minute": 1})
    call(server, limited, "chatgpt_complete", {"messages": HI})
    template = unique("tpl")
    call(
        server,
        alice,
        "chitty_session_template_create",
        {"name": template, "description": "d", "system_prompt": "You help {{who}} in {{where}}."},
    )
    cases = [
        (alice, tool_step("chatgpt_complete", {}), "Invalid arguments for chatgpt_complete: messages"),
        (alice, tool_step("chatgpt_complete", {"messages": HI, "temperature": 7}), "temperature"),
        (limited, tool_step("chatgpt_complete", {"messages": HI}), "Requests-per-minute limit reached"),
        (alice, tool_step("chatgpt_complete", {"messages": HI}, fault="429"), "rate limiting"),
        (alice, tool_step("chatgpt_complete", {"messages": HI}, fault="500"), "OpenAI failed (500)"),
        (alice, tool_step("chatgpt_complete", {"messages": HI}, fault="401"), "OpenAI rejected the API key"),
        (
            alice,
            tool_step("chitty_chat_session_create", {"session_name": "t", "template": template, "variables": {}}),
            "who",
        ),
        (alice, tool_step("chitty_chat_session_get", {"session_id": str(uuid.uuid4())}), "No session"),
        (alice, tool_step("chitty_api_key_revoke", {"key_id": str(uuid.uuid4())}), "key"),
        (alice, tool_step("chitty_usage_limits_set", {"user_id": alice.user_id, "requests_per_minute": 5}), "admin"),
        (alice, tool_step("chatgpt_turn_get", {"turn_id": str(uuid.uuid4())}), "No turn"),
    ]
    for user, step, said in cases:
        fault = step.pop("fault", None)
        if fault == "429":
            fake_openai.script(rate_limited(retry_after=120))
        elif fault == "500":
            fake_openai.script(*[server_error(500)] * 5)
        elif fault == "401":
            fake_openai.rejected_keys.add(SERVER_OPENAI_KEY)
        try:
            answer = run_plan(sdk, server.mcp_url, user.token, [{"op": "listTools"}, step])
        finally:
            fake_openai.rejected_keys.discard(SERVER_OPENAI_KEY)
            fake_openai.reset()
        result = answer["results"][1]
        assert "ok" in result, (step, result)
        assert result["ok"]["isError"] is True, (step, result)
        assert said in text_of(result["ok"]), (step, text_of(result["ok"]))


@pytest.mark.parametrize("sdk", SDKS)
def test_progress_resources_and_prompts_reach_a_typescript_client(server, fake_openai, alice, sdk):
    session_id = call(server, alice, "chitty_chat_session_create", {"session_name": "watched"})["session_id"]
    call(server, alice, "chatgpt_complete", {"messages": HI, "session_id": session_id})
    steps = [
        {"op": "listTools"},
        tool_step("chatgpt_stream", {"messages": [{"role": "user", "content": "one two three"}]}, progress=True),
        {"op": "listResources"},
        {"op": "listResourceTemplates"},
        {"op": "readResource", "uri": f"chitty://sessions/{session_id}"},
        {"op": "readResource", "uri": f"chitty://sessions/{uuid.uuid4()}"},
        {"op": "listPrompts"},
        {
            "op": "getPrompt",
            "name": "legal-research",
            "arguments": {"jurisdiction": "Illinois", "practice_area": "tax"},
        },
        {"op": "ping"},
    ]
    answer = run_plan(sdk, server.mcp_url, alice.token, steps)
    results = answer["results"]

    streamed = results[1]["ok"]
    assert streamed["isError"] is False
    assert streamed["structuredContent"]["content"] == "echo: one two three"
    if sdk == "v1":
        # The 2.4 client pinned to 2026-07-28 sends no progressToken with its request, so it is sent no progress.
        assert [note["message"] for note in streamed["progress"]] == ["echo:", " one", " two", " three"]
    assert f"chitty://sessions/{session_id}" in {resource["uri"] for resource in results[2]["ok"]["resources"]}
    assert results[3]["ok"]["resourceTemplates"]
    assert "hi" in results[4]["ok"]["contents"][0]["text"]
    assert "error" in results[5]
    assert "legal-research" in {prompt["name"] for prompt in results[6]["ok"]["prompts"]}
    assert "Illinois" in results[7]["ok"]["messages"][0]["content"]["text"]
    if sdk == "v1":  # ping belongs to the handshake era; 2026-07-28 has no ping
        assert "ok" in results[8]


@pytest.mark.parametrize("sdk", SDKS)
def test_every_tool_refuses_arguments_it_does_not_take_with_a_readable_error(server, alice, sdk):
    listed = run_plan(sdk, server.mcp_url, alice.token, [{"op": "listTools"}])["results"][0]["ok"]["tools"]
    steps = [{"op": "listTools"}] + [tool_step(tool["name"], {"no_such_argument": 1}) for tool in listed]
    answer = run_plan(sdk, server.mcp_url, alice.token, steps)

    for step, result in zip(steps[1:], answer["results"][1:], strict=True):
        assert "ok" in result, (step, result)
        assert result["ok"]["isError"] is True, step
        assert text_of(result["ok"]).startswith(f"Invalid arguments for {step['name']}"), text_of(result["ok"])

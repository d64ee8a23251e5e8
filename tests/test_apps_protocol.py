"""MCP Apps on the wire, without a browser: the extension in both protocol eras, the tools naming their views,
the views as resources, and chitty_chat_session_messages, which the session view reads. The views rendered in
a real host are tests/test_apps.py."""

from __future__ import annotations

import uuid

import pytest

from tests.clients import post
from tests.test_chat import tool
from tests.test_protocol import initialize, legacy_request, modern_post, result_of

UI = "io.modelcontextprotocol/ui"
MIME = "text/html;profile=mcp-app"
VIEWS = {
    "chitty_usage_analytics": "ui://chitty/usage.html",
    "chitty_usage_limits_get": "ui://chitty/usage.html",
    "chitty_chat_session_get": "ui://chitty/session.html",
    "chitty_chat_session_messages": "ui://chitty/session.html",
}


def test_the_extension_is_offered_in_both_eras(server, alice):
    handshake = result_of(post(server.mcp_url, initialize("2025-11-25"), token=alice.token))
    discovered = result_of(modern_post(server, alice, "server/discover"))
    assert handshake["capabilities"]["extensions"] == {UI: {}}
    assert UI in discovered["capabilities"]["extensions"]
    assert "io.modelcontextprotocol/tasks" in discovered["capabilities"]["extensions"]


def test_each_viewed_tool_names_its_view_and_the_others_none(server, alice):
    tools = {entry["name"]: entry for entry in result_of(modern_post(server, alice, "tools/list"))["tools"]}
    for name, uri in VIEWS.items():
        assert tools[name]["_meta"] == {"ui": {"resourceUri": uri}, "ui/resourceUri": uri}
    assert "_meta" not in tools["chatgpt_complete"]


@pytest.mark.parametrize("uri", sorted(set(VIEWS.values())))
def test_a_view_is_a_self_contained_html_resource(server, alice, uri):
    listed = result_of(post(server.mcp_url, legacy_request("resources/list"), token=alice.token))["resources"]
    assert all(not resource["uri"].startswith("ui://") for resource in listed)  # found through the tools' _meta
    (content,) = result_of(post(server.mcp_url, legacy_request("resources/read", {"uri": uri}), token=alice.token))[
        "contents"
    ]
    assert content["mimeType"] == MIME
    assert content["_meta"] == {"ui": {"prefersBorder": True}}
    assert "csp" not in content["_meta"]["ui"]  # the host's default: nothing outside
    html = content["text"]
    assert html.lstrip().lower().startswith("<!doctype html>")
    for outside in ('src="http', "src='http", 'href="http', "@import", "<link"):
        assert outside not in html


def test_the_views_are_not_resource_templates_and_an_unknown_view_is_not_found(server, alice):
    templates = result_of(post(server.mcp_url, legacy_request("resources/templates/list"), token=alice.token))
    assert all(not entry["uriTemplate"].startswith("ui://") for entry in templates["resourceTemplates"])
    missing = post(
        server.mcp_url, legacy_request("resources/read", {"uri": "ui://chitty/nothing.html"}), token=alice.token
    )
    assert missing.json()["error"]["code"] == -32002


def test_a_sessions_messages_come_with_their_tokens_and_cost_a_page_at_a_time(server, alice, fake_openai):
    session = tool(server, alice, "chitty_chat_session_create", {"session_name": "view me"})["structuredContent"]
    for text in ("one", "two", "three"):
        tool(
            server,
            alice,
            "chatgpt_complete",
            {"session_id": session["session_id"], "messages": [{"role": "user", "content": text}]},
        )
    first = tool(server, alice, "chitty_chat_session_messages", {"session_id": session["session_id"], "limit": 4})
    page = first["structuredContent"]
    assert [message["role"] for message in page["messages"]] == ["user", "assistant", "user", "assistant"]
    assert page["messages"][0]["text"] == "one"
    replies = [message for message in page["messages"] if message["role"] == "assistant"]
    assert all(message["completion_tokens"] > 0 and message["cost_usd"] > 0 for message in replies)
    assert page["session"]["message_count"] == 6
    rest = tool(
        server,
        alice,
        "chitty_chat_session_messages",
        {"session_id": session["session_id"], "from_seq": page["next_from_seq"]},
    )["structuredContent"]
    assert [message["seq"] for message in rest["messages"]] == [5, 6]
    assert rest["next_from_seq"] is None
    everything = page["messages"] + rest["messages"]
    assert sum(message["cost_usd"] or 0 for message in everything) == pytest.approx(page["session"]["total_cost_usd"])


def test_another_users_session_messages_are_not_found(server, alice, bob):
    session = tool(server, alice, "chitty_chat_session_create", {"session_name": "mine"})["structuredContent"]
    for session_id in (session["session_id"], str(uuid.uuid4())):
        result = tool(server, bob, "chitty_chat_session_messages", {"session_id": session_id})
        assert result["isError"] is True
        assert "No session" in result["content"][0]["text"]

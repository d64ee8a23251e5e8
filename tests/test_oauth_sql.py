"""The OAuth 2.1 grant functions in SQL: codes burnt once, PKCE checked, refresh tokens rotated, reuse and
replay revoking the whole grant, revocation; and authenticate_token telling an OAuth token's scope and resource."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import pg8000.native
import pytest

from chalicelib.db import connection

CLIENT = "client-" + "a" * 16
REDIRECT = "http://127.0.0.1:9/cb"
RESOURCE = "https://chitty.example/api/mcp"
CHALLENGE = "C" * 43


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def conn(database_url: str) -> Iterator[pg8000.native.Connection]:
    with connection(database_url) as raw:
        yield raw


@pytest.fixture
def user(conn) -> str:
    user_id = f"oauth-{uuid.uuid4().hex[:8]}"
    conn.run("INSERT INTO users (id, display_name) VALUES (:u, :u)", u=user_id)
    conn.run(
        "INSERT INTO oauth_clients (client_id, kind, client_name, redirect_uris) "
        "VALUES (:c, 'registered', 'Test', ARRAY[:r]) ON CONFLICT DO NOTHING",
        c=CLIENT,
        r=REDIRECT,
    )
    return user_id


def new_code(conn, user: str) -> str:
    code = uuid.uuid4().hex
    conn.run(
        "INSERT INTO oauth_codes (code_hash, user_id, client_id, redirect_uri, scope, resource, code_challenge, "
        "expires_at) VALUES (:h, :u, :c, :r, 'mcp', :res, :ch, now() + interval '60 seconds')",
        h=digest(code),
        u=user,
        c=CLIENT,
        r=REDIRECT,
        res=RESOURCE,
        ch=CHALLENGE,
    )
    return code


def redeem(conn, code: str, challenge: str = CHALLENGE, resource: str | None = None) -> tuple[str | None, str, str]:
    access, refresh = uuid.uuid4().hex, uuid.uuid4().hex
    ((error, _, _, _),) = conn.run(
        "SELECT * FROM oauth_redeem_code(:h, :c, :r, :ch, :res, :a, :f, '1 hour', '30 days')",
        h=digest(code),
        c=CLIENT,
        r=REDIRECT,
        ch=challenge,
        res=resource,
        a=digest(access),
        f=digest(refresh),
    )
    return error, access, refresh


def refresh(conn, token: str) -> tuple[str | None, str, str]:
    access, new_refresh = uuid.uuid4().hex, uuid.uuid4().hex
    ((error, _, _, _),) = conn.run(
        "SELECT * FROM oauth_refresh(:t, :c, NULL, :a, :f, '1 hour', '30 days')",
        t=digest(token),
        c=CLIENT,
        a=digest(access),
        f=digest(new_refresh),
    )
    return error, access, new_refresh


def live(conn, token: str) -> list[list[object]]:
    return conn.run("SELECT user_id, scope, resource FROM authenticate_token(:h)", h=digest(token))


def test_a_wrong_verifier_burns_the_code(conn, user):
    code = new_code(conn, user)
    assert redeem(conn, code, challenge="X" * 43)[0] == "invalid_grant"
    assert redeem(conn, code)[0] == "invalid_grant"


def test_a_redeemed_code_gives_a_token_bound_to_its_resource(conn, user):
    error, access, _ = redeem(conn, new_code(conn, user), resource=RESOURCE)
    assert error is None
    assert live(conn, access) == [[user, "mcp", RESOURCE]]


def test_a_code_for_another_resource_is_refused(conn, user):
    assert redeem(conn, new_code(conn, user), resource="https://elsewhere.example/mcp")[0] == "invalid_grant"


def test_refresh_rotates_and_a_reused_refresh_token_revokes_the_grant(conn, user):
    _, first_access, first_refresh = redeem(conn, new_code(conn, user))
    error, second_access, second_refresh = refresh(conn, first_refresh)
    assert error is None
    assert live(conn, second_access)
    age_rotation(conn, first_refresh)
    assert refresh(conn, first_refresh)[0] == "invalid_grant"  # reused: stolen, or replayed
    assert live(conn, first_access) == []
    assert live(conn, second_access) == []
    assert refresh(conn, second_refresh)[0] == "invalid_grant"


def age_rotation(conn, token: str) -> None:
    """As if the token had been exchanged a minute ago: past the grace for concurrent refreshes."""
    conn.run(
        "UPDATE oauth_refresh_tokens SET rotated_at = now() - interval '1 minute' WHERE token_hash = :h",
        h=digest(token),
    )


def test_a_refresh_token_reused_at_once_is_refused_but_the_grant_stands(conn, user):
    """Two concurrent refreshes of one client (two tabs): the second is refused, nothing is revoked."""
    _, _, first_refresh = redeem(conn, new_code(conn, user))
    _, second_access, second_refresh = refresh(conn, first_refresh)
    assert refresh(conn, first_refresh)[0] == "invalid_grant"
    assert live(conn, second_access)
    assert refresh(conn, second_refresh)[0] is None


def test_a_replayed_code_revokes_what_it_produced(conn, user):
    code = new_code(conn, user)
    _, access, _ = redeem(conn, code)
    assert live(conn, access)
    assert redeem(conn, code)[0] == "invalid_grant"
    assert live(conn, access) == []


def test_revocation_stops_the_grant_and_an_unknown_token_is_no_error(conn, user):
    _, access, refresh_token = redeem(conn, new_code(conn, user))
    assert conn.run("SELECT oauth_revoke(:h, :c)", h=digest(refresh_token), c=CLIENT) == [[True]]
    assert conn.run("SELECT oauth_revoke(:h, :c)", h=digest("unknown"), c=CLIENT) == [[False]]
    assert live(conn, access) == []


def test_a_personal_token_has_no_scope_and_no_resource(conn, user):
    token = uuid.uuid4().hex
    conn.run("INSERT INTO access_tokens (user_id, token_hash, label) VALUES (:u, :h, 'cli')", u=user, h=digest(token))
    assert live(conn, token) == [[user, None, None]]


def test_the_daily_purge_removes_what_nothing_can_use_and_keeps_what_is_live(conn, user, db):
    _, live_access, live_refresh = redeem(conn, new_code(conn, user))
    _, dead_access, _ = redeem(conn, new_code(conn, user))
    conn.run(
        "UPDATE oauth_grants SET revoked_at = now() - interval '31 days' "
        "WHERE id = (SELECT grant_id FROM access_tokens WHERE token_hash = :h)",
        h=digest(dead_access),
    )
    old_code, fresh_code = new_code(conn, user), new_code(conn, user)
    conn.run("UPDATE oauth_codes SET expires_at = now() - interval '2 days' WHERE code_hash = :h", h=digest(old_code))
    stale_client = "stale-" + uuid.uuid4().hex
    conn.run(
        "INSERT INTO oauth_clients (client_id, kind, client_name, redirect_uris, created_at) "
        "VALUES (:c, 'registered', 'Never used', ARRAY[:r], now() - interval '8 days')",
        c=stale_client,
        r=REDIRECT,
    )
    conn.run(
        "INSERT INTO login_attempts (login, succeeded, at) VALUES (:u, false, now() - interval '31 days'), "
        "(:u, false, now())",
        u=user,
    )

    purged = db.one("purge_sign_in_records")

    assert purged["grants"] >= 1
    assert purged["clients"] >= 1
    assert purged["records"] >= 2
    assert live(conn, live_access) == [[user, "mcp", RESOURCE]]
    assert conn.run("SELECT count(*) FROM oauth_refresh_tokens WHERE token_hash = :h", h=digest(live_refresh)) == [[1]]
    assert conn.run("SELECT count(*) FROM access_tokens WHERE token_hash = :h", h=digest(dead_access)) == [[0]]
    assert conn.run("SELECT count(*) FROM oauth_codes WHERE code_hash = :h", h=digest(old_code)) == [[0]]
    assert conn.run("SELECT count(*) FROM oauth_codes WHERE code_hash = :h", h=digest(fresh_code)) == [[1]]
    assert conn.run("SELECT count(*) FROM oauth_clients WHERE client_id = :c", c=stale_client) == [[0]]
    assert conn.run("SELECT count(*) FROM oauth_clients WHERE client_id = :c", c=CLIENT) == [[1]]
    assert conn.run("SELECT count(*) FROM login_attempts WHERE login = :u", u=user) == [[1]]


def test_a_token_stops_with_its_grant_even_if_it_was_not_revoked_itself(conn, user):
    """A refresh that committed a new token while the grant was being revoked leaves a token of a dead grant."""
    _, access, _ = redeem(conn, new_code(conn, user))
    conn.run(
        "UPDATE oauth_grants SET revoked_at = now() WHERE id = (SELECT grant_id FROM access_tokens WHERE "
        "token_hash = :h)",
        h=digest(access),
    )
    assert conn.run("SELECT revoked_at FROM access_tokens WHERE token_hash = :h", h=digest(access)) == [[None]]
    assert live(conn, access) == []

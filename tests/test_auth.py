"""Bearer-token authentication of POST /mcp: who gets in, who gets 401, and that a refused call runs nothing."""

from __future__ import annotations

import pytest

from chalicelib.db import connection
from tests.clients import modern_headers, modern_request, post, run_cli

PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
CREATE_SESSION = {
    "jsonrpc": "2.0",
    "id": 2,
    "method": "tools/call",
    "params": {"name": "chitty_chat_session_create", "arguments": {"session_name": "should not exist"}},
}


def unauthorized(response):
    """Check a 401 as a client sees it: a Bearer challenge and a JSON-RPC error body."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["jsonrpc"] == "2.0"
    assert body["id"] is None
    assert isinstance(body["error"]["code"], int)
    assert isinstance(body["error"]["message"], str)
    assert "result" not in body
    return body


def send(server, authorization, body=PING):
    headers = {} if authorization is None else {"Authorization": authorization}
    return post(server.mcp_url, body, token=None, headers=headers)


def expire(database_url, user):
    with connection(database_url) as conn:
        conn.run(
            "UPDATE access_tokens SET expires_at = now() - interval '1 minute' WHERE id = CAST(:id AS uuid)",
            id=user.token_id,
        )


def revoke(database_url, user):
    """Revoke the user's token the way an operator does: with the command line."""
    completed = run_cli("token", "revoke", user.token_id, database_url=database_url)
    assert completed.returncode == 0, completed.stderr
    assert user.token_id in completed.stdout


def sessions_of(database_url, user):
    with connection(database_url) as conn:
        return conn.run("SELECT count(*) FROM chat_sessions WHERE user_id = :user_id", user_id=user.user_id)[0][0]


def last_used_at(database_url, user):
    with connection(database_url) as conn:
        return conn.run("SELECT last_used_at FROM access_tokens WHERE id = CAST(:id AS uuid)", id=user.token_id)[0][0]


def test_a_request_without_authorization_is_unauthorized(server):
    unauthorized(send(server, None))


@pytest.mark.parametrize("authorization", ["Basic xyz", "Bearer", "Token abc", "chitty_abc"])
def test_a_malformed_authorization_is_unauthorized(server, authorization):
    unauthorized(send(server, authorization))


def test_an_unknown_token_is_unauthorized(server):
    unauthorized(send(server, "Bearer chitty_this-token-was-never-issued-by-anyone-at-all"))


def test_a_basic_credential_carrying_a_valid_token_is_unauthorized(server, alice):
    unauthorized(send(server, f"Basic {alice.token}"))


def test_an_expired_token_is_unauthorized(server, make_user, database_url):
    user = make_user(expires_days=1)
    expire(database_url, user)
    unauthorized(send(server, f"Bearer {user.token}"))


def test_a_revoked_token_is_unauthorized(server, alice, database_url):
    revoke(database_url, alice)
    unauthorized(send(server, f"Bearer {alice.token}"))


def test_a_token_revoked_after_use_stops_working(server, alice, database_url):
    assert send(server, f"Bearer {alice.token}").status_code == 200
    revoke(database_url, alice)
    unauthorized(send(server, f"Bearer {alice.token}"))


def test_an_expired_token_runs_nothing(server, make_user, database_url):
    user = make_user(expires_days=1)
    expire(database_url, user)
    unauthorized(send(server, f"Bearer {user.token}", CREATE_SESSION))
    assert sessions_of(database_url, user) == 0


def test_a_revoked_token_runs_nothing(server, alice, database_url):
    revoke(database_url, alice)
    unauthorized(send(server, f"Bearer {alice.token}", CREATE_SESSION))
    assert sessions_of(database_url, alice) == 0


def test_a_revoked_token_runs_nothing_in_2026_either(server, alice, database_url):
    revoke(database_url, alice)
    message = modern_request("tools/call", CREATE_SESSION["params"])
    headers = {"Authorization": f"Bearer {alice.token}", **modern_headers("tools/call", "chitty_chat_session_create")}
    unauthorized(post(server.mcp_url, message, token=None, headers=headers))
    assert sessions_of(database_url, alice) == 0


def test_authentication_comes_before_reading_the_body(server):
    unauthorized(send(server, None, "this is not json"))


def test_a_valid_token_works(server, alice, database_url):
    response = send(server, f"Bearer {alice.token}", CREATE_SESSION)
    assert response.status_code == 200
    assert response.json()["result"]["isError"] is False
    assert sessions_of(database_url, alice) == 1


def test_a_token_that_has_not_expired_yet_works(server, make_user):
    user = make_user(expires_days=1)
    response = send(server, f"Bearer {user.token}")
    assert response.status_code == 200
    assert response.json()["result"] == {}


def test_the_bearer_scheme_is_case_insensitive(server, alice):
    assert send(server, f"bearer {alice.token}").status_code == 200


def test_the_token_never_appears_in_a_response(server, alice, make_user, database_url):
    expired = make_user(expires_days=1)
    expire(database_url, expired)
    unknown = "chitty_" + "x" * 43
    responses = {
        alice.token: [
            send(server, f"Bearer {alice.token}", CREATE_SESSION),
            send(server, f"Bearer {alice.token}", {"jsonrpc": "2.0", "id": 3, "method": "no/such"}),
            send(server, f"Basic {alice.token}"),
        ],
        expired.token: [send(server, f"Bearer {expired.token}", CREATE_SESSION)],
        unknown: [send(server, f"Bearer {unknown}")],
    }
    for token, answers in responses.items():
        for response in answers:
            assert token not in response.text
            assert all(token not in value for value in response.headers.values())


def test_using_a_token_records_when_it_was_last_used(server, alice, database_url):
    assert last_used_at(database_url, alice) is None
    assert send(server, f"Bearer {alice.token}").status_code == 200
    with connection(database_url) as conn:
        used, now = conn.run(
            "SELECT last_used_at, now() FROM access_tokens WHERE id = CAST(:id AS uuid)", id=alice.token_id
        )[0]
    assert used is not None
    assert used <= now


def test_a_refused_token_is_not_marked_as_used(server, alice, database_url):
    revoke(database_url, alice)
    unauthorized(send(server, f"Bearer {alice.token}"))
    assert last_used_at(database_url, alice) is None

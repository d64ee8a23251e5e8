"""Sign-in discovery: RFC 9728 and RFC 8414 metadata, the 401 challenge that points to them, tokens bound to
this server's MCP URL (RFC 8707), and the admin scope."""

from __future__ import annotations

import hashlib
import uuid

import httpx2
import pytest

from chalicelib.db import connection
from tests.clients import post
from tests.conftest import PUBLIC


def oauth_token(database_url, user_id: str, scope: str, resource: str) -> str:
    """An access token as a redeemed grant leaves it (the grant functions are tested in test_oauth_sql)."""
    from tests.conftest import make_grant

    token = uuid.uuid4().hex
    grant = make_grant(database_url, user_id, scope, resource)
    with connection(database_url) as conn:
        conn.run(
            "INSERT INTO access_tokens (user_id, token_hash, label, expires_at, grant_id, scope, resource) "
            "VALUES (:u, :h, 'oauth', now() + interval '1 hour', CAST(:g AS uuid), :s, :r)",
            u=user_id,
            h=hashlib.sha256(token.encode()).hexdigest(),
            g=grant,
            s=scope,
            r=resource,
        )
    return token


@pytest.mark.parametrize("path", ["/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"])
def test_the_protected_resource_metadata_names_the_mcp_url_and_its_issuer(signed_server, path):
    response = httpx2.get(signed_server.base_url + path)
    assert response.status_code == 200
    assert response.json() == {
        "resource": f"{PUBLIC}/mcp",
        "authorization_servers": [PUBLIC],
        "scopes_supported": ["mcp"],
        "bearer_methods_supported": ["header"],
        "resource_name": "ChittyOS ChatGPT",
    }


def test_the_authorization_server_metadata_says_what_a_client_needs(signed_server):
    document = httpx2.get(signed_server.base_url + "/.well-known/oauth-authorization-server").json()
    assert document["issuer"] == PUBLIC
    assert document["code_challenge_methods_supported"] == ["S256"]
    assert document["response_types_supported"] == ["code"]
    assert document["grant_types_supported"] == ["authorization_code", "refresh_token"]
    assert "none" in document["token_endpoint_auth_methods_supported"]
    assert document["client_id_metadata_document_supported"] is True
    assert document["authorization_response_iss_parameter_supported"] is True
    for name in ("authorization", "token", "registration", "revocation"):
        assert document[f"{name}_endpoint"].startswith(PUBLIC + "/")
    openid = httpx2.get(signed_server.base_url + "/.well-known/openid-configuration").json()
    assert openid["issuer"] == PUBLIC
    assert openid["jwks_uri"] == f"{PUBLIC}/jwks"
    assert httpx2.get(signed_server.base_url + "/jwks").json() == {"keys": []}


def test_without_a_public_url_there_is_no_sign_in_to_discover(server):
    response = httpx2.get(server.base_url + "/.well-known/oauth-protected-resource/mcp")
    assert response.status_code == 404
    unauthorized = post(server.mcp_url, {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, token=None)
    assert unauthorized.headers["www-authenticate"] == "Bearer"


def test_a_401_points_to_the_metadata_and_the_scope(signed_server):
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    missing = post(signed_server.mcp_url, body, token=None)
    assert missing.status_code == 401
    metadata = f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource/mcp"'
    assert missing.headers["www-authenticate"] == f'Bearer {metadata}, scope="mcp"'
    wrong = post(signed_server.mcp_url, body, token="chitty_not-a-token")
    assert wrong.headers["www-authenticate"] == f'Bearer error="invalid_token", {metadata}, scope="mcp"'


def test_an_oauth_token_works_only_at_the_resource_it_was_granted_for(signed_server, alice, database_url):
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "chitty_chat_session_list", "arguments": {}},
    }
    here = oauth_token(database_url, alice.user_id, "mcp", f"{PUBLIC}/mcp")
    elsewhere = oauth_token(database_url, alice.user_id, "mcp", "https://other.example/mcp")
    assert post(signed_server.mcp_url, body, token=here).status_code == 200
    assert post(signed_server.mcp_url, body, token=elsewhere).status_code == 401
    complete = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "chatgpt_complete", "arguments": {"messages": [{"role": "user", "content": "hi"}]}},
    }
    assert post(signed_server.mcp_url, complete, token=elsewhere).status_code == 401


def test_an_admins_token_without_the_admin_scope_acts_as_a_user(signed_server, admin, alice, database_url):
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "chitty_usage_limits_get", "arguments": {"user_id": alice.user_id}},
    }
    plain = oauth_token(database_url, admin.user_id, "mcp", f"{PUBLIC}/mcp")
    full = oauth_token(database_url, admin.user_id, "mcp mcp:admin", f"{PUBLIC}/mcp")
    refused = post(signed_server.mcp_url, body, token=plain)
    assert refused.status_code == 403
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="insufficient_scope", scope="mcp mcp:admin"')
    assert f'resource_metadata="{PUBLIC}/.well-known/oauth-protected-resource/mcp"' in challenge
    assert "admin rights" in refused.json()["error"]["message"]
    own = {**body, "params": {"name": "chitty_usage_limits_get", "arguments": {}}}
    assert post(signed_server.mcp_url, own, token=plain).json()["result"]["structuredContent"]["user_id"] == (
        admin.user_id
    )
    assert post(signed_server.mcp_url, body, token=full).json()["result"]["isError"] is False


def test_a_user_without_admin_rights_is_refused_not_asked_for_the_admin_scope(
    signed_server, admin, alice, database_url
):
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "chitty_usage_limits_get", "arguments": {"user_id": admin.user_id}},
    }
    token = oauth_token(database_url, alice.user_id, "mcp mcp:admin", f"{PUBLIC}/mcp")
    answer = post(signed_server.mcp_url, body, token=token)
    assert answer.status_code == 200
    assert answer.json()["result"]["isError"] is True
    assert "Only admins" in answer.json()["result"]["content"][0]["text"]


def test_a_registered_client_exchanges_a_code_refreshes_and_revokes(signed_server, alice, database_url):
    """The token side of the flow over HTTP; the code is stored as /authorize stores it after consent."""
    import base64
    import secrets

    registered = httpx2.post(
        signed_server.base_url + "/register",
        json={"client_name": "Test client", "redirect_uris": ["http://127.0.0.1:9/callback"]},
    )
    assert registered.status_code == 201
    client = registered.json()
    assert client["token_endpoint_auth_method"] == "none"
    assert "client_secret" not in client
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    code = secrets.token_urlsafe(32)
    with connection(database_url) as conn:
        conn.run(
            "INSERT INTO oauth_codes (code_hash, user_id, client_id, redirect_uri, scope, resource, code_challenge, "
            "expires_at) VALUES (:h, :u, :c, 'http://127.0.0.1:9/callback', 'mcp', :r, :ch, "
            "now() + interval '1 minute')",
            h=hashlib.sha256(code.encode()).hexdigest(),
            u=alice.user_id,
            c=client["client_id"],
            r=f"{PUBLIC}/mcp",
            ch=challenge,
        )
    exchange = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": "http://127.0.0.1:9/callback",
        "client_id": client["client_id"],
        "resource": f"{PUBLIC}/mcp",
    }
    wrong = httpx2.post(signed_server.base_url + "/token", data={**exchange, "code_verifier": "x" * 43})
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")  # and the code is burnt
    with connection(database_url) as conn:
        conn.run(
            "UPDATE oauth_codes SET used_at = NULL WHERE code_hash = :h", h=hashlib.sha256(code.encode()).hexdigest()
        )
    # The resource as a client may write it, with a trailing slash: the same resource.
    slashed = {**exchange, "resource": f"{PUBLIC}/mcp/", "code_verifier": verifier}
    issued = httpx2.post(signed_server.base_url + "/token", data=slashed)
    assert issued.status_code == 200, issued.text
    assert issued.headers["cache-control"] == "no-store"
    tokens = issued.json()
    listed = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    assert post(signed_server.mcp_url, listed, token=tokens["access_token"]).status_code == 200
    rotated = httpx2.post(
        signed_server.base_url + "/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": client["client_id"],
        },
    ).json()
    assert post(signed_server.mcp_url, listed, token=rotated["access_token"]).status_code == 200
    revoked = httpx2.post(
        signed_server.base_url + "/revoke", data={"token": rotated["refresh_token"], "client_id": client["client_id"]}
    )
    assert revoked.status_code == 200
    assert post(signed_server.mcp_url, listed, token=rotated["access_token"]).status_code == 401


@pytest.mark.parametrize(
    "metadata",
    [
        {"redirect_uris": ["http://evil.example/cb"]},
        {"redirect_uris": []},
        {"redirect_uris": ["javascript:alert(1)"]},
        {"redirect_uris": ["http://[::1/cb"]},
        {"redirect_uris": ["http://127.0.0.1:notaport/cb"]},
        {"redirect_uris": ["https://ok.example/cb"], "grant_types": ["client_credentials"]},
    ],
)
def test_registration_refuses_what_a_public_client_may_not_have(signed_server, metadata):
    response = httpx2.post(signed_server.base_url + "/register", json=metadata)
    assert response.status_code == 400
    assert response.json()["error"] in ("invalid_redirect_uri", "invalid_client_metadata")


def test_a_user_sees_and_disconnects_their_apps(signed_server, alice, bob, database_url):
    from tests.conftest import make_grant

    token = oauth_token(database_url, alice.user_id, "mcp", f"{PUBLIC}/mcp")
    grant = make_grant(database_url, alice.user_id)
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    listed = post(
        signed_server.mcp_url,
        {**call, "params": {"name": "chitty_oauth_grants_list", "arguments": {}}},
        token=alice.token,
    ).json()["result"]["structuredContent"]["grants"]
    assert grant in [entry["grant_id"] for entry in listed]
    theirs = post(
        signed_server.mcp_url,
        {**call, "params": {"name": "chitty_oauth_grants_revoke", "arguments": {"grant_id": grant}}},
        token=bob.token,
    ).json()["result"]
    assert theirs["isError"] is True
    with connection(database_url) as conn:
        ((grant_of_token,),) = conn.run(
            "SELECT grant_id FROM access_tokens WHERE token_hash = :h", h=hashlib.sha256(token.encode()).hexdigest()
        )
    revoked = post(
        signed_server.mcp_url,
        {**call, "params": {"name": "chitty_oauth_grants_revoke", "arguments": {"grant_id": str(grant_of_token)}}},
        token=alice.token,
    ).json()["result"]
    assert revoked["structuredContent"]["revoked_at"] is not None
    assert (
        post(signed_server.mcp_url, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, token=token).status_code == 401
    )


def test_an_admin_lists_and_disconnects_a_users_apps_from_the_command_line(alice, database_url):
    from tests.clients import run_cli
    from tests.conftest import make_grant

    token = oauth_token(database_url, alice.user_id, "mcp", f"{PUBLIC}/mcp")
    with connection(database_url) as conn:
        ((grant,),) = conn.run(
            "SELECT grant_id FROM access_tokens WHERE token_hash = :h", h=hashlib.sha256(token.encode()).hexdigest()
        )
    other = make_grant(database_url, alice.user_id)
    listed = run_cli("apps", "list", alice.user_id, database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    assert str(grant) in listed.stdout
    assert other in listed.stdout
    assert "scope=mcp" in listed.stdout
    assert run_cli("apps", "revoke", "someone-else", str(grant), database_url=database_url).returncode == 1
    assert run_cli("apps", "revoke", alice.user_id, "not-a-uuid", database_url=database_url).returncode == 2
    revoked = run_cli("apps", "revoke", alice.user_id, str(grant), database_url=database_url)
    assert revoked.returncode == 0, revoked.stderr
    assert "its tokens stop at once" in revoked.stdout
    with connection(database_url) as conn:
        assert conn.run(
            "SELECT revoked_at IS NOT NULL FROM access_tokens WHERE grant_id = CAST(:g AS uuid)", g=str(grant)
        ) == [[True]]
    after = run_cli("apps", "list", alice.user_id, database_url=database_url).stdout
    assert str(grant) not in after
    assert str(grant) in run_cli("apps", "list", alice.user_id, "--include-revoked", database_url=database_url).stdout


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/.well-known/oauth-protected-resource/mcp", "GET"),
        ("/.well-known/oauth-authorization-server", "GET"),
        ("/register", "POST"),
        ("/token", "POST"),
        ("/revoke", "POST"),
    ],
)
def test_a_browser_client_may_call_the_oauth_endpoints_from_its_own_page(signed_server, path, method):
    preflight = httpx2.request(
        "OPTIONS",
        signed_server.base_url + path,
        headers={
            "Origin": "http://localhost:6274",
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type,mcp-protocol-version",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert method in preflight.headers["access-control-allow-methods"]
    assert "mcp-protocol-version" in preflight.headers["access-control-allow-headers"].lower()
    answer = httpx2.request(
        method,
        signed_server.base_url + path,
        headers={
            "Origin": "http://localhost:6274",
            "Content-Type": "application/json" if path == "/register" else "application/x-www-form-urlencoded",
        },
        content=b"{}" if path == "/register" else b"",
    )
    assert answer.headers["access-control-allow-origin"] == "*"

"""The discovery documents and the challenge that sends a client without a token to them."""

from __future__ import annotations

from typing import Any

# `mcp` uses the tools as the user; `mcp:admin` adds the user's admin rights (an admin's token without it
# acts as a normal user).
SCOPES = ("mcp", "mcp:admin")
DEFAULT_SCOPE = "mcp"


def resource_metadata_url(public_url: str) -> str:
    """Where the protected resource metadata of /mcp is (the path-suffixed form stays under a stage prefix)."""
    return f"{public_url}/.well-known/oauth-protected-resource/mcp"


def protected_resource(public_url: str) -> dict[str, Any]:
    """RFC 9728 metadata of the MCP endpoint."""
    return {
        "resource": f"{public_url}/mcp",
        "authorization_servers": [public_url],
        # Only the everyday scope: a client that asks for every scope listed here would get an admin's rights by
        # default; mcp:admin is asked for when a call needs it (the 403 insufficient_scope challenge names it).
        "scopes_supported": [DEFAULT_SCOPE],
        "bearer_methods_supported": ["header"],
        "resource_name": "ChittyOS ChatGPT",
    }


def authorization_server(public_url: str, *, openid: bool = False) -> dict[str, Any]:
    """RFC 8414 metadata. With `openid`, the fields an OpenID discovery document must carry too: a client that
    finds the server at <issuer>/.well-known/openid-configuration (the one place reachable under API Gateway's
    stage prefix) reads it with OpenID's schema."""
    document: dict[str, Any] = {
        "issuer": public_url,
        "authorization_endpoint": f"{public_url}/authorize",
        "token_endpoint": f"{public_url}/token",
        "registration_endpoint": f"{public_url}/register",
        "revocation_endpoint": f"{public_url}/revoke",
        "scopes_supported": list(SCOPES),
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "code_challenge_methods_supported": ["S256"],
        "authorization_response_iss_parameter_supported": True,
        "client_id_metadata_document_supported": True,
    }
    if openid:
        document.update(
            jwks_uri=f"{public_url}/jwks",
            subject_types_supported=["public"],
            id_token_signing_alg_values_supported=["RS256"],
        )
    return document


def challenge(public_url: str | None, *, invalid_token: bool) -> str:
    """The WWW-Authenticate value of a 401 from /mcp: where to learn how to sign in, and the scope to ask."""
    parts = ['error="invalid_token"'] if invalid_token else []
    if public_url is not None:
        parts += [f'resource_metadata="{resource_metadata_url(public_url)}"', f'scope="{DEFAULT_SCOPE}"']
    return "Bearer " + ", ".join(parts) if parts else "Bearer"


def scope_challenge(public_url: str | None, scope: str, description: str) -> str:
    """The WWW-Authenticate value of a 403 for a token without a scope the call needs (step-up authorization):
    every scope the call needs, so the client asks the user for all of them at once."""
    parts = ['error="insufficient_scope"', f'scope="{scope}"']
    if public_url is not None:
        parts.append(f'resource_metadata="{resource_metadata_url(public_url)}"')
    parts.append('error_description="{}"'.format(description.replace("\\", "").replace('"', "'")))
    return "Bearer " + ", ".join(parts)

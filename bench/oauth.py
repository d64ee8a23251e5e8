"""Sign-in: what OAuth costs a request, and how long each step of the flow takes.

The Chalice app is invoked in process with API Gateway proxy events (warm, as Lambda calls it) against a real
PostgreSQL. A request with an OAuth access token is authenticated by the same one round trip as one with a
personal token; the token endpoint's exchanges are one SQL function each; a sign-in verifies an argon2id hash
(OWASP's parameters: 19 MiB, two passes), which is most of its time.
Usage: python -m bench.oauth [--calls 300] [--sign-ins 30]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import time
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from bench.environment import fresh_database, latency_row, machine, table, user_with_token
from bench.gateway import quiet
from devtools.apigateway import LambdaContext, proxy_event

PUBLIC = "https://chitty.example"
REDIRECT = "http://127.0.0.1:9/callback"
PASSWORD = "a bench password of some length"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def _invoke(method: str, path: str, headers: dict[str, str], body: str | None) -> tuple[float, dict[str, Any]]:
    import app

    started = time.perf_counter()
    answer = app.app(proxy_event(method, path, headers, body), LambdaContext())
    return (time.perf_counter() - started) * 1000, answer


def _tools_list(token: str) -> float:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"}
    elapsed, answer = _invoke("POST", "/mcp", headers, json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}))
    if answer["statusCode"] != 200:
        raise RuntimeError(answer["body"])
    return elapsed


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _sign_in(client_id: str, user_id: str) -> tuple[float, str, str]:
    """One POST /authorize that signs in and allows: its time, the code and the verifier."""
    verifier, challenge = _pkce()
    form = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "bench",
        "scope": "mcp",
        "login": user_id,
        "password": PASSWORD,
        "decision": "allow",
    }
    elapsed, answer = _invoke("POST", "/authorize", {**FORM, "Sec-Fetch-Site": "same-origin"}, urlencode(form))
    if answer["statusCode"] != 302:
        raise RuntimeError(answer["body"])
    code = parse_qs(urlsplit(answer["headers"]["Location"]).query)["code"][0]
    return elapsed, code, verifier


def _token(form: dict[str, str]) -> tuple[float, dict[str, Any]]:
    elapsed, answer = _invoke("POST", "/token", FORM, urlencode(form))
    if answer["statusCode"] != 200:
        raise RuntimeError(answer["body"])
    return elapsed, json.loads(answer["body"])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--sign-ins", type=int, default=30)
    args = parser.parse_args(argv)
    url = fresh_database("chitty_bench_oauth")
    personal = user_with_token(url, "bench-person")
    os.environ.update(
        CHITTY_DATABASE_URL=url,
        CHITTY_ENCRYPTION_KEY=base64.b64encode(os.urandom(32)).decode(),
        CHITTY_PUBLIC_URL=PUBLIC,
    )
    from chalicelib.db import get_database
    from chalicelib.oauth.passwords import hash_password

    get_database().one("set_password", user_id="bench-person", password_hash=hash_password(PASSWORD))
    with quiet():
        _, registered = _invoke(
            "POST", "/register", {"Content-Type": "application/json"}, json.dumps({"redirect_uris": [REDIRECT]})
        )
        client_id = json.loads(registered["body"])["client_id"]
        metadata = []
        for _ in range(args.calls):
            elapsed, answer = _invoke("GET", "/.well-known/oauth-protected-resource/mcp", {}, None)
            if answer["statusCode"] != 200:
                raise RuntimeError(answer["body"])
            metadata.append(elapsed)
        sign_ins, exchanges, refreshes = [], [], []
        tokens: dict[str, Any] = {}
        for _ in range(args.sign_ins + 2):
            signed, code, verifier = _sign_in(client_id, "bench-person")
            exchanged, tokens = _token(
                {
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": REDIRECT,
                    "client_id": client_id,
                    "code_verifier": verifier,
                }
            )
            refreshed, tokens = _token(
                {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"], "client_id": client_id}
            )
            sign_ins.append(signed)
            exchanges.append(exchanged)
            refreshes.append(refreshed)
        oauth_calls, personal_calls = [], []
        for _ in range(args.calls + 20):  # alternated, so that both see the same machine
            oauth_calls.append(_tools_list(tokens["access_token"]))
            personal_calls.append(_tools_list(personal))
    rows = [
        latency_row("tools/list, personal token", personal_calls[20:]),
        latency_row("tools/list, OAuth access token", oauth_calls[20:]),
        latency_row("GET protected resource metadata", metadata),
        latency_row("POST /authorize: sign in (argon2id) + code", sign_ins[2:]),
        latency_row("POST /token: code for tokens", exchanges[2:]),
        latency_row("POST /token: refresh (rotation)", refreshes[2:]),
    ]
    notes = [
        machine(),
        "in process, warm; times in ms. Both kinds of token: one round trip (authenticate_token) before the tool",
    ]
    return table("Sign-in (OAuth 2.1)", ["path", "calls", "p50", "p95", "p99"], rows, notes)


if __name__ == "__main__":
    print(main())

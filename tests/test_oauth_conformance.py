"""`make conformance` runs the official suite's authorization server scenarios against `make run`'s sign-in:
it registers the suite's callback, gives its user a password, signs in where the suite asks a person to, and
the suite redeems the code. Against a server without sign-in they do not apply."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from chalicelib.db import connection
from devtools.conformance import AUTHORIZATION, SIGN_IN_USER
from tests.conftest import ROOT
from tests.ts_client import require_node

# The suite's own wait for the callback is five minutes; conformance.py gives up long before.
TIMEOUT_S = 180


def conformance(env: dict[str, str]) -> tuple[int, str]:
    """`make conformance` limited to the authorization scenarios: its exit status and output."""
    require_node()
    inherited = {key: value for key, value in os.environ.items() if not key.startswith(("CHITTY_", "MCP_"))}
    done = subprocess.run(
        [sys.executable, "-m", "devtools.conformance", *AUTHORIZATION],
        cwd=ROOT,
        env={**inherited, **env},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def rows(output: str) -> dict[str, tuple[str, str]]:
    """The table's rows for the authorization scenarios: scenario -> (status, note)."""
    found = re.findall(rf"^  (passed|FAILED|n/a)\s+({'|'.join(AUTHORIZATION)})\s+(.*)$", output, flags=re.MULTILINE)
    return {scenario: (status, note) for status, scenario, note in found}


def test_the_suite_signs_in_to_run_servers_server_and_every_check_passes(run_server, database_url):
    run_dir = run_server.log_path.parent
    status, output = conformance(
        {"MCP_URL": run_server.mcp_url, "CHITTY_RUN_DIR": str(run_dir), "CHITTY_DATABASE_URL": database_url}
    )
    assert status == 0, output
    assert f"authorization server {run_server.base_url}, signing in as {SIGN_IN_USER}" in output
    assert rows(output) == {
        "authorization-server-metadata-endpoint": ("passed", "2 checks"),  # the metadata, and CIMD support
        "authorization-code-grant": ("passed", "1 check"),
    }, output
    assert "warning" not in output
    # The suite's grant, and the tokens it was issued, are revoked once it is done.
    with connection(database_url) as conn:
        grants = conn.run(
            "SELECT g.revoked_at IS NOT NULL, count(t.id) FILTER (WHERE t.revoked_at IS NULL) FROM oauth_grants g "
            "LEFT JOIN access_tokens t ON t.grant_id = g.id WHERE g.user_id = :u GROUP BY g.id",
            u=SIGN_IN_USER,
        )
    assert grants, "the suite signed in, so there is a grant"
    assert all(revoked and live == 0 for revoked, live in grants), grants


def test_without_sign_in_the_authorization_scenarios_do_not_apply(server, make_user):
    """A server without CHITTY_PUBLIC_URL offers no sign-in: both scenarios are n/a, saying why, and nothing fails."""
    status, output = conformance({"MCP_URL": server.mcp_url, "MCP_BEARER_TOKEN": make_user().token})
    assert status == 0, output
    found = rows(output)
    assert set(found) == set(AUTHORIZATION), output
    for state, note in found.values():
        assert state == "n/a"
        assert "the server offers no sign-in" in note
        assert "CHITTY_PUBLIC_URL" in note

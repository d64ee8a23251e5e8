"""`make run`: a database, the schema, a dev admin and its token, then `chalice local`.

Without CHITTY_DATABASE_URL, PostgreSQL runs embedded with its data under .chitty/, so a
second run finds the same data, and the same token (kept in .chitty/dev-token) still works.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from chalicelib import auth, migrate
from chalicelib.db import SQL_DIR, Database, connection, load_queries
from devtools import embedded

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / ".chitty"
DEV_ADMIN = "dev-admin"
DATABASE = "chitty"


def database_url() -> str:
    """CHITTY_DATABASE_URL if set, else the embedded server's `chitty` database."""
    url = os.environ.get("CHITTY_DATABASE_URL")
    if url:
        return url
    return embedded.with_database(embedded.start(STATE / "pgdata"), DATABASE)


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
            "MCP Inspector:",
            f"  npx @modelcontextprotocol/inspector --cli {url} --transport http "
            f"--header {shlex.quote(header)} --method tools/list",
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
    print(f"Database:     {url}")
    print(client_config(f"http://127.0.0.1:{port}/mcp", token), flush=True)
    env = {**os.environ, "CHITTY_DATABASE_URL": url, "CHITTY_ENCRYPTION_KEY": encryption_key()}
    command = [
        str(Path(sys.executable).parent / "chalice"),
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--stage",
        "dev",
        # The reloader watches every file of the project, the database's own files under .chitty/ included.
        "--no-autoreload",
    ]
    server = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        return server.wait()
    except KeyboardInterrupt:
        server.send_signal(signal.SIGINT)
        return server.wait()


if __name__ == "__main__":
    sys.exit(main())

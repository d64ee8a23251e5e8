"""Migrations: applied once, in order, recorded with checksums, refused when disk and database disagree."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pg8000.native
import pytest

from chalicelib import migrate
from chalicelib.db import connection
from devtools import embedded
from tests.clients import run_cli


@pytest.fixture
def fresh_database_url(admin_database_url: str) -> Iterator[str]:
    """An empty database of its own, dropped after the test."""
    name = f"chitty_migrations_{uuid.uuid4().hex[:12]}"
    url = embedded.with_database(admin_database_url, name)
    yield url
    embedded.drop_database(admin_database_url, name)


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A copy of sql/migrations that a test may add to or edit."""
    directory = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, directory)
    return directory


def recorded(conn: pg8000.native.Connection) -> list[tuple[int, str, str]]:
    rows = conn.run("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    return [(row[0], row[1], row[2]) for row in rows]


def table_exists(conn: pg8000.native.Connection, name: str) -> bool:
    return conn.run("SELECT to_regclass(:name) IS NOT NULL", name=name)[0][0]


def run_migrate_cli(url: str) -> subprocess.CompletedProcess[str]:
    return run_cli("migrate", database_url=url)


def test_migrations_are_applied_in_version_order(fresh_database_url, migrations_copy):
    # Written out of order on purpose: 999 only works if 998 ran first.
    (migrations_copy / "999_fill_probe.sql").write_text("INSERT INTO order_probe VALUES ('filled');\n")
    (migrations_copy / "998_create_probe.sql").write_text("CREATE TABLE order_probe (step text);\n")
    with connection(fresh_database_url) as conn:
        applied = migrate.apply(conn, migrate.discover(migrations_copy))
        in_applied_order = [row[0] for row in conn.run("SELECT version FROM schema_migrations ORDER BY applied_at")]
        probe = conn.run("SELECT step FROM order_probe")
    versions = [migration.version for migration in applied]
    assert versions == sorted(versions)
    assert versions[-2:] == [998, 999]
    assert in_applied_order == versions
    assert probe == [["filled"]]


def test_each_applied_migration_is_recorded_with_the_sha256_of_its_file(fresh_database_url):
    with connection(fresh_database_url) as conn:
        migrate.apply(conn)
        rows = recorded(conn)
    expected = []
    for path in sorted(migrate.MIGRATIONS_DIR.glob("*.sql")):
        version, _, rest = path.stem.partition("_")
        expected.append((int(version), rest, hashlib.sha256(path.read_bytes()).hexdigest()))
    assert rows == expected


def test_a_second_run_applies_nothing(fresh_database_url):
    with connection(fresh_database_url) as conn:
        first = migrate.apply(conn)
        before = recorded(conn)
        second = migrate.apply(conn)
        after = recorded(conn)
    assert first
    assert second == []
    assert after == before


def test_an_edited_applied_migration_is_refused_and_nothing_changes(fresh_database_url, migrations_copy):
    with connection(fresh_database_url) as conn:
        migrate.apply(conn)
        before = recorded(conn)
        edited = sorted(migrations_copy.glob("*.sql"))[0]
        edited.write_text(edited.read_text() + "\n-- an innocent-looking edit\n")
        (migrations_copy / "999_after_the_edit.sql").write_text("CREATE TABLE after_the_edit (id int);\n")

        with pytest.raises(migrate.MigrationError) as refused:
            migrate.apply(conn, migrate.discover(migrations_copy))

        assert edited.name in str(refused.value)
        assert "Applied migrations are never edited" in str(refused.value)
        assert recorded(conn) == before
        assert not table_exists(conn, "after_the_edit")


def test_a_failing_migration_rolls_back_completely_and_names_its_file(fresh_database_url, migrations_copy):
    (migrations_copy / "999_broken.sql").write_text(
        "CREATE TABLE half_made (id int);\nINSERT INTO half_made VALUES (1);\nSELECT no_such_function();\n"
    )
    with connection(fresh_database_url) as conn:
        with pytest.raises(migrate.MigrationError) as failed:
            migrate.apply(conn, migrate.discover(migrations_copy))
        versions = [row[0] for row in recorded(conn)]
        half_made = table_exists(conn, "half_made")
    assert "999_broken.sql" in str(failed.value)
    assert "no_such_function" in str(failed.value)
    assert not half_made
    assert 999 not in versions
    assert versions == [migration.version for migration in migrate.discover()]


def test_a_database_with_a_migration_this_code_lacks_is_refused(fresh_database_url, migrations_copy):
    (migrations_copy / "999_from_newer_code.sql").write_text("CREATE TABLE from_newer_code (id int);\n")
    with connection(fresh_database_url) as conn:
        migrate.apply(conn, migrate.discover(migrations_copy))
        with pytest.raises(migrate.MigrationError, match="999_from_newer_code"):
            migrate.apply(conn)


def test_concurrent_runs_on_a_fresh_database_apply_each_migration_once(fresh_database_url):
    runners = 2
    start = threading.Barrier(runners)
    applied: list[list[migrate.Migration]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with connection(fresh_database_url) as conn:
                start.wait(timeout=10)
                applied.append(migrate.apply(conn))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(runners)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert errors == []
    all_versions = [migration.version for migration in migrate.discover()]
    assert sorted(migration.version for result in applied for migration in result) == all_versions
    with connection(fresh_database_url) as conn:
        counts = conn.run("SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")
    assert counts == [[version, 1] for version in all_versions]


def test_migrate_command_prints_what_it_applied_then_that_the_database_is_up_to_date(fresh_database_url):
    first = run_migrate_cli(fresh_database_url)
    second = run_migrate_cli(fresh_database_url)

    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [f"applied {migration.file_name}" for migration in migrate.discover()]
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["database is up to date"]


def test_every_table_has_a_comment(database_url):
    with connection(database_url) as conn:
        uncommented = conn.run(
            """SELECT c.relname
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public'
                 AND c.relkind IN ('r', 'p')
                 AND obj_description(c.oid, 'pg_class') IS NULL
               ORDER BY c.relname"""
        )
    assert uncommented == []

"""Migrations and definitions: applied once, in order, recorded with checksums, refused when disk and
database disagree; a database built from scratch and one upgraded from a deployed schema end up the same."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx2
import pg8000.native
import pytest

from chalicelib import migrate, pricing
from chalicelib.db import connection
from devtools import embedded
from tests.clients import run_cli
from tests.conftest import ENCRYPTION_KEY, start_server


def empty_database(admin_database_url: str) -> Iterator[str]:
    """An empty database of its own, dropped after the test."""
    name = f"chitty_migrations_{uuid.uuid4().hex[:12]}"
    url = embedded.with_database(admin_database_url, name)
    yield url
    embedded.drop_database(admin_database_url, name)


fresh_database_url = pytest.fixture(empty_database, name="fresh_database_url")
second_database_url = pytest.fixture(empty_database, name="second_database_url")


@pytest.fixture
def migrations_copy(tmp_path: Path) -> Path:
    """A copy of sql/migrations that a test may add to or edit."""
    directory = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, directory)
    return directory


@pytest.fixture
def definitions_copy(tmp_path: Path) -> Path:
    """A copy of sql/definitions that a test may add to or edit."""
    directory = tmp_path / "definitions"
    shutil.copytree(migrate.DEFINITIONS_DIR, directory)
    return directory


def recorded(conn: pg8000.native.Connection) -> list[tuple[int, str, str]]:
    rows = conn.run("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
    return [(row[0], row[1], row[2]) for row in rows]


def table_exists(conn: pg8000.native.Connection, name: str) -> bool:
    return conn.run("SELECT to_regclass(:name) IS NOT NULL", name=name)[0][0]


def recorded_definitions(conn: pg8000.native.Connection) -> list[tuple[str, str, object]]:
    rows = conn.run("SELECT name, checksum, applied_at FROM schema_definitions ORDER BY name")
    return [(row[0], row[1], row[2]) for row in rows]


def function_comment(conn: pg8000.native.Connection, signature: str) -> str | None:
    return conn.run("SELECT obj_description(CAST(:sig AS regprocedure), 'pg_proc')", sig=signature)[0][0]


def run_migrate_cli(url: str) -> subprocess.CompletedProcess[str]:
    return run_cli("migrate", database_url=url)


# The migrations that deployed databases have applied, as they applied them: `migrate` refuses to run
# against a database whose recorded checksum differs, so these files can never change.
DEPLOYED_MIGRATIONS = {
    1: ("foundation", "3c96179a9b5727c7"),
    2: ("completions", "75cda3c582691a58"),
    3: ("usage_analytics", "dfa3ed746ee9a1b7"),
    4: ("limits", "ae2ec2b11b9dc0e4"),
    5: ("templates", "ea6544f1ff94fbd5"),
    6: ("leaner_recording", "03f9cc3df080f7ec"),
}


def build_as_deployed_at_006(conn: pg8000.native.Connection) -> None:
    """The schema of a database deployed before definitions existed: migrations 001-006 recorded in
    schema_migrations, and no schema_definitions."""
    deployed = [migration for migration in migrate.discover() if migration.version in DEPLOYED_MIGRATIONS]
    migrate.apply(conn, deployed, definitions=[])
    conn.run("DROP TABLE schema_definitions")


def test_migrations_are_applied_in_version_order(fresh_database_url, migrations_copy):
    # Written out of order on purpose: 999 only works if 998 ran first.
    (migrations_copy / "999_fill_probe.sql").write_text("INSERT INTO order_probe VALUES ('filled');\n")
    (migrations_copy / "998_create_probe.sql").write_text("CREATE TABLE order_probe (step text);\n")
    with connection(fresh_database_url) as conn:
        applied = migrate.apply(conn, migrate.discover(migrations_copy)).migrations
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


def test_each_definition_file_and_catalogue_is_recorded_with_the_sha256_of_its_file(fresh_database_url):
    with connection(fresh_database_url) as conn:
        applied = migrate.apply(conn)
        rows = [(name, checksum) for name, checksum, _ in recorded_definitions(conn)]
    expected = [
        (path.name, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(migrate.DEFINITIONS_DIR.glob("*.sql"))
    ]
    catalogues = [
        (f"catalogue/{path.name}", hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(pricing.CATALOGUE_DIR.glob("*.json"))
    ]
    assert catalogues
    assert sorted(rows) == sorted(expected + catalogues)
    assert [definition.name for definition in applied.definitions] == [name for name, _ in expected]
    assert [catalogue.file_name for catalogue in applied.catalogues] == [name for name, _ in catalogues]


def test_a_changed_catalogue_alone_is_imported_again_and_prices_change_from_then_on(fresh_database_url, tmp_path):
    with connection(fresh_database_url) as conn:
        migrate.apply(conn)
        before = dict(conn.run("SELECT name, checksum FROM schema_definitions"))
        changed = tmp_path / "openai-models.json"
        table = json.loads((pricing.CATALOGUE_DIR / "openai-models.json").read_text())
        table["gpt-5.4-mini"]["input_cost_per_token"] = 8e-07
        changed.write_text(json.dumps(table))

        applied = migrate.apply(conn, catalogues=migrate.discover_catalogues(tmp_path))
        again = migrate.apply(conn, catalogues=migrate.discover_catalogues(tmp_path))

        after = dict(conn.run("SELECT name, checksum FROM schema_definitions"))
        history = conn.run(
            "SELECT input_per_mtok FROM model_pricing WHERE model = 'gpt-5.4-mini' ORDER BY effective_from"
        )
    report = applied.imports["catalogue/openai-models.json"]
    assert applied.file_names == ["catalogue/openai-models.json"]
    assert ([row["model"] for row in report.changed], report.added) == (["gpt-5.4-mini"], [])
    assert again.file_names == []
    assert after["catalogue/openai-models.json"] == hashlib.sha256(changed.read_bytes()).hexdigest()
    assert {name: c for name, c in after.items() if not name.startswith("catalogue/")} == {
        name: c for name, c in before.items() if not name.startswith("catalogue/")
    }
    assert history == [[Decimal("0.75")], [Decimal("0.8")]]


def test_a_catalogue_that_cannot_be_read_is_refused_naming_its_file(fresh_database_url, tmp_path):
    (tmp_path / "openai-models.json").write_text("{not json")
    with connection(fresh_database_url) as conn:
        with pytest.raises(migrate.MigrationError, match=r"sql/catalogue/openai-models.json is not JSON"):
            migrate.apply(conn, catalogues=migrate.discover_catalogues(tmp_path))
        recorded_catalogues = conn.run("SELECT name FROM schema_definitions WHERE name LIKE 'catalogue/%'")
        catalogued = conn.run("SELECT count(*) FROM model_catalogue")[0][0]
    assert (recorded_catalogues, catalogued) == ([], 0)


def test_a_second_run_applies_nothing_and_changes_nothing(fresh_database_url):
    with connection(fresh_database_url) as conn:
        first = migrate.apply(conn)
        before = (recorded(conn), recorded_definitions(conn))
        schema_before = embedded.schema_dump(fresh_database_url)
        second = migrate.apply(conn)
        after = (recorded(conn), recorded_definitions(conn))
    assert first.migrations
    assert first.definitions
    assert second.file_names == []
    assert after == before
    assert embedded.schema_dump(fresh_database_url) == schema_before


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


def test_a_changed_definition_file_alone_is_applied_again(fresh_database_url, definitions_copy):
    with connection(fresh_database_url) as conn:
        migrate.apply(conn)
        before = {name: (checksum, at) for name, checksum, at in recorded_definitions(conn)}
        templates = definitions_copy / "templates.sql"
        templates.write_text(
            templates.read_text().replace("one per name: their own", "one per name (changed): their own")
        )

        applied = migrate.apply(conn, definitions=migrate.discover_definitions(definitions_copy))

        after = {name: (checksum, at) for name, checksum, at in recorded_definitions(conn)}
        comment = function_comment(conn, "session_templates_for(text)")
    assert applied.migrations == []
    assert applied.file_names == ["definitions/templates.sql"]
    assert "one per name (changed)" in (comment or "")
    assert after["templates.sql"][0] == hashlib.sha256(templates.read_bytes()).hexdigest()
    assert after["templates.sql"][1] > before["templates.sql"][1]
    assert {name: row for name, row in after.items() if name != "templates.sql"} == {
        name: row for name, row in before.items() if name != "templates.sql"
    }


def test_a_failing_definition_rolls_back_every_definition_and_names_its_file(fresh_database_url, definitions_copy):
    with connection(fresh_database_url) as conn:
        migrate.apply(conn)
        before = recorded_definitions(conn)
        templates = definitions_copy / "templates.sql"
        templates.write_text(templates.read_text().replace("one per name: their own", "half-applied: their own"))
        (definitions_copy / "zz_broken.sql").write_text(
            "CREATE OR REPLACE FUNCTION broken_probe() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;\n"
            "SELECT no_such_function();\n"
        )

        with pytest.raises(migrate.MigrationError) as failed:
            migrate.apply(conn, definitions=migrate.discover_definitions(definitions_copy))

        comment = function_comment(conn, "session_templates_for(text)")
        probe = conn.run("SELECT to_regprocedure('broken_probe()') IS NOT NULL")[0][0]
        after = recorded_definitions(conn)
    assert "sql/definitions/zz_broken.sql" in str(failed.value)
    assert "no_such_function" in str(failed.value)
    assert "half-applied" not in (comment or "")
    assert not probe
    assert after == before


def test_a_definition_file_that_is_gone_is_forgotten(fresh_database_url, definitions_copy):
    (definitions_copy / "zz_probe.sql").write_text(
        "CREATE OR REPLACE FUNCTION definition_probe() RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;\n"
    )
    with connection(fresh_database_url) as conn:
        migrate.apply(conn, definitions=migrate.discover_definitions(definitions_copy))
        (definitions_copy / "zz_probe.sql").unlink()
        applied = migrate.apply(conn, definitions=migrate.discover_definitions(definitions_copy))
        names = [name for name, _, _ in recorded_definitions(conn) if not name.startswith("catalogue/")]
    assert applied.file_names == []
    assert names == [definition.name for definition in migrate.discover_definitions()]


def test_a_database_built_from_scratch_equals_one_upgraded_from_the_deployed_schema(
    fresh_database_url, second_database_url
):
    with connection(second_database_url) as conn:
        build_as_deployed_at_006(conn)
        assert conn.run("SELECT to_regclass('schema_definitions')")[0][0] is None
    with connection(fresh_database_url) as conn:
        from_scratch = migrate.apply(conn)
    with connection(second_database_url) as conn:
        upgraded = migrate.apply(conn)

    assert [m.version for m in from_scratch.migrations] == [m.version for m in migrate.discover()]
    assert [m.version for m in upgraded.migrations] == [
        m.version for m in migrate.discover() if m.version not in DEPLOYED_MIGRATIONS
    ]
    assert upgraded.definitions == from_scratch.definitions == migrate.discover_definitions()
    assert upgraded.catalogues == from_scratch.catalogues == migrate.discover_catalogues()
    scratch_schema = embedded.schema_dump(fresh_database_url)
    assert "CREATE FUNCTION public.record_completion" in scratch_schema
    assert embedded.schema_dump(second_database_url) == scratch_schema


def test_the_deployed_migrations_are_unchanged_and_later_ones_hold_no_code():
    migrations = {migration.version: migration for migration in migrate.discover()}
    assert {
        version: (migrations[version].name, migrations[version].checksum[:16]) for version in DEPLOYED_MIGRATIONS
    } == DEPLOYED_MIGRATIONS
    code = re.compile(r"\bCREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE|TRIGGER|VIEW)\b", re.IGNORECASE)
    for version, migration in migrations.items():
        if version not in DEPLOYED_MIGRATIONS:
            assert not code.search(migration.sql), f"{migration.file_name} defines code: it belongs in sql/definitions"


def test_every_function_trigger_and_view_is_defined_once_in_the_definitions(database_url):
    defined = re.compile(r"^CREATE OR REPLACE (FUNCTION|TRIGGER|VIEW) ([a-z_][a-z0-9_]*)", re.MULTILINE)
    places: dict[tuple[str, str], list[str]] = {}
    for definition in migrate.discover_definitions():
        for kind, name in defined.findall(definition.sql):
            places.setdefault((kind, name), []).append(definition.name)
    with connection(database_url) as conn:
        in_database = conn.run(
            """SELECT 'FUNCTION', p.proname FROM pg_proc p
               WHERE p.pronamespace = 'public'::regnamespace
                 AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = p.oid AND d.deptype = 'e')
               UNION ALL
               SELECT 'TRIGGER', t.tgname FROM pg_trigger t
               JOIN pg_class c ON c.oid = t.tgrelid
               WHERE c.relnamespace = 'public'::regnamespace AND NOT t.tgisinternal
               UNION ALL
               SELECT 'VIEW', v.viewname::text FROM pg_views v WHERE v.schemaname = 'public'"""
        )
    assert {(kind, name): files for (kind, name), files in places.items() if len(files) > 1} == {}
    assert sorted(places) == sorted((row[0], row[1]) for row in in_database)


def test_a_database_with_a_migration_this_code_lacks_is_refused(fresh_database_url, migrations_copy):
    (migrations_copy / "999_from_newer_code.sql").write_text("CREATE TABLE from_newer_code (id int);\n")
    with connection(fresh_database_url) as conn:
        migrate.apply(conn, migrate.discover(migrations_copy))
        with pytest.raises(migrate.MigrationError, match="999_from_newer_code"):
            migrate.apply(conn)


def test_concurrent_runs_on_a_fresh_database_apply_each_migration_once(fresh_database_url):
    runners = 2
    start = threading.Barrier(runners)
    applied: list[migrate.Applied] = []
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
    assert sorted(migration.version for result in applied for migration in result.migrations) == all_versions
    assert sorted(definition.name for result in applied for definition in result.definitions) == sorted(
        definition.name for definition in migrate.discover_definitions()
    )
    with connection(fresh_database_url) as conn:
        counts = conn.run("SELECT version, count(*) FROM schema_migrations GROUP BY version ORDER BY version")
        definitions = conn.run("SELECT count(*) FROM schema_definitions")[0][0]
    assert counts == [[version, 1] for version in all_versions]
    assert definitions == len(migrate.discover_definitions()) + len(migrate.discover_catalogues())
    assert sorted(catalogue.name for result in applied for catalogue in result.catalogues) == [
        catalogue.name for catalogue in migrate.discover_catalogues()
    ]


def test_migrate_command_prints_what_it_applied_then_that_the_database_is_up_to_date(fresh_database_url):
    first = run_migrate_cli(fresh_database_url)
    second = run_migrate_cli(fresh_database_url)

    assert first.returncode == 0, first.stderr
    models = len(json.loads((pricing.CATALOGUE_DIR / "openai-models.json").read_text()))
    assert first.stdout.splitlines() == [f"applied {migration.file_name}" for migration in migrate.discover()] + [
        f"applied definitions/{definition.name}" for definition in migrate.discover_definitions()
    ] + [
        # Ten of the twelve models seeded in 002 gain their other tiers' rates; two are as seeded.
        f"applied catalogue/openai-models.json: {models - 12} added, 10 changed, 2 unchanged"
    ]
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


def test_health_is_degraded_until_migrate_has_applied_the_definitions(fresh_database_url, tmp_path):
    with connection(fresh_database_url) as conn:
        build_as_deployed_at_006(conn)
    server = start_server(
        tmp_path, {"CHITTY_DATABASE_URL": fresh_database_url, "CHITTY_ENCRYPTION_KEY": ENCRYPTION_KEY}
    )
    try:
        before = httpx2.get(f"{server.base_url}/health").json()
        with connection(fresh_database_url) as conn:
            migrate.apply(conn)
        after = httpx2.get(f"{server.base_url}/health").json()
    finally:
        server.stop()
    all_definitions = [definition.name for definition in migrate.discover_definitions()]
    assert before["status"] == "degraded"
    assert before["definitions_pending"] == all_definitions
    assert after["status"] == "ok"
    assert after["definitions_pending"] == []
    assert after["schema_version"] == after["schema_expected"]


def test_health_is_degraded_while_a_changed_definition_is_pending(fresh_database_url, tmp_path):
    with connection(fresh_database_url) as conn:
        migrate.apply(conn)
        conn.run("UPDATE schema_definitions SET checksum = 'as applied by older code' WHERE name = 'chat.sql'")
    server = start_server(
        tmp_path, {"CHITTY_DATABASE_URL": fresh_database_url, "CHITTY_ENCRYPTION_KEY": ENCRYPTION_KEY}
    )
    try:
        body = httpx2.get(f"{server.base_url}/health").json()
    finally:
        server.stop()
    assert body["status"] == "degraded"
    assert body["definitions_pending"] == ["chat.sql"]

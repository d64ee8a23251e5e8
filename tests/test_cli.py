"""The admin command line, run as an operator runs it: `python -m chalicelib.cli ...`."""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from chalicelib import auth
from chalicelib.db import SQL_DIR, Database, load_queries
from tests.clients import run_cli

cli = run_cli


def new_user_id(prefix: str = "cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Issued:
    user_id: str
    output: subprocess.CompletedProcess[str]

    @property
    def token(self) -> str:
        return self.output.stdout.splitlines()[-1]

    @property
    def token_id(self) -> str:
        line = next(line for line in self.output.stdout.splitlines() if line.startswith("token id: "))
        return line.removeprefix("token id: ")


def issue(database_url: str, *extra: str) -> Issued:
    user_id = new_user_id()
    added = cli("user", "add", user_id, database_url=database_url)
    assert added.returncode == 0, added.stderr
    output = cli("token", "issue", user_id, *extra, database_url=database_url)
    assert output.returncode == 0, output.stderr
    return Issued(user_id=user_id, output=output)


@pytest.fixture(scope="module")
def issued(database_url: str) -> Issued:
    """One token issued through the CLI, for the tests that only look at it."""
    return issue(database_url, "--label", "laptop", "--expires-days", "7")


@pytest.fixture(scope="module")
def module_db(database_url: str) -> Iterator[Database]:
    database = Database(url=database_url, queries=load_queries(SQL_DIR / "queries"))
    yield database
    database.discard()


def token_rows(db: Database, user_id: str) -> list[dict]:
    with db.connect() as conn:
        rows = conn.run("SELECT * FROM access_tokens WHERE user_id = :user_id", user_id=user_id)
        names = [column["name"] for column in conn.columns]
    return [dict(zip(names, row, strict=True)) for row in rows]


def test_user_add_creates_a_user(database_url, db):
    user_id = new_user_id()
    result = cli("user", "add", user_id, database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"user {user_id} (user)"
    with db.connect() as conn:
        assert conn.run("SELECT role FROM users WHERE id = :id", id=user_id) == [["user"]]


def test_user_add_admin_creates_an_admin(database_url, db):
    user_id = new_user_id()
    result = cli("user", "add", user_id, "--admin", database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"user {user_id} (admin)"
    with db.connect() as conn:
        assert conn.run("SELECT role FROM users WHERE id = :id", id=user_id) == [["admin"]]


def test_token_issue_prints_the_token_once_on_its_own_last_line(issued):
    lines = issued.output.stdout.splitlines()

    assert lines[-1].startswith(auth.TOKEN_PREFIX)
    assert lines[-1] == lines[-1].strip()
    assert issued.output.stdout.count(issued.token) == 1
    assert issued.token not in issued.output.stderr


def test_token_issue_stores_only_the_sha256_of_the_token(issued, module_db):
    rows = token_rows(module_db, issued.user_id)

    assert len(rows) == 1
    assert rows[0]["token_hash"] == hashlib.sha256(issued.token.encode()).hexdigest()
    assert all(issued.token not in str(value) for value in rows[0].values())


def test_token_issue_stores_the_label_and_an_expiry_that_many_days_ahead(issued, module_db):
    (row,) = token_rows(module_db, issued.user_id)

    assert row["label"] == "laptop"
    assert row["expires_at"] - row["created_at"] == timedelta(days=7)
    assert abs(row["expires_at"] - (datetime.now(UTC) + timedelta(days=7))) < timedelta(minutes=5)


def test_an_issued_token_authenticates_its_user(issued, module_db):
    principal = auth.authenticate(module_db, f"Bearer {issued.token}")

    assert principal is not None
    assert principal.user_id == issued.user_id
    assert principal.role == "user"
    assert str(principal.token_id) == issued.token_id


def test_token_revoke_stops_the_token_from_authenticating(database_url, db):
    revoked = issue(database_url)
    assert auth.authenticate(db, f"Bearer {revoked.token}") is not None

    result = cli("token", "revoke", revoked.token_id, database_url=database_url)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"revoked token {revoked.token_id} of {revoked.user_id}")
    assert auth.authenticate(db, f"Bearer {revoked.token}") is None


def test_token_revoke_of_an_unknown_id_fails_clearly(database_url):
    unknown = str(uuid.uuid4())
    result = cli("token", "revoke", unknown, database_url=database_url)

    assert result.returncode != 0
    assert result.stderr.strip() == f"error: no token {unknown}"


def test_token_revoke_of_a_malformed_id_fails_clearly(database_url):
    result = cli("token", "revoke", "not-a-uuid", database_url=database_url)

    assert result.returncode != 0
    assert "'not-a-uuid' is not a token id" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_issue_for_a_missing_user_fails_clearly(database_url):
    missing = new_user_id("missing")
    result = cli("token", "issue", missing, database_url=database_url)

    assert result.returncode == 1
    assert f"no user '{missing}'" in result.stderr
    assert f"user add {missing}" in result.stderr
    assert result.stdout == ""


def test_token_issue_refuses_zero_expiry_days(database_url, db):
    user_id = new_user_id()
    assert cli("user", "add", user_id, database_url=database_url).returncode == 0

    result = cli("token", "issue", user_id, "--expires-days", "0", database_url=database_url)

    assert result.returncode != 0
    assert "--expires-days must be a positive number" in result.stderr
    assert auth.TOKEN_PREFIX not in result.stdout
    assert token_rows(db, user_id) == []


def test_a_command_without_a_database_url_says_how_to_set_it():
    result = cli("user", "add", new_user_id(), database_url=None)

    assert result.returncode != 0
    assert "CHITTY_DATABASE_URL is not set" in result.stderr
    assert "postgres://" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_malformed_database_url_fails_clearly():
    result = cli("migrate", database_url="mysql://somewhere/db")

    assert result.returncode != 0
    assert "must start with postgres://" in result.stderr
    assert "Traceback" not in result.stderr


def test_user_add_with_an_invalid_user_id_fails_clearly(database_url, db):
    result = cli("user", "add", "has space", database_url=database_url)

    assert result.returncode == 1
    assert result.stderr.startswith("error: ")
    assert "users_id_check" in result.stderr
    assert "Traceback" not in result.stderr
    with db.connect() as conn:
        assert conn.run("SELECT count(*) FROM users WHERE id = 'has space'") == [[0]]

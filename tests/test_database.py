"""The data layer: self-healing connections, safe retries, TLS settings from the URL, named queries."""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from pg8000.exceptions import DatabaseError

from chalicelib.db import (
    SQL_DIR,
    Database,
    DatabaseUnavailable,
    DatabaseURLError,
    Transaction,
    connect_kwargs,
    connection,
    load_queries,
)
from tests.clients import modern_headers, modern_request, post, sse_messages

BACKEND_PID = {"backend_pid": "SELECT pg_backend_pid() AS pid"}
APPLICATION_NAME = "chitty-chatgpt-mcp"


@pytest.fixture
def pid_db(database_url: str) -> Iterator[Database]:
    """A Database with the project's queries and one more: the pid of the backend serving it."""
    database = Database(url=database_url, queries={**load_queries(SQL_DIR / "queries"), **BACKEND_PID})
    yield database
    database.discard()


def terminate(database_url: str, pid: int) -> None:
    """End a backend from another connection, waiting until it is gone."""
    with connection(database_url) as conn:
        assert conn.run("SELECT pg_terminate_backend(:pid, 5000)", pid=pid) == [[True]]


def backend_pid(db: Database | Transaction) -> int:
    row = db.one("backend_pid")
    assert row is not None
    return int(row["pid"])


def user_count(database_url: str, user_id: str) -> int:
    with connection(database_url) as conn:
        return int(conn.run("SELECT count(*) FROM users WHERE id = :id", id=user_id)[0][0])


def test_a_connection_the_server_dropped_is_replaced_and_the_query_succeeds(pid_db, database_url):
    first = backend_pid(pid_db)
    terminate(database_url, first)

    second = backend_pid(pid_db)

    assert second != first


def test_a_request_after_the_server_dropped_its_connections_still_succeeds(server, alice, db, database_url):
    def list_sessions() -> dict:
        response = post(
            server.mcp_url,
            modern_request("tools/call", {"name": "chitty_chat_session_list", "arguments": {}}),
            token=alice.token,
            headers=modern_headers("tools/call", "chitty_chat_session_list"),
        )
        assert response.status_code == 200, response.text
        if response.headers["content-type"].startswith("text/event-stream"):
            return sse_messages(response.text)[-1]
        return response.json()

    assert not list_sessions()["result"].get("isError")
    db.discard()  # so that the connections left to end are the server's
    with connection(database_url) as conn:
        ended = conn.run(
            """SELECT pid, pg_terminate_backend(pid, 5000)
               FROM pg_stat_activity
               WHERE datname = current_database()
                 AND application_name = :name
                 AND pid <> pg_backend_pid()""",
            name=APPLICATION_NAME,
        )
    assert ended, "the server had no connection to end"

    answer = list_sessions()

    assert "error" not in answer
    assert not answer["result"].get("isError")


def test_transaction_is_retried_when_the_connection_died_before_commit(pid_db, database_url):
    user_id = f"retried-{uuid.uuid4().hex[:10]}"
    attempts: list[int] = []

    def work(tx: Transaction) -> int:
        pid = backend_pid(tx)
        attempts.append(pid)
        if len(attempts) == 1:
            terminate(database_url, pid)
        tx.one("add_user", user_id=user_id, display_name=user_id, role="user")
        return pid

    result = pid_db.transaction(work)

    assert len(attempts) == 2
    assert result == attempts[1] != attempts[0]
    assert user_count(database_url, user_id) == 1


def test_transaction_is_not_retried_once_commit_was_sent(pid_db, database_url):
    user_id = f"not-retried-{uuid.uuid4().hex[:10]}"
    attempts: list[int] = []

    def work(tx: Transaction) -> None:
        tx.one("add_user", user_id=user_id, display_name=user_id, role="user")
        attempts.append(backend_pid(tx))
        # The connection dies after the work and before its COMMIT is answered.
        terminate(database_url, attempts[-1])

    with pytest.raises(DatabaseUnavailable):
        pid_db.transaction(work)

    assert len(attempts) == 1
    assert user_count(database_url, user_id) == 0
    assert backend_pid(pid_db) != attempts[0]


def test_a_remote_host_without_sslmode_gets_verified_tls():
    context = connect_kwargs("postgresql://app@db.example.com/chitty", 5)["ssl_context"]

    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_sslmode_require_encrypts_without_verifying():
    context = connect_kwargs("postgresql://app@db.example.com/chitty?sslmode=require", 5)["ssl_context"]

    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE
    assert context.check_hostname is False


def test_sslmode_verify_ca_verifies_the_certificate_but_not_the_host_name():
    context = connect_kwargs("postgresql://app@db.example.com/chitty?sslmode=verify-ca", 5)["ssl_context"]

    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is False


def test_sslmode_disable_turns_tls_off():
    assert connect_kwargs("postgresql://app@db.example.com/chitty?sslmode=disable", 5)["ssl_context"] is False


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app@localhost/chitty",
        "postgresql://app@127.0.0.1/chitty",
        "postgresql://app@[::1]/chitty",
        "postgresql://app@/chitty?host=/var/run/postgresql",
    ],
)
def test_local_hosts_and_unix_sockets_use_no_tls_by_default(url):
    assert connect_kwargs(url, 5)["ssl_context"] is False


def test_a_unix_socket_url_connects_to_the_socket_in_that_directory():
    kwargs = connect_kwargs("postgresql://app@/chitty?host=/var/run/postgresql&port=5433", 5)

    assert kwargs["unix_sock"] == "/var/run/postgresql/.s.PGSQL.5433"
    assert "host" not in kwargs


@pytest.mark.parametrize("mode", ["prefer", "allow"])
def test_sslmode_prefer_on_a_remote_host_still_verifies(mode):
    context = connect_kwargs(f"postgresql://app@db.example.com/chitty?sslmode={mode}", 5)["ssl_context"]

    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


def test_an_unknown_sslmode_is_refused():
    with pytest.raises(DatabaseURLError, match="sslmode"):
        connect_kwargs("postgresql://app@db.example.com/chitty?sslmode=maybe", 5)


def test_a_url_with_another_scheme_is_refused():
    with pytest.raises(DatabaseURLError, match="postgres://"):
        connect_kwargs("mysql://app@db.example.com/chitty", 5)


def test_user_password_database_and_port_are_parsed_and_percent_decoded():
    kwargs = connect_kwargs("postgresql://app%40corp:p%40ss%2Fw%3Ard@db.example.com:6543/chitty%20prod", 5)

    assert kwargs["user"] == "app@corp"
    assert kwargs["password"] == "p@ss/w:rd"
    assert kwargs["database"] == "chitty prod"
    assert kwargs["host"] == "db.example.com"
    assert kwargs["port"] == 6543


def test_requiring_tls_from_a_server_without_tls_fails_instead_of_falling_back(admin_database_url):
    with connection(admin_database_url) as conn:
        if conn.run("SHOW ssl") != [["off"]]:
            pytest.skip("this PostgreSQL server offers TLS")
    separator = "&" if "?" in admin_database_url else "?"

    with pytest.raises(DatabaseUnavailable):
        Database(url=f"{admin_database_url}{separator}sslmode=require").connect()


def test_load_queries_refuses_a_name_defined_twice(tmp_path: Path):
    (tmp_path / "a.sql").write_text("-- name: find_thing\nSELECT 1;\n")
    (tmp_path / "b.sql").write_text("-- name: find_thing\nSELECT 2;\n")

    with pytest.raises(ValueError, match="find_thing"):
        load_queries(tmp_path)


def test_load_queries_refuses_a_name_defined_twice_in_one_file(tmp_path: Path):
    (tmp_path / "a.sql").write_text("-- name: find_thing\nSELECT 1;\n\n-- name: find_thing\nSELECT 2;\n")

    with pytest.raises(ValueError, match="find_thing"):
        load_queries(tmp_path)


TRICKY_TEXTS = [
    "it's",
    "'; DROP TABLE users; --",
    "back\\slash \\' and \\\\",
    "$1 $2 :name ::text",
    "dollar $$ quoted $$",
    "E'\\x41'",
    "unicode \u2713 \U0001d518 \u202e",
    "new\nline\ttab\r",
    "",
]


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "inlined"])
@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_values_come_back_verbatim_from_prepared_and_inlined_statements(database_url, text, prepared):
    database = Database(
        url=database_url,
        queries={"echo": "SELECT CAST(:value AS text) AS value, CAST(:n AS integer) AS n"},
        prepared=prepared,
    )
    try:
        assert database.one("echo", value=text, n=7) == {"value": text, "n": 7}
        assert database.one("echo", value=text, n=8) == {"value": text, "n": 8}
    finally:
        database.discard()


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "inlined"])
def test_a_nul_character_is_refused_by_the_database_not_smuggled(database_url, prepared):
    database = Database(url=database_url, queries={"echo": "SELECT CAST(:value AS text) AS value"}, prepared=prepared)
    try:
        with pytest.raises(DatabaseError):
            database.one("echo", value="before\x00after")
    finally:
        database.discard()


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "inlined"])
@pytest.mark.parametrize(("value", "expected"), [(-5, 15), (3, 7)], ids=["negative", "positive"])
def test_a_negative_number_after_a_minus_sign_is_subtracted_not_a_comment(database_url, prepared, value, expected):
    database = Database(
        url=database_url, queries={"minus": "SELECT 10-:n AS value, 'kept' AS after"}, prepared=prepared
    )
    try:
        assert database.one("minus", n=value) == {"value": expected, "after": "kept"}
    finally:
        database.discard()


@pytest.mark.parametrize("prepared", [True, False], ids=["prepared", "inlined"])
@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_a_non_finite_decimal_is_a_numeric_value_not_sql(database_url, prepared, value):
    database = Database(
        url=database_url, queries={"echo": "SELECT CAST(:n AS numeric) AS value, 1 AS one"}, prepared=prepared
    )
    try:
        row = database.one("echo", n=value)
    finally:
        database.discard()
    assert row is not None
    assert str(row["value"]) == str(value)
    assert row["one"] == 1


ECHO = {"echo": "SELECT CAST(:value AS integer) + 1 AS value", **BACKEND_PID}


def test_a_named_query_is_prepared_once_per_connection_then_takes_one_round_trip(database_url):
    database = Database(url=database_url, queries=ECHO)
    try:
        counts = []
        for value in (1, 2, 3):
            before = database.round_trips
            assert database.one("echo", value=value) == {"value": value + 1}
            counts.append(database.round_trips - before)
        assert counts == [2, 1, 1]
    finally:
        database.discard()


def test_statements_a_pooler_lost_are_replaced_by_plain_statements_and_the_query_answers(database_url):
    database = Database(url=database_url, queries=ECHO)
    try:
        assert database.one("echo", value=1) == {"value": 2}
        # What a transaction pooler without prepared statement support looks like: the next server
        # connection has never seen the statement.
        conn = database._acquire()
        conn.run("DEALLOCATE ALL")
        database._release(conn)

        assert database.one("echo", value=41) == {"value": 42}
        assert database.prepared is False
        assert database.one("echo", value=1) == {"value": 2}
    finally:
        database.discard()


def test_a_statement_name_taken_on_the_server_falls_back_to_plain_statements(database_url):
    database = Database(url=database_url, queries=ECHO)
    try:
        conn = database._acquire()
        conn.run("PREPARE pg8000_statement_0 AS SELECT 1")  # another client's statement, through a pooler
        database._release(conn)

        assert database.one("echo", value=1) == {"value": 2}
        assert database.prepared is False
    finally:
        database.discard()


def test_a_prepared_statement_whose_table_changed_is_prepared_again(database_url):
    table = f"probe_{uuid.uuid4().hex[:8]}"
    database = Database(url=database_url, queries={"probe": f"SELECT * FROM {table} WHERE id = CAST(:id AS integer)"})
    with connection(database_url) as conn:
        conn.run(f"CREATE TABLE {table} (id integer)")
        conn.run(f"INSERT INTO {table} VALUES (1)")
    try:
        assert database.one("probe", id=1) == {"id": 1}
        with connection(database_url) as conn:
            conn.run(f"ALTER TABLE {table} ADD COLUMN label text DEFAULT 'added'")

        assert database.one("probe", id=1) == {"id": 1, "label": "added"}
        assert database.prepared is True
    finally:
        database.discard()
        with connection(database_url) as conn:
            conn.run(f"DROP TABLE {table}")


@pytest.mark.parametrize(("value", "prepared"), [("off", False), ("0", False), ("on", True), (None, True)])
def test_prepared_statements_follow_the_setting(monkeypatch, database_url, value, prepared):
    from chalicelib import config, db

    monkeypatch.setenv("CHITTY_DATABASE_URL", database_url)
    if value is None:
        monkeypatch.delenv("CHITTY_DB_PREPARED_STATEMENTS", raising=False)
    else:
        monkeypatch.setenv("CHITTY_DB_PREPARED_STATEMENTS", value)
    monkeypatch.setattr(db, "_database", None)
    config.get_settings.cache_clear()
    try:
        assert db.get_database().prepared is prepared
    finally:
        config.get_settings.cache_clear()

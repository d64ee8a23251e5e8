"""PostgreSQL through pg8000: one connection per container, named queries, safe retries.

A Lambda container serves one request at a time, so a single connection, opened on first
use and kept for the life of the container, is all it needs. A connection the server
dropped while it was idle (restart, idle timeout, pg_terminate_backend) is noticed before
anything is sent on it and replaced. A statement that was sent is never sent again blindly:
when its answer does not come (a lost connection, no answer within the timeout), the caller
learns that its outcome is unknown (`OutcomeUnknown`); only a transaction that had not sent
its COMMIT is run again, since the server rolls it back.

Each named query becomes a prepared statement on the connection the first time it runs
there: from then on it costs one round trip and no parsing or planning. Behind a pooler
that does not keep prepared statements (CHITTY_DB_PREPARED_STATEMENTS=off, or after the
first statement such a pooler loses) the queries go as plain statements, values inlined.
"""

from __future__ import annotations

import contextlib
import decimal
import functools
import math
import re
import select
import ssl
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import pg8000.core
import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError
from pg8000.native import literal, to_statement

T = TypeVar("T")

# pg8000 (pinned) writes a Flush after every extended-protocol message, so the server answers one
# statement in up to three writes (BindComplete, the rows, ReadyForQuery) and the client may wake
# for each. Every pg8000 exchange ends with a Sync before it reads, and a Sync alone makes the
# server send everything at once: without the Flushes a statement costs one wake-up, not three.
pg8000.core.FLUSH_MSG = b""
# sql/ sits beside chalicelib/ in a checkout and in the deployment too, where the link vendor/sql puts it.
SQL_DIR = Path(__file__).parent.parent / "sql"
Row = dict[str, Any]

LOCAL_DB_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# SQLSTATE classes and codes that mean the connection is gone, not that the statement failed.
_CONNECTION_LOST_CODES = frozenset({"57P01", "57P02", "57P03"})
# A prepared statement that went missing (26000) or a name already taken (42P05): a pooler hands our
# statements to other server connections. Both arrive before anything was executed.
_STATEMENTS_NOT_KEPT = frozenset({"26000", "42P05"})
# "cached plan must not change result type": a migration changed what a prepared statement reads.
_STALE_PLAN = "0A000"
_NAME_LINE = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached right now. Its message is safe to show to users; `detail`
    (the driver's or server's reason) is for operators: logs and the admin command line."""

    def __init__(self, message: str = "The database is unavailable; try again shortly.", detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class OutcomeUnknown(DatabaseUnavailable):
    """A statement was sent, but its answer never came: it may have run, and even committed."""

    def __init__(
        self,
        message: str = "The database did not answer, so whether this was saved is unknown; check before repeating it.",
        detail: str = "",
    ) -> None:
        super().__init__(message, detail)


class DatabaseURLError(ValueError):
    """CHITTY_DATABASE_URL cannot be understood."""


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE code of a pg8000 DatabaseError, if it carries one."""
    if isinstance(error, DatabaseError) and error.args and isinstance(error.args[0], dict):
        code = error.args[0].get("C")
        return str(code) if code else None
    return None


def error_message(error: BaseException) -> str:
    """The server's one-line message of a pg8000 DatabaseError (its M field), else str(error)."""
    if isinstance(error, DatabaseError) and error.args and isinstance(error.args[0], dict):
        message = error.args[0].get("M")
        if message:
            return str(message)
    return str(error)


def _idle_and_alive(conn: pg8000.native.Connection) -> bool:
    """An idle connection has nothing to read: anything there (the server's goodbye, or the end of the
    stream) means the server closed it while it sat idle. Checked before a statement is sent on it."""
    sock = getattr(conn, "_usock", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _connection_lost(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return True
    if isinstance(error, InterfaceError):
        # pg8000 also raises InterfaceError for its own misuse (a missing parameter): that is no lost connection.
        return isinstance(error.__cause__, OSError) or str(error) in ("network error", "connection is closed")
    code = sqlstate(error)
    return code is not None and (code in _CONNECTION_LOST_CODES or code.startswith("08"))


def _ssl_context(sslmode: str | None, host: str) -> ssl.SSLContext | bool:
    """TLS settings for pg8000: verified TLS for remote hosts unless the URL says otherwise.

    Remote hosts never fall back to plain text: `prefer` and `allow` are read as
    `verify-full`. Only an explicit `sslmode=disable` turns TLS off.
    """
    local = host in LOCAL_DB_HOSTS or host.startswith("/")
    mode = sslmode or ("disable" if local else "verify-full")
    if mode == "disable" or (local and mode in ("allow", "prefer")):
        return False
    context = ssl.create_default_context()
    if mode == "require":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif mode == "verify-ca":
        context.check_hostname = False
    elif mode not in ("verify-full", "allow", "prefer"):
        raise DatabaseURLError(f"unsupported sslmode {mode!r} in CHITTY_DATABASE_URL")
    return context


def connect_kwargs(url: str, timeout: float) -> dict[str, Any]:
    """pg8000 connection arguments for a postgres:// URL.

    A `host=/dir` query parameter (or an empty host) selects a Unix socket in that
    directory, as libpq does.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise DatabaseURLError("CHITTY_DATABASE_URL must start with postgres:// or postgresql://")
    query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
    port = parts.port or int(query.get("port", 5432))
    socket_dir = query.get("host") if query.get("host", "").startswith("/") else None
    host = parts.hostname or query.get("host") or "localhost"
    kwargs: dict[str, Any] = {
        "user": unquote(parts.username or query.get("user", "postgres")),
        "password": unquote(parts.password) if parts.password else query.get("password"),
        "database": unquote(parts.path.lstrip("/")) or query.get("dbname") or None,
        "timeout": timeout,
        "application_name": query.get("application_name", "chitty-chatgpt-mcp"),
    }
    if socket_dir:
        kwargs["unix_sock"] = f"{socket_dir}/.s.PGSQL.{port}"
        kwargs["ssl_context"] = _ssl_context(query.get("sslmode"), socket_dir)
    else:
        kwargs["host"] = host
        kwargs["port"] = port
        kwargs["ssl_context"] = _ssl_context(query.get("sslmode"), host)
    return kwargs


def load_queries(directory: Path) -> dict[str, str]:
    """Named queries from `-- name: x` blocks in every .sql file of a folder."""
    queries: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        names = list(_NAME_LINE.finditer(text))
        for index, match in enumerate(names):
            end = names[index + 1].start() if index + 1 < len(names) else len(text)
            name = match.group(1)
            if name in queries:
                raise ValueError(f"query {name!r} is defined twice (second time in {path.name})")
            queries[name] = text[match.end() : end].strip().rstrip(";")
    return queries


_PLACEHOLDER = re.compile(r"\$(\d+)")
_INLINE_TYPES = (str, int, float, bool, type(None), decimal.Decimal)


@functools.lru_cache(maxsize=512)
def _parsed(sql: str) -> tuple[str, Callable[[dict[str, Any]], tuple[Any, ...]]]:
    return to_statement(sql)


def execute(conn: pg8000.native.Connection, sql: str, params: dict[str, Any]) -> list[list[Any]] | None:
    """Run a query with named parameters, unprepared, in one round trip where that is safe.

    For transactions, and for connections that cannot keep prepared statements. pg8000's
    unnamed extended protocol costs three round trips a statement (parse, describe,
    execute). When every value is a plain scalar and the server reads standard-conforming
    strings, the values are inlined as literals by pg8000's own quoting, as psycopg2 does,
    and the statement goes in one simple-protocol round trip. Anything else (bytes, NUL
    characters, non-finite floats) takes the extended protocol.
    """
    if not params:
        return conn.run(sql)
    statement, make_values = _parsed(sql)
    values = make_values(params)
    inline = conn.parameter_statuses.get("standard_conforming_strings") == "on" and all(
        isinstance(value, _INLINE_TYPES)
        and not (isinstance(value, str) and "\x00" in value)
        and not (isinstance(value, float) and not math.isfinite(value))
        and not (isinstance(value, decimal.Decimal) and not value.is_finite())
        for value in values
    )
    if not inline:
        return conn.run(sql, **params)
    literals = [_inline_literal(value) for value in values]
    return conn.run(_PLACEHOLDER.sub(lambda match: literals[int(match.group(1)) - 1], statement))


def _inline_literal(value: Any) -> str:
    """pg8000's literal, with negative numbers in parentheses: `10-:n` with n = -5 must not become
    `10--5`, which SQL reads as 10 followed by a comment."""
    text = literal(value)
    return f"({text})" if text.startswith("-") else text


def _rows(columns: list[dict[str, Any]] | None, result: list[list[Any]] | None) -> list[Row]:
    if not result or not columns:
        return []
    names = [column["name"] for column in columns]
    return [dict(zip(names, row, strict=True)) for row in result]


@dataclass
class Transaction:
    """Runs named queries inside one open transaction."""

    conn: pg8000.native.Connection
    queries: dict[str, str]
    database: Database

    def all(self, name: str, **params: Any) -> list[Row]:
        self.database.round_trips += 1
        result = execute(self.conn, self.queries[name], params)
        return _rows(self.conn.columns, result)

    def one(self, name: str, **params: Any) -> Row | None:
        rows = self.all(name, **params)
        return rows[0] if rows else None


@dataclass
class Database:
    """Self-healing connections, opened lazily, and the named queries of sql/queries/.

    A Lambda container runs one request at a time, so it holds one connection for life.
    `chalice local` answers requests on threads: each operation takes an idle connection
    (or opens one) and gives it back, so concurrent requests never share one.
    """

    url: str
    timeout: float = 10.0
    queries: dict[str, str] = field(default_factory=dict)
    round_trips: int = 0
    prepared: bool = True
    _idle: list[pg8000.native.Connection] = field(default_factory=list, repr=False)
    _statements: weakref.WeakKeyDictionary[pg8000.native.Connection, dict[str, pg8000.native.PreparedStatement]] = (
        field(default_factory=weakref.WeakKeyDictionary, repr=False)
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def connect(self) -> pg8000.native.Connection:
        """A new connection of its own (for migrations and tests); the caller closes it."""
        try:
            return pg8000.native.Connection(**connect_kwargs(self.url, self.timeout))
        except (InterfaceError, OSError) as error:
            raise DatabaseUnavailable(detail=str(error.__cause__ or error)) from error
        except DatabaseError as error:
            # Refused at the door (bad password, no such database, not accepting connections, shutting down):
            # for the server it is all the same, the database cannot be used now.
            raise DatabaseUnavailable(detail=error_message(error)) from error

    def _acquire(self) -> pg8000.native.Connection:
        while True:
            with self._lock:
                if not self._idle:
                    break
                conn = self._idle.pop()
            if _idle_and_alive(conn):
                return conn
            # The server closed it while it was idle; so it most likely did the others too.
            self._close(conn)
            self.discard()
        return self.connect()

    def _release(self, conn: pg8000.native.Connection) -> None:
        with self._lock:
            self._idle.append(conn)

    @staticmethod
    def _close(conn: pg8000.native.Connection) -> None:
        # The connection may already be broken; closing it is a courtesy that may fail.
        with contextlib.suppress(Exception):
            conn.close()

    def discard(self) -> None:
        """Close every idle connection; the next operation opens a fresh one."""
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._close(conn)

    def all(self, name: str, **params: Any) -> list[Row]:
        """Run one named query as its own transaction.

        Raises DatabaseUnavailable when no connection can be had, and OutcomeUnknown when the
        statement was sent but no answer came: it is not sent again, since it may have committed.
        """
        for attempt in (1, 2):
            conn = self._acquire()
            try:
                rows = self._run(conn, name, params)
            except (InterfaceError, OSError, DatabaseError) as error:
                if not _connection_lost(error):
                    self._release(conn)
                    if attempt == 1 and self._statement_refused(conn, error):
                        continue  # nothing ran: the same query again, as a plain statement or re-prepared
                    raise
                self._close(conn)
                self.discard()  # the server dropped one: the idle ones most likely went with it
                raise OutcomeUnknown(detail=str(error)) from error
            except BaseException:
                self._close(conn)
                raise
            self._release(conn)
            return rows
        raise AssertionError("unreachable")

    def _run(self, conn: pg8000.native.Connection, name: str, params: dict[str, Any]) -> list[Row]:
        if not params or not self.prepared:
            self.round_trips += 1
            result = execute(conn, self.queries[name], params)
            return _rows(conn.columns, result)
        statements = self._statements.setdefault(conn, {})
        statement = statements.get(name)
        if statement is None:
            self.round_trips += 1  # parse and describe, once per connection
            statement = statements[name] = conn.prepare(self.queries[name])
        self.round_trips += 1
        result = statement.run(**params)
        return _rows(statement.columns, result)

    def _statement_refused(self, conn: pg8000.native.Connection, error: BaseException) -> bool:
        """Forget prepared statements that cannot be used; True when the query may simply run again."""
        code = sqlstate(error)
        if self.prepared and code in _STATEMENTS_NOT_KEPT:
            self.prepared = False
            from chalicelib.logs import logger  # not at import: the logger reads the settings

            logger.warning(
                "the database connection does not keep prepared statements (a transaction pooler?); "
                "running plain statements from now on",
                extra={"sqlstate": code},
            )
            return True
        if code == _STALE_PLAN:
            self._statements.pop(conn, None)
            return True
        return False

    def one(self, name: str, **params: Any) -> Row | None:
        rows = self.all(name, **params)
        return rows[0] if rows else None

    def transaction(self, work: Callable[[Transaction], T]) -> T:
        """Run `work` in one transaction; if the connection drops before COMMIT, run it again."""
        for attempt in (1, 2):
            conn = self._acquire()
            committing = False
            try:
                conn.run("BEGIN")
                self.round_trips += 1
                result = work(Transaction(conn, self.queries, self))
                committing = True
                conn.run("COMMIT")
                self.round_trips += 1
            except (InterfaceError, OSError, DatabaseError) as error:
                if _connection_lost(error):
                    self._close(conn)
                    self.discard()
                    if committing:
                        raise OutcomeUnknown(detail=str(error)) from error
                    if attempt == 2:
                        raise DatabaseUnavailable(detail=str(error)) from error
                    continue  # not committed: the server rolls the transaction back
                self._rollback(conn)
                raise
            except BaseException:
                self._rollback(conn)
                raise
            self._release(conn)
            return result
        raise AssertionError("unreachable")

    def _rollback(self, conn: pg8000.native.Connection) -> None:
        try:
            conn.run("ROLLBACK")
        except (InterfaceError, OSError, DatabaseError):
            self._close(conn)
            return
        self._release(conn)


_lock = threading.Lock()
_database: Database | None = None


def get_database() -> Database:
    """The container's database handle, built on first use from the settings."""
    global _database
    if _database is None:
        from chalicelib.config import get_settings

        with _lock:
            if _database is None:
                settings = get_settings()
                _database = Database(
                    url=settings.require_database_url(),
                    timeout=settings.db_timeout,
                    prepared=settings.db_prepared_statements,
                    queries=load_queries(SQL_DIR / "queries"),
                )
    return _database


@contextmanager
def connection(url: str, timeout: float = 10.0) -> Iterator[pg8000.native.Connection]:
    """A short-lived connection of its own, closed on exit."""
    conn = Database(url=url, timeout=timeout).connect()
    try:
        yield conn
    finally:
        conn.close()

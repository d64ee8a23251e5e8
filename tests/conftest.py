"""Fixtures: a real PostgreSQL, the server under `chalice local`, users with bearer tokens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pg8000.native
import pytest

from chalicelib import auth, migrate
from chalicelib.db import SQL_DIR, Database, connection, load_queries
from devtools import embedded
from devtools.fake_openai import DEFAULT_CITATIONS, FakeOpenAI, is_reasoning_model
from tests.books import assert_books_balance
from tests.browser import browser  # noqa: F401 (the fixture, for every test module)

ROOT = Path(__file__).resolve().parent.parent
CHALICE = str(Path(sys.executable).parent / "chalice")
SERVER_OPENAI_KEY = "sk-server-" + "s" * 24 + "SRVK"
# A fixed test-only encryption key (32 bytes of base64), so tests can open what the server sealed.
ENCRYPTION_KEY = "dGVzdC1vbmx5LWVuY3J5cHRpb24ta2V5LTMyLWJ5dGU="


@pytest.fixture(scope="session")
def admin_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A PostgreSQL server: CHITTY_TEST_DATABASE_URL, or an embedded one of this run's own."""
    url = os.environ.get("CHITTY_TEST_DATABASE_URL")
    if url:
        return url
    return embedded.start(tmp_path_factory.mktemp("postgres") / "data", delete_on_exit=True)


@contextmanager
def migrated_database(admin_url: str, name: str) -> Iterator[str]:
    """A migrated database of its own, dropped at the end. After every test that used it, concurrency and
    fault tests included, its books must balance."""
    embedded.drop_database(admin_url, name)
    url = embedded.with_database(admin_url, name)
    with connection(url) as conn:
        migrate.apply(conn)
    yield url
    with connection(url) as conn:
        assert_books_balance(conn)
    embedded.drop_database(admin_url, name)


@pytest.fixture(scope="session")
def database_url(admin_database_url: str) -> Iterator[str]:
    """The database of this test run."""
    with migrated_database(admin_database_url, f"chitty_test_{os.getpid()}") as url:
        yield url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(url=database_url, queries=load_queries(SQL_DIR / "queries"))
    yield database
    database.discard()


@dataclass(frozen=True)
class User:
    user_id: str
    token: str
    token_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture(scope="module")
def conn(database_url: str) -> Iterator[pg8000.native.Connection]:
    """A raw connection to the test run's database in autocommit: each statement is its own transaction,
    with its own now()."""
    with connection(database_url) as raw:
        yield raw


@pytest.fixture(scope="module")
def user_id(conn: pg8000.native.Connection) -> str:
    """A user of the module's own, made with plain SQL."""
    user = f"user-{uuid.uuid4().hex[:10]}"
    conn.run("INSERT INTO users (id, display_name) VALUES (:id, :id)", id=user)
    return user


@pytest.fixture
def make_user(db: Database) -> Callable[..., User]:
    """Create a user with a fresh bearer token: make_user(admin=False, expires_days=None)."""

    def make(admin: bool = False, expires_days: int | None = None, prefix: str = "user") -> User:
        user_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        db.one("add_user", user_id=user_id, display_name=user_id, role="admin" if admin else "user")
        token = auth.new_token()
        row = db.one(
            "issue_token", user_id=user_id, token_hash=auth.hash_token(token), label="test", expires_days=expires_days
        )
        assert row is not None
        return User(user_id=user_id, token=token, token_id=str(row["id"]))

    return make


@pytest.fixture
def alice(make_user: Callable[..., User]) -> User:
    return make_user(prefix="alice")


@pytest.fixture
def bob(make_user: Callable[..., User]) -> User:
    return make_user(prefix="bob")


@pytest.fixture
def admin(make_user: Callable[..., User]) -> User:
    return make_user(admin=True, prefix="admin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A `chalice local` process serving the app on 127.0.0.1."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start_server(log_dir: Path, env: dict[str, str], wait_for_health: bool = True, port: int | None = None) -> Server:
    """Start `chalice local` with this environment (on `port`, else a free one) and wait until it answers."""
    port = port or free_port()
    log_path = log_dir / f"chalice-{port}.log"
    inherited = {key: value for key, value in os.environ.items() if key != "DEBUG"}
    full_env = {**inherited, "PYTHONUNBUFFERED": "1", "CHITTY_STAGE": "dev", **env}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            # chalice local's own gateway and handler, with a listen queue deep enough for the concurrency tests
            # (plain `chalice local` keeps 5 pending connects and resets the rest).
            [sys.executable, "-m", "devtools.serve", "--host", "127.0.0.1", "--port", str(port), "--stage", "dev"],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Server(process=process, port=port, log_path=log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"chalice local exited:\n{server.log_text()}")
        try:
            response = httpx2.get(f"{server.base_url}/health", timeout=5)
            if response.status_code == 200 or not wait_for_health:
                return server
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"chalice local did not answer in time:\n{server.log_text()}")


def start_make_run(run_dir: Path, database_url: str, fake: FakeOpenAI, env: dict[str, str] | None = None) -> Server:
    """`make run`'s own program (devtools.local: `chalice local`, its public URL its own address) serving the
    test database and the fake OpenAI, with these settings on top; waits until it answers."""
    port = free_port()
    log_path = run_dir / "make-run.log"
    full_env = {
        **{key: value for key, value in os.environ.items() if not key.startswith(("CHITTY_", "DEBUG"))},
        "CHITTY_RUN_DIR": str(run_dir),
        "CHITTY_DATABASE_URL": database_url,
        "CHITTY_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": SERVER_OPENAI_KEY,
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "devtools.local"], cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
    server = Server(process=process, port=port, log_path=log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"make run exited:\n{server.log_text()}")
        try:
            if httpx2.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return server
        except httpx2.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"make run did not answer in time:\n{server.log_text()}")


@pytest.fixture(scope="module")
def run_server(
    database_url: str, fake_openai_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """`make run`'s own server for a module: its public URL, the issuer, is its own http://127.0.0.1:PORT."""
    server = start_make_run(tmp_path_factory.mktemp("make-run"), database_url, fake_openai_server)
    yield server
    server.stop()


# The password of the users the sign-in tests make.
PASSWORD = "correct horse battery staple"


def add_password(database_url: str, user_id: str) -> str:
    """Give the user PASSWORD, so they can sign in on the page (their login is their id)."""
    from chalicelib.oauth.passwords import hash_password

    with connection(database_url) as conn:
        conn.run(
            "INSERT INTO user_passwords (user_id, password_hash) VALUES (:u, :h)", u=user_id, h=hash_password(PASSWORD)
        )
    return user_id


def add_person(database_url: str, prefix: str = "person") -> str:
    """A new user with PASSWORD; their id."""
    user_id = f"{prefix}-{uuid.uuid4().hex[:8]}"
    with connection(database_url) as conn:
        conn.run("INSERT INTO users (id, display_name) VALUES (:u, :u)", u=user_id)
    return add_password(database_url, user_id)


@pytest.fixture
def person(database_url: str) -> str:
    """A user who can sign in with PASSWORD."""
    return add_person(database_url)


@pytest.fixture(scope="session")
def fake_openai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fake_openai(fake_openai_server: FakeOpenAI) -> Iterator[FakeOpenAI]:
    """The local OpenAI-compatible server the app talks to, with no scripts, recordings or settings left over."""
    fake_openai_server.reset()
    yield fake_openai_server
    fake = fake_openai_server
    fake.reset()
    fake.delay = fake.stream_chunk_delay = 0.0
    fake.reply = None
    fake.cached_tokens = fake.reasoning_tokens = fake.cache_write_tokens = 0
    fake.served_model.clear()
    fake.rejected_keys.clear()
    fake.served_tier = fake.reasoning_summary = None
    fake.web_searches = 1
    fake.citations = list(DEFAULT_CITATIONS)
    fake.accepted_efforts = {}
    fake.is_reasoning_model = is_reasoning_model


def server_env(database_url: str, fake: FakeOpenAI) -> dict[str, str]:
    """The environment of a server that uses this database and this fake OpenAI."""
    return {
        "CHITTY_DATABASE_URL": database_url,
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": SERVER_OPENAI_KEY,
        "CHITTY_ENCRYPTION_KEY": ENCRYPTION_KEY,
    }


@pytest.fixture(scope="session")
def server(
    database_url: str, fake_openai_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The app under `chalice local`, against the test database and the fake OpenAI."""
    running = start_server(tmp_path_factory.mktemp("server"), server_env(database_url, fake_openai_server))
    yield running
    running.stop()


# The public URL of the server that offers sign-in (the issuer; its MCP URL is PUBLIC/mcp).
PUBLIC = "https://chitty.example/api"


@pytest.fixture(scope="session")
def signed_server(
    database_url: str, fake_openai_server: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The app under `chalice local` with sign-in: CHITTY_PUBLIC_URL set (given with a trailing slash)."""
    env = {**server_env(database_url, fake_openai_server), "CHITTY_PUBLIC_URL": PUBLIC + "/"}
    running = start_server(tmp_path_factory.mktemp("signed"), env)
    yield running
    running.stop()


def make_grant(database_url: str, user_id: str, scope: str = "mcp", resource: str = PUBLIC + "/mcp") -> str:
    """An app the user connected (a consented grant of a registered client); its id."""
    with connection(database_url) as conn:
        client = "client-" + uuid.uuid4().hex
        conn.run(
            "INSERT INTO oauth_clients (client_id, kind, client_name, redirect_uris) "
            "VALUES (:c, 'registered', 'Test app', ARRAY['http://127.0.0.1:9/cb'])",
            c=client,
        )
        ((grant,),) = conn.run(
            "INSERT INTO oauth_grants (user_id, client_id, scope, resource) VALUES (:u, :c, :s, :r) RETURNING id",
            u=user_id,
            c=client,
            s=scope,
            r=resource,
        )
    return str(grant)

"""`make run` serves like a server: many clients at once, and its PostgreSQL ends with it however it ends."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2
import psutil
import pytest

from devtools.fake_openai import FakeOpenAI
from tests.conftest import ROOT, free_port


@dataclass
class Run:
    process: subprocess.Popen[str]
    port: int
    token: str
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def postmaster(run_dir: Path) -> psutil.Process | None:
    """The embedded PostgreSQL of a run folder, if it is running."""
    pid_file = run_dir / "pgdata" / "postmaster.pid"
    if not pid_file.exists():
        return None
    try:
        process = psutil.Process(int(pid_file.read_text().splitlines()[0]))
    except (psutil.NoSuchProcess, ValueError, IndexError):
        return None
    return process if process.is_running() and process.status() != psutil.STATUS_ZOMBIE else None


def start(run_dir: Path, fake: FakeOpenAI) -> Run:
    """`make run`'s program, in its own process group as a terminal would start it."""
    port = free_port()
    log = run_dir.parent / f"make-run-{port}.log"
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("CHITTY_")},
        "CHITTY_RUN_DIR": str(run_dir),
        "PORT": str(port),
        "PYTHONUNBUFFERED": "1",
        "OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-make-run-" + "r" * 24,
    }
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "devtools.local"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        found = re.search(r"^Bearer token: (\S+)$", log.read_text(), re.MULTILINE)
        if found:
            try:
                if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return Run(process, port, found.group(1), log)
            except httpx2.TransportError:
                pass
        time.sleep(0.2)
    process.kill()
    raise AssertionError(f"make run did not start:\n{log.read_text()}")


def wait_gone(process: psutil.Process | None, timeout: float = 30) -> bool:
    if process is None:
        return True
    try:
        process.wait(timeout)
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    directory = tmp_path / "run"
    yield directory
    left = postmaster(directory)
    if left is not None:
        left.terminate()
        wait_gone(left)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["ctrl-c", "sigterm", "sighup"])
def test_ending_make_run_stops_its_postgresql(run_dir, fake_openai, how):
    run = start(run_dir, fake_openai)
    database = postmaster(run_dir)
    assert database is not None

    if how == signal.SIGTERM:
        run.process.send_signal(how)  # `kill <pid>`
    else:
        os.killpg(run.process.pid, how)  # a terminal: Ctrl-C, or closing it, signals the whole group
    run.process.wait(timeout=30)

    assert wait_gone(database), run.log.read_text()


def test_a_run_killed_outright_neither_blocks_nor_confuses_the_next(run_dir, fake_openai):
    first = start(run_dir, fake_openai)
    orphaned = postmaster(run_dir)
    first.process.kill()
    first.process.wait(timeout=10)
    assert orphaned is not None
    assert orphaned.is_running()

    second = start(run_dir, fake_openai)
    assert postmaster(run_dir) is not None
    assert second.token == first.token
    second.process.send_signal(signal.SIGINT)
    second.process.wait(timeout=30)

    assert wait_gone(orphaned), second.log.read_text()


def test_sixty_four_clients_at_once_each_get_a_completion(run_dir, fake_openai):
    run = start(run_dir, fake_openai)
    fake_openai.delay = 0.2
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "chatgpt_complete", "arguments": {"messages": [{"role": "user", "content": "hi"}]}},
    }
    headers = {
        "Authorization": f"Bearer {run.token}",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2025-11-25",
    }

    def one_client(_: int) -> tuple[int, bool]:
        # A client of its own each: its own connection, opened at the same moment as the others.
        with httpx2.Client(timeout=60) as client:
            response = client.post(f"{run.base_url}/mcp", json=body, headers=headers)
            return response.status_code, response.json()["result"]["isError"]

    try:
        with ThreadPoolExecutor(max_workers=64) as pool:
            answers = list(pool.map(one_client, range(64)))
    finally:
        run.process.send_signal(signal.SIGINT)
        run.process.wait(timeout=30)

    assert answers == [(200, False)] * 64
    assert len(fake_openai.chat_requests) == 64


def test_the_server_queues_many_connects_and_keeps_connections_alive(run_dir, fake_openai):
    run = start(run_dir, fake_openai)
    try:
        # What the kernel reports for the listening socket: its accept queue (Send-Q) holds 64 connects and more.
        listening = subprocess.run(
            ["ss", "-Hltn", f"sport = :{run.port}"], capture_output=True, text=True, check=True
        ).stdout.split()
        with httpx2.Client() as client:
            answers = [client.get(f"{run.base_url}/health") for _ in range(3)]
    finally:
        run.process.send_signal(signal.SIGINT)
        run.process.wait(timeout=30)

    assert int(listening[2]) >= 64
    assert [answer.status_code for answer in answers] == [200, 200, 200]

"""The development server: `make run`'s server against plain `chalice local`, on one kept-alive connection.

Both serve the same app against the same database; a client sends `tools/list` requests one after
another on a single kept-alive connection (as every MCP client does) and times each answer.
Usage: python -m bench.dev_server [--requests 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx2

from bench.environment import ROOT, fresh_database, machine, percentile, table, user_with_token
from devtools.fake_openai import FakeOpenAI

HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
BODY = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
# make run's server, started from Python as devtools.local starts it, and chalice's own command.
SERVERS = {
    "make run (devtools.serve)": [
        sys.executable,
        "-c",
        "import sys; from devtools import serve; serve.create('127.0.0.1', int(sys.argv[1])).serve_forever()",
    ],
    "chalice local": [os.path.join(os.path.dirname(sys.executable), "chalice"), "local", "--no-autoreload", "--port"],
}


@contextmanager
def serving(command: list[str], port: int, env: dict[str, str]) -> Iterator[str]:
    process = subprocess.Popen(
        [*command, str(port)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx2.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def timings(base: str, token: str, requests: int) -> list[float]:
    """Milliseconds per `tools/list`, one after another on one kept-alive connection (after a warm-up)."""
    samples = []
    with httpx2.Client(headers={**HEADERS, "Authorization": f"Bearer {token}"}, timeout=30) as client:
        for index in range(requests + 20):
            started = time.perf_counter()
            response = client.post(f"{base}/mcp", json=BODY)
            elapsed = (time.perf_counter() - started) * 1000
            assert response.status_code == 200, response.text
            if index >= 20:
                samples.append(elapsed)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    url = fresh_database("bench_dev_server")
    token = user_with_token(url)
    rows = []
    with FakeOpenAI() as fake:
        env = {**os.environ, "CHITTY_DATABASE_URL": url, "OPENAI_BASE_URL": fake.base_url, "CHITTY_STAGE": "dev"}
        for port, (name, command) in enumerate(SERVERS.items(), start=18640):
            with serving(command, port, env) as base:
                samples = timings(base, token, args.requests)
            rows.append([name, str(len(samples))] + [f"{percentile(samples, q):.2f}" for q in (0.5, 0.95, 0.99)])
    print(
        table(
            "Development server: tools/list on one kept-alive connection (ms)",
            ["server", "requests", "p50", "p95", "p99"],
            rows,
            [machine(), "each answer timed at the client, after 20 requests of warm-up"],
        )
    )


if __name__ == "__main__":
    main()

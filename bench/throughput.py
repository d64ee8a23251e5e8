"""Throughput of the bookkeeping: completions recorded per second with 1, 8 and 32 concurrent callers.

Each caller invokes the Lambda handler in process (a thread per caller, as many warm
containers would), against a local upstream that answers at once, so what is measured is the
server's own work: authentication, prepare_completion, record_completion with its triggers,
and the log line. Callers either each have a session of their own, or all share one (where
the per-session row lock serialises the recording).
Usage: python -m bench.throughput [--completions 640]
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.environment import fresh_database, machine, table, upstream_process, user_with_token
from bench.gateway import _configure, quiet
from devtools.apigateway import LambdaContext, proxy_event


def _call(token: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    import app

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"}
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    )
    answer = app.app(proxy_event("POST", "/mcp", headers, body), LambdaContext())
    result: dict[str, Any] = json.loads(answer["body"])["result"]
    if result["isError"]:
        raise RuntimeError(result["content"][0]["text"])
    return result


def run_case(token: str, callers: int, completions: int, shared: bool) -> tuple[float, float]:
    """Completions per second, and database round trips per completion."""
    from chalicelib.db import get_database

    def new_session() -> str:
        return str(
            _call(token, "chitty_chat_session_create", {"session_name": "bench"})["structuredContent"]["session_id"]
        )

    shared_session = new_session() if shared else None
    sessions = [shared_session or new_session() for _ in range(callers)]
    per_caller = max(1, completions // callers)

    def caller(index: int) -> None:
        for turn in range(per_caller):
            arguments = {"messages": [{"role": "user", "content": f"turn {turn}"}], "session_id": sessions[index]}
            _call(token, "chatgpt_complete", arguments)

    database = get_database()
    before = database.round_trips
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=callers) as pool:
        list(pool.map(caller, range(callers)))
    elapsed = time.perf_counter() - started
    done = per_caller * callers
    return done / elapsed, (database.round_trips - before) / done


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--completions", type=int, default=640, help="per case, spread over the callers")
    args = parser.parse_args(argv)
    url = fresh_database("chitty_bench_throughput")
    token = user_with_token(url)
    rows = []
    with upstream_process(0.0) as base_url:
        _configure(url, base_url)
        import app  # noqa: F401 - warm the container before measuring

        with quiet():
            run_case(token, 1, 20, shared=False)
            for shared in (False, True):
                for callers in (1, 8, 32):
                    rate, trips = run_case(token, callers, args.completions, shared)
                    rows.append(
                        [
                            "one shared session" if shared else "a session each",
                            str(callers),
                            f"{rate:.0f}",
                            f"{trips:.2f}",
                        ]
                    )
    notes = [
        machine(),
        f"{args.completions} completions per case; upstream answers at once; PostgreSQL on the same machine",
        "round trips counted by the database layer: prepare_completion and record_completion per completion",
    ]
    return table(
        "Bookkeeping throughput (chatgpt_complete through the handler)",
        ["sessions", "callers", "completions/s", "db round trips per completion"],
        rows,
        notes,
    )


if __name__ == "__main__":
    print(main())

"""Background completions: how fast `background: true` answers, whatever the upstream takes.

The Chalice app is invoked in process with an API Gateway proxy event (warm, as Lambda calls it), against a
local upstream that takes --delay-ms to answer. Two ways to hand the job to a worker:
- local: `make run`'s runner, a worker process per job (its start is part of the answer); each job is waited
  for before the next call, so that workers do not load the machine while the answer is timed;
- hand-off only: the dispatch replaced by a no-op, which leaves what the gateway itself does (on AWS the
  asynchronous Invoke call, a few ms inside a region, comes on top); the jobs are then cancelled.
Usage: python -m bench.jobs [--calls 30] [--quick-calls 300] [--delay-ms 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

from bench.environment import fresh_database, latency_row, machine, table, upstream_process, user_with_token
from bench.gateway import _configure, quiet
from devtools.apigateway import LambdaContext, proxy_event


def _call(token: str) -> tuple[float, str]:
    import app

    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "chatgpt_complete",
                "arguments": {
                    "messages": [{"role": "user", "content": "A long answer, please."}],
                    "model": "gpt-4o-mini",
                    "background": True,
                },
            },
        }
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"}
    event = proxy_event("POST", "/mcp", headers, body)
    started = time.perf_counter()
    answer = app.app(event, LambdaContext())
    elapsed = (time.perf_counter() - started) * 1000
    result = json.loads(answer["body"])["result"]
    if result["isError"]:
        raise RuntimeError(result["content"][0]["text"])
    return elapsed, result["structuredContent"]["job_id"]


def _status(job_id: str) -> str:
    from chalicelib.db import get_database

    row = get_database().one("get_job", job_id=job_id, caller="", caller_is_admin=True)
    assert row is not None
    return str(row["status"])


def measure_local(token: str, calls: int) -> tuple[list[float], list[float]]:
    """Answer times with the local runner, and each job's time to completion (ms)."""
    answers, completions = [], []
    for index in range(calls + 3):
        started = time.perf_counter()
        elapsed, job_id = _call(token)
        while _status(job_id) not in ("completed", "failed", "cancelled"):
            time.sleep(0.02)
        if index >= 3:
            answers.append(elapsed)
            completions.append((time.perf_counter() - started) * 1000)
    return answers, completions


def measure_hand_off(token: str, calls: int) -> list[float]:
    """Answer times with the dispatch a no-op; the queued jobs are then cancelled."""
    from chalicelib import jobs
    from chalicelib.db import get_database

    queued: list[str] = []
    original = jobs.dispatch
    jobs.dispatch = queued.append  # type: ignore[assignment]
    try:
        answers = [_call(token)[0] for _ in range(calls + 20)][20:]
    finally:
        jobs.dispatch = original  # type: ignore[assignment]
    db = get_database()
    for job_id in queued:  # never sent: cancelled, as a user would, which holds nothing
        row = db.one("cancel_job", job_id=job_id, caller="", caller_is_admin=True)
        assert row is not None
        db.one("release_reservation", turn_id=str(row["turn_id"]))
    return answers


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30)
    parser.add_argument("--quick-calls", type=int, default=300)
    parser.add_argument("--delay-ms", type=float, default=2000.0, help="the fake upstream's time to answer")
    args = parser.parse_args(argv)
    url = fresh_database("chitty_bench_jobs")
    token = user_with_token(url)
    with upstream_process(args.delay_ms / 1000) as base_url:
        _configure(url, base_url, "chat")
        os.environ.update(CHITTY_JOB_RUNNER="local", CHITTY_DEFAULT_CONCURRENT_JOBS="none")
        with quiet():
            hand_off = measure_hand_off(token, args.quick_calls)
            local, completed = measure_local(token, args.calls)
    rows: list[Any] = [
        latency_row("answer, hand-off only (the gateway's part)", hand_off),
        latency_row("answer, local runner (worker process started)", local),
        latency_row("job completed, local runner", completed),
    ]
    notes = [
        machine(),
        f"upstream: a local OpenAI-compatible server in its own process that takes {args.delay_ms:g} ms; times in ms",
        "answer = auth + prepare_completion + enqueue_job + dispatch + log line: it does not wait for the upstream",
    ]
    return table(
        "Background completions (chatgpt_complete with background: true, in process)",
        ["path", "calls", "p50", "p95", "p99"],
        rows,
        notes,
    )


if __name__ == "__main__":
    print(main())

"""Gateway overhead: chatgpt_complete through the Lambda handler against the same upstream called directly.

Both paths hit one local OpenAI-compatible server with a fixed delay, alternating call by
call so that drift on a shared machine touches both alike. The gateway path is the Chalice
app invoked in process with an API Gateway proxy event, warm, exactly as Lambda calls it: it
authenticates, prepares, calls upstream, records the turn and its cost, and logs a line.
A second, instrumented pass over one-off calls shows where the gateway's time goes: its two
database round trips, its upstream call, and everything else it does.
Both wire formats: `--api chat` (Chat Completions, what OpenAI-compatible endpoints speak) and
`--api responses` (OpenAI's Responses API), the direct call being the SDK's matching method.
Usage: python -m bench.gateway [--api chat|responses] [--calls 2000] [--delay-ms 5] [--http-calls 300]
       [--breakdown-calls 500]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2

from bench.environment import ROOT, fresh_database, machine, percentile, table, upstream_process, user_with_token
from devtools.apigateway import LambdaContext, proxy_event

SERVER_KEY = "sk-bench-" + "k" * 32
MESSAGES = [{"role": "user", "content": "Summarise the indemnity clause in two sentences."}]


def _configure(url: str, base_url: str, api: str) -> dict[str, str]:
    env = {
        "CHITTY_UPSTREAM_API": api,
        "CHITTY_DATABASE_URL": url,
        "OPENAI_BASE_URL": base_url,
        "OPENAI_API_KEY": SERVER_KEY,
        "CHITTY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        # A benchmark's one user stores far more than a user's default storage quotas allow.
        "CHITTY_DEFAULT_SESSIONS": "none",
        "CHITTY_DEFAULT_MESSAGES_PER_SESSION": "none",
        "CHITTY_DEFAULT_BYTES_PER_SESSION": "none",
    }
    os.environ.update(env)
    return env


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Send the log lines and EMF metric lines to /dev/null: still produced (part of the cost), not shown."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        handlers = [
            handler
            for handler in logging.getLogger("chitty-chatgpt-mcp").handlers
            if isinstance(handler, logging.StreamHandler)
        ]
        streams = [handler.setStream(sink) for handler in handlers]
        try:
            yield
        finally:
            for handler, stream in zip(handlers, streams, strict=True):
                if stream is not None:
                    handler.setStream(stream)


def _direct(client: Any, messages: list[dict[str, str]]) -> None:
    """The same request straight through the SDK, in the wire format the gateway speaks."""
    if os.environ["CHITTY_UPSTREAM_API"] == "responses":
        client.responses.create(model="gpt-4o-mini", input=messages, store=False)
    else:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages)


def _stats(samples: list[float]) -> dict[str, float]:
    return {
        "p50": statistics.median(samples),
        "p95": percentile(samples, 0.95),
        "p99": percentile(samples, 0.99),
    }


def measure_in_process(token: str, calls: int, session_id: str | None) -> tuple[list[float], list[float]]:
    """Latencies in ms of direct SDK calls and of gateway calls, alternating."""
    import openai

    import app

    direct = openai.OpenAI(api_key=SERVER_KEY, base_url=os.environ["OPENAI_BASE_URL"], max_retries=0)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"}
    arguments: dict[str, Any] = {"messages": MESSAGES, "model": "gpt-4o-mini"}
    if session_id:
        arguments["session_id"] = session_id
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "chatgpt_complete", "arguments": arguments},
        }
    )
    context = LambdaContext()
    direct_ms: list[float] = []
    gateway_ms: list[float] = []
    for _ in range(60):  # warm both paths; in a session, fill the history window
        app.app(proxy_event("POST", "/mcp", headers, body), context)
    # The direct call sends exactly what the gateway sends upstream (in a session: history included).
    payload = _sent_upstream(session_id)
    for index in range(calls + 50):
        event = proxy_event("POST", "/mcp", headers, body)
        started = time.perf_counter()
        _direct(direct, payload)
        middle = time.perf_counter()
        answer = app.app(event, context)
        ended = time.perf_counter()
        if answer["statusCode"] != 200 or json.loads(answer["body"])["result"]["isError"]:
            raise RuntimeError(f"gateway call failed: {answer['body'][:300]}")
        if index >= 50:  # the first 50 warm both paths up
            direct_ms.append((middle - started) * 1000)
            gateway_ms.append((ended - middle) * 1000)
    return direct_ms, gateway_ms


def measure_breakdown(token: str, calls: int) -> dict[str, list[float]]:
    """One-off calls again, timing the database layer and the upstream call inside each (ms per call)."""
    import openai

    import app
    from chalicelib.db import Database
    from chalicelib.upstream import Upstream

    spent: dict[str, float] = {"database": 0.0, "upstream": 0.0}
    originals = {"database": (Database, "all", Database.all), "upstream": (Upstream, "complete", Upstream.complete)}

    def timed(part: str, function: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                spent[part] += (time.perf_counter() - started) * 1000

        return run

    direct = openai.OpenAI(api_key=SERVER_KEY, base_url=os.environ["OPENAI_BASE_URL"], max_retries=0)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json", "Accept": "application/json"}
    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "chatgpt_complete", "arguments": {"messages": MESSAGES, "model": "gpt-4o-mini"}},
        }
    )
    parts: dict[str, list[float]] = {"direct": [], "database": [], "upstream": [], "rest": [], "in_process": []}
    for part, (owner, name, function) in originals.items():
        setattr(owner, name, timed(part, function))
    try:
        for index in range(calls + 20):
            event = proxy_event("POST", "/mcp", headers, body)
            started = time.perf_counter()
            _direct(direct, MESSAGES)
            middle = time.perf_counter()
            spent.update(database=0.0, upstream=0.0)
            app.app(event, LambdaContext())
            total = (time.perf_counter() - middle) * 1000
            if index >= 20:
                parts["direct"].append((middle - started) * 1000)
                parts["database"].append(spent["database"])
                parts["upstream"].append(spent["upstream"])
                parts["rest"].append(total - spent["database"] - spent["upstream"])
                parts["in_process"].append(total - spent["database"] - parts["direct"][-1])
    finally:
        for owner, name, function in originals.values():
            setattr(owner, name, function)
    return parts


def measure_http(env: dict[str, str], token: str, calls: int) -> tuple[list[float], list[float]]:
    """The same comparison through `chalice local` over HTTP (for reference: its server is not Lambda's)."""
    import openai

    port = 8765
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "chalice"), "local", "--no-autoreload", "--port", str(port)],
        cwd=ROOT,
        env={**os.environ, **env, "LOG_LEVEL": "WARNING"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = httpx2.Client(timeout=30)
        for _ in range(100):
            try:
                if client.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx2.TransportError:
                time.sleep(0.1)
        direct = openai.OpenAI(api_key=SERVER_KEY, base_url=env["OPENAI_BASE_URL"], max_retries=0)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "chatgpt_complete", "arguments": {"messages": MESSAGES, "model": "gpt-4o-mini"}},
        }
        direct_ms: list[float] = []
        http_ms: list[float] = []
        for index in range(calls + 20):
            started = time.perf_counter()
            _direct(direct, MESSAGES)
            middle = time.perf_counter()
            response = client.post(f"http://127.0.0.1:{port}/mcp", json=body, headers=headers)
            ended = time.perf_counter()
            if response.status_code != 200:
                raise RuntimeError(response.text[:300])
            if index >= 20:
                direct_ms.append((middle - started) * 1000)
                http_ms.append((ended - middle) * 1000)
        return direct_ms, http_ms
    finally:
        process.terminate()
        process.wait()


def _sent_upstream(session_id: str | None) -> list[dict[str, str]]:
    """What the gateway sends upstream for the next call: the session's history window, then the message."""
    if session_id is None:
        return MESSAGES
    from chalicelib.config import get_settings
    from chalicelib.db import connection

    with connection(os.environ["CHITTY_DATABASE_URL"]) as conn:
        rows = conn.run(
            "SELECT role, content FROM (SELECT role, content, seq FROM chat_messages "
            "WHERE session_id = CAST(:s AS uuid) AND status = 'ok' ORDER BY seq DESC LIMIT :n) h ORDER BY seq",
            s=session_id,
            n=get_settings().history_messages,
        )
    return [{"role": role, "content": content} for role, content in rows] + MESSAGES


def _session(token: str) -> str:
    import app

    body = json.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "chitty_chat_session_create", "arguments": {"session_name": "bench"}},
        }
    )
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    answer = app.app(proxy_event("POST", "/mcp", headers, body), LambdaContext())
    return str(json.loads(answer["body"])["result"]["structuredContent"]["session_id"])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", choices=["chat", "responses"], default="chat", help="the wire format spoken upstream")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--delay-ms", type=float, default=5.0, help="the fake upstream's fixed latency")
    parser.add_argument("--http-calls", type=int, default=300)
    parser.add_argument("--breakdown-calls", type=int, default=500)
    args = parser.parse_args(argv)
    url = fresh_database("chitty_bench_gateway")
    token = user_with_token(url)
    rows = []
    with upstream_process(args.delay_ms / 1000) as base_url:
        env = _configure(url, base_url, args.api)
        with quiet():
            measured = {
                "in process, one-off": measure_in_process(token, args.calls, None),
                "in process, in a session": measure_in_process(token, args.calls, _session(token)),
            }
            breakdown = measure_breakdown(token, args.breakdown_calls) if args.breakdown_calls else None
        if args.http_calls:
            measured["HTTP via chalice local"] = measure_http(env, token, args.http_calls)
    for name, (direct, gateway) in measured.items():
        d, g = _stats(direct), _stats(gateway)
        rows.append(
            [
                name,
                str(len(gateway)),
                *(f"{d[q]:.2f}" for q in ("p50", "p95", "p99")),
                *(f"{g[q]:.2f}" for q in ("p50", "p95", "p99")),
                f"{g['p50'] - d['p50']:+.2f}",
                f"{g['p99'] - d['p99']:+.2f}",
                f"{g['p50'] / d['p50']:.2f}x",
            ]
        )
    header = ["path", "calls", "direct p50", "p95", "p99", "gateway p50", "p95", "p99", "overhead p50", "p99", "ratio"]
    notes = [
        machine(),
        f"upstream: a local OpenAI-compatible server in its own process, fixed delay {args.delay_ms:g} ms; times in ms",
        "gateway = auth + prepare_completion + upstream + record_completion + cost trigger + log line",
        "in a session, 50 messages of history go upstream each call; the direct call sends the same payload",
    ]
    names = {"chat": "Chat Completions", "responses": "the Responses API"}
    report = table(
        f"Gateway overhead over {names[args.api]} (chatgpt_complete vs the openai SDK directly)", header, rows, notes
    )
    if breakdown:
        medians = {part: statistics.median(samples) for part, samples in breakdown.items()}
        shares = [
            ["two database round trips (prepare_completion, record_completion)", f"{medians['database']:.2f}"],
            ["protocol, validation, the tool's own code, the log line with its metrics", f"{medians['rest']:.2f}"],
            ["the gateway's upstream call, less the SDK's create", f"{medians['upstream'] - medians['direct']:+.2f}"],
            ["in-process overhead: everything but the two database round trips", f"{medians['in_process']:+.2f}"],
        ]
        report += "\n" + table(
            "Where a one-off call's overhead goes (medians per call)",
            ["part", "ms"],
            shares,
            [
                f"{len(breakdown['direct'])} instrumented calls after the measured ones; the parts need not sum to the "
                "overhead above (medians of separate quantities)"
            ],
        )
    return report


if __name__ == "__main__":
    print(main())

"""Cold start: a fresh process imports app.py and answers initialize, tools/list and a first completion.

Each run is a new Python process, as a new Lambda container is: it imports app.py, then hands
the Chalice app API Gateway events in process (initialize, tools/list, a first chatgpt_complete
against a local OpenAI-compatible server with no delay, and the embedded PostgreSQL). Baselines
are the bare interpreter (`python -c pass`) and `python -c "import openai"`. A second table
splits the import time (-X importtime, each module's own time, summed per top-level package)
by the step that imported it.
Usage: python -m bench.cold_start [--repeat 10]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from bench.environment import ROOT, fresh_database, machine, percentile, table, user_with_token
from devtools.fake_openai import FakeOpenAI

STEPS = ("import app", "initialize", "tools/list", "first chatgpt_complete")
# Runs in the fresh process: times each step, and marks on stderr where each begins (for -X importtime).
PROBE = """
import json, sys, time
started = time.perf_counter()
marks = {}
def step(name):
    print("@@step " + name, file=sys.stderr, flush=True)
    return time.perf_counter()

begin = step("import app")
import app
from devtools.apigateway import LambdaContext, proxy_event
marks["import app"] = time.perf_counter() - begin

headers = {"Authorization": "Bearer " + sys.argv[1], "Content-Type": "application/json",
           "Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2025-11-25"}
requests = {
    "initialize": ("initialize", {"protocolVersion": "2025-11-25", "capabilities": {},
                                  "clientInfo": {"name": "bench", "version": "1"}}),
    "tools/list": ("tools/list", {}),
    "first chatgpt_complete": ("tools/call", {"name": "chatgpt_complete", "arguments": {
        "messages": [{"role": "user", "content": "Summarise the indemnity clause in two sentences."}]}}),
}
for name, (method, params) in requests.items():
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
    begin = step(name)
    answer = app.app(proxy_event("POST", "/mcp", headers, body), LambdaContext())
    marks[name] = time.perf_counter() - begin
    assert answer["statusCode"] == 200 and '"isError": true' not in answer["body"], answer
step("done")
print(json.dumps(marks))
"""
_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+\d+ \| +(\S+)$")


def _process_ms(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    completed = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return (time.perf_counter() - started) * 1000, completed


def _imports_by_step(stderr: str) -> dict[tuple[str, str], float]:
    """Milliseconds spent importing each top-level package (its modules' own times), keyed by (step, package)."""
    imported: dict[tuple[str, str], float] = defaultdict(float)
    current = "interpreter start-up"
    for line in stderr.splitlines():
        if line.startswith("@@step "):
            current = line.removeprefix("@@step ")
            continue
        match = _IMPORT_LINE.match(line)
        if match:
            imported[(current, match.group(2).split(".")[0])] += int(match.group(1)) / 1000
    return imported


def run(repeat: int) -> dict[str, Any]:
    """Per step, the milliseconds of each of `repeat` fresh processes; and the median import times."""
    url = fresh_database("chitty_bench_cold_start")
    token = user_with_token(url)
    samples: dict[str, list[float]] = defaultdict(list)
    imports: dict[tuple[str, str], list[float]] = defaultdict(list)
    with FakeOpenAI(delay=0.0) as fake:
        env = {
            **os.environ,
            "CHITTY_DATABASE_URL": url,
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_API_KEY": "sk-bench-" + "k" * 32,
            "CHITTY_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        }
        for _ in range(repeat):
            samples["python -c pass"].append(_process_ms([sys.executable, "-c", "pass"], env)[0])
            samples['python -c "import openai"'].append(_process_ms([sys.executable, "-c", "import openai"], env)[0])
            whole, completed = _process_ms([sys.executable, "-c", PROBE, token], env)
            for step, seconds in json.loads(completed.stdout.strip().splitlines()[-1]).items():
                samples[step].append(seconds * 1000)
            samples["whole process (start to exit)"].append(whole)
            _, traced = _process_ms([sys.executable, "-X", "importtime", "-c", PROBE, token], env)
            for key, ms in _imports_by_step(traced.stderr).items():
                imports[key].append(ms)
    return {
        "samples": dict(samples),
        "imports": {key: statistics.median(values) for key, values in imports.items()},
        "repeat": repeat,
    }


def render(figures: dict[str, Any], top: int = 12) -> str:
    """The steps' median and p90 as one table, then the heaviest imports and the step that paid for them."""
    samples = figures["samples"]
    order = ["python -c pass", 'python -c "import openai"', *STEPS, "whole process (start to exit)"]
    rows = [
        [name, f"{statistics.median(samples[name]):.1f}", f"{percentile(samples[name], 0.9):.1f}"] for name in order
    ]
    steps = table(
        f"Cold start, {figures['repeat']} fresh processes ({machine()})",
        ["step", "median ms", "p90 ms"],
        rows,
        notes=[
            "Each step runs in process through app.app(proxy_event(...)), as Lambda invokes the handler.",
            "The first completion talks to a local OpenAI-compatible server with no delay and the embedded "
            "PostgreSQL; its time is the server's own work, openai's import included.",
            "The Lambda runtime adds its own start-up (and, with CHITTY_SECRET_ID, boto3 and one Secrets Manager "
            "read on first use), not measured here.",
        ],
    )
    heaviest = sorted(figures["imports"].items(), key=lambda item: item[1], reverse=True)[:top]
    imports = table(
        "Import time by top-level package (-X importtime: its modules' own times, summed; median)",
        ["package", "imported during", "ms"],
        [[package, step, f"{ms:.1f}"] for (step, package), ms in heaviest],
        notes=["-X importtime slows imports down; compare rows with each other, not with the table above."],
    )
    return steps + "\n" + imports


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its tables."""
    parser = argparse.ArgumentParser(prog="python -m bench.cold_start", description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="fresh processes per step (median and p90 shown)")
    print(render(run(parser.parse_args(argv).repeat)))


if __name__ == "__main__":
    main()

"""What every benchmark needs: the machine's description, a real PostgreSQL, a user with a token."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from chalicelib import auth, migrate
from chalicelib.db import SQL_DIR, Database, connection, load_queries
from devtools import embedded

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    """One line about where the numbers were taken."""
    cpu = platform.processor() or platform.machine()
    return (
        f"{platform.system()} {platform.machine()} ({cpu}), {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )


def fresh_database(name: str) -> str:
    """A migrated, empty database called `name`: on CHITTY_BENCH_DATABASE_URL's server, else embedded."""
    admin = os.environ.get("CHITTY_BENCH_DATABASE_URL") or embedded.start(ROOT / ".chitty" / "bench-pgdata")
    embedded.drop_database(admin, name)
    url = embedded.with_database(admin, name)
    with connection(url, timeout=600) as conn:
        migrate.apply(conn)
    return url


def user_with_token(url: str, user_id: str = "bench-user") -> str:
    """Create a user and return a fresh bearer token for it."""
    db = Database(url=url, queries=load_queries(SQL_DIR / "queries"))
    db.one("add_user", user_id=user_id, display_name=user_id, role="user")
    token = auth.new_token()
    db.one("issue_token", user_id=user_id, token_hash=auth.hash_token(token), label="bench", expires_days=None)
    db.discard()
    return token


@contextlib.contextmanager
def upstream_process(delay_s: float) -> Iterator[str]:
    """A fake OpenAI-compatible server in a process of its own (as a real one would be); yields its base URL."""
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "devtools.fake_openai", "0", str(delay_s)],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                output.seek(0)
                first = output.readline()
                if first.startswith("OPENAI_BASE_URL="):
                    yield first.split("=", 1)[1].strip()
                    return
                time.sleep(0.05)
            raise RuntimeError("the fake upstream did not start")
        finally:
            process.terminate()
            process.wait()


def percentile(samples: list[float], fraction: float) -> float:
    """The `fraction` quantile (0..1) of the samples, by linear interpolation."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=1000, method="inclusive")[max(0, int(fraction * 1000) - 1)]


def latency_row(name: str, samples: list[float]) -> list[str]:
    """A table row: the name, how many samples, and their p50, p95 and p99 (ms, two decimals)."""
    return [
        name,
        str(len(samples)),
        f"{statistics.median(samples):.2f}",
        f"{percentile(samples, 0.95):.2f}",
        f"{percentile(samples, 0.99):.2f}",
    ]


def table(title: str, header: list[str], rows: list[list[str]], notes: list[str] | None = None) -> str:
    """A plain-text table, columns aligned, as the benchmarks print them."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    line = "  ".join
    out = [f"## {title}", "", line(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append(line("-" * w for w in widths))
    out += [
        line(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    return "\n".join(out + [""] + [f"- {note}" for note in notes or []] + [""])

"""Usage analytics: how long the rollup refresh and the report take, at two table sizes.

    python -m bench.analytics                      # 250,000 and 1,000,000 messages
    python -m bench.analytics --messages 100000    # a quick run (25,000 and 100,000)

For each size, a fresh database (embedded PostgreSQL under .chitty/bench-pgdata, or the server of
CHITTY_BENCH_DATABASE_URL) gets that many assistant messages over a year, made by generate_series in
SQL, with users in proportion (--users at the larger size), so one user's year is the same at both
sizes while the table grows. Then it times the first full refresh, incremental refreshes after --new
more rows (spread over the year, and all in the last hour), and the report chitty_usage_analytics
runs for one user over the year (the median of --repeat runs). The incremental refresh and the
report should not grow with the table.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.environment import fresh_database, machine, table
from chalicelib.db import SQL_DIR, Database, connection, load_queries

DATABASE = "chitty_bench_analytics"
YEAR_START = datetime.datetime(2025, 1, 1)
YEAR_END = datetime.datetime(2026, 1, 1)
# Statements of this many rows each, so the triggers' transition tables stay moderate.
GENERATE_CHUNK = 250_000

GENERATE = """
INSERT INTO chat_messages (user_id, turn_id, role, model, status, prompt_tokens, completion_tokens, cached_tokens,
                           reasoning_tokens, latency_ms, created_at)
SELECT 'bench-' || lpad((g.i % CAST(:users AS integer))::text, 3, '0'),
       gen_random_uuid(),
       'assistant',
       p.models[1 + g.i % cardinality(p.models)],
       CASE WHEN g.failed THEN 'error' ELSE 'ok' END,
       CASE WHEN g.failed THEN 0 ELSE g.prompt END,
       CASE WHEN g.failed THEN 0 ELSE g.completion END,
       CASE WHEN g.failed THEN 0 ELSE floor(g.prompt * g.cached_share)::integer END,
       CASE WHEN g.failed OR p.models[1 + g.i % cardinality(p.models)] !~ '^(o|gpt-5)' THEN 0
            ELSE floor(g.completion * g.reasoning_share)::integer END,
       200 + floor(g.latency_share * 8000)::integer,
       CAST(:start AS timestamptz) + g.when_share * (CAST(:end AS timestamptz) - CAST(:start AS timestamptz))
FROM (
    SELECT i, random() < 0.02 AS failed, 20 + floor(random() * 4000)::integer AS prompt,
           5 + floor(random() * 1200)::integer AS completion, random() * 0.6 AS cached_share,
           random() * 0.5 AS reasoning_share, random() AS latency_share, random() AS when_share
    FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS i
) g,
(SELECT array_agg(DISTINCT model ORDER BY model) AS models FROM model_pricing) p
"""


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = work()
    return time.perf_counter() - started, result


def _median_ms(work: Callable[[], Any], repeat: int) -> float:
    return _ms(statistics.median(_timed(work)[0] for _ in range(repeat)))


def _generate(db: Database, first: int, count: int, users: int, start: datetime.datetime) -> None:
    with connection(db.url, timeout=3600) as conn:
        conn.run("SELECT setseed(0.42)")
        for chunk_first in range(first, first + count, GENERATE_CHUNK):
            chunk_last = min(chunk_first + GENERATE_CHUNK, first + count) - 1
            conn.run(
                GENERATE,
                users=users,
                first=chunk_first,
                last=chunk_last,
                start=start.replace(tzinfo=datetime.UTC),
                end=YEAR_END.replace(tzinfo=datetime.UTC),
            )


def _vacuum(db: Database) -> None:
    """What autovacuum would have done by the next scheduled refresh (the bench does not wait for it)."""
    with connection(db.url, timeout=3600) as conn:
        conn.run("VACUUM ANALYZE chat_messages, usage_pending, usage_analytics")


def _refresh(db: Database, expected: int) -> float:
    """Seconds of one full refresh, checked to roll up exactly `expected` rows."""
    seconds, row = _timed(lambda: db.one("refresh_usage_analytics", limit=None))
    rolled_up = None if row is None else row["rolled_up"]
    if rolled_up != expected:
        raise RuntimeError(f"the refresh rolled up {rolled_up} rows, expected {expected}")
    return seconds


def _report(
    db: Database, granularity: str, timezone: str = "UTC", user_id: str | None = "bench-001"
) -> Callable[[], Any]:
    return lambda: db.all(
        "usage_report",
        user_id=user_id,
        start_at=None,
        start_local=YEAR_START,
        end_at=None,
        end_local=YEAR_END - datetime.timedelta(days=1),
        granularity=granularity,
        group_by="none",
        timezone=timezone,
    )


def measure(messages: int, users: int, new: int, repeat: int) -> list[dict[str, Any]]:
    """The figures for one table size, in a fresh database."""
    db = Database(url=fresh_database(DATABASE), timeout=3600, queries=load_queries(SQL_DIR / "queries"))
    with connection(db.url) as conn:
        conn.run(
            "INSERT INTO users (id, display_name) "
            "SELECT 'bench-' || lpad(i::text, 3, '0'), 'bench' FROM generate_series(0, CAST(:n AS integer) - 1) i",
            n=users,
        )
        (server,) = conn.run("SHOW server_version")[0]
    figures: list[dict[str, Any]] = []

    def record(measurement: str, ms: float) -> None:
        figures.append(
            {
                "benchmark": "analytics",
                "measurement": measurement,
                "messages": messages,
                "users": users,
                "ms": ms,
                "server": server,
            }
        )

    seconds, _ = _timed(lambda: _generate(db, 0, messages, users, YEAR_START))
    record("generate messages (SQL generate_series, triggers on)", _ms(seconds))
    _vacuum(db)
    record("first full refresh (every row queued)", _ms(_refresh(db, messages)))
    _vacuum(db)
    for granularity in ("day", "month"):
        record(f"report, 1 user, 1 year, by {granularity}, UTC (rollup)", _median_ms(_report(db, granularity), repeat))
    record(
        "report, 1 user, 1 year, by day, Asia/Kolkata (messages)",
        _median_ms(_report(db, "day", "Asia/Kolkata"), repeat),
    )
    record(
        "report, all users, 1 year, by month, UTC (rollup: grows with the table)",
        _median_ms(_report(db, "month", user_id=None), repeat),
    )
    _generate(db, messages, new, users, YEAR_START)
    record(f"report, 1 user, 1 year, by month, {new:,} rows queued", _median_ms(_report(db, "month"), repeat))
    record(f"incremental refresh, {new:,} new rows spread over the year", _ms(_refresh(db, new)))
    _generate(db, messages + new, new, users, YEAR_END - datetime.timedelta(hours=1))
    record(f"incremental refresh, {new:,} new rows in the last hour", _ms(_refresh(db, new)))
    record("refresh with nothing queued", _ms(_refresh(db, 0)))
    with connection(db.url) as conn:
        (rollup_rows,) = conn.run("SELECT count(*) FROM usage_analytics")[0]
        conn.run("TRUNCATE users CASCADE")  # give the disk back; the next run starts from a fresh database
    record("usage_analytics rows (a count, not ms)", rollup_rows)
    db.discard()
    return figures


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every figure at both sizes, as rows {benchmark, measurement, messages, ms}."""
    figures: list[dict[str, Any]] = []
    for size in (args.small or args.messages // 4, args.messages):
        # As many users as keep each one's volume the same: the table grows, the user's year does not.
        figures += measure(size, max(1, round(args.users * size / args.messages)), args.new, args.repeat)
    return figures


def render(figures: list[dict[str, Any]]) -> str:
    """The figures as one table: a row per measurement, a column per table size."""
    sizes = sorted({figure["messages"] for figure in figures})
    cells = {(figure["measurement"], figure["messages"]): figure["ms"] for figure in figures}
    rows = [
        [measurement, *(f"{cells[(measurement, size)]:,}" for size in sizes)]
        for measurement in dict.fromkeys(figure["measurement"] for figure in figures)
    ]
    return table(
        f"Usage analytics ({machine()})",
        ["ms (reports: median)", *(f"{size:,} messages" for size in sizes)],
        rows,
        notes=[
            f"PostgreSQL {figures[0]['server']}; {len(sizes)} fresh databases, one per size.",
            "VACUUM ANALYZE after the bulk load and after the first refresh, standing in for autovacuum.",
            "Reports run the tool's SQL (usage_report) for one user over one year; users scale with the table "
            f"({figures[0]['users']} and {figures[-1]['users']}), so that user's year is the same size at both.",
        ],
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1_000_000, help="the larger table size")
    parser.add_argument("--small", type=int, help="the smaller table size (default: a quarter of --messages)")
    parser.add_argument("--users", type=int, default=100, help="users at the larger size (the smaller has fewer)")
    parser.add_argument("--new", type=int, default=10_000, help="rows added before the incremental refresh")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each report (the median is shown)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Run the benchmark and print its table."""
    print(render(run(build_parser().parse_args(argv))))


if __name__ == "__main__":
    main()

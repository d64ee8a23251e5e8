"""Scheduled upkeep: the usage rollup every few minutes, and the daily round of housekeeping."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from pg8000.exceptions import DatabaseError

from chalicelib import pricing
from chalicelib.config import get_settings
from chalicelib.db import Database, error_message
from chalicelib.logs import logger

# Queued completions rolled up per statement: a transaction of bounded size however long the backlog,
# and a statement well inside CHITTY_DB_TIMEOUT (20,000 rows take under a second).
REFRESH_BATCH = 20_000
# A scheduled run starts no new batch after this many seconds, well inside the Lambda timeout (28 s);
# the next run picks up the rest.
SCHEDULED_BUDGET_S = 15.0


@dataclass(frozen=True)
class RollUp:
    """What one refresh did: completions rolled up, statements run, and whether the queue was emptied."""

    rolled_up: int
    batches: int
    complete: bool


def roll_up_usage(db: Database, budget_s: float | None = None, batch: int = REFRESH_BATCH) -> RollUp:
    """Roll queued completions into usage_analytics in batches until the queue is empty or the budget is spent."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    rolled_up = batches = 0
    while True:
        row = db.one("refresh_usage_analytics", limit=batch)
        assert row is not None
        rolled_up += row["rolled_up"]
        batches += 1
        if row["rolled_up"] < batch:
            return RollUp(rolled_up, batches, complete=True)
        if deadline is not None and time.monotonic() >= deadline:
            return RollUp(rolled_up, batches, complete=False)


def refresh_usage(db: Database) -> dict[str, int | bool]:
    """The five-minute schedule: roll up what was recorded since the last run, fail and bill the background
    jobs whose worker died, and log the counts."""
    from chalicelib import jobs

    result: dict[str, int | bool] = {}
    try:
        result["jobs_reaped"] = jobs.reap(db)
    except Exception:  # noqa: BLE001 - the rollup below must run all the same; the next round reaps again
        logger.exception("reaping jobs failed")
    result.update(asdict(roll_up_usage(db, budget_s=SCHEDULED_BUDGET_S)))
    logger.info("usage rolled up", extra=result)
    return result


def import_prices(db: Database, url: str) -> dict[str, int | bool]:
    """Import OpenAI's models and prices from the price table at `url` (CHITTY_PRICING_URL), logged. A table
    that cannot be fetched, read or imported is logged as a warning and changes nothing."""
    try:
        models = pricing.load(url)
        row = db.one(
            "import_model_catalogue",
            models=json.dumps(models),
            effective_from=None,
            first_from=pricing.FIRST_PRICED_FROM,
        )
    except pricing.CatalogueError as error:
        logger.warning("prices not imported", extra={"source": url, "detail": str(error)})
        return {"prices_imported": False}
    except DatabaseError as error:
        logger.warning("prices not imported", extra={"source": url, "detail": error_message(error)})
        return {"prices_imported": False}
    assert row is not None
    report = pricing.ImportReport.from_json(row["report"])
    changes = {c["model"]: f"{c['old_output_per_mtok']} -> {c['output_per_mtok']}" for c in report.changed}
    logger.info("prices imported", extra={"source": url, **report.counts, "changed_output_per_mtok": changes})
    return {"prices_imported": True, **report.counts}


def daily_upkeep(db: Database) -> dict[str, int | bool]:
    """The daily round: the usage rollup (a safety net for the five-minute runs), the purge of the
    reservations of calls that died (they stopped counting when they expired), the purge of finished jobs
    past CHITTY_JOB_RETENTION, the purge of what sign-in left that nothing can use (expired codes and
    tokens, dead grants, unused clients, old attempts) and, with CHITTY_PRICING_URL set, the import of
    OpenAI's current models and prices, logged."""
    result: dict[str, int | bool] = asdict(roll_up_usage(db, budget_s=SCHEDULED_BUDGET_S))
    purged = db.one("purge_expired_reservations")
    result["expired_reservations_purged"] = purged["purged"] if purged else 0
    from chalicelib import jobs

    result["jobs_purged"] = jobs.purge(db)
    sign_in = db.one("purge_sign_in_records")
    assert sign_in is not None
    result.update(
        sign_in_records_purged=sign_in["records"], grants_purged=sign_in["grants"], clients_purged=sign_in["clients"]
    )
    url = get_settings().pricing_url
    if url:
        result.update(import_prices(db, url))
    logger.info("daily upkeep done", extra=result)
    return result

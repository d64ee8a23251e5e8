"""Background completions: a turn that may take minutes runs as a job, outside the request that asked for it.

The request prepares the turn as any other (prepare_completion: limits, reservation held for as long as a job
may run), queues it (enqueue_job, under the user's concurrent_jobs limit) and answers at once. A worker then
claims the job, streams the answer from the upstream, saves the text so far and beats a heartbeat every
second (reading whether the job was cancelled, which shuts the stream), records the turn through the same
idempotent record_completion as a synchronous call, and stores the answer. On AWS the worker is an
asynchronous invocation of the jobs function; under `make run` and in tests, a process of the local server.

Nothing is lost: a worker that dies stops beating, and the reaper (every poll of the job, the scheduled
upkeep, the local runner) fails the job with its text kept and records its usage, estimated from what was
sent and what came back; recording is idempotent per turn, so a reaper and a late worker cannot both count it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from pg8000.exceptions import DatabaseError

from chalicelib.config import get_settings
from chalicelib.db import Database, DatabaseUnavailable
from chalicelib.logs import logger
from chalicelib.mcp import ToolError, ToolResult

if TYPE_CHECKING:
    from chalicelib.mcp import ToolCall
    from chalicelib.tools.chat import Completions
    from chalicelib.upstream import CompletionRequest

HEARTBEAT_S = 1.0
POLL_AFTER_MS = 1000
# A queued job no worker took within this long was lost (a failed invocation): it is failed, unbilled.
QUEUED_TIMEOUT_S = 300.0
TERMINAL = frozenset({"completed", "failed", "cancelled"})


def start(
    db: Database,
    completions: Completions,
    *,
    call: ToolCall,
    prepared: dict[str, Any],
    turn_id: str,
    messages: list[dict[str, Any]],
    request: CompletionRequest,
    stream: bool,
    as_task: bool,
) -> ToolResult:
    """Queue a prepared turn and hand it to a worker; the answer says how to follow it."""
    session = prepared.get("session")
    stored = {
        "request": dataclasses.asdict(request),
        "messages": messages,
        # How long the worker holds the turn's reservation once it starts: the longest a job may take.
        "reservation_seconds": int(get_settings().job_timeout) + 60,
    }
    row = db.one(
        "enqueue_job",
        user_id=prepared["user_id"],
        caller=prepared["caller"],
        turn_id=turn_id,
        session_id=session["id"] if session else None,
        tool="chatgpt_stream" if stream else "chatgpt_complete",
        model=request.model,
        request=json.dumps(stored),
        as_task=as_task,
        settings=completions.limits,
    )
    assert row is not None
    queued = row["queued"]
    if queued.get("error") == "limit":
        from chalicelib.tools.chat import limit_error

        raise limit_error(queued)
    job_id = str(queued["job_id"])
    try:
        dispatch(job_id)
    except Exception as error:
        # Nothing was sent: the job ends here, and holds neither a slot nor a reservation.
        logger.exception("a job could not be started", extra={"job_id": job_id})
        message = "The background job could not be started; nothing was sent or billed. Try again shortly."
        _finish(db, job_id, status="failed", content=None, result=None, error=message, data=None)
        db.one("release_reservation", turn_id=turn_id)
        raise ToolError(message, data={"job_id": job_id}) from error
    structured = {"job_id": job_id, "status": "queued", "poll_after_ms": POLL_AFTER_MS}
    text = (
        f"Started background job {job_id} ({request.model}). Follow it with chatgpt_job_get "
        f'{{"job_id": "{job_id}", "wait_seconds": 20}}: it gives the text so far, and the answer once it is '
        "completed; chatgpt_job_cancel stops it."
    )
    call.log_fields["job_id"] = job_id
    task = None
    if as_task:
        created = str(queued["created_at"]).replace("+00:00", "Z")
        task = {
            "taskId": job_id,
            "status": "working",
            "statusMessage": "queued",
            "createdAt": created,
            "lastUpdatedAt": created,
            "ttlMs": int(get_settings().job_retention_days * 86_400_000),
            "pollIntervalMs": POLL_AFTER_MS,
        }
    return ToolResult(structured=structured, text=text, task=task)


def dispatch(job_id: str) -> None:
    """Start a worker for the job: an asynchronous invocation of the jobs function, or a local process."""
    settings = get_settings()
    if settings.job_runner == "lambda":
        import boto3

        boto3.client("lambda").invoke(
            FunctionName=settings.job_function,
            InvocationType="Event",
            Payload=json.dumps({"job_id": job_id}).encode(),
        )
        return
    # A process of its own, so that the job outlives the request and a killed worker kills only its job.
    subprocess.Popen(
        [sys.executable, "-m", "chalicelib.jobs", job_id],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )


def run(db: Database, job_id: str, worker: str) -> str | None:
    """Run one job to its end as its worker; the status it ended with, or None if it was not ours to run."""
    from chalicelib.tools.chat import Completions, storable
    from chalicelib.upstream import CompletionRequest

    row = db.one("claim_job", job_id=job_id, worker=worker)
    claimed = row["claimed"] if row else None
    if claimed is None:
        return None
    settings = get_settings()
    completions = Completions(db, deadline=settings.job_timeout)
    stored = claimed["request"]
    request = CompletionRequest(**stored["request"])
    text: list[str] = []
    cancelled = threading.Event()
    beating = threading.Event()

    def beat() -> None:
        # The heartbeat, with the text so far. A cancel shuts the upstream stream; so does finding the job
        # ended by a reaper (it took the worker for dead): what it streams on would be paid and unrecorded.
        while not beating.wait(HEARTBEAT_S):
            try:
                answer = db.one("job_progress", job_id=job_id, content=storable("".join(text)))
            except (DatabaseUnavailable, DatabaseError) as error:
                logger.warning("a job's heartbeat failed", extra={"job_id": job_id, "error": str(error)})
                continue
            if answer is None or answer["cancel_requested"]:
                cancelled.set()

    heart = threading.Thread(target=beat, name=f"job-{job_id}", daemon=True)
    heart.start()
    status, result, error, data = "failed", None, None, None
    log_fields: dict[str, Any] = {}
    try:
        answer = completions.finish_turn(
            user_id=claimed["user_id"],
            session={"id": claimed["session_id"]} if claimed["session_id"] else None,
            turn_id=claimed["turn_id"],
            messages=stored["messages"],
            request=request,
            stored_key=claimed["api_key"],
            stream=True,
            on_delta=text.append,
            log_fields=log_fields,
            cancelled=cancelled,
        )
        status, result = "completed", storable({"structuredContent": answer.structured, "text": answer.text})
    except ToolError as failure:
        status = "cancelled" if cancelled.is_set() else "failed"
        error, data = failure.message, failure.data
    finally:
        beating.set()
        heart.join()
    _finish(db, job_id, status=status, content=storable("".join(text)), result=result, error=error, data=data)
    logger.info("job finished", extra={"job_id": job_id, "status": status, "worker": worker, **log_fields})
    return status


def reap(db: Database) -> int:
    """Fail the jobs whose worker stopped, with their text kept and their usage recorded (estimated from what
    was sent and what came back); a job no worker took is failed unbilled, its reservation released. Each in
    one transaction, with the job locked: a late worker then finds it ended and stops. How many."""
    settings = get_settings()
    thresholds = {"stale_seconds": settings.job_stale_seconds, "queued_seconds": QUEUED_TIMEOUT_S}
    reaped = 0
    for candidate in db.all("stale_jobs", **thresholds):
        if db.transaction(lambda tx, job_id=str(candidate["id"]): _reap_one(tx, job_id, thresholds)):
            reaped += 1
    return reaped


def _reap_one(tx: Any, job_id: str, thresholds: dict[str, float]) -> bool:
    from chalicelib.tools.chat import Completions, failed_turn
    from chalicelib.upstream import estimate_usage

    job = tx.one("lock_stale_job", job_id=job_id, **thresholds)
    if job is None:
        return False  # it beat, it ended, or another reaper has it
    stored = job["request"] or {}
    turn_id = str(job["turn_id"])
    if job["status"] == "queued":
        message = "No worker took the job in time; nothing was sent or billed. Ask again."
        tx.one("release_reservation", turn_id=turn_id)
        recorded = None
    else:
        message = (
            f"The job's worker stopped (no sign of life for {thresholds['stale_seconds']:g} s) after "
            f"{len(job['content'])} characters; the text so far is kept and what was used is billed."
        )
        sent = stored.get("request", {}).get("messages", [])
        session_id = str(job["session_id"]) if job["session_id"] else None
        turn = failed_turn(
            session_id=session_id,
            messages=stored.get("messages", []),
            model=job["model"],
            content=job["content"],
            error=message,
            usage=estimate_usage(sent, job["content"]),
        )
        row = tx.one(
            "record_completion",
            user_id=job["user_id"],
            session_id=session_id,
            turn_id=turn_id,
            api_key_id=None,
            settings=Completions.settings_json(),
            **turn,
        )
        recorded = row["recorded"] if row else None
    cost = ((recorded or {}).get("reply") or {}).get("cost_usd")
    tx.one(
        "finish_job",
        job_id=job_id,
        status="failed",
        content=None,
        result=None,
        error=message,
        error_data=json.dumps({"turn_id": turn_id, "cost_usd": cost}, default=str),
    )
    logger.warning("job reaped", extra={"job_id": job_id, "was": job["status"]})
    return True


def _finish(
    db: Database,
    job_id: str,
    *,
    status: str,
    content: str | None,
    result: dict[str, Any] | None,
    error: str | None,
    data: dict[str, Any] | None,
) -> None:
    """Store how a job ended; tried again if the database is briefly away (it changes a job only once)."""
    from chalicelib.tools.chat import storable

    for attempt in range(3):
        try:
            db.one(
                "finish_job",
                job_id=job_id,
                status=status,
                content=content,
                result=None if result is None else json.dumps(result),
                error=error,
                error_data=None if data is None else json.dumps(storable(data), default=str),
            )
            return
        except DatabaseUnavailable:
            if attempt == 2:
                raise
            time.sleep(0.5 * (attempt + 1))


def purge(db: Database) -> int:
    """Delete finished jobs older than CHITTY_JOB_RETENTION days."""
    row = db.one("purge_jobs", retention_seconds=get_settings().job_retention_days * 86400)
    return int(row["purged"]) if row else 0


def _main() -> int:
    """`python -m chalicelib.jobs JOB_ID`: a local worker, as `make run` starts one per job."""
    from chalicelib.db import get_database

    job_id = sys.argv[1]
    with contextlib.suppress(KeyboardInterrupt):
        run(get_database(), job_id, worker=f"pid {os.getpid()}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())

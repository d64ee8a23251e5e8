-- name: enqueue_job
SELECT enqueue_job(:user_id, :caller, CAST(:turn_id AS uuid), CAST(:session_id AS uuid), :tool, :model,
                   CAST(:request AS jsonb), CAST(:as_task AS boolean), CAST(:settings AS jsonb)) AS queued;

-- name: claim_job
SELECT claim_job(CAST(:job_id AS uuid), :worker) AS claimed;

-- name: job_progress
-- The worker's heartbeat, with the text so far; answers whether the job was asked to stop.
UPDATE completion_jobs
SET content = :content, heartbeat_at = now(), updated_at = now()
WHERE id = CAST(:job_id AS uuid) AND status = 'running'
RETURNING cancel_requested;

-- name: finish_job
-- The end of a job, once: a finished job stays as it ended.
UPDATE completion_jobs
SET status = :status, content = coalesce(:content, content), result = CAST(:result AS jsonb), error = :error,
    error_data = CAST(:error_data AS jsonb), request = NULL, finished_at = now(), updated_at = now()
WHERE id = CAST(:job_id AS uuid) AND status IN ('queued', 'running')
RETURNING id;

-- name: get_job
-- A job, for its user or an admin; NULL for anyone else, as for a job that does not exist.
SELECT j.id, j.user_id, j.turn_id, j.session_id, j.tool, j.model, j.status, j.content, j.result, j.error,
       j.error_data, j.cancel_requested, j.as_task, j.created_at, j.started_at, j.finished_at, j.updated_at,
       j.heartbeat_at
FROM completion_jobs j
WHERE j.id = CAST(:job_id AS uuid) AND (j.user_id = :caller OR CAST(:caller_is_admin AS boolean));

-- name: list_jobs
-- A user's jobs, newest first, a page at a time (after the position :after_time, :after_id).
SELECT j.id, j.tool, j.model, j.status, j.session_id, j.created_at, j.finished_at, j.updated_at,
       length(j.content) AS characters, j.error
FROM completion_jobs j
WHERE j.user_id = :user_id
  AND (CAST(:status AS text) IS NULL OR j.status = :status)
  AND (CAST(:after_time AS timestamptz) IS NULL
       OR (j.created_at, j.id) < (CAST(:after_time AS timestamptz), CAST(:after_id AS uuid)))
ORDER BY j.created_at DESC, j.id DESC
LIMIT CAST(:limit AS integer);

-- name: cancel_job
-- Ask a job to stop: a queued one stops at once (its worker will find it taken), a running one at its
-- worker's next heartbeat. Answers the job as it now is; NULL for a job the caller may not see.
UPDATE completion_jobs j
SET cancel_requested = true,
    status = CASE WHEN j.status = 'queued' THEN 'cancelled' ELSE j.status END,
    finished_at = CASE WHEN j.status = 'queued' THEN now() ELSE j.finished_at END,
    request = CASE WHEN j.status = 'queued' THEN NULL ELSE j.request END,
    updated_at = now()
WHERE j.id = CAST(:job_id AS uuid) AND (j.user_id = :caller OR CAST(:caller_is_admin AS boolean))
  AND j.status IN ('queued', 'running')
RETURNING j.id, j.status, j.turn_id, j.user_id;

-- name: stale_jobs
-- Jobs whose worker seems to have stopped: running with no heartbeat for :stale_seconds, or queued for
-- :queued_seconds without a worker taking them.
SELECT j.id
FROM completion_jobs j
WHERE (j.status = 'running' AND j.heartbeat_at < now() - make_interval(secs => CAST(:stale_seconds AS double precision)))
   OR (j.status = 'queued' AND j.created_at < now() - make_interval(secs => CAST(:queued_seconds AS double precision)))
ORDER BY j.created_at
LIMIT 100;

-- name: lock_stale_job
-- One of those, locked for its reaping if it is still stale (a worker's claim or heartbeat waits for the lock,
-- and then finds the job ended); NULL when it is not, or another reaper has it.
SELECT j.id, j.user_id, j.turn_id, j.session_id, j.status, j.model, j.content, j.request
FROM completion_jobs j
WHERE j.id = CAST(:job_id AS uuid)
  AND ((j.status = 'running' AND j.heartbeat_at < now() - make_interval(secs => CAST(:stale_seconds AS double precision)))
       OR (j.status = 'queued' AND j.created_at < now() - make_interval(secs => CAST(:queued_seconds AS double precision))))
FOR UPDATE SKIP LOCKED;

-- name: purge_jobs
-- Finished jobs past their retention.
WITH purged AS (
    DELETE FROM completion_jobs
    WHERE finished_at < now() - make_interval(secs => CAST(:retention_seconds AS double precision))
    RETURNING 1
)
SELECT count(*) AS purged FROM purged;

-- name: release_reservation
-- The reservation of a turn that will never be sent (a job cancelled before it started).
WITH released AS (DELETE FROM usage_reservations WHERE turn_id = CAST(:turn_id AS uuid) RETURNING 1)
SELECT count(*) AS released FROM released;

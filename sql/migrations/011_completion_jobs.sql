-- Completions that run in the background: a job is the same turn as a synchronous call (its turn_id is
-- recorded once, by record_completion), run by a worker (an asynchronous invocation of the jobs function on
-- AWS, a process of the local server under `make run`) that streams from the upstream, saves the text so
-- far and beats a heartbeat; a job whose heartbeat stops is failed and billed for what it had.

CREATE TABLE completion_jobs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    caller            text NOT NULL,
    turn_id           uuid NOT NULL UNIQUE,
    session_id        uuid REFERENCES chat_sessions (id) ON DELETE SET NULL,
    tool              text NOT NULL CHECK (tool IN ('chatgpt_complete', 'chatgpt_stream')),
    model             text NOT NULL,
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    request           jsonb,
    content           text NOT NULL DEFAULT '',
    result            jsonb,
    error             text,
    error_data        jsonb,
    cancel_requested  boolean NOT NULL DEFAULT false,
    as_task           boolean NOT NULL DEFAULT false,
    worker            text,
    heartbeat_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CHECK ((status IN ('completed', 'failed', 'cancelled')) = (finished_at IS NOT NULL))
);

COMMENT ON TABLE completion_jobs IS
    'Completions run in the background (background: true, or an MCP task): their state, text so far and result.';
COMMENT ON COLUMN completion_jobs.caller IS 'Who started the job (an admin may start one for a user).';
COMMENT ON COLUMN completion_jobs.turn_id IS 'The turn the job records, once (completion_turns), like a synchronous call.';
COMMENT ON COLUMN completion_jobs.request IS
    'What the worker sends: the message list prepare_completion built and the settings; cleared when the job ends.';
COMMENT ON COLUMN completion_jobs.content IS 'The text so far, saved by the worker at least every second.';
COMMENT ON COLUMN completion_jobs.result IS 'Once completed: what the synchronous call would have answered.';
COMMENT ON COLUMN completion_jobs.error_data IS 'Once failed: the details a synchronous call''s error would carry.';
COMMENT ON COLUMN completion_jobs.cancel_requested IS 'chatgpt_job_cancel asked the worker to stop the upstream stream.';
COMMENT ON COLUMN completion_jobs.as_task IS 'Started as an MCP task (tasks extension): tasks/get reads it.';
COMMENT ON COLUMN completion_jobs.worker IS 'Which worker runs it: a Lambda request id, or a local process id.';
COMMENT ON COLUMN completion_jobs.heartbeat_at IS 'The worker''s last sign of life; a stale one fails the job.';

CREATE INDEX completion_jobs_user_idx ON completion_jobs (user_id, created_at DESC, id DESC);
CREATE INDEX completion_jobs_open_idx ON completion_jobs (status, heartbeat_at) WHERE status IN ('queued', 'running');
CREATE INDEX completion_jobs_finished_idx ON completion_jobs (finished_at) WHERE finished_at IS NOT NULL;

ALTER TABLE usage_limits DROP CONSTRAINT usage_limits_kind_check;
ALTER TABLE usage_limits
    ADD CONSTRAINT usage_limits_kind_check CHECK (kind IN (
        'monthly_budget_usd', 'requests_per_minute', 'tokens_per_minute',
        'sessions', 'messages_per_session', 'bytes_per_session', 'metadata_bytes_per_session',
        'session_templates', 'model_configs', 'api_keys', 'concurrent_jobs'));

COMMENT ON COLUMN usage_limits.kind IS
    'monthly_budget_usd, requests_per_minute, tokens_per_minute (spend and rates); sessions, session_templates, '
    'model_configs, api_keys (how many a user keeps); messages_per_session, bytes_per_session (text of its system '
    'prompt and messages), metadata_bytes_per_session (JSON text of a session''s or template''s metadata); '
    'concurrent_jobs (background completions queued or running at once).';

-- Background completions: queue a job under the user's limit, let one worker claim it, keep its text and
-- heartbeat, finish it once. The turn itself is recorded by record_completion, as any other.
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

-- Queue a prepared turn as a job, unless the user already has as many open as their concurrent_jobs limit
-- allows: then the turn's reservation goes (nothing was sent) and the refusal says why.
CREATE OR REPLACE FUNCTION enqueue_job(
    p_user_id text,
    p_caller text,
    p_turn_id uuid,
    p_session_id uuid,
    p_tool text,
    p_model text,
    p_request jsonb,
    p_as_task boolean,
    p_settings jsonb
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    allowed numeric;
    open_jobs bigint;
    job completion_jobs;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('chitty-usage:' || p_user_id, 0));
    SELECT value INTO allowed FROM effective_limits(p_user_id, p_settings) WHERE kind = 'concurrent_jobs';
    SELECT count(*) INTO open_jobs FROM completion_jobs
    WHERE user_id = p_user_id AND status IN ('queued', 'running');
    IF allowed IS NOT NULL AND open_jobs + 1 > allowed THEN
        DELETE FROM usage_reservations WHERE turn_id = p_turn_id;
        RETURN jsonb_build_object('error', 'limit', 'limit', 'concurrent_jobs', 'user_id', p_user_id,
                                  'limit_value', allowed, 'used', open_jobs, 'reserved', 0, 'requested', 1,
                                  'resets_at', NULL);
    END IF;
    INSERT INTO completion_jobs (user_id, caller, turn_id, session_id, tool, model, request, as_task)
    VALUES (p_user_id, p_caller, p_turn_id, p_session_id, p_tool, p_model, p_request, p_as_task)
    RETURNING * INTO job;
    RETURN jsonb_build_object('job_id', job.id, 'status', job.status, 'created_at', job.created_at);
END
$$;

COMMENT ON FUNCTION enqueue_job(text, text, uuid, uuid, text, text, jsonb, boolean, jsonb) IS
    'Queue a prepared completion as a background job under the user''s concurrent_jobs limit.';

-- One worker takes a queued job: what to send, and the user's sealed key if the turn uses one.
CREATE OR REPLACE FUNCTION claim_job(p_job_id uuid, p_worker text) RETURNS jsonb
LANGUAGE sql AS $$
    WITH claimed AS (
        UPDATE completion_jobs
        SET status = 'running', worker = p_worker, started_at = now(), heartbeat_at = now(), updated_at = now()
        WHERE id = p_job_id AND status = 'queued'
        RETURNING *
    ), held AS (
        -- The reservation is held for as long as the job may now run, however long it waited in the queue.
        UPDATE usage_reservations r
        SET expires_at = greatest(r.expires_at,
                                  now() + make_interval(secs => (c.request ->> 'reservation_seconds')::integer))
        FROM claimed c
        WHERE r.turn_id = c.turn_id
    )
    SELECT jsonb_build_object(
               'job_id', c.id, 'user_id', c.user_id, 'turn_id', c.turn_id, 'session_id', c.session_id,
               'tool', c.tool, 'request', c.request,
               'api_key', CASE WHEN k.id IS NULL THEN NULL ELSE jsonb_build_object(
                   'id', k.id, 'last_four', k.last_four, 'ciphertext', encode(k.ciphertext, 'base64'),
                   'nonce', encode(k.nonce, 'base64'), 'fingerprint', k.key_fingerprint,
                   'wrapped_data_key', encode(k.wrapped_data_key, 'base64')) END)
    FROM claimed c
    -- The user's key as it is now (as prepare_completion reads it), should they have changed it meanwhile.
    LEFT JOIN api_keys k ON k.user_id = c.user_id AND k.status = 'active'
$$;

COMMENT ON FUNCTION claim_job(uuid, text) IS
    'A worker takes a queued job (once: a second claim gets NULL), with the request and the sealed key it needs, '
    'and holds its reservation for as long as it may run.';

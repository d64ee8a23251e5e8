-- Usage analytics: the hourly rollup's refresh and the report that reads it.
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

CREATE OR REPLACE FUNCTION refresh_usage_analytics(p_limit integer DEFAULT NULL) RETURNS integer
LANGUAGE sql AS $$
    -- One statement: rows leave the queue and enter the rollup in the same transaction, so each
    -- is counted exactly once. SKIP LOCKED lets concurrent refreshes take disjoint rows without
    -- waiting; upserting in key order keeps their row locks in one order, so they cannot deadlock.
    WITH picked AS (
        SELECT message_id FROM usage_pending
        ORDER BY message_id
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), consumed AS (
        DELETE FROM usage_pending p USING picked
        WHERE p.message_id = picked.message_id
        RETURNING p.*
    ), rolled AS (
        INSERT INTO usage_analytics AS a (
            user_id, hour_start, model, requests, errors, unpriced_requests, prompt_tokens, completion_tokens,
            cached_tokens, reasoning_tokens, cost_usd, latency_ms_sum, latency_ms_max, timed_requests)
        SELECT c.user_id, date_trunc('hour', c.created_at, 'UTC'), c.model,
               count(*), count(*) FILTER (WHERE c.status = 'error'), count(*) FILTER (WHERE c.cost_usd IS NULL),
               sum(c.prompt_tokens), sum(c.completion_tokens), sum(c.cached_tokens), sum(c.reasoning_tokens),
               coalesce(sum(c.cost_usd), 0), coalesce(sum(c.latency_ms), 0), max(c.latency_ms), count(c.latency_ms)
        FROM consumed c
        GROUP BY c.user_id, date_trunc('hour', c.created_at, 'UTC'), c.model
        ORDER BY c.user_id, date_trunc('hour', c.created_at, 'UTC'), c.model
        ON CONFLICT ON CONSTRAINT usage_analytics_key DO UPDATE
        SET requests = a.requests + EXCLUDED.requests,
            errors = a.errors + EXCLUDED.errors,
            unpriced_requests = a.unpriced_requests + EXCLUDED.unpriced_requests,
            prompt_tokens = a.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = a.completion_tokens + EXCLUDED.completion_tokens,
            cached_tokens = a.cached_tokens + EXCLUDED.cached_tokens,
            reasoning_tokens = a.reasoning_tokens + EXCLUDED.reasoning_tokens,
            cost_usd = a.cost_usd + EXCLUDED.cost_usd,
            latency_ms_sum = a.latency_ms_sum + EXCLUDED.latency_ms_sum,
            latency_ms_max = greatest(a.latency_ms_max, EXCLUDED.latency_ms_max),
            timed_requests = a.timed_requests + EXCLUDED.timed_requests
        RETURNING 1
    )
    SELECT count(*)::integer FROM consumed
$$;

COMMENT ON FUNCTION refresh_usage_analytics(integer) IS
    'Move up to p_limit queued messages (all when NULL) into usage_analytics; returns how many. '
    'Work grows with the queue, not the table; idempotent; concurrent calls neither block nor double count.';

-- One expression, so the planner inlines it (a called SQL function costs ~10 us a row).
CREATE OR REPLACE FUNCTION iso8601_in_zone(p_at timestamptz, p_zone text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT to_char(p_at AT TIME ZONE p_zone, 'YYYY-MM-DD"T"HH24:MI:SS')
           || CASE WHEN p_at AT TIME ZONE p_zone < p_at AT TIME ZONE 'UTC' THEN '-' ELSE '+' END
           || to_char(greatest((p_at AT TIME ZONE p_zone) - (p_at AT TIME ZONE 'UTC'),
                               (p_at AT TIME ZONE 'UTC') - (p_at AT TIME ZONE p_zone)),
                      -- seconds only for the odd historical offset (local mean time)
                      CASE WHEN extract(second FROM p_at AT TIME ZONE p_zone) = extract(second FROM p_at AT TIME ZONE 'UTC')
                           THEN 'HH24:MI' ELSE 'HH24:MI:SS' END)
$$;

COMMENT ON FUNCTION iso8601_in_zone(timestamptz, text) IS
    'An instant as ISO 8601 wall-clock time in a time zone, with that zone''s offset: 2025-03-01T00:00:00-05:00.';

CREATE OR REPLACE FUNCTION usage_report(
    p_user_id text,
    p_start timestamptz,
    p_end timestamptz,
    p_granularity text,
    p_group_by text,
    p_timezone text
) RETURNS TABLE (
    is_total          boolean,
    bucket_start      text,
    bucket_end        text,
    model             text,
    session_id        uuid,
    requests          bigint,
    errors            bigint,
    unpriced_requests bigint,
    prompt_tokens     bigint,
    completion_tokens bigint,
    cached_tokens     bigint,
    reasoning_tokens  bigint,
    cost_usd          numeric,
    avg_latency_ms    numeric,
    max_latency_ms    integer,
    computed_from     text
)
LANGUAGE plpgsql STABLE
-- Plans made for the actual arguments: the user filter and the choice of source fold away.
SET plan_cache_mode = force_custom_plan
AS $$
#variable_conflict use_column
DECLARE
    v_step interval;
    v_max_span interval := CASE WHEN p_granularity = 'hour' THEN interval '31 days' ELSE interval '400 days' END;
    v_local_start timestamp := p_start AT TIME ZONE p_timezone;
    v_local_end timestamp := p_end AT TIME ZONE p_timezone;
    v_from_rollup boolean;
BEGIN
    v_step := CASE p_granularity
        WHEN 'hour' THEN interval '1 hour' WHEN 'day' THEN interval '1 day'
        WHEN 'week' THEN interval '1 week' WHEN 'month' THEN interval '1 month' END;
    IF v_step IS NULL OR p_group_by IS NULL OR p_group_by NOT IN ('none', 'model', 'session') THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('granularity must be hour, day, week or month and group_by none, model or session '
                             '(got %s and %s).', p_granularity, p_group_by);
    END IF;
    IF p_end <= p_start THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('end_date is before start_date: the range from %s to %s (%s) is empty.',
                             to_char(v_local_start, 'YYYY-MM-DD"T"HH24:MI:SS'),
                             to_char(v_local_end, 'YYYY-MM-DD"T"HH24:MI:SS'), p_timezone);
    END IF;
    -- Wall-clock length, so a range of whole days is not a day longer across a DST change.
    IF v_local_end - v_local_start > v_max_span THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = format('The range is %s days long; granularity %s allows at most %s days. '
                             'Ask for a shorter range%s.',
                             trim_scale(round(extract(epoch FROM v_local_end - v_local_start) / 86400, 2)),
                             p_granularity, extract(day FROM v_max_span),
                             CASE WHEN p_granularity = 'hour' THEN ', or granularity day' ELSE '' END);
    END IF;
    IF p_user_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p_user_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'no_data_found', MESSAGE = format('No user %L.', p_user_id);
    END IF;
    -- The hourly UTC rollup answers exactly when no bucket boundary falls inside a UTC hour: true for
    -- whole-hour offsets (UTC, America/New_York), false for Asia/Kolkata or Australia/Adelaide, whose
    -- buckets are then computed from chat_messages. Sessions are not in the rollup either.
    v_from_rollup := p_group_by <> 'session'
        AND extract(epoch FROM p_start) % 3600 = 0
        AND extract(epoch FROM p_end) % 3600 = 0
        AND NOT EXISTS (
            SELECT 1
            FROM generate_series(date_trunc(p_granularity, v_local_start), v_local_end, v_step) AS b (boundary)
            WHERE extract(epoch FROM b.boundary AT TIME ZONE p_timezone) % 3600 <> 0);

    -- One statement, so the rollup and the queue are read in one snapshot: a refresh that commits
    -- meanwhile moves rows from one to the other atomically, and nothing is seen twice or missed.
    RETURN QUERY
    WITH usage AS (
        SELECT a.hour_start AS at, a.model, NULL::uuid AS session_id, a.requests::bigint AS requests,
               a.errors::bigint AS errors, a.unpriced_requests::bigint AS unpriced_requests,
               a.prompt_tokens, a.completion_tokens, a.cached_tokens, a.reasoning_tokens, a.cost_usd,
               a.latency_ms_sum, a.latency_ms_max, a.timed_requests::bigint AS timed_requests
        FROM usage_analytics a
        WHERE v_from_rollup
          AND (p_user_id IS NULL OR a.user_id = p_user_id)
          AND a.hour_start >= p_start AND a.hour_start < p_end
        UNION ALL
        SELECT q.created_at, q.model, NULL::uuid, 1::bigint, (q.status = 'error')::int::bigint,
               (q.cost_usd IS NULL)::int::bigint, q.prompt_tokens::bigint, q.completion_tokens::bigint,
               q.cached_tokens::bigint, q.reasoning_tokens::bigint, coalesce(q.cost_usd, 0),
               coalesce(q.latency_ms, 0)::bigint, q.latency_ms, (q.latency_ms IS NOT NULL)::int::bigint
        FROM usage_pending q
        WHERE v_from_rollup
          AND (p_user_id IS NULL OR q.user_id = p_user_id)
          AND q.created_at >= p_start AND q.created_at < p_end
        UNION ALL
        SELECT m.created_at, m.model, m.session_id, 1::bigint, (m.status = 'error')::int::bigint,
               (m.cost_usd IS NULL)::int::bigint, m.prompt_tokens::bigint, m.completion_tokens::bigint,
               m.cached_tokens::bigint, m.reasoning_tokens::bigint, coalesce(m.cost_usd, 0),
               coalesce(m.latency_ms, 0)::bigint, m.latency_ms, (m.latency_ms IS NOT NULL)::int::bigint
        FROM chat_messages m
        WHERE NOT v_from_rollup
          AND m.role = 'assistant'
          AND (p_user_id IS NULL OR m.user_id = p_user_id)
          AND m.created_at >= p_start AND m.created_at < p_end
    ), bucketed AS (
        SELECT CASE WHEN p_granularity = 'hour'
                    -- the instant the local hour began (two local 01:00 hours at a DST fold stay apart)
                    THEN u.at - ((u.at AT TIME ZONE p_timezone) - date_trunc('hour', u.at AT TIME ZONE p_timezone))
                    ELSE date_trunc(p_granularity, u.at AT TIME ZONE p_timezone) AT TIME ZONE p_timezone
               END AS bucket,
               CASE WHEN p_group_by = 'model' THEN u.model END AS model,
               CASE WHEN p_group_by = 'session' THEN u.session_id END AS session_id,
               u.requests, u.errors, u.unpriced_requests, u.prompt_tokens, u.completion_tokens, u.cached_tokens,
               u.reasoning_tokens, u.cost_usd, u.latency_ms_sum, u.latency_ms_max, u.timed_requests
        FROM usage u
    ), summed AS (
        SELECT GROUPING(k.bucket, k.model, k.session_id) <> 0 AS is_total, k.bucket, k.model, k.session_id,
               coalesce(sum(k.requests), 0)::bigint AS requests,
               coalesce(sum(k.errors), 0)::bigint AS errors,
               coalesce(sum(k.unpriced_requests), 0)::bigint AS unpriced_requests,
               coalesce(sum(k.prompt_tokens), 0)::bigint AS prompt_tokens,
               coalesce(sum(k.completion_tokens), 0)::bigint AS completion_tokens,
               coalesce(sum(k.cached_tokens), 0)::bigint AS cached_tokens,
               coalesce(sum(k.reasoning_tokens), 0)::bigint AS reasoning_tokens,
               coalesce(sum(k.cost_usd), 0) AS cost_usd,
               round(sum(k.latency_ms_sum)::numeric / nullif(sum(k.timed_requests), 0), 2) AS avg_latency_ms,
               max(k.latency_ms_max) AS max_latency_ms
        FROM bucketed k
        GROUP BY GROUPING SETS ((k.bucket, k.model, k.session_id), ())
    )
    SELECT s.is_total,
           iso8601_in_zone(CASE WHEN s.is_total THEN p_start ELSE s.bucket END, p_timezone),
           iso8601_in_zone(CASE WHEN s.is_total THEN p_end
                                WHEN p_granularity = 'hour' THEN s.bucket + interval '1 hour'
                                ELSE ((s.bucket AT TIME ZONE p_timezone) + v_step) AT TIME ZONE p_timezone END,
                           p_timezone),
           s.model, s.session_id, s.requests, s.errors, s.unpriced_requests, s.prompt_tokens, s.completion_tokens,
           s.cached_tokens, s.reasoning_tokens, s.cost_usd, s.avg_latency_ms, s.max_latency_ms,
           CASE WHEN v_from_rollup THEN 'rollup' ELSE 'messages' END
    FROM summed s
    ORDER BY s.is_total, s.bucket, s.model, s.session_id;
END
$$;

COMMENT ON FUNCTION usage_report(text, timestamptz, timestamptz, text, text, text) IS
    'Usage of one user (all when p_user_id is NULL) in [p_start, p_end), by hour/day/week/month in a time zone, '
    'optionally by model or session, plus a totals row. Exact at any moment: rolled-up hours plus queued rows, '
    'or chat_messages itself when buckets do not align with UTC hours or sessions are asked for.';

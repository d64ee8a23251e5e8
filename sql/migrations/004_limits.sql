-- Per-user limits: a monthly budget (calendar month, UTC), requests and tokens per minute,
-- enforced atomically with reservations taken in prepare_completion and settled in
-- record_completion.

-- 'NaN' passes ">= 0" in PostgreSQL: prices must be real numbers.
ALTER TABLE model_pricing
    ADD CONSTRAINT model_pricing_prices_are_numbers CHECK (
        input_per_mtok <> 'NaN' AND output_per_mtok <> 'NaN' AND cached_input_per_mtok <> 'NaN');

CREATE TABLE usage_limits (
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind       text NOT NULL CHECK (kind IN ('monthly_budget_usd', 'requests_per_minute', 'tokens_per_minute')),
    value      numeric CHECK (value >= 0),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, kind)
);

COMMENT ON TABLE usage_limits IS
    'A user''s own limits. No row: the configured default applies. A row with value NULL: no limit of that kind.';
COMMENT ON COLUMN usage_limits.value IS 'USD for monthly_budget_usd, a count for the per-minute kinds; NULL: unlimited.';

CREATE TABLE usage_monthly (
    user_id  text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    month    date NOT NULL CHECK (extract(day FROM month) = 1),
    requests integer NOT NULL DEFAULT 0,
    cost_usd numeric(20, 10) NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, month)
);

COMMENT ON TABLE usage_monthly IS 'Spend per user and calendar month (UTC), kept by trigger, read by budget checks.';
COMMENT ON COLUMN usage_monthly.month IS 'First day of the UTC calendar month.';

INSERT INTO usage_monthly (user_id, month, requests, cost_usd)
SELECT user_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date, count(*), coalesce(sum(cost_usd), 0)
FROM chat_messages WHERE role = 'assistant'
GROUP BY 1, 2;

CREATE FUNCTION usage_monthly_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_monthly AS m (user_id, month, requests, cost_usd)
    SELECT user_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date, count(*), coalesce(sum(cost_usd), 0)
    FROM inserted WHERE role = 'assistant'
    GROUP BY 1, 2
    ON CONFLICT (user_id, month) DO UPDATE
    SET requests = m.requests + EXCLUDED.requests, cost_usd = m.cost_usd + EXCLUDED.cost_usd;
    RETURN NULL;
END
$$;

CREATE TRIGGER usage_monthly_after_insert AFTER INSERT ON chat_messages
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION usage_monthly_after_insert();

CREATE TABLE usage_reservations (
    turn_id    uuid PRIMARY KEY,
    user_id    text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    cost_usd   numeric(20, 10),
    tokens     integer NOT NULL CHECK (tokens >= 0),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

COMMENT ON TABLE usage_reservations IS
    'Worst-case cost and tokens of completions in progress; deleted when the turn is recorded, ignored once expired.';
COMMENT ON COLUMN usage_reservations.cost_usd IS 'Upper bound of the call''s cost; NULL when no budget applies.';
COMMENT ON COLUMN usage_reservations.expires_at IS 'After this the call is presumed dead and its reservation no longer counts.';

CREATE INDEX usage_reservations_user_idx ON usage_reservations (user_id, expires_at);

CREATE FUNCTION effective_limits(p_user_id text, p_defaults jsonb)
RETURNS TABLE (kind text, value numeric, source text)
LANGUAGE sql STABLE AS $$
    SELECT k.kind,
           CASE WHEN l.user_id IS NOT NULL THEN l.value ELSE (p_defaults ->> k.kind)::numeric END,
           CASE WHEN l.user_id IS NOT NULL THEN CASE WHEN l.value IS NULL THEN 'none' ELSE 'user' END
                WHEN p_defaults ->> k.kind IS NULL THEN 'none'
                ELSE 'default' END
    FROM (VALUES ('monthly_budget_usd'), ('requests_per_minute'), ('tokens_per_minute')) AS k (kind)
    LEFT JOIN usage_limits l ON l.user_id = p_user_id AND l.kind = k.kind
$$;

COMMENT ON FUNCTION effective_limits(text, jsonb) IS
    'The limits in force for a user: their own settings, else the configured defaults (source user|default|none).';

CREATE FUNCTION usage_window(p_user_id text)
RETURNS TABLE (month_start timestamptz, spent_usd numeric, reserved_usd numeric, requests_last_minute bigint,
               tokens_last_minute bigint, reserved_requests bigint, reserved_tokens bigint,
               oldest_in_minute timestamptz)
LANGUAGE sql STABLE AS $$
    WITH bounds AS (SELECT date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month_start),
    minute AS (
        SELECT count(*) AS requests, coalesce(sum(prompt_tokens + completion_tokens), 0) AS tokens,
               min(created_at) AS oldest
        FROM chat_messages
        WHERE user_id = p_user_id AND role = 'assistant' AND created_at > now() - interval '1 minute'
    ),
    held AS (
        SELECT coalesce(sum(cost_usd), 0) AS cost, count(*) AS requests, coalesce(sum(tokens), 0) AS tokens
        FROM usage_reservations WHERE user_id = p_user_id AND expires_at > now()
    )
    SELECT b.month_start,
           coalesce((SELECT m.cost_usd FROM usage_monthly m
                     WHERE m.user_id = p_user_id AND m.month = (b.month_start AT TIME ZONE 'UTC')::date), 0),
           held.cost, minute.requests, minute.tokens, held.requests, held.tokens, minute.oldest
    FROM bounds b, minute, held
$$;

COMMENT ON FUNCTION usage_window(text) IS
    'What counts against a user''s limits now: month spend, last minute''s requests and tokens, live reservations.';

DROP FUNCTION prepare_completion(text, text, uuid, text, integer);

CREATE FUNCTION prepare_completion(
    p_token_hash text,
    p_for_user text,
    p_session_id uuid,
    p_model_config text,
    p_history_limit integer,
    p_turn_id uuid,
    p_model text,
    p_max_tokens integer,
    p_new_bytes integer,
    p_new_messages integer,
    p_settings jsonb
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    caller record;
    target text;
    session chat_sessions;
    config model_configs;
    key api_keys;
    history jsonb := '[]'::jsonb;
    history_bytes integer := 0;
    history_count integer := 0;
    model text;
    max_tokens integer;
    budget numeric;
    rpm numeric;
    tpm numeric;
    used record;
    price model_pricing;
    prompt_bound integer;
    worst_cost numeric;
    worst_tokens integer;
BEGIN
    SELECT * INTO caller FROM authenticate_token(p_token_hash);
    IF caller.user_id IS NULL THEN
        RETURN jsonb_build_object('error', 'unauthenticated');
    END IF;
    IF p_for_user IS NOT NULL AND p_for_user <> caller.user_id AND caller.role <> 'admin' THEN
        RETURN jsonb_build_object('error', 'forbidden', 'caller', caller.user_id);
    END IF;
    target := coalesce(p_for_user, caller.user_id);
    IF p_session_id IS NOT NULL THEN
        SELECT * INTO session FROM chat_sessions s
        WHERE s.id = p_session_id AND (s.user_id = caller.user_id OR caller.role = 'admin');
        IF session.id IS NULL OR (p_for_user IS NOT NULL AND session.user_id <> p_for_user) THEN
            RETURN jsonb_build_object('error', 'session_not_found', 'caller', caller.user_id);
        END IF;
        IF session.status <> 'active' THEN
            RETURN jsonb_build_object('error', 'session_archived', 'caller', caller.user_id);
        END IF;
        target := session.user_id;
        SELECT coalesce(jsonb_agg(jsonb_build_object('role', h.role, 'content', h.content) ORDER BY h.seq), '[]'),
               coalesce(sum(octet_length(h.content)), 0), count(*)
        INTO history, history_bytes, history_count
        FROM (
            SELECT m.role, m.content, m.seq FROM chat_messages m
            WHERE m.session_id = p_session_id AND m.status = 'ok' AND m.content IS NOT NULL
            ORDER BY m.seq DESC
            LIMIT p_history_limit
        ) h;
    ELSIF NOT EXISTS (SELECT 1 FROM users u WHERE u.id = target) THEN
        RETURN jsonb_build_object('error', 'user_not_found', 'caller', caller.user_id);
    END IF;
    IF p_model_config IS NOT NULL THEN
        SELECT * INTO config FROM model_configs c WHERE c.user_id = target AND c.name = p_model_config;
        IF config.id IS NULL THEN
            RETURN jsonb_build_object('error', 'model_config_not_found', 'caller', caller.user_id);
        END IF;
    ELSIF session.model_config_id IS NOT NULL THEN
        SELECT * INTO config FROM model_configs c WHERE c.id = session.model_config_id;
    END IF;
    model := coalesce(p_model, config.model, p_settings ->> 'default_model');
    max_tokens := coalesce(p_max_tokens, config.max_tokens);
    SELECT * INTO key FROM api_keys k WHERE k.user_id = target AND k.status = 'active';
    IF key.id IS NULL AND NOT coalesce((p_settings ->> 'server_key')::boolean, false) THEN
        RETURN jsonb_build_object('error', 'no_api_key', 'caller', caller.user_id);
    END IF;

    SELECT max(value) FILTER (WHERE kind = 'monthly_budget_usd'),
           max(value) FILTER (WHERE kind = 'requests_per_minute'),
           max(value) FILTER (WHERE kind = 'tokens_per_minute')
    INTO budget, rpm, tpm
    FROM effective_limits(target, p_settings);
    IF budget IS NOT NULL OR rpm IS NOT NULL OR tpm IS NOT NULL THEN
        -- One limit check at a time per user: the check and the reservation are one atomic step.
        PERFORM pg_advisory_xact_lock(hashtextextended('chitty-usage:' || target, 0));
        IF max_tokens IS NULL AND (budget IS NOT NULL OR tpm IS NOT NULL) THEN
            max_tokens := (p_settings ->> 'limited_max_tokens')::integer;
        END IF;
        -- Byte-level BPE never makes more tokens than bytes: an upper bound, not a guess.
        prompt_bound := coalesce(octet_length(coalesce(session.system_prompt, config.system_prompt)), 0)
                        + history_bytes + p_new_bytes + 4 * (history_count + p_new_messages + 1);
        worst_tokens := prompt_bound + coalesce(max_tokens, 0);
        SELECT * INTO used FROM usage_window(target);
        IF budget IS NOT NULL THEN
            price := price_in_force(model, now());
            IF price.id IS NULL THEN
                RETURN jsonb_build_object('error', 'unpriced_model', 'caller', caller.user_id, 'model', model);
            END IF;
            worst_cost := message_cost(price, prompt_bound, 0, max_tokens);
            IF used.spent_usd + used.reserved_usd + worst_cost > budget THEN
                RETURN jsonb_build_object(
                    'error', 'limit', 'caller', caller.user_id, 'user_id', target, 'limit', 'monthly_budget_usd',
                    'limit_value', budget, 'used', used.spent_usd, 'reserved', used.reserved_usd,
                    'requested', round(worst_cost, 6), 'resets_at', used.month_start + interval '1 month');
            END IF;
        END IF;
        IF rpm IS NOT NULL AND used.requests_last_minute + used.reserved_requests + 1 > rpm THEN
            RETURN jsonb_build_object(
                'error', 'limit', 'caller', caller.user_id, 'user_id', target, 'limit', 'requests_per_minute',
                'limit_value', rpm, 'used', used.requests_last_minute, 'reserved', used.reserved_requests,
                'requested', 1,
                'resets_at', coalesce(used.oldest_in_minute, now()) + interval '1 minute');
        END IF;
        IF tpm IS NOT NULL AND used.tokens_last_minute + used.reserved_tokens + worst_tokens > tpm THEN
            RETURN jsonb_build_object(
                'error', 'limit', 'caller', caller.user_id, 'user_id', target, 'limit', 'tokens_per_minute',
                'limit_value', tpm, 'used', used.tokens_last_minute, 'reserved', used.reserved_tokens,
                'requested', worst_tokens,
                'resets_at', coalesce(used.oldest_in_minute, now()) + interval '1 minute');
        END IF;
        INSERT INTO usage_reservations (turn_id, user_id, cost_usd, tokens, expires_at)
        VALUES (p_turn_id, target, worst_cost, worst_tokens,
                now() + make_interval(secs => (p_settings ->> 'reservation_seconds')::integer));
    END IF;

    RETURN jsonb_build_object(
        'caller', caller.user_id,
        'user_id', target,
        'model', model,
        'max_tokens', max_tokens,
        'reserved_usd', worst_cost,
        'session', CASE WHEN session.id IS NULL THEN NULL ELSE jsonb_build_object(
            'id', session.id, 'system_prompt', session.system_prompt, 'status', session.status) END,
        'history', history,
        'config', CASE WHEN config.id IS NULL THEN NULL ELSE jsonb_build_object(
            'name', config.name, 'model', config.model, 'temperature', config.temperature,
            'top_p', config.top_p, 'max_tokens', config.max_tokens, 'system_prompt', config.system_prompt) END,
        'api_key', CASE WHEN key.id IS NULL THEN NULL ELSE jsonb_build_object(
            'id', key.id, 'last_four', key.last_four, 'ciphertext', encode(key.ciphertext, 'base64'),
            'nonce', encode(key.nonce, 'base64'), 'fingerprint', key.key_fingerprint,
            'wrapped_data_key', encode(key.wrapped_data_key, 'base64')) END
    );
END
$$;

COMMENT ON FUNCTION prepare_completion(text, text, uuid, text, integer, uuid, text, integer, integer, integer, jsonb) IS
    'Round trip 1 of a completion: authenticate, authorise, load the session, its recent history, the model '
    'config and the user''s sealed API key, check the limits and reserve the call''s worst case.';
-- record_completion, as in 002, now also settling the turn's reservation, and clamping usage that
-- upstream reported inconsistently (cached > prompt) so that a billed turn is never lost to a CHECK.
CREATE OR REPLACE FUNCTION record_completion(
    p_user_id text,
    p_session_id uuid,
    p_turn_id uuid,
    p_messages jsonb,
    p_reply jsonb,
    p_api_key_id uuid
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_status text := coalesce(p_reply ->> 'status', 'ok');
    recorded jsonb;
BEGIN
    -- A retried record of the same turn (after an unacknowledged COMMIT) writes nothing twice.
    IF NOT EXISTS (SELECT 1 FROM chat_messages WHERE turn_id = p_turn_id) THEN
        INSERT INTO chat_messages (
            session_id, user_id, turn_id, role, content, model, status, error, finish_reason,
            prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens, usage_estimated,
            latency_ms, upstream_request_id)
        SELECT p_session_id, p_user_id, p_turn_id, m.role, m.content, m.model, v_status, m.error, m.finish_reason,
               m.prompt_tokens, m.completion_tokens, m.cached_tokens, m.reasoning_tokens, m.usage_estimated,
               m.latency_ms, m.upstream_request_id
        FROM (
            SELECT n.ordinality AS position, n.value ->> 'role' AS role, n.value ->> 'content' AS content,
                   NULL::text AS model, NULL::text AS error, NULL::text AS finish_reason,
                   0 AS prompt_tokens, 0 AS completion_tokens, 0 AS cached_tokens, 0 AS reasoning_tokens,
                   false AS usage_estimated, NULL::integer AS latency_ms, NULL::text AS upstream_request_id
            FROM jsonb_array_elements(CASE WHEN p_session_id IS NULL THEN '[]'::jsonb ELSE p_messages END)
                 WITH ORDINALITY AS n
            UNION ALL
            SELECT 2147483647, 'assistant',
                   CASE WHEN p_session_id IS NULL THEN NULL ELSE p_reply ->> 'content' END,
                   p_reply ->> 'model', p_reply ->> 'error', p_reply ->> 'finish_reason',
                   coalesce((p_reply ->> 'prompt_tokens')::integer, 0),
                   coalesce((p_reply ->> 'completion_tokens')::integer, 0),
                   least(coalesce((p_reply ->> 'cached_tokens')::integer, 0),
                         coalesce((p_reply ->> 'prompt_tokens')::integer, 0)),
                   least(coalesce((p_reply ->> 'reasoning_tokens')::integer, 0),
                         coalesce((p_reply ->> 'completion_tokens')::integer, 0)),
                   coalesce((p_reply ->> 'usage_estimated')::boolean, false),
                   (p_reply ->> 'latency_ms')::integer,
                   p_reply ->> 'upstream_request_id'
        ) m
        ORDER BY m.position;
        DELETE FROM usage_reservations WHERE turn_id = p_turn_id;
        IF p_api_key_id IS NOT NULL THEN
            UPDATE api_keys SET last_used_at = now() WHERE id = p_api_key_id;
        END IF;
    END IF;
    SELECT jsonb_build_object(
               'message_ids', jsonb_agg(m.id ORDER BY m.id),
               'reply', (SELECT jsonb_build_object('id', r.id, 'seq', r.seq, 'cost_usd', r.cost_usd,
                                                   'price_missing', r.price_missing)
                         FROM chat_messages r WHERE r.turn_id = p_turn_id AND r.role = 'assistant'
                         ORDER BY r.id DESC LIMIT 1))
    INTO recorded
    FROM chat_messages m WHERE m.turn_id = p_turn_id;
    RETURN recorded;
END
$$;

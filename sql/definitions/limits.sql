-- Limits: what is in force for a user, and what counts against it now.
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

CREATE OR REPLACE FUNCTION effective_limits(p_user_id text, p_defaults jsonb)
RETURNS TABLE (kind text, value numeric, source text)
LANGUAGE sql STABLE AS $$
    SELECT k.kind,
           CASE WHEN l.user_id IS NOT NULL THEN l.value ELSE (p_defaults ->> k.kind)::numeric END,
           CASE WHEN l.user_id IS NOT NULL THEN CASE WHEN l.value IS NULL THEN 'none' ELSE 'user' END
                WHEN p_defaults ->> k.kind IS NULL THEN 'none'
                ELSE 'default' END
    FROM (VALUES ('monthly_budget_usd'), ('requests_per_minute'), ('tokens_per_minute'),
                 ('sessions'), ('messages_per_session'), ('bytes_per_session'), ('metadata_bytes_per_session'),
                 ('session_templates'), ('model_configs'), ('api_keys'), ('concurrent_jobs')) AS k (kind)
    LEFT JOIN usage_limits l ON l.user_id = p_user_id AND l.kind = k.kind
$$;

COMMENT ON FUNCTION effective_limits(text, jsonb) IS
    'The limits in force for a user: their own settings, else the configured defaults (source user|default|none).';

CREATE OR REPLACE FUNCTION usage_window(p_user_id text)
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

-- Storage quotas. Each check answers NULL when the write may go ahead, else the refusal: a jsonb
-- {error: quota, quota, limit, used, requested, message} whose message a user can read. Checks that count
-- what a user has take the user's lock first (the one prepare_completion takes for spend and rates), so
-- the count and the caller's write, in the same transaction, are one atomic step.

CREATE OR REPLACE FUNCTION quota_refusal(p_quota text, p_limit numeric, p_used bigint, p_requested bigint,
                                         p_message text)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('error', 'quota', 'quota', p_quota, 'limit', trim_scale(p_limit), 'used', p_used,
                              'requested', p_requested, 'message', p_message)
$$;

COMMENT ON FUNCTION quota_refusal(text, numeric, bigint, bigint, text) IS
    'The refusal of a write over a storage quota: which quota, its limit, what is used and what was asked for.';

CREATE OR REPLACE FUNCTION user_quota(p_user_id text, p_quota text, p_defaults jsonb) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT l.value FROM effective_limits(p_user_id, p_defaults) l WHERE l.kind = p_quota
$$;

COMMENT ON FUNCTION user_quota(text, text, jsonb) IS 'One limit in force for a user; NULL: no limit.';

CREATE OR REPLACE FUNCTION storage_quota_refusal(p_user_id text, p_quota text, p_requested integer,
                                                 p_defaults jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    quota numeric := user_quota(p_user_id, p_quota, p_defaults);
    used bigint;
BEGIN
    IF quota IS NULL THEN
        RETURN NULL;
    END IF;
    -- One storage check at a time per user: the count below sees every write that passed before.
    PERFORM pg_advisory_xact_lock(hashtextextended('chitty-usage:' || p_user_id, 0));
    used := CASE p_quota
        WHEN 'sessions' THEN (SELECT count(*) FROM chat_sessions WHERE user_id = p_user_id)
        WHEN 'session_templates' THEN (SELECT count(*) FROM session_templates WHERE user_id = p_user_id)
        WHEN 'model_configs' THEN (SELECT count(*) FROM model_configs WHERE user_id = p_user_id)
        WHEN 'api_keys' THEN (SELECT count(*) FROM api_keys WHERE user_id = p_user_id)
    END;
    IF used IS NULL THEN
        RAISE EXCEPTION 'storage_quota_refusal: % is not a quota on things a user keeps', p_quota;
    END IF;
    IF used + p_requested <= quota THEN
        RETURN NULL;
    END IF;
    RETURN quota_refusal(p_quota, quota, used, p_requested, format(CASE p_quota
        WHEN 'sessions' THEN
            'Session quota reached: at most %s sessions, and %s are stored. Delete sessions that are no longer '
            'needed (chitty_chat_session_delete), or ask an admin to raise sessions.'
        WHEN 'session_templates' THEN
            'Session template quota reached: at most %s session templates, and %s are stored. Delete one that is '
            'no longer needed (chitty_session_template_delete), or ask an admin to raise session_templates.'
        WHEN 'model_configs' THEN
            'Model config quota reached: at most %s model configs, and %s are stored. Delete one that is no '
            'longer needed (chitty_model_config_delete), or ask an admin to raise model_configs.'
        ELSE
            'API key quota reached: at most %s stored API keys, and %s are stored. Completions can use the '
            'server''s key; ask an admin to raise api_keys.'
        END, trim_scale(quota), used));
END
$$;

COMMENT ON FUNCTION storage_quota_refusal(text, text, integer, jsonb) IS
    'Under the user''s lock: may the user keep p_requested more sessions, session_templates, model_configs or '
    'api_keys? NULL if so, else the refusal.';

CREATE OR REPLACE FUNCTION session_metadata_refusal(p_user_id text, p_metadata jsonb, p_defaults jsonb,
                                                    p_current jsonb DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    -- Whatever the quota says, one session's metadata stays small enough to show in any answer.
    ceiling CONSTANT integer := 262144;
    quota numeric;
    size bigint;
    current_size bigint;
BEGIN
    IF p_metadata IS NULL THEN
        RETURN NULL;
    END IF;
    size := octet_length(CAST(p_metadata AS text));
    quota := least(coalesce(user_quota(p_user_id, 'metadata_bytes_per_session', p_defaults), ceiling), ceiling);
    current_size := coalesce(octet_length(CAST(p_current AS text)), 0);
    -- A change that does not make metadata bigger is always allowed, so old, larger metadata can shrink.
    IF size <= quota OR size <= current_size THEN
        RETURN NULL;
    END IF;
    RETURN quota_refusal('metadata_bytes_per_session', quota, current_size, size, format(
        'Metadata quota: at most %s bytes of metadata (as JSON text) per session, and this metadata has %s. '
        'Keep large data elsewhere and link it by id%s.',
        trim_scale(quota), size,
        CASE WHEN quota < ceiling THEN ', or ask an admin to raise metadata_bytes_per_session' ELSE '' END));
END
$$;

COMMENT ON FUNCTION session_metadata_refusal(text, jsonb, jsonb, jsonb) IS
    'May a user''s session (or template default) metadata become p_metadata (replacing p_current)? NULL if so, '
    'else the refusal. At most 256 KiB even without a quota.';

CREATE OR REPLACE FUNCTION session_prompt_refusal(p_user_id text, p_system_prompt text, p_defaults jsonb)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    quota numeric := user_quota(p_user_id, 'bytes_per_session', p_defaults);
    size bigint := coalesce(octet_length(p_system_prompt), 0);
BEGIN
    IF quota IS NULL OR size <= quota THEN
        RETURN NULL;
    END IF;
    RETURN quota_refusal('bytes_per_session', quota, 0, size, format(
        'Session quota: at most %s bytes of text per session, system prompt included, and this system prompt '
        'has %s. Shorten it, or ask an admin to raise bytes_per_session.', trim_scale(quota), size));
END
$$;

COMMENT ON FUNCTION session_prompt_refusal(text, text, jsonb) IS
    'May a new session of the user start with this system prompt (it counts towards bytes_per_session)? '
    'NULL if so, else the refusal.';

CREATE OR REPLACE FUNCTION session_storage_refusal(p_user_id text, p_session_id uuid, p_new_messages integer,
                                                   p_new_bytes bigint, p_defaults jsonb)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    max_messages numeric;
    max_bytes numeric;
    stored_messages bigint;
    stored_bytes bigint;
    held_messages bigint;
    held_bytes bigint;
BEGIN
    SELECT max(l.value) FILTER (WHERE l.kind = 'messages_per_session'),
           max(l.value) FILTER (WHERE l.kind = 'bytes_per_session')
    INTO max_messages, max_bytes
    FROM effective_limits(p_user_id, p_defaults) l;
    IF max_messages IS NULL AND max_bytes IS NULL THEN
        RETURN NULL;
    END IF;
    -- Checked and reserved in one step by whoever holds the lock until its transaction ends.
    PERFORM pg_advisory_xact_lock(hashtextextended('chitty-usage:' || p_user_id, 0));
    SELECT s.last_seq, coalesce(octet_length(s.system_prompt), 0)
    INTO stored_messages, stored_bytes
    FROM chat_sessions s WHERE s.id = p_session_id AND s.user_id = p_user_id;
    IF NOT FOUND THEN
        RETURN NULL;  -- no such session of this user: nothing of it to bound
    END IF;
    -- Turns in progress hold room in the session until they are recorded (or their reservation expires).
    SELECT coalesce(sum(r.messages), 0), coalesce(sum(r.bytes), 0)
    INTO held_messages, held_bytes
    FROM usage_reservations r WHERE r.session_id = p_session_id AND r.expires_at > now();
    IF max_messages IS NOT NULL AND stored_messages + held_messages + p_new_messages > max_messages THEN
        RETURN quota_refusal('messages_per_session', max_messages, stored_messages + held_messages, p_new_messages,
            format('Session quota reached: at most %s messages per session (this session has %s, this turn adds '
                   '%s). Start a new session, or ask an admin to raise messages_per_session.',
                   trim_scale(max_messages), stored_messages + held_messages, p_new_messages));
    END IF;
    IF max_bytes IS NOT NULL THEN
        -- octet_length reads a stored text's size without fetching it.
        stored_bytes := stored_bytes + (SELECT coalesce(sum(coalesce(octet_length(m.content), 0)
                                                            + coalesce(octet_length(CAST(m.parts AS text)), 0)
                                                            + coalesce(octet_length(CAST(m.tool_calls AS text)), 0)), 0)
                                        FROM chat_messages m WHERE m.session_id = p_session_id);
        IF stored_bytes + held_bytes + p_new_bytes > max_bytes THEN
            RETURN quota_refusal('bytes_per_session', max_bytes, stored_bytes + held_bytes, p_new_bytes,
                format('Session quota reached: at most %s bytes of text per session (this session has %s, this '
                       'turn adds %s). Start a new session, or ask an admin to raise bytes_per_session.',
                       trim_scale(max_bytes), stored_bytes + held_bytes, p_new_bytes));
        END IF;
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION session_storage_refusal(text, uuid, integer, bigint, jsonb) IS
    'May a turn add p_new_messages messages (its reply included) and p_new_bytes bytes of text to the user''s '
    'session? Counts what is stored, system prompt included, and what turns in progress reserved. NULL if so, '
    'else the refusal. Takes the user''s lock: a reservation made in the same transaction is part of the step.';

CREATE OR REPLACE FUNCTION api_key_room(p_user_id text, p_defaults jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    quota numeric := user_quota(p_user_id, 'api_keys', p_defaults);
    stored bigint;
BEGIN
    IF quota IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended('chitty-usage:' || p_user_id, 0));
    SELECT count(*) INTO stored FROM api_keys WHERE user_id = p_user_id;
    IF quota < 1 THEN
        RETURN quota_refusal('api_keys', quota, stored, 1, format(
            'API key quota: at most %s stored API keys, so yours cannot be stored. Completions can use the '
            'server''s key; ask an admin to raise api_keys.', trim_scale(quota)));
    END IF;
    -- Revoked keys are never used again: the oldest go first. The active one goes only when the quota is 1,
    -- since the new key replaces it anyway.
    DELETE FROM api_keys WHERE id IN (
        SELECT k.id FROM api_keys k WHERE k.user_id = p_user_id
        ORDER BY k.status = 'active', k.created_at, k.id
        LIMIT CAST(greatest(stored + 1 - floor(quota), 0) AS bigint));
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION api_key_room(text, jsonb) IS
    'Under the user''s lock, make room for one more stored key within the api_keys quota by deleting the '
    'user''s oldest revoked keys. NULL when there is room, else the refusal (a quota of 0).';

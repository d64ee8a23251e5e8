-- Chat and recording: the triggers that price and count every message, and the two round trips
-- of a completion (prepare_completion, record_completion).
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

-- Cost first, then the session row: one UPDATE takes the next seq and adds the message to the totals.
CREATE OR REPLACE FUNCTION chat_messages_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    price model_pricing;
BEGIN
    IF NEW.role = 'assistant' THEN
        IF NEW.prompt_tokens = 0 AND NEW.completion_tokens = 0 THEN
            NEW.cost_usd := 0;  -- nothing was billed (a failed call)
        ELSE
            price := price_in_force(NEW.model, NEW.created_at);
            IF price.id IS NULL THEN
                NEW.cost_usd := NULL;
                NEW.price_missing := true;
            ELSE
                NEW.pricing_id := price.id;
                NEW.cost_usd := usage_cost(price, NEW.prompt_tokens, NEW.cached_tokens, NEW.cache_write_tokens,
                                           NEW.completion_tokens, NEW.service_tier, NEW.web_search_calls);
            END IF;
        END IF;
    END IF;
    IF NEW.session_id IS NOT NULL THEN
        -- Locks the session row until commit: concurrent turns get consecutive, gap-free numbers,
        -- and the totals move with them.
        UPDATE chat_sessions
        SET last_seq = last_seq + 1,
            message_count = message_count + CASE WHEN NEW.status = 'ok' THEN 1 ELSE 0 END,
            prompt_tokens = prompt_tokens + NEW.prompt_tokens,
            completion_tokens = completion_tokens + NEW.completion_tokens,
            cached_tokens = cached_tokens + NEW.cached_tokens,
            reasoning_tokens = reasoning_tokens + NEW.reasoning_tokens,
            total_cost_usd = total_cost_usd + coalesce(NEW.cost_usd, 0),
            last_activity_at = greatest(last_activity_at, NEW.created_at)
        WHERE id = NEW.session_id
        RETURNING last_seq INTO NEW.seq;
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER chat_messages_before_insert BEFORE INSERT ON chat_messages
    FOR EACH ROW EXECUTE FUNCTION chat_messages_before_insert();

-- The month's spend (read by budget checks) and the analytics queue, filled in the inserting
-- transaction: a queued row becomes visible to a refresh exactly when its message does.
CREATE OR REPLACE FUNCTION chat_messages_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO usage_monthly AS m (user_id, month, requests, cost_usd)
    SELECT user_id, date_trunc('month', created_at AT TIME ZONE 'UTC')::date, count(*), coalesce(sum(cost_usd), 0)
    FROM inserted WHERE role = 'assistant'
    GROUP BY 1, 2
    ON CONFLICT (user_id, month) DO UPDATE
    SET requests = m.requests + EXCLUDED.requests, cost_usd = m.cost_usd + EXCLUDED.cost_usd;
    INSERT INTO usage_pending (message_id, user_id, model, status, prompt_tokens, completion_tokens, cached_tokens,
                               reasoning_tokens, cost_usd, latency_ms, created_at)
    SELECT id, user_id, model, status, prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens,
           cost_usd, latency_ms, created_at
    FROM inserted WHERE role = 'assistant';
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER chat_messages_after_insert AFTER INSERT ON chat_messages
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION chat_messages_after_insert();

-- What a model refuses of a call, before anything is sent: NULL when it accepts it all. p_info is the
-- catalogue's model_info (NULL for a model it does not know: the upstream then decides), p_options the
-- call's settings merged over its model config's, p_from_config the names of those that came from the
-- config, p_features what the messages and arguments hold.
CREATE OR REPLACE FUNCTION completion_refusal(
    p_model text,
    p_info jsonb,
    p_options jsonb,
    p_from_config text[],
    p_features jsonb,
    p_settings jsonb
) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    parameter text;
    effort text := p_options ->> 'reasoning_effort';
BEGIN
    IF p_settings ->> 'api' = 'chat' THEN
        FOREACH parameter IN ARRAY ARRAY['reasoning_summary', 'web_search'] LOOP
            IF p_options ? parameter THEN
                RETURN jsonb_build_object('error', 'needs_responses', 'parameter', parameter, 'model', p_model,
                                          'from_config', parameter = ANY (p_from_config));
            END IF;
        END LOOP;
        IF (p_features ->> 'file_urls')::integer > 0 THEN
            RETURN jsonb_build_object('error', 'needs_responses', 'parameter', 'file_url', 'model', p_model,
                                      'from_config', false);
        END IF;
    END IF;
    IF p_info IS NULL THEN
        RETURN NULL;
    END IF;
    IF (p_info ->> 'retired')::boolean AND (p_settings ->> 'official_openai')::boolean THEN
        RETURN jsonb_build_object('error', 'model_retired', 'model', p_model, 'shutdown_on', p_info -> 'shutdown_on',
                                  'successor', p_info -> 'successor');
    END IF;
    IF p_settings ->> 'api' = 'chat' AND NOT (p_info -> 'apis') ? 'chat' THEN
        RETURN jsonb_build_object('error', 'needs_responses', 'parameter', 'model', 'model', p_model,
                                  'from_config', false);
    END IF;
    IF (p_info ->> 'reasoning')::boolean THEN
        -- Reasoning models take no sampling parameters, except at reasoning effort none.
        FOREACH parameter IN ARRAY ARRAY['temperature', 'top_p'] LOOP
            IF p_options ? parameter AND effort IS DISTINCT FROM 'none' THEN
                RETURN jsonb_build_object('error', 'unsupported_parameter', 'parameter', parameter, 'model', p_model,
                                          'from_config', parameter = ANY (p_from_config), 'reasoning', true);
            END IF;
        END LOOP;
        IF effort IS NOT NULL AND NOT (p_info -> 'efforts') ? effort THEN
            RETURN jsonb_build_object('error', 'unsupported_value', 'parameter', 'reasoning_effort', 'value', effort,
                                      'accepted', p_info -> 'efforts', 'model', p_model,
                                      'from_config', 'reasoning_effort' = ANY (p_from_config));
        END IF;
    ELSE
        FOREACH parameter IN ARRAY ARRAY['reasoning_effort', 'verbosity', 'reasoning_summary'] LOOP
            IF p_options ? parameter THEN
                RETURN jsonb_build_object('error', 'unsupported_parameter', 'parameter', parameter, 'model', p_model,
                                          'from_config', parameter = ANY (p_from_config), 'reasoning', false);
            END IF;
        END LOOP;
    END IF;
    IF (p_features ->> 'images')::integer > 0 AND NOT (p_info ->> 'vision')::boolean THEN
        RETURN jsonb_build_object('error', 'unsupported_input', 'what', 'images', 'model', p_model);
    END IF;
    IF (p_features ->> 'files')::integer > 0 AND NOT (p_info ->> 'pdf')::boolean THEN
        RETURN jsonb_build_object('error', 'unsupported_input', 'what', 'files', 'model', p_model);
    END IF;
    IF (p_features ->> 'tools')::boolean AND NOT (p_info ->> 'function_calling')::boolean THEN
        RETURN jsonb_build_object('error', 'unsupported_input', 'what', 'tools', 'model', p_model);
    END IF;
    IF p_features ->> 'format' = 'json_schema' AND NOT (p_info ->> 'structured_output')::boolean THEN
        RETURN jsonb_build_object('error', 'unsupported_input', 'what', 'response_format', 'model', p_model);
    END IF;
    IF p_options ? 'web_search' AND NOT (p_info ->> 'web_search')::boolean THEN
        RETURN jsonb_build_object('error', 'unsupported_input', 'what', 'web_search', 'model', p_model);
    END IF;
    RETURN NULL;
END
$$;

COMMENT ON FUNCTION completion_refusal(text, jsonb, jsonb, text[], jsonb, jsonb) IS
    'What a model refuses of a completion (a retired model on OpenAI, sampling on a reasoning model, an effort it '
    'does not take, inputs it cannot read, a Responses-only feature on Chat Completions); NULL if nothing.';

-- An upper bound of a message's prompt tokens, in what can be counted before sending: the bytes of its
-- text (byte-level BPE never makes more tokens than bytes), a fixed bound per image and per file by URL
-- (p_settings image_token_bound, file_token_bound), the bytes of a file sent inline, its tool calls.
CREATE OR REPLACE FUNCTION prompt_bound(p_message jsonb, p_settings jsonb) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT 4 + CASE jsonb_typeof(p_message -> 'content')
                   WHEN 'string' THEN octet_length(p_message ->> 'content')
                   WHEN 'array' THEN (
                       SELECT coalesce(sum(CASE part ->> 'type'
                                   WHEN 'text' THEN octet_length(part ->> 'text')
                                   WHEN 'image_url' THEN (p_settings ->> 'image_token_bound')::bigint
                                   WHEN 'file' THEN coalesce(octet_length(part -> 'file' ->> 'file_data'),
                                                             (p_settings ->> 'file_token_bound')::bigint)
                                   ELSE octet_length(part::text) END), 0)
                       FROM jsonb_array_elements(p_message -> 'content') AS part)
                   ELSE 0 END
             + coalesce(octet_length((p_message -> 'tool_calls')::text), 0)
$$;

COMMENT ON FUNCTION prompt_bound(jsonb, jsonb) IS
    'An upper bound of the prompt tokens of one outgoing message (text bytes, a bound per image and file URL).';

-- Round trip 1: everything a completion needs before it calls the upstream.
CREATE OR REPLACE FUNCTION prepare_completion(
    p_token_hash text,
    p_for_user text,
    p_session_id uuid,
    p_model_config text,
    p_history_limit integer,
    p_turn_id uuid,
    p_model text,
    p_max_tokens integer,
    p_messages jsonb,
    p_options jsonb,
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
    system_prompt text;
    outgoing jsonb;
    model text;
    info jsonb;
    options jsonb;
    from_config text[];
    max_tokens integer;
    max_tool_calls integer;
    budget numeric;
    rpm numeric;
    tpm numeric;
    used record;
    price model_pricing;
    prompt_tokens_bound bigint;
    worst_cost numeric;
    worst_tokens integer;
    new_bytes bigint := 0;
    refusal jsonb;
BEGIN
    -- Lock waits (the user's limits and quotas) end on the server, below the client's own timeout.
    PERFORM set_config('lock_timeout', (p_settings ->> 'lock_timeout_ms') || 'ms', true);
    SELECT * INTO caller FROM authenticate_token(p_token_hash);
    -- An OAuth token works only at the resource it was granted for (RFC 8707).
    IF caller.user_id IS NULL
       OR (caller.resource IS NOT NULL AND caller.resource IS DISTINCT FROM p_settings ->> 'resource') THEN
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
        -- The last messages, as they were sent: text or parts, tool calls and tool results. A window that
        -- begins with tool results whose call fell outside it starts after them (a result needs its call).
        SELECT coalesce(jsonb_agg(h.message ORDER BY h.seq), '[]')
        INTO history
        FROM (
            SELECT w.seq, w.message, w.role, min(w.seq) FILTER (WHERE w.role <> 'tool') OVER () AS first_call
            FROM (
                SELECT m.seq, m.role,
                       jsonb_strip_nulls(jsonb_build_object(
                           'role', m.role, 'content', coalesce(m.parts, to_jsonb(m.content)),
                           'tool_calls', m.tool_calls, 'tool_call_id', m.tool_call_id)) AS message
                FROM chat_messages m
                WHERE m.session_id = p_session_id AND m.status = 'ok'
                  AND (m.content IS NOT NULL OR m.parts IS NOT NULL OR m.tool_calls IS NOT NULL)
                ORDER BY m.seq DESC
                LIMIT p_history_limit
            ) w
        ) h
        WHERE h.role <> 'tool' OR h.seq > h.first_call;
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
    -- The message list that is sent, built here once: the reservation below is computed from it, and the
    -- caller sends it as it is. An empty system prompt counts as none, so the config's applies.
    system_prompt := coalesce(nullif(session.system_prompt, ''), nullif(config.system_prompt, ''));
    outgoing := CASE WHEN system_prompt IS NULL THEN '[]'::jsonb
                     ELSE jsonb_build_array(jsonb_build_object('role', 'system', 'content', system_prompt)) END
                || history || p_messages;
    model := coalesce(p_model, config.model, p_settings ->> 'default_model');
    max_tokens := coalesce(p_max_tokens, config.max_tokens);
    -- The call's settings over its config's, and what the model accepts of them.
    options := jsonb_strip_nulls(jsonb_build_object(
        'temperature', config.temperature, 'top_p', config.top_p, 'reasoning_effort', config.reasoning_effort,
        'verbosity', config.verbosity, 'reasoning_summary', config.reasoning_summary,
        'service_tier', config.service_tier, 'web_search', config.web_search));
    from_config := ARRAY(SELECT jsonb_object_keys(options - ARRAY(SELECT jsonb_object_keys(p_options -> 'settings'))));
    -- A setting given as null clears the config's (web_search false).
    options := jsonb_strip_nulls(options || (p_options -> 'settings'));
    info := model_info(model);
    refusal := completion_refusal(model, info, options, from_config, p_options -> 'features', p_settings);
    IF refusal IS NOT NULL THEN
        RETURN refusal || jsonb_build_object('caller', caller.user_id, 'config', config.name);
    END IF;
    SELECT * INTO key FROM api_keys k WHERE k.user_id = target AND k.status = 'active';
    IF key.id IS NULL AND NOT coalesce((p_settings ->> 'server_key')::boolean, false) THEN
        RETURN jsonb_build_object('error', 'no_api_key', 'caller', caller.user_id);
    END IF;
    IF session.id IS NOT NULL THEN
        -- The session's quotas: its new messages and the reply, checked and reserved under the user's lock.
        SELECT coalesce(sum(coalesce(octet_length(m.value ->> 'content'), 0)
                            + coalesce(octet_length((m.value -> 'tool_calls')::text), 0)), 0)
        INTO new_bytes
        FROM jsonb_array_elements(p_messages) AS m;
        refusal := session_storage_refusal(target, session.id, jsonb_array_length(p_messages) + 1, new_bytes,
                                           p_settings);
        IF refusal IS NOT NULL THEN
            RETURN refusal || jsonb_build_object('caller', caller.user_id);
        END IF;
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
            -- A reasoning model spends output tokens thinking before it writes: it gets the larger cap.
            max_tokens := (p_settings ->> CASE WHEN coalesce((info ->> 'reasoning')::boolean, false)
                                               THEN 'limited_max_tokens_reasoning' ELSE 'limited_max_tokens' END
                          )::integer;
            max_tokens := least(max_tokens, (info ->> 'max_output')::integer);
        END IF;
        IF options ? 'web_search' THEN
            -- Each search is billed: a bounded number of them, sent as max_tool_calls.
            max_tool_calls := (p_settings ->> 'limited_tool_calls')::integer;
        END IF;
        -- An upper bound of exactly what is sent: the messages, and the tools and schema given with them.
        SELECT coalesce(sum(prompt_bound(m.value, p_settings)), 0) + 4 + (p_options ->> 'extra_bytes')::bigint
        INTO prompt_tokens_bound
        FROM jsonb_array_elements(outgoing) AS m;
        worst_tokens := least(prompt_tokens_bound + coalesce(max_tokens, 0), 2147483647);
        SELECT * INTO used FROM usage_window(target);
        IF budget IS NOT NULL THEN
            price := price_in_force(model, now());
            IF price.id IS NULL THEN
                RETURN jsonb_build_object('error', 'unpriced_model', 'caller', caller.user_id, 'model', model);
            END IF;
            -- At the tier asked for; auto (or none) is the project's default tier, which is 'default' unless
            -- the OpenAI project was set to another (README: Limits).
            worst_cost := usage_cost(price, least(prompt_tokens_bound, 2147483647)::integer, 0, 0, max_tokens,
                                     options ->> 'service_tier', coalesce(max_tool_calls, 0));
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
    END IF;
    IF worst_tokens IS NOT NULL OR session.id IS NOT NULL THEN
        INSERT INTO usage_reservations (turn_id, user_id, cost_usd, tokens, expires_at, session_id, messages, bytes)
        VALUES (p_turn_id, target, worst_cost, coalesce(worst_tokens, 0),
                now() + make_interval(secs => (p_settings ->> 'reservation_seconds')::integer), session.id,
                CASE WHEN session.id IS NULL THEN 0 ELSE jsonb_array_length(p_messages) + 1 END, new_bytes);
    END IF;

    RETURN jsonb_build_object(
        'caller', caller.user_id,
        'user_id', target,
        'model', model,
        'max_tokens', max_tokens,
        'max_tool_calls', max_tool_calls,
        'options', options,
        'reasoning', coalesce((info ->> 'reasoning')::boolean, false),
        'reserved_usd', worst_cost,
        'session', CASE WHEN session.id IS NULL THEN NULL ELSE jsonb_build_object(
            'id', session.id, 'status', session.status) END,
        'messages', outgoing,
        'api_key', CASE WHEN key.id IS NULL THEN NULL ELSE jsonb_build_object(
            'id', key.id, 'last_four', key.last_four, 'ciphertext', encode(key.ciphertext, 'base64'),
            'nonce', encode(key.nonce, 'base64'), 'fingerprint', key.key_fingerprint,
            'wrapped_data_key', encode(key.wrapped_data_key, 'base64')) END
    );
END
$$;

COMMENT ON FUNCTION prepare_completion(text, text, uuid, text, integer, uuid, text, integer, jsonb, jsonb, jsonb) IS
    'Round trip 1 of a completion: authenticate, authorise, load the session, its recent history, the model '
    'config and the user''s sealed API key, merge the call''s settings over the config''s, refuse what the model '
    'does not accept, build the message list to send, check the limits and reserve the worst case of exactly '
    'what is sent.';

-- Round trip 2: the turn, once. The ledger's key makes it idempotent: a second record of the same turn
-- (a retry whose first attempt may still be running) waits for the first, inserts nothing and returns
-- what the first stored. A session deleted while the upstream answered no longer takes the turn's
-- messages; its usage is recorded against the user all the same.
CREATE OR REPLACE FUNCTION record_completion(
    p_user_id text,
    p_session_id uuid,
    p_turn_id uuid,
    p_messages jsonb,
    p_reply jsonb,
    p_api_key_id uuid,
    p_settings jsonb
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_session uuid := p_session_id;
    v_prompt integer := coalesce((p_reply ->> 'prompt_tokens')::integer, 0);
    v_completion integer := coalesce((p_reply ->> 'completion_tokens')::integer, 0);
    recorded jsonb;
BEGIN
    -- Lock waits (the session row, a concurrent record of this turn) end on the server, below the
    -- client's own timeout: a failure the caller can tell from a lost connection.
    PERFORM set_config('lock_timeout', (p_settings ->> 'lock_timeout_ms') || 'ms', true);
    INSERT INTO completion_turns (turn_id, user_id) VALUES (p_turn_id, p_user_id) ON CONFLICT (turn_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN completion_turn(p_turn_id) || jsonb_build_object('already_recorded', true);
    END IF;
    IF v_session IS NOT NULL THEN
        -- The lock the sequence trigger takes anyway, taken first: the session cannot go while the turn is stored.
        PERFORM 1 FROM chat_sessions WHERE id = v_session FOR NO KEY UPDATE;
        IF NOT FOUND THEN
            v_session := NULL;
        END IF;
    END IF;
    -- Usage that upstream reported inconsistently (cached > prompt) is clamped so a billed turn never
    -- fails a CHECK. Without a session the turn stores its reply's usage only: one row.
    IF v_session IS NULL THEN
        INSERT INTO chat_messages (user_id, turn_id, role, model, status, error, finish_reason, prompt_tokens,
                                   completion_tokens, cached_tokens, reasoning_tokens, cache_write_tokens,
                                   web_search_calls, service_tier, usage_estimated, latency_ms, upstream_request_id,
                                   usage_only)
        VALUES (p_user_id, p_turn_id, 'assistant', p_reply ->> 'model', coalesce(p_reply ->> 'status', 'ok'),
                p_reply ->> 'error', p_reply ->> 'finish_reason', v_prompt, v_completion,
                least(coalesce((p_reply ->> 'cached_tokens')::integer, 0), v_prompt),
                least(coalesce((p_reply ->> 'reasoning_tokens')::integer, 0), v_completion),
                least(coalesce((p_reply ->> 'cache_write_tokens')::integer, 0),
                      v_prompt - least(coalesce((p_reply ->> 'cached_tokens')::integer, 0), v_prompt)),
                coalesce((p_reply ->> 'web_search_calls')::integer, 0), p_reply ->> 'service_tier',
                coalesce((p_reply ->> 'usage_estimated')::boolean, false),
                (p_reply ->> 'latency_ms')::integer, p_reply ->> 'upstream_request_id',
                p_session_id IS NOT NULL OR coalesce((p_reply ->> 'usage_only')::boolean, false))
        RETURNING jsonb_build_object(
            'message_ids', jsonb_build_array(id),
            'reply', jsonb_build_object('id', id, 'seq', seq, 'cost_usd', cost_usd, 'price_missing', price_missing),
            'usage_only', usage_only)
        INTO recorded;
    ELSE
        -- In a session: the new messages in order, then the reply, which carries the usage. A message given as
        -- parts keeps them as parts; tool calls and tool results keep their ids.
        WITH inserted AS (
            INSERT INTO chat_messages (session_id, user_id, turn_id, role, content, parts, tool_calls, tool_call_id,
                                       model, status, error, finish_reason, prompt_tokens, completion_tokens,
                                       cached_tokens, reasoning_tokens, cache_write_tokens, web_search_calls,
                                       service_tier, usage_estimated, latency_ms, upstream_request_id)
            SELECT v_session, p_user_id, p_turn_id, m.role, m.content, m.parts, m.tool_calls, m.tool_call_id, m.model,
                   coalesce(p_reply ->> 'status', 'ok'), m.error, m.finish_reason, m.prompt_tokens,
                   m.completion_tokens, m.cached_tokens, m.reasoning_tokens, m.cache_write_tokens,
                   m.web_search_calls, m.service_tier, m.usage_estimated, m.latency_ms, m.upstream_request_id
            FROM (
                SELECT n.ordinality AS position, n.value ->> 'role' AS role,
                       CASE WHEN jsonb_typeof(n.value -> 'content') = 'array' THEN NULL
                            ELSE n.value ->> 'content' END AS content,
                       CASE WHEN jsonb_typeof(n.value -> 'content') = 'array' THEN n.value -> 'content' END AS parts,
                       n.value -> 'tool_calls' AS tool_calls, n.value ->> 'tool_call_id' AS tool_call_id,
                       NULL::text AS model, NULL::text AS error, NULL::text AS finish_reason,
                       0 AS prompt_tokens, 0 AS completion_tokens, 0 AS cached_tokens, 0 AS reasoning_tokens,
                       0 AS cache_write_tokens, 0 AS web_search_calls, NULL::text AS service_tier,
                       false AS usage_estimated, NULL::integer AS latency_ms, NULL::text AS upstream_request_id
                FROM jsonb_array_elements(p_messages) WITH ORDINALITY AS n
                UNION ALL
                SELECT 2147483647, 'assistant', p_reply ->> 'content', NULL, nullif(p_reply -> 'tool_calls', 'null'), NULL,
                       p_reply ->> 'model', p_reply ->> 'error', p_reply ->> 'finish_reason', v_prompt, v_completion,
                       least(coalesce((p_reply ->> 'cached_tokens')::integer, 0), v_prompt),
                       least(coalesce((p_reply ->> 'reasoning_tokens')::integer, 0), v_completion),
                       least(coalesce((p_reply ->> 'cache_write_tokens')::integer, 0),
                             v_prompt - least(coalesce((p_reply ->> 'cached_tokens')::integer, 0), v_prompt)),
                       coalesce((p_reply ->> 'web_search_calls')::integer, 0), p_reply ->> 'service_tier',
                       coalesce((p_reply ->> 'usage_estimated')::boolean, false),
                       (p_reply ->> 'latency_ms')::integer, p_reply ->> 'upstream_request_id'
            ) m
            ORDER BY m.position
            RETURNING id, role, seq, cost_usd, price_missing
        )
        SELECT jsonb_build_object(
                   'message_ids', jsonb_agg(i.id ORDER BY i.id),
                   'reply', (jsonb_agg(jsonb_build_object('id', i.id, 'seq', i.seq, 'cost_usd', i.cost_usd,
                                                          'price_missing', i.price_missing))
                             FILTER (WHERE i.role = 'assistant')) -> 0,
                   'usage_only', false)
        INTO recorded
        FROM inserted i;
    END IF;
    DELETE FROM usage_reservations WHERE turn_id = p_turn_id;
    IF p_api_key_id IS NOT NULL THEN
        UPDATE api_keys SET last_used_at = now() WHERE id = p_api_key_id;
    END IF;
    RETURN recorded;
END
$$;

COMMENT ON FUNCTION record_completion(text, uuid, uuid, jsonb, jsonb, uuid, jsonb) IS
    'Round trip 2 of a completion: store the new messages (in a session) and the reply with its usage, settle '
    'the reservation; cost, seq, session totals, month spend and the analytics queue follow by trigger. '
    'Idempotent per turn.';

-- The last resort when the turn cannot be stored as messages: its usage alone, against its user.
CREATE OR REPLACE FUNCTION record_completion_usage(
    p_user_id text,
    p_turn_id uuid,
    p_reply jsonb,
    p_settings jsonb
) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT record_completion(p_user_id, NULL, p_turn_id, '[]'::jsonb,
                             (p_reply - 'content') || jsonb_build_object('usage_only', true), NULL, p_settings)
$$;

COMMENT ON FUNCTION record_completion_usage(text, uuid, jsonb, jsonb) IS
    'Record only the usage of a turn, with no session and no text (flagged usage_only); idempotent per turn.';

-- What the books hold of one turn, for a caller that could not learn whether recording it succeeded.
CREATE OR REPLACE FUNCTION completion_turn(p_turn_id uuid) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
               'turn_id', p_turn_id,
               'user_id', (array_agg(m.user_id))[1],
               'session_id', (array_agg(m.session_id) FILTER (WHERE m.role = 'assistant'))[1],
               'message_ids', jsonb_agg(m.id ORDER BY m.id),
               'reply', (jsonb_agg(jsonb_build_object('id', m.id, 'seq', m.seq, 'cost_usd', m.cost_usd,
                                                      'price_missing', m.price_missing, 'status', m.status,
                                                      'model', m.model, 'prompt_tokens', m.prompt_tokens,
                                                      'completion_tokens', m.completion_tokens,
                                                      'usage_estimated', m.usage_estimated,
                                                      'created_at', m.created_at))
                         FILTER (WHERE m.role = 'assistant')) -> 0,
               'usage_only', bool_or(m.usage_only))
    FROM chat_messages m
    WHERE m.turn_id = p_turn_id
    HAVING count(*) > 0
$$;

COMMENT ON FUNCTION completion_turn(uuid) IS 'The recorded messages, reply and usage of a turn; NULL if none.';

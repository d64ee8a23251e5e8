-- Completions: prices, messages with exact cost, session totals, stored API keys, model configs,
-- and the two functions a completion calls (prepare_completion, record_completion).

CREATE TABLE model_pricing (
    id                    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model                 text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    input_per_mtok        numeric(14, 6) NOT NULL CHECK (input_per_mtok >= 0),
    cached_input_per_mtok numeric(14, 6) CHECK (cached_input_per_mtok >= 0),
    output_per_mtok       numeric(14, 6) NOT NULL CHECK (output_per_mtok >= 0),
    effective_from        timestamptz NOT NULL,
    created_at            timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model, effective_from)
);

COMMENT ON TABLE model_pricing IS
    'USD per million tokens by model, effective-dated: a row applies from effective_from until the next row of the model.';
COMMENT ON COLUMN model_pricing.model IS 'Base model name (gpt-4o); dated snapshots (gpt-4o-2024-08-06) use it.';
COMMENT ON COLUMN model_pricing.cached_input_per_mtok IS 'Price of cached prompt tokens; NULL: billed as input.';

INSERT INTO model_pricing (model, input_per_mtok, cached_input_per_mtok, output_per_mtok, effective_from) VALUES
    ('gpt-4o',        2.50, 1.25,  10.00, '2024-01-01'),
    ('gpt-4o-mini',   0.15, 0.075,  0.60, '2024-01-01'),
    ('gpt-4.1',       2.00, 0.50,   8.00, '2024-01-01'),
    ('gpt-4.1-mini',  0.40, 0.10,   1.60, '2024-01-01'),
    ('gpt-4.1-nano',  0.10, 0.025,  0.40, '2024-01-01'),
    ('o3',            2.00, 0.50,   8.00, '2024-01-01'),
    ('o4-mini',       1.10, 0.275,  4.40, '2024-01-01'),
    ('gpt-5',         1.25, 0.125, 10.00, '2024-01-01'),
    ('gpt-5-mini',    0.25, 0.025,  2.00, '2024-01-01'),
    ('gpt-5-nano',    0.05, 0.005,  0.40, '2024-01-01'),
    ('gpt-4',        30.00, NULL,  60.00, '2024-01-01'),
    ('gpt-3.5-turbo', 0.50, NULL,   1.50, '2024-01-01');

CREATE TABLE model_configs (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    model         text NOT NULL CHECK (length(model) BETWEEN 1 AND 200),
    temperature   numeric(4, 3) CHECK (temperature BETWEEN 0 AND 2),
    top_p         numeric(4, 3) CHECK (top_p BETWEEN 0 AND 1),
    max_tokens    integer CHECK (max_tokens > 0),
    system_prompt text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, name)
);

COMMENT ON TABLE model_configs IS 'A user''s named model settings, usable as model_config in completions.';

ALTER TABLE chat_sessions
    ADD COLUMN model_config_id uuid REFERENCES model_configs (id) ON DELETE SET NULL,
    ADD COLUMN last_seq integer NOT NULL DEFAULT 0,
    ADD COLUMN cached_tokens bigint NOT NULL DEFAULT 0,
    ADD COLUMN reasoning_tokens bigint NOT NULL DEFAULT 0;

COMMENT ON COLUMN chat_sessions.model_config_id IS 'Default model settings of the session''s completions.';
CREATE INDEX chat_sessions_user_activity_idx ON chat_sessions (user_id, last_activity_at DESC, id DESC);

COMMENT ON COLUMN chat_sessions.last_seq IS 'Sequence number of the session''s latest message; the next one gets last_seq + 1.';

CREATE TABLE api_keys (
    id             uuid PRIMARY KEY,
    user_id        text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    label          text,
    last_four      text NOT NULL CHECK (length(last_four) <= 4),
    ciphertext     bytea NOT NULL,
    nonce          bytea NOT NULL CHECK (length(nonce) = 12),
    key_fingerprint text NOT NULL,
    wrapped_data_key bytea,
    status         text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    last_used_at   timestamptz
);

COMMENT ON TABLE api_keys IS 'Users'' own OpenAI keys, AES-256-GCM encrypted; the plain key is never stored.';
COMMENT ON COLUMN api_keys.ciphertext IS 'AES-256-GCM ciphertext and tag of the key; associated data binds user_id and id.';
COMMENT ON COLUMN api_keys.key_fingerprint IS 'Which encryption key sealed the row (first bytes of its SHA-256), for rotation.';
COMMENT ON COLUMN api_keys.wrapped_data_key IS 'KMS-wrapped data key when envelope encryption is on; NULL: sealed by the local key.';
COMMENT ON COLUMN api_keys.last_four IS 'Last four characters of the key, to tell keys apart in lists and errors.';

CREATE UNIQUE INDEX api_keys_one_active_per_user ON api_keys (user_id) WHERE status = 'active';

CREATE TABLE chat_messages (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id          uuid REFERENCES chat_sessions (id) ON DELETE SET NULL,
    user_id             text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    seq                 integer,
    turn_id             uuid NOT NULL,
    role                text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content             text,
    model               text,
    status              text NOT NULL DEFAULT 'ok' CHECK (status IN ('ok', 'error')),
    error               text,
    finish_reason       text,
    prompt_tokens       integer NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0),
    completion_tokens   integer NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0),
    cached_tokens       integer NOT NULL DEFAULT 0 CHECK (cached_tokens >= 0 AND cached_tokens <= prompt_tokens),
    reasoning_tokens    integer NOT NULL DEFAULT 0
                        CHECK (reasoning_tokens >= 0 AND reasoning_tokens <= completion_tokens),
    usage_estimated     boolean NOT NULL DEFAULT false,
    cost_usd            numeric(20, 10),
    price_missing       boolean NOT NULL DEFAULT false,
    pricing_id          bigint REFERENCES model_pricing (id),
    latency_ms          integer,
    upstream_request_id text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (session_id, seq)
);

COMMENT ON TABLE chat_messages IS
    'Every message of every session, and one assistant row per completion (with or without a session) carrying its usage.';
COMMENT ON COLUMN chat_messages.session_id IS 'NULL for one-off completions, and after the session was deleted.';
COMMENT ON COLUMN chat_messages.seq IS 'Gap-free 1, 2, 3... within a session, assigned by SQL at insert.';
COMMENT ON COLUMN chat_messages.turn_id IS 'The completion call that wrote the row: its messages and reply share it.';
COMMENT ON COLUMN chat_messages.content IS
    'Message text. NULL for the usage row of a one-off completion, and once the session is deleted.';
COMMENT ON COLUMN chat_messages.model IS 'Model that actually answered, as upstream reported it (may be a dated snapshot).';
COMMENT ON COLUMN chat_messages.status IS 'error: the turn failed upstream; kept for the record, never sent as history.';
COMMENT ON COLUMN chat_messages.cached_tokens IS 'Prompt tokens served from the prompt cache (part of prompt_tokens).';
COMMENT ON COLUMN chat_messages.reasoning_tokens IS 'Reasoning tokens (part of completion_tokens, billed as output).';
COMMENT ON COLUMN chat_messages.usage_estimated IS 'Upstream reported no usage; tokens were estimated from the text.';
COMMENT ON COLUMN chat_messages.cost_usd IS 'Computed at insert from the price in force at created_at; never recomputed.';
COMMENT ON COLUMN chat_messages.price_missing IS 'No price was known for the model: cost_usd is NULL.';
COMMENT ON COLUMN chat_messages.upstream_request_id IS 'OpenAI''s x-request-id, for support tickets.';

CREATE INDEX chat_messages_session_seq_idx ON chat_messages (session_id, seq DESC) WHERE session_id IS NOT NULL;
CREATE INDEX chat_messages_user_time_idx ON chat_messages (user_id, created_at);
CREATE INDEX chat_messages_turn_idx ON chat_messages (turn_id);

-- Prices

CREATE FUNCTION pricing_model_name(p_model text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    -- gpt-4o-2024-08-06 -> gpt-4o, gpt-4-0613 -> gpt-4
    SELECT regexp_replace(p_model, '-(\d{4}-\d{2}-\d{2}|\d{4})$', '')
$$;

COMMENT ON FUNCTION pricing_model_name(text) IS 'The base model a dated snapshot name is priced as.';

CREATE FUNCTION price_in_force(p_model text, p_at timestamptz) RETURNS model_pricing
LANGUAGE sql STABLE AS $$
    SELECT p.* FROM model_pricing p
    WHERE p.model IN (p_model, pricing_model_name(p_model)) AND p.effective_from <= p_at
    ORDER BY (p.model = p_model) DESC, p.effective_from DESC
    LIMIT 1
$$;

COMMENT ON FUNCTION price_in_force(text, timestamptz) IS
    'The price row of a model (exact name first, else its base model) in force at a time; NULL if none.';

CREATE FUNCTION message_cost(p_price model_pricing, p_prompt integer, p_cached integer, p_completion integer)
RETURNS numeric
LANGUAGE sql IMMUTABLE AS $$
    SELECT ((p_prompt - p_cached) * p_price.input_per_mtok
            + p_cached * coalesce(p_price.cached_input_per_mtok, p_price.input_per_mtok)
            + p_completion * p_price.output_per_mtok) / 1000000
$$;

COMMENT ON FUNCTION message_cost(model_pricing, integer, integer, integer) IS
    'USD for a usage: uncached prompt at input price, cached at cached-input price, completion (reasoning included) at output price.';

-- Triggers on chat_messages: cost and sequence before insert, session totals after.

CREATE FUNCTION chat_messages_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    price model_pricing;
BEGIN
    IF NEW.session_id IS NOT NULL THEN
        -- Locks the session row until commit: concurrent turns get consecutive, gap-free numbers.
        UPDATE chat_sessions SET last_seq = last_seq + 1 WHERE id = NEW.session_id RETURNING last_seq INTO NEW.seq;
    END IF;
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
                NEW.cost_usd := message_cost(price, NEW.prompt_tokens, NEW.cached_tokens, NEW.completion_tokens);
            END IF;
        END IF;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER chat_messages_before_insert BEFORE INSERT ON chat_messages
    FOR EACH ROW EXECUTE FUNCTION chat_messages_before_insert();

CREATE FUNCTION chat_messages_after_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE chat_sessions s
    SET message_count = s.message_count + t.messages,
        prompt_tokens = s.prompt_tokens + t.prompt_tokens,
        completion_tokens = s.completion_tokens + t.completion_tokens,
        cached_tokens = s.cached_tokens + t.cached_tokens,
        reasoning_tokens = s.reasoning_tokens + t.reasoning_tokens,
        total_cost_usd = s.total_cost_usd + t.cost,
        last_activity_at = greatest(s.last_activity_at, t.last_at)
    FROM (
        SELECT session_id,
               count(*) FILTER (WHERE status = 'ok') AS messages,
               sum(prompt_tokens) AS prompt_tokens,
               sum(completion_tokens) AS completion_tokens,
               sum(cached_tokens) AS cached_tokens,
               sum(reasoning_tokens) AS reasoning_tokens,
               coalesce(sum(cost_usd), 0) AS cost,
               max(created_at) AS last_at
        FROM inserted
        WHERE session_id IS NOT NULL
        GROUP BY session_id
    ) t
    WHERE s.id = t.session_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER chat_messages_after_insert AFTER INSERT ON chat_messages
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION chat_messages_after_insert();

-- Deleting a session keeps its usage for accounting but erases what was said.
CREATE FUNCTION chat_messages_forget_content() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.content := NULL;
    RETURN NEW;
END
$$;

CREATE TRIGGER chat_messages_forget_content BEFORE UPDATE OF session_id ON chat_messages
    FOR EACH ROW WHEN (OLD.session_id IS NOT NULL AND NEW.session_id IS NULL)
    EXECUTE FUNCTION chat_messages_forget_content();

-- The two round trips of a completion.

CREATE FUNCTION prepare_completion(
    p_token_hash text,
    p_for_user text,
    p_session_id uuid,
    p_model_config text,
    p_history_limit integer
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    caller record;
    target text;
    session chat_sessions;
    config model_configs;
    key api_keys;
    history jsonb := '[]'::jsonb;
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
        target := session.user_id;
        SELECT coalesce(jsonb_agg(jsonb_build_object('role', h.role, 'content', h.content) ORDER BY h.seq), '[]')
        INTO history
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
    SELECT * INTO key FROM api_keys k WHERE k.user_id = target AND k.status = 'active';
    RETURN jsonb_build_object(
        'caller', caller.user_id,
        'user_id', target,
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

COMMENT ON FUNCTION prepare_completion(text, text, uuid, text, integer) IS
    'Round trip 1 of a completion: authenticate, authorise, load the session, its recent history, '
    'the model config and the user''s sealed API key.';

CREATE FUNCTION record_completion(
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
                   coalesce((p_reply ->> 'cached_tokens')::integer, 0),
                   coalesce((p_reply ->> 'reasoning_tokens')::integer, 0),
                   coalesce((p_reply ->> 'usage_estimated')::boolean, false),
                   (p_reply ->> 'latency_ms')::integer,
                   p_reply ->> 'upstream_request_id'
        ) m
        ORDER BY m.position;
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

COMMENT ON FUNCTION record_completion(text, uuid, uuid, jsonb, jsonb, uuid) IS
    'Round trip 2 of a completion: store the new messages and the reply (cost and totals follow by trigger); '
    'idempotent per turn.';

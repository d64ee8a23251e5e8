-- Recording a completion does the same bookkeeping with less work per turn (measured with
-- bench.gateway): a session's sequence number and running totals are now kept by the one
-- BEFORE INSERT trigger that already locks the session row, the month's spend and the analytics
-- queue by one statement-level trigger instead of three, and record_completion takes the ids and
-- costs from its INSERT instead of reading the rows back; a one-off call's single row is one
-- plain INSERT.

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
                NEW.cost_usd := message_cost(price, NEW.prompt_tokens, NEW.cached_tokens, NEW.completion_tokens);
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

DROP TRIGGER chat_messages_after_insert ON chat_messages;
DROP TRIGGER usage_monthly_after_insert ON chat_messages;
DROP TRIGGER usage_pending_after_insert ON chat_messages;
DROP FUNCTION usage_monthly_after_insert();
DROP FUNCTION usage_pending_after_insert();

-- The month's spend (read by budget checks) and the analytics queue, filled in the inserting
-- transaction as before: a queued row becomes visible exactly when its message does.
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

CREATE TRIGGER chat_messages_after_insert AFTER INSERT ON chat_messages
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION chat_messages_after_insert();

-- UNIQUE (session_id, seq) serves every read this index served, in both directions.
DROP INDEX chat_messages_session_seq_idx;

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
    v_prompt integer := coalesce((p_reply ->> 'prompt_tokens')::integer, 0);
    v_completion integer := coalesce((p_reply ->> 'completion_tokens')::integer, 0);
    reply chat_messages;
    recorded jsonb;
BEGIN
    -- A retried record of the same turn (after an unacknowledged COMMIT) writes nothing twice.
    IF EXISTS (SELECT 1 FROM chat_messages WHERE turn_id = p_turn_id) THEN
        SELECT jsonb_build_object(
                   'message_ids', jsonb_agg(m.id ORDER BY m.id),
                   'reply', (jsonb_agg(jsonb_build_object('id', m.id, 'seq', m.seq, 'cost_usd', m.cost_usd,
                                                          'price_missing', m.price_missing) ORDER BY m.id DESC)
                             FILTER (WHERE m.role = 'assistant')) -> 0)
        INTO recorded
        FROM chat_messages m WHERE m.turn_id = p_turn_id;
        RETURN recorded;
    END IF;
    -- Usage that upstream reported inconsistently (cached > prompt) is clamped so a billed turn never
    -- fails a CHECK. A one-off call stores its reply's usage only: one row.
    IF p_session_id IS NULL THEN
        INSERT INTO chat_messages (user_id, turn_id, role, model, status, error, finish_reason, prompt_tokens,
                                   completion_tokens, cached_tokens, reasoning_tokens, usage_estimated, latency_ms,
                                   upstream_request_id)
        VALUES (p_user_id, p_turn_id, 'assistant', p_reply ->> 'model', coalesce(p_reply ->> 'status', 'ok'),
                p_reply ->> 'error', p_reply ->> 'finish_reason', v_prompt, v_completion,
                least(coalesce((p_reply ->> 'cached_tokens')::integer, 0), v_prompt),
                least(coalesce((p_reply ->> 'reasoning_tokens')::integer, 0), v_completion),
                coalesce((p_reply ->> 'usage_estimated')::boolean, false),
                (p_reply ->> 'latency_ms')::integer, p_reply ->> 'upstream_request_id')
        RETURNING * INTO reply;
        recorded := jsonb_build_object('message_ids', jsonb_build_array(reply.id), 'reply', jsonb_build_object(
            'id', reply.id, 'seq', reply.seq, 'cost_usd', reply.cost_usd, 'price_missing', reply.price_missing));
    ELSE
        -- In a session: the new messages in order, then the reply, which carries the usage.
        WITH inserted AS (
            INSERT INTO chat_messages (session_id, user_id, turn_id, role, content, model, status, error,
                                       finish_reason, prompt_tokens, completion_tokens, cached_tokens,
                                       reasoning_tokens, usage_estimated, latency_ms, upstream_request_id)
            SELECT p_session_id, p_user_id, p_turn_id, m.role, m.content, m.model,
                   coalesce(p_reply ->> 'status', 'ok'), m.error, m.finish_reason, m.prompt_tokens,
                   m.completion_tokens, m.cached_tokens, m.reasoning_tokens, m.usage_estimated, m.latency_ms,
                   m.upstream_request_id
            FROM (
                SELECT n.ordinality AS position, n.value ->> 'role' AS role, n.value ->> 'content' AS content,
                       NULL::text AS model, NULL::text AS error, NULL::text AS finish_reason,
                       0 AS prompt_tokens, 0 AS completion_tokens, 0 AS cached_tokens, 0 AS reasoning_tokens,
                       false AS usage_estimated, NULL::integer AS latency_ms, NULL::text AS upstream_request_id
                FROM jsonb_array_elements(p_messages) WITH ORDINALITY AS n
                UNION ALL
                SELECT 2147483647, 'assistant', p_reply ->> 'content', p_reply ->> 'model', p_reply ->> 'error',
                       p_reply ->> 'finish_reason', v_prompt, v_completion,
                       least(coalesce((p_reply ->> 'cached_tokens')::integer, 0), v_prompt),
                       least(coalesce((p_reply ->> 'reasoning_tokens')::integer, 0), v_completion),
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
                             FILTER (WHERE i.role = 'assistant')) -> 0)
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

COMMENT ON FUNCTION record_completion(text, uuid, uuid, jsonb, jsonb, uuid) IS
    'Round trip 2 of a completion: store the new messages (in a session) and the reply with its usage, settle '
    'the reservation; cost, seq, session totals, month spend and the analytics queue follow by trigger.';

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
    FROM (VALUES ('monthly_budget_usd'), ('requests_per_minute'), ('tokens_per_minute')) AS k (kind)
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

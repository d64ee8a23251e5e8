-- name: limits_status
SELECT u.id AS user_id,
       (SELECT jsonb_object_agg(l.kind, jsonb_build_object('value', l.value, 'source', l.source))
        FROM effective_limits(u.id, CAST(:defaults AS jsonb)) l) AS limits,
       w.month_start, w.spent_usd, w.reserved_usd, w.requests_last_minute, w.tokens_last_minute,
       w.reserved_requests, w.reserved_tokens,
       jsonb_build_object(
           'sessions', (SELECT count(*) FROM chat_sessions s WHERE s.user_id = u.id),
           'session_templates', (SELECT count(*) FROM session_templates t WHERE t.user_id = u.id),
           'model_configs', (SELECT count(*) FROM model_configs c WHERE c.user_id = u.id),
           'api_keys', (SELECT count(*) FROM api_keys k WHERE k.user_id = u.id)) AS stored
FROM users u, usage_window(u.id) w
WHERE u.id = :user_id;

-- name: set_limit
INSERT INTO usage_limits (user_id, kind, value)
SELECT id, :kind, CAST(:value AS numeric) FROM users WHERE id = :user_id
ON CONFLICT (user_id, kind) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
RETURNING user_id;

-- name: purge_expired_reservations
WITH purged AS (DELETE FROM usage_reservations WHERE expires_at < now() RETURNING 1)
SELECT count(*) AS purged FROM purged;

-- name: metadata_refusal
-- Why metadata (replacing :current) is over the user's metadata quota; NULL when it is not.
SELECT session_metadata_refusal(:user_id, CAST(:metadata AS jsonb), CAST(:defaults AS jsonb),
                                CAST(:current AS jsonb)) AS refusal;

-- name: authenticate_token
SELECT user_id, role, token_id, resource, admin_scope_missing FROM authenticate_token(:token_hash);

-- name: add_user
INSERT INTO users (id, display_name, role)
VALUES (:user_id, :display_name, :role)
ON CONFLICT (id) DO UPDATE SET role = EXCLUDED.role, display_name = EXCLUDED.display_name
RETURNING id, display_name, role, created_at;

-- name: issue_token
INSERT INTO access_tokens (user_id, token_hash, label, expires_at)
SELECT id, :token_hash, :label,
       CASE WHEN CAST(:expires_days AS integer) IS NULL THEN NULL
            ELSE now() + make_interval(days => CAST(:expires_days AS integer)) END
FROM users WHERE id = :user_id
RETURNING id, user_id, label, created_at, expires_at;

-- name: revoke_token
UPDATE access_tokens SET revoked_at = coalesce(revoked_at, now())
WHERE id = CAST(:token_id AS uuid)
RETURNING id, user_id, revoked_at;

-- name: schema_state
SELECT (SELECT coalesce(max(version), 0) FROM schema_migrations) AS version,
       (SELECT coalesce(jsonb_object_agg(name, checksum), '{}') FROM schema_definitions) AS definitions;

-- name: user_ids
-- Every user's id, for an admin's choice of whose usage to see.
SELECT id FROM users ORDER BY id LIMIT 1000;

-- Authentication: a bearer token's hash to the user behind it.
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

-- One round trip per request: find the live token, refresh last_used_at at most once a minute.
CREATE OR REPLACE FUNCTION authenticate_token(p_token_hash text)
RETURNS TABLE (user_id text, role text, token_id uuid, scope text, resource text, admin_scope_missing boolean)
LANGUAGE sql AS $$
    WITH live AS (
        -- An OAuth token acts with its user's role only if the admin scope was granted; a personal token has it.
        SELECT t.id, t.user_id,
               CASE WHEN t.scope IS NULL OR 'mcp:admin' = ANY (string_to_array(t.scope, ' ')) THEN u.role
                    ELSE 'user' END AS role,
               u.role = 'admin' AND t.scope IS NOT NULL
                   AND NOT 'mcp:admin' = ANY (string_to_array(t.scope, ' ')) AS admin_scope_missing,
               t.last_used_at, t.scope, t.resource
        FROM access_tokens t
        JOIN users u ON u.id = t.user_id
        -- The grant too: a token a refresh committed while its grant was being revoked stops with the grant.
        LEFT JOIN oauth_grants g ON g.id = t.grant_id
        WHERE t.token_hash = p_token_hash
          AND t.revoked_at IS NULL
          AND g.revoked_at IS NULL
          AND (t.expires_at IS NULL OR t.expires_at > now())
    ), touched AS (
        UPDATE access_tokens t SET last_used_at = now()
        FROM live
        WHERE t.id = live.id
          AND (live.last_used_at IS NULL OR live.last_used_at < now() - interval '1 minute')
    )
    SELECT live.user_id, live.role, live.id, live.scope, live.resource, live.admin_scope_missing FROM live
$$;

COMMENT ON FUNCTION authenticate_token(text) IS
    'The user behind a live (not revoked, not expired) token hash, or no row; for an OAuth token also its scope '
    'and the resource it is bound to, and whether it is an admin''s without the admin scope.';

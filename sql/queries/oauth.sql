-- name: register_client
INSERT INTO oauth_clients (client_id, kind, client_name, redirect_uris)
VALUES (:client_id, 'registered', :client_name, CAST(:redirect_uris AS text[]))
RETURNING client_id, created_at;

-- name: redeem_code
SELECT error, user_id, scope
FROM oauth_redeem_code(:code_hash, :client_id, :redirect_uri, :code_challenge, CAST(:resource AS text),
                       :access_hash, :refresh_hash, CAST(:access_ttl AS interval), CAST(:refresh_ttl AS interval));

-- name: refresh_grant
SELECT error, user_id, scope
FROM oauth_refresh(:refresh_hash, :client_id, CAST(:resource AS text), :access_hash, :new_refresh_hash,
                   CAST(:access_ttl AS interval), CAST(:refresh_ttl AS interval));

-- name: revoke_grant
SELECT oauth_revoke(:token_hash, :client_id) AS revoked;

-- name: oauth_client
SELECT client_id, kind, client_name, redirect_uris FROM oauth_clients WHERE client_id = :client_id;

-- name: sign_in_state
-- What a sign-in needs: the user's password hash (NULL: no such user, or none set), and their failures of the
-- last 15 minutes, and those of the address.
SELECT (SELECT p.password_hash FROM user_passwords p WHERE p.user_id = :login) AS password_hash,
       (SELECT count(*) FROM login_attempts a
        WHERE a.login = :login AND NOT a.succeeded AND a.at > now() - interval '15 minutes') AS login_failures,
       (SELECT count(*) FROM login_attempts a
        WHERE a.source_ip = CAST(:source_ip AS inet) AND NOT a.succeeded
          AND a.at > now() - interval '15 minutes') AS address_failures;

-- name: record_login_attempt
INSERT INTO login_attempts (login, source_ip, succeeded) VALUES (:login, CAST(:source_ip AS inet), :succeeded)
RETURNING id;

-- name: store_code
INSERT INTO oauth_codes (code_hash, user_id, client_id, redirect_uri, scope, resource, code_challenge, expires_at)
VALUES (:code_hash, :user_id, :client_id, :redirect_uri, :scope, :resource, :code_challenge,
        now() + interval '60 seconds')
RETURNING code_hash;

-- name: set_password
INSERT INTO user_passwords (user_id, password_hash) VALUES (:user_id, :password_hash)
ON CONFLICT (user_id) DO UPDATE SET password_hash = EXCLUDED.password_hash, updated_at = now()
RETURNING user_id;

-- name: create_invite
-- A single-use link for a user to set their password; the user must exist.
INSERT INTO user_invites (token_hash, user_id, expires_at)
SELECT :token_hash, u.id, now() + make_interval(days => CAST(:days AS integer)) FROM users u WHERE u.id = :user_id
RETURNING user_id, expires_at;

-- name: use_invite
-- Spend a live invite and set the password it was for, at once; NULL for an unknown, used or expired link.
WITH spent AS (
    UPDATE user_invites SET used_at = now()
    WHERE token_hash = :token_hash AND used_at IS NULL AND expires_at > now()
    RETURNING user_id
)
INSERT INTO user_passwords (user_id, password_hash)
SELECT user_id, :password_hash FROM spent
ON CONFLICT (user_id) DO UPDATE SET password_hash = EXCLUDED.password_hash, updated_at = now()
RETURNING user_id;

-- name: invite_state
SELECT user_id, used_at IS NOT NULL AS used, expires_at <= now() AS expired
FROM user_invites WHERE token_hash = :token_hash;

-- name: list_grants
SELECT g.id, g.client_id, c.client_name, split_part(split_part(c.redirect_uris[1], '://', 2), '/', 1) AS redirect_host,
       g.scope, g.created_at, g.revoked_at,
       (SELECT max(t.last_used_at) FROM access_tokens t WHERE t.grant_id = g.id) AS last_used_at
FROM oauth_grants g
JOIN oauth_clients c ON c.client_id = g.client_id
WHERE g.user_id = :user_id AND (CAST(:include_revoked AS boolean) OR g.revoked_at IS NULL)
ORDER BY g.created_at DESC, g.id
LIMIT 200;

-- name: revoke_user_grant
-- Revoke one of the user's grants and its tokens at once; NULL for a grant that is not theirs.
WITH revoked AS (
    UPDATE oauth_grants SET revoked_at = coalesce(revoked_at, now())
    WHERE id = CAST(:grant_id AS uuid) AND user_id = :user_id
    RETURNING *
), tokens AS (
    UPDATE access_tokens SET revoked_at = coalesce(access_tokens.revoked_at, now())
    FROM revoked WHERE access_tokens.grant_id = revoked.id
)
SELECT r.id, r.client_id, c.client_name, split_part(split_part(c.redirect_uris[1], '://', 2), '/', 1) AS redirect_host,
       r.scope, r.created_at, r.revoked_at,
       (SELECT max(t.last_used_at) FROM access_tokens t WHERE t.grant_id = r.id) AS last_used_at
FROM revoked r JOIN oauth_clients c ON c.client_id = r.client_id;

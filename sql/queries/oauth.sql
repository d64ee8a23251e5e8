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

-- name: begin_sign_in
SELECT attempt_id, password_hash, refused
FROM begin_sign_in(:login, CAST(:source_ip AS inet), :per_login, :per_address);

-- name: sign_in_succeeded
UPDATE login_attempts SET succeeded = true WHERE id = :attempt_id RETURNING id;

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
-- The user's other open links are spent with it: an older link that leaked sets no password afterwards.
WITH spent AS (
    UPDATE user_invites SET used_at = now()
    WHERE token_hash = :token_hash AND used_at IS NULL AND expires_at > now()
    RETURNING user_id
), others AS (
    UPDATE user_invites SET used_at = now()
    WHERE user_id IN (SELECT user_id FROM spent) AND used_at IS NULL AND token_hash <> :token_hash
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

-- External OpenID Connect provider

-- name: start_oidc_sign_in
INSERT INTO oidc_sign_ins (state_hash, request, expires_at)
VALUES (:state_hash, CAST(:request AS jsonb), now() + interval '10 minutes')
RETURNING state_hash;

-- name: return_oidc_sign_in
-- The user came back from the provider: spend the state once (a replayed callback finds nothing).
UPDATE oidc_sign_ins SET returned_at = now()
WHERE state_hash = :state_hash AND returned_at IS NULL AND expires_at > now()
RETURNING request;

-- name: oidc_identify
SELECT user_id, error, created FROM oidc_identify(:issuer, :subject, :claim, :display_name, :allow_sign_up);

-- name: oidc_signed_in
-- The provider vouched for the user: the ticket the consent page carries, single use.
UPDATE oidc_sign_ins SET user_id = :user_id, ticket_hash = :ticket_hash
WHERE state_hash = :state_hash AND ticket_hash IS NULL
RETURNING state_hash;

-- name: use_oidc_ticket
-- The consent answered: the user and the request the ticket was for, once, within the sign-in's ten minutes.
UPDATE oidc_sign_ins SET used_at = now()
WHERE ticket_hash = :ticket_hash AND used_at IS NULL AND expires_at > now()
RETURNING user_id, request;

-- Client ID Metadata Documents

-- name: fresh_metadata_document
-- A client known by the URL of its metadata document, while the copy kept of the document is fresh.
SELECT client_id, kind, client_name, redirect_uris FROM oauth_clients
WHERE client_id = :client_id AND kind = 'metadata_document' AND fresh_until > now();

-- name: store_metadata_document
-- Keep a fetched and valid document for fresh_s seconds (a failure is never kept); a registered client is never
-- replaced (no row then).
INSERT INTO oauth_clients (client_id, kind, client_name, redirect_uris, client_uri, logo_uri, fetched_at, fresh_until)
VALUES (:client_id, 'metadata_document', :client_name, CAST(:redirect_uris AS text[]), CAST(:client_uri AS text),
        CAST(:logo_uri AS text), now(), now() + CAST(:fresh_s AS integer) * interval '1 second')
ON CONFLICT (client_id) DO UPDATE
SET client_name = EXCLUDED.client_name, redirect_uris = EXCLUDED.redirect_uris, client_uri = EXCLUDED.client_uri,
    logo_uri = EXCLUDED.logo_uri, fetched_at = EXCLUDED.fetched_at, fresh_until = EXCLUDED.fresh_until
WHERE oauth_clients.kind = 'metadata_document'
RETURNING client_id, kind, client_name, redirect_uris;

-- Upkeep

-- name: purge_sign_in_records
-- What sign-in leaves behind, once nothing can use it: codes and provider sign-ins a day after they expired,
-- OAuth access tokens a day after they expired, refresh tokens once expired or 30 days after their rotation,
-- grants 30 days after they were revoked or once their last refresh token expired, registered clients no grant
-- uses a week after registration, invites and sign-in attempts after 30 days.
WITH codes AS (
    DELETE FROM oauth_codes WHERE expires_at < now() - interval '1 day' RETURNING 1
), provider_sign_ins AS (
    DELETE FROM oidc_sign_ins WHERE expires_at < now() - interval '1 day' RETURNING 1
), access AS (
    DELETE FROM access_tokens WHERE grant_id IS NOT NULL AND expires_at < now() - interval '1 day' RETURNING 1
), refresh AS (
    DELETE FROM oauth_refresh_tokens
    WHERE expires_at < now() OR rotated_at < now() - interval '30 days'
    RETURNING 1
), grants AS (
    DELETE FROM oauth_grants g
    WHERE g.revoked_at < now() - interval '30 days'
       OR (g.created_at < now() - interval '1 day'
           AND NOT EXISTS (SELECT 1 FROM oauth_refresh_tokens r WHERE r.grant_id = g.id AND r.expires_at > now()))
    RETURNING 1
), clients AS (
    DELETE FROM oauth_clients c
    WHERE c.created_at < now() - interval '7 days'
      AND NOT EXISTS (SELECT 1 FROM oauth_grants g WHERE g.client_id = c.client_id)
      AND NOT EXISTS (SELECT 1 FROM oauth_codes o WHERE o.client_id = c.client_id)
    RETURNING 1
), invites AS (
    DELETE FROM user_invites WHERE expires_at < now() - interval '30 days' RETURNING 1
), attempts AS (
    DELETE FROM login_attempts WHERE at < now() - interval '30 days' RETURNING 1
)
SELECT (SELECT count(*) FROM codes) + (SELECT count(*) FROM provider_sign_ins) + (SELECT count(*) FROM access)
       + (SELECT count(*) FROM refresh) + (SELECT count(*) FROM invites) + (SELECT count(*) FROM attempts)
       AS records,
       (SELECT count(*) FROM grants) AS grants,
       (SELECT count(*) FROM clients) AS clients;

-- name: ensure_first_party_client
-- The server's own web pages as a client of its authorization server (their redirect follows the public URL).
INSERT INTO oauth_clients (client_id, kind, client_name, redirect_uris)
VALUES (:client_id, 'registered', :client_name, ARRAY[CAST(:redirect_uri AS text)])
ON CONFLICT (client_id) DO UPDATE
SET redirect_uris = EXCLUDED.redirect_uris, client_name = EXCLUDED.client_name, created_at = now()
WHERE oauth_clients.kind = 'registered'
RETURNING client_id;

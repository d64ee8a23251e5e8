-- OAuth 2.1: redeem a code, rotate a refresh token, revoke a grant; each one round trip, each atomic.
-- The current definition; `migrate` re-applies this file whenever it changes (README: Development).

-- Redeem an authorization code in one round trip: PKCE, client, redirect URI and resource checked, the code
-- burnt, the grant and its first tokens created. A code seen twice revokes what it produced.
CREATE OR REPLACE FUNCTION oauth_redeem_code(
    p_code_hash text, p_client_id text, p_redirect_uri text, p_code_challenge text, p_resource text,
    p_access_hash text, p_refresh_hash text, p_access_ttl interval, p_refresh_ttl interval)
RETURNS TABLE (error text, user_id text, scope text, grant_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    c oauth_codes;
    g uuid;
BEGIN
    SELECT * INTO c FROM oauth_codes WHERE code_hash = p_code_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'invalid_grant', NULL::text, NULL::text, NULL::uuid; RETURN;
    END IF;
    IF c.used_at IS NOT NULL THEN
        UPDATE oauth_grants SET revoked_at = coalesce(revoked_at, now()) WHERE id = c.grant_id;
        UPDATE access_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE access_tokens.grant_id = c.grant_id;
        RETURN QUERY SELECT 'invalid_grant', NULL::text, NULL::text, NULL::uuid; RETURN;
    END IF;
    UPDATE oauth_codes SET used_at = now() WHERE code_hash = p_code_hash;   -- burnt, whatever follows
    IF c.expires_at <= now() OR c.client_id <> p_client_id OR c.redirect_uri <> p_redirect_uri
       OR c.code_challenge <> p_code_challenge OR (p_resource IS NOT NULL AND c.resource <> p_resource) THEN
        RETURN QUERY SELECT 'invalid_grant', NULL::text, NULL::text, NULL::uuid; RETURN;
    END IF;
    INSERT INTO oauth_grants (user_id, client_id, scope, resource)
    VALUES (c.user_id, c.client_id, c.scope, c.resource) RETURNING id INTO g;
    UPDATE oauth_codes SET grant_id = g WHERE code_hash = p_code_hash;
    INSERT INTO access_tokens (user_id, token_hash, label, expires_at, grant_id, scope, resource)
    VALUES (c.user_id, p_access_hash, 'oauth ' || c.client_id, now() + p_access_ttl, g, c.scope, c.resource);
    INSERT INTO oauth_refresh_tokens (token_hash, grant_id, expires_at) VALUES (p_refresh_hash, g, now() + p_refresh_ttl);
    RETURN QUERY SELECT NULL::text, c.user_id, c.scope, g;
END
$$;

-- Rotate a refresh token: the old one is spent, a new pair is issued. A spent token presented again
-- (stolen, or replayed) revokes the grant and every token issued under it (OAuth 2.1 4.3.1).
CREATE OR REPLACE FUNCTION oauth_refresh(
    p_refresh_hash text, p_client_id text, p_resource text,
    p_access_hash text, p_new_refresh_hash text, p_access_ttl interval, p_refresh_ttl interval)
RETURNS TABLE (error text, user_id text, scope text, grant_id uuid)
LANGUAGE plpgsql AS $$
DECLARE
    r oauth_refresh_tokens;
    g oauth_grants;
BEGIN
    SELECT * INTO r FROM oauth_refresh_tokens WHERE token_hash = p_refresh_hash FOR UPDATE;
    IF FOUND THEN
        SELECT * INTO g FROM oauth_grants WHERE id = r.grant_id FOR UPDATE;
    END IF;
    IF NOT FOUND OR g.revoked_at IS NOT NULL OR g.client_id <> p_client_id THEN
        RETURN QUERY SELECT 'invalid_grant', NULL::text, NULL::text, NULL::uuid; RETURN;
    END IF;
    IF r.rotated_at IS NOT NULL THEN
        -- Within 30 s of its rotation a token is more likely a client's second, concurrent refresh (two tabs,
        -- parallel calls) than a thief's: refused, but the grant stands (RFC 9700 4.14.2).
        IF r.rotated_at > now() - interval '30 seconds' THEN
            RETURN QUERY SELECT 'invalid_grant', NULL::text, NULL::text, NULL::uuid; RETURN;
        END IF;
        UPDATE oauth_grants SET revoked_at = now() WHERE id = g.id;
        UPDATE access_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE access_tokens.grant_id = g.id;
        RETURN QUERY SELECT 'invalid_grant', NULL::text, NULL::text, NULL::uuid; RETURN;
    END IF;
    IF r.expires_at <= now() OR (p_resource IS NOT NULL AND p_resource <> g.resource) THEN
        RETURN QUERY SELECT CASE WHEN r.expires_at <= now() THEN 'invalid_grant' ELSE 'invalid_target' END,
                            NULL::text, NULL::text, NULL::uuid; RETURN;
    END IF;
    UPDATE oauth_refresh_tokens SET rotated_at = now() WHERE token_hash = p_refresh_hash;
    INSERT INTO oauth_refresh_tokens (token_hash, grant_id, expires_at) VALUES (p_new_refresh_hash, g.id, now() + p_refresh_ttl);
    INSERT INTO access_tokens (user_id, token_hash, label, expires_at, grant_id, scope, resource)
    VALUES (g.user_id, p_access_hash, 'oauth ' || g.client_id, now() + p_access_ttl, g.id, g.scope, g.resource);
    RETURN QUERY SELECT NULL::text, g.user_id, g.scope, g.id;
END
$$;

-- RFC 7009: revoke the grant behind an access or refresh token of this client. Unknown tokens are not an error.
CREATE OR REPLACE FUNCTION oauth_revoke(p_token_hash text, p_client_id text)
RETURNS boolean LANGUAGE sql AS $$
    WITH target AS (
        SELECT grant_id FROM oauth_refresh_tokens WHERE token_hash = p_token_hash
        UNION ALL
        SELECT grant_id FROM access_tokens WHERE token_hash = p_token_hash AND grant_id IS NOT NULL
    ), g AS (
        UPDATE oauth_grants SET revoked_at = coalesce(revoked_at, now())
        WHERE id IN (SELECT grant_id FROM target) AND client_id = p_client_id
        RETURNING id
    ), t AS (
        UPDATE access_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE grant_id IN (SELECT id FROM g)
    )
    SELECT EXISTS (SELECT 1 FROM g)
$$;

COMMENT ON FUNCTION oauth_redeem_code(text, text, text, text, text, text, text, interval, interval) IS
    'Redeem an authorization code (PKCE S256, client, redirect URI, resource): burnt whatever follows; a code '
    'redeemed twice revokes the grant it produced.';
COMMENT ON FUNCTION oauth_refresh(text, text, text, text, text, interval, interval) IS
    'Exchange a refresh token for a new pair; a spent one presented again revokes its grant and its tokens.';
COMMENT ON FUNCTION oauth_revoke(text, text) IS
    'RFC 7009: revoke the grant behind an access or refresh token of the client; false for an unknown token.';

-- Who an account at the external OpenID provider is: the user it was linked to, else the user whose id is the
-- operator's chosen claim (and the link is made), else, when sign-up is allowed, a new user of that id. One
-- round trip; error 'unknown' when none applies, 'invalid_id' when the claim cannot be a user id.
CREATE OR REPLACE FUNCTION oidc_identify(
    p_issuer text, p_subject text, p_claim text, p_display_name text, p_allow_sign_up boolean,
    OUT user_id text, OUT error text, OUT created boolean
) LANGUAGE plpgsql AS $$
BEGIN
    created := false;
    UPDATE user_identities i SET last_sign_in_at = now()
    WHERE i.issuer = p_issuer AND i.subject = p_subject
    RETURNING i.user_id INTO user_id;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT u.id INTO user_id FROM users u WHERE u.id = p_claim;
    IF NOT FOUND THEN
        IF NOT p_allow_sign_up OR p_claim IS NULL THEN
            error := 'unknown';
            RETURN;
        END IF;
        IF p_claim !~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$' THEN
            error := 'invalid_id';
            RETURN;
        END IF;
        INSERT INTO users (id, display_name) VALUES (p_claim, coalesce(nullif(p_display_name, ''), p_claim))
        ON CONFLICT (id) DO NOTHING;
        user_id := p_claim;
        created := FOUND;
    END IF;
    INSERT INTO user_identities (issuer, subject, user_id) VALUES (p_issuer, p_subject, user_id)
    ON CONFLICT (issuer, subject) DO UPDATE SET last_sign_in_at = now()
    RETURNING user_identities.user_id INTO user_id;
END;
$$;
COMMENT ON FUNCTION oidc_identify IS 'Map an external OpenID account to a user: by its link, by the chosen claim, or by sign-up.';

-- A sign-in's first step, one at a time per login: refused after too many failures in 15 minutes (of the login
-- or of the address), else the attempt is counted as a failure until the password proves right
-- (login_attempts.succeeded is then set), and the password hash (NULL: no such user, or none set) is returned.
-- Counting before the check closes the race in which parallel guesses all see the same low count.
CREATE OR REPLACE FUNCTION begin_sign_in(
    p_login text, p_source_ip inet, p_per_login integer, p_per_address integer,
    OUT attempt_id bigint, OUT password_hash text, OUT refused boolean
) LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('sign-in:' || p_login, 0));
    refused := (SELECT count(*) FROM login_attempts a
                WHERE a.login = p_login AND NOT a.succeeded AND a.at > now() - interval '15 minutes') >= p_per_login
            OR (SELECT count(*) FROM login_attempts a
                WHERE a.source_ip = p_source_ip AND NOT a.succeeded
                  AND a.at > now() - interval '15 minutes') >= p_per_address;
    IF refused THEN
        RETURN;
    END IF;
    INSERT INTO login_attempts (login, source_ip, succeeded) VALUES (p_login, p_source_ip, false)
    RETURNING id INTO attempt_id;
    SELECT p.password_hash INTO password_hash FROM user_passwords p WHERE p.user_id = p_login;
END;
$$;
COMMENT ON FUNCTION begin_sign_in IS 'Count a sign-in attempt (as failed until proven) under the failure limits; the hash to check.';

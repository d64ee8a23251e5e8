-- OAuth 2.1: clients, consented grants, codes, refresh tokens; passwords, invites, login attempts.
CREATE TABLE oauth_clients (
    client_id     text PRIMARY KEY CHECK (length(client_id) BETWEEN 16 AND 512),
    kind          text NOT NULL CHECK (kind IN ('registered', 'metadata_document')),
    client_name   text NOT NULL CHECK (length(client_name) BETWEEN 1 AND 100),
    redirect_uris text[] NOT NULL CHECK (cardinality(redirect_uris) BETWEEN 1 AND 10),
    client_uri    text,
    logo_uri      text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    fetched_at    timestamptz,
    fresh_until   timestamptz,
    CHECK ((kind = 'metadata_document') = (fresh_until IS NOT NULL))
);
COMMENT ON TABLE oauth_clients IS 'Public OAuth clients: registered (RFC 7591) or known by their Client ID Metadata Document URL.';
COMMENT ON COLUMN oauth_clients.fresh_until IS 'metadata_document only: refetch the document after this (its Cache-Control, clamped to 5 min..24 h).';

CREATE TABLE oauth_grants (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id    text NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    scope        text NOT NULL,
    resource     text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
COMMENT ON TABLE oauth_grants IS 'One redeemed authorization of a client by a user: the family of its refresh and access tokens.';
CREATE INDEX oauth_grants_user_idx ON oauth_grants (user_id);

CREATE TABLE oauth_codes (
    code_hash      text PRIMARY KEY CHECK (code_hash ~ '^[0-9a-f]{64}$'),
    user_id        text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id      text NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    redirect_uri   text NOT NULL,
    scope          text NOT NULL,
    resource       text NOT NULL,
    code_challenge text NOT NULL CHECK (code_challenge ~ '^[A-Za-z0-9_-]{43}$'),
    expires_at     timestamptz NOT NULL,
    used_at        timestamptz,
    grant_id       uuid REFERENCES oauth_grants (id) ON DELETE CASCADE
);
COMMENT ON COLUMN oauth_codes.code_challenge IS 'PKCE S256 challenge; the token request''s verifier is hashed by the caller and compared here.';
COMMENT ON COLUMN oauth_codes.grant_id IS 'Set when redeemed: a second redemption revokes this grant (RFC 9700 4.5).';

CREATE TABLE oauth_refresh_tokens (
    token_hash  text PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    grant_id    uuid NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    rotated_at  timestamptz
);
COMMENT ON COLUMN oauth_refresh_tokens.rotated_at IS 'Set when exchanged; presenting it again revokes the whole grant.';
CREATE INDEX oauth_refresh_tokens_grant_idx ON oauth_refresh_tokens (grant_id);

ALTER TABLE access_tokens
    ADD COLUMN grant_id uuid REFERENCES oauth_grants (id) ON DELETE CASCADE,
    ADD COLUMN scope    text,
    ADD COLUMN resource text,
    ADD CONSTRAINT access_tokens_oauth_shape CHECK ((grant_id IS NULL) = (scope IS NULL) AND (grant_id IS NULL) = (resource IS NULL));
COMMENT ON COLUMN access_tokens.grant_id IS 'NULL: a personal token (CLI). Else the OAuth grant it was issued under.';
CREATE INDEX access_tokens_grant_idx ON access_tokens (grant_id) WHERE grant_id IS NOT NULL;

CREATE TABLE user_passwords (
    user_id       text PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    password_hash text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_invites (
    token_hash  text PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
COMMENT ON TABLE user_invites IS 'One-time links (`cli user invite`) with which a user sets their password at /invite.';

CREATE TABLE login_attempts (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    login      text NOT NULL,
    source_ip  inet,
    succeeded  boolean NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_attempts_recent_idx ON login_attempts (login, at DESC);

CREATE TABLE user_identities (
    issuer          text NOT NULL,
    subject         text NOT NULL,
    user_id         text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_sign_in_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, subject)
);
CREATE INDEX user_identities_user_idx ON user_identities (user_id);

CREATE TABLE oidc_sign_ins (
    state_hash  text PRIMARY KEY CHECK (state_hash ~ '^[0-9a-f]{64}$'),
    request     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    returned_at timestamptz,
    user_id     text REFERENCES users (id) ON DELETE CASCADE,
    ticket_hash text UNIQUE CHECK (ticket_hash ~ '^[0-9a-f]{64}$'),
    used_at     timestamptz,
    CHECK ((ticket_hash IS NULL) = (user_id IS NULL))
);

COMMENT ON COLUMN oauth_clients.client_id IS 'The id a client registered with, or the https URL of its Client ID Metadata Document.';
COMMENT ON COLUMN oauth_clients.kind IS 'registered: by RFC 7591 Dynamic Client Registration; metadata_document: by its URL.';
COMMENT ON COLUMN oauth_clients.redirect_uris IS 'Exact redirect URIs (loopback ones match on any port, RFC 8252).';
COMMENT ON COLUMN oauth_clients.fetched_at IS 'metadata_document only: when its document was last fetched.';
COMMENT ON COLUMN oauth_grants.scope IS 'The scopes the user consented to, space-separated.';
COMMENT ON COLUMN oauth_grants.resource IS 'The resource (RFC 8707) its tokens are bound to: the MCP URL.';
COMMENT ON COLUMN oauth_grants.revoked_at IS 'Revoked (by the user, by RFC 7009, or for a reused refresh token or code): its tokens stop at once.';
COMMENT ON TABLE oauth_codes IS 'Authorization codes, hashed, single use, short-lived.';
COMMENT ON COLUMN oauth_codes.used_at IS 'When it was redeemed (or burnt by a failed redemption).';
COMMENT ON TABLE oauth_refresh_tokens IS 'Refresh tokens, hashed; each is exchanged once for a new pair.';
COMMENT ON COLUMN access_tokens.scope IS 'OAuth tokens: the scopes granted; NULL for a personal token (all of its user''s).';
COMMENT ON COLUMN access_tokens.resource IS 'OAuth tokens: the resource they are bound to (RFC 8707); refused elsewhere.';
COMMENT ON TABLE user_passwords IS 'Local sign-in passwords, hashed with argon2id.';
COMMENT ON COLUMN user_invites.used_at IS 'When the link set a password; a link works once.';
COMMENT ON TABLE login_attempts IS 'Sign-in attempts, to rate-limit failures per login and per address.';
COMMENT ON COLUMN login_attempts.login IS 'The user id tried (known or not).';

COMMENT ON TABLE user_identities IS 'Accounts at the external OpenID provider, each linked to one user.';
COMMENT ON COLUMN user_identities.subject IS 'The provider''s stable id of the account (its sub claim).';
COMMENT ON TABLE oidc_sign_ins IS 'Sign-ins sent to the external OpenID provider: the authorization request they continue.';
COMMENT ON COLUMN oidc_sign_ins.state_hash IS 'SHA-256 of the state sent to the provider; the state itself is never stored.';
COMMENT ON COLUMN oidc_sign_ins.request IS 'The client''s checked authorization request, which the consent that follows answers.';
COMMENT ON COLUMN oidc_sign_ins.ticket_hash IS 'SHA-256 of the single-use ticket the consent page carries once the user came back signed in.';

-- authenticate_token also answers the scope and the resource of an OAuth token (sql/definitions/access.sql).
DROP FUNCTION IF EXISTS authenticate_token(text);

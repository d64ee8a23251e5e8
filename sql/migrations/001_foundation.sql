-- Users, their bearer tokens, and conversation sessions.

CREATE TABLE users (
    id           text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$'),
    display_name text NOT NULL,
    role         text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    created_at   timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE users IS 'People and services that call the MCP endpoint.';
COMMENT ON COLUMN users.id IS 'Stable identifier chosen by the operator, e.g. a ChittyID.';
COMMENT ON COLUMN users.role IS 'admin may act on any user''s data; user only on their own.';

CREATE TABLE access_tokens (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_hash   text NOT NULL UNIQUE CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    label        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz,
    last_used_at timestamptz
);

COMMENT ON TABLE access_tokens IS 'Bearer tokens for POST /mcp. The token itself is never stored.';
COMMENT ON COLUMN access_tokens.token_hash IS 'Hex SHA-256 of the bearer token.';
COMMENT ON COLUMN access_tokens.expires_at IS 'NULL: never expires.';
COMMENT ON COLUMN access_tokens.revoked_at IS 'Set once by `token revoke`; a revoked token never works again.';
COMMENT ON COLUMN access_tokens.last_used_at IS 'Refreshed at most once a minute, to keep authentication read-mostly.';

CREATE INDEX access_tokens_user_idx ON access_tokens (user_id);

CREATE TABLE chat_sessions (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id           text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    session_name      text NOT NULL CHECK (length(session_name) BETWEEN 1 AND 200),
    system_prompt     text,
    metadata          jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object'),
    status            text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    message_count     integer NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    total_cost_usd    numeric(20, 10) NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    last_activity_at  timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE chat_sessions IS 'A conversation with ChatGPT: its system prompt, ChittyOS links and running totals.';
COMMENT ON COLUMN chat_sessions.metadata IS 'ChittyOS links and labels: case_id, case_type, document_ids, ...';
COMMENT ON COLUMN chat_sessions.message_count IS 'Kept by SQL as messages are recorded.';
COMMENT ON COLUMN chat_sessions.total_cost_usd IS 'Sum of the cost of the session''s messages, kept by SQL.';
COMMENT ON COLUMN chat_sessions.last_activity_at IS 'Time of the last message, or of creation.';

CREATE INDEX chat_sessions_user_recent_idx ON chat_sessions (user_id, created_at DESC, id DESC);
CREATE INDEX chat_sessions_user_case_idx ON chat_sessions (user_id, (metadata ->> 'case_id'));

-- One round trip per request: find the live token, refresh last_used_at at most once a minute.
CREATE FUNCTION authenticate_token(p_token_hash text)
RETURNS TABLE (user_id text, role text, token_id uuid)
LANGUAGE sql AS $$
    WITH live AS (
        SELECT t.id, t.user_id, u.role, t.last_used_at
        FROM access_tokens t
        JOIN users u ON u.id = t.user_id
        WHERE t.token_hash = p_token_hash
          AND t.revoked_at IS NULL
          AND (t.expires_at IS NULL OR t.expires_at > now())
    ), touched AS (
        UPDATE access_tokens t SET last_used_at = now()
        FROM live
        WHERE t.id = live.id
          AND (live.last_used_at IS NULL OR live.last_used_at < now() - interval '1 minute')
    )
    SELECT live.user_id, live.role, live.id FROM live
$$;

COMMENT ON FUNCTION authenticate_token(text) IS
    'The user behind a live (not revoked, not expired) token hash, or no row.';

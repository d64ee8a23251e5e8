-- Storage quotas: what one user may keep (sessions, their messages, text and metadata, session templates,
-- model configs, stored API keys) joins the spend and rate limits in usage_limits, with the same rules:
-- a row is the user's own setting, no row means the configured default, value NULL means no limit.
-- Every limit is a real number: NaN passes ">= 0" in PostgreSQL (and means no limit to every check that
-- compares with it), and numeric has Infinity since PostgreSQL 14.

-- NaN and Infinity could only ever mean "no limit", which is what NULL says.
UPDATE usage_limits SET value = NULL, updated_at = now() WHERE value IN ('NaN', 'Infinity');

ALTER TABLE usage_limits DROP CONSTRAINT usage_limits_kind_check;
ALTER TABLE usage_limits
    ADD CONSTRAINT usage_limits_kind_check CHECK (kind IN (
        'monthly_budget_usd', 'requests_per_minute', 'tokens_per_minute',
        'sessions', 'messages_per_session', 'bytes_per_session', 'metadata_bytes_per_session',
        'session_templates', 'model_configs', 'api_keys')),
    ADD CONSTRAINT usage_limits_value_is_a_number CHECK (value <> 'NaN' AND value <> 'Infinity');

COMMENT ON COLUMN usage_limits.kind IS
    'monthly_budget_usd, requests_per_minute, tokens_per_minute (spend and rates); sessions, session_templates, '
    'model_configs, api_keys (how many a user keeps); messages_per_session, bytes_per_session (text of its system '
    'prompt and messages), metadata_bytes_per_session (JSON text of a session''s or template''s metadata).';
COMMENT ON COLUMN usage_limits.value IS
    'USD for monthly_budget_usd, a count or a number of bytes for the others; NULL: unlimited. Never NaN or Infinity.';

-- Counting a user's stored keys, and listing them newest first.
CREATE INDEX api_keys_user_idx ON api_keys (user_id, created_at DESC, id DESC);

-- The longest system prompt a session or a model config takes, as the tools have always said; a session
-- made from a template is checked after its variables are filled. Rows stored before stay as they are.
ALTER TABLE chat_sessions
    ADD CONSTRAINT chat_sessions_system_prompt_length CHECK (length(system_prompt) <= 100000) NOT VALID;
ALTER TABLE model_configs
    ADD CONSTRAINT model_configs_system_prompt_length CHECK (length(system_prompt) <= 100000) NOT VALID;

-- A turn in progress may hold room in its session, so that concurrent turns cannot together pass the
-- session's quotas between prepare_completion and record_completion.
ALTER TABLE usage_reservations
    ADD COLUMN session_id uuid,
    ADD COLUMN messages integer NOT NULL DEFAULT 0 CHECK (messages >= 0),
    ADD COLUMN bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0);

COMMENT ON COLUMN usage_reservations.session_id IS 'The session the turn will be stored in; NULL: a one-off call.';
COMMENT ON COLUMN usage_reservations.messages IS
    'Messages the turn will add to its session, its reply included (counted by session_storage_refusal).';
COMMENT ON COLUMN usage_reservations.bytes IS
    'Bytes of text the turn will add to its session, as far as known before the call (its new messages).';

CREATE INDEX usage_reservations_session_idx ON usage_reservations (session_id) WHERE session_id IS NOT NULL;

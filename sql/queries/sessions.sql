-- Every query takes the caller (:caller, :caller_is_admin) and sees only what the caller may see:
-- another user's session is indistinguishable from a missing one. Session rows come with model_config,
-- the name of the session's model config (or NULL).

-- name: create_session
-- No row when the user does not exist or has no model config of that name.
INSERT INTO chat_sessions (user_id, session_name, system_prompt, metadata, model_config_id)
SELECT u.id, :session_name, CAST(:system_prompt AS text), CAST(:metadata AS jsonb), c.id
FROM users u
LEFT JOIN model_configs c ON c.user_id = u.id AND c.name = CAST(:model_config AS text)
WHERE u.id = :user_id
  AND (CAST(:model_config AS text) IS NULL OR c.id IS NOT NULL)
RETURNING *, (SELECT c.name FROM model_configs c WHERE c.id = model_config_id) AS model_config;

-- name: list_sessions
SELECT s.*, c.name AS model_config
FROM chat_sessions s
LEFT JOIN model_configs c ON c.id = s.model_config_id
WHERE s.user_id = :user_id
  AND (CAST(:status AS text) IS NULL OR s.status = CAST(:status AS text))
  AND (CAST(:case_id AS text) IS NULL OR s.metadata ->> 'case_id' = CAST(:case_id AS text))
  AND (CAST(:after_created AS timestamptz) IS NULL
       OR (s.created_at, s.id) < (CAST(:after_created AS timestamptz), CAST(:after_id AS uuid)))
ORDER BY s.created_at DESC, s.id DESC
LIMIT CAST(:limit AS integer);

-- name: get_session
SELECT s.*, c.name AS model_config
FROM chat_sessions s
LEFT JOIN model_configs c ON c.id = s.model_config_id
WHERE s.id = CAST(:session_id AS uuid)
  AND (s.user_id = :caller OR CAST(:caller_is_admin AS boolean));

-- name: update_session
UPDATE chat_sessions
SET session_name = coalesce(CAST(:session_name AS text), session_name),
    status = coalesce(CAST(:status AS text), status),
    -- metadata is merged: keys given replace, keys given as null are removed.
    metadata = CASE WHEN CAST(:metadata AS jsonb) IS NULL THEN metadata
                    ELSE (metadata || CAST(:metadata AS jsonb))
                         - ARRAY(SELECT key FROM jsonb_each(CAST(:metadata AS jsonb)) WHERE value = 'null'::jsonb)
               END,
    -- model_config is a name of the session owner's configs; null clears it (when :change_model_config).
    model_config_id = CASE WHEN CAST(:change_model_config AS boolean)
                           THEN (SELECT c.id FROM model_configs c
                                 WHERE c.user_id = chat_sessions.user_id AND c.name = CAST(:model_config AS text))
                           ELSE model_config_id END,
    updated_at = now()
WHERE id = CAST(:session_id AS uuid)
  AND (user_id = :caller OR CAST(:caller_is_admin AS boolean))
  -- No row when the session is not the caller's, or names a model config its owner does not have.
  AND (CAST(:model_config AS text) IS NULL
       OR EXISTS (SELECT 1 FROM model_configs c
                  WHERE c.user_id = chat_sessions.user_id AND c.name = CAST(:model_config AS text)))
RETURNING *, (SELECT c.name FROM model_configs c WHERE c.id = model_config_id) AS model_config;

-- name: delete_session
DELETE FROM chat_sessions
WHERE id = CAST(:session_id AS uuid)
  AND (user_id = :caller OR CAST(:caller_is_admin AS boolean))
RETURNING id;

-- name: recent_sessions
SELECT id, session_name, status, message_count, last_activity_at, metadata
FROM chat_sessions
WHERE user_id = :user_id
ORDER BY last_activity_at DESC, id DESC
LIMIT CAST(:limit AS integer);

-- name: session_transcript
-- The latest messages of a session the caller may see, oldest first.
SELECT m.seq, m.role, m.content, m.model, m.status, m.error, m.prompt_tokens, m.completion_tokens,
       m.cost_usd, m.created_at
FROM (
    SELECT * FROM chat_messages
    WHERE session_id = CAST(:session_id AS uuid)
    ORDER BY seq DESC
    LIMIT CAST(:limit AS integer)
) m
ORDER BY m.seq;

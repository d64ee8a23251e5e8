-- Every query takes the caller (:caller, :caller_is_admin) and sees only what the caller may see:
-- another user's session is indistinguishable from a missing one.

-- name: create_session
INSERT INTO chat_sessions (user_id, session_name, system_prompt, metadata)
SELECT id, :session_name, CAST(:system_prompt AS text), CAST(:metadata AS jsonb)
FROM users WHERE id = :user_id
RETURNING *;

-- name: list_sessions
SELECT *
FROM chat_sessions
WHERE user_id = :user_id
  AND (CAST(:status AS text) IS NULL OR status = CAST(:status AS text))
  AND (CAST(:case_id AS text) IS NULL OR metadata ->> 'case_id' = CAST(:case_id AS text))
  AND (CAST(:after_created AS timestamptz) IS NULL
       OR (created_at, id) < (CAST(:after_created AS timestamptz), CAST(:after_id AS uuid)))
ORDER BY created_at DESC, id DESC
LIMIT CAST(:limit AS integer);

-- name: get_session
SELECT *
FROM chat_sessions
WHERE id = CAST(:session_id AS uuid)
  AND (user_id = :caller OR CAST(:caller_is_admin AS boolean));

-- name: update_session
UPDATE chat_sessions
SET session_name = coalesce(CAST(:session_name AS text), session_name),
    status = coalesce(CAST(:status AS text), status),
    -- metadata is merged: keys given replace, keys given as null are removed.
    metadata = CASE WHEN CAST(:metadata AS jsonb) IS NULL THEN metadata
                    ELSE (metadata || CAST(:metadata AS jsonb))
                         - ARRAY(SELECT key FROM jsonb_each(CAST(:metadata AS jsonb)) WHERE value = 'null'::jsonb)
               END,
    updated_at = now()
WHERE id = CAST(:session_id AS uuid)
  AND (user_id = :caller OR CAST(:caller_is_admin AS boolean))
RETURNING *;

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

-- Every query takes the caller (:caller, :caller_is_admin) and sees only what the caller may see:
-- another user's session is indistinguishable from a missing one. Session rows come with model_config,
-- the name of the session's model config (or NULL).

-- name: create_session
-- refusal: why a quota forbids the session (and nothing is written), else NULL. The session's columns are
-- NULL when the user does not exist or has no model config of that name.
WITH refusal AS MATERIALIZED (
    SELECT coalesce(
        session_metadata_refusal(:user_id, CAST(:metadata AS jsonb), CAST(:defaults AS jsonb)),
        session_prompt_refusal(:user_id, CAST(:system_prompt AS text), CAST(:defaults AS jsonb)),
        storage_quota_refusal(:user_id, 'sessions', 1, CAST(:defaults AS jsonb))) AS refusal
), created AS (
    INSERT INTO chat_sessions (user_id, session_name, system_prompt, metadata, model_config_id)
    SELECT u.id, :session_name, CAST(:system_prompt AS text), CAST(:metadata AS jsonb), c.id
    FROM users u
    LEFT JOIN model_configs c ON c.user_id = u.id AND c.name = CAST(:model_config AS text)
    WHERE u.id = :user_id
      AND (CAST(:model_config AS text) IS NULL OR c.id IS NOT NULL)
      AND (SELECT r.refusal FROM refusal r) IS NULL
    RETURNING *
)
SELECT r.refusal, s.*, (SELECT c.name FROM model_configs c WHERE c.id = s.model_config_id) AS model_config
FROM refusal r
LEFT JOIN created s ON true;

-- name: list_sessions
-- A page, newest first, after the cursor (:after_created, :after_id): the first :limit sessions, cut after
-- the one whose text (name, system prompt, metadata) takes the page past :budget bytes. candidates: how
-- many sessions the page was cut from (:limit of them when more may follow).
WITH candidates AS MATERIALIZED (
    SELECT s.*, octet_length(s.session_name) + coalesce(octet_length(s.system_prompt), 0)
                + octet_length(CAST(s.metadata AS text)) AS text_bytes
    FROM chat_sessions s
    WHERE s.user_id = :user_id
      AND (CAST(:status AS text) IS NULL OR s.status = CAST(:status AS text))
      AND (CAST(:case_id AS text) IS NULL OR s.metadata ->> 'case_id' = CAST(:case_id AS text))
      AND (CAST(:after_created AS timestamptz) IS NULL
           OR (s.created_at, s.id) < (CAST(:after_created AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY s.created_at DESC, s.id DESC
    LIMIT CAST(:limit AS integer)
), page AS (
    SELECT p.*, sum(p.text_bytes) OVER (ORDER BY p.created_at DESC, p.id DESC) - p.text_bytes AS bytes_before
    FROM candidates p
)
SELECT p.*, c.name AS model_config, (SELECT count(*) FROM candidates) AS candidates
FROM page p
LEFT JOIN model_configs c ON c.id = p.model_config_id
WHERE p.bytes_before < CAST(:budget AS bigint)
ORDER BY p.created_at DESC, p.id DESC;

-- name: get_session
SELECT s.*, c.name AS model_config
FROM chat_sessions s
LEFT JOIN model_configs c ON c.id = s.model_config_id
WHERE s.id = CAST(:session_id AS uuid)
  AND (s.user_id = :caller OR CAST(:caller_is_admin AS boolean));

-- name: update_session
-- No row when the session is not the caller's, names a model config its owner does not have, or would get
-- more metadata than its owner's quota allows (session_metadata_change_refusal says which).
UPDATE chat_sessions
SET session_name = coalesce(CAST(:session_name AS text), session_name),
    status = coalesce(CAST(:status AS text), status),
    metadata = CASE WHEN CAST(:metadata AS jsonb) IS NULL THEN metadata
                    ELSE merged_metadata(metadata, CAST(:metadata AS jsonb)) END,
    -- model_config is a name of the session owner's configs; null clears it (when :change_model_config).
    model_config_id = CASE WHEN CAST(:change_model_config AS boolean)
                           THEN (SELECT c.id FROM model_configs c
                                 WHERE c.user_id = chat_sessions.user_id AND c.name = CAST(:model_config AS text))
                           ELSE model_config_id END,
    updated_at = now()
WHERE id = CAST(:session_id AS uuid)
  AND (user_id = :caller OR CAST(:caller_is_admin AS boolean))
  AND (CAST(:model_config AS text) IS NULL
       OR EXISTS (SELECT 1 FROM model_configs c
                  WHERE c.user_id = chat_sessions.user_id AND c.name = CAST(:model_config AS text)))
  AND (CAST(:metadata AS jsonb) IS NULL
       OR session_metadata_refusal(user_id, merged_metadata(metadata, CAST(:metadata AS jsonb)),
                                   CAST(:defaults AS jsonb), metadata) IS NULL)
RETURNING *, (SELECT c.name FROM model_configs c WHERE c.id = model_config_id) AS model_config;

-- name: session_metadata_change_refusal
-- Why a metadata change of a session the caller may see is over its owner's quota; NULL when it is not.
SELECT session_metadata_refusal(s.user_id, merged_metadata(s.metadata, CAST(:metadata AS jsonb)),
                                CAST(:defaults AS jsonb), s.metadata) AS refusal
FROM chat_sessions s
WHERE s.id = CAST(:session_id AS uuid)
  AND (s.user_id = :caller OR CAST(:caller_is_admin AS boolean));

-- name: delete_session
DELETE FROM chat_sessions
WHERE id = CAST(:session_id AS uuid)
  AND (user_id = :caller OR CAST(:caller_is_admin AS boolean))
RETURNING id;

-- name: recent_sessions
SELECT id, session_name, status, message_count, last_activity_at
FROM chat_sessions
WHERE user_id = :user_id
ORDER BY last_activity_at DESC, id DESC
LIMIT CAST(:limit AS integer);

-- name: session_transcript_part
-- A session's messages from seq :from_seq on, oldest first: at most :limit, cut after the one whose text
-- takes the part past :budget bytes.
SELECT m.seq, m.role, m.content, m.parts, m.tool_calls, m.tool_call_id, m.model, m.status, m.error,
       m.prompt_tokens, m.completion_tokens, m.cost_usd, m.created_at
FROM (
    SELECT m.*, sum(m.text_bytes) OVER (ORDER BY m.seq) - m.text_bytes AS bytes_before
    FROM (
        SELECT c.*, coalesce(octet_length(c.content), 0) + coalesce(octet_length(c.error), 0)
                    + coalesce(octet_length(CAST(c.parts AS text)), 0)
                    + coalesce(octet_length(CAST(c.tool_calls AS text)), 0) AS text_bytes
        FROM chat_messages c
        WHERE c.session_id = CAST(:session_id AS uuid) AND c.seq >= CAST(:from_seq AS integer)
        ORDER BY c.seq
        LIMIT CAST(:limit AS integer)
    ) m
) m
WHERE m.bytes_before < CAST(:budget AS bigint)
ORDER BY m.seq;

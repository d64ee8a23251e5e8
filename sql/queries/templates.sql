-- Session templates: a user's own (user_id = :user_id, the acting user, already authorised) and the
-- built-ins (user_id NULL), which are read-only. Another user's template is simply not found.
-- Every row comes with model_config, the name of the template's model config (or NULL).

-- name: create_session_template
-- refusal: why a quota forbids the template (and nothing is written), else NULL. The template's columns
-- are NULL when the user does not exist or has no model config of that name.
WITH refusal AS MATERIALIZED (
    SELECT coalesce(
        session_metadata_refusal(:user_id, CAST(:default_metadata AS jsonb), CAST(:defaults AS jsonb)),
        storage_quota_refusal(:user_id, 'session_templates', 1, CAST(:defaults AS jsonb))) AS refusal
), created AS (
    INSERT INTO session_templates (user_id, name, title, description, system_prompt, variable_descriptions,
                                   model_config_id, default_metadata)
    SELECT u.id, :template_name, CAST(:title AS text), :description, :system_prompt,
           CAST(:variable_descriptions AS jsonb), c.id, CAST(:default_metadata AS jsonb)
    FROM users u
    LEFT JOIN model_configs c ON c.user_id = u.id AND c.name = CAST(:model_config AS text)
    WHERE u.id = :user_id
      AND (CAST(:model_config AS text) IS NULL OR c.id IS NOT NULL)
      AND (SELECT r.refusal FROM refusal r) IS NULL
    RETURNING *
)
SELECT r.refusal, t.*, (SELECT c.name FROM model_configs c WHERE c.id = t.model_config_id) AS model_config
FROM refusal r
LEFT JOIN created t ON true;

-- name: list_session_templates
-- A page of the user's own templates and every built-in, by name (the user's own first), after the cursor
-- (:after_name, :after_builtin): the first :limit, cut after the one whose text takes the page past
-- :budget bytes. shadowed: a built-in hidden by the user's own of that name. candidates: how many
-- templates the page was cut from (:limit of them when more may follow).
WITH candidates AS MATERIALIZED (
    SELECT t.*, t.user_id IS NULL AS builtin,
           octet_length(t.name) + coalesce(octet_length(t.title), 0) + octet_length(t.description)
           + octet_length(t.system_prompt) + octet_length(CAST(t.variable_descriptions AS text))
           + octet_length(CAST(t.default_metadata AS text)) AS text_bytes
    FROM session_templates t
    WHERE (t.user_id = :user_id OR t.user_id IS NULL)
      AND (CAST(:after_name AS text) IS NULL
           OR (t.name, t.user_id IS NULL) > (CAST(:after_name AS text), CAST(:after_builtin AS boolean)))
    ORDER BY t.name, t.user_id IS NULL
    LIMIT CAST(:limit AS integer)
), page AS (
    SELECT p.*, sum(p.text_bytes) OVER (ORDER BY p.name, p.builtin) - p.text_bytes AS bytes_before
    FROM candidates p
)
SELECT p.*, c.name AS model_config,
       p.builtin AND EXISTS (
           SELECT 1 FROM session_templates o WHERE o.user_id = :user_id AND o.name = p.name
       ) AS shadowed,
       (SELECT count(*) FROM candidates) AS candidates
FROM page p
LEFT JOIN model_configs c ON c.id = p.model_config_id
WHERE p.bytes_before < CAST(:budget AS bigint)
ORDER BY p.name, p.builtin;

-- name: usable_session_templates
SELECT t.*, c.name AS model_config
FROM session_templates_for(:user_id) t
LEFT JOIN model_configs c ON c.id = t.model_config_id
ORDER BY t.name;

-- name: usable_session_template
SELECT t.*, c.name AS model_config
FROM session_templates_for(:user_id) t
LEFT JOIN model_configs c ON c.id = t.model_config_id
WHERE t.name = :template_name;

-- name: update_session_template
-- :changes holds only the fields to change; title and model_config given as null are cleared.
-- No row when the user has no template of that name, names a model config they do not have, or gives
-- default_metadata over their metadata quota.
UPDATE session_templates t
SET name = coalesce(given.changes ->> 'new_name', t.name),
    title = CASE WHEN given.changes ? 'title' THEN given.changes ->> 'title' ELSE t.title END,
    description = coalesce(given.changes ->> 'description', t.description),
    system_prompt = coalesce(given.changes ->> 'system_prompt', t.system_prompt),
    variable_descriptions = coalesce(given.changes -> 'variable_descriptions', t.variable_descriptions),
    default_metadata = coalesce(given.changes -> 'default_metadata', t.default_metadata),
    model_config_id = CASE WHEN given.changes ? 'model_config'
                           THEN (SELECT c.id FROM model_configs c
                                 WHERE c.user_id = t.user_id AND c.name = given.changes ->> 'model_config')
                           ELSE t.model_config_id END,
    updated_at = now()
FROM (SELECT CAST(:changes AS jsonb) AS changes) given
WHERE t.user_id = :user_id AND t.name = :template_name
  AND (given.changes ->> 'model_config' IS NULL
       OR EXISTS (SELECT 1 FROM model_configs c
                  WHERE c.user_id = t.user_id AND c.name = given.changes ->> 'model_config'))
  AND session_metadata_refusal(t.user_id, given.changes -> 'default_metadata', CAST(:defaults AS jsonb),
                               t.default_metadata) IS NULL
RETURNING t.*, (SELECT c.name FROM model_configs c WHERE c.id = t.model_config_id) AS model_config;

-- name: delete_session_template
DELETE FROM session_templates WHERE user_id = :user_id AND name = :template_name
RETURNING name;

-- Model configs belong to one user (:user_id, the acting user, already authorised). Names are unique
-- per user and are how configs are addressed; another user's config is simply not found.

-- name: create_model_config
-- refusal: why the quota forbids the config (and nothing is written), else NULL. The config's columns are
-- NULL when the user does not exist.
WITH refusal AS MATERIALIZED (
    SELECT storage_quota_refusal(:user_id, 'model_configs', 1, CAST(:defaults AS jsonb)) AS refusal
), created AS (
    INSERT INTO model_configs (user_id, name, model, temperature, top_p, max_tokens, system_prompt,
                               reasoning_effort, verbosity, reasoning_summary, service_tier, web_search)
    SELECT id, :config_name, :model, CAST(:temperature AS numeric), CAST(:top_p AS numeric),
           CAST(:max_tokens AS integer), CAST(:system_prompt AS text), CAST(:reasoning_effort AS text),
           CAST(:verbosity AS text), CAST(:reasoning_summary AS text), CAST(:service_tier AS text),
           CAST(:web_search AS text)
    FROM users
    WHERE id = :user_id AND (SELECT r.refusal FROM refusal r) IS NULL
    RETURNING *
)
SELECT r.refusal, m.*
FROM refusal r
LEFT JOIN created m ON true;

-- name: list_model_configs
-- A page by name after :after_name: the first :limit configs, cut after the one whose text takes the page
-- past :budget bytes. candidates: how many configs the page was cut from (:limit when more may follow).
WITH candidates AS MATERIALIZED (
    SELECT m.*, octet_length(m.name) + octet_length(m.model) + coalesce(octet_length(m.system_prompt), 0)
                AS text_bytes
    FROM model_configs m
    WHERE m.user_id = :user_id AND (CAST(:after_name AS text) IS NULL OR m.name > CAST(:after_name AS text))
    ORDER BY m.name
    LIMIT CAST(:limit AS integer)
), page AS (
    SELECT p.*, sum(p.text_bytes) OVER (ORDER BY p.name) - p.text_bytes AS bytes_before FROM candidates p
)
SELECT p.*, (SELECT count(*) FROM candidates) AS candidates
FROM page p
WHERE p.bytes_before < CAST(:budget AS bigint)
ORDER BY p.name;

-- name: update_model_config
-- :changes holds only the fields to change; an optional field given as null is cleared.
UPDATE model_configs m
SET name = coalesce(given.changes ->> 'new_name', m.name),
    model = coalesce(given.changes ->> 'model', m.model),
    temperature = CASE WHEN given.changes ? 'temperature'
                       THEN CAST(given.changes ->> 'temperature' AS numeric) ELSE m.temperature END,
    top_p = CASE WHEN given.changes ? 'top_p' THEN CAST(given.changes ->> 'top_p' AS numeric) ELSE m.top_p END,
    max_tokens = CASE WHEN given.changes ? 'max_tokens'
                      THEN CAST(given.changes ->> 'max_tokens' AS integer) ELSE m.max_tokens END,
    system_prompt = CASE WHEN given.changes ? 'system_prompt'
                         THEN given.changes ->> 'system_prompt' ELSE m.system_prompt END,
    reasoning_effort = CASE WHEN given.changes ? 'reasoning_effort'
                            THEN given.changes ->> 'reasoning_effort' ELSE m.reasoning_effort END,
    verbosity = CASE WHEN given.changes ? 'verbosity' THEN given.changes ->> 'verbosity' ELSE m.verbosity END,
    reasoning_summary = CASE WHEN given.changes ? 'reasoning_summary'
                             THEN given.changes ->> 'reasoning_summary' ELSE m.reasoning_summary END,
    service_tier = CASE WHEN given.changes ? 'service_tier'
                        THEN given.changes ->> 'service_tier' ELSE m.service_tier END,
    web_search = CASE WHEN given.changes ? 'web_search' THEN given.changes ->> 'web_search' ELSE m.web_search END,
    updated_at = now()
FROM (SELECT CAST(:changes AS jsonb) AS changes) given
WHERE m.user_id = :user_id AND m.name = :config_name
RETURNING m.*;

-- name: delete_model_config
-- Sessions and templates that used the config keep going without one (ON DELETE SET NULL).
DELETE FROM model_configs WHERE user_id = :user_id AND name = :config_name
RETURNING name;

-- name: models_with_prices
-- One row per model priced now (the price in force), per model of the catalogue, and per model that the
-- user's configs name but that has neither. config_names: the user's configs billed at that row's price, as
-- price_in_force resolves them (a dated snapshot such as gpt-4o-2024-08-06 is billed as its own price when it
-- has one, else as gpt-4o). rates: price_rates of the price row; info: model_info (NULL when unknown).
-- Retired models only with :include_retired, or when a config uses them; :search keeps names containing it.
WITH prices AS (
    SELECT DISTINCT ON (p.model) p.model, p AS price
    FROM model_pricing p
    WHERE p.effective_from <= now()
    ORDER BY p.model, p.effective_from DESC
), configs AS (
    SELECT coalesce((price_in_force(c.model, now())).model, c.model) AS model,
           array_agg(c.name ORDER BY c.name) AS names
    FROM model_configs c
    WHERE c.user_id = :user_id
    GROUP BY 1
), names AS (
    SELECT model FROM prices
    UNION
    SELECT model FROM model_catalogue
    UNION
    SELECT model FROM configs
), listed AS (
    SELECT n.model, r.price, model_info(n.model) AS info, g.names
    FROM names n
    LEFT JOIN prices r ON r.model = n.model
    LEFT JOIN configs g ON g.model = n.model
    WHERE CAST(:search AS text) IS NULL OR strpos(lower(n.model), lower(CAST(:search AS text))) > 0
)
SELECT l.model,
       (l.price).input_per_mtok,
       coalesce((l.price).cached_input_per_mtok, (l.price).input_per_mtok) AS cached_input_per_mtok,
       (l.price).output_per_mtok,
       (l.price).effective_from,
       CASE WHEN (l.price).id IS NOT NULL THEN price_rates(l.price) END AS rates,
       l.info,
       coalesce(l.names, CAST(ARRAY[] AS text[])) AS config_names
FROM listed l
WHERE CAST(:include_retired AS boolean) OR l.names IS NOT NULL
   OR NOT coalesce(CAST(l.info ->> 'retired' AS boolean), false)
ORDER BY l.model;

-- name: prepare_completion
SELECT prepare_completion(:token_hash, CAST(:for_user AS text), CAST(:session_id AS uuid),
                          CAST(:model_config AS text), CAST(:history_limit AS integer), CAST(:turn_id AS uuid),
                          CAST(:model AS text), CAST(:max_tokens AS integer), CAST(:messages AS jsonb),
                          CAST(:settings AS jsonb)) AS prepared;

-- name: record_completion
SELECT record_completion(:user_id, CAST(:session_id AS uuid), CAST(:turn_id AS uuid), CAST(:messages AS jsonb),
                         CAST(:reply AS jsonb), CAST(:api_key_id AS uuid), CAST(:settings AS jsonb)) AS recorded;

-- name: record_completion_usage
SELECT record_completion_usage(:user_id, CAST(:turn_id AS uuid), CAST(:reply AS jsonb),
                               CAST(:settings AS jsonb)) AS recorded;

-- name: completion_turn
SELECT completion_turn(CAST(:turn_id AS uuid)) AS turn;

-- name: list_pricing
SELECT DISTINCT ON (model) model, input_per_mtok, cached_input_per_mtok, output_per_mtok, effective_from
FROM model_pricing
WHERE effective_from <= now()
ORDER BY model, effective_from DESC;

-- name: set_pricing
INSERT INTO model_pricing (model, input_per_mtok, cached_input_per_mtok, output_per_mtok, effective_from)
VALUES (:model, CAST(:input AS numeric), CAST(:cached_input AS numeric), CAST(:output AS numeric),
        coalesce(CAST(:effective_from AS timestamptz), now()))
ON CONFLICT (model, effective_from) DO UPDATE
SET input_per_mtok = EXCLUDED.input_per_mtok, cached_input_per_mtok = EXCLUDED.cached_input_per_mtok,
    output_per_mtok = EXCLUDED.output_per_mtok
RETURNING model, input_per_mtok, cached_input_per_mtok, output_per_mtok, effective_from;

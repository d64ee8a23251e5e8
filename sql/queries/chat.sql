-- name: prepare_completion
SELECT prepare_completion(:token_hash, CAST(:for_user AS text), CAST(:session_id AS uuid),
                          CAST(:model_config AS text), CAST(:history_limit AS integer), CAST(:turn_id AS uuid),
                          CAST(:model AS text), CAST(:max_tokens AS integer), CAST(:messages AS jsonb),
                          CAST(:options AS jsonb), CAST(:settings AS jsonb)) AS prepared;

-- name: record_completion
SELECT record_completion(:user_id, CAST(:session_id AS uuid), CAST(:turn_id AS uuid), CAST(:messages AS jsonb),
                         CAST(:reply AS jsonb), CAST(:api_key_id AS uuid), CAST(:settings AS jsonb)) AS recorded;

-- name: record_completion_usage
SELECT record_completion_usage(:user_id, CAST(:turn_id AS uuid), CAST(:reply AS jsonb),
                               CAST(:settings AS jsonb)) AS recorded;

-- name: completion_turn
SELECT completion_turn(CAST(:turn_id AS uuid)) AS turn;

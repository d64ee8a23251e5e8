-- Every turn reaches the books exactly once. A turn is recorded under its id in completion_turns,
-- whose key makes recording idempotent in the schema: a second record of the same turn (a retry
-- whose first attempt may still be running) waits for the first, inserts nothing and returns what
-- the first stored. A turn that cannot be stored as messages (its session was deleted while the
-- upstream answered, or storing it failed) still leaves its usage, flagged usage_only.

CREATE TABLE completion_turns (
    turn_id     uuid PRIMARY KEY,
    user_id     text NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE completion_turns IS
    'One row per recorded completion turn (chat_messages.turn_id): its key makes record_completion idempotent.';

CREATE INDEX completion_turns_user_idx ON completion_turns (user_id);

-- Turns recorded before this migration, once each.
INSERT INTO completion_turns (turn_id, user_id, recorded_at)
SELECT DISTINCT ON (turn_id) turn_id, user_id, created_at
FROM chat_messages
WHERE role = 'assistant'
ORDER BY turn_id, id;

ALTER TABLE chat_messages ADD COLUMN usage_only boolean NOT NULL DEFAULT false;

COMMENT ON COLUMN chat_messages.usage_only IS
    'The turn''s messages could not be stored (its session was deleted while the upstream answered, or storing '
    'them failed): this assistant row carries the turn''s usage alone, against its user, with no session.';

-- prepare_completion now takes the new messages themselves and builds the message list that is sent,
-- so that the reservation is computed from exactly that list; record_completion takes its settings.
DROP FUNCTION prepare_completion(text, text, uuid, text, integer, uuid, text, integer, integer, integer, jsonb);
DROP FUNCTION record_completion(text, uuid, uuid, jsonb, jsonb, uuid);

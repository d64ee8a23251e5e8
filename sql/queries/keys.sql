-- name: store_api_key
-- Setting a key rotates: the user's active key is revoked in the same statement. The insert reads
-- an aggregate of the revocation, so the revocation completes first and the new key never meets
-- the old one in api_keys_one_active_per_user.
WITH revoked AS (
    UPDATE api_keys SET status = 'revoked', revoked_at = now()
    WHERE user_id = :user_id AND status = 'active'
    RETURNING id
), replaced AS (
    SELECT min(CAST(id AS text)) AS key_id FROM revoked
)
INSERT INTO api_keys (id, user_id, label, last_four, ciphertext, nonce, key_fingerprint, wrapped_data_key)
SELECT CAST(:key_id AS uuid), :user_id, CAST(:label AS text), :last_four, :ciphertext, :nonce, :fingerprint,
       CAST(:wrapped_data_key AS bytea)
FROM replaced
RETURNING id, label, last_four, status, created_at, (SELECT key_id FROM replaced) AS replaced_key_id;

-- name: make_room_for_api_key
-- In the transaction that stores a key: NULL when it fits the user's api_keys quota (their oldest revoked
-- keys deleted to make room), else the refusal.
SELECT api_key_room(:user_id, CAST(:defaults AS jsonb)) AS refusal;

-- name: list_api_keys
-- A page, newest first, after the cursor (:after_created, :after_id); :limit rows at most.
SELECT id, label, last_four, status, created_at, revoked_at, last_used_at
FROM api_keys
WHERE user_id = :user_id
  AND (CAST(:after_created AS timestamptz) IS NULL
       OR (created_at, id) < (CAST(:after_created AS timestamptz), CAST(:after_id AS uuid)))
ORDER BY created_at DESC, id DESC
LIMIT CAST(:limit AS integer);

-- name: revoke_api_key
UPDATE api_keys SET status = 'revoked', revoked_at = coalesce(revoked_at, now())
WHERE id = CAST(:key_id AS uuid) AND (user_id = :caller OR CAST(:caller_is_admin AS boolean))
RETURNING id, label, last_four, status, created_at, revoked_at, last_used_at;

-- name: sealed_api_keys
-- Keys sealed by the local key only: a KMS envelope (wrapped_data_key) does not depend on it.
SELECT id, user_id, ciphertext, nonce, key_fingerprint FROM api_keys
WHERE wrapped_data_key IS NULL ORDER BY id FOR UPDATE;

-- name: reseal_api_key
UPDATE api_keys SET ciphertext = :ciphertext, nonce = :nonce, key_fingerprint = :fingerprint
WHERE id = CAST(:key_id AS uuid);

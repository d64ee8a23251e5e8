-- name: register_client
INSERT INTO oauth_clients (client_id, kind, client_name, redirect_uris)
VALUES (:client_id, 'registered', :client_name, CAST(:redirect_uris AS text[]))
RETURNING client_id, created_at;

-- name: redeem_code
SELECT error, user_id, scope
FROM oauth_redeem_code(:code_hash, :client_id, :redirect_uri, :code_challenge, CAST(:resource AS text),
                       :access_hash, :refresh_hash, CAST(:access_ttl AS interval), CAST(:refresh_ttl AS interval));

-- name: refresh_grant
SELECT error, user_id, scope
FROM oauth_refresh(:refresh_hash, :client_id, CAST(:resource AS text), :access_hash, :new_refresh_hash,
                   CAST(:access_ttl AS interval), CAST(:refresh_ttl AS interval));

-- name: revoke_grant
SELECT oauth_revoke(:token_hash, :client_id) AS revoked;

"""Sign-in with OAuth 2.1: this server is a resource server (RFC 9728) and its own authorization server
(RFC 8414), issuer CHITTY_PUBLIC_URL. Grants and tokens live in PostgreSQL (sql/definitions/oauth.sql);
access tokens are hashed in access_tokens like personal ones, so authentication stays one round trip."""

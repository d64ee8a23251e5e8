"""Development-only helpers: the embedded PostgreSQL and `make run`. Not deployed."""

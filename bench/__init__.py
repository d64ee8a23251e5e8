"""Benchmarks: run against a real (embedded) PostgreSQL, not part of the test suite."""

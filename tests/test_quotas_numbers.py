"""Every limit is a real number: NaN and Infinity are refused by the tool, the table and the configuration."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from pg8000.exceptions import DatabaseError

from chalicelib import migrate
from chalicelib.config import DEFAULT_QUOTAS, LIMIT_KINDS, ConfigError, get_settings
from chalicelib.db import connection, sqlstate
from devtools import embedded
from tests.clients import error_details, post

CHECK_VIOLATION = "23514"


def raw_tool_call(server, user, name: str, arguments_json: str):
    params = f'{{"name": "{name}", "arguments": {arguments_json}}}'
    body = f'{{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {params}}}'
    response = post(server.mcp_url, body, token=user.token)
    assert response.status_code == 200, response.text
    return response.json()["result"]


@pytest.mark.parametrize("kind", LIMIT_KINDS)
@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_an_admin_cannot_set_a_limit_that_is_no_number(server, admin, make_user, database_url, kind, number):
    user = make_user()
    result = raw_tool_call(
        server, admin, "chitty_usage_limits_set", f'{{"user_id": "{user.user_id}", "{kind}": {number}}}'
    )
    assert result["isError"] is True
    assert error_details(result)["field"] == kind
    assert kind in result["content"][0]["text"]
    with connection(database_url) as conn:
        assert conn.run("SELECT count(*) FROM usage_limits WHERE user_id = :u", u=user.user_id)[0][0] == 0


@pytest.mark.parametrize("number", ["NaN", "Infinity"])
def test_the_table_refuses_a_limit_that_is_no_number(make_user, database_url, number):
    user = make_user()
    with connection(database_url) as conn, pytest.raises(DatabaseError) as refused:
        conn.run(
            "INSERT INTO usage_limits (user_id, kind, value) VALUES (:u, 'monthly_budget_usd', CAST(:v AS numeric))",
            u=user.user_id,
            v=number,
        )
    assert sqlstate(refused.value) == CHECK_VIOLATION


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings read afresh from an environment the test sets; the container's own afterwards."""
    for kind in LIMIT_KINDS:
        monkeypatch.delenv(f"CHITTY_DEFAULT_{kind.upper()}", raising=False)
    get_settings.cache_clear()
    yield monkeypatch
    monkeypatch.undo()
    get_settings.cache_clear()


@pytest.mark.parametrize("kind", ["monthly_budget_usd", "tokens_per_minute", "sessions", "bytes_per_session"])
@pytest.mark.parametrize("raw", ["NaN", "nan", "inf", "Infinity", "-inf", "-1", "1e400", "lots"])
def test_a_default_limit_that_is_no_finite_number_is_a_configuration_error(environment, kind, raw):
    name = f"CHITTY_DEFAULT_{kind.upper()}"
    environment.setenv(name, raw)
    with pytest.raises(ConfigError) as refused:
        get_settings()
    assert name in str(refused.value)
    assert repr(raw) in str(refused.value)


def test_a_default_metadata_quota_past_what_an_answer_can_show_is_a_configuration_error(environment):
    environment.setenv("CHITTY_DEFAULT_METADATA_BYTES_PER_SESSION", "262145")
    with pytest.raises(ConfigError, match="CHITTY_DEFAULT_METADATA_BYTES_PER_SESSION must be at most 262144"):
        get_settings()


def test_the_quota_defaults_hold_until_configured_and_none_removes_one(environment):
    assert get_settings().default_limits == DEFAULT_QUOTAS
    get_settings.cache_clear()
    environment.setenv("CHITTY_DEFAULT_SESSIONS", "250")
    environment.setenv("CHITTY_DEFAULT_MESSAGES_PER_SESSION", "none")
    environment.setenv("CHITTY_DEFAULT_MONTHLY_BUDGET_USD", "12.5")
    limits = get_settings().default_limits
    assert limits["sessions"] == 250
    assert isinstance(limits["sessions"], int)
    assert "messages_per_session" not in limits
    assert limits["monthly_budget_usd"] == 12.5
    assert json.loads(json.dumps(limits))["bytes_per_session"] == DEFAULT_QUOTAS["bytes_per_session"]


@pytest.fixture
def database_before_quotas(admin_database_url: str) -> Iterator[str]:
    """A database migrated up to the migration before storage quotas."""
    name = f"chitty_quotas_{uuid.uuid4().hex[:12]}"
    url = embedded.with_database(admin_database_url, name)
    with connection(url) as conn:
        migrate.apply(conn, [m for m in migrate.discover() if m.version < 8], [])
    yield url
    embedded.drop_database(admin_database_url, name)


def test_limits_stored_as_nan_or_infinity_become_no_limit_which_is_what_they_did(database_before_quotas):
    with connection(database_before_quotas) as conn:
        conn.run("INSERT INTO users (id, display_name) VALUES ('u1', 'u1')")
        conn.run(
            "INSERT INTO usage_limits (user_id, kind, value) VALUES "
            "('u1', 'monthly_budget_usd', 'NaN'), ('u1', 'requests_per_minute', 'Infinity'), "
            "('u1', 'tokens_per_minute', 1000)"
        )
        migrate.apply(conn)
        rows = conn.run("SELECT kind, value FROM usage_limits WHERE user_id = 'u1' ORDER BY kind")
        with pytest.raises(DatabaseError) as refused:
            conn.run("UPDATE usage_limits SET value = 'NaN' WHERE user_id = 'u1'")
    assert rows == [["monthly_budget_usd", None], ["requests_per_minute", None], ["tokens_per_minute", 1000]]
    assert sqlstate(refused.value) == CHECK_VIOLATION

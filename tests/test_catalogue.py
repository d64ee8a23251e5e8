"""The model catalogue: LiteLLM's price table imported (by `migrate`, `pricing import` and the daily upkeep),
every rate OpenAI bills (tiers, long context, cache writes, web searches), aliases, and model_info."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pg8000.native
import pytest

from chalicelib import pricing
from chalicelib.db import connection
from tests.clients import ROOT, run_cli
from tests.conftest import free_port, migrated_database

MILLION = Decimal(1_000_000)
BUNDLED = pricing.CATALOGUE_DIR / "openai-models.json"
MODEL_INFO_KEYS = {
    "model", "reasoning", "efforts", "default_effort", "vision", "pdf", "function_calling", "structured_output",
    "web_search", "context_window", "max_output", "apis", "shutdown_on", "successor", "retired",
}  # fmt: skip


def rows(conn: pg8000.native.Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    result = conn.run(sql, **params)
    names = [column["name"] for column in conn.columns or []]
    return [dict(zip(names, row, strict=True)) for row in result or []]


def bundled_table() -> dict[str, Any]:
    return json.loads(BUNDLED.read_text(encoding="utf-8"))


def entry(**fields: Any) -> dict[str, Any]:
    """An entry of LiteLLM's table for an OpenAI chat model: $1 input, $4 output per million tokens, unless told."""
    return {
        "litellm_provider": "openai",
        "mode": "chat",
        "input_cost_per_token": 1e-06,
        "output_cost_per_token": 4e-06,
        **fields,
    }


def new_model(prefix: str = "acme") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def usd(per_million: str, tokens: int) -> Decimal:
    return Decimal(per_million) * tokens / MILLION


@pytest.fixture
def fresh_database_url(admin_database_url: str) -> Iterator[str]:
    """A database of its own, migrated (the bundled catalogue imported), for tests that count every row."""
    with migrated_database(admin_database_url, f"chitty_catalogue_{uuid.uuid4().hex[:10]}") as url:
        yield url


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A local web server on 127.0.0.1 serving a folder: (its base URL, the folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    web = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=web.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{web.server_port}", folder
    web.shutdown()
    web.server_close()


def write_table(folder: Path, table: dict[str, Any], name: str = "prices.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(table), encoding="utf-8")
    return path


def import_table(conn: pg8000.native.Connection, table: dict[str, Any], effective_from: str | None = None) -> Any:
    """Import a table as `pricing import` does; returns the report."""
    report = conn.run(
        "SELECT import_model_catalogue(CAST(:models AS jsonb), coalesce(CAST(:at AS timestamptz), now()),"
        " CAST(:first AS timestamptz))::text",
        models=json.dumps(pricing.catalogue_entries(table)),
        at=effective_from,
        first=pricing.FIRST_PRICED_FROM,
    )[0][0]
    return pricing.ImportReport.from_json(report)


def record_reply(
    conn: pg8000.native.Connection,
    user_id: str,
    model: str,
    *,
    prompt: int = 0,
    cached: int = 0,
    cache_write: int = 0,
    completion: int = 0,
    tier: str | None = None,
    searches: int = 0,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """Insert one assistant row (no session) and return what the triggers stored."""
    (row,) = rows(
        conn,
        """INSERT INTO chat_messages (user_id, turn_id, role, model, prompt_tokens, cached_tokens, cache_write_tokens,
                                      completion_tokens, service_tier, web_search_calls, created_at)
           VALUES (:user_id, gen_random_uuid(), 'assistant', :model, :prompt, :cached, :cache_write, :completion,
                   :tier, :searches, coalesce(CAST(:created_at AS timestamptz), now()))
           RETURNING id, cost_usd, price_missing, pricing_id""",
        user_id=user_id,
        model=model,
        prompt=prompt,
        cached=cached,
        cache_write=cache_write,
        completion=completion,
        tier=tier,
        searches=searches,
        created_at=created_at,
    )
    return row


def counts(url: str) -> dict[str, int]:
    with connection(url) as raw:
        return {
            table: raw.run(f"SELECT count(*) FROM {table}")[0][0]
            for table in ("model_catalogue", "model_pricing", "model_pricing_rates")
        }


# LiteLLM's table, read


def test_the_bundled_catalogue_is_litellms_openai_text_models_and_every_one_is_catalogued_and_priced(conn):
    table = bundled_table()
    entries = pricing.catalogue_entries(table)
    assert len(entries) == len(table) > 100
    assert all(pricing.is_openai_text_model(name, value) for name, value in table.items())
    known = rows(
        conn,
        """SELECT c.model, (price_in_force(c.model, now())).model AS priced_as FROM model_catalogue c
           WHERE c.model = ANY(CAST(:names AS text[]))""",
        names=list(table),
    )
    assert sorted(row["model"] for row in known) == sorted(table)
    assert [row["model"] for row in known if row["priced_as"] != row["model"]] == []


def test_only_openai_text_models_are_read_and_only_the_rates_billed_here():
    table = {
        "sample_spec": {"mode": "one of chat, embedding, ..."},
        "claude-x": entry(litellm_provider="anthropic"),
        "text-embedding-x": entry(mode="embedding"),
        "openai/container": {"litellm_provider": "openai", "mode": "chat", "code_interpreter_cost_per_session": 0.03},
        "gpt-x": entry(
            input_cost_per_token=2.5e-06,
            cache_read_input_token_cost=2.5e-07,
            output_cost_per_token=1.5e-05,
            input_cost_per_token_batches=1.25e-06,
            output_cost_per_token_batches=7.5e-06,
            input_cost_per_token_above_272k_tokens=5e-06,
            output_cost_per_token_above_272k_tokens=2.25e-05,
            input_cost_per_token_above_272k_tokens_flex=2.5e-06,
            output_cost_per_token_above_272k_tokens_flex=1.125e-05,
            input_cost_per_token_flex=1.25e-06,
            output_cost_per_token_flex=7.5e-06,
            cache_creation_input_token_cost=3.125e-06,
            cache_creation_input_token_cost_above_12hr=5e-06,
            input_cost_per_audio_token=4e-05,
            search_context_cost_per_query={
                "search_context_size_low": 0.01,
                "search_context_size_medium": 0.025,
                "search_context_size_high": 0.05,
            },
        ),
    }
    [read] = pricing.catalogue_entries(table)
    assert read["model"] == "gpt-x"
    assert read["prices"] == {
        "input_per_mtok": "2.5",
        "cached_input_per_mtok": "0.25",
        "cache_write_per_mtok": "3.125",
        "output_per_mtok": "15",
        "long_context_threshold": 272_000,
        "rates": [
            {"service_tier": "default", "long_context": True, "input_per_mtok": "5", "cached_input_per_mtok": None,
             "cache_write_per_mtok": None, "output_per_mtok": "22.5"},
            {"service_tier": "flex", "long_context": False, "input_per_mtok": "1.25", "cached_input_per_mtok": None,
             "cache_write_per_mtok": None, "output_per_mtok": "7.5"},
            {"service_tier": "flex", "long_context": True, "input_per_mtok": "2.5", "cached_input_per_mtok": None,
             "cache_write_per_mtok": None, "output_per_mtok": "11.25"},
        ],
        "web_search_low_per_call": "0.01",
        "web_search_medium_per_call": "0.025",
        "web_search_high_per_call": "0.05",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("flags", "efforts"),
    [
        ({}, []),
        ({"supports_reasoning": True}, ["low", "medium", "high"]),
        (
            {
                "supports_reasoning": True,
                "supports_none_reasoning_effort": True,
                "supports_xhigh_reasoning_effort": True,
            },
            ["none", "low", "medium", "high", "xhigh"],
        ),
        (
            {
                "supports_reasoning": True,
                "supports_minimal_reasoning_effort": True,
                "supports_none_reasoning_effort": False,
            },
            ["minimal", "low", "medium", "high"],
        ),
        (
            {"supports_reasoning": True, "supports_low_reasoning_effort": False, "supports_max_reasoning_effort": True},
            ["medium", "high", "max"],
        ),
        ({"supports_reasoning": True, "reasoning_effort_levels": ["medium"]}, ["medium"]),
    ],
)
def test_the_reasoning_efforts_a_model_accepts(flags, efforts):
    [read] = pricing.catalogue_entries({"gpt-x": entry(**flags)})
    assert read["capabilities"]["reasoning_efforts"] == efforts
    assert read["capabilities"]["reasoning"] is bool(flags.get("supports_reasoning"))


@pytest.mark.parametrize(
    ("fields", "apis"),
    [
        ({"mode": "chat"}, ["chat", "responses"]),
        ({"mode": "responses"}, ["responses"]),
        ({"mode": "chat", "supported_endpoints": ["/v1/chat/completions", "/v1/batch"]}, ["chat"]),
        ({"mode": "responses", "supported_endpoints": ["/v1/batch", "/v1/responses"]}, ["responses"]),
    ],
)
def test_the_apis_that_serve_a_model(fields, apis):
    [read] = pricing.catalogue_entries({"gpt-x": entry(**fields)})
    assert read["capabilities"]["apis"] == apis


def test_a_price_finer_than_the_stored_precision_is_refused_not_rounded():
    with pytest.raises(pricing.CatalogueError, match=r"gpt-x: input_cost_per_token .* more than 6 decimal places"):
        pricing.catalogue_entries({"gpt-x": entry(input_cost_per_token=1.0000001e-06)})


# Importing: `migrate` and `pricing import`


def test_a_second_import_of_the_bundled_catalogue_adds_and_changes_nothing(fresh_database_url):
    models = len(bundled_table())
    before = counts(fresh_database_url)
    again = run_cli("pricing", "import", str(BUNDLED), database_url=fresh_database_url)
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines() == [
        f"0 added, 0 changed, {models} unchanged ({models} models; prices in USD per 1M tokens)"
    ]
    assert counts(fresh_database_url) == before
    assert before["model_catalogue"] == models


def test_an_import_prints_what_it_added_and_changed_and_a_second_one_nothing(fresh_database_url, tmp_path):
    added = new_model()
    table = {
        "gpt-5.4-mini": {**bundled_table()["gpt-5.4-mini"], "input_cost_per_token": 8e-07},
        added: entry(),
    }
    path = write_table(tmp_path, table)

    first = run_cli("pricing", "import", str(path), database_url=fresh_database_url)
    second = run_cli("pricing", "import", str(path), database_url=fresh_database_url)

    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert lines[0] == f"added {added}: input 1.00, output 4.00 from 2024-01-01"
    assert lines[1].startswith(
        "changed gpt-5.4-mini: input 0.75 -> 0.80, output 4.50 -> 4.50 (and any other rate) from"
    )
    assert lines[2] == "1 added, 1 changed, 0 unchanged (2 models; prices in USD per 1M tokens)"
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == ["0 added, 0 changed, 2 unchanged (2 models; prices in USD per 1M tokens)"]


def test_a_changed_price_applies_from_its_import_on_and_earlier_replies_keep_their_cost(fresh_database_url):
    with connection(fresh_database_url) as raw:
        raw.run("INSERT INTO users (id, display_name) VALUES ('pricy', 'pricy')")
        before = record_reply(raw, "pricy", "gpt-5.4-mini", prompt=1_000, completion=100)
        table = {"gpt-5.4-mini": {**bundled_table()["gpt-5.4-mini"], "output_cost_per_token": 5e-06}}
        report = import_table(raw, table)
        after = record_reply(raw, "pricy", "gpt-5.4-mini", prompt=1_000, completion=100)
        history = rows(
            raw, "SELECT id, output_per_mtok FROM model_pricing WHERE model = 'gpt-5.4-mini' ORDER BY effective_from"
        )
        kept = rows(raw, "SELECT cost_usd, pricing_id FROM chat_messages WHERE id = :id", id=before["id"])
    assert [(row["model"], row["old_output_per_mtok"], row["output_per_mtok"]) for row in report.changed] == [
        ("gpt-5.4-mini", Decimal("4.5"), Decimal("5"))
    ]
    assert [row["output_per_mtok"] for row in history] == [Decimal("4.5"), Decimal("5")]
    assert kept == [{"cost_usd": usd("0.75", 1_000) + usd("4.5", 100), "pricing_id": history[0]["id"]}]
    assert (after["cost_usd"], after["pricing_id"]) == (usd("0.75", 1_000) + usd("5", 100), history[1]["id"])


def test_a_model_priced_for_the_first_time_is_priced_from_2024_and_its_earlier_replies_stay_as_recorded(
    fresh_database_url,
):
    model = new_model()
    with connection(fresh_database_url) as raw:
        raw.run("INSERT INTO users (id, display_name) VALUES ('early', 'early')")
        early = record_reply(raw, "early", model, prompt=10, completion=10, created_at=datetime(2025, 1, 1, tzinfo=UTC))
        report = import_table(raw, {model: entry()})
        (price,) = rows(raw, "SELECT (price_in_force(:model, '2025-01-01')).*", model=model)
        (kept,) = rows(raw, "SELECT cost_usd, price_missing FROM chat_messages WHERE id = :id", id=early["id"])
    assert early["price_missing"] is True
    assert [row["model"] for row in report.added] == [model]
    assert price["effective_from"] == datetime(2024, 1, 1, tzinfo=UTC)
    assert kept == {"cost_usd": None, "price_missing": True}


def test_effective_from_dates_the_changed_prices_and_the_price_in_force_stays_until_then(fresh_database_url, tmp_path):
    path = write_table(tmp_path, {"gpt-4.1": {**bundled_table()["gpt-4.1"], "input_cost_per_token": 3e-06}})
    result = run_cli("pricing", "import", str(path), "--effective-from", "2099-01-01", database_url=fresh_database_url)
    with connection(fresh_database_url) as raw:
        now, later = raw.run(
            "SELECT (price_in_force('gpt-4.1', now())).input_per_mtok,"
            " (price_in_force('gpt-4.1', '2099-01-02')).input_per_mtok"
        )[0]
    assert result.returncode == 0, result.stderr
    assert "changed gpt-4.1: input 2.00 -> 3.00" in result.stdout
    assert (now, later) == (Decimal("2"), Decimal("3"))


def test_a_table_that_is_not_json_is_refused_with_a_clear_error(database_url, tmp_path):
    path = tmp_path / "prices.json"
    path.write_text("<html>not a price table</html>")
    result = run_cli("pricing", "import", str(path), database_url=database_url)
    assert result.returncode == 1
    assert "is not JSON" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_table_is_imported_from_a_url(fresh_database_url, served):
    base, folder = served
    model = new_model()
    write_table(folder, {model: entry()})
    result = run_cli("pricing", "import", f"{base}/prices.json", database_url=fresh_database_url)
    assert result.returncode == 0, result.stderr
    assert f"added {model}: input 1.00, output 4.00" in result.stdout


@pytest.mark.parametrize("url", ["http://example.com/prices.json", "ftp://127.0.0.1/prices.json", "file:///etc/passwd"])
def test_a_url_that_is_not_https_is_refused_before_anything_is_fetched(database_url, url):
    result = run_cli("pricing", "import", url, database_url=database_url)
    assert result.returncode == 1
    assert "must be https" in result.stderr


def test_a_table_larger_than_the_limit_is_refused(served):
    base, folder = served
    write_table(folder, {new_model(): entry()})
    with pytest.raises(pricing.CatalogueError, match="larger than 100 bytes"):
        pricing.read_source(f"{base}/prices.json", limit=100)


# What a usage costs: the rates OpenAI bills


def test_a_priority_call_costs_the_priority_rates(conn, user_id):
    priority = record_reply(conn, user_id, "gpt-4.1", prompt=10_000, cached=2_000, completion=1_000, tier="priority")
    default = record_reply(conn, user_id, "gpt-4.1", prompt=10_000, cached=2_000, completion=1_000, tier="default")
    assert priority["cost_usd"] == usd("3.5", 8_000) + usd("0.875", 2_000) + usd("14", 1_000)
    assert default["cost_usd"] == usd("2", 8_000) + usd("0.5", 2_000) + usd("8", 1_000)
    # Priced at the default rates, the priority call would be booked 43% short.
    assert 1 - default["cost_usd"] / priority["cost_usd"] == Decimal("0.4285714285714285714285714286")


@pytest.mark.parametrize(
    ("tier", "rates"),
    [
        ("flex", ("0.375", "0.0375", "2.25")),
        ("priority", ("1.5", "0.15", "9")),
        ("fast", ("1.5", "0.15", "9")),
        ("default", ("0.75", "0.075", "4.5")),
        ("auto", ("0.75", "0.075", "4.5")),
        ("scale", ("0.75", "0.075", "4.5")),
        (None, ("0.75", "0.075", "4.5")),
        ("ultrafast", ("0.75", "0.075", "4.5")),
    ],
)
def test_a_call_is_billed_at_the_rates_of_the_tier_that_served_it(conn, user_id, tier, rates):
    reply = record_reply(conn, user_id, "gpt-5.4-mini", prompt=5_000, cached=1_000, completion=500, tier=tier)
    input_, cached, output = rates
    assert reply["cost_usd"] == usd(input_, 4_000) + usd(cached, 1_000) + usd(output, 500)


def test_a_tier_without_rates_of_its_own_bills_at_the_default_rates(conn, user_id):
    reply = record_reply(conn, user_id, "gpt-4", prompt=1_000, completion=100, tier="priority")
    assert reply["cost_usd"] == usd("30", 1_000) + usd("60", 100)


def test_a_prompt_past_the_long_context_threshold_bills_the_whole_call_at_the_long_context_rates(conn, user_id):
    at = record_reply(conn, user_id, "gpt-5.4", prompt=272_000, cached=100_000, completion=1_000)
    past = record_reply(conn, user_id, "gpt-5.4", prompt=272_001, cached=100_000, completion=1_000)
    assert at["cost_usd"] == usd("2.5", 172_000) + usd("0.25", 100_000) + usd("15", 1_000)
    assert past["cost_usd"] == usd("5", 172_001) + usd("0.5", 100_000) + usd("22.5", 1_000)


def test_long_context_at_a_tier_uses_its_own_long_context_rates_else_the_default_ones(conn, user_id):
    flex = record_reply(conn, user_id, "gpt-5.4", prompt=300_000, completion=1_000, tier="flex")
    priority = record_reply(conn, user_id, "gpt-5.4", prompt=300_000, completion=1_000, tier="priority")
    sol = record_reply(conn, user_id, "gpt-6-sol", prompt=300_000, completion=1_000, tier="priority")
    assert flex["cost_usd"] == usd("2.5", 300_000) + usd("11.25", 1_000)
    assert priority["cost_usd"] == usd("5", 300_000) + usd("22.5", 1_000)
    assert sol["cost_usd"] == usd("8", 300_000) + usd("30", 1_000)


def test_cache_writes_bill_at_the_cache_write_price_else_at_input(conn, user_id):
    sol = record_reply(conn, user_id, "gpt-6-sol", prompt=10_000, cached=1_000, cache_write=3_000, completion=100)
    gpt_41 = record_reply(conn, user_id, "gpt-4.1", prompt=10_000, cached=1_000, cache_write=3_000, completion=100)
    assert sol["cost_usd"] == usd("2", 6_000) + usd("0.2", 1_000) + usd("2.5", 3_000) + usd("10", 100)
    assert gpt_41["cost_usd"] == usd("2", 9_000) + usd("0.5", 1_000) + usd("8", 100)


def test_each_web_search_adds_the_fee_per_call_at_the_medium_context_size(conn, user_id):
    searched = record_reply(conn, user_id, "gpt-5.4-mini", prompt=1_000, completion=100, searches=3)
    unlisted = record_reply(conn, user_id, "gpt-4", prompt=1_000, completion=100, searches=3)
    assert searched["cost_usd"] == usd("0.75", 1_000) + usd("4.5", 100) + 3 * Decimal("0.01")
    assert unlisted["cost_usd"] == usd("30", 1_000) + usd("60", 100)


def test_a_snapshot_with_a_price_of_its_own_is_billed_at_it_and_one_without_as_its_base(conn, user_id):
    own = record_reply(conn, user_id, "gpt-4o-2024-05-13", prompt=1_000, completion=1_000)
    base = record_reply(conn, user_id, "gpt-4o-2026-11-20", prompt=1_000, completion=1_000)
    priced_as = dict(
        conn.run(
            "SELECT id, model FROM model_pricing WHERE id = ANY(CAST(:ids AS bigint[]))",
            ids=[own["pricing_id"], base["pricing_id"]],
        )
    )
    assert own["cost_usd"] == usd("5", 1_000) + usd("15", 1_000)
    assert base["cost_usd"] == usd("2.5", 1_000) + usd("10", 1_000)
    assert (priced_as[own["pricing_id"]], priced_as[base["pricing_id"]]) == ("gpt-4o-2024-05-13", "gpt-4o")


def test_a_fine_tuned_model_is_priced_as_the_fine_tune_it_was_made_from(conn, user_id):
    reply = record_reply(conn, user_id, "ft:gpt-4o-2024-08-06:acme::B1xk9Zq", prompt=1_000, completion=1_000)
    assert reply["cost_usd"] == usd("3.75", 1_000) + usd("15", 1_000)


def test_an_alias_is_priced_and_described_as_its_model_until_it_is_removed(database_url, conn, user_id):
    alias = new_model("azure-deployment")
    made = run_cli("pricing", "alias", alias, "gpt-4.1", database_url=database_url)
    listed = run_cli("pricing", "aliases", database_url=database_url)
    aliased = record_reply(conn, user_id, alias, prompt=1_000, completion=100)
    info = conn.run("SELECT model_info(:m) ->> 'model'", m=alias)[0][0]
    removed = run_cli("pricing", "alias", alias, "--remove", database_url=database_url)
    after = record_reply(conn, user_id, alias, prompt=1_000, completion=100)

    assert made.returncode == 0, made.stderr
    assert f"alias {alias} -> gpt-4.1" in made.stdout
    assert f"{alias} -> gpt-4.1" in listed.stdout.splitlines()
    assert aliased["cost_usd"] == usd("2", 1_000) + usd("8", 100)
    assert info == "gpt-4.1"
    assert removed.returncode == 0, removed.stderr
    assert (after["cost_usd"], after["price_missing"]) == (None, True)


def test_an_alias_to_a_model_nobody_knows_is_refused(database_url, conn):
    alias = new_model("azure-deployment")
    result = run_cli("pricing", "alias", alias, "no-such-model", database_url=database_url)
    assert result.returncode == 1
    assert "no model 'no-such-model' has a price or a catalogue entry" in result.stderr
    assert conn.run("SELECT count(*) FROM model_aliases WHERE name = :n", n=alias) == [[0]]


def test_pricing_list_shows_the_tiers_long_context_cache_writes_and_search_fees(database_url):
    listed = run_cli("pricing", "list", database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    at = next(index for index, line in enumerate(lines) if line.split()[:1] == ["gpt-5.4"])
    assert lines[at].split()[1:5] == ["2.50", "0.25", "15.00", "-"]
    assert lines[at + 1 : at + 4] == [
        "  above 272000 prompt tokens: input 5.00, cached 0.50, output 22.50",
        "  flex: input 1.25, cached 0.13, output 7.50; above 272000: input 2.50, cached 0.25, output 11.25",
        "  priority: input 5.00, cached 0.50, output 30.00",
    ]
    sol = next(line for line in lines if line.split()[:1] == ["gpt-6-sol"])
    assert sol.split()[1:5] == ["2.00", "0.20", "10.00", "2.50"]
    assert "  web search per call: low 0.01, medium 0.01, high 0.01 (USD)" in lines


# What a model can do


def test_model_info_describes_a_model_with_exactly_its_keys(conn):
    info = json.loads(conn.run("SELECT model_info('gpt-5.4')::text")[0][0])
    assert set(info) == MODEL_INFO_KEYS
    assert info == {
        "model": "gpt-5.4", "reasoning": True, "efforts": ["none", "low", "medium", "high", "xhigh"],
        "default_effort": "none", "vision": True, "pdf": True, "function_calling": True, "structured_output": True,
        "web_search": False, "context_window": 1_050_000, "max_output": 128_000, "apis": ["chat", "responses"],
        "shutdown_on": None, "successor": None, "retired": False,
    }  # fmt: skip


def test_model_info_resolves_a_snapshot_to_its_base_and_knows_nothing_of_an_unknown_model(conn):
    snapshot, unknown = conn.run("SELECT model_info('gpt-5.4-2099-01-01') ->> 'model', model_info('no-such-model')")[0]
    assert (snapshot, unknown) == ("gpt-5.4", None)


def test_a_model_past_its_shutdown_date_is_retired(conn):
    today = conn.run("SELECT current_date")[0][0]
    gone, going = new_model("gone"), new_model("going")
    import_table(
        conn,
        {
            gone: entry(deprecation_date=str(today), successor_model="gpt-5.4-mini"),
            going: entry(deprecation_date=str(today + timedelta(days=1))),
        },
    )
    infos = dict(conn.run("SELECT m, model_info(m)::text FROM unnest(CAST(:ms AS text[])) AS m", ms=[gone, going]))
    assert json.loads(infos[gone])["retired"] is True
    assert json.loads(infos[gone])["successor"] == "gpt-5.4-mini"
    assert json.loads(infos[gone])["shutdown_on"] == str(today)
    assert json.loads(infos[going])["retired"] is False


def test_an_import_updates_a_models_capabilities_in_place(conn):
    model = new_model()
    import_table(conn, {model: entry(max_output_tokens=1_000)})
    import_table(conn, {model: entry(max_output_tokens=2_000, deprecation_date="2099-01-01")})
    assert conn.run("SELECT max_output_tokens, shutdown_on FROM model_catalogue WHERE model = :m", m=model) == [
        [2_000, date(2099, 1, 1)]
    ]


# The daily upkeep

PROBE = """
import json
from chalice.test import Client
import app

with Client(app.app, stage_name="dev") as client:
    event = client.events.generate_cw_event(
        source="aws.events", detail_type="Scheduled Event", detail={},
        resources=["arn:aws:events:us-east-1:123456789012:rule/probe"])
    print(json.dumps(client.lambda_.invoke("daily_upkeep", event).payload))
"""


def daily_upkeep(database_url: str, pricing_url: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run the scheduled daily_upkeep with CHITTY_PRICING_URL set: (its answer, its log lines)."""
    env = {key: value for key, value in os.environ.items() if key != "DEBUG"}
    completed = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**env, "CHITTY_DATABASE_URL": database_url, "CHITTY_PRICING_URL": pricing_url},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    *logs, answer = completed.stdout.strip().splitlines()
    return json.loads(answer), [json.loads(line) for line in logs]


def test_the_daily_upkeep_imports_the_prices_at_chitty_pricing_url_and_logs_the_counts(database_url, served, conn):
    base, folder = served
    model = new_model()
    write_table(folder, {model: entry(), "gpt-4.1": bundled_table()["gpt-4.1"]})

    answer, logs = daily_upkeep(database_url, f"{base}/prices.json")

    assert answer["prices_imported"] is True
    assert (answer["prices_added"], answer["prices_changed"], answer["prices_unchanged"]) == (1, 0, 1)
    assert answer["complete"] is True
    [imported] = [line for line in logs if line["message"] == "prices imported"]
    assert (imported["prices_added"], imported["prices_changed"], imported["level"]) == (1, 0, "INFO")
    assert conn.run("SELECT (price_in_force(:m, now())).input_per_mtok", m=model) == [[Decimal("1")]]


def test_a_price_table_that_cannot_be_fetched_is_a_warning_and_the_rest_of_the_upkeep_runs(database_url):
    url = f"http://127.0.0.1:{free_port()}/prices.json"

    answer, logs = daily_upkeep(database_url, url)

    assert answer["prices_imported"] is False
    assert answer["complete"] is True
    assert "expired_reservations_purged" in answer
    [warning] = [line for line in logs if line["message"] == "prices not imported"]
    assert warning["level"] == "WARNING"
    assert warning["source"] == url
    assert "cannot fetch" in warning["detail"]
    assert [line["message"] for line in logs][-1] == "daily upkeep done"

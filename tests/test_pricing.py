"""Model prices and the cost SQL computes for every reply: exact, effective-dated, never rewritten."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pg8000.native
import pytest

from devtools.fake_openai import make_usage
from tests.clients import MODERN, run_cli, with_client

MILLION = Decimal(1_000_000)
# The list prices the product was first seeded with (migration 002): model -> (input, cached input, output) USD
# per million tokens. The bundled catalogue (LiteLLM's table) lists the same default-tier prices for all twelve;
# where it adds other rates (priority, flex, web search) `migrate` added a row from its run on, with the same
# default-tier prices.
SEEDED = {
    "gpt-4o": ("2.50", "1.25", "10"),
    "gpt-4o-mini": ("0.15", "0.075", "0.60"),
    "gpt-4.1": ("2", "0.50", "8"),
    "gpt-4.1-mini": ("0.40", "0.10", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.025", "0.40"),
    "o3": ("2", "0.50", "8"),
    "o4-mini": ("1.10", "0.275", "4.40"),
    "gpt-5": ("1.25", "0.125", "10"),
    "gpt-5-mini": ("0.25", "0.025", "2"),
    "gpt-5-nano": ("0.05", "0.005", "0.40"),
    "gpt-4": ("30", None, "60"),
    "gpt-3.5-turbo": ("0.50", None, "1.50"),
}


def expected_cost(model: str, prompt: int, cached: int, completion: int) -> Decimal:
    """The cost by the list price: uncached prompt at input, cached at cached input (else input), output."""
    return cost_at(*SEEDED[model], prompt=prompt, cached=cached, completion=completion)


def cost_at(
    input_: str, cached_input: str | None, output: str, *, prompt: int, cached: int, completion: int
) -> Decimal:
    cached_price = Decimal(cached_input if cached_input is not None else input_)
    return ((prompt - cached) * Decimal(input_) + cached * cached_price + completion * Decimal(output)) / MILLION


def rows(conn: pg8000.native.Connection, sql: str, **params: Any) -> list[dict[str, Any]]:
    result = conn.run(sql, **params)
    names = [column["name"] for column in conn.columns or []]
    return [dict(zip(names, row, strict=True)) for row in result or []]


def throwaway_model() -> str:
    return f"test-model-{uuid.uuid4().hex}"


def record_reply(
    conn: pg8000.native.Connection,
    user_id: str,
    model: str,
    *,
    prompt: int = 0,
    cached: int = 0,
    completion: int = 0,
    reasoning: int = 0,
    created_at: datetime | None = None,
) -> dict[str, Any]:
    """Insert one assistant row (no session) and return what the triggers stored."""
    (row,) = rows(
        conn,
        """INSERT INTO chat_messages (user_id, turn_id, role, model, prompt_tokens, cached_tokens,
                                      completion_tokens, reasoning_tokens, created_at)
           VALUES (:user_id, gen_random_uuid(), 'assistant', :model, :prompt, :cached, :completion, :reasoning,
                   coalesce(CAST(:created_at AS timestamptz), now()))
           RETURNING id, model, cost_usd, price_missing, pricing_id, created_at""",
        user_id=user_id,
        model=model,
        prompt=prompt,
        cached=cached,
        completion=completion,
        reasoning=reasoning,
        created_at=created_at,
    )
    return row


def set_price(
    conn: pg8000.native.Connection,
    model: str,
    input_: str,
    cached_input: str | None,
    output: str,
    effective_from: datetime | str | None = None,
) -> int:
    (row,) = rows(
        conn,
        """INSERT INTO model_pricing (model, input_per_mtok, cached_input_per_mtok, output_per_mtok, effective_from)
           VALUES (:model, CAST(:input AS numeric), CAST(:cached AS numeric), CAST(:output AS numeric),
                   coalesce(CAST(:effective_from AS timestamptz), now()))
           RETURNING id""",
        model=model,
        input=input_,
        cached=cached_input,
        output=output,
        effective_from=effective_from,
    )
    return int(row["id"])


def stored_cost(conn: pg8000.native.Connection, message_id: int) -> Decimal | None:
    (row,) = rows(conn, "SELECT cost_usd FROM chat_messages WHERE id = :id", id=message_id)
    return row["cost_usd"]


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, database_url=database_url)


def listed_line(output: str, model: str) -> list[str]:
    """The fields of `pricing list`'s line for a model."""
    lines = [line.split() for line in output.splitlines() if line.split()[:1] == [model]]
    assert len(lines) == 1, output
    return lines[0]


def price_shown(field: str) -> Decimal | str:
    """A price column of `pricing list` as a number ('-': no cached price, billed as input)."""
    return field if field == "-" else Decimal(field)


# Prices as stored


def test_every_seeded_price_is_present_and_exact(conn):
    stored = rows(
        conn,
        """SELECT model, input_per_mtok, cached_input_per_mtok, output_per_mtok FROM model_pricing
           WHERE effective_from = '2024-01-01' AND model = ANY(CAST(:models AS text[]))""",
        models=list(SEEDED),
    )
    as_stored = {
        row["model"]: (row["input_per_mtok"], row["cached_input_per_mtok"], row["output_per_mtok"]) for row in stored
    }
    assert as_stored == {
        model: tuple(None if price is None else Decimal(price) for price in prices) for model, prices in SEEDED.items()
    }
    assert all(isinstance(price, Decimal) for prices in as_stored.values() for price in prices if price is not None)


def test_prices_and_costs_are_numeric_columns_not_floats(conn):
    columns = rows(
        conn,
        """SELECT table_name, column_name, data_type FROM information_schema.columns
           WHERE (table_name IN ('model_pricing', 'model_pricing_rates')
                  AND (column_name LIKE '%per_mtok' OR column_name LIKE '%per_call'))
              OR (table_name = 'chat_messages' AND column_name = 'cost_usd')
           ORDER BY table_name, column_name""",
    )
    assert [(c["table_name"], c["column_name"], c["data_type"]) for c in columns] == [
        ("chat_messages", "cost_usd", "numeric"),
        ("model_pricing", "cache_write_per_mtok", "numeric"),
        ("model_pricing", "cached_input_per_mtok", "numeric"),
        ("model_pricing", "input_per_mtok", "numeric"),
        ("model_pricing", "output_per_mtok", "numeric"),
        ("model_pricing", "web_search_high_per_call", "numeric"),
        ("model_pricing", "web_search_low_per_call", "numeric"),
        ("model_pricing", "web_search_medium_per_call", "numeric"),
        ("model_pricing_rates", "cache_write_per_mtok", "numeric"),
        ("model_pricing_rates", "cached_input_per_mtok", "numeric"),
        ("model_pricing_rates", "input_per_mtok", "numeric"),
        ("model_pricing_rates", "output_per_mtok", "numeric"),
    ]


def test_a_stored_cost_is_of_type_numeric(conn, user_id):
    reply = record_reply(conn, user_id, "gpt-4o", prompt=10, completion=10)
    (row,) = rows(conn, "SELECT pg_typeof(cost_usd)::text AS type FROM chat_messages WHERE id = :id", id=reply["id"])
    assert row["type"] == "numeric"
    assert isinstance(reply["cost_usd"], Decimal)


# The cost formula


def test_plain_usage_costs_prompt_at_input_and_completion_at_output(conn, user_id):
    reply = record_reply(conn, user_id, "gpt-4o", prompt=1234, completion=567)
    assert reply["cost_usd"] == expected_cost("gpt-4o", prompt=1234, cached=0, completion=567)
    assert reply["cost_usd"] == Decimal("0.008755")
    assert reply["price_missing"] is False


def test_cached_prompt_tokens_bill_at_the_cached_input_price(conn, user_id):
    reply = record_reply(conn, user_id, "gpt-4o-mini", prompt=10_000, cached=6_000, completion=300)
    assert reply["cost_usd"] == expected_cost("gpt-4o-mini", prompt=10_000, cached=6_000, completion=300)
    assert reply["cost_usd"] == Decimal("0.00123")


def test_reasoning_tokens_are_inside_completion_tokens_and_bill_at_output(conn, user_id):
    reply = record_reply(conn, user_id, "o4-mini", prompt=2_000, cached=500, completion=3_000, reasoning=2_500)
    assert reply["cost_usd"] == expected_cost("o4-mini", prompt=2_000, cached=500, completion=3_000)
    assert reply["cost_usd"] == Decimal("0.0149875")


def test_cached_tokens_of_a_model_without_a_cached_price_bill_at_input(conn, user_id):
    reply = record_reply(conn, user_id, "gpt-4", prompt=1_000, cached=400, completion=100)
    assert reply["cost_usd"] == expected_cost("gpt-4", prompt=1_000, cached=400, completion=100)
    assert reply["cost_usd"] == Decimal("0.036")


def test_the_smallest_prices_are_kept_to_the_last_digit(conn, user_id):
    reply = record_reply(conn, user_id, "gpt-5-nano", prompt=3, cached=1, completion=1)
    assert reply["cost_usd"] == expected_cost("gpt-5-nano", prompt=3, cached=1, completion=1)
    assert reply["cost_usd"] == Decimal("0.000000505")


@pytest.mark.parametrize("model", sorted(SEEDED))
def test_every_seeded_model_is_priced_by_its_list_price(conn, user_id, model):
    reply = record_reply(conn, user_id, model, prompt=7_777, cached=3_333, completion=4_444, reasoning=1_111)
    assert reply["cost_usd"] == expected_cost(model, prompt=7_777, cached=3_333, completion=4_444)


def test_zero_tokens_cost_nothing(conn, user_id):
    reply = record_reply(conn, user_id, "gpt-4o")
    assert reply["cost_usd"] == 0
    assert reply["price_missing"] is False


# Which price applies


@pytest.mark.parametrize(
    ("snapshot", "base"),
    [
        ("gpt-4o-2026-11-20", "gpt-4o"),
        ("gpt-4o-mini-2026-07-18", "gpt-4o-mini"),
        ("o3-2026-04-16", "o3"),
        ("gpt-4-0314", "gpt-4"),
        ("gpt-3.5-turbo-0301", "gpt-3.5-turbo"),
    ],
)
def test_a_dated_snapshot_without_a_price_of_its_own_is_priced_as_its_base_model(conn, user_id, snapshot, base):
    assert rows(conn, "SELECT model FROM model_pricing WHERE model = :model", model=snapshot) == []
    reply = record_reply(conn, user_id, snapshot, prompt=1_000, cached=200, completion=50)
    (in_force,) = rows(conn, "SELECT (price_in_force(:model, now())).*", model=base)
    assert reply["cost_usd"] == expected_cost(base, prompt=1_000, cached=200, completion=50)
    assert (reply["pricing_id"], in_force["model"]) == (in_force["id"], base)
    assert reply["model"] == snapshot


def test_a_snapshot_with_its_own_price_uses_it_and_other_snapshots_use_the_base(conn, user_id):
    base = throwaway_model()
    set_price(conn, base, "1", "0.5", "4", "2024-01-01")
    set_price(conn, f"{base}-2025-01-01", "3", None, "9", "2024-01-01")
    own = record_reply(conn, user_id, f"{base}-2025-01-01", prompt=100, cached=10, completion=10)
    other = record_reply(conn, user_id, f"{base}-2025-02-02", prompt=100, cached=10, completion=10)
    assert own["cost_usd"] == cost_at("3", None, "9", prompt=100, cached=10, completion=10)
    assert other["cost_usd"] == cost_at("1", "0.5", "4", prompt=100, cached=10, completion=10)


def test_a_model_without_a_price_records_null_cost_and_the_flag(conn, user_id):
    reply = record_reply(conn, user_id, throwaway_model(), prompt=100, completion=100)
    assert reply["id"] is not None
    assert reply["cost_usd"] is None
    assert reply["price_missing"] is True
    assert reply["pricing_id"] is None


def test_a_reply_without_a_model_name_records_null_cost_and_the_flag(conn, user_id):
    (reply,) = rows(
        conn,
        """INSERT INTO chat_messages (user_id, turn_id, role, prompt_tokens, completion_tokens)
           VALUES (:user_id, gen_random_uuid(), 'assistant', 10, 10)
           RETURNING cost_usd, price_missing""",
        user_id=user_id,
    )
    assert reply == {"cost_usd": None, "price_missing": True}


def test_a_new_price_leaves_earlier_costs_alone_and_prices_later_replies(conn, user_id):
    model = throwaway_model()
    set_price(conn, model, "1", "0.5", "2", "2024-01-01")
    before = record_reply(conn, user_id, model, prompt=1_000, cached=100, completion=100)
    set_price(conn, model, "10", "5", "20")
    after = record_reply(conn, user_id, model, prompt=1_000, cached=100, completion=100)
    assert stored_cost(conn, before["id"]) == cost_at("1", "0.5", "2", prompt=1_000, cached=100, completion=100)
    assert after["cost_usd"] == cost_at("10", "5", "20", prompt=1_000, cached=100, completion=100)


def test_a_reply_dated_before_a_price_change_is_priced_at_the_old_price(conn, user_id):
    model = throwaway_model()
    set_price(conn, model, "1", None, "2", "2024-01-01")
    set_price(conn, model, "10", None, "20", "2025-06-01")
    old = record_reply(conn, user_id, model, prompt=500, completion=500, created_at=datetime(2025, 5, 31, tzinfo=UTC))
    new = record_reply(conn, user_id, model, prompt=500, completion=500, created_at=datetime(2025, 6, 1, tzinfo=UTC))
    assert old["cost_usd"] == cost_at("1", None, "2", prompt=500, completion=500, cached=0)
    assert new["cost_usd"] == cost_at("10", None, "20", prompt=500, completion=500, cached=0)


def test_a_reply_dated_before_any_price_of_its_model_is_unpriced(conn, user_id):
    model = throwaway_model()
    set_price(conn, model, "1", None, "2", "2025-01-01")
    reply = record_reply(conn, user_id, model, prompt=10, completion=10, created_at=datetime(2024, 12, 31, tzinfo=UTC))
    assert reply["cost_usd"] is None
    assert reply["price_missing"] is True


# The command line


def test_pricing_list_shows_every_seeded_model_with_its_prices(database_url):
    listed = cli(database_url, "pricing", "list")
    assert listed.returncode == 0, listed.stderr
    for model, prices in SEEDED.items():
        shown = listed_line(listed.stdout, model)[1:4]
        assert [price_shown(field) for field in shown] == [price_shown(price or "-") for price in prices]


def test_pricing_set_adds_an_effective_dated_price_that_pricing_list_shows(database_url, conn):
    model = throwaway_model()
    first = cli(
        database_url, "pricing", "set", model, "--input", "1.5", "--cached-input", "0.25", "--output", "6",
        "--effective-from", "2025-01-01T00:00:00Z",
    )  # fmt: skip
    second = cli(database_url, "pricing", "set", model, "--input", "1.75", "--cached-input", "0.5", "--output", "7")
    listed = cli(database_url, "pricing", "list")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert f"{model}: input 1.50, cached input 0.25, output 6.00" in first.stdout
    assert "2025-01-01" in first.stdout
    fields = listed_line(listed.stdout, model)
    assert [Decimal(field) for field in fields[1:4]] == [Decimal("1.75"), Decimal("0.5"), Decimal("7")]
    history = rows(
        conn,
        "SELECT input_per_mtok, effective_from FROM model_pricing WHERE model = :model ORDER BY effective_from",
        model=model,
    )
    assert [row["input_per_mtok"] for row in history] == [Decimal("1.5"), Decimal("1.75")]
    assert history[0]["effective_from"] == datetime(2025, 1, 1, tzinfo=UTC)


def test_pricing_set_without_a_cached_price_bills_cached_tokens_as_input(database_url, conn, user_id):
    model = throwaway_model()
    result = cli(
        database_url, "pricing", "set", model, "--input", "2", "--output", "3", "--effective-from", "2024-01-01"
    )
    reply = record_reply(conn, user_id, model, prompt=100, cached=40, completion=10)
    assert result.returncode == 0, result.stderr
    assert listed_line(cli(database_url, "pricing", "list").stdout, model)[2] == "-"
    assert reply["cost_usd"] == cost_at("2", None, "3", prompt=100, cached=40, completion=10)


def test_pricing_set_shows_a_free_cached_price_as_zero_not_as_billed_at_input(database_url):
    model = throwaway_model()
    result = cli(database_url, "pricing", "set", model, "--input", "2", "--cached-input", "0", "--output", "3")
    assert result.returncode == 0, result.stderr
    assert "cached input 0" in result.stdout
    assert Decimal(listed_line(cli(database_url, "pricing", "list").stdout, model)[2]) == 0


def test_pricing_list_shows_a_price_to_its_last_stored_digit(database_url):
    model = throwaway_model()
    result = cli(database_url, "pricing", "set", model, "--input", "0.000125", "--output", "0.123456")
    assert result.returncode == 0, result.stderr
    fields = listed_line(cli(database_url, "pricing", "list").stdout, model)
    assert (Decimal(fields[1]), Decimal(fields[3])) == (Decimal("0.000125"), Decimal("0.123456"))


def test_a_price_set_for_a_future_date_is_not_listed_as_in_force(database_url):
    model = throwaway_model()
    result = cli(
        database_url, "pricing", "set", model, "--input", "1", "--output", "2", "--effective-from", "2999-01-01"
    )
    assert result.returncode == 0, result.stderr
    assert model not in cli(database_url, "pricing", "list").stdout


@pytest.mark.parametrize("price", ["abc", "NaN", "-1", "Infinity"])
def test_pricing_set_refuses_a_price_that_is_not_a_non_negative_number(database_url, conn, price):
    model = throwaway_model()
    result = cli(database_url, "pricing", "set", model, "--input", price, "--output", "2")
    assert result.returncode != 0
    assert "input" in result.stderr
    assert "Traceback" not in result.stderr
    assert rows(conn, "SELECT id FROM model_pricing WHERE model = :model", model=model) == []


# Through the server


def complete(server, user, arguments: dict[str, Any]) -> Any:
    async def work(client):
        return await client.call_tool("chatgpt_complete", arguments)

    return with_client(server.mcp_url, user.token, MODERN, work)


def test_a_completion_reports_the_exact_cost_the_database_stored(server, fake_openai, alice, conn, monkeypatch):
    messages = [{"role": "user", "content": "Summarise the contract dispute in Smith v. Jones. " * 20}]
    # The fake keeps its settings across tests: monkeypatch puts them back.
    monkeypatch.setattr(fake_openai, "cached_tokens", 128)
    monkeypatch.setattr(fake_openai, "reasoning_tokens", 40)
    result = complete(server, alice, {"messages": messages, "model": "gpt-4o"})
    assert not result.is_error, result.content
    usage = make_usage(messages, "echo: " + messages[0]["content"], cached_tokens=128, reasoning_tokens=40)
    expected = expected_cost(
        "gpt-4o",
        prompt=usage["prompt_tokens"],
        cached=128,
        completion=usage["completion_tokens"],
    )
    (message_id,) = result.structured_content["message_ids"]
    assert Decimal(str(result.structured_content["cost_usd"])) == expected
    assert stored_cost(conn, message_id) == expected


def test_a_reply_from_a_snapshot_is_stored_under_it_and_priced_as_the_base_model(
    server, fake_openai, alice, conn, monkeypatch
):
    messages = [{"role": "user", "content": "Which clause governs termination?"}]
    # A snapshot the catalogue does not list (gpt-4o-2024-08-06 has a price row of its own).
    monkeypatch.setattr(fake_openai, "served_model", {"gpt-4o": "gpt-4o-2026-11-20"})
    result = complete(server, alice, {"messages": messages, "model": "gpt-4o"})
    assert not result.is_error, result.content
    usage = make_usage(messages, "echo: " + messages[0]["content"])
    (message_id,) = result.structured_content["message_ids"]
    (row,) = rows(
        conn,
        """SELECT m.model, m.cost_usd, p.model AS priced_as FROM chat_messages m
           JOIN model_pricing p ON p.id = m.pricing_id WHERE m.id = :id""",
        id=message_id,
    )
    expected = expected_cost("gpt-4o", prompt=usage["prompt_tokens"], cached=0, completion=usage["completion_tokens"])
    assert row == {"model": "gpt-4o-2026-11-20", "cost_usd": expected, "priced_as": "gpt-4o"}
    assert result.structured_content["model"] == "gpt-4o-2026-11-20"
    assert Decimal(str(result.structured_content["cost_usd"])) == expected

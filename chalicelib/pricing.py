"""The model catalogue from LiteLLM's price table: OpenAI's text models, their prices and what they can do.

LiteLLM (github.com/BerriAI/litellm) keeps `model_prices_and_context_window.json`: one object per
model, prices in USD per token. `catalogue_entries` normalises its OpenAI text models (provider
openai, mode chat or responses) into the rows `import_model_catalogue` (sql/definitions/pricing.sql)
takes: prices in USD per million tokens, exact (Decimal), as strings; capabilities as booleans and
lists. Fine-tunes (`ft:...`) are kept: a fine-tuned model is priced as the fine-tune it was made from.
The product ships a trimmed copy of the table (sql/catalogue/), which `migrate` imports when it changes.
"""

from __future__ import annotations

import datetime
import json
import re
import time
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chalicelib.db import SQL_DIR

CATALOGUE_DIR = SQL_DIR / "catalogue"
# Models priced for the first time are priced from here on, so replies recorded before an import read a price.
FIRST_PRICED_FROM = "2024-01-01T00:00:00Z"
MAX_DOWNLOAD_BYTES = 20 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 10.0
MILLION = Decimal(1_000_000)
# Prices are stored as numeric(14, 6) USD per million tokens (and per web search call).
PRICE_PLACES = 6
MODES = ("chat", "responses")
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
TIERS = ("flex", "priority", "ultrafast")
# LiteLLM's per-token price keys -> the columns of model_pricing and model_pricing_rates.
RATES = {
    "input_cost_per_token": "input_per_mtok",
    "cache_read_input_token_cost": "cached_input_per_mtok",
    "cache_creation_input_token_cost": "cache_write_per_mtok",
    "output_cost_per_token": "output_per_mtok",
}
# A rate key: the base price, then optionally the long-context tier (_above_272k_tokens), then a service
# tier. Anything else (_batches, _above_12hr cache writes, audio and image tokens) is not billed here.
RATE_KEY = re.compile(
    rf"^({'|'.join(RATES)})(?:_above_(\d+)k_tokens)?(?:_({'|'.join(TIERS)}))?$",
)
SEARCH_SIZES = ("low", "medium", "high")
ENDPOINT_APIS = {"/v1/chat/completions": "chat", "/v1/responses": "responses"}
MODE_APIS = {"chat": ["chat", "responses"], "responses": ["responses"]}
# The capability flags of model_catalogue, from LiteLLM's supports_* keys.
FLAGS = {
    "vision": "supports_vision",
    "pdf_input": "supports_pdf_input",
    "function_calling": "supports_function_calling",
    "structured_output": "supports_response_schema",
    "web_search": "supports_web_search",
}
# What the trimmed catalogue keeps of an entry: the keys read here.
KEPT_KEYS = {
    "litellm_provider",
    "mode",
    "max_input_tokens",
    "max_output_tokens",
    "supports_reasoning",
    "reasoning_effort_levels",
    "default_reasoning_effort",
    "supported_endpoints",
    "search_context_cost_per_query",
    "deprecation_date",
    "successor_model",
    *FLAGS.values(),
    *(f"supports_{effort}_reasoning_effort" for effort in EFFORTS),
}
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class CatalogueError(ValueError):
    """A price table that cannot be read or imported; the message says where and why."""


def is_openai_text_model(name: str, entry: Any) -> bool:
    """An entry of LiteLLM's table for one of OpenAI's text models (not openai/container and the like)."""
    return (
        isinstance(entry, dict)
        and entry.get("litellm_provider") == "openai"
        and entry.get("mode") in MODES
        and "/" not in name
    )


def _per_million(model: str, key: str, value: Any, scale: Decimal = MILLION) -> str:
    """A per-token price as an exact decimal string of USD per million tokens (scale 1: as it is)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CatalogueError(f"{model}: {key} is not a number: {value!r}")
    try:
        price = Decimal(str(value)) * scale
    except InvalidOperation:
        raise CatalogueError(f"{model}: {key} is not a number: {value!r}") from None
    if not price.is_finite() or price < 0:
        raise CatalogueError(f"{model}: {key} must be a price of at least 0, not {value!r}")
    exponent = price.normalize().as_tuple().exponent
    if isinstance(exponent, int) and -exponent > PRICE_PLACES:
        raise CatalogueError(f"{model}: {key} = {value!r} needs more than {PRICE_PLACES} decimal places")
    return format(price.normalize(), "f")


def _prices(model: str, entry: dict[str, Any]) -> dict[str, Any] | None:
    """The price columns and rate rows of an entry; None when it has no input or output price."""
    groups: dict[tuple[str, bool], dict[str, str]] = {}
    thresholds: set[int] = set()
    for key, value in entry.items():
        match = RATE_KEY.match(key)
        if not match or value is None:
            continue
        base, thousands, tier = match.groups()
        if thousands is not None:
            thresholds.add(int(thousands) * 1000)
        group = groups.setdefault((tier or "default", thousands is not None), {})
        group[RATES[base]] = _per_million(model, key, value)
    if len(thresholds) > 1:
        raise CatalogueError(f"{model}: more than one long-context threshold ({sorted(thresholds)})")
    own = groups.pop(("default", False), {})
    if "input_per_mtok" not in own or "output_per_mtok" not in own:
        return None
    prices: dict[str, Any] = {
        "input_per_mtok": own["input_per_mtok"],
        "cached_input_per_mtok": own.get("cached_input_per_mtok"),
        "cache_write_per_mtok": own.get("cache_write_per_mtok"),
        "output_per_mtok": own["output_per_mtok"],
        "long_context_threshold": thresholds.pop() if thresholds else None,
        "rates": [
            {
                "service_tier": tier,
                "long_context": long_context,
                "input_per_mtok": rates["input_per_mtok"],
                "cached_input_per_mtok": rates.get("cached_input_per_mtok"),
                "cache_write_per_mtok": rates.get("cache_write_per_mtok"),
                "output_per_mtok": rates["output_per_mtok"],
            }
            for (tier, long_context), rates in sorted(groups.items())
            # A tier listed without both an input and an output price bills at the default tier's.
            if "input_per_mtok" in rates and "output_per_mtok" in rates
        ],
    }
    search = entry.get("search_context_cost_per_query")
    search = search if isinstance(search, dict) else {}
    for size in SEARCH_SIZES:
        key = f"search_context_size_{size}"
        value = search.get(key)
        prices[f"web_search_{size}_per_call"] = None if value is None else _per_million(model, key, value, Decimal(1))
    return prices


def _efforts(entry: dict[str, Any]) -> list[str]:
    """The reasoning efforts a model accepts: its own list when LiteLLM gives one; else, for a reasoning model,
    low, medium and high, with none, minimal, xhigh and max only where flagged (and low unless flagged off)."""
    listed = entry.get("reasoning_effort_levels")
    if isinstance(listed, list):
        return [effort for effort in EFFORTS if effort in listed]
    if entry.get("supports_reasoning") is not True:
        return []
    flagged = {effort: entry.get(f"supports_{effort}_reasoning_effort") for effort in EFFORTS}
    return [
        effort
        for effort in EFFORTS
        if flagged[effort] is True or (effort in ("low", "medium", "high") and flagged[effort] is not False)
    ]


def _is_date(value: Any) -> bool:
    if not (isinstance(value, str) and DATE.match(value)):
        return False
    try:
        datetime.date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _positive(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _capabilities(model: str, entry: dict[str, Any]) -> dict[str, Any]:
    endpoints = entry.get("supported_endpoints")
    if isinstance(endpoints, list):
        apis = [api for endpoint, api in ENDPOINT_APIS.items() if endpoint in endpoints]
    else:
        apis = list(MODE_APIS[entry["mode"]])
    shutdown = entry.get("deprecation_date")
    if shutdown is not None and not _is_date(shutdown):
        raise CatalogueError(f"{model}: deprecation_date must be a date YYYY-MM-DD, not {shutdown!r}")
    default_effort = entry.get("default_reasoning_effort")
    successor = entry.get("successor_model")
    return {
        "reasoning": entry.get("supports_reasoning") is True,
        "reasoning_efforts": _efforts(entry),
        "default_reasoning_effort": default_effort if default_effort in EFFORTS else None,
        **{flag: entry.get(key) is True for flag, key in FLAGS.items()},
        "context_window": _positive(entry.get("max_input_tokens")),
        "max_output_tokens": _positive(entry.get("max_output_tokens")),
        "apis": apis,
        "shutdown_on": shutdown,
        "successor": successor if isinstance(successor, str) and successor else None,
    }


def catalogue_entries(table: Any) -> list[dict[str, Any]]:
    """LiteLLM's table (a JSON object of model -> entry) as the rows import_model_catalogue takes, by model name:
    {model, capabilities, prices} for each OpenAI text model; prices None when it lists none."""
    if not isinstance(table, dict):
        raise CatalogueError("a price table is a JSON object of model name -> entry")
    return [
        {"model": name, "capabilities": _capabilities(name, entry), "prices": _prices(name, entry)}
        for name, entry in sorted(table.items())
        if is_openai_text_model(name, entry)
    ]


def trimmed(table: dict[str, Any]) -> dict[str, Any]:
    """The OpenAI text models of LiteLLM's table with only the keys read here (what sql/catalogue/ ships)."""
    return {
        name: {key: value for key, value in sorted(entry.items()) if key in KEPT_KEYS or RATE_KEY.match(key)}
        for name, entry in sorted(table.items())
        if is_openai_text_model(name, entry)
    }


def parse(text: str | bytes, source: str) -> list[dict[str, Any]]:
    """A price table's text as catalogue rows; `source` names it in errors."""
    try:
        table = json.loads(text)
    except ValueError as error:
        raise CatalogueError(f"{source} is not JSON: {error}") from None
    try:
        return catalogue_entries(table)
    except CatalogueError as error:
        raise CatalogueError(f"{source}: {error}") from None


def _allowed_url(url: str) -> bool:
    parts = urlsplit(url)
    # Plain http only to this machine (tests and a local mirror): prices decide what users are charged.
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname == "127.0.0.1")


def _download(url: str, timeout: float, limit: int) -> bytes:
    # urllib.request costs ~35 ms to import: only the daily upkeep and the command line pay for it.
    import http.client
    import urllib.request

    class CheckedRedirects(urllib.request.HTTPRedirectHandler):
        """Follows a redirect only to a URL that could have been given (no https -> http downgrade)."""

        def redirect_request(
            self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
        ) -> urllib.request.Request | None:
            if not _allowed_url(newurl):
                raise CatalogueError(f"{req.full_url} redirects to {newurl}, which is not https")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    deadline = time.monotonic() + timeout
    opener = urllib.request.build_opener(CheckedRedirects)
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (checked by caller)
    body = bytearray()
    try:
        with opener.open(request, timeout=timeout) as response:
            while chunk := response.read(64 * 1024):
                body += chunk
                if len(body) > limit:
                    raise CatalogueError(f"{url} is larger than {limit} bytes")
                if time.monotonic() > deadline:
                    raise CatalogueError(f"{url} took longer than {timeout:g} s to download")
    except CatalogueError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as error:
        raise CatalogueError(f"cannot fetch {url}: {getattr(error, 'reason', None) or error}") from None
    return bytes(body)


def read_source(source: str, timeout: float = DOWNLOAD_TIMEOUT_S, limit: int = MAX_DOWNLOAD_BYTES) -> bytes:
    """A price table from a file path or a URL (https; http only to 127.0.0.1): at most `limit` bytes, and a
    download of at most `timeout` seconds in all."""
    if "://" not in source:
        path = Path(source)
        try:
            if path.stat().st_size > limit:
                raise CatalogueError(f"{source} is larger than {limit} bytes")
            return path.read_bytes()
        except OSError as error:
            raise CatalogueError(f"cannot read {source}: {error.strerror or error}") from None
    if not _allowed_url(source):
        raise CatalogueError(f"{source}: a price table URL must be https (http only to 127.0.0.1)")
    return _download(source, timeout, limit)


def load(source: str) -> list[dict[str, Any]]:
    """The catalogue rows of a price table at a path or URL."""
    return parse(read_source(source), source)


@dataclass(frozen=True)
class ImportReport:
    """What import_model_catalogue did: the prices it added and changed (each a dict with model,
    input_per_mtok, output_per_mtok, effective_from; changed ones also old_input_per_mtok and
    old_output_per_mtok, all prices Decimal), and how many models' prices it found unchanged."""

    models: int
    added: list[dict[str, Any]]
    changed: list[dict[str, Any]]
    unchanged: int

    @classmethod
    def from_json(cls, text: str) -> ImportReport:
        """The report as the SQL function returns it, cast to text (so its prices read exactly)."""
        report = json.loads(text, parse_float=Decimal)
        return cls(report["models"], report["added"], report["changed"], report["unchanged"])

    @property
    def counts(self) -> dict[str, int]:
        """The counts the daily upkeep logs."""
        return {
            "prices_added": len(self.added),
            "prices_changed": len(self.changed),
            "prices_unchanged": self.unchanged,
        }

    def lines(self) -> list[str]:
        """One line per price added or changed, then the counts."""
        lines = [
            f"added {row['model']}: input {usd(row['input_per_mtok'])}, output {usd(row['output_per_mtok'])} "
            f"from {row['effective_from'][:10]}"
            for row in self.added
        ]
        lines += [
            f"changed {row['model']}: input {usd(row['old_input_per_mtok'])} -> {usd(row['input_per_mtok'])}, "
            f"output {usd(row['old_output_per_mtok'])} -> {usd(row['output_per_mtok'])} "
            f"(and any other rate) from {row['effective_from'][:19]}"
            for row in self.changed
        ]
        lines.append(
            f"{len(self.added)} added, {len(self.changed)} changed, {self.unchanged} unchanged "
            f"({self.models} models; prices in USD per 1M tokens)"
        )
        return lines


def usd(price: Decimal | None) -> str:
    """A price as it is, without the padding zeros of its column: 2.50, 0.075, 0.000125; '-' for none."""
    if price is None:
        return "-"
    text = f"{price:f}"
    if "." in text:
        whole, _, fraction = text.partition(".")
        text = f"{whole}.{fraction.rstrip('0').ljust(2, '0')}"
    return text

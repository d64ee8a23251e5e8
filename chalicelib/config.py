"""Settings read from the environment, once per container."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

DEBUG_NAMESPACE = "chitty:mcp:chatgpt"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
LOCAL_ORIGINS = tuple(f"{scheme}://{host}" for scheme in ("http", "https") for host in LOCAL_HOSTS)


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def _csv(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _debug_enabled(raw: str) -> bool:
    # DEBUG follows the `debug` package convention: a comma list of namespaces, `*` wildcards.
    for pattern in (part.strip() for part in raw.split(",")):
        if pattern == "*" or pattern == DEBUG_NAMESPACE:
            return True
        if pattern.endswith("*") and DEBUG_NAMESPACE.startswith(pattern[:-1]):
            return True
    return False


def _default_limits() -> dict[str, float]:
    limits = {}
    for kind in ("monthly_budget_usd", "requests_per_minute", "tokens_per_minute"):
        raw = os.environ.get(f"CHITTY_DEFAULT_{kind.upper()}")
        if raw:
            try:
                limits[kind] = float(raw)
            except ValueError:
                raise ConfigError(f"CHITTY_DEFAULT_{kind.upper()} must be a number, not {raw!r}") from None
    return limits


@dataclass(frozen=True)
class Settings:
    """What the server needs to know about where it runs."""

    stage: str
    database_url: str | None
    db_timeout: float
    allowed_hosts: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    debug: bool
    log_level: str
    openai_api_key: str | None
    openai_base_url: str | None
    encryption_key: str | None
    default_model: str
    history_messages: int
    upstream_timeout: float
    upstream_attempt_timeout: float
    upstream_attempts: int
    limited_max_tokens: int
    default_limits: dict[str, float]

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "CHITTY_DATABASE_URL is not set. Set it to a postgres:// URL, "
                "or use `make run`, which starts a local database."
            )
        return self.database_url


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this container, read from the environment on first use."""
    debug = _debug_enabled(os.environ.get("DEBUG", ""))
    return Settings(
        stage=os.environ.get("CHITTY_STAGE", "dev"),
        database_url=os.environ.get("CHITTY_DATABASE_URL") or None,
        db_timeout=float(os.environ.get("CHITTY_DB_TIMEOUT", "5")),
        allowed_hosts=_csv("CHITTY_ALLOWED_HOSTS", LOCAL_HOSTS),
        allowed_origins=_csv("CHITTY_ALLOWED_ORIGINS", LOCAL_ORIGINS),
        debug=debug,
        log_level="DEBUG" if debug else os.environ.get("LOG_LEVEL", "INFO").upper(),
        openai_api_key=os.environ.get("OPENAI_API_KEY") or None,
        openai_base_url=os.environ.get("OPENAI_BASE_URL") or None,
        encryption_key=os.environ.get("CHITTY_ENCRYPTION_KEY") or None,
        default_model=os.environ.get("CHITTY_DEFAULT_MODEL", "gpt-4o-mini"),
        history_messages=int(os.environ.get("CHITTY_HISTORY_MESSAGES", "50")),
        # Below API Gateway's 29 s, with room for the two database round trips.
        upstream_timeout=float(os.environ.get("CHITTY_UPSTREAM_TIMEOUT", "24")),
        upstream_attempts=int(os.environ.get("CHITTY_UPSTREAM_ATTEMPTS", "3")),
        # Calls under a budget or token limit without max_tokens are capped, so their worst case is bounded.
        limited_max_tokens=int(os.environ.get("CHITTY_LIMITED_MAX_TOKENS", "4096")),
        default_limits=_default_limits(),
        # One attempt may use the whole budget unless told otherwise: a slow answer is still an answer.
        upstream_attempt_timeout=float(
            os.environ.get("CHITTY_UPSTREAM_ATTEMPT_TIMEOUT") or os.environ.get("CHITTY_UPSTREAM_TIMEOUT", "24")
        ),
    )

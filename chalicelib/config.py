"""Settings read from the environment, once per container, and secrets from AWS Secrets Manager.

The secret settings (SECRET_SETTINGS) come from their environment variables when those are
set, else from the JSON object in the Secrets Manager secret named by CHITTY_SECRET_ID. The
secret is read on first use, not at import, once per container.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field

DEBUG_NAMESPACE = "chitty:mcp:chatgpt"
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
LOCAL_ORIGINS = tuple(f"{scheme}://{host}" for scheme in ("http", "https") for host in LOCAL_HOSTS)
SECRET_SETTINGS = (
    "OPENAI_API_KEY",
    "CHITTY_DATABASE_URL",
    "CHITTY_MIGRATION_DATABASE_URL",
    "CHITTY_ENCRYPTION_KEY",
    "CHITTY_SAFETY_SECRET",
    "CHITTY_OIDC_CLIENT_SECRET",
)
# OpenAI's own API: where the Responses API and its retirement schedule apply.
OPENAI_HOSTS = ("api.openai.com",)


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message says which and how to fix it."""


def _csv(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _flag(name: str, default: bool) -> bool:
    """An on/off setting: 1/true/yes/on or 0/false/no/off, any case; unset or anything else is `default`."""
    raw = os.environ.get(name, "").strip().lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    return default


def _debug_enabled(raw: str) -> bool:
    # DEBUG follows the `debug` package convention: a comma list of namespaces, `*` wildcards.
    for pattern in (part.strip() for part in raw.split(",")):
        if pattern == "*" or pattern == DEBUG_NAMESPACE:
            return True
        if pattern.endswith("*") and DEBUG_NAMESPACE.startswith(pattern[:-1]):
            return True
    return False


# Storage quotas of users without their own, chosen so that no user stores more than 100 MB
# (README: Limits has the arithmetic). Spend and rate limits have no default.
DEFAULT_QUOTAS: dict[str, int] = {
    "sessions": 50,
    "messages_per_session": 500,
    "bytes_per_session": 512 * 1024,
    "metadata_bytes_per_session": 16 * 1024,
    "session_templates": 10,
    "model_configs": 10,
    "api_keys": 10,
    "concurrent_jobs": 4,
}
LIMIT_KINDS = ("monthly_budget_usd", "requests_per_minute", "tokens_per_minute", *DEFAULT_QUOTAS)
# One session's metadata never passes this, whatever the quotas say: it must fit in any answer.
MAX_METADATA_BYTES = 256 * 1024


def _default_limits() -> dict[str, float]:
    """CHITTY_DEFAULT_<KIND> for every limit kind: a finite number of at least 0, or `none` for no default."""
    limits: dict[str, float] = dict(DEFAULT_QUOTAS)
    for kind in LIMIT_KINDS:
        name = f"CHITTY_DEFAULT_{kind.upper()}"
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        if raw.lower() == "none":
            limits.pop(kind, None)
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name} must be a number (or none for no limit), not {raw!r}") from None
        # float() reads "nan" and "inf": a NaN limit would mean no limit at all, and Infinity says it badly.
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"{name} must be a finite number of at least 0 (or none for no limit), not {raw!r}")
        if kind == "metadata_bytes_per_session" and value > MAX_METADATA_BYTES:
            raise ConfigError(f"{name} must be at most {MAX_METADATA_BYTES}, not {raw!r}")
        limits[kind] = int(value) if value.is_integer() else value
    return limits


@functools.lru_cache(maxsize=4)
def stored_secrets(secret_id: str) -> dict[str, str]:
    """The settings held in a Secrets Manager secret (a JSON object of SECRET_SETTINGS), read once."""
    # The Parameters utility imports boto3 (~0.2 s): only containers that name a secret pay for it.
    from aws_lambda_powertools.utilities import parameters

    where = f"the secret {secret_id!r} named by CHITTY_SECRET_ID"
    try:
        value = parameters.get_secret(secret_id, transform="json")
    except parameters.TransformParameterError:
        raise ConfigError(f'{where} is not JSON; it must hold an object like {{"OPENAI_API_KEY": "..."}}') from None
    except parameters.GetParameterError as error:
        raise ConfigError(f"{where} cannot be read: {error}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must hold a JSON object, not {type(value).__name__}")
    unknown = sorted(set(value) - set(SECRET_SETTINGS))
    if unknown:
        raise ConfigError(f"{where} has unknown keys {unknown}; it may hold {', '.join(SECRET_SETTINGS)}")
    return {name: str(value[name]) for name in SECRET_SETTINGS if value.get(name)}


@dataclass(frozen=True)
class OidcProvider:
    """The external OpenID Connect provider users may sign in with (CHITTY_OIDC_*)."""

    issuer: str
    client_id: str
    # The claim whose value is the user's id here (an account is linked to its user at its first sign-in).
    claim: str
    # Whether an account whose claim names no user becomes a new user (else it is refused).
    sign_up: bool
    # The provider's name on the sign-in button.
    name: str


def _oidc_provider() -> OidcProvider | None:
    """CHITTY_OIDC_ISSUER and CHITTY_OIDC_CLIENT_ID (its secret is the secret setting CHITTY_OIDC_CLIENT_SECRET)."""
    from urllib.parse import urlsplit

    issuer = (os.environ.get("CHITTY_OIDC_ISSUER") or "").rstrip("/")
    if not issuer:
        return None
    client_id = os.environ.get("CHITTY_OIDC_CLIENT_ID") or ""
    if not client_id:
        raise ConfigError("CHITTY_OIDC_ISSUER is set but CHITTY_OIDC_CLIENT_ID is not; set both (and the secret).")
    parts = urlsplit(issuer)
    if parts.scheme != "https" and parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        raise ConfigError(f"CHITTY_OIDC_ISSUER must be an https URL, not {issuer!r}.")
    return OidcProvider(
        issuer=issuer,
        client_id=client_id,
        claim=os.environ.get("CHITTY_OIDC_CLAIM") or "email",
        sign_up=_flag("CHITTY_OIDC_SIGN_UP", False),
        name=os.environ.get("CHITTY_OIDC_NAME") or parts.hostname or issuer,
    )


@dataclass(frozen=True)
class Settings:
    """What the server needs to know about where it runs."""

    stage: str
    secret_id: str | None
    environment_secrets: dict[str, str] = field(repr=False)
    db_timeout: float
    db_prepared_statements: bool
    allowed_hosts: tuple[str, ...]
    allowed_origins: tuple[str, ...]
    debug: bool
    log_level: str
    openai_base_url: str | None
    kms_key_id: str | None
    tracing: bool
    metrics: bool
    default_model: str
    pricing_url: str | None
    history_messages: int
    upstream_timeout: float
    upstream_attempt_timeout: float
    upstream_attempts: int
    limited_max_tokens: int
    limited_max_tokens_reasoning: int
    default_limits: dict[str, float]
    upstream_api: str
    job_runner: str
    public_url: str | None
    # Tests only: fetch Client ID Metadata Documents from loopback hosts, trusting this CA bundle as well.
    oauth_cimd_allow_loopback: bool
    oauth_cimd_ca_file: str | None
    oidc: OidcProvider | None
    job_function: str
    job_timeout: float
    job_retention_days: float
    job_stale_seconds: float

    def secret(self, name: str) -> str | None:
        """A secret setting: its environment variable when set, else the secret CHITTY_SECRET_ID names."""
        value = self.environment_secrets.get(name)
        if value or not self.secret_id:
            return value
        return stored_secrets(self.secret_id).get(name)

    @property
    def database_url(self) -> str | None:
        """CHITTY_DATABASE_URL (a secret setting)."""
        return self.secret("CHITTY_DATABASE_URL")

    @property
    def openai_api_key(self) -> str | None:
        """OPENAI_API_KEY, the server's own key (a secret setting)."""
        return self.secret("OPENAI_API_KEY")

    @property
    def encryption_key(self) -> str | None:
        """CHITTY_ENCRYPTION_KEY, which seals stored keys locally (a secret setting)."""
        return self.secret("CHITTY_ENCRYPTION_KEY")

    @property
    def resource(self) -> str | None:
        """The MCP endpoint's public URL: what OAuth tokens are bound to (RFC 8707). None without CHITTY_PUBLIC_URL."""
        return None if self.public_url is None else f"{self.public_url}/mcp"

    @property
    def official_openai(self) -> bool:
        """Whether the upstream is OpenAI's own API (OPENAI_BASE_URL unset or on api.openai.com)."""
        from urllib.parse import urlsplit

        return self.openai_base_url is None or urlsplit(self.openai_base_url).hostname in OPENAI_HOSTS

    @property
    def migration_database_url(self) -> str | None:
        """CHITTY_MIGRATION_DATABASE_URL, else CHITTY_DATABASE_URL (secret settings).

        Migrations hold a session-level advisory lock across transactions, which a pooler in
        transaction mode (Neon's -pooler host, PgBouncer) cannot keep: they need a direct URL.
        """
        return self.secret("CHITTY_MIGRATION_DATABASE_URL") or self.database_url

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "CHITTY_DATABASE_URL is not set. Set it to a postgres:// URL, "
                "or use `make run`, which starts a local database."
            )
        return self.database_url


def _job_runner(choice: str) -> str:
    """CHITTY_JOB_RUNNER: lambda (an asynchronous invocation of the jobs function) or local (a process of the
    local server); unset: lambda on Lambda, local elsewhere."""
    choice = choice.strip().lower() or ("lambda" if os.environ.get("AWS_LAMBDA_FUNCTION_NAME") else "local")
    if choice not in ("lambda", "local"):
        raise ConfigError(f"CHITTY_JOB_RUNNER is {choice!r}; use lambda or local.")
    return choice


def _upstream_api(choice: str, base_url: str | None) -> str:
    """CHITTY_UPSTREAM_API: responses, chat, or auto (responses on OpenAI's own API, chat elsewhere)."""
    from urllib.parse import urlsplit

    choice = choice.strip().lower() or "auto"
    if choice not in ("auto", "responses", "chat"):
        raise ConfigError(f"CHITTY_UPSTREAM_API is {choice!r}; use auto, responses or chat.")
    if choice != "auto":
        return choice
    return "responses" if not base_url or urlsplit(base_url).hostname in OPENAI_HOSTS else "chat"


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings of this container, read from the environment on first use."""
    debug = _debug_enabled(os.environ.get("DEBUG", ""))
    return Settings(
        stage=os.environ.get("CHITTY_STAGE", "dev"),
        secret_id=os.environ.get("CHITTY_SECRET_ID") or None,
        environment_secrets={name: os.environ[name] for name in SECRET_SETTINGS if os.environ.get(name)},
        db_timeout=float(os.environ.get("CHITTY_DB_TIMEOUT", "5")),
        db_prepared_statements=_flag("CHITTY_DB_PREPARED_STATEMENTS", True),
        allowed_hosts=_csv("CHITTY_ALLOWED_HOSTS", LOCAL_HOSTS),
        allowed_origins=_csv("CHITTY_ALLOWED_ORIGINS", LOCAL_ORIGINS),
        debug=debug,
        log_level="DEBUG" if debug else os.environ.get("LOG_LEVEL", "INFO").upper(),
        openai_base_url=os.environ.get("OPENAI_BASE_URL") or None,
        kms_key_id=os.environ.get("CHITTY_KMS_KEY_ID") or None,
        tracing=_flag("CHITTY_TRACING", False),
        # Powertools' own switch, as the dev stage sets it: no EMF when nothing would collect it.
        metrics=not _flag("POWERTOOLS_METRICS_DISABLED", False),
        default_model=os.environ.get("CHITTY_DEFAULT_MODEL", "gpt-5.4-mini"),
        # LiteLLM's price table (or a copy of it): the daily upkeep imports OpenAI's models and prices from it.
        pricing_url=os.environ.get("CHITTY_PRICING_URL") or None,
        history_messages=int(os.environ.get("CHITTY_HISTORY_MESSAGES", "50")),
        # Below API Gateway's 29 s, with room for the two database round trips.
        upstream_timeout=float(os.environ.get("CHITTY_UPSTREAM_TIMEOUT", "24")),
        upstream_attempts=int(os.environ.get("CHITTY_UPSTREAM_ATTEMPTS", "3")),
        # Calls under a budget or token limit without max_tokens are capped, so their worst case is bounded.
        limited_max_tokens=int(os.environ.get("CHITTY_LIMITED_MAX_TOKENS", "4096")),
        # A reasoning model spends output tokens thinking before it writes: its cap leaves room for both.
        limited_max_tokens_reasoning=int(os.environ.get("CHITTY_LIMITED_MAX_TOKENS_REASONING", "32768")),
        default_limits=_default_limits(),
        public_url=(os.environ.get("CHITTY_PUBLIC_URL") or "").rstrip("/") or None,
        oauth_cimd_allow_loopback=_flag("CHITTY_OAUTH_CIMD_ALLOW_LOOPBACK", False),
        oauth_cimd_ca_file=os.environ.get("CHITTY_OAUTH_CIMD_CA_FILE") or None,
        oidc=_oidc_provider(),
        job_runner=_job_runner(os.environ.get("CHITTY_JOB_RUNNER", "")),
        job_function=os.environ.get("CHITTY_JOB_FUNCTION")
        or f"chitty-chatgpt-mcp-{os.environ.get('CHITTY_STAGE', 'dev')}-jobs",
        # Under the jobs function's 15 minutes, with room to record the turn.
        job_timeout=float(os.environ.get("CHITTY_JOB_TIMEOUT", "840")),
        job_retention_days=float(os.environ.get("CHITTY_JOB_RETENTION", "7")),
        # A worker beats every second; this long without a beat, it is taken for dead.
        job_stale_seconds=float(os.environ.get("CHITTY_JOB_STALE_SECONDS", "30")),
        upstream_api=_upstream_api(os.environ.get("CHITTY_UPSTREAM_API", "auto"), os.environ.get("OPENAI_BASE_URL")),
        # One attempt may use the whole budget unless told otherwise: a slow answer is still an answer.
        upstream_attempt_timeout=float(
            os.environ.get("CHITTY_UPSTREAM_ATTEMPT_TIMEOUT") or os.environ.get("CHITTY_UPSTREAM_TIMEOUT", "24")
        ),
    )

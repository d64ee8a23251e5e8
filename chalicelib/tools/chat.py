"""chatgpt_complete and chatgpt_stream: one completion, in a session or not, recorded exactly.

A completion takes two database round trips: prepare_completion (authenticate, authorise,
load session, history, model config and sealed key, build the message list to send and
reserve its worst case) and record_completion (messages, usage; cost and session totals
follow in SQL). The upstream call sits between them, holding no transaction open.

Once the upstream may have billed a call, its usage reaches the books exactly once, whatever
fails after: record_completion is idempotent per turn (so it may be sent again when its first
answer never came), a session deleted meanwhile takes the usage against its user, and a turn
that cannot be stored as messages is recorded as its usage alone. The answer says which.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from pg8000.exceptions import DatabaseError

from chalicelib import auth, telemetry
from chalicelib.config import get_settings
from chalicelib.crypto import EncryptionKeyError, KeyRing, KeyServiceError, SealBroken, Sealed
from chalicelib.db import Database, DatabaseUnavailable, OutcomeUnknown, sqlstate
from chalicelib.logs import logger
from chalicelib.mcp import Forbidden, NotFound, Registry, Tool, ToolCall, ToolError, ToolResult
from chalicelib.mcp.errors import Unauthenticated
from chalicelib.tools.access import USER_ID_SCHEMA, UUID_PATTERN
from chalicelib.tools.records import jsonable

if TYPE_CHECKING:
    from chalicelib.upstream import UpstreamError

MODEL_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$"}
MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
        "content": {"type": "string", "maxLength": 500_000},
    },
    "required": ["role", "content"],
    "additionalProperties": False,
}
INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "messages": {"type": "array", "items": MESSAGE, "minItems": 1, "maxItems": 500},
        "model": {**MODEL_NAME, "description": "OpenAI model, e.g. gpt-4o-mini (default: config, then server)."},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 200_000},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "session_id": {
            "type": "string",
            "pattern": UUID_PATTERN,
            "description": "Continue this session: its system prompt and history are sent, and the turn is stored.",
        },
        "model_config": {
            "type": "string",
            "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
            "description": "The name of one of your model configs.",
        },
        "user_id": USER_ID_SCHEMA,
    },
    "required": ["messages"],
    "additionalProperties": False,
}
TOKENS = {"type": "integer", "minimum": 0}
OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "content": {"type": "string"},
        "model": {"type": "string"},
        "finish_reason": {"type": ["string", "null"]},
        "usage": {
            "type": "object",
            "properties": {
                "prompt_tokens": TOKENS,
                "completion_tokens": TOKENS,
                "cached_tokens": TOKENS,
                "reasoning_tokens": TOKENS,
                "total_tokens": TOKENS,
                "estimated": {"type": "boolean"},
            },
            "required": ["prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens"],
        },
        "cost_usd": {"type": ["number", "null"], "description": "As the database computed it; null if unpriced."},
        "session_id": {"type": ["string", "null"]},
        "message_ids": {"type": "array", "items": {"type": "integer"}},
        "latency_ms": {"type": "integer"},
        "turn_id": {"type": "string", "description": "This turn's id in the books (chatgpt_turn_get)."},
        "recorded": {
            "type": "string",
            "enum": ["turn", "usage_only"],
            "description": "turn: the messages and the usage were stored; usage_only: only the usage was (see notice).",
        },
        "notice": {"type": "string", "description": "Something about this turn the user should know."},
    },
    "required": ["content", "model", "usage", "cost_usd", "session_id", "message_ids", "latency_ms"],
}
TURN_INPUT_SCHEMA = {
    "type": "object",
    "properties": {"turn_id": {"type": "string", "pattern": UUID_PATTERN}},
    "required": ["turn_id"],
    "additionalProperties": False,
}
TURN_OUTPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "turn_id": {"type": "string"},
        "session_id": {"type": ["string", "null"]},
        "message_ids": {"type": "array", "items": {"type": "integer"}},
        "usage_only": {"type": "boolean"},
        "reply": {"type": ["object", "null"]},
    },
    "required": ["turn_id", "session_id", "message_ids", "usage_only", "reply"],
}
# Attempts at recording a turn. Safe to repeat: record_completion is idempotent per turn.
RECORD_ATTEMPTS = 3
# Failures that leave nothing written and may pass: a lock or statement timeout, a serialisation failure, a deadlock.
_RECORD_AGAIN = frozenset({"55P03", "57014", "40001", "40P01"})
# What PostgreSQL cannot hold in text: NUL, and halves of surrogate pairs (they cannot be UTF-8).
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_PREPARE_ERRORS: dict[str, Callable[[dict[str, Any], dict[str, Any]], ToolError]] = {
    "forbidden": lambda args, _: Forbidden(
        "Only admins may act for another user; leave user_id out to act for yourself."
    ),
    "session_not_found": lambda args, _: NotFound(f"No session {args.get('session_id')}."),
    "session_archived": lambda args, _: ToolError(
        f"Session {args.get('session_id')} is archived; reactivate it with chitty_chat_session_update "
        '{"status": "active"} to continue it.'
    ),
    "user_not_found": lambda args, _: NotFound(f"No user {args.get('user_id')!r}."),
    "model_config_not_found": lambda args, _: NotFound(
        f"No model config {args.get('model_config')!r}; see chitty_model_config_list."
    ),
    "no_api_key": lambda args, _: ToolError(
        'No OpenAI API key: store yours with chitty_api_key_set {"api_key": "sk-..."}, '
        "or ask the operator to set OPENAI_API_KEY on the server."
    ),
    "unpriced_model": lambda args, prepared: ToolError(
        f"Model {prepared.get('model')!r} has no price, and a budget applies to you: spend on it cannot be "
        "bounded. Ask an admin to set its price (pricing set), or choose a priced model (chitty_models_list)."
    ),
}
_LIMIT_NAMES = {
    "monthly_budget_usd": "Monthly budget",
    "requests_per_minute": "Requests-per-minute limit",
    "tokens_per_minute": "Tokens-per-minute limit",
}


def limit_error(prepared: dict[str, Any]) -> ToolError:
    """The refusal of a call over a limit: which limit, the amounts, and when it resets."""
    kind = prepared["limit"]
    value, used, reserved, requested = (
        prepared["limit_value"],
        prepared["used"],
        prepared["reserved"],
        prepared["requested"],
    )
    resets_at = prepared["resets_at"]
    if kind == "monthly_budget_usd":
        detail = (
            f"${_plain(value)} a month: ${_plain(used)} spent so far this month, ${_plain(reserved)} held by "
            f"calls in progress, and this call could cost up to ${_plain(requested)}"
        )
    elif kind == "requests_per_minute":
        detail = f"{value:g} requests a minute: {used} in the last minute and {reserved} in progress"
    else:
        detail = (
            f"{value:g} tokens a minute: {used} used in the last minute, {reserved} held by calls in progress, "
            f"and this call could use up to {requested}"
        )
    return ToolError(
        f"{_LIMIT_NAMES[kind]} reached for {prepared['user_id']} ({detail}). It resets at {resets_at}.",
        data={
            "limit": kind,
            "limit_value": value,
            "used": used,
            "reserved": reserved,
            "requested": requested,
            "resets_at": resets_at,
        },
    )


@functools.lru_cache(maxsize=1)
def sealer() -> KeyRing:
    """The container's sealer: KMS envelopes when CHITTY_KMS_KEY_ID is set, else CHITTY_ENCRYPTION_KEY."""
    settings = get_settings()
    return KeyRing(settings.encryption_key, settings.kms_key_id)


def _api_key(prepared: dict[str, Any]) -> tuple[str, str | None]:
    """The key to call with: the user's own if they stored one, else the server's."""
    stored = prepared.get("api_key")
    if stored:
        sealed = Sealed(
            ciphertext=base64.b64decode(stored["ciphertext"]),
            nonce=base64.b64decode(stored["nonce"]),
            fingerprint=stored["fingerprint"],
            wrapped_data_key=base64.b64decode(stored["wrapped_data_key"]) if stored.get("wrapped_data_key") else None,
        )
        try:
            return sealer().open(sealed, prepared["user_id"], str(stored["id"])), str(stored["id"])
        except (SealBroken, EncryptionKeyError):
            raise ToolError(
                f"Your stored OpenAI key (...{stored['last_four']}) cannot be decrypted by this server; "
                "set it again with chitty_api_key_set."
            ) from None
        except KeyServiceError as error:
            raise ToolError(str(error)) from None
    server_key = get_settings().openai_api_key
    if server_key is None:
        raise _PREPARE_ERRORS["no_api_key"]({}, prepared)
    return server_key, None


def register(registry: Registry, db: Database) -> None:
    """Add chatgpt_complete and chatgpt_stream to the registry."""
    from chalicelib.upstream import CompletionRequest, Upstream, UpstreamError

    settings = get_settings()
    upstream = Upstream(
        base_url=settings.openai_base_url,
        attempt_timeout=settings.upstream_attempt_timeout,
        deadline=settings.upstream_timeout,
        max_attempts=settings.upstream_attempts,
    )

    limits = json.dumps(
        {
            "default_model": settings.default_model,
            "limited_max_tokens": settings.limited_max_tokens,
            "reservation_seconds": int(settings.upstream_timeout) + 60,
            "server_key": settings.openai_api_key is not None,
            # Lock waits end on the server before the client's own timeout would take them for a lost connection.
            "lock_timeout_ms": max(100, int(settings.db_timeout * 800)),
            **settings.default_limits,
        }
    )

    def run(call: ToolCall, stream: bool) -> ToolResult:
        credential = call.principal
        assert isinstance(credential, auth.Credential)
        args = call.arguments
        turn_id = str(uuid.uuid4())
        row = db.one(
            "prepare_completion",
            token_hash=credential.token_hash,
            for_user=args.get("user_id"),
            session_id=args.get("session_id"),
            model_config=args.get("model_config"),
            history_limit=settings.history_messages,
            turn_id=turn_id,
            model=args.get("model"),
            max_tokens=args.get("max_tokens"),
            messages=json.dumps(args["messages"]),
            settings=limits,
        )
        prepared: dict[str, Any] = row["prepared"] if row else {"error": "unauthenticated"}
        error = prepared.get("error")
        if error == "unauthenticated":
            raise Unauthenticated()
        call.log_fields["user"] = prepared["caller"]
        if error == "limit":
            raise limit_error(prepared)
        if error == "quota":
            raise ToolError(prepared["message"], data={k: prepared[k] for k in ("quota", "limit", "used", "requested")})
        if error:
            raise _PREPARE_ERRORS[error](args, prepared)
        session = prepared.get("session")
        config = prepared.get("config") or {}
        # The message list prepare_completion built and reserved for, sent as it is.
        request = CompletionRequest(
            model=prepared["model"],
            messages=prepared["messages"],
            max_tokens=prepared.get("max_tokens"),
            temperature=args.get("temperature", _number(config.get("temperature"))),
            top_p=args.get("top_p", _number(config.get("top_p"))),
        )
        streamed = [0]

        def on_delta(delta: str) -> None:
            streamed[0] += len(delta)
            call.report_progress(streamed[0], None, delta)

        # From here on the turn is recorded whatever happens: that also settles its reservation.
        failure: UpstreamError | ToolError | None = None
        api_key_id: str | None = None
        try:
            api_key, api_key_id = _api_key(prepared)
            reply = upstream.complete(api_key, request, stream=stream, on_delta=on_delta)
            outcome: dict[str, Any] = {
                "status": "ok",
                "content": reply.content,
                "model": reply.model,
                "finish_reason": reply.finish_reason,
                "prompt_tokens": reply.usage.prompt_tokens,
                "completion_tokens": reply.usage.completion_tokens,
                "cached_tokens": reply.usage.cached_tokens,
                "reasoning_tokens": reply.usage.reasoning_tokens,
                "usage_estimated": reply.usage.estimated,
                "latency_ms": reply.latency_ms,
                "upstream_request_id": reply.request_id,
            }
        except UpstreamError as error:
            failure = error
            outcome = {
                "status": "error",
                "content": error.partial_content,
                "model": request.model,
                "error": error.message,
                "latency_ms": error.latency_ms,
            }
            if error.usage is not None:
                # The upstream began answering: what went out and what came back is billed.
                outcome.update(
                    prompt_tokens=error.usage.prompt_tokens,
                    completion_tokens=error.usage.completion_tokens,
                    cached_tokens=error.usage.cached_tokens,
                    reasoning_tokens=error.usage.reasoning_tokens,
                    usage_estimated=error.usage.estimated,
                )
        except ToolError as error:
            failure = error
            outcome = {"status": "error", "model": request.model, "error": error.message, "latency_ms": 0}
        sanitized = _storable(outcome)
        recorded, how = _record(
            db,
            user_id=prepared["user_id"],
            session_id=session["id"] if session else None,
            turn_id=turn_id,
            # Only a session stores what was said; a one-off call sends just its usage.
            messages=json.dumps(args["messages"]) if session else "[]",
            reply=json.dumps(outcome if session else {**outcome, "content": None}),
            api_key_id=api_key_id,
            settings=limits,
        )
        if recorded is None:
            _log_unrecorded(turn_id, prepared["user_id"], outcome, how)
            raise _unrecorded_error(turn_id, how, outcome.get("content") if failure is None else None)
        if isinstance(failure, ToolError):
            raise failure
        call.log_fields["metrics"] = [
            telemetry.completion(call.name, outcome["model"], outcome, recorded["reply"].get("cost_usd"))
        ]
        notices = _notices(recorded, how, sanitized, session is not None)
        if failure is not None:
            data: dict[str, Any] = {"upstream_status": failure.status, "turn_id": turn_id}
            if failure.retry_after is not None:
                data["retry_after_s"] = round(failure.retry_after, 3)
            if outcome.get("prompt_tokens") or outcome.get("completion_tokens"):
                data["billed_tokens"] = outcome["prompt_tokens"] + outcome["completion_tokens"]
                data["cost_usd"] = jsonable(recorded["reply"]["cost_usd"])
            raise ToolError(" ".join([failure.message, *notices]), data=data)
        usage = {
            "prompt_tokens": outcome["prompt_tokens"],
            "completion_tokens": outcome["completion_tokens"],
            "cached_tokens": outcome["cached_tokens"],
            "reasoning_tokens": outcome["reasoning_tokens"],
            "total_tokens": outcome["prompt_tokens"] + outcome["completion_tokens"],
            "estimated": outcome["usage_estimated"],
        }
        structured = {
            "content": outcome["content"],
            "model": outcome["model"],
            "finish_reason": outcome["finish_reason"],
            "usage": usage,
            "cost_usd": jsonable(recorded["reply"]["cost_usd"]),
            "session_id": session["id"] if session and not recorded.get("usage_only") else None,
            "message_ids": recorded["message_ids"],
            "latency_ms": outcome["latency_ms"],
            "turn_id": turn_id,
            "recorded": "usage_only" if recorded.get("usage_only") else "turn",
        }
        if notices:
            structured["notice"] = " ".join(notices)
        return ToolResult(structured=structured, text=outcome["content"])

    def get_turn(call: ToolCall) -> dict[str, Any]:
        principal = call.principal
        assert isinstance(principal, auth.Principal)
        row = db.one("completion_turn", turn_id=call.arguments["turn_id"])
        turn = row["turn"] if row else None
        if turn is None or (turn["user_id"] != principal.user_id and not principal.is_admin):
            # Another user's turn answers exactly like one that was never recorded.
            raise NotFound(f"No turn {call.arguments['turn_id']} is recorded.")
        return {
            "turn_id": turn["turn_id"],
            "session_id": turn["session_id"],
            "message_ids": turn["message_ids"],
            "usage_only": turn["usage_only"],
            "reply": turn["reply"],
        }

    description = (
        "Ask ChatGPT. Without session_id: a one-off completion of the given messages. With session_id: "
        "the session's system prompt and recent history are sent first, and the new messages and the "
        "reply are stored in the session. Tokens and cost are recorded either way."
    )
    registry.add_tool(
        Tool(
            name="chatgpt_complete",
            title="ChatGPT completion",
            description=description,
            input_schema=INPUT_SCHEMA,
            output_schema=OUTPUT_SCHEMA,
            handler=lambda call: run(call, stream=False),
            open_world=True,
            verifies_credentials=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chatgpt_stream",
            title="ChatGPT streamed completion",
            description=description
            + " Streams from OpenAI; clients that send a progressToken get each delta as a progress notification.",
            input_schema=INPUT_SCHEMA,
            output_schema=OUTPUT_SCHEMA,
            handler=lambda call: run(call, stream=True),
            open_world=True,
            verifies_credentials=True,
        )
    )
    registry.add_tool(
        Tool(
            name="chatgpt_turn_get",
            title="A completion turn in the books",
            description=(
                "A recorded completion turn: its session, message ids, usage and cost; not found if it was not "
                "recorded. For a turn whose answer said it was not confirmed: look it up before asking again."
            ),
            input_schema=TURN_INPUT_SCHEMA,
            output_schema=TURN_OUTPUT_SCHEMA,
            handler=get_turn,
            read_only=True,
        )
    )


def _plain(amount: Any) -> str:
    """A number as plain decimal text (no exponent), as users read money."""
    return format(Decimal(str(amount)).normalize(), "f")


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _storable(outcome: dict[str, Any]) -> bool:
    """Replace, in place, what PostgreSQL cannot hold in the upstream's text (NUL, lone surrogates) with
    U+FFFD; True when anything was."""
    changed = False
    for key in ("content", "model", "finish_reason", "error", "upstream_request_id"):
        value = outcome.get(key)
        if isinstance(value, str) and _UNSTORABLE.search(value):
            outcome[key] = _UNSTORABLE.sub("\ufffd", value)
            changed = True
    return changed


def _record(db: Database, **params: Any) -> tuple[dict[str, Any] | None, str]:
    """Record the turn: (what the books hold, how). `how` is turn, usage_only (the turn could not be stored
    as messages, so its usage alone was), not_confirmed (the database never answered) or not_recorded."""
    unknown = False
    for _ in range(RECORD_ATTEMPTS):
        try:
            row = db.one("record_completion", **params)
        except OutcomeUnknown:
            unknown = True  # it may have committed: the next attempt waits for it and returns its record
            continue
        except DatabaseUnavailable:
            continue
        except DatabaseError as error:
            if sqlstate(error) in _RECORD_AGAIN:
                continue
            logger.warning(
                "a completion turn could not be stored as messages; recording its usage alone",
                extra={"turn_id": params["turn_id"], "sqlstate": sqlstate(error)},
            )
            break
        assert row is not None
        return row["recorded"], "turn"
    try:
        row = db.one(
            "record_completion_usage",
            user_id=params["user_id"],
            turn_id=params["turn_id"],
            reply=params["reply"],
            settings=params["settings"],
        )
    except OutcomeUnknown:
        return None, "not_confirmed"
    except (DatabaseUnavailable, DatabaseError):
        return None, "not_confirmed" if unknown else "not_recorded"
    assert row is not None
    recorded = row["recorded"]
    return recorded, "turn" if recorded.get("already_recorded") and not recorded.get("usage_only") else "usage_only"


def _notices(recorded: dict[str, Any], how: str, sanitized: bool, in_session: bool) -> list[str]:
    notices = []
    if recorded.get("usage_only") and in_session:
        if how == "usage_only":
            notices.append("This turn could not be stored in the session; its usage was recorded against your account.")
        else:
            notices.append(
                "The session was deleted while OpenAI answered: the usage is recorded against your account, "
                "and the messages were not stored."
            )
    if sanitized:
        notices.append(
            "The reply held characters that cannot be stored (NUL or unpaired surrogates); they were replaced "
            "with U+FFFD."
        )
    return notices


def _unrecorded_error(turn_id: str, how: str, content: str | None) -> ToolError:
    if how == "not_confirmed":
        message = (
            f"OpenAI answered, but the database did not confirm that this turn was recorded (turn {turn_id}). "
            "Look it up with chatgpt_turn_get before asking again."
        )
    else:
        message = (
            f"OpenAI answered, but the turn could not be recorded: the database is unavailable (turn {turn_id}). "
            "Its usage was logged for the operator."
        )
    if content:
        message += f" The answer was:\n\n{content}"
    return ToolError(message, data={"turn_id": turn_id, "recorded": how})


def _log_unrecorded(turn_id: str, user_id: str, outcome: dict[str, Any], how: str) -> None:
    """The usage of a turn the books could not take, for an operator to reconcile."""
    logger.error(
        "completion usage not recorded",
        extra={
            "turn_id": turn_id,
            "user": user_id,
            "recorded": how,
            "model": outcome.get("model"),
            "prompt_tokens": outcome.get("prompt_tokens", 0),
            "completion_tokens": outcome.get("completion_tokens", 0),
            "cached_tokens": outcome.get("cached_tokens", 0),
            "reasoning_tokens": outcome.get("reasoning_tokens", 0),
            "usage_estimated": outcome.get("usage_estimated", False),
        },
    )

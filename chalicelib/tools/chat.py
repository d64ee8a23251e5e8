"""chatgpt_complete and chatgpt_stream: one completion, in a session or not, recorded exactly.

A completion takes two database round trips: prepare_completion (authenticate, authorise,
load session, history, model config and sealed key) and record_completion (messages, usage;
cost and session totals follow in SQL). The upstream call sits between them, holding no
transaction open.
"""

from __future__ import annotations

import base64
import functools
import json
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from chalicelib import auth, telemetry
from chalicelib.config import get_settings
from chalicelib.crypto import EncryptionKeyError, KeyRing, KeyServiceError, SealBroken, Sealed
from chalicelib.db import Database, DatabaseUnavailable
from chalicelib.mcp import Forbidden, NotFound, Registry, Tool, ToolCall, ToolError, ToolResult, Unavailable
from chalicelib.mcp.errors import Unauthenticated
from chalicelib.tools.access import USER_ID_SCHEMA, UUID_PATTERN
from chalicelib.tools.records import jsonable

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
    },
    "required": ["content", "model", "usage", "cost_usd", "session_id", "message_ids", "latency_ms"],
}
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
            new_bytes=sum(len(message["content"].encode()) for message in args["messages"]),
            new_messages=len(args["messages"]),
            settings=limits,
        )
        prepared: dict[str, Any] = row["prepared"] if row else {"error": "unauthenticated"}
        error = prepared.get("error")
        if error == "unauthenticated":
            raise Unauthenticated()
        call.log_fields["user"] = prepared["caller"]
        if error == "limit":
            raise limit_error(prepared)
        if error:
            raise _PREPARE_ERRORS[error](args, prepared)
        session = prepared.get("session")
        config = prepared.get("config") or {}
        system_prompt = (session or {}).get("system_prompt") or config.get("system_prompt")
        history = prepared.get("history") or []
        outgoing = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + history
        request = CompletionRequest(
            model=prepared["model"],
            messages=outgoing + args["messages"],
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
        except ToolError as error:
            failure = error
            outcome = {"status": "error", "model": request.model, "error": error.message, "latency_ms": 0}
        try:
            recorded_row = db.one(
                "record_completion",
                user_id=prepared["user_id"],
                session_id=session["id"] if session else None,
                turn_id=turn_id,
                # Only a session stores what was said; a one-off call sends just its usage.
                messages=json.dumps(args["messages"]) if session else "[]",
                reply=json.dumps(outcome if session else {**outcome, "content": None}),
                api_key_id=api_key_id,
            )
        except DatabaseUnavailable:
            # record_completion is one transaction: nothing of the turn was written.
            raise Unavailable(
                "OpenAI answered, but the turn could not be recorded: the database is unavailable; try again "
                "shortly. Nothing of this turn was saved to the session."
            ) from None
        assert recorded_row is not None
        recorded = recorded_row["recorded"]
        if isinstance(failure, ToolError):
            raise failure
        call.log_fields["metrics"] = [
            telemetry.completion(call.name, outcome["model"], outcome, recorded["reply"].get("cost_usd"))
        ]
        if failure is not None:
            data: dict[str, Any] = {"upstream_status": failure.status}
            if failure.retry_after is not None:
                data["retry_after_s"] = round(failure.retry_after, 3)
            raise ToolError(failure.message, data=data)
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
            "session_id": session["id"] if session else None,
            "message_ids": recorded["message_ids"],
            "latency_ms": outcome["latency_ms"],
        }
        return ToolResult(structured=structured, text=outcome["content"])

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


def _plain(amount: Any) -> str:
    """A number as plain decimal text (no exponent), as users read money."""
    return format(Decimal(str(amount)).normalize(), "f")


def _number(value: Any) -> float | None:
    return None if value is None else float(value)

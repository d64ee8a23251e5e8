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
import hashlib
import hmac
import json
import re
import threading
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
from chalicelib.mcp.errors import InvalidArguments, Unauthenticated
from chalicelib.tools.access import USER_ID_SCHEMA, UUID_PATTERN
from chalicelib.tools.records import jsonable

if TYPE_CHECKING:
    from chalicelib.upstream import CompletionRequest, Reply, UpstreamError, Usage

MODEL_NAME = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$"}
TEXT = {"type": "string", "maxLength": 500_000}
# An image or a file sent inline rides in the request: data URLs up to the request limit (1 MiB).
INLINE_DATA = {"type": "string", "maxLength": 1_048_576}
FUNCTION_NAME = {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}
PART = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["text", "image_url", "file"]},
        "text": TEXT,
        "image_url": {
            "type": "object",
            "properties": {
                "url": {**INLINE_DATA, "description": "An https URL, or a data:image/...;base64 URL."},
                "detail": {"type": "string", "enum": ["auto", "low", "high"]},
            },
            "required": ["url"],
            "additionalProperties": False,
        },
        "file": {
            "type": "object",
            "properties": {
                "file_url": {"type": "string", "maxLength": 4096, "description": "An https URL (Responses API only)."},
                "file_data": {**INLINE_DATA, "description": "A data:<type>;base64,... URL (a PDF or a text file)."},
                "filename": {"type": "string", "minLength": 1, "maxLength": 255},
            },
            "additionalProperties": False,
        },
    },
    "required": ["type"],
    "additionalProperties": False,
}
TOOL_CALL = {
    "type": "object",
    "description": "A call the model made: {id, type, function: {name, arguments}}, or {id, name, arguments}.",
    "properties": {
        "id": {"type": "string", "minLength": 1, "maxLength": 200},
        "type": {"type": "string", "enum": ["function"]},
        "function": {
            "type": "object",
            "properties": {"name": FUNCTION_NAME, "arguments": {"type": "string", "maxLength": 500_000}},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        },
        "name": FUNCTION_NAME,
        "arguments": {"type": "string", "maxLength": 500_000},
    },
    "required": ["id"],
    "additionalProperties": False,
}
MESSAGE = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {
            "anyOf": [TEXT, {"type": "array", "items": PART, "minItems": 1, "maxItems": 100}, {"type": "null"}],
            "description": "Text, or (user messages) a list of parts: text, image_url, file.",
        },
        "tool_calls": {"type": "array", "items": TOOL_CALL, "minItems": 1, "maxItems": 128},
        "tool_call_id": {"type": "string", "minLength": 1, "maxLength": 200},
    },
    "required": ["role"],
    "additionalProperties": False,
}
REASONING_EFFORT = {"type": "string", "enum": ["none", "minimal", "low", "medium", "high", "xhigh"]}
VERBOSITY = {"type": "string", "enum": ["low", "medium", "high"]}
REASONING_SUMMARY = {"type": "string", "enum": ["auto", "concise", "detailed"]}
SERVICE_TIER = {"type": "string", "enum": ["auto", "default", "flex", "priority"]}
SEARCH_CONTEXT = {"type": "string", "enum": ["low", "medium", "high"]}
INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "messages": {"type": "array", "items": MESSAGE, "minItems": 1, "maxItems": 500},
        "model": {**MODEL_NAME, "description": "OpenAI model, e.g. gpt-5.4-mini (default: config, then server)."},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 200_000},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "reasoning_effort": {**REASONING_EFFORT, "description": "How hard a reasoning model thinks."},
        "verbosity": {**VERBOSITY, "description": "How long the answer of a GPT-5 family model is."},
        "reasoning_summary": {
            **REASONING_SUMMARY,
            "description": "Return a summary of the model's reasoning as reasoning_summary (Responses API).",
        },
        "response_format": {
            "type": "object",
            "description": (
                'Structured output: {"type": "json_schema", "json_schema": {"name", "schema", "strict"}} or '
                '{"type": "json_object"}. The parsed value comes back as parsed.'
            ),
            "properties": {
                "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
                "json_schema": {
                    "type": "object",
                    "properties": {
                        "name": FUNCTION_NAME,
                        "description": {"type": "string", "maxLength": 10_000},
                        "schema": {"type": "object"},
                        "strict": {"type": "boolean"},
                    },
                    "required": ["name", "schema"],
                    "additionalProperties": False,
                },
            },
            "required": ["type"],
            "additionalProperties": False,
        },
        "tools": {
            "type": "array",
            "maxItems": 128,
            "description": "Function tools, in the Chat Completions shape; calls come back as tool_calls.",
            "items": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["function"]},
                    "function": {
                        "type": "object",
                        "properties": {
                            "name": FUNCTION_NAME,
                            "description": {"type": "string", "maxLength": 10_000},
                            "parameters": {"type": "object"},
                            "strict": {"type": "boolean"},
                        },
                        "required": ["name"],
                        "additionalProperties": False,
                    },
                },
                "required": ["type", "function"],
                "additionalProperties": False,
            },
        },
        "tool_choice": {
            "anyOf": [
                {"type": "string", "enum": ["none", "auto", "required"]},
                {
                    "type": "object",
                    "properties": {
                        "type": {"type": "string", "enum": ["function"]},
                        "function": {
                            "type": "object",
                            "properties": {"name": FUNCTION_NAME},
                            "required": ["name"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["type", "function"],
                    "additionalProperties": False,
                },
            ]
        },
        "web_search": {
            "anyOf": [
                {"type": "boolean"},
                {
                    "type": "object",
                    "properties": {"search_context_size": SEARCH_CONTEXT},
                    "additionalProperties": False,
                },
            ],
            "description": "OpenAI's web search (Responses API): sources come back as citations; searches are billed.",
        },
        "stop": {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": 1000},
                {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 1000}, "maxItems": 4},
            ],
            "description": "Stop sequences (Chat Completions only).",
        },
        "seed": {"type": "integer", "description": "Best-effort determinism (Chat Completions only)."},
        "service_tier": {**SERVICE_TIER, "description": "flex: cheaper and slower; priority: faster, dearer."},
        "background": {
            "type": "boolean",
            "description": (
                "Run as a background job, for answers that take minutes: the answer comes at once with a job_id; "
                "chatgpt_job_get gives the text so far and the result."
            ),
        },
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
                "cache_write_tokens": TOKENS,
                "web_search_calls": TOKENS,
                "total_tokens": TOKENS,
                "estimated": {"type": "boolean"},
            },
            "required": ["prompt_tokens", "completion_tokens", "cached_tokens", "reasoning_tokens", "total_tokens"],
        },
        "cost_usd": {"type": ["number", "null"], "description": "As the database computed it; null if unpriced."},
        "service_tier": {"type": ["string", "null"], "description": "The tier that served the call, and priced it."},
        "parsed": {"description": "With response_format: the reply parsed as JSON."},
        "tool_calls": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "arguments": {"type": "string"}},
                "required": ["id", "name", "arguments"],
            },
        },
        "citations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"url": {"type": "string"}, "title": {"type": "string"}},
                "required": ["url", "title"],
            },
        },
        "reasoning_summary": {"type": "string"},
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
        "job_id": {"type": "string", "description": "With background: the job that runs the turn."},
        "status": {"type": "string", "description": "With background: the job's status (queued)."},
        "poll_after_ms": {"type": "integer", "description": "With background: when to look again."},
    },
    # The answer of the turn, or (background: true) the job that runs it.
    "anyOf": [
        {"required": ["content", "model", "usage", "cost_usd", "session_id", "message_ids", "latency_ms"]},
        {"required": ["job_id", "status", "poll_after_ms"]},
    ],
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
_TOOL_NAMES = {False: "chatgpt_complete", True: "chatgpt_stream"}
# Models that routinely answer in minutes (README: Background jobs): the -pro and deep-research models, and
# any reasoning model at effort high or xhigh.
_SLOW_MODEL = re.compile(r"(^|-)(pro|deep-research)(-|$)")
_SLOW_EFFORTS = frozenset({"high", "xhigh"})
# Settings a call may give, over its model config's.
_SETTINGS = ("temperature", "top_p", "reasoning_effort", "verbosity", "reasoning_summary", "service_tier")
# Under a budget, web searches per call (each is billed), sent as max_tool_calls and reserved for.
LIMITED_TOOL_CALLS = 5
# Prompt tokens reserved, under a limit, per image (a high-detail image of the GPT-5 family takes up to
# about 1,600 patches; this bounds that with room) and per file given by URL (its size is unknown here).
IMAGE_TOKEN_BOUND = 6_000
FILE_TOKEN_BOUND = 100_000
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
    "model_retired": lambda args, prepared: ToolError(
        f"Model {prepared['model']!r} was retired by OpenAI on {prepared['shutdown_on']}: "
        + (
            f"use {prepared['successor']!r}, its successor."
            if prepared.get("successor")
            else "choose a current model (chitty_models_list)."
        ),
        data={
            "model": prepared["model"],
            "shutdown_on": prepared["shutdown_on"],
            "successor": prepared.get("successor"),
        },
    ),
    "needs_responses": lambda args, prepared: ToolError(
        (
            f"Model {prepared['model']!r} is served only through OpenAI's Responses API"
            if prepared["parameter"] == "model"
            else f"{prepared['parameter']}{_from_config(prepared)} needs OpenAI's Responses API"
        )
        + ", and this server's upstream speaks Chat Completions (CHITTY_UPSTREAM_API). Nothing was sent.",
        data={"parameter": prepared["parameter"], "model": prepared["model"]},
    ),
    "unsupported_parameter": lambda args, prepared: ToolError(
        f"{prepared['parameter']}{_from_config(prepared)} is not supported by {prepared['model']!r}, "
        + (
            "a reasoning model: leave it out, or set reasoning_effort none where the model accepts it."
            if prepared["reasoning"]
            else "which is not a reasoning model: leave it out."
        )
        + " Nothing was sent.",
        data={"parameter": prepared["parameter"], "model": prepared["model"]},
    ),
    "unsupported_value": lambda args, prepared: ToolError(
        f"{prepared['parameter']} {prepared['value']!r}{_from_config(prepared)} is not accepted by "
        f"{prepared['model']!r}; it accepts {', '.join(prepared['accepted'])}. Nothing was sent.",
        data={"parameter": prepared["parameter"], "model": prepared["model"], "accepted": prepared["accepted"]},
    ),
    "unsupported_input": lambda args, prepared: ToolError(
        f"Model {prepared['model']!r} does not accept {_INPUT_NAMES[prepared['what']]}; choose a model that does "
        "(chitty_models_list shows what each accepts). Nothing was sent.",
        data={"input": prepared["what"], "model": prepared["model"]},
    ),
    "unpriced_model": lambda args, prepared: ToolError(
        f"Model {prepared.get('model')!r} has no price, and a budget applies to you: spend on it cannot be "
        "bounded. Ask an admin to set its price (pricing set), or choose a priced model (chitty_models_list)."
    ),
}
_INPUT_NAMES = {
    "images": "images",
    "files": "files",
    "tools": "function tools",
    "response_format": "a JSON schema response_format",
    "web_search": "web search",
}
_LIMIT_NAMES = {
    "concurrent_jobs": "Concurrent jobs limit",
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
    elif kind == "concurrent_jobs":
        detail = f"{value:g} background jobs at once: {used} queued or running"
    elif kind == "requests_per_minute":
        detail = f"{value:g} requests a minute: {used} in the last minute and {reserved} in progress"
    else:
        detail = (
            f"{value:g} tokens a minute: {used} used in the last minute, {reserved} held by calls in progress, "
            f"and this call could use up to {requested}"
        )
    return ToolError(
        f"{_LIMIT_NAMES[kind]} reached for {prepared['user_id']} ({detail}). "
        + (f"It resets at {resets_at}." if resets_at else "It frees up as a job ends (chatgpt_job_list)."),
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


class Completions:
    """Completion turns, start to end: the upstream, the settings the SQL takes, and recording the turn."""

    def __init__(self, db: Database, *, deadline: float | None = None, reservation_seconds: int | None = None) -> None:
        from chalicelib.upstream import Upstream

        settings = get_settings()
        self.db = db
        self.upstream = Upstream(
            base_url=settings.openai_base_url,
            api=settings.upstream_api,
            attempt_timeout=deadline or settings.upstream_attempt_timeout,
            deadline=deadline or settings.upstream_timeout,
            max_attempts=settings.upstream_attempts,
        )
        self.limits = self.settings_json(reservation_seconds)

    @staticmethod
    def settings_json(reservation_seconds: int | None = None) -> str:
        """What the completion functions in SQL read of the settings, as they take it (a JSON object)."""
        settings = get_settings()
        return json.dumps(
            {
                "default_model": settings.default_model,
                "limited_max_tokens": settings.limited_max_tokens,
                "limited_max_tokens_reasoning": settings.limited_max_tokens_reasoning,
                "limited_tool_calls": LIMITED_TOOL_CALLS,
                "image_token_bound": IMAGE_TOKEN_BOUND,
                "file_token_bound": FILE_TOKEN_BOUND,
                "api": settings.upstream_api,
                "official_openai": settings.official_openai,
                "resource": settings.resource,
                # A reservation outlives the longest call it covers (a job's, for a job), then expires.
                "reservation_seconds": reservation_seconds or int(settings.upstream_timeout) + 60,
                "server_key": settings.openai_api_key is not None,
                # Lock waits end on the server before the client's own timeout would take them for a lost
                # connection.
                "lock_timeout_ms": max(100, int(settings.db_timeout * 800)),
                **settings.default_limits,
            }
        )

    def finish_turn(
        self,
        *,
        user_id: str,
        session: dict[str, Any] | None,
        turn_id: str,
        messages: list[dict[str, Any]],
        request: CompletionRequest,
        stored_key: dict[str, Any] | None,
        stream: bool,
        on_delta: Callable[[str], None] | None,
        log_fields: dict[str, Any],
        cancelled: threading.Event | None = None,
    ) -> ToolResult:
        """Ask the upstream and record the turn, whatever happens: the answer, or a ToolError saying what
        failed (and what was billed)."""
        from chalicelib.upstream import UpstreamError

        db, upstream, limits = self.db, self.upstream, self.limits
        # From here on the turn is recorded whatever happens: that also settles its reservation.
        failure: UpstreamError | ToolError | None = None
        api_key_id: str | None = None
        reply = None
        try:
            api_key, api_key_id = _api_key({"api_key": stored_key, "user_id": user_id})
            reply = upstream.complete(api_key, request, stream=stream, on_delta=on_delta, cancelled=cancelled)
            outcome: dict[str, Any] = {
                "status": "ok",
                "content": reply.content,
                "tool_calls": [_wire_call(tool_call) for tool_call in reply.tool_calls] or None,
                "model": reply.model,
                "finish_reason": reply.finish_reason,
                "service_tier": reply.service_tier,
                **_usage_fields(reply.usage),
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
                outcome.update(_usage_fields(error.usage))
        except ToolError as error:
            failure = error
            outcome = {"status": "error", "model": request.model, "error": error.message, "latency_ms": 0}
        sanitized = _storable(outcome)
        recorded, how = _record(
            db,
            user_id=user_id,
            session_id=session["id"] if session else None,
            turn_id=turn_id,
            # Only a session stores what was said; a one-off call sends just its usage.
            messages=json.dumps(messages) if session else "[]",
            reply=json.dumps(outcome if session else {**outcome, "content": None, "tool_calls": None}),
            api_key_id=api_key_id,
            settings=limits,
        )
        if recorded is None:
            _log_unrecorded(turn_id, user_id, outcome, how)
            raise _unrecorded_error(turn_id, how, outcome.get("content") if failure is None else None)
        if isinstance(failure, ToolError):
            raise failure
        log_fields["metrics"] = [
            telemetry.completion(_TOOL_NAMES[stream], outcome["model"], outcome, recorded["reply"].get("cost_usd"))
        ]
        notices = _notices(recorded, how, sanitized, session is not None)
        cost = jsonable(recorded["reply"]["cost_usd"])
        if failure is not None:
            data: dict[str, Any] = {"upstream_status": failure.status, "turn_id": turn_id}
            if failure.retry_after is not None:
                data["retry_after_s"] = round(failure.retry_after, 3)
            if outcome.get("prompt_tokens") or outcome.get("completion_tokens"):
                data["billed_tokens"] = outcome["prompt_tokens"] + outcome["completion_tokens"]
                data["cost_usd"] = cost
            raise ToolError(" ".join([failure.message, *notices]), data=data)
        assert reply is not None
        structured: dict[str, Any] = {
            "content": outcome["content"],
            "model": outcome["model"],
            "finish_reason": outcome["finish_reason"],
            "usage": {
                "prompt_tokens": outcome["prompt_tokens"],
                "completion_tokens": outcome["completion_tokens"],
                "cached_tokens": outcome["cached_tokens"],
                "reasoning_tokens": outcome["reasoning_tokens"],
                "cache_write_tokens": outcome["cache_write_tokens"],
                "web_search_calls": outcome["web_search_calls"],
                "total_tokens": outcome["prompt_tokens"] + outcome["completion_tokens"],
                "estimated": outcome["usage_estimated"],
            },
            "cost_usd": cost,
            "service_tier": outcome["service_tier"],
            "session_id": session["id"] if session and not recorded.get("usage_only") else None,
            "message_ids": recorded["message_ids"],
            "latency_ms": outcome["latency_ms"],
            "turn_id": turn_id,
            "recorded": "usage_only" if recorded.get("usage_only") else "turn",
        }
        if reply.tool_calls:
            structured["tool_calls"] = [dict(tool_call) for tool_call in reply.tool_calls]
        if reply.citations:
            structured["citations"] = [dict(citation) for citation in reply.citations]
        if reply.reasoning_summary:
            structured["reasoning_summary"] = reply.reasoning_summary
        if (
            request.response_format is not None
            and request.response_format.get("type") != "text"
            and not reply.tool_calls
        ):
            try:
                structured["parsed"] = json.loads(outcome["content"])
            except ValueError:
                raise ToolError(
                    f"The model's reply is not the JSON that response_format asked for (finish_reason "
                    f"{outcome['finish_reason']}); the turn was recorded and billed. The reply was:\n\n"
                    f"{outcome['content']}",
                    data={"turn_id": turn_id, "cost_usd": cost, "finish_reason": outcome["finish_reason"]},
                ) from None
        if notices:
            structured["notice"] = " ".join(notices)
        return ToolResult(structured=structured, text=_answer_text(reply, outcome, request.max_tokens))


def register(registry: Registry, db: Database) -> None:
    """Add chatgpt_complete, chatgpt_stream and chatgpt_turn_get to the registry."""
    from chalicelib import jobs

    settings = get_settings()
    completions = Completions(db)
    # A background turn's reservation is held for as long as its job may run.
    background = Completions(db, reservation_seconds=int(settings.job_timeout) + 60)

    def run(call: ToolCall, stream: bool) -> ToolResult:
        credential = call.principal
        assert isinstance(credential, auth.Credential)
        args = call.arguments
        messages = [_checked_message(message, index) for index, message in enumerate(args["messages"])]
        for name in ("stop", "seed"):
            if name in args and settings.upstream_api == "responses":
                raise InvalidArguments(
                    f"{name} exists only in Chat Completions, and this server speaks OpenAI's Responses API; "
                    "leave it out. Nothing was sent.",
                    data={"field": name},
                )
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
            messages=json.dumps(messages),
            options=json.dumps(_options(args, messages)),
            settings=(background if args.get("background") or call.task_requested else completions).limits,
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
        request = _request(args, prepared)
        as_task = call.task_requested and _judged_long(args, prepared)
        if args.get("background") or as_task:
            return jobs.start(
                db,
                background,
                call=call,
                prepared=prepared,
                turn_id=turn_id,
                messages=messages,
                request=request,
                stream=stream,
                as_task=as_task,
            )

        def on_delta(delta: str) -> None:
            streamed[0] += len(delta)
            call.report_progress(streamed[0], None, delta)

        streamed = [0]
        return completions.finish_turn(
            user_id=prepared["user_id"],
            session=prepared.get("session"),
            turn_id=turn_id,
            messages=messages,
            request=request,
            stored_key=prepared.get("api_key"),
            stream=stream,
            on_delta=on_delta,
            log_fields=call.log_fields,
        )

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


def _judged_long(args: dict[str, Any], prepared: dict[str, Any]) -> bool:
    """Whether a call is documented as slow enough to run as a job: asked to, or a slow model or effort."""
    effort = prepared["options"].get("reasoning_effort")
    return bool(
        args.get("background")
        or _SLOW_MODEL.search(prepared["model"])
        or (prepared.get("reasoning") and effort in _SLOW_EFFORTS)
    )


def _from_config(prepared: dict[str, Any]) -> str:
    return (
        f" (from model config {prepared['config']!r})" if prepared.get("from_config") and prepared.get("config") else ""
    )


def failed_turn(
    *,
    session_id: str | None,
    messages: list[dict[str, Any]],
    model: str,
    content: str | None,
    error: str,
    usage: Usage | None,
) -> dict[str, str]:
    """The record_completion arguments of a turn that failed outside a call (a job whose worker died): its
    text so far and what it was billed, stored as any failed turn is."""
    outcome: dict[str, Any] = {"status": "error", "content": content or None, "model": model, "error": error}
    if usage is not None:
        outcome.update(_usage_fields(usage))
    _storable(outcome)
    return {
        "messages": json.dumps(messages) if session_id else "[]",
        "reply": json.dumps(outcome if session_id else {**outcome, "content": None}),
    }


def storable(value: Any) -> Any:
    """A JSON value with what PostgreSQL cannot hold in text (NUL, lone surrogates) replaced by U+FFFD."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, dict):
        return {storable(key): storable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [storable(item) for item in value]
    return value


def _invalid(index: int, text: str) -> InvalidArguments:
    return InvalidArguments(f"messages[{index}]: {text}", data={"field": f"messages[{index}]"})


def _checked_message(message: dict[str, Any], index: int) -> dict[str, Any]:
    """A message that OpenAI can take, with its tool calls in the Chat Completions shape; else a clear error."""
    role, content = message["role"], message.get("content")
    if "tool_call_id" in message and role != "tool":
        raise _invalid(index, "tool_call_id belongs to a tool message (role tool).")
    if "tool_calls" in message and role != "assistant":
        raise _invalid(index, "tool_calls belong to an assistant message.")
    checked: dict[str, Any] = {"role": role}
    if role == "tool":
        if "tool_call_id" not in message or not isinstance(content, str):
            raise _invalid(index, "a tool message needs tool_call_id (the call it answers) and its result as text.")
        checked["tool_call_id"] = message["tool_call_id"]
    elif role == "assistant" and content is None and "tool_calls" not in message:
        raise _invalid(index, "an assistant message needs content or tool_calls.")
    elif role != "assistant" and content is None:
        raise _invalid(index, f"a {role} message needs content.")
    if isinstance(content, list):
        for number, part in enumerate(content):
            _check_part(part, role, f"messages[{index}].content[{number}]")
    if content is not None:
        checked["content"] = content
    if "tool_calls" in message:
        checked["tool_calls"] = [_chat_call(tool_call, index) for tool_call in message["tool_calls"]]
    return checked


def _check_part(part: dict[str, Any], role: str, where: str) -> None:
    kind = part["type"]
    if set(part) != {"type", kind}:
        raise InvalidArguments(f"{where}: a {kind} part holds type and {kind}, nothing else.", data={"field": where})
    if kind != "text" and role != "user":
        raise InvalidArguments(f"{where}: images and files go in user messages.", data={"field": where})
    if kind == "image_url" and not part["image_url"]["url"].startswith(("https://", "data:image/")):
        raise InvalidArguments(
            f"{where}: an image is an https URL or a data:image/...;base64 URL.", data={"field": where}
        )
    if kind == "file":
        file = part["file"]
        if ("file_url" in file) == ("file_data" in file):
            raise InvalidArguments(f"{where}: a file has either file_url or file_data.", data={"field": where})
        if "file_url" in file and not file["file_url"].startswith("https://"):
            raise InvalidArguments(f"{where}: file_url must be an https URL.", data={"field": where})
        if "file_data" in file and (not file["file_data"].startswith("data:") or ";base64," not in file["file_data"]):
            raise InvalidArguments(f"{where}: file_data is a data:<type>;base64,... URL.", data={"field": where})
        if "file_data" in file and "filename" not in file:
            raise InvalidArguments(f"{where}: a file sent as file_data needs its filename.", data={"field": where})


def _chat_call(tool_call: dict[str, Any], index: int) -> dict[str, Any]:
    """A tool call as Chat Completions writes it, from that shape or from this tool's {id, name, arguments}."""
    function = tool_call.get("function") or {}
    name = function.get("name", tool_call.get("name"))
    arguments = function.get("arguments", tool_call.get("arguments"))
    if (
        name is None
        or arguments is None
        or ("function" in tool_call and ("name" in tool_call or "arguments" in tool_call))
    ):
        raise _invalid(
            index, "each tool call is {id, type: function, function: {name, arguments}} or {id, name, arguments}."
        )
    return {"id": tool_call["id"], "type": "function", "function": {"name": name, "arguments": arguments}}


def _wire_call(tool_call: dict[str, str]) -> dict[str, Any]:
    return {
        "id": tool_call["id"],
        "type": "function",
        "function": {"name": tool_call["name"], "arguments": tool_call["arguments"]},
    }


def _options(args: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
    """What prepare_completion needs to know of the call: its explicit settings (merged over its model
    config's there), what its messages and arguments hold, and the bytes its tools and schema add."""
    settings = {name: args[name] for name in _SETTINGS if name in args}
    if "web_search" in args:
        search = args["web_search"]
        settings["web_search"] = (
            None
            if search is False
            else (search.get("search_context_size", "medium") if isinstance(search, dict) else "medium")
        )
    parts = [part for message in messages if isinstance(message.get("content"), list) for part in message["content"]]
    files = [part["file"] for part in parts if part["type"] == "file"]
    extra = sum(
        len(json.dumps(args[name]).encode()) for name in ("tools", "response_format", "tool_choice") if name in args
    )
    return {
        "settings": settings,
        "features": {
            "images": sum(part["type"] == "image_url" for part in parts),
            "files": len(files),
            "file_urls": sum("file_url" in file for file in files),
            "tools": bool(args.get("tools")),
            "format": (args.get("response_format") or {}).get("type"),
        },
        "extra_bytes": extra,
    }


def _request(args: dict[str, Any], prepared: dict[str, Any]) -> CompletionRequest:
    """The one request object both wire formats send: prepare_completion's messages and merged settings."""
    from chalicelib.upstream import CompletionRequest

    options = prepared["options"]
    return CompletionRequest(
        model=prepared["model"],
        messages=prepared["messages"],
        max_tokens=prepared.get("max_tokens"),
        temperature=_number(options.get("temperature")),
        top_p=_number(options.get("top_p")),
        reasoning_effort=options.get("reasoning_effort"),
        verbosity=options.get("verbosity"),
        reasoning_summary=options.get("reasoning_summary"),
        service_tier=options.get("service_tier"),
        web_search=options.get("web_search"),
        response_format=args.get("response_format"),
        tools=args.get("tools"),
        tool_choice=args.get("tool_choice"),
        stop=args.get("stop"),
        seed=args.get("seed"),
        safety_identifier=safety_identifier(prepared["user_id"]),
        max_tool_calls=prepared.get("max_tool_calls"),
    )


@functools.lru_cache(maxsize=1)
def _safety_key() -> bytes:
    settings = get_settings()
    secret = settings.secret("CHITTY_SAFETY_SECRET") or settings.encryption_key or settings.kms_key_id or ""
    return hashlib.sha256(b"chitty safety identifier\x00" + secret.encode()).digest()


def safety_identifier(user_id: str) -> str:
    """The stable pseudonym OpenAI gets for a user: a keyed hash of the user id, never the id itself."""
    return "chitty-" + hmac.new(_safety_key(), user_id.encode(), hashlib.sha256).hexdigest()[:32]


def _usage_fields(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "cached_tokens": usage.cached_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "web_search_calls": usage.web_search_calls,
        "usage_estimated": usage.estimated,
    }


def _answer_text(reply: Reply, outcome: dict[str, Any], max_tokens: int | None) -> str:
    """The answer as a client shows it: the text, the calls the model made, a cut-off said plainly, the sources."""
    lines = [reply.content] if reply.content else []
    lines.extend(f"Tool call {call['id']}: {call['name']}({call['arguments']})" for call in reply.tool_calls)
    if reply.finish_reason == "length":
        limit = f" ({max_tokens} tokens)" if max_tokens else ""
        if not lines:
            lines.append(
                f"No answer: the model reached its output limit{limit} before writing any text; "
                f"{outcome['reasoning_tokens']} of its {outcome['completion_tokens']} output tokens went to "
                "reasoning. Ask again with a larger max_tokens or a lower reasoning_effort."
            )
        else:
            lines.append(f"[The answer was cut off at the output limit{limit}.]")
    if reply.citations:
        lines.append("Sources:\n" + "\n".join(f"- {c['title'] or c['url']}: {c['url']}" for c in reply.citations))
    return "\n\n".join(lines)


def _plain(amount: Any) -> str:
    """A number as plain decimal text (no exponent), as users read money."""
    return format(Decimal(str(amount)).normalize(), "f")


def _number(value: Any) -> float | None:
    return None if value is None else float(value)


def _storable(outcome: dict[str, Any]) -> bool:
    """Replace, in place, what PostgreSQL cannot hold in the upstream's text (NUL, lone surrogates) with
    U+FFFD; True when anything was."""
    changed = False
    for key in ("content", "model", "finish_reason", "error", "upstream_request_id", "service_tier"):
        value = outcome.get(key)
        if isinstance(value, str) and _UNSTORABLE.search(value):
            outcome[key] = _UNSTORABLE.sub("\ufffd", value)
            changed = True
    for tool_call in outcome.get("tool_calls") or []:
        for holder, key in ((tool_call, "id"), (tool_call["function"], "name"), (tool_call["function"], "arguments")):
            if _UNSTORABLE.search(holder[key]):
                holder[key] = _UNSTORABLE.sub("\ufffd", holder[key])
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

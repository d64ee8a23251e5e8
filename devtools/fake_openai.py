"""A local, OpenAI-compatible HTTP server for tests and benchmarks.

`FakeOpenAI` serves the parts of the OpenAI REST API this project uses, on 127.0.0.1, in a
background thread, with the standard library only:

- ``POST /v1/chat/completions``: the Chat Completions wire format, plain and streamed (SSE
  ``data:`` lines over ``Transfer-Encoding: chunked``, then ``data: [DONE]``), with ``usage``
  (cached, cache-write and reasoning token details), ``service_tier`` and tool calls.
- ``POST /v1/responses``: the Responses wire format, plain and streamed (``event:``/``data:``
  pairs numbered by ``sequence_number``, from ``response.created`` to ``response.completed`` or
  ``response.incomplete``; no ``[DONE]``), with reasoning summaries, web search calls and their url
  citations, and function calls.
- ``GET /v1/models`` and ``GET /v1/models/{id}``.

Every answer has an ``x-request-id`` header (the `openai` SDK exposes it as ``._request_id``).

The reply is deterministic; the first of these that applies gives it:

1. a scripted `Reply` (text) or `ToolCalls` (function calls instead of text);
2. `FakeOpenAI.reply`: a text, or a function of the request body returning it;
3. structured output (chat ``response_format``, Responses ``text.format``): for ``json_schema``,
   `schema_instance` of the schema as compact JSON; for ``json_object``, ``{}``;
4. ``"echo: " + <text of the last user message>`` (a string ``input`` is the user message).

Token counts follow simple rules, so a test can compute the usage it expects:

- text is `count_tokens`: one token per started group of four characters;
- a chat message or a Responses input item is one token plus its text, plus `IMAGE_TOKENS` (85) per
  image part and `FILE_TOKENS` (250) per file part; a chat assistant message adds the names and
  arguments of its tool calls, a ``function_call`` item counts its name and arguments, a
  ``function_call_output`` its output; Responses ``instructions`` count as one more message
  (`count_prompt_tokens`, `count_input_tokens`);
- the reply is `count_tokens` of its text, or of its tool calls' names and JSON arguments joined, plus
  `FakeOpenAI.reasoning_tokens` (`make_usage`, `make_response_usage`). A reasoning summary and web
  searches cost nothing.
- On Responses, a reply whose tokens (reasoning included) exceed ``max_output_tokens`` is cut to fit
  and the response is ``incomplete`` (reason ``max_output_tokens``); the text keeps its first
  ``4 * (max_output_tokens - reasoning tokens)`` characters and the reasoning tokens are capped at
  ``max_output_tokens``. Chat's ``max_completion_tokens`` is recorded, not enforced.

The fake refuses what OpenAI refuses, with OpenAI's 400 ``invalid_request_error`` (message, param,
code), before any scripted behaviour is taken: parameters the SDK's create params do not name
(`CHAT_PARAMETERS`, `RESPONSES_PARAMETERS`); ``temperature`` or ``top_p`` on a reasoning model
(`FakeOpenAI.is_reasoning_model`) unless the reasoning effort is ``"none"``; ``max_tokens`` on a
reasoning model (chat); reasoning effort, reasoning summary or verbosity on other models; an effort
outside `REASONING_EFFORTS` (or outside `FakeOpenAI.accepted_efforts` for the model); a tool result
without its call before it and a tool call without its result after it; ``max_output_tokens`` below 16;
unknown message roles and content part types. Faults are scripted per request with `FakeOpenAI.script`::

    with FakeOpenAI(delay=0.0) as fake:
        client = openai.OpenAI(api_key="sk-test", base_url=fake.base_url, max_retries=0)
        fake.script(rate_limited(retry_after=1), Hang(5.0), Reset(), BreakStream(after_chunks=2))
        ...
        assert fake.chat_requests[-1].messages[-1]["content"] == "hello"

Every received request is recorded in `FakeOpenAI.requests` (see `RecordedRequest`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = [
    "CHAT_PARAMETERS",
    "DEFAULT_CITATIONS",
    "DEFAULT_MODELS",
    "FILE_TOKENS",
    "IMAGE_TOKENS",
    "REASONING_EFFORTS",
    "RESPONSES_PARAMETERS",
    "BreakStream",
    "EndStream",
    "ErrorResponse",
    "FakeOpenAI",
    "Hang",
    "NoUsage",
    "RecordedRequest",
    "Reply",
    "Reset",
    "ResponseFailed",
    "StreamError",
    "ToolCalls",
    "bad_request",
    "count_input_tokens",
    "count_prompt_tokens",
    "count_tokens",
    "is_reasoning_model",
    "make_response_usage",
    "make_usage",
    "message_text",
    "model_not_found",
    "openai_error",
    "quota_exceeded",
    "rate_limited",
    "schema_instance",
    "server_error",
]

DEFAULT_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1",
    "gpt-4.1-mini",
    "o3-mini",
    "o4-mini",
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
)
"""Model ids that ``GET /v1/models`` lists unless `FakeOpenAI.models` is changed."""

DEFAULT_CITATIONS = (("https://example.com/", "Example Domain"),)
"""The (url, title) pairs a response cites after a web search unless `FakeOpenAI.citations` is changed."""

IMAGE_TOKENS = 85
"""Input tokens of one image part (``image_url`` in chat, ``input_image`` in Responses), whatever its size."""

FILE_TOKENS = 250
"""Input tokens of one file part (``file`` in chat, ``input_file`` in Responses), whatever its content."""

REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
"""The reasoning efforts OpenAI knows (``reasoning_effort``, ``reasoning.effort``)."""

# The keys of the SDK's CompletionCreateParams (types/chat/completion_create_params.py).
CHAT_PARAMETERS = frozenset(
    {
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "messages",
        "metadata",
        "modalities",
        "model",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)

# The keys of the SDK's ResponseCreateParams (types/responses/response_create_params.py).
RESPONSES_PARAMETERS = frozenset(
    {
        "access_programs",
        "background",
        "background_options",
        "context_management",
        "conversation",
        "image",
        "include",
        "input",
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "model",
        "moderation",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
)

_API_KEYS_URL = "https://platform.openai.com/account/api-keys"
_CHAT_ROLES = ("system", "assistant", "user", "function", "tool", "developer")
_INPUT_ROLES = ("assistant", "system", "developer", "user")
_INPUT_PARTS = ("input_text", "input_image", "input_file")
_ASSISTANT_PARTS = ("output_text", "refusal")
_IMAGE_PARTS = frozenset({"image_url", "input_image"})
_FILE_PARTS = frozenset({"file", "input_file"})
_WEB_SEARCH_TOOLS = frozenset(
    {"web_search", "web_search_2025_08_26", "web_search_preview", "web_search_preview_2025_03_11"}
)
_REASONING_MODEL = re.compile(r"^(o\d|gpt-5|gpt-6)")
_MIN_OUTPUT_TOKENS = 16


def is_reasoning_model(model: str) -> bool:
    """OpenAI's reasoning models by name: ``o1``, ``o3-mini``, ``gpt-5``, ``gpt-6`` ... but not ``-chat`` ones."""
    return bool(_REASONING_MODEL.match(model)) and "-chat" not in model


# --------------------------------------------------------------------------------------------
# Deterministic token counting
# --------------------------------------------------------------------------------------------


def count_tokens(text: str) -> int:
    """Tokens in ``text`` by the fake's rule: one per started group of four characters."""
    return (len(text) + 3) // 4


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a chat message: its string content, or its text parts joined; ``""`` if none."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"] for part in content if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    return ""


def _attachment_tokens(content: Any) -> int:
    """`IMAGE_TOKENS` per image part and `FILE_TOKENS` per file part of a message's content."""
    if not isinstance(content, list):
        return 0
    kinds = [part.get("type") for part in content if isinstance(part, Mapping)]
    return IMAGE_TOKENS * sum(kind in _IMAGE_PARTS for kind in kinds) + FILE_TOKENS * sum(
        kind in _FILE_PARTS for kind in kinds
    )


def _tool_calls_text(message: Mapping[str, Any]) -> str:
    """The names and arguments of a chat assistant message's tool calls, joined."""
    calls = message.get("tool_calls")
    functions = [call.get("function") for call in calls if isinstance(call, Mapping)] if isinstance(calls, list) else []
    return "".join(
        str(function.get("name") or "") + str(function.get("arguments") or "")
        for function in functions
        if isinstance(function, Mapping)
    )


def count_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat request: per message, one plus `count_tokens` of its `message_text` (and of its
    tool calls' names and arguments), plus `IMAGE_TOKENS` per image part and `FILE_TOKENS` per file part."""
    return sum(
        1
        + count_tokens(message_text(message))
        + count_tokens(_tool_calls_text(message))
        + _attachment_tokens(message.get("content"))
        for message in messages
    )


def _input_items(input: Any) -> list[dict[str, Any]]:
    """A Responses ``input`` as a list of items: a string is one user message."""
    if isinstance(input, str):
        return [{"role": "user", "content": input}]
    if isinstance(input, list):
        return [dict(item) for item in input if isinstance(item, Mapping)]
    return []


def _item_type(item: Mapping[str, Any]) -> Any:
    """An input item's type; a message may leave it out (``EasyInputMessage``)."""
    return item.get("type") or ("message" if "role" in item else None)


def _item_tokens(item: Mapping[str, Any]) -> int:
    kind = _item_type(item)
    if kind == "message":
        return 1 + count_tokens(message_text(item)) + _attachment_tokens(item.get("content"))
    if kind == "function_call":
        return 1 + count_tokens(str(item.get("name") or "") + str(item.get("arguments") or ""))
    if kind == "function_call_output":
        return 1 + count_tokens(message_text({"content": item.get("output")}))
    return 1


def count_input_tokens(input: str | Iterable[Mapping[str, Any]] | None, instructions: str | None = None) -> int:
    """Input tokens of a Responses request: per item, as `count_prompt_tokens` counts a message (a string
    ``input`` is one user message; a ``function_call`` counts its name and arguments, a
    ``function_call_output`` its output, any other item one), plus ``instructions`` as one more message."""
    items = _input_items(input if isinstance(input, str | None) else list(input))
    extra = 1 + count_tokens(instructions) if instructions else 0
    return extra + sum(_item_tokens(item) for item in items)


def make_usage(
    messages: Iterable[Mapping[str, Any]],
    reply: str,
    *,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    n: int = 1,
    cache_write_tokens: int = 0,
) -> dict[str, Any]:
    """The chat ``usage`` object the fake reports for ``messages`` answered with ``reply`` (``n`` choices).

    ``completion_tokens`` is ``n * count_tokens(reply) + reasoning_tokens``: as with OpenAI,
    reasoning tokens are part of the completion tokens. For tool calls, ``reply`` is their names and
    JSON arguments joined.
    """
    prompt_tokens = count_prompt_tokens(messages)
    completion_tokens = n * count_tokens(reply) + reasoning_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {
            "cached_tokens": cached_tokens,
            "cache_write_tokens": cache_write_tokens,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def make_response_usage(
    input: str | Iterable[Mapping[str, Any]] | None,
    reply: str,
    *,
    instructions: str | None = None,
    cached_tokens: int = 0,
    cache_write_tokens: int = 0,
    reasoning_tokens: int = 0,
) -> dict[str, Any]:
    """The Responses ``usage`` object the fake reports for ``input`` (and ``instructions``) answered with ``reply``.

    ``output_tokens`` is ``count_tokens(reply) + reasoning_tokens``; for function calls, ``reply`` is
    their names and JSON arguments joined.
    """
    input_tokens = count_input_tokens(input, instructions)
    output_tokens = count_tokens(reply) + reasoning_tokens
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": cache_write_tokens},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


# --------------------------------------------------------------------------------------------
# Structured output
# --------------------------------------------------------------------------------------------

_SCHEMA_DEPTH = 32
_SCALARS: dict[str, Any] = {"string": "example", "integer": 0, "number": 0, "boolean": False, "null": None}


def schema_instance(schema: Mapping[str, Any]) -> Any:
    """The smallest deterministic instance of a JSON schema, the fake's structured-output reply.

    Objects have their required properties only; strings are ``"example"``, integers and numbers
    ``0``, booleans ``false``, arrays hold ``minItems`` instances of their items (none by default);
    ``const`` and ``enum`` give their (first) value, ``anyOf``/``oneOf``/``allOf`` their first branch,
    a list of types its first non-null type, and ``$ref`` (``#``, ``#/$defs/...``) its target. A
    recursion deeper than 32 levels gives ``null``.
    """
    return _instance(schema, schema, 0)


def _instance(schema: Mapping[str, Any], root: Mapping[str, Any], depth: int) -> Any:
    if depth > _SCHEMA_DEPTH:
        return None
    if isinstance(ref := schema.get("$ref"), str):
        target: Any = root
        for name in ref.removeprefix("#").strip("/").split("/") if ref.strip("#/") else []:
            target = target.get(name, {}) if isinstance(target, Mapping) else {}
        return _instance(target if isinstance(target, Mapping) else {}, root, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(enum := schema.get("enum"), list) and enum:
        return enum[0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if isinstance(branches := schema.get(combinator), list) and branches and isinstance(branches[0], Mapping):
            return _instance(branches[0], root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        properties = schema.get("properties") if isinstance(schema.get("properties"), Mapping) else {}
        required = schema.get("required") if isinstance(schema.get("required"), list) else []
        return {
            name: _instance(properties.get(name) or {}, root, depth + 1) for name in required if isinstance(name, str)
        }
    if kind == "array":
        items = schema.get("items") if isinstance(schema.get("items"), Mapping) else {}
        count = schema.get("minItems") if isinstance(schema.get("minItems"), int) else 0
        return [_instance(items, root, depth + 1) for _ in range(count)]
    return _SCALARS.get(kind) if isinstance(kind, str) else None


# --------------------------------------------------------------------------------------------
# Scripted behaviours
# --------------------------------------------------------------------------------------------


def openai_error(message: str, type: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    """An OpenAI error body: ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_DEFAULT_ERRORS: dict[int, dict[str, Any]] = {
    400: openai_error("Invalid request.", "invalid_request_error"),
    401: openai_error(
        f"Incorrect API key provided. You can find your API key at {_API_KEYS_URL}.",
        "invalid_request_error",
        code="invalid_api_key",
    ),
    403: openai_error("You are not allowed to sample from this model.", "invalid_request_error"),
    404: openai_error("Not found.", "invalid_request_error"),
    408: openai_error("Request timed out.", "timeout"),
    409: openai_error("Conflict.", "invalid_request_error"),
    422: openai_error("Unprocessable entity.", "invalid_request_error"),
    429: openai_error(
        "Rate limit reached for requests. Please try again in 1s.", "requests", code="rate_limit_exceeded"
    ),
    500: openai_error("The server had an error while processing your request. Sorry about that!", "server_error"),
    502: openai_error("Bad gateway.", "cf_bad_gateway", code=502),
    503: openai_error("The server is overloaded or not ready yet.", "server_error"),
    504: openai_error("Gateway timeout.", "cf_gateway_timeout", code=504),
}

_SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"


@dataclass(frozen=True)
class ErrorResponse:
    """Answer with HTTP ``status`` at once (no `FakeOpenAI.delay`).

    ``body`` ``None`` sends OpenAI's error JSON for the status (generic for unusual ones); a dict
    is sent as JSON; a string is sent as is, with ``content_type`` (default ``text/html`` if it
    starts with ``<``, else ``text/plain``). ``headers`` are added, e.g. ``{"Retry-After": "1"}``.
    """

    status: int
    body: Mapping[str, Any] | str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None


@dataclass(frozen=True)
class Hang:
    """Wait ``seconds`` (on top of `FakeOpenAI.delay`), then answer normally.

    With ``after_chunks`` on a streamed request, the wait comes after that many SSE events instead
    of before the response, to stall a stream midway. The wait ends early when the server stops.
    """

    seconds: float
    after_chunks: int | None = None


@dataclass(frozen=True)
class Reset:
    """Read the request, then close the connection with a TCP RST (``SO_LINGER`` 0), answering nothing."""


@dataclass(frozen=True)
class BreakStream:
    """Send the response headers and ``after_chunks`` SSE events, then close the connection.

    The chunked body is left unterminated and no ``data: [DONE]`` (chat) or ``response.completed``
    (Responses) is sent. With ``rst`` the close is a TCP RST instead of a FIN. On a non-streamed
    request: half the JSON body, then the close.
    """

    after_chunks: int = 2
    rst: bool = False


@dataclass(frozen=True)
class StreamError:
    """On a streamed request: ``after_chunks`` SSE events, then an error event (as OpenAI sends when a
    response fails midway), then the end of the stream. ``message`` is the error's text.

    Chat Completions: ``event: error`` with ``{"error": {message, type: "server_error", ...}}``.
    Responses: ``event: error`` with ``{"type": "error", code, message, param: null, sequence_number}``.
    A non-streamed request is answered normally.
    """

    after_chunks: int = 2
    message: str = _SERVER_ERROR_MESSAGE
    code: str | None = "server_error"


@dataclass(frozen=True)
class ResponseFailed:
    """Responses: the response fails with ``error`` ``{code, message}`` (``code`` one of the SDK's
    ``ResponseError`` codes).

    Streamed: ``after_chunks`` SSE events, then ``response.failed`` carrying the response with status
    ``failed``, no output and no usage, then the end of the stream. Not streamed: that response, with
    HTTP 200. On Chat Completions it acts as a `StreamError` with ``message``.
    """

    after_chunks: int = 2
    message: str = _SERVER_ERROR_MESSAGE
    code: str = "server_error"


@dataclass(frozen=True)
class EndStream:
    """On a streamed request: ``after_chunks`` SSE events, then a cleanly terminated body with no finish
    reason, no usage and no ``data: [DONE]`` (chat) or no ``response.completed`` (Responses), as when a
    proxy ends the response early."""

    after_chunks: int = 2


@dataclass(frozen=True)
class NoUsage:
    """Answer normally but leave out the usage chunk even if ``stream_options.include_usage`` asked for it.

    On a non-streamed request, and in a Responses stream's last event, ``usage`` is ``null``.
    """


@dataclass(frozen=True)
class Reply:
    """Answer this one request with ``content`` and ``finish_reason`` instead of the usual reply.

    On Responses, ``finish_reason`` ``"length"`` makes the response ``incomplete`` with reason
    ``max_output_tokens``, and ``"content_filter"`` with reason ``content_filter``.
    """

    content: str
    finish_reason: str = "stop"


ToolCall = tuple[str, Mapping[str, Any] | str] | Mapping[str, Any]
"""One call of `ToolCalls`: ``(name, arguments)`` or ``{"name": ..., "arguments": ...}``; arguments are a dict
(sent as compact JSON) or a string (sent as is, e.g. to send JSON that does not parse)."""


@dataclass(frozen=True)
class ToolCalls:
    """Answer this one request with function calls instead of text.

    Chat Completions: ``message.tool_calls`` (ids ``call_...``), ``content`` null, ``finish_reason``
    ``"tool_calls"``; streamed, each call starts with a delta holding its id, type and name with empty
    arguments, then argument fragments follow. Responses: one ``function_call`` output item per call
    (ids ``fc_...``, ``call_id`` ``call_...``, status completed), streamed with
    ``response.function_call_arguments.delta``/``.done`` events.
    """

    calls: Sequence[ToolCall]

    def __post_init__(self) -> None:
        """Check the calls now, so a bad script fails in the test, not in the server."""
        object.__setattr__(self, "calls", tuple(self.calls))
        self.functions()

    def functions(self) -> list[tuple[str, str]]:
        """The calls as ``(name, arguments JSON)`` pairs."""
        pairs = []
        for call in self.calls:
            if isinstance(call, Mapping):
                name, arguments = call.get("name"), call.get("arguments", {})
            elif isinstance(call, tuple) and len(call) == 2:
                name, arguments = call
            else:
                raise TypeError(f"not a tool call (name, arguments): {call!r}")
            if not isinstance(name, str) or not isinstance(arguments, Mapping | str):
                raise TypeError(f"a tool call needs a str name and dict or str arguments: {call!r}")
            encoded = arguments if isinstance(arguments, str) else json.dumps(arguments, separators=(",", ":"))
            pairs.append((name, encoded))
        return pairs


Behaviour = (
    ErrorResponse | Hang | Reset | BreakStream | StreamError | ResponseFailed | EndStream | NoUsage | Reply | ToolCalls
)
"""Anything `FakeOpenAI.script` accepts."""


def rate_limited(
    retry_after: float | None = 1,
    *,
    retry_after_ms: int | None = None,
    message: str = "Rate limit reached for requests. Please try again in 1s.",
    type: str = "requests",
    code: str = "rate_limit_exceeded",
) -> ErrorResponse:
    """A 429 with OpenAI's rate-limit error and ``Retry-After`` (seconds) and/or ``retry-after-ms`` headers."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = _number(retry_after)
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    return ErrorResponse(429, openai_error(message, type, code=code), headers)


def quota_exceeded() -> ErrorResponse:
    """The 429 OpenAI sends when the account is out of credit (not worth retrying)."""
    return ErrorResponse(
        429,
        openai_error(
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            code="insufficient_quota",
        ),
    )


def server_error(status: int = 500, headers: Mapping[str, str] | None = None) -> ErrorResponse:
    """A 5xx with OpenAI's (or Cloudflare's, for 502 and 504) error JSON."""
    return ErrorResponse(status, None, dict(headers or {}))


def bad_request(message: str = "Invalid request.", param: str | None = None, code: str | None = None) -> ErrorResponse:
    """A 400 ``invalid_request_error``.

    For instance ``bad_request("...", param="messages", code="context_length_exceeded")``.
    """
    return ErrorResponse(400, openai_error(message, "invalid_request_error", param, code))


def model_not_found(model: str) -> ErrorResponse:
    """The 404 OpenAI sends for a model that does not exist or is not available to the key."""
    return ErrorResponse(404, _model_not_found_body(model))


def _model_not_found_body(model: str) -> dict[str, Any]:
    return openai_error(
        f"The model `{model}` does not exist or you do not have access to it.",
        "invalid_request_error",
        code="model_not_found",
    )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# --------------------------------------------------------------------------------------------
# Refusals: what OpenAI answers 400 to, checked before anything is generated
# --------------------------------------------------------------------------------------------


class _Refused(Exception):
    """A request OpenAI would refuse; ``body`` is its error JSON, ``status`` its HTTP status."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        code: str | None = None,
        *,
        status: int = 400,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.body = body or openai_error(message, "invalid_request_error", param, code)


_UNPARSABLE_BODY = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
    "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
    "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
    "help center at help.openai.com.)"
)


def _values(values: Iterable[str]) -> str:
    """``'a', 'b', and 'c'``: how OpenAI lists the values it supports."""
    quoted = [f"'{value}'" for value in values]
    if len(quoted) <= 2:
        return " and ".join(quoted)
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1]


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a decimal", str: "a string", list: "an array"}
    return "null" if value is None else names.get(type(value), "an object")


def _invalid_value(value: Any, supported: Iterable[str], param: str) -> _Refused:
    return _Refused(f"Invalid value: '{value}'. Supported values are: {_values(supported)}.", param, "invalid_value")


def _unsupported(param: str) -> _Refused:
    return _Refused(
        f"Unsupported parameter: '{param}' is not supported with this model.", param, "unsupported_parameter"
    )


def _check_model(fake: FakeOpenAI, body: Mapping[str, Any]) -> None:
    """With ``strict_models``, OpenAI's 404 for a model the fake does not list."""
    model = body.get("model")
    if fake.strict_models and model not in fake.models and model not in fake.served_model:
        raise _Refused("model_not_found", status=404, body=_model_not_found_body(str(model)))


def _check_reasoning(
    fake: FakeOpenAI, model: str, body: Mapping[str, Any], effort: Any, effort_param: str, settings: Mapping[str, Any]
) -> None:
    """Effort values, reasoning settings on models that do not reason, and sampling on models that do.

    ``settings`` maps the other reasoning-only parameters (summary, verbosity) to their values.
    """
    if effort is not None and effort not in REASONING_EFFORTS:
        raise _invalid_value(effort, REASONING_EFFORTS, effort_param)
    if not fake.is_reasoning_model(model):
        for param, value in {effort_param: effort, **settings}.items():
            if value is not None:
                raise _unsupported(param)
        return
    accepted = fake.accepted_efforts.get(model)
    if effort is not None and accepted is not None and effort not in accepted:
        raise _Refused(
            f"Unsupported value: '{effort_param}' does not support '{effort}' with this model. "
            f"Supported values are: {_values(accepted)}.",
            effort_param,
            "unsupported_value",
        )
    if effort != "none":
        for param in ("temperature", "top_p"):
            if body.get(param) is not None:
                raise _unsupported(param)


def _check_chat_request(fake: FakeOpenAI, body: Any) -> dict[str, Any]:
    """The body of a chat completion request OpenAI would accept; else `_Refused`."""
    if not isinstance(body, dict):
        raise _Refused(_UNPARSABLE_BODY)
    for name in body:
        if name not in CHAT_PARAMETERS:
            raise _Refused(f"Unrecognized request argument supplied: {name}")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Refused("you must provide a model parameter")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        if messages is None:
            raise _Refused("Missing required parameter: 'messages'.", "messages", "missing_required_parameter")
        raise _Refused("Invalid 'messages'.", "messages", "invalid_value")
    _check_model(fake, body)
    _check_chat_messages(messages)
    if fake.is_reasoning_model(model) and body.get("max_tokens") is not None:
        raise _Refused(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "max_tokens",
            "unsupported_parameter",
        )
    effort = body.get("reasoning_effort")
    _check_reasoning(fake, model, body, effort, "reasoning_effort", {"verbosity": body.get("verbosity")})
    return body


def _check_chat_messages(messages: list[Any]) -> None:
    """Roles, and tool results paired with the tool calls of an earlier assistant message."""
    calls: dict[str, int] = {}  # tool_call_id -> index of the assistant message that made the call
    answered: set[str] = set()
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _Refused(
                f"Invalid type for 'messages[{i}]': expected an object, but got {_json_type(message)} instead.",
                f"messages[{i}]",
                "invalid_type",
            )
        role = message.get("role")
        if role is None:
            raise _Refused(
                f"Missing required parameter: 'messages[{i}].role'.",
                f"messages[{i}].role",
                "missing_required_parameter",
            )
        if role not in _CHAT_ROLES:
            raise _invalid_value(role, _CHAT_ROLES, f"messages[{i}].role")
        if role == "assistant" and isinstance(message.get("tool_calls"), list):
            for call in message["tool_calls"]:
                if isinstance(call, dict) and isinstance(call.get("id"), str):
                    calls[call["id"]] = i
        if role == "tool":
            if message.get("tool_call_id") not in calls:
                raise _Refused(
                    "Invalid parameter: messages with role 'tool' must be a response to a preceeding message with "
                    "'tool_calls'.",
                    f"messages.[{i}].role",
                )
            answered.add(message["tool_call_id"])
    if unanswered := [call_id for call_id in calls if call_id not in answered]:
        raise _Refused(
            "An assistant message with 'tool_calls' must be followed by tool messages responding to each "
            f"'tool_call_id'. The following tool_call_ids did not have response messages: {', '.join(unanswered)}",
            f"messages.[{calls[unanswered[0]]}].role",
        )


def _check_responses_request(fake: FakeOpenAI, body: Any) -> dict[str, Any]:
    """The body of a Responses request OpenAI would accept; else `_Refused`."""
    if not isinstance(body, dict):
        raise _Refused(_UNPARSABLE_BODY)
    for name in body:
        if name not in RESPONSES_PARAMETERS:
            raise _Refused(f"Unknown parameter: '{name}'.", name, "unknown_parameter")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Refused("Missing required parameter: 'model'.", "model", "missing_required_parameter")
    _check_model(fake, body)
    linked = any(body.get(name) is not None for name in ("previous_response_id", "conversation"))
    if body.get("input") is None and not linked and body.get("prompt") is None:
        raise _Refused("Missing required parameter: 'input'.", "input", "missing_required_parameter")
    _check_input(body.get("input"), linked)
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and limit < _MIN_OUTPUT_TOKENS:
        raise _Refused(
            "Invalid 'max_output_tokens': integer below minimum value. "
            f"Expected a value >= {_MIN_OUTPUT_TOKENS}, but got {limit} instead.",
            "max_output_tokens",
            "integer_below_min_value",
        )
    reasoning = body.get("reasoning") or {}
    text = body.get("text") or {}
    for param, value in (("reasoning", reasoning), ("text", text)):
        if not isinstance(value, dict):
            raise _Refused(
                f"Invalid type for '{param}': expected an object, but got {_json_type(value)} instead.",
                param,
                "invalid_type",
            )
    settings = {"reasoning.summary": reasoning.get("summary"), "text.verbosity": text.get("verbosity")}
    _check_reasoning(fake, model, body, reasoning.get("effort"), "reasoning.effort", settings)
    return body


def _check_input(input: Any, linked: bool) -> None:
    """Input items, message roles and content parts, and function calls paired with their outputs.

    With ``previous_response_id`` or ``conversation`` (``linked``) the calls may be stored at OpenAI,
    so pairs are not checked.
    """
    if input is None or isinstance(input, str):
        return
    if not isinstance(input, list):
        raise _Refused(
            "Invalid type for 'input': expected one of a string or array of input items, "
            f"but got {_json_type(input)} instead.",
            "input",
            "invalid_type",
        )
    calls: list[str] = []
    outputs: set[str] = set()
    for i, item in enumerate(input):
        if not isinstance(item, dict):
            raise _Refused(
                f"Invalid type for 'input[{i}]': expected an input item, but got {_json_type(item)} instead.",
                f"input[{i}]",
                "invalid_type",
            )
        kind = _item_type(item)
        if kind is None:
            raise _Refused(
                f"Missing required parameter: 'input[{i}].type'.", f"input[{i}].type", "missing_required_parameter"
            )
        if kind == "message":
            _check_input_message(item, i)
        elif kind == "function_call":
            calls.append(str(item.get("call_id")))
        elif kind == "function_call_output":
            call_id = str(item.get("call_id"))
            if call_id not in calls and not linked:
                raise _Refused(f"No tool call found for function call output with call_id {call_id}.", "input")
            outputs.add(call_id)
    missing = [call_id for call_id in calls if call_id not in outputs]
    if missing and not linked:
        raise _Refused(f"No tool output found for function call {missing[0]}.", "input")


def _check_input_message(item: Mapping[str, Any], i: int) -> None:
    role = item.get("role")
    if role not in _INPUT_ROLES:
        raise _invalid_value(role, _INPUT_ROLES, f"input[{i}].role")
    content = item.get("content")
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _Refused(
            f"Invalid type for 'input[{i}].content': expected one of a string or array of input content, "
            f"but got {_json_type(content)} instead.",
            f"input[{i}].content",
            "invalid_type",
        )
    allowed = _ASSISTANT_PARTS if role == "assistant" else _INPUT_PARTS
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in allowed:
            raise _invalid_value(kind, allowed, f"input[{i}].content[{j}]")
        if kind == "input_image":
            url = part.get("image_url")
            if url is None and part.get("file_id") is None:
                raise _Refused(
                    f"Missing required parameter: 'input[{i}].content[{j}].image_url'.",
                    f"input[{i}].content[{j}].image_url",
                    "missing_required_parameter",
                )
            if url is not None and not (isinstance(url, str) and url.startswith(("https://", "http://", "data:"))):
                raise _Refused(
                    f"Invalid 'input[{i}].content[{j}].image_url'. Expected a valid URL, "
                    "but got a value with an invalid format.",
                    f"input[{i}].content[{j}].image_url",
                    "invalid_value",
                )
        if kind == "input_file" and all(part.get(name) is None for name in ("file_url", "file_data", "file_id")):
            raise _Refused(
                f"Missing required parameter: 'input[{i}].content[{j}].file_id'.",
                f"input[{i}].content[{j}].file_id",
                "missing_required_parameter",
            )


# --------------------------------------------------------------------------------------------
# Recording
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it.

    ``headers`` has lower-cased names; ``body`` is the parsed JSON body (``None`` without a body,
    the raw text if it is not JSON). ``request_id`` is the ``x-request-id`` sent back;
    ``received_at`` is `time.monotonic` on arrival; ``client_port`` tells connections apart
    (equal ports: a reused keep-alive connection). ``behaviour`` is the scripted behaviour it
    consumed, if any.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    request_id: str
    received_at: float
    client_port: int = 0
    behaviour: Behaviour | None = None

    @property
    def api_key(self) -> str | None:
        """The bearer token of the ``Authorization`` header, if any."""
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None

    @property
    def json(self) -> dict[str, Any]:
        """The body if it is a JSON object, else ``{}``."""
        return self.body if isinstance(self.body, dict) else {}

    @property
    def model(self) -> str | None:
        """The requested model."""
        return self.json.get("model")

    @property
    def messages(self) -> list[dict[str, Any]]:
        """The request's messages (the conversation history sent)."""
        messages = self.json.get("messages")
        return messages if isinstance(messages, list) else []

    @property
    def input(self) -> list[dict[str, Any]]:
        """A Responses request's input items; a string ``input`` is one ``{"role": "user", "content": ...}``."""
        return _input_items(self.json.get("input"))

    @property
    def stream(self) -> bool:
        """Whether the request asked for a stream."""
        return self.json.get("stream") is True

    @property
    def max_completion_tokens(self) -> int | None:
        """``max_completion_tokens``, else the older ``max_tokens``, if either was sent (not enforced)."""
        value = self.json.get("max_completion_tokens")
        return self.json.get("max_tokens") if value is None else value


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------


class _Drop(Exception):
    """Raised by a handler after it has closed its connection on purpose."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    fake: FakeOpenAI


class FakeOpenAI:
    """A local OpenAI-compatible server; use as a context manager, or call `start` and `stop`.

    Settings are plain attributes, read on every request, so a test may change them at any time:

    - ``delay``: seconds to wait before each normal answer (simulated model latency).
    - ``stream_chunk_delay``: seconds to wait before each SSE event after the first.
    - ``reply``: the reply text, or a function of the request body (chat or Responses) returning it;
      ``None`` for structured output or ``"echo: " + <text of the last user message>``.
    - ``served_model``: requested model -> model reported in the response (snapshot names).
    - ``served_tier``: the ``service_tier`` reported on both endpoints; ``None`` (default) reports the
      requested one, with ``"auto"`` or none as ``"default"`` and ``"fast"`` as ``"priority"``.
    - ``cached_tokens``, ``cache_write_tokens``, ``reasoning_tokens``: reported in the usage details.
    - ``is_reasoning_model``: model name -> whether it reasons (default `is_reasoning_model`).
    - ``accepted_efforts``: model -> the reasoning efforts it accepts (others get 400
      ``unsupported_value``); a model not in it accepts all of `REASONING_EFFORTS` (default ``{}``).
    - ``reasoning_summary``: the summary text of a Responses reasoning item (given only when
      ``reasoning.summary`` is asked of a reasoning model with an effort other than ``"none"``), or a
      function of the request body; ``None`` for ``"Thought about: " + <last user text>``.
    - ``web_searches``: ``web_search_call`` items (query: the last user text) a response holds when
      the request has a web search tool (default 1, at most ``max_tool_calls``; none with
      ``tool_choice: "none"``).
    - ``citations``: (url, title) pairs; after a web search the text has one ``url_citation`` per pair,
      spanning the whole text (default `DEFAULT_CITATIONS`).
    - ``rejected_keys``: API keys answered with 401 ``invalid_api_key``; all others are accepted.
    - ``models``: ids listed by ``GET /v1/models``; with ``strict_models`` a request for a model
      neither in ``models`` nor in ``served_model`` gets OpenAI's 404 ``model_not_found``.
    - ``system_fingerprint``, ``extra_headers`` (added to every response).
    """

    def __init__(
        self,
        delay: float = 0.0,
        *,
        reply: str | Callable[[dict[str, Any]], str] | None = None,
        stream_chunk_delay: float = 0.0,
        served_model: Mapping[str, str] | None = None,
        cached_tokens: int = 0,
        reasoning_tokens: int = 0,
        rejected_keys: Iterable[str] = (),
        models: Iterable[str] = DEFAULT_MODELS,
        strict_models: bool = False,
        port: int = 0,
        verbose: bool = False,
        cache_write_tokens: int = 0,
    ) -> None:
        """Configure the server; it listens on 127.0.0.1:``port`` (0: a free port) once started."""
        self.delay = delay
        self.reply = reply
        self.stream_chunk_delay = stream_chunk_delay
        self.served_model: dict[str, str] = dict(served_model or {})
        self.served_tier: str | None = None
        self.cached_tokens = cached_tokens
        self.cache_write_tokens = cache_write_tokens
        self.reasoning_tokens = reasoning_tokens
        self.is_reasoning_model: Callable[[str], bool] = is_reasoning_model
        self.accepted_efforts: dict[str, tuple[str, ...]] = {}
        self.reasoning_summary: str | Callable[[dict[str, Any]], str] | None = None
        self.web_searches = 1
        self.citations: list[tuple[str, str]] = list(DEFAULT_CITATIONS)
        self.rejected_keys: set[str] = set(rejected_keys)
        self.models: list[str] = list(models)
        self.strict_models = strict_models
        self.system_fingerprint = "fp_fake0000"
        self.extra_headers: dict[str, str] = {}
        self.verbose = verbose
        self._port = port
        self._lock = threading.Lock()
        self._script: deque[Behaviour] = deque()
        self._requests: list[RecordedRequest] = []
        self._counter = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Bind 127.0.0.1 and serve in a daemon thread. Returns ``self``."""
        if self._server is not None:
            raise RuntimeError("FakeOpenAI is already started")
        self._stopping.clear()
        server = _Server(("127.0.0.1", self._port), _Handler)
        server.fake = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-openai", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: end hangs and delays, close every connection, wait for handler threads."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout)
        with self._lock:
            connections = dict(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for handler_thread in connections.values():
            handler_thread.join(max(0.0, deadline - time.monotonic()))
        self._server = None
        self._thread = None

    def __enter__(self) -> Self:
        """Start the server."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the server."""
        self.stop()

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._server is None:
            raise RuntimeError("FakeOpenAI is not started")
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>/v1``: the ``base_url`` for ``openai.OpenAI``."""
        return f"{self.url}/v1"

    # -- scripting and recording ------------------------------------------------------------------

    def script(self, *behaviours: Behaviour) -> None:
        """Queue behaviours; each chat completion or Responses request takes the next one (FIFO), then
        requests are normal.

        Requests rejected before that point (bad key, malformed body, a refused parameter, unknown
        model with ``strict_models``) and ``GET`` requests take none.
        """
        for behaviour in behaviours:
            if not isinstance(behaviour, Behaviour):
                raise TypeError(f"not a FakeOpenAI behaviour: {behaviour!r}")
        with self._lock:
            self._script.extend(behaviours)

    @property
    def pending(self) -> int:
        """How many scripted behaviours are still queued."""
        with self._lock:
            return len(self._script)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        """The recorded ``POST /v1/chat/completions`` requests."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/chat/completions"]

    @property
    def responses_requests(self) -> list[RecordedRequest]:
        """The recorded ``POST /v1/responses`` requests."""
        return [r for r in self.requests if r.method == "POST" and r.path == "/v1/responses"]

    @property
    def in_flight(self) -> int:
        """Chat completion and Responses requests being answered right now."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most chat completion and Responses requests answered at once since start or `reset`."""
        with self._lock:
            return self._max_in_flight

    def reset(self) -> None:
        """Forget queued behaviours, recorded requests and ``max_in_flight`` (settings are kept)."""
        with self._lock:
            self._script.clear()
            self._requests.clear()
            self._max_in_flight = self._in_flight

    # -- internals used by the handler ------------------------------------------------------------

    def _record(self, method: str, path: str, headers: dict[str, str], body: Any, port: int) -> RecordedRequest:
        with self._lock:
            self._counter += 1
            rid = f"req_{self._counter:032x}"
            request = RecordedRequest(method, path, headers, body, rid, time.monotonic(), port)
            self._requests.append(request)
            return request

    def _take(self, request: RecordedRequest) -> tuple[RecordedRequest, Behaviour | None]:
        with self._lock:
            behaviour = self._script.popleft() if self._script else None
            if behaviour is None:
                return request, None
            updated = dataclasses.replace(request, behaviour=behaviour)
            index = next(i for i in range(len(self._requests) - 1, -1, -1) if self._requests[i] is request)
            self._requests[index] = updated
            return updated, behaviour

    def _enter(self) -> None:
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def _register(self, conn: socket.socket) -> bool:
        with self._lock:
            if self._stopping.is_set():
                return False
            self._connections[conn] = threading.current_thread()
            return True

    def _unregister(self, conn: socket.socket) -> None:
        with self._lock:
            self._connections.pop(conn, None)

    def _sleep(self, seconds: float) -> bool:
        """Wait; False if the server began stopping meanwhile."""
        if seconds > 0:
            return not self._stopping.wait(seconds)
        return not self._stopping.is_set()

    def _answer(self, body: dict[str, Any], behaviour: Behaviour | None, text_format: Any) -> _Answer:
        """What to answer: a scripted reply or tool calls, ``reply``, a structured-output instance, or the echo.

        ``text_format`` is the request's ``response_format`` (chat) or ``text.format`` (Responses).
        """
        if isinstance(behaviour, Reply):
            return _Answer(behaviour.content, behaviour.finish_reason)
        if isinstance(behaviour, ToolCalls):
            return _Answer("", "tool_calls", tuple(behaviour.functions()))
        reply = self.reply
        if callable(reply):
            return _Answer(reply(body))
        if reply is not None:
            return _Answer(reply)
        if isinstance(text_format, dict) and text_format.get("type") == "json_object":
            return _Answer("{}")
        if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
            spec = text_format.get("json_schema", text_format)  # chat nests name and schema; Responses does not
            schema = spec.get("schema") if isinstance(spec, dict) else None
            instance = schema_instance(schema if isinstance(schema, dict) else {})
            return _Answer(json.dumps(instance, separators=(",", ":")))
        return _Answer("echo: " + _last_user_text(body))

    def _tier(self, requested: Any) -> str:
        """The ``service_tier`` a response reports."""
        if self.served_tier is not None:
            return self.served_tier
        if requested in (None, "auto"):
            return "default"
        return "priority" if requested == "fast" else str(requested)

    def _summary(self, body: dict[str, Any]) -> str:
        summary = self.reasoning_summary
        if callable(summary):
            return summary(body)
        return "Thought about: " + _last_user_text(body) if summary is None else summary


def _last_user_text(body: Mapping[str, Any]) -> str:
    """The text of the last user message of a chat request (``messages``) or a Responses request (``input``)."""
    messages = body.get("messages") if "messages" in body else _input_items(body.get("input"))
    users = [m for m in messages or [] if isinstance(m, Mapping) and m.get("role") == "user"]
    return message_text(users[-1]) if users else ""


# --------------------------------------------------------------------------------------------
# Answers in either wire format
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    """A reply before it is put in a wire format: text, or function calls as (name, arguments JSON)."""

    text: str
    finish_reason: str = "stop"
    calls: tuple[tuple[str, str], ...] = ()

    @property
    def billed(self) -> str:
        """The text whose `count_tokens` are the reply's output tokens (reasoning aside)."""
        return self.text + "".join(name + arguments for name, arguments in self.calls)


_PIECE = re.compile(r"\s*\S+|\s+")
_ARGUMENT_PIECE = re.compile(r"\w+|\W+")
_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def _suffix(rid: str) -> str:
    """The request's own hex digits, to make ids unique per request."""
    return rid.removeprefix("req_")[-24:]


def _chat_tool_calls(answer: _Answer, rid: str, choice: int) -> list[dict[str, Any]]:
    return [
        {
            "id": f"call_{_suffix(rid)}{choice:02x}{k:02x}",
            "type": "function",
            "function": {"name": name, "arguments": arguments},
        }
        for k, (name, arguments) in enumerate(answer.calls)
    ]


def _chat_completion(
    common: Mapping[str, Any], answer: _Answer, n: int, usage: dict[str, Any] | None, rid: str
) -> dict[str, Any]:
    """A whole ``chat.completion`` object."""
    choices = []
    for i in range(n):
        message: dict[str, Any] = {
            "role": "assistant",
            "content": None if answer.calls else answer.text,
            "refusal": None,
            "annotations": [],
        }
        if answer.calls:
            message["tool_calls"] = _chat_tool_calls(answer, rid, i)
        choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": answer.finish_reason})
    return {
        "id": common["id"],
        "object": "chat.completion",
        "created": common["created"],
        "model": common["model"],
        "choices": choices,
        "usage": usage,
        "service_tier": common["service_tier"],
        "system_fingerprint": common["system_fingerprint"],
    }


def _chat_chunks(
    body: Mapping[str, Any],
    common: Mapping[str, Any],
    answer: _Answer,
    n: int,
    usage: dict[str, Any] | None,
    rid: str,
) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects of a streamed answer; the usage chunk if asked for and ``usage``."""
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True

    def chunk(choices: list[dict[str, Any]], chunk_usage: dict[str, Any] | None = None) -> dict[str, Any]:
        event: dict[str, Any] = {
            "id": common["id"],
            "object": "chat.completion.chunk",
            "created": common["created"],
            "model": common["model"],
            "service_tier": common["service_tier"],
            "system_fingerprint": common["system_fingerprint"],
            "choices": choices,
        }
        if include_usage:
            event["usage"] = chunk_usage
        return event

    def choice(index: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}

    events: list[dict[str, Any]] = []
    for i in range(n):
        if not answer.calls:
            events.append(chunk([choice(i, {"role": "assistant", "content": "", "refusal": None})]))
            events.extend(chunk([choice(i, {"content": piece})]) for piece in _PIECE.findall(answer.text))
        for k, call in enumerate(_chat_tool_calls(answer, rid, i)):
            header = {"index": k, **call, "function": {**call["function"], "arguments": ""}}
            delta: dict[str, Any] = {"tool_calls": [header]}
            if k == 0:
                delta = {"role": "assistant", "content": None, "refusal": None, **delta}
            events.append(chunk([choice(i, delta)]))
            events.extend(
                chunk([choice(i, {"tool_calls": [{"index": k, "function": {"arguments": piece}}]})])
                for piece in _ARGUMENT_PIECE.findall(call["function"]["arguments"])
            )
        events.append(chunk([choice(i, {}, answer.finish_reason)]))
    if include_usage and usage is not None:
        events.append(chunk([], usage))
    return events


def _chat_interruption(behaviour: Behaviour | None, sent: int) -> bytes:
    """What a chat stream ends with when a behaviour cuts it short: an error event, or nothing."""
    if isinstance(behaviour, StreamError | ResponseFailed):
        return f"event: error\ndata: {json.dumps(openai_error(behaviour.message, 'server_error'))}\n\n".encode()
    return b""


def _web_searches(fake: FakeOpenAI, body: Mapping[str, Any]) -> int:
    """How many web search calls a response holds: `FakeOpenAI.web_searches` if a web search tool may run."""
    tools = body.get("tools")
    if not isinstance(tools, list) or body.get("tool_choice") == "none":
        return 0
    if not any(isinstance(tool, dict) and tool.get("type") in _WEB_SEARCH_TOOLS for tool in tools):
        return 0
    limit = body.get("max_tool_calls")
    return max(0, min(fake.web_searches, limit) if isinstance(limit, int) else fake.web_searches)


def _response(fake: FakeOpenAI, body: dict[str, Any], behaviour: Behaviour | None, rid: str) -> dict[str, Any]:
    """The whole ``response`` object answering a Responses request."""
    model: str = body["model"]
    reasoning = body.get("reasoning") or {}
    text = body.get("text") or {}
    answer = fake._answer(body, behaviour, text.get("format"))
    content, finish, reasoning_tokens = answer.text, answer.finish_reason, fake.reasoning_tokens
    limit = body.get("max_output_tokens")
    if isinstance(limit, int) and finish == "stop" and count_tokens(answer.billed) + reasoning_tokens > limit:
        reasoning_tokens = min(reasoning_tokens, limit)
        content, finish = content[: 4 * (limit - reasoning_tokens)], "length"
    incomplete = _INCOMPLETE_REASONS.get(finish)
    suffix = _suffix(rid)

    output: list[dict[str, Any]] = []
    if fake.is_reasoning_model(model) and reasoning.get("summary") is not None and reasoning.get("effort") != "none":
        summary = [{"type": "summary_text", "text": fake._summary(body)}]
        output.append({"id": f"rs_{suffix}{len(output):02d}", "type": "reasoning", "summary": summary})
    searches = _web_searches(fake, body)
    query = _last_user_text(body)
    for _ in range(searches):
        action = {"type": "search", "query": query, "queries": [query]}
        output.append(
            {"id": f"ws_{suffix}{len(output):02d}", "type": "web_search_call", "status": "completed", "action": action}
        )
    for k, (name, arguments) in enumerate(answer.calls):
        output.append(
            {
                "id": f"fc_{suffix}{len(output):02d}",
                "type": "function_call",
                "status": "completed",
                "call_id": f"call_{suffix}{k}",
                "name": name,
                "arguments": arguments,
            }
        )
    if not answer.calls and (content or not incomplete):
        annotations = [
            {"type": "url_citation", "url": url, "title": title, "start_index": 0, "end_index": len(content)}
            for url, title in (fake.citations if searches else [])
        ]
        part = {"type": "output_text", "text": content, "annotations": annotations, "logprobs": []}
        output.append(
            {
                "id": f"msg_{suffix}{len(output):02d}",
                "type": "message",
                "role": "assistant",
                "status": "incomplete" if incomplete else "completed",
                "content": [part],
            }
        )

    instructions = body.get("instructions") if isinstance(body.get("instructions"), str) else None
    usage = (
        None
        if isinstance(behaviour, NoUsage)
        else make_response_usage(
            body.get("input"),
            _Answer(content, finish, answer.calls).billed,
            instructions=instructions,
            cached_tokens=fake.cached_tokens,
            cache_write_tokens=fake.cache_write_tokens,
            reasoning_tokens=reasoning_tokens,
        )
    )
    conversation = body.get("conversation")
    created = int(time.time())
    return {
        "id": f"resp_{suffix}",
        "object": "response",
        "created_at": created,
        "status": "incomplete" if incomplete else "completed",
        "background": body.get("background") is True,
        "completed_at": None if incomplete else created,
        "conversation": {"id": conversation} if isinstance(conversation, str) else conversation,
        "error": None,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": limit,
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": body.get("metadata") or {},
        "model": fake.served_model.get(model, model),
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "prompt": body.get("prompt"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "prompt_cache_retention": body.get("prompt_cache_retention"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": fake._tier(body.get("service_tier")),
        "store": body.get("store") is not False,
        "temperature": 1.0 if body.get("temperature") is None else body["temperature"],
        "text": {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "top_logprobs": body.get("top_logprobs") or 0,
        "top_p": 1.0 if body.get("top_p") is None else body["top_p"],
        "truncation": body.get("truncation") or "disabled",
        "usage": usage,
        "user": body.get("user"),
    }


def _in_progress(response: Mapping[str, Any]) -> dict[str, Any]:
    """The response as ``response.created`` and ``response.in_progress`` carry it: nothing produced yet."""
    return {
        **response,
        "status": "in_progress",
        "completed_at": None,
        "incomplete_details": None,
        "output": [],
        "usage": None,
    }


def _failed(response: Mapping[str, Any], behaviour: ResponseFailed) -> dict[str, Any]:
    """The response as a `ResponseFailed` ends it."""
    return {
        **_in_progress(response),
        "status": "failed",
        "error": {"code": behaviour.code, "message": behaviour.message},
    }


def _response_events(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed response, in OpenAI's order, without their ``sequence_number``."""
    snapshot = _in_progress(response)
    events = [
        {"type": "response.created", "response": snapshot},
        {"type": "response.in_progress", "response": snapshot},
    ]
    for index, item in enumerate(response["output"]):
        events.extend(_item_events(index, item))
    final = "response.completed" if response["status"] == "completed" else "response.incomplete"
    events.append({"type": final, "response": response})
    return events


def _item_events(index: int, item: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The events that stream one output item, from ``response.output_item.added`` to ``.done``."""
    where = {"item_id": item["id"], "output_index": index}
    events: list[dict[str, Any]] = []

    def added(**changes: Any) -> None:
        events.append({"type": "response.output_item.added", "output_index": index, "item": {**item, **changes}})

    if item["type"] == "reasoning":
        added(summary=[])
        for s, part in enumerate(item["summary"]):
            at = {**where, "summary_index": s}
            events.append({"type": "response.reasoning_summary_part.added", **at, "part": {**part, "text": ""}})
            events.extend(
                {"type": "response.reasoning_summary_text.delta", **at, "delta": piece}
                for piece in _PIECE.findall(part["text"])
            )
            events.append({"type": "response.reasoning_summary_text.done", **at, "text": part["text"]})
            events.append({"type": "response.reasoning_summary_part.done", **at, "part": part})
    elif item["type"] == "web_search_call":
        added(status="in_progress")
        events.extend(
            {"type": f"response.web_search_call.{phase}", **where}
            for phase in ("in_progress", "searching", "completed")
        )
    elif item["type"] == "function_call":
        added(status="in_progress", arguments="")
        events.extend(
            {"type": "response.function_call_arguments.delta", **where, "delta": piece}
            for piece in _ARGUMENT_PIECE.findall(item["arguments"])
        )
        events.append({"type": "response.function_call_arguments.done", **where, "arguments": item["arguments"]})
    else:
        added(status="in_progress", content=[])
        for c, part in enumerate(item["content"]):
            at = {**where, "content_index": c}
            events.append(
                {"type": "response.content_part.added", **at, "part": {**part, "text": "", "annotations": []}}
            )
            events.extend(
                {"type": "response.output_text.delta", **at, "delta": piece, "logprobs": []}
                for piece in _PIECE.findall(part["text"])
            )
            events.extend(
                {"type": "response.output_text.annotation.added", **at, "annotation_index": a, "annotation": note}
                for a, note in enumerate(part["annotations"])
            )
            events.append({"type": "response.output_text.done", **at, "text": part["text"], "logprobs": []})
            events.append({"type": "response.content_part.done", **at, "part": part})
    events.append({"type": "response.output_item.done", "output_index": index, "item": item})
    return events


def _response_frame(event: Mapping[str, Any], sequence_number: int) -> bytes:
    """One Responses SSE event: ``event: <type>`` and ``data: <json>`` with its ``sequence_number``."""
    return f"event: {event['type']}\ndata: {json.dumps({**event, 'sequence_number': sequence_number})}\n\n".encode()


def _responses_interruption(behaviour: Behaviour | None, response: Mapping[str, Any], sent: int) -> bytes:
    """What a Responses stream ends with when a behaviour cuts it short: ``error``, ``response.failed`` or nothing."""
    if isinstance(behaviour, StreamError):
        error = {"type": "error", "code": behaviour.code, "message": behaviour.message, "param": None}
        return _response_frame(error, sent)
    if isinstance(behaviour, ResponseFailed):
        return _response_frame({"type": "response.failed", "response": _failed(response, behaviour)}, sent)
    return b""


def _mask_key(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return key[:3] + "*" * (len(key) - 7) + key[-4:]


_ROUTES = {("POST", "/v1/chat/completions"), ("POST", "/v1/responses"), ("GET", "/v1/models")}
_SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Transfer-Encoding": "chunked",
    "Cache-Control": "no-cache",
}


class _Handler(BaseHTTPRequestHandler):
    """Serves one connection (keep-alive) for a `FakeOpenAI`."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeOpenAI/1.0"
    disable_nagle_algorithm = True
    server: _Server
    _ERROR_TYPES: ClassVar[tuple[type[BaseException], ...]] = (_Drop, OSError, ValueError)

    # -- plumbing -------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        if not self.server.fake._register(self.connection):
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def finish(self) -> None:
        self.server.fake._unregister(self.connection)
        with contextlib.suppress(*self._ERROR_TYPES):
            super().finish()

    def handle(self) -> None:
        with contextlib.suppress(*self._ERROR_TYPES):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _read_body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def _send_head(self, status: int, request_id: str, headers: Mapping[str, str]) -> None:
        fake = self.server.fake
        self.send_response(status)
        self.send_header("x-request-id", request_id)
        self.send_header("openai-version", "2020-10-01")
        self.send_header("openai-processing-ms", "1")
        for name, value in {**fake.extra_headers, **headers}.items():
            self.send_header(name, value)
        self.end_headers()

    def _send_json(self, status: int, payload: Any, request_id: str, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self._send_bytes(status, data, "application/json", request_id, headers)

    def _send_bytes(
        self, status: int, data: bytes, content_type: str, request_id: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self._send_head(
            status, request_id, {"Content-Type": content_type, "Content-Length": str(len(data)), **(headers or {})}
        )
        self.wfile.write(data)

    def _drop(self, rst: bool) -> None:
        """Close the connection now (RST with ``rst``) and unwind the handler."""
        self.close_connection = True
        if rst:
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
        # The socket's fd is only really closed once the file objects made from it are closed.
        for stream in (self.rfile, self.wfile):
            with contextlib.suppress(*self._ERROR_TYPES):
                stream.close()
        self.connection.close()
        raise _Drop

    # -- routing --------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        fake = self.server.fake
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        headers = {name.lower(): value for name, value in self.headers.items()}
        body = self._read_body()
        request = fake._record(method, path, headers, body, self.client_address[1])
        rid = request.request_id

        if (method, path) not in _ROUTES and not (method == "GET" and path.startswith("/v1/models/")):
            self._send_json(404, openai_error(f"Invalid URL ({method} {path})", "invalid_request_error"), rid)
            return

        key = request.api_key
        if key is None:
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank "
                "username) if you're accessing the API from your browser and are prompted for a username and "
                f"password. You can obtain an API key from {_API_KEYS_URL}."
            )
            self._send_json(401, openai_error(message, "invalid_request_error"), rid)
            return
        if key in fake.rejected_keys:
            message = f"Incorrect API key provided: {_mask_key(key)}. You can find your API key at {_API_KEYS_URL}."
            self._send_json(401, openai_error(message, "invalid_request_error", code="invalid_api_key"), rid)
            return

        if method == "GET":
            self._models(path, rid)
            return
        fake._enter()
        try:
            if path == "/v1/responses":
                self._responses(request)
            else:
                self._chat(request)
        finally:
            fake._leave()

    def _models(self, path: str, rid: str) -> None:
        fake = self.server.fake
        ids = list(dict.fromkeys([*fake.models, *fake.served_model.values()]))
        objects = {mid: {"id": mid, "object": "model", "created": 1715367049, "owned_by": "system"} for mid in ids}
        if path == "/v1/models":
            self._send_json(200, {"object": "list", "data": list(objects.values())}, rid)
        elif (wanted := path.removeprefix("/v1/models/")) in objects:
            self._send_json(200, objects[wanted], rid)
        else:
            self._send_json(404, _model_not_found_body(wanted), rid)

    # -- answering ------------------------------------------------------------------------------

    def _chat(self, request: RecordedRequest) -> None:
        fake = self.server.fake
        rid = request.request_id
        try:
            body = _check_chat_request(fake, request.body)
        except _Refused as refused:
            self._send_json(refused.status, refused.body, rid)
            return
        request, behaviour = fake._take(request)
        stream = body.get("stream") is True
        if not self._wait_to_answer(behaviour, body["model"], stream, rid):
            return

        answer = fake._answer(body, behaviour, body.get("response_format"))
        n = body["n"] if isinstance(body.get("n"), int) and body["n"] > 0 else 1
        usage = make_usage(
            body["messages"],
            answer.billed,
            cached_tokens=fake.cached_tokens,
            reasoning_tokens=fake.reasoning_tokens,
            n=n,
            cache_write_tokens=fake.cache_write_tokens,
        )
        common = {
            "id": f"chatcmpl-fake{_suffix(rid)}",
            "created": int(time.time()),
            "model": fake.served_model.get(body["model"], body["model"]),
            "service_tier": fake._tier(body.get("service_tier")),
            "system_fingerprint": fake.system_fingerprint,
        }
        usage_or_none = None if isinstance(behaviour, NoUsage) else usage
        if stream:
            chunks = _chat_chunks(body, common, answer, n, usage_or_none, rid)
            frames = [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks]
            self._send_events(
                frames, behaviour, rid, lambda sent: _chat_interruption(behaviour, sent), b"data: [DONE]\n\n"
            )
            return
        self._send_body(_chat_completion(common, answer, n, usage_or_none, rid), behaviour, rid)

    def _responses(self, request: RecordedRequest) -> None:
        fake = self.server.fake
        rid = request.request_id
        try:
            body = _check_responses_request(fake, request.body)
        except _Refused as refused:
            self._send_json(refused.status, refused.body, rid)
            return
        request, behaviour = fake._take(request)
        stream = body.get("stream") is True
        if not self._wait_to_answer(behaviour, body["model"], stream, rid):
            return

        response = _response(fake, body, behaviour, rid)
        if stream:
            frames = [_response_frame(event, number) for number, event in enumerate(_response_events(response))]
            self._send_events(
                frames, behaviour, rid, lambda sent: _responses_interruption(behaviour, response, sent), b""
            )
        elif isinstance(behaviour, ResponseFailed):
            self._send_body(_failed(response, behaviour), None, rid)
        else:
            self._send_body(response, behaviour, rid)

    def _wait_to_answer(self, behaviour: Behaviour | None, model: str, stream: bool, rid: str) -> bool:
        """Apply the behaviours that act before an answer; False if one has answered already."""
        fake = self.server.fake
        if isinstance(behaviour, ErrorResponse):
            self._error_response(behaviour, model, rid)
            return False
        if isinstance(behaviour, Reset):
            self._drop(rst=True)
        if (
            isinstance(behaviour, Hang)
            and (behaviour.after_chunks is None or not stream)
            and not fake._sleep(behaviour.seconds)
        ):
            self._drop(rst=False)
        if not fake._sleep(fake.delay):
            self._drop(rst=False)
        return True

    def _send_body(self, payload: Mapping[str, Any], behaviour: Behaviour | None, rid: str) -> None:
        """A non-streamed answer; with `BreakStream`, half of it and then the close."""
        data = json.dumps(payload).encode()
        if isinstance(behaviour, BreakStream):
            self._send_head(200, rid, {"Content-Type": "application/json", "Content-Length": str(len(data))})
            self.wfile.write(data[: len(data) // 2])
            self._drop(rst=behaviour.rst)
        self._send_bytes(200, data, "application/json", rid)

    def _error_response(self, behaviour: ErrorResponse, model: str, rid: str) -> None:
        body = behaviour.body
        if body is None:
            if behaviour.status == 404:
                body = _model_not_found_body(model)
            else:
                body = _DEFAULT_ERRORS.get(behaviour.status) or openai_error(
                    f"Error {behaviour.status}.", "server_error" if behaviour.status >= 500 else "invalid_request_error"
                )
        if isinstance(body, str):
            content_type = behaviour.content_type or (
                "text/html; charset=utf-8" if body.lstrip().startswith("<") else "text/plain; charset=utf-8"
            )
            self._send_bytes(behaviour.status, body.encode(), content_type, rid, behaviour.headers)
        else:
            data = json.dumps(body).encode()
            content_type = behaviour.content_type or "application/json"
            self._send_bytes(behaviour.status, data, content_type, rid, behaviour.headers)

    def _send_events(
        self,
        frames: Sequence[bytes],
        behaviour: Behaviour | None,
        rid: str,
        interruption: Callable[[int], bytes],
        done: bytes,
    ) -> None:
        """Stream SSE ``frames`` as the scripted behaviour says, then ``done`` (if any) and the body's end.

        A stream a behaviour cuts short after ``sent`` frames ends with ``interruption(sent)``.
        """
        fake = self.server.fake
        self._send_head(200, rid, _SSE_HEADERS)
        for sent, frame in enumerate(frames):
            if isinstance(behaviour, BreakStream) and sent >= behaviour.after_chunks:
                self._drop(rst=behaviour.rst)
            if isinstance(behaviour, StreamError | ResponseFailed | EndStream) and sent >= behaviour.after_chunks:
                if last := interruption(sent):
                    self._write_chunk(last)
                self.wfile.write(b"0\r\n\r\n")
                return
            if isinstance(behaviour, Hang) and behaviour.after_chunks == sent and not fake._sleep(behaviour.seconds):
                self._drop(rst=False)
            if sent and not fake._sleep(fake.stream_chunk_delay):
                self._drop(rst=False)
            self._write_chunk(frame)
        if isinstance(behaviour, BreakStream):
            self._drop(rst=behaviour.rst)
        if done:
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))  # with the terminating chunk
        else:
            self.wfile.write(b"0\r\n\r\n")

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


def _main() -> None:
    """``python -m devtools.fake_openai [port] [delay]``: serve until interrupted."""
    import sys

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    with FakeOpenAI(delay, port=port, verbose=True) as fake:
        print(f"OPENAI_BASE_URL={fake.base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    _main()

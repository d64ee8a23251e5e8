"""A local, OpenAI-compatible HTTP server for tests and benchmarks.

`FakeOpenAI` serves the parts of the OpenAI REST API this project uses, on 127.0.0.1, in a
background thread, with the standard library only:

- ``POST /v1/chat/completions``: the Chat Completions wire format, plain and streamed (SSE over
  ``Transfer-Encoding: chunked``), with ``usage`` (cached and reasoning token details) and an
  ``x-request-id`` header (the `openai` SDK exposes it as ``completion._request_id``).
- ``GET /v1/models`` and ``GET /v1/models/{id}``.

Answers are deterministic: the reply is ``"echo: " + <last user message>`` unless ``reply`` says
otherwise, and token counts come from `count_prompt_tokens` and `count_tokens`, so a test can
compute the usage it expects. Faults are scripted per request with `FakeOpenAI.script`::

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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self

__all__ = [
    "BreakStream",
    "EndStream",
    "ErrorResponse",
    "FakeOpenAI",
    "Hang",
    "NoUsage",
    "RecordedRequest",
    "Reply",
    "Reset",
    "StreamError",
    "bad_request",
    "count_prompt_tokens",
    "count_tokens",
    "make_usage",
    "message_text",
    "model_not_found",
    "openai_error",
    "quota_exceeded",
    "rate_limited",
    "server_error",
]

DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini")
"""Model ids that ``GET /v1/models`` lists unless `FakeOpenAI.models` is changed."""

_API_KEYS_URL = "https://platform.openai.com/account/api-keys"


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


def count_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens of a request: per message, one plus `count_tokens` of its `message_text`."""
    return sum(1 + count_tokens(message_text(message)) for message in messages)


def make_usage(
    messages: Iterable[Mapping[str, Any]],
    reply: str,
    *,
    cached_tokens: int = 0,
    reasoning_tokens: int = 0,
    n: int = 1,
) -> dict[str, Any]:
    """The ``usage`` object the fake reports for ``messages`` answered with ``reply`` (``n`` choices).

    ``completion_tokens`` is ``n * count_tokens(reply) + reasoning_tokens``: as with OpenAI,
    reasoning tokens are part of the completion tokens.
    """
    prompt_tokens = count_prompt_tokens(messages)
    completion_tokens = n * count_tokens(reply) + reasoning_tokens
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


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

    The chunked body is left unterminated and no ``data: [DONE]`` is sent. With ``rst`` the close
    is a TCP RST instead of a FIN. On a non-streamed request: half the JSON body, then the close.
    """

    after_chunks: int = 2
    rst: bool = False


@dataclass(frozen=True)
class StreamError:
    """On a streamed request: ``after_chunks`` SSE events, then an ``error`` event (as OpenAI sends when a
    response fails midway), then the end of the stream. ``message`` is the error's text."""

    after_chunks: int = 2
    message: str = "The server had an error while processing your request. Sorry about that!"


@dataclass(frozen=True)
class EndStream:
    """On a streamed request: ``after_chunks`` SSE events, then a cleanly terminated body with no finish
    reason, no usage and no ``data: [DONE]``, as when a proxy ends the response early."""

    after_chunks: int = 2


@dataclass(frozen=True)
class NoUsage:
    """Answer normally but leave out the usage chunk even if ``stream_options.include_usage`` asked for it.

    On a non-streamed request, ``usage`` is ``null``.
    """


@dataclass(frozen=True)
class Reply:
    """Answer this one request with ``content`` and ``finish_reason`` instead of the usual reply."""

    content: str
    finish_reason: str = "stop"


Behaviour = ErrorResponse | Hang | Reset | BreakStream | StreamError | EndStream | NoUsage | Reply
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
    - ``reply``: the reply text, or a function of the request body returning it; ``None`` for
      ``"echo: " + <text of the last user message>``.
    - ``served_model``: requested model -> model reported in the response (snapshot names).
    - ``cached_tokens``, ``reasoning_tokens``: reported in the usage details.
    - ``rejected_keys``: API keys answered with 401 ``invalid_api_key``; all others are accepted.
    - ``models``: ids listed by ``GET /v1/models``; with ``strict_models`` a chat completion for a
      model neither in ``models`` nor in ``served_model`` gets OpenAI's 404 ``model_not_found``.
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
    ) -> None:
        """Configure the server; it listens on 127.0.0.1:``port`` (0: a free port) once started."""
        self.delay = delay
        self.reply = reply
        self.stream_chunk_delay = stream_chunk_delay
        self.served_model: dict[str, str] = dict(served_model or {})
        self.cached_tokens = cached_tokens
        self.reasoning_tokens = reasoning_tokens
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
        """Queue behaviours; each chat completion request takes the next one (FIFO), then requests are normal.

        Requests rejected before that point (bad key, malformed body, unknown model with
        ``strict_models``) and ``GET`` requests take none.
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
    def in_flight(self) -> int:
        """Chat completion requests being answered right now."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """The most chat completion requests answered at once since start or `reset`."""
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

    def _reply_for(self, body: dict[str, Any]) -> str:
        reply = self.reply
        if callable(reply):
            return reply(body)
        if reply is not None:
            return reply
        users = [m for m in body.get("messages", []) if isinstance(m, Mapping) and m.get("role") == "user"]
        return "echo: " + (message_text(users[-1]) if users else "")


def _mask_key(key: str) -> str:
    if len(key) <= 8:
        return "*" * len(key)
    return key[:3] + "*" * (len(key) - 7) + key[-4:]


_PIECE = re.compile(r"\s*\S+|\s+")


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

        if not path.startswith("/v1/") or not (
            (method == "POST" and path == "/v1/chat/completions")
            or (method == "GET" and (path == "/v1/models" or path.startswith("/v1/models/")))
        ):
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

    # -- chat completions -----------------------------------------------------------------------

    def _chat(self, request: RecordedRequest) -> None:
        fake = self.server.fake
        rid = request.request_id
        body = request.body
        if not isinstance(body, dict):
            message = (
                "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
                "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
                "valid JSON. If you have trouble figuring out how to fix this, please contact us through our "
                "help center at help.openai.com.)"
            )
            self._send_json(400, openai_error(message, "invalid_request_error"), rid)
            return
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._send_json(400, openai_error("you must provide a model parameter", "invalid_request_error"), rid)
            return
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            problem = "Missing required parameter: 'messages'." if messages is None else "Invalid 'messages'."
            code = "missing_required_parameter" if messages is None else "invalid_value"
            self._send_json(400, openai_error(problem, "invalid_request_error", "messages", code), rid)
            return
        if fake.strict_models and model not in fake.models and model not in fake.served_model:
            self._send_json(404, _model_not_found_body(model), rid)
            return

        request, behaviour = fake._take(request)
        if isinstance(behaviour, ErrorResponse):
            self._error_response(behaviour, model, rid)
            return
        if isinstance(behaviour, Reset):
            self._drop(rst=True)
        stream = body.get("stream") is True
        if (
            isinstance(behaviour, Hang)
            and (behaviour.after_chunks is None or not stream)
            and not fake._sleep(behaviour.seconds)
        ):
            self._drop(rst=False)
        if not fake._sleep(fake.delay):
            self._drop(rst=False)

        content, finish_reason = (
            (behaviour.content, behaviour.finish_reason)
            if isinstance(behaviour, Reply)
            else (fake._reply_for(body), "stop")
        )
        n = body.get("n") if isinstance(body.get("n"), int) and body["n"] > 0 else 1
        usage = make_usage(
            messages, content, cached_tokens=fake.cached_tokens, reasoning_tokens=fake.reasoning_tokens, n=n
        )
        completion_id = f"chatcmpl-fake{rid.removeprefix('req_')[-24:]}"
        common = {
            "id": completion_id,
            "created": int(time.time()),
            "model": fake.served_model.get(model, model),
            "service_tier": "default",
            "system_fingerprint": fake.system_fingerprint,
        }
        if stream:
            self._stream(body, behaviour, common, content, finish_reason, n, usage, rid)
            return

        completion = {
            "id": common["id"],
            "object": "chat.completion",
            "created": common["created"],
            "model": common["model"],
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
                for i in range(n)
            ],
            "usage": None if isinstance(behaviour, NoUsage) else usage,
            "service_tier": common["service_tier"],
            "system_fingerprint": common["system_fingerprint"],
        }
        data = json.dumps(completion).encode()
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

    def _stream(
        self,
        body: dict[str, Any],
        behaviour: Behaviour | None,
        common: dict[str, Any],
        content: str,
        finish_reason: str,
        n: int,
        usage: dict[str, Any],
        rid: str,
    ) -> None:
        fake = self.server.fake
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
            events.append(chunk([choice(i, {"role": "assistant", "content": "", "refusal": None})]))
            events.extend(chunk([choice(i, {"content": piece})]) for piece in _PIECE.findall(content))
            events.append(chunk([choice(i, {}, finish_reason)]))
        if include_usage and not isinstance(behaviour, NoUsage):
            events.append(chunk([], usage))

        self._send_head(
            200,
            rid,
            {
                "Content-Type": "text/event-stream; charset=utf-8",
                "Transfer-Encoding": "chunked",
                "Cache-Control": "no-cache",
            },
        )
        for sent, event in enumerate(events):
            if isinstance(behaviour, BreakStream) and sent >= behaviour.after_chunks:
                self._drop(rst=behaviour.rst)
            if isinstance(behaviour, StreamError | EndStream) and sent >= behaviour.after_chunks:
                if isinstance(behaviour, StreamError):
                    error = openai_error(behaviour.message, "server_error")
                    self._write_chunk(f"event: error\ndata: {json.dumps(error)}\n\n".encode())
                self.wfile.write(b"0\r\n\r\n")
                return
            if isinstance(behaviour, Hang) and behaviour.after_chunks == sent and not fake._sleep(behaviour.seconds):
                self._drop(rst=False)
            if sent and not fake._sleep(fake.stream_chunk_delay):
                self._drop(rst=False)
            self._write_chunk(f"data: {json.dumps(event)}\n\n".encode())
        if isinstance(behaviour, BreakStream):
            self._drop(rst=behaviour.rst)
        done = b"data: [DONE]\n\n"
        self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))  # with the terminating chunk

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

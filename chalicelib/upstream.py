"""Chat completions from OpenAI (or any OpenAI-compatible endpoint) through the openai SDK.

Retries are ours, not the SDK's, so that every attempt fits inside one deadline that keeps
the whole call under API Gateway's 29 seconds: 429 waits as long as Retry-After says when
that fits, 5xx, timeouts and connection resets back off exponentially, and anything that
cannot be retried in time becomes an UpstreamError with a message the user can act on.

Money first: an attempt that the upstream began to answer (a stream that broke, ran past the
deadline, ended without its last event or reported an error midway) was billed, so its usage
(the prompt, and the text that came back, estimated where the upstream sent no usage) travels
with the reply or the error, and is recorded like any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from chalicelib.logs import redact

if TYPE_CHECKING:
    import httpx
    from openai import OpenAI


CONNECT_TIMEOUT = 3.0
_ANSWER_NAMES = {"chat": "a chat completion", "responses": "a response"}


class UpstreamError(Exception):
    """The model could not answer. `message` is safe to show; nothing here holds a key."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        partial_content: str | None = None,
        latency_ms: int = 0,
        usage: Usage | None = None,
        cancelled: bool = False,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.cancelled = cancelled
        self.status = status
        self.retry_after = retry_after
        self.partial_content = partial_content
        self.latency_ms = latency_ms
        self.usage = usage


@dataclass(frozen=True)
class Usage:
    """Tokens as the upstream reported them (the same names on both wire formats), and billed tool calls."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    cache_write_tokens: int = 0
    web_search_calls: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            cached_tokens=self.cached_tokens + other.cached_tokens,
            reasoning_tokens=self.reasoning_tokens + other.reasoning_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
            web_search_calls=self.web_search_calls + other.web_search_calls,
            estimated=self.estimated or other.estimated,
        )


class ReportedError(Exception):
    """An error the upstream reported inside a stream it had begun (an error or response.failed event)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _AttemptBroke(Exception):
    """An attempt the upstream began to answer broke off; `usage` is what it was billed."""

    def __init__(self, cause: BaseException, usage: Usage, *, cut: bool = False) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.usage = usage
        self.cut = cut


@dataclass(frozen=True)
class Reply:
    """An answer, whichever wire format brought it. tool_calls: [{id, name, arguments}]; citations: [{url, title}]."""

    content: str
    model: str
    finish_reason: str | None
    usage: Usage
    request_id: str | None = None
    latency_ms: int = 0
    tool_calls: tuple[dict[str, str], ...] = ()
    citations: tuple[dict[str, str], ...] = ()
    reasoning_summary: str | None = None
    service_tier: str | None = None


@dataclass(frozen=True)
class CompletionRequest:
    """What to ask, in one object whichever wire format carries it: the full message list (Chat Completions
    shape: roles, content parts, tool calls and tool results) and every setting. `None` is not sent.

    The body goes out through the SDK's plain `post`, not `chat.completions.create`: ours is already in
    wire form, and create's request transformation costs about 20 ms of CPU for a session's 50 messages
    of history (measured), ten times what the whole gateway adds.
    """

    model: str
    messages: list[dict[str, Any]]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None
    reasoning_summary: str | None = None
    response_format: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    web_search: str | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    max_tool_calls: int | None = None


def estimate_tokens(text: str) -> int:
    """A rough token count (about four characters a token) for when upstream reports none."""
    return max(1, (len(text) + 3) // 4) if text else 0


def estimate_usage(messages: list[dict[str, Any]], reply: str) -> Usage:
    prompt = sum(estimate_tokens(message_text(message)) + 4 for message in messages)
    return Usage(prompt_tokens=prompt, completion_tokens=estimate_tokens(reply), estimated=True)


def message_text(message: dict[str, Any]) -> str:
    """The text of a message: its content, or its text parts, and the arguments of its tool calls."""
    content = message.get("content")
    text = content if isinstance(content, str) else ""
    if isinstance(content, list):
        text = "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        text += str(function.get("name") or "") + str(function.get("arguments") or "")
    return text


def _retry_after(response: httpx.Response | None) -> float | None:
    """Seconds to wait, from retry-after-ms or Retry-After (seconds or an HTTP date)."""
    if response is None:
        return None
    headers = response.headers
    try:
        if headers.get("retry-after-ms"):
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if not value:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=32)
def _client(api_key: str, base_url: str | None) -> OpenAI:
    # One client per key and endpoint per container: warm invocations reuse its connections.
    from openai import OpenAI

    return OpenAI(api_key=api_key, base_url=base_url, max_retries=0)


def _last_four(api_key: str) -> str:
    return api_key[-4:]


@dataclass
class Upstream:
    """An OpenAI-compatible endpoint with a time budget per call, spoken to in one wire format: "responses"
    (OpenAI's Responses API) or "chat" (Chat Completions, which every compatible endpoint has)."""

    base_url: str | None
    api: str = "chat"
    attempt_timeout: float = 25.0
    deadline: float = 25.0
    max_attempts: int = 3
    backoff: float = 0.25
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False)

    def complete(
        self,
        api_key: str,
        request: CompletionRequest,
        *,
        stream: bool = False,
        on_delta: Callable[[str], None] | None = None,
        cancelled: threading.Event | None = None,
    ) -> Reply:
        """Ask for one completion, retrying what may be retried within the deadline. Setting `cancelled`
        stops a stream at once (its socket is shut): an UpstreamError with `cancelled`, billed for what came.

        The reply's usage, or the UpstreamError's, includes what attempts that broke off were billed.
        """
        spent: list[Usage] = []
        try:
            reply = self._attempts(api_key, request, stream, on_delta, spent, cancelled or threading.Event())
        except UpstreamError as error:
            error.message = _without_key(error.message, api_key)
            error.args = (error.message,)
            if spent:
                billed = sum(spent[1:], spent[0])
                error.usage = billed + error.usage if error.usage else billed
            raise
        if not spent:
            return reply
        return dataclasses.replace(reply, usage=sum(spent, reply.usage))

    def _attempts(
        self,
        api_key: str,
        request: CompletionRequest,
        stream: bool,
        on_delta: Callable[[str], None] | None,
        spent: list[Usage],
        cancelled: threading.Event,
    ) -> Reply:
        import openai

        started = time.monotonic()
        client = _client(api_key, self.base_url)
        received: list[str] = []
        attempt = 0
        while True:
            attempt += 1
            remaining = self.deadline - (time.monotonic() - started)
            timeout = max(0.5, min(self.attempt_timeout, remaining))
            wait: float | None = None
            if cancelled.is_set():
                raise UpstreamError("Cancelled before OpenAI answered.", latency_ms=_ms(started), cancelled=True)
            try:
                if stream:
                    return self._stream(client, request, timeout, started, received, on_delta, cancelled)
                return self._once(client, request, timeout, started)
            except _AttemptBroke as broke:
                delay = self._backoff(attempt)
                if received:
                    raise UpstreamError(
                        _broke_message(broke, sum(map(len, received))),
                        status=getattr(broke.cause, "status_code", None),
                        partial_content="".join(received),
                        latency_ms=_ms(started),
                        usage=broke.usage,
                    ) from broke.cause
                spent.append(broke.usage)
                if not self._fits(attempt, started, delay):
                    raise UpstreamError(
                        _transient_message(broke.cause, attempt),
                        status=getattr(broke.cause, "status_code", None),
                        latency_ms=_ms(started),
                    ) from broke.cause
            except openai.AuthenticationError as error:
                raise UpstreamError(
                    f"OpenAI rejected the API key ending in ...{_last_four(api_key)} (401). "
                    "Set a working key with chitty_api_key_set, or revoke yours to use the server's.",
                    status=401,
                    latency_ms=_ms(started),
                ) from error
            except openai.RateLimitError as error:
                wait = _retry_after(error.response)
                if _error_code(error) == "insufficient_quota":
                    raise UpstreamError(
                        "OpenAI says the account behind this key is out of quota (429 insufficient_quota).",
                        status=429,
                        latency_ms=_ms(started),
                    ) from error
                delay = wait if wait is not None else self._backoff(attempt)
                if received or not self._fits(attempt, started, delay):
                    after = wait if wait is not None else delay
                    raise UpstreamError(
                        f"OpenAI is rate limiting this key (429); retry after {max(1, round(after))} s.",
                        status=429,
                        retry_after=after,
                        latency_ms=_ms(started),
                    ) from error
            except (openai.APITimeoutError, openai.APIConnectionError, openai.InternalServerError) as error:
                status = getattr(error, "status_code", None)
                delay = self._backoff(attempt)
                if not self._fits(attempt, started, delay):
                    raise UpstreamError(
                        _transient_message(error, attempt), status=status, latency_ms=_ms(started)
                    ) from error
            except openai.APIStatusError as error:
                raise UpstreamError(
                    f"OpenAI refused the request ({error.status_code}): {redact(_error_message(error))}",
                    status=error.status_code,
                    latency_ms=_ms(started),
                ) from error
            except openai.APIError as error:
                # An error the upstream reported in a response it had begun, before any of it was read.
                raise UpstreamError(
                    f"OpenAI reported an error: {redact(_error_message(error))}", latency_ms=_ms(started)
                ) from error
            self.sleep(wait if wait is not None else self._backoff(attempt))

    def _fits(self, attempt: int, started: float, delay: float) -> bool:
        """Is there another attempt left, and time for the wait plus a useful attempt?"""
        if attempt >= self.max_attempts:
            return False
        return time.monotonic() - started + delay + 1.0 < self.deadline

    def _backoff(self, attempt: int) -> float:
        return self.backoff * (2 ** (attempt - 1)) * (1 + random.random() / 2)

    def _wire(self) -> Any:
        if self.api == "responses":
            from chalicelib import openai_responses

            return openai_responses
        from chalicelib import openai_chat

        return openai_chat

    def _once(self, client: OpenAI, request: CompletionRequest, timeout: float, started: float) -> Reply:
        import httpx2

        wire = self._wire()
        # The SDK sends, authenticates and maps error statuses to its exceptions; the JSON of a success is
        # read here, as a dict: building the SDK's models costs more than everything else we add.
        response = client.post(
            wire.PATH, body=wire.body(request, False), cast_to=httpx2.Response, options={"timeout": _timeout(timeout)}
        )
        try:
            answer = json.loads(response.content)
            if not isinstance(answer, dict):
                raise TypeError("not an object")
            reply: Reply = wire.reply(answer, request)
        except (ValueError, AttributeError, TypeError) as error:
            raise UpstreamError(
                f"OpenAI answered {response.status_code} with a body that is not {_ANSWER_NAMES[self.api]}.",
                status=response.status_code,
                latency_ms=_ms(started),
            ) from error
        except UpstreamError as error:
            error.latency_ms = _ms(started)
            raise
        return dataclasses.replace(reply, request_id=response.headers.get("x-request-id"), latency_ms=_ms(started))

    def _stream(
        self,
        client: OpenAI,
        request: CompletionRequest,
        timeout: float,
        started: float,
        received: list[str],
        on_delta: Callable[[str], None] | None,
        cancelled: threading.Event,
    ) -> Reply:
        from openai import Stream

        wire = self._wire()
        events = client.post(
            wire.PATH,
            body=wire.body(request, True),
            cast_to=object,
            stream=True,
            stream_cls=Stream[object],
            options={"timeout": _timeout(timeout)},
        )
        watchdog = _Watchdog(events.response, started + self.deadline - time.monotonic(), cancelled)
        reader = wire.Stream(request)
        try:
            self._read_stream(events, reader, started, received, on_delta, cancelled)
            # Reading the last event is part of the attempt: a malformed one is billed like a broken stream.
            reply = reader.result()
        except Exception as error:
            # The upstream began answering, so the attempt was billed: what went out and what came back.
            billed = reader.billed()
            if isinstance(error, UpstreamError):
                error.usage = billed
                raise
            if cancelled.is_set():
                raise UpstreamError(
                    f"Cancelled after {sum(map(len, received))} characters of the reply; what was used is billed.",
                    partial_content="".join(received),
                    latency_ms=_ms(started),
                    usage=billed,
                    cancelled=True,
                ) from None
            if time.monotonic() - started >= self.deadline:
                overran = self._overran(started, received)
                overran.usage = billed
                raise overran from None
            raise _AttemptBroke(error, billed) from error
        finally:
            watchdog.done.set()
        if reply is None:
            # The stream ended without its last event (the connection closed early): not a complete answer.
            cut = ConnectionError("the stream ended before its last event")
            raise _AttemptBroke(cut, reader.billed(), cut=True)
        return dataclasses.replace(
            reply, request_id=events.response.headers.get("x-request-id"), latency_ms=_ms(started)
        )

    def _overran(self, started: float, received: list[str]) -> UpstreamError:
        return UpstreamError(
            f"The OpenAI stream was still going after {self.deadline:g} s, the most one call may take; "
            "the reply is incomplete. Ask for a shorter answer or try again.",
            partial_content="".join(received),
            latency_ms=_ms(started),
        )

    def _read_stream(
        self,
        events: Any,
        reader: Any,
        started: float,
        received: list[str],
        on_delta: Callable[[str], None] | None,
        cancelled: threading.Event,
    ) -> None:
        with events:
            for event in events:
                if cancelled.is_set():  # the watchdog shuts the socket too; this catches a transport without one
                    raise ConnectionAbortedError("cancelled")
                delta = reader.feed(event)
                if delta:
                    received.append(delta)
                    if on_delta is not None:
                        on_delta(delta)
                # Read timeouts only bound the gap between events; a steady trickle must stop at the deadline too.
                if time.monotonic() - started > self.deadline:
                    raise self._overran(started, received)


def _timeout(seconds: float) -> Any:
    """A whole-attempt budget, but a short connect timeout, so a dead endpoint is retried in time."""
    from openai import Timeout

    return Timeout(seconds, connect=min(CONNECT_TIMEOUT, seconds))


class _Watchdog:
    """Shuts the stream's socket when the deadline comes or `cancelled` is set: a stalled read ends at once."""

    def __init__(self, response: Any, seconds: float, cancelled: threading.Event) -> None:
        self.done = threading.Event()
        network = response.extensions.get("network_stream") if response is not None else None
        self._socket = network.get_extra_info("socket") if network is not None else None
        self._until = time.monotonic() + max(0.0, seconds)
        self._cancelled = cancelled
        if self._socket is not None:
            threading.Thread(target=self._watch, name="upstream-watchdog", daemon=True).start()

    def _watch(self) -> None:
        while not self.done.wait(min(0.25, max(0.0, self._until - time.monotonic()))):
            if self._cancelled.is_set() or time.monotonic() >= self._until:
                with contextlib.suppress(OSError):
                    self._socket.shutdown(socket.SHUT_RDWR)
                return


def _ms(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _error_body(error: Any) -> dict[str, Any]:
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        return inner if isinstance(inner, dict) else {}
    return {}


def _error_code(error: Any) -> str | None:
    code = _error_body(error).get("code") or getattr(error, "code", None)
    return str(code) if code else None


def _error_message(error: Any) -> str:
    message = _error_body(error).get("message") or getattr(error, "message", "") or "no details"
    return str(message)[:300]


def _broke_message(broke: _AttemptBroke, characters: int) -> str:
    import openai

    if broke.cut:
        return (
            f"The OpenAI stream ended after {characters} characters without its last event (the connection closed "
            "early); the reply is incomplete. Ask again."
        )
    if isinstance(broke.cause, ReportedError) or (
        isinstance(broke.cause, openai.APIError) and not isinstance(broke.cause, openai.APIConnectionError)
    ):
        return (
            f"OpenAI reported an error after {characters} characters of the reply: "
            f"{redact(_error_message(broke.cause))}. The reply is incomplete; ask again."
        )
    return f"The OpenAI stream broke after {characters} characters; the reply is incomplete. Ask again."


def _without_key(text: str, api_key: str) -> str:
    """The caller's key, whatever its shape, removed from a text bound for users, logs and the database."""
    return text.replace(api_key, "[REDACTED]") if len(api_key) >= 8 else text


def _transient_message(error: BaseException, attempts: int) -> str:
    import openai

    if isinstance(error, openai.APITimeoutError):
        what = "did not answer in time"
    elif isinstance(error, openai.APIConnectionError):
        what = "could not be reached (connection failed)"
    else:
        what = f"failed ({getattr(error, 'status_code', '5xx')})"
    return f"OpenAI {what} after {attempts} attempt{'s' if attempts > 1 else ''}; try again shortly."

"""HTTP-level rules of Streamable HTTP: requests and responses as plain data, Host/Origin checks, SSE."""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_BODY_BYTES = 1024 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass
class HttpRequest:
    """What the protocol layer needs of an HTTP request. Header names are lower-case."""

    method: str
    headers: Mapping[str, str]
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class HttpResponse:
    """An HTTP answer; `log` carries what the request log line should say about it."""

    status: int
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    log: dict[str, Any] = field(default_factory=dict)


def to_json(message: Any) -> str:
    """Compact JSON that always has a UTF-8 form: a lone surrogate a client sent (and we echo) is escaped."""
    text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, default=str)
    if not text.isascii() and _SURROGATE.search(text):
        return json.dumps(message, separators=(",", ":"), default=str)
    return text


def json_response(
    status: int, message: dict[str, Any] | list[dict[str, Any]], headers: dict[str, str] | None = None
) -> HttpResponse:
    return HttpResponse(
        status=status,
        body=to_json(message),
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def sse_response(messages: Iterable[dict[str, Any]]) -> HttpResponse:
    """An event stream of JSON-RPC messages, the final response last. No event ids: not resumable."""
    events = "".join("event: message\ndata: " + to_json(message) + "\n\n" for message in messages)
    return HttpResponse(
        status=200,
        body=events,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache, no-transform",
            "X-Accel-Buffering": "no",
        },
    )


def _split_host(value: str) -> tuple[str, str | None]:
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value.partition("]")
        return host + "]", rest[1:] if rest.startswith(":") else None
    host, _, port = value.partition(":")
    return host, port or None


def _host_matches(host: str, pattern: str) -> bool:
    # `[` opens a character class in fnmatch; here it is the literal bracket of an IPv6 host.
    return fnmatch.fnmatchcase(host, pattern.replace("[", "[[]"))


def host_allowed(host_header: str | None, allowed: Iterable[str]) -> bool:
    """Is the Host header one of ours? Entries are host names (any port), host:port, or globs."""
    if host_header is None:
        return True  # In-process invocations carry no Host; a browser always sends one.
    host, port = _split_host(host_header)
    for entry in allowed:
        if entry == "*":
            return True
        entry_host, entry_port = _split_host(entry)
        if _host_matches(host, entry_host) and (entry_port is None or entry_port == port):
            return True
    return False


def origin_allowed(origin: str | None, allowed: Iterable[str]) -> bool:
    """Is a browser Origin allowed? Absent is allowed (not a browser); `null` and strangers are not."""
    if origin is None:
        return True
    parts = urlsplit(origin.strip().lower())
    if not parts.scheme or not parts.hostname:
        return False
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = parts.port
    except ValueError:
        return False
    for entry in allowed:
        if entry == "*":
            return True
        want = urlsplit(entry.strip().lower())
        want_host = f"[{want.hostname}]" if want.hostname and ":" in want.hostname else want.hostname
        if want.scheme != parts.scheme or not want_host or not _host_matches(host, want_host):
            continue
        if want.port is None or want.port == port:
            return True
    return False


def accepts(accept: str | None, media_type: str) -> bool:
    """Does an Accept header admit a media type (wildcards included)? No header admits anything."""
    if not accept:
        return True
    kind = media_type.split("/")[0]
    for item in accept.split(","):
        value, _, params = item.strip().partition(";")
        value = value.strip().lower()
        if "q=0" in params.replace(" ", "") and "q=0." not in params.replace(" ", ""):
            continue
        if value in (media_type, f"{kind}/*", "*/*"):
            return True
    return False

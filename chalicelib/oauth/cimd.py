"""Clients known by a URL: OAuth Client ID Metadata Documents (draft-ietf-oauth-client-id-metadata-document).

A client_id that is an https URL names a JSON document, which the server fetches and uses as the client: its name
and its redirect URIs. The client chooses where that request goes, so it is held tight: public addresses only
(checked, then connected to, so that DNS cannot change them in between), TLS verified for the host name, no
redirects, status 200 and JSON only, 5 KB and 3 seconds at most. A valid document is kept in oauth_clients for as
long as its Cache-Control allows (5 minutes to 24 hours); a failure is never kept, and a stale copy never used.

Only the sign-in page's path for such a client imports this module: its imports stay off every cold start."""

from __future__ import annotations

import functools
import http.client
import io
import ipaddress
import json
import re
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import SplitResult, unquote, urlsplit

from chalicelib.oauth.protocol import redirect_uri_ok

if TYPE_CHECKING:
    from chalicelib.config import Settings
    from chalicelib.db import Database

T = TypeVar("T")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# The bounds of oauth_clients.client_id.
MIN_URL_CHARS, MAX_URL_CHARS = 16, 512
MAX_DOCUMENT_BYTES = 5 * 1024
MAX_HEADER_BYTES = 8 * 1024
# Room for chunked transfer coding's framing while receiving; the decoded document is held to 5 KB exactly.
FRAMING_BYTES = 1024
TIMEOUT_S = 3.0
MIN_FRESH_S, MAX_FRESH_S, DEFAULT_FRESH_S = 5 * 60, 24 * 3600, 3600
MAX_REDIRECT_URIS = 10
MAX_NAME_CHARS = 100
NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Printable ASCII without spaces: nothing in the URL can break the request line or smuggle a header.
URL_CHARACTERS = re.compile(r"[!-~]+")
JSON_MEDIA_TYPE = re.compile(r"application/(?:[A-Za-z0-9!#$&^_.-]+\+)?json")
USER_AGENT = "chitty-chatgpt-mcp (OAuth client metadata)"


class MetadataDocumentError(Exception):
    """The client's metadata document cannot be used; the message says why, for the person signing in."""


@dataclass(frozen=True)
class ClientDocument:
    """A fetched and valid metadata document: what the server keeps of it, and for how long."""

    client_id: str
    client_name: str
    redirect_uris: list[str]
    client_uri: str | None
    logo_uri: str | None
    fresh_s: int


def client_for(db: Database, client_id: str, settings: Settings) -> dict[str, Any] | None:
    """The client a metadata document URL names: the kept copy while it is fresh, else the document fetched,
    checked and kept now. None when the URL is a registered client's id (which never happens: those are no URLs).

    Raises MetadataDocumentError, with a message for the sign-in page, when the document cannot be used."""
    check_url(client_id)
    kept = db.one("fresh_metadata_document", client_id=client_id)
    if kept is not None:
        return kept
    document = fetch(client_id, allow_loopback=settings.oauth_cimd_allow_loopback, ca_file=settings.oauth_cimd_ca_file)
    return db.one(
        "store_metadata_document",
        client_id=document.client_id,
        client_name=document.client_name,
        redirect_uris=document.redirect_uris,
        client_uri=document.client_uri,
        logo_uri=document.logo_uri,
        fresh_s=document.fresh_s,
    )


def check_url(url: str) -> SplitResult:
    """The parts of a client_id URL that may be fetched: https, a host, a path without `.` or `..` segments, no
    user name or password, no fragment, 16 to 512 printable characters."""

    def refused(reason: str) -> MetadataDocumentError:
        return MetadataDocumentError(f"The application's client_id is not a usable metadata document URL: {reason}.")

    if not MIN_URL_CHARS <= len(url) <= MAX_URL_CHARS or not URL_CHARACTERS.fullmatch(url):
        raise refused(f"it must be {MIN_URL_CHARS} to {MAX_URL_CHARS} printable ASCII characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError:
        raise refused("it cannot be parsed") from None
    if not url.startswith("https://"):
        raise refused("it must be an https URL")
    if not parts.hostname:
        raise refused("it has no host")
    if "@" in parts.netloc:
        raise refused("it must not carry a user name or password")
    if "#" in url:
        raise refused("it must not have a fragment")
    if parts.path in ("", "/"):
        raise refused("it must have a path")
    # Percent-encoded dots too: a server may decode them and serve another path than the one named.
    if any(unquote(segment) in (".", "..") for segment in parts.path.split("/")):
        raise refused("its path must not have . or .. segments")
    return parts


def freshness(cache_control: str | None) -> int:
    """How long to keep a document, in seconds: its Cache-Control max-age clamped to 5 minutes..24 hours; the
    least with no-store or no-cache, and an hour when it says nothing."""
    directives: dict[str, str] = {}
    for directive in (cache_control or "").split(","):
        name, _, value = directive.partition("=")
        directives[name.strip().lower()] = value.strip().strip('"')
    if "no-store" in directives or "no-cache" in directives:
        return MIN_FRESH_S
    max_age = directives.get("max-age", "")
    if not (max_age.isascii() and max_age.isdigit()):
        return DEFAULT_FRESH_S
    return min(MAX_FRESH_S, max(MIN_FRESH_S, int(max_age)))


def fetch(url: str, *, allow_loopback: bool = False, ca_file: str | None = None) -> ClientDocument:
    """Fetch and check the document at a client_id URL. `allow_loopback` and `ca_file` are for tests: a document
    served on this machine, with a certificate of the test's own CA."""
    parts = check_url(url)
    host, port = cast(str, parts.hostname), parts.port or 443
    deadline = time.monotonic() + TIMEOUT_S
    addresses = _resolve(host, port, deadline)
    if not addresses or not all(_routable(address, allow_loopback) for address in addresses):
        raise _not_fetched(f"{host} is not at a public address")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
        f"User-Agent: {USER_AGENT}\r\nConnection: close\r\n\r\n"
    ).encode("ascii")
    try:
        received = _exchange(addresses, port, host, request, _tls_context(ca_file), deadline)
    except ssl.SSLCertVerificationError as error:
        raise _not_fetched(f"its TLS certificate is not valid for {host} ({error.verify_message})") from None
    except (ssl.SSLError, OSError) as error:
        raise _not_fetched(f"the connection to {host} failed ({error.strerror or error})") from None
    response = http.client.HTTPResponse(cast(socket.socket, _Received(received)), method="GET")
    try:
        response.begin()
        body = response.read() if response.status == 200 else b""
    except http.client.HTTPException:
        raise _not_fetched("its answer is not valid HTTP") from None
    if 300 <= response.status < 400:
        raise _not_fetched(f"it answered {response.status}, a redirect, which is not followed")
    if response.status != 200:
        raise _not_fetched(f"it answered {response.status} {response.reason}".rstrip())
    media_type = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
    if not JSON_MEDIA_TYPE.fullmatch(media_type):
        raise _not_fetched(f"its content type is {media_type or 'missing'}, not application/json")
    if len(body) > MAX_DOCUMENT_BYTES:
        raise _not_fetched("it is larger than 5 KB")
    return parse(url, body, response.getheader("Cache-Control"))


def parse(url: str, body: bytes, cache_control: str | None = None) -> ClientDocument:
    """Check a document fetched from `url`: its own client_id is that URL, it is a public client (no secret), it
    names itself and lists 1 to 10 https or loopback http redirect URIs."""

    def invalid(reason: str) -> MetadataDocumentError:
        return MetadataDocumentError(f"The application's metadata document cannot be used: {reason}.")

    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise invalid("it is not JSON") from None
    if not isinstance(document, dict):
        raise invalid("it is not a JSON object")
    # Simple string comparison (the draft's section 4.1): no normalization that could make two URLs one.
    if document.get("client_id") != url:
        raise invalid("its client_id is not the URL it was fetched from")
    if "client_secret" in document or "client_secret_expires_at" in document:
        raise invalid("it carries a client secret, which a document cannot (it is public)")
    if document.get("token_endpoint_auth_method", "none") != "none":
        raise invalid("its token_endpoint_auth_method must be none")
    uris = document.get("redirect_uris")
    if not (isinstance(uris, list) and 1 <= len(uris) <= MAX_REDIRECT_URIS):
        raise invalid(f"its redirect_uris must list 1 to {MAX_REDIRECT_URIS} addresses")
    for uri in uris:
        if not _web_redirect_uri(uri):
            raise invalid(f"its redirect URI {str(uri)[:100]} is neither https nor loopback http")
    name = document.get("client_name")
    if not isinstance(name, str) or not name.strip():
        raise invalid("it has no client_name")
    return ClientDocument(
        client_id=url,
        client_name=name.strip()[:MAX_NAME_CHARS],
        redirect_uris=uris,
        client_uri=_https_uri(document.get("client_uri")),
        logo_uri=_https_uri(document.get("logo_uri")),
        fresh_s=freshness(cache_control),
    )


def _not_fetched(reason: str) -> MetadataDocumentError:
    return MetadataDocumentError(f"The application's metadata document could not be fetched: {reason}.")


def _web_redirect_uri(uri: Any) -> bool:
    """A redirect URI as registration allows it, but no app's own scheme: a document is on the web."""
    try:
        return redirect_uri_ok(uri) and urlsplit(uri).scheme in ("https", "http")
    except ValueError:  # urlsplit refuses a malformed IPv6 host
        return False


def _https_uri(value: Any) -> str | None:
    """An optional URI of the document (client_uri, logo_uri): kept when it is https, else left out."""
    if not isinstance(value, str) or len(value) > 2000 or not URL_CHARACTERS.fullmatch(value):
        return None
    return value if value.startswith("https://") else None


def _routable(address: IPAddress, allow_loopback: bool) -> bool:
    """Whether the server may connect to this address: a globally routable one, judged by the IPv4 address inside
    an IPv4-mapped, NAT64 or 6to4 one (Python calls 64:ff9b::a00:1, which reaches 10.0.0.1, global)."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = address.ipv4_mapped or address.sixtofour
        if inner is None and address in NAT64:
            inner = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        address = inner or address
    if allow_loopback and address.is_loopback:
        return True
    # fec0::/10 (site-local, deprecated) is "global" to Python 3.11, and private in practice.
    site_local = isinstance(address, ipaddress.IPv6Address) and address.is_site_local
    return address.is_global and not address.is_multicast and not address.is_reserved and not site_local


def _resolve(host: str, port: int, deadline: float) -> list[IPAddress]:
    """The host's addresses (an IP literal is its own). getaddrinfo has no timeout: it runs on a thread that the
    deadline may leave behind."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    found: list[list[IPAddress] | Exception] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.append(list(dict.fromkeys(ipaddress.ip_address(info[4][0]) for info in infos)))
        except (OSError, UnicodeError) as error:  # UnicodeError: a host name IDNA cannot encode
            found.append(error)

    thread = threading.Thread(target=lookup, name="cimd-resolve", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if not found:
        raise _too_slow()
    if isinstance(found[0], Exception):
        raise _not_fetched(f"{host} cannot be resolved")
    return found[0]


@functools.lru_cache(maxsize=2)
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trusted CAs (and, for tests, those of `ca_file` too); reused by a warm container."""
    context = ssl.create_default_context()
    if ca_file:
        context.load_verify_locations(ca_file)
    return context


def _exchange(
    addresses: list[IPAddress], port: int, host: str, request: bytes, context: ssl.SSLContext, deadline: float
) -> bytes:
    """Send the request to the first address that connects, over TLS verified for `host`, and receive the whole
    answer (the server closes after it: Connection: close), never more than the limits allow nor past the
    deadline."""
    sock = _connect(addresses, port, deadline)
    with sock, context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False) as tls:
        # Non-blocking, waited on with the time left: a socket timeout starts over with every byte a slow server
        # drips, and would let it hold the request for as long as it likes.
        tls.setblocking(False)
        _in_time(tls, tls.do_handshake, deadline)
        # A request this small goes out in one TLS record, whole or not at all.
        _in_time(tls, functools.partial(tls.sendall, request), deadline)
        received = bytearray()
        while chunk := _in_time(tls, functools.partial(tls.recv, 4096), deadline):
            received += chunk
            head = received.find(b"\r\n\r\n")
            if head < 0 and len(received) > MAX_HEADER_BYTES:
                raise _not_fetched("its headers are larger than 8 KB")
            if head >= 0 and len(received) - head - 4 > MAX_DOCUMENT_BYTES + FRAMING_BYTES:
                raise _not_fetched("it is larger than 5 KB")
    return bytes(received)


def _connect(addresses: list[IPAddress], port: int, deadline: float) -> socket.socket:
    """A TCP connection to the first of the checked addresses that answers in time."""
    failure: OSError | None = None
    for address in addresses:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        try:
            return socket.create_connection((str(address), port), timeout=remaining)
        except OSError as error:
            failure = error
    if failure is None or time.monotonic() >= deadline:
        raise _too_slow()
    raise _not_fetched(f"it cannot be reached ({failure.strerror or failure})")


def _in_time(tls: ssl.SSLSocket, operation: Callable[[], T], deadline: float) -> T:
    """Run a non-blocking TLS operation to its end, waiting on the socket as TLS asks, never past the deadline."""
    while True:
        try:
            return operation()
        except ssl.SSLWantReadError:
            readable, writable = [tls], []
        except ssl.SSLWantWriteError:
            readable, writable = [], [tls]
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not any(select.select(readable, writable, [], remaining)):
            raise _too_slow()


def _too_slow() -> MetadataDocumentError:
    return _not_fetched(f"it did not answer within {TIMEOUT_S:g} seconds")


class _Received:
    """The answer already received, where http.client reads a response from: it parses status line, headers, and
    chunked or sized bodies (a body cut short is an error there)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)

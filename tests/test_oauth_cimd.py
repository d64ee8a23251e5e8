"""Clients known by a URL (OAuth Client ID Metadata Documents): a client_id that is an https URL is fetched and
used as the client. Only public addresses are fetched; a document that is redirected, too large, too slow, not
JSON, not about its own URL or carrying a secret is refused on the sign-in page, and nothing is kept of it. A good
one is kept for its max-age and not fetched again meanwhile; a stale one is fetched again, never served. The
official MCP Python SDK, given a client metadata URL, skips registration and signs in with it.

The documents are served over https by a host of the test's own on 127.0.0.1, with a certificate of a throwaway
CA: the server under test allows loopback hosts and trusts that CA only through its test-only settings."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
import re
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from html import unescape
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
import pg8000.native
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from mcp.client.auth import OAuthClientProvider
from mcp.client.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

from chalicelib.config import get_settings
from chalicelib.db import Database
from chalicelib.oauth import cimd
from tests.clients import TokenMemory
from tests.conftest import PASSWORD, Server, free_port, server_env, start_server

CLIENT_NAME = "Desk Notes"
REDIRECT = "http://127.0.0.1:9/callback"
SDK_REDIRECT = "http://127.0.0.1:33419/callback"
# The name the SDK would register under (the document names itself CLIENT_NAME): no client may bear it.
SDK_CLIENT_NAME = "Python SDK signing in by URL"


@dataclasses.dataclass(frozen=True)
class Certificates:
    """A throwaway CA, and a server certificate it issued for 127.0.0.1 (by IP address, no name)."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def make_certificates(directory: Path) -> Certificates:
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Chitty CIMD test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(IPv4Address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    certificates = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    certificates.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    certificates.cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    certificates.key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return certificates


@dataclasses.dataclass
class Answer:
    body: bytes
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0


class DocumentHost:
    """An https server on 127.0.0.1 that answers each path as the test set it (`serve`), and counts the requests
    of each path (`hits`)."""

    def __init__(self, certificates: Certificates) -> None:
        self.answers: dict[str, Answer] = {}
        self.hits: Counter[str] = Counter()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                host.hits[path] += 1
                answer = host.answers.get(path, Answer(b"{}", status=404))
                time.sleep(answer.delay_s)
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        class Quiet(ThreadingHTTPServer):
            # The server under test hangs up on a slow answer, or on a certificate it refuses: no traceback for it.
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificates.cert_file, certificates.key_file)
        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, name="cimd-host", daemon=True).start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    def serve(self, path: str, body: bytes, **answer: Any) -> str:
        """Answer `path` with this body (and status, content_type, headers, delay_s); its URL."""
        self.answers[path] = Answer(body, **answer)
        return self.url(path)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def document(client_id: str, **changes: Any) -> bytes:
    """A good metadata document for `client_id`, with these fields changed (None: left out)."""
    fields = {
        "client_id": client_id,
        "client_name": CLIENT_NAME,
        "redirect_uris": [REDIRECT],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
        **changes,
    }
    return json.dumps({name: value for name, value in fields.items() if value is not None}).encode()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("cimd-ca"))


@pytest.fixture(scope="module")
def host(certificates: Certificates) -> Iterator[DocumentHost]:
    running = DocumentHost(certificates)
    yield running
    running.close()


@pytest.fixture(scope="module")
def cimd_server(database_url, fake_openai_server, certificates, tmp_path_factory) -> Iterator[Server]:
    """A server with sign-in whose public URL is its own address, allowed to fetch documents from loopback hosts
    that present a certificate of the test's CA (its test-only settings)."""
    port = free_port()
    env = {
        **server_env(database_url, fake_openai_server),
        "CHITTY_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "CHITTY_OAUTH_CIMD_ALLOW_LOOPBACK": "1",
        "CHITTY_OAUTH_CIMD_CA_FILE": str(certificates.ca_file),
    }
    running = start_server(tmp_path_factory.mktemp("cimd"), env, port=port)
    yield running
    running.stop()


def authorize(server: Server, client_id: str, **extra: str) -> httpx2.Response:
    """The sign-in page for an authorization request of this client, as the browser gets it."""
    challenge = base64.urlsafe_b64encode(hashlib.sha256(secrets.token_bytes(32)).digest()).rstrip(b"=").decode()
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "s-1",
        "scope": "mcp",
        **extra,
    }
    return httpx2.get(server.base_url + "/authorize", params=params, timeout=20)


def refusal(page: httpx2.Response) -> str:
    """The reason a page that cannot sign in gives; it is shown, never redirected."""
    assert page.status_code == 400, page.text
    assert "location" not in page.headers
    text = unescape(page.text)
    assert "Cannot sign in" in text
    return text


def kept(conn: pg8000.native.Connection, client_id: str) -> list[dict[str, Any]]:
    """The rows kept of a client."""
    rows = conn.run(
        "SELECT kind, client_name, redirect_uris, fetched_at, fresh_until FROM oauth_clients WHERE client_id = :c",
        c=client_id,
    )
    names = ("kind", "client_name", "redirect_uris", "fetched_at", "fresh_until")
    return [dict(zip(names, row, strict=True)) for row in rows]


# The URL and address rules, before anything is fetched.


@pytest.fixture
def settings() -> Any:
    """The production settings: no loopback host, no extra CA."""
    return dataclasses.replace(get_settings(), oauth_cimd_allow_loopback=False, oauth_cimd_ca_file=None)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://desk.example/client.json", "it must be an https URL"),
        ("https://alice:pw@desk.example/client.json", "must not carry a user name or password"),
        ("https://desk.example/client.json#frag", "must not have a fragment"),
        ("https://desk.example/apps/../client.json", "must not have . or .. segments"),
        ("https://desk.example/apps/./client.json", "must not have . or .. segments"),
        ("https://desk.example/apps/%2e%2E/client.json", "must not have . or .. segments"),
        ("https://desk.example/", "it must have a path"),
        ("https://desk.example/" + "a" * 500, "16 to 512 printable ASCII characters"),
        ("https://desk.example/client json", "16 to 512 printable ASCII characters"),
        ("https://10.1.2.3/client.json", "10.1.2.3 is not at a public address"),
        ("https://192.168.0.10/client.json", "is not at a public address"),
        ("https://127.0.0.1/client.json", "127.0.0.1 is not at a public address"),
        ("https://[::1]/client.json", "::1 is not at a public address"),
        ("https://localhost/client.json", "localhost is not at a public address"),
        ("https://169.254.169.254/latest/meta-data", "is not at a public address"),
        ("https://[fe80::1]/client.json", "is not at a public address"),
        ("https://[::ffff:10.0.0.1]/client.json", "is not at a public address"),
        ("https://[::ffff:127.0.0.1]/client.json", "is not at a public address"),
        ("https://[64:ff9b::a00:1]/client.json", "is not at a public address"),
        ("https://[64:ff9b::7f00:1]/client.json", "is not at a public address"),
        ("https://[2002:a00:1::]/client.json", "is not at a public address"),
        ("https://100.64.0.1/client.json", "is not at a public address"),
        ("https://0.0.0.0/client.json", "is not at a public address"),
    ],
)
def test_a_url_or_address_out_of_bounds_is_refused_before_any_fetch(
    db: Database, conn: pg8000.native.Connection, settings: Any, url: str, reason: str
) -> None:
    with pytest.raises(cimd.MetadataDocumentError) as refused:
        cimd.client_for(db, url, settings)
    assert reason in str(refused.value)
    assert kept(conn, url) == []


def test_a_loopback_host_needs_the_test_setting_and_its_ca_too(
    db: Database, conn: pg8000.native.Connection, settings: Any, host: DocumentHost
) -> None:
    url = host.serve("/loopback.json", document(host.url("/loopback.json")))
    with pytest.raises(cimd.MetadataDocumentError, match="is not at a public address"):
        cimd.client_for(db, url, settings)
    untrusted = dataclasses.replace(settings, oauth_cimd_allow_loopback=True)
    with pytest.raises(cimd.MetadataDocumentError, match="TLS certificate is not valid"):
        cimd.client_for(db, url, untrusted)
    assert host.hits["/loopback.json"] == 0
    assert kept(conn, url) == []


def test_the_cache_lasts_for_max_age_within_five_minutes_and_a_day() -> None:
    assert cimd.freshness("public, max-age=600") == 600
    assert cimd.freshness("max-age=5") == 300
    assert cimd.freshness("max-age=31536000, immutable") == 86400
    assert cimd.freshness(None) == 3600
    assert cimd.freshness("max-age=soon") == 3600
    assert cimd.freshness("no-store") == 300


# Documents fetched by the server, as the sign-in page shows them.


def test_a_good_document_is_the_client_and_is_kept_for_its_max_age(cimd_server, host, conn) -> None:
    url = host.serve("/good.json", document(host.url("/good.json")), headers={"Cache-Control": "max-age=600"})
    page = authorize(cimd_server, url)
    assert page.status_code == 200, page.text
    assert CLIENT_NAME in page.text
    (row,) = kept(conn, url)
    assert row["kind"] == "metadata_document"
    assert row["redirect_uris"] == [REDIRECT]
    assert row["fresh_until"] - row["fetched_at"] == timedelta(seconds=600)
    again = authorize(cimd_server, url)
    assert again.status_code == 200
    assert host.hits["/good.json"] == 1


def test_a_redirect_uri_the_document_does_not_list_is_shown_not_followed(cimd_server, host) -> None:
    url = host.serve("/listed.json", document(host.url("/listed.json")))
    page = authorize(cimd_server, url, redirect_uri="https://evil.example/cb")
    assert "did not register" in refusal(page)


def test_a_document_about_another_url_is_refused(cimd_server, host, conn) -> None:
    url = host.serve("/wrong-id.json", document(host.url("/other.json")))
    assert "its client_id is not the URL it was fetched from" in refusal(authorize(cimd_server, url))
    assert kept(conn, url) == []


def test_a_redirect_is_not_followed(cimd_server, host, conn) -> None:
    host.serve("/moved-here.json", document(host.url("/moved.json")))
    url = host.serve("/moved.json", b"", status=302, headers={"Location": host.url("/moved-here.json")})
    assert "answered 302, a redirect, which is not followed" in refusal(authorize(cimd_server, url))
    assert host.hits["/moved-here.json"] == 0
    assert kept(conn, url) == []


def test_a_document_larger_than_5_kb_is_refused(cimd_server, host, conn) -> None:
    url = host.serve("/large.json", document(host.url("/large.json"), client_uri="https://desk.example/" + "x" * 6000))
    assert "larger than 5 KB" in refusal(authorize(cimd_server, url))
    assert kept(conn, url) == []


def test_a_host_slower_than_3_seconds_is_cut_off(cimd_server, host, conn) -> None:
    url = host.serve("/slow.json", document(host.url("/slow.json")), delay_s=4)
    assert "did not answer within 3 seconds" in refusal(authorize(cimd_server, url))
    assert kept(conn, url) == []


def test_a_document_that_is_not_json_is_refused(cimd_server, host, conn) -> None:
    url = host.serve("/text.json", document(host.url("/text.json")), content_type="text/plain")
    assert "its content type is text/plain, not application/json" in refusal(authorize(cimd_server, url))
    assert kept(conn, url) == []


def test_a_document_with_a_client_secret_is_refused_and_the_secret_never_shown(cimd_server, host, conn) -> None:
    url = host.serve("/secret.json", document(host.url("/secret.json"), client_secret="s3cret-never-shown"))
    text = refusal(authorize(cimd_server, url))
    assert "carries a client secret" in text
    assert "s3cret-never-shown" not in text
    assert "s3cret-never-shown" not in cimd_server.log_text()
    assert kept(conn, url) == []


def test_a_document_whose_host_name_the_certificate_does_not_name_is_refused(cimd_server, host, conn) -> None:
    # The certificate names 127.0.0.1 only: reached as localhost, TLS is verified for localhost.
    url = host.url("/renamed.json", host="localhost")
    host.serve("/renamed.json", document(url))
    assert "TLS certificate is not valid for localhost" in refusal(authorize(cimd_server, url))
    assert kept(conn, url) == []


def test_a_stale_document_is_fetched_again_and_never_served_when_that_fails(cimd_server, host, conn) -> None:
    url = host.serve("/changing.json", document(host.url("/changing.json")))
    assert authorize(cimd_server, url).status_code == 200
    conn.run("UPDATE oauth_clients SET fresh_until = now() - interval '1 second' WHERE client_id = :c", c=url)
    (stale,) = kept(conn, url)
    host.serve("/changing.json", b'{"error": "down"}', status=503)
    assert "answered 503" in refusal(authorize(cimd_server, url))
    assert kept(conn, url) == [stale]
    host.serve("/changing.json", document(url, client_name="Desk Notes 2"))
    page = authorize(cimd_server, url)
    assert page.status_code == 200
    assert "Desk Notes 2" in page.text
    (fresh,) = kept(conn, url)
    assert fresh["client_name"] == "Desk Notes 2"
    assert fresh["fresh_until"] - fresh["fetched_at"] == timedelta(hours=1)
    assert host.hits["/changing.json"] == 3


# The official SDK, end to end.


class User:
    """The person at the browser: opens the page, signs in, allows, and hands the redirect to the client."""

    def __init__(self, login: str) -> None:
        self.login = login
        self.result: AuthorizationCodeResult | None = None
        self.client_ids: list[str] = []

    async def redirect_handler(self, url: str) -> None:
        self.client_ids += parse_qs(urlsplit(url).query)["client_id"]
        async with httpx2.AsyncClient(follow_redirects=False, timeout=20) as http:
            page = await http.get(url)
            assert page.status_code == 200, page.text
            action = unescape(re.search(r'action="([^"]+)"', page.text)[1])
            hidden = {name: unescape(value) for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', page.text)}
            answer = await http.post(
                urljoin(str(page.url), action),
                data={**hidden, "login": self.login, "password": PASSWORD, "decision": "allow"},
                headers={"Sec-Fetch-Site": "same-origin"},
            )
            assert answer.status_code == 302, answer.text
            query = parse_qs(urlsplit(answer.headers["location"]).query)
            self.result = AuthorizationCodeResult(
                code=query["code"][0], state=query["state"][0], iss=query.get("iss", [None])[0]
            )

    async def callback_handler(self) -> AuthorizationCodeResult:
        assert self.result is not None
        return self.result


def test_the_python_sdk_signs_in_with_its_client_metadata_url_instead_of_registering(
    cimd_server, host, conn, person
) -> None:
    url = host.serve("/sdk-client.json", document(host.url("/sdk-client.json"), redirect_uris=[SDK_REDIRECT]))
    user, storage = User(person), TokenMemory()
    provider = OAuthClientProvider(
        server_url=cimd_server.mcp_url,
        client_metadata=OAuthClientMetadata(
            client_name=SDK_CLIENT_NAME,
            redirect_uris=[SDK_REDIRECT],
            grant_types=["authorization_code", "refresh_token"],
            response_types=["code"],
            token_endpoint_auth_method="none",
        ),
        storage=storage,
        redirect_handler=user.redirect_handler,
        callback_handler=user.callback_handler,
        client_metadata_url=url,
    )

    async def work() -> tuple[list[str], dict]:
        http = httpx2.AsyncClient(auth=provider, timeout=30)
        transport = streamable_http_client(cimd_server.mcp_url, http_client=http)
        async with http, Client(transport, mode="legacy") as client:  # type: ignore[arg-type]
            tools = await client.list_tools()
            created = await client.call_tool("chitty_chat_session_create", {"session_name": "signed in by URL"})
            return [tool.name for tool in tools.tools], created.structured_content

    names, created = asyncio.run(work())
    assert "chatgpt_complete" in names
    assert created["user_id"] == person
    assert user.client_ids == [url]
    assert storage.client is not None
    assert storage.client.client_id == url
    assert [row["kind"] for row in kept(conn, url)] == ["metadata_document"]
    registered = conn.run("SELECT count(*) FROM oauth_clients WHERE client_name = :n", n=SDK_CLIENT_NAME)
    assert registered == [[0]]
    ((grants,),) = conn.run("SELECT count(*) FROM oauth_grants WHERE client_id = :c AND user_id = :u", c=url, u=person)
    assert grants == 1
    assert host.hits["/sdk-client.json"] == 1

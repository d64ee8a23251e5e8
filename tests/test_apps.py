"""MCP Apps: the usage and session views in a real web host.

The host page (tests/apps/host.js, bundled with esbuild) is built like the official basic-host: the official
MCP client (@modelcontextprotocol/client, the 2025 handshake or pinned to 2026-07-28) talks to `make run`'s
server, an AppBridge (@modelcontextprotocol/ext-apps) talks to the view, and the view runs in a sandbox proxy
on another origin (localhost against the host's 127.0.0.1) whose HTTP header carries the view's CSP. The usage
is real: completions through chatgpt_complete against the fake OpenAI, and a month of history inserted the way
tests/test_analytics.py does (the costs and the books follow by trigger).
"""

from __future__ import annotations

import datetime
import json
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

from chalicelib import auth
from chalicelib.db import SQL_DIR, Database, load_queries
from devtools.fake_openai import FakeOpenAI
from tests.browser import screenshot_path
from tests.clients import CLIENT_MODES, MODERN, post
from tests.conftest import Server, User, free_port
from tests.test_analytics import completions, insert
from tests.ts_client import MODULES, NODE, require_node

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Frame, FrameLocator, Locator, Page

APPS = Path(__file__).resolve().parent / "apps"
BUDGET_USD = 5.0
# The history: 48 completions over ten days of March 2025, of four models (one unpriced), some failed.
HISTORY_START = datetime.datetime(2025, 3, 3, tzinfo=datetime.UTC)
HISTORY = {"start_date": "2025-03-01", "end_date": "2025-03-31", "timezone": "UTC"}
TURNS = (
    ("gpt-4o-mini", "Summarise clause 4 of the lease."),
    ("gpt-4o", "List the tenant's duties.\nOne per line.\n\nThen the landlord's."),
    ("gpt-4o-mini", "Which of them survive the end of the lease?"),
)
# The spec's CSP for a view that declares none, and how a declared one widens it.
DEFAULT_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' data:; connect-src 'none'"
)
# The /usage page's own policy, as strict: its data is inlined, its range changes are page loads.
STANDALONE_CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'none'"
DESKTOP, NARROW = 1024, 400


def view_csp(declared: dict[str, Any] | None) -> str:
    """The Content-Security-Policy header of the sandbox for a view's `_meta.ui.csp` (the spec default if none)."""
    if not declared:
        return DEFAULT_CSP

    def origins(key: str) -> str:
        return " ".join(str(origin) for origin in declared.get(key) or [] if not set(str(origin)) & set(";,\r\n'"))

    resources, connect = origins("resourceDomains"), origins("connectDomains")
    frames, bases = origins("frameDomains") or "'none'", origins("baseUriDomains") or "'self'"
    return (
        f"default-src 'none'; script-src 'self' 'unsafe-inline' {resources}; style-src 'self' 'unsafe-inline' "
        f"{resources}; img-src 'self' data: {resources}; font-src 'self' {resources}; media-src 'self' data: "
        f"{resources}; connect-src 'self' {connect}; frame-src {frames}; base-uri {bases}"
    )


class Site:
    """A small HTTP server on 127.0.0.1 serving pages by path: (body, content type, CSP or a function of the query)."""

    def __init__(self, pages: dict[str, tuple[bytes, str, str | Callable[[dict[str, list[str]]], str] | None]]):
        self.pages = pages
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                address = urlsplit(self.path)
                page = site.pages.get(address.path)
                if page is None:
                    self.send_error(404)
                    return
                body, content_type, csp = page
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                if csp is not None:
                    self.send_header("Content-Security-Policy", csp(parse_qs(address.query)) if callable(csp) else csp)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass(frozen=True)
class Pages:
    host: Site
    sandbox: Site

    def host_url(self, server: Server, user: User, era: str) -> str:
        sandbox = f"http://localhost:{self.sandbox.port}/sandbox.html"
        return (
            f"http://127.0.0.1:{self.host.port}/host.html?mcp={quote(server.mcp_url, safe='')}"
            f"&token={quote(user.token, safe='')}&era={quote(era)}&sandbox={quote(sandbox, safe='')}"
        )


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pages]:
    """The host page with host.js bundled by esbuild, and the sandbox proxy on another origin."""
    require_node()
    bundle = tmp_path_factory.mktemp("apps-host") / "host.js"
    build = (
        "const [entry, outfile, modules] = process.argv.slice(1);"
        "require('esbuild').build({entryPoints: [entry], bundle: true, format: 'iife', outfile,"
        " nodePaths: [modules], logLevel: 'warning'}).catch(() => process.exit(1));"
    )
    subprocess.run(
        [str(NODE), "-e", build, str(APPS / "host.js"), str(bundle), str(MODULES)],
        cwd=MODULES.parent,
        check=True,
        timeout=60,
    )
    html = "text/html; charset=utf-8"
    host = Site(
        {
            "/host.html": ((APPS / "host.html").read_bytes(), html, None),
            "/host.js": (bundle.read_bytes(), "text/javascript; charset=utf-8", None),
        }
    )
    sandbox = Site(
        {
            "/sandbox.html": (
                (APPS / "sandbox.html").read_bytes(),
                html,
                lambda query: view_csp(json.loads(query["csp"][0]) if "csp" in query else None),
            )
        }
    )
    yield Pages(host=host, sandbox=sandbox)
    host.stop()
    sandbox.stop()


def new_user(database_url: str, prefix: str, admin: bool = False) -> User:
    """A user with a fresh bearer token, for the whole module."""
    database = Database(url=database_url, queries=load_queries(SQL_DIR / "queries"))
    try:
        user_id = f"{prefix}-{uuid.uuid4().hex[:10]}"
        database.one("add_user", user_id=user_id, display_name=user_id, role="admin" if admin else "user")
        token = auth.new_token()
        row = database.one(
            "issue_token", user_id=user_id, token_hash=auth.hash_token(token), label="test", expires_days=None
        )
        assert row is not None
        return User(user_id=user_id, token=token, token_id=str(row["id"]))
    finally:
        database.discard()


def call(server: Server, user: User, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """A tools/call as a host without apps makes it: the whole result."""
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    response = post(server.mcp_url, body, token=user.token)
    assert response.status_code == 200, response.text
    return response.json()["result"]


def data(server: Server, user: User, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = call(server, user, name, arguments)
    assert result["isError"] is False, result
    return result["structuredContent"]


@dataclass(frozen=True)
class Seeded:
    viewer: User
    admin: User
    session_id: str


@pytest.fixture(scope="module")
def seeded(run_server: Server, database_url: str, fake_openai_server: FakeOpenAI) -> Seeded:
    """A user with a budget, a session of three turns on two models, and ten days of history in March 2025."""
    fake_openai_server.reset()
    viewer, admin = new_user(database_url, "viewer"), new_user(database_url, "apps-admin", admin=True)
    data(run_server, admin, "chitty_usage_limits_set", {"user_id": viewer.user_id, "monthly_budget_usd": BUDGET_USD})
    session_id = data(
        run_server,
        viewer,
        "chitty_chat_session_create",
        {"session_name": "Lease review", "initial_system_prompt": "You are a careful property lawyer."},
    )["session_id"]
    for model, text in TURNS:
        arguments = {"model": model, "session_id": session_id, "messages": [{"role": "user", "content": text}]}
        data(run_server, viewer, "chatgpt_complete", arguments)
    insert(database_url, viewer.user_id, completions(48, seed=11, start=HISTORY_START, days=10))
    return Seeded(viewer=viewer, admin=admin, session_id=session_id)


class Host:
    """The host page in the browser, connected to the server as one user."""

    def __init__(self, page: Page) -> None:
        self.page = page

    def show(self, name: str, arguments: dict[str, Any], server_tools: bool = True) -> dict[str, Any]:
        """Call the tool, show its view, hand the view the result; the result."""
        return self.page.evaluate(
            "([name, args, serverTools]) => chittyHost.show(name, args, {serverTools})", [name, arguments, server_tools]
        )

    def direct(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """A tool's structured result, called by the host's own client."""
        result = self.page.evaluate("([name, args]) => chittyHost.direct(name, args)", [name, arguments])
        assert result["isError"] is False, result
        return result["structuredContent"]

    def calls(self, name: str) -> list[dict[str, Any]]:
        """The view's tools/call requests of this tool that the host answered, in order."""
        calls = self.page.evaluate("() => JSON.parse(JSON.stringify(chittyHost.calls))")
        return [call for call in calls if call["name"] == name and "result" in call]

    def wait_for_call(self, name: str, number: int = 1) -> dict[str, Any]:
        """The view's `number`th answered call of this tool, once there."""
        self.page.wait_for_function(
            "([name, n]) => chittyHost.calls.filter((c) => c.name === name && c.result).length >= n", arg=[name, number]
        )
        return self.calls(name)[number - 1]

    @property
    def view(self) -> FrameLocator:
        return self.page.frame_locator("#view").frame_locator("iframe")

    def view_frame(self) -> Frame:
        """The view's own frame (inside the sandbox proxy's)."""
        for frame in self.page.frames:
            parent = frame.parent_frame
            if parent is not None and parent.parent_frame == self.page.main_frame:
                return frame
        raise AssertionError("no view frame")

    def settle(self) -> None:
        """Wait until the view's frame is as tall as the view asked, and the view has painted."""
        painted = (
            "() => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(() =>"
            " done(Math.ceil(document.documentElement.getBoundingClientRect().height)))))"
        )
        for _ in range(50):
            wanted = self.view_frame().evaluate(painted)
            if self.page.evaluate("() => document.getElementById('view').clientHeight") == wanted:
                return
        raise AssertionError("the view's frame never took the view's height")

    def screenshot(self, name: str) -> None:
        """The whole page; the viewport grows to it first, since Chromium paints a cross-origin frame only
        so far past the viewport."""
        self.settle()
        size = self.page.viewport_size
        assert size is not None
        height = self.page.evaluate("() => document.documentElement.scrollHeight")
        self.page.set_viewport_size({"width": size["width"], "height": max(size["height"], height)})
        self.settle()
        self.page.screenshot(path=str(screenshot_path(name)), full_page=True)


@pytest.fixture
def open_host(browser: Browser, pages: Pages, run_server: Server) -> Iterator[Callable[..., Host]]:
    """open_host(user, era="legacy", width=1024): a fresh browser page with the host connected."""
    contexts = []

    def open(user: User, era: str = "legacy", width: int = DESKTOP) -> Host:
        context = browser.new_context(viewport={"width": width, "height": 800})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.goto(pages.host_url(run_server, user, era))
        connected = page.evaluate("() => chittyHost.connect()")
        assert connected["extensions"]["io.modelcontextprotocol/ui"] == {}, connected
        assert (connected["protocolVersion"] == MODERN) == (era == MODERN), connected
        return Host(page)

    yield open
    for context in contexts:
        context.close()


def expect_count(locator: Locator, count: int) -> None:
    from playwright.sync_api import expect

    expect(locator).to_have_count(count)


def periods(analytics: dict[str, Any]) -> dict[str, float]:
    """Each distinct bucket start and its cost over all models."""
    costs: dict[str, float] = {}
    for bucket in analytics["buckets"]:
        costs[bucket["start"]] = costs.get(bucket["start"], 0.0) + bucket["cost_usd"]
    return costs


def shown_points(view: FrameLocator) -> dict[str, float]:
    points = view.locator("[data-bucket-start]")
    return {
        points.nth(index).get_attribute("data-bucket-start"): float(points.nth(index).get_attribute("data-cost-usd"))
        for index in range(points.count())
    }


def shown_total(view: FrameLocator | Page, key: str) -> str:
    return view.locator(f'[data-total="{key}"]').get_attribute("data-value")


def assert_totals_shown(view: FrameLocator | Page, totals: dict[str, Any]) -> None:
    for key in ("requests", "prompt_tokens", "completion_tokens"):
        assert int(shown_total(view, key)) == totals[key]
    assert float(shown_total(view, "cost_usd")) == totals["cost_usd"]
    assert view.locator('[data-total="cost_usd"]').inner_text().startswith("$")


def assert_budget_shown(view: FrameLocator | Page, limits: dict[str, Any]) -> None:
    view.locator('[data-budget="left"][data-value]').wait_for()

    def value(key: str) -> float:
        return float(view.locator(f'[data-budget="{key}"]').get_attribute("data-value"))

    assert value("monthly_budget_usd") == limits["limits"]["monthly_budget_usd"]["value"] == BUDGET_USD
    assert value("month_spent_usd") == limits["month_spent_usd"]
    left = BUDGET_USD - limits["month_spent_usd"] - limits["reserved_usd"]
    assert value("left") == pytest.approx(left)
    assert view.locator('[data-budget="left"]').inner_text().startswith("$")


def assert_fits(host: Host) -> None:
    """Nothing in the view is wider than its frame, but what scrolls inside a box of its own (the data table)."""
    frame = host.view_frame()
    widths = frame.evaluate(
        """() => {
            const scrolls = (el) => el !== document.body && (getComputedStyle(el).overflowX !== "visible"
                || scrolls(el.parentElement));
            const free = [...document.querySelectorAll("body *")].filter((el) => !scrolls(el.parentElement));
            return {
                scroll: document.documentElement.scrollWidth,
                client: document.documentElement.clientWidth,
                widest: Math.max(...free.map((el) => el.getBoundingClientRect().right)),
            };
        }"""
    )
    assert widths["scroll"] <= widths["client"], widths
    assert widths["widest"] <= widths["client"] + 0.5, widths


MARCH_BY_DAY = {**HISTORY, "granularity": "day", "group_by": "model"}


def data_of(host: Host, arguments: dict[str, Any]) -> dict[str, Any]:
    return host.direct("chitty_usage_analytics", arguments)


@pytest.mark.parametrize("era", CLIENT_MODES)
def test_the_usage_view_draws_a_point_per_bucket_and_the_tools_totals_and_budget(open_host, seeded, era):
    host = open_host(seeded.viewer, era)
    result = host.show("chitty_usage_analytics", MARCH_BY_DAY)
    analytics = result["structuredContent"]
    expected = periods(analytics)
    assert len(expected) >= 5
    assert len({bucket["model"] for bucket in analytics["buckets"]}) >= 2

    expect_count(host.view.locator("[data-bucket-start]"), len(expected))
    assert shown_points(host.view) == pytest.approx(expected)
    assert_totals_shown(host.view, analytics["totals"])
    limits_call = host.wait_for_call("chitty_usage_limits_get")
    assert limits_call["arguments"] == {"user_id": seeded.viewer.user_id}
    assert_budget_shown(host.view, host.direct("chitty_usage_limits_get", {}))


def test_a_result_not_split_by_model_is_asked_again_by_model_for_the_same_range(open_host, seeded):
    host = open_host(seeded.viewer, "2026-07-28")
    analytics = host.show("chitty_usage_analytics", {**HISTORY, "granularity": "day"})["structuredContent"]
    assert analytics["group_by"] == "none"

    again = host.wait_for_call("chitty_usage_analytics")
    assert again["arguments"]["group_by"] == "model"
    by_model = again["result"]["structuredContent"]
    assert (by_model["start"], by_model["end"], by_model["granularity"]) == (
        analytics["start"],
        analytics["end"],
        "day",
    )
    models = {bucket["model"] for bucket in by_model["buckets"]}
    expect_count(host.view.locator("#legend li"), len(models))
    assert shown_points(host.view) == pytest.approx(periods(analytics))
    assert_totals_shown(host.view, analytics["totals"])


def test_a_host_that_cannot_call_tools_gets_the_totals_series_and_no_calls(open_host, seeded):
    host = open_host(seeded.viewer)
    analytics = host.show("chitty_usage_analytics", {**HISTORY, "granularity": "day"}, server_tools=False)
    expected = periods(analytics["structuredContent"])

    expect_count(host.view.locator("[data-bucket-start]"), len(expected))
    assert shown_points(host.view) == pytest.approx(expected)
    (series,) = host.view.locator("#legend li").all_inner_texts()
    assert series.startswith("All models · $")
    assert_totals_shown(host.view, analytics["structuredContent"]["totals"])
    assert host.view.locator("#budget").is_hidden()
    assert host.page.evaluate("() => chittyHost.calls.length") == 0


def test_changing_the_granularity_in_the_view_calls_the_tool_through_the_host_and_redraws(open_host, seeded):
    host = open_host(seeded.viewer)
    host.show("chitty_usage_analytics", MARCH_BY_DAY)
    expect_count(host.view.locator("[data-bucket-start]"), len(periods(data_of(host, MARCH_BY_DAY))))

    host.view.locator("#granularity").select_option("week")
    weekly = host.wait_for_call("chitty_usage_analytics")
    assert weekly["arguments"] == {**MARCH_BY_DAY, "granularity": "week", "user_id": seeded.viewer.user_id}
    direct = host.direct("chitty_usage_analytics", weekly["arguments"])
    assert 1 < len(periods(direct)) < len(periods(data_of(host, MARCH_BY_DAY)))
    expect_count(host.view.locator("[data-bucket-start]"), len(periods(direct)))
    assert host.view.locator("#chart").get_attribute("data-granularity") == "week"
    assert shown_points(host.view) == pytest.approx(periods(direct))
    assert_totals_shown(host.view, direct["totals"])


def test_a_limits_result_shows_the_budget_and_this_months_chart(open_host, seeded):
    host = open_host(seeded.viewer, "2026-07-28")
    before = datetime.datetime.now(datetime.UTC).date().isoformat()
    limits = host.show("chitty_usage_limits_get", {})["structuredContent"]

    assert_budget_shown(host.view, limits)
    month = host.wait_for_call("chitty_usage_analytics")
    after = datetime.datetime.now(datetime.UTC).date().isoformat()
    assert month["arguments"]["end_date"] in (before, after)
    assert month["arguments"] == {
        "user_id": seeded.viewer.user_id,
        "start_date": limits["month_start"][:10],
        "end_date": month["arguments"]["end_date"],
        "granularity": "day",
        "group_by": "model",
        "timezone": "UTC",
    }
    direct = host.direct("chitty_usage_analytics", month["arguments"])
    assert len(periods(direct)) >= 1
    expect_count(host.view.locator("[data-bucket-start]"), len(periods(direct)))
    assert_totals_shown(host.view, direct["totals"])


def test_a_tool_error_inside_the_view_is_shown_with_its_text(open_host, seeded):
    host = open_host(seeded.viewer)
    host.show("chitty_usage_analytics", MARCH_BY_DAY)
    expect_count(host.view.locator("[data-bucket-start]"), len(periods(data_of(host, MARCH_BY_DAY))))

    host.view.locator("#start_date").fill("2025-01-01")
    host.view.locator("#granularity").select_option("hour")
    refused = host.wait_for_call("chitty_usage_analytics")["result"]
    assert refused["isError"] is True
    from playwright.sync_api import expect

    expect(host.view.locator("#error")).to_have_text(refused["content"][0]["text"])
    assert host.view.locator("[role=alert]").is_visible()
    assert host.view.locator("#chart").get_attribute("data-granularity") == "day"


def session_messages(host: Host, session_id: str) -> list[dict[str, Any]]:
    page = host.direct("chitty_chat_session_messages", {"session_id": session_id})
    assert page["next_from_seq"] is None
    return page["messages"]


def assert_messages_shown(view: FrameLocator, messages: list[dict[str, Any]]) -> None:
    shown = view.locator("[data-seq]")
    expect_count(shown, len(messages))
    for index, message in enumerate(messages):
        item = shown.nth(index)
        assert int(item.get_attribute("data-seq")) == message["seq"]
        assert item.get_attribute("data-role") == message["role"]
        assert int(item.get_attribute("data-prompt-tokens")) == message["prompt_tokens"]
        assert int(item.get_attribute("data-completion-tokens")) == message["completion_tokens"]
        cost = item.get_attribute("data-cost-usd")
        assert (None if cost == "" else float(cost)) == message["cost_usd"]
        assert item.locator(".text").text_content() == message["text"]
        if message["role"] == "assistant":
            figures = item.locator(".figures").inner_text()
            assert f"{message['prompt_tokens']:,} prompt + {message['completion_tokens']:,} completion" in figures
            assert "$" in figures
            assert item.locator(".model").inner_text() == message["model"]


def assert_session_totals_shown(view: FrameLocator, session: dict[str, Any]) -> None:
    for key in ("message_count", "prompt_tokens", "completion_tokens"):
        assert int(shown_total(view, key)) == session[key]
    assert float(shown_total(view, "total_cost_usd")) == session["total_cost_usd"]
    assert view.locator("h1").inner_text() == session["session_name"]


@pytest.mark.parametrize("era", CLIENT_MODES)
def test_the_session_view_shows_every_message_with_its_tokens_and_cost_and_the_totals(open_host, seeded, era):
    host = open_host(seeded.viewer, era)
    session = host.show("chitty_chat_session_get", {"session_id": seeded.session_id})["structuredContent"]
    messages = session_messages(host, seeded.session_id)
    assert {message["model"] for message in messages if message["role"] == "assistant"} == {"gpt-4o", "gpt-4o-mini"}

    assert_messages_shown(host.view, messages)
    assert_session_totals_shown(host.view, session)
    assert session["message_count"] == len(messages)
    assert host.wait_for_call("chitty_chat_session_messages")["arguments"] == {"session_id": seeded.session_id}


def test_a_messages_page_shows_at_once_and_loads_the_rest_on_demand(open_host, seeded):
    host = open_host(seeded.viewer)
    first = host.show("chitty_chat_session_messages", {"session_id": seeded.session_id, "limit": 2})
    page = first["structuredContent"]
    expect_count(host.view.locator("[data-seq]"), 2)
    more = host.view.locator("#more")
    assert more.is_visible()
    assert page["next_from_seq"] == 3

    more.click()
    following = host.wait_for_call("chitty_chat_session_messages")
    assert following["arguments"] == {"session_id": seeded.session_id, "from_seq": 3}
    assert_messages_shown(host.view, session_messages(host, seeded.session_id))
    assert more.is_hidden()
    assert_session_totals_shown(host.view, page["session"])


def test_the_host_theme_turns_the_view_dark(open_host, seeded):
    host = open_host(seeded.viewer, "2026-07-28")
    host.show("chitty_usage_analytics", MARCH_BY_DAY)
    expect_count(host.view.locator("[data-bucket-start]"), len(periods(data_of(host, MARCH_BY_DAY))))
    light = background_luminance(host)

    host.page.evaluate("() => chittyHost.setTheme('dark')")
    frame = host.view_frame()
    frame.wait_for_function("() => document.documentElement.dataset.theme === 'dark'")
    assert light > 0.8
    assert background_luminance(host) < 0.2
    host.screenshot("apps-usage-dark")


def background_luminance(host: Host) -> float:
    """The view's background brightness, 0 (black) to 1 (white)."""
    color = host.view_frame().evaluate("() => getComputedStyle(document.body).backgroundColor")
    red, green, blue = (int(part) for part in color[color.index("(") + 1 : color.index(")")].split(",")[:3])
    return (0.2126 * red + 0.7152 * green + 0.0722 * blue) / 255


@pytest.mark.parametrize("width", [DESKTOP, NARROW])
def test_the_usage_view_fits_its_width(open_host, seeded, width):
    host = open_host(seeded.viewer, width=width)
    host.show("chitty_usage_analytics", MARCH_BY_DAY)
    expect_count(host.view.locator("[data-bucket-start]"), len(periods(data_of(host, MARCH_BY_DAY))))
    host.wait_for_call("chitty_usage_limits_get")
    host.view.locator('[data-budget="left"][data-value]').wait_for()

    assert_fits(host)
    host.screenshot(f"apps-usage-{width}")


@pytest.mark.parametrize("width", [DESKTOP, NARROW])
def test_the_session_view_fits_its_width(open_host, seeded, width):
    host = open_host(seeded.viewer, width=width)
    host.show("chitty_chat_session_get", {"session_id": seeded.session_id})
    expect_count(host.view.locator("[data-seq]"), len(session_messages(host, seeded.session_id)))

    assert_fits(host)
    host.screenshot(f"apps-session-{width}")


def test_the_view_cannot_fetch_anything(open_host, seeded, run_server):
    host = open_host(seeded.viewer)
    host.show("chitty_chat_session_get", {"session_id": seeded.session_id})
    outcome = host.view_frame().evaluate(
        """async (url) => {
            const violations = [];
            const violated = new Promise((resolve) => document.addEventListener("securitypolicyviolation",
                (event) => { violations.push(event.effectiveDirective); resolve(); }));
            let outcome;
            try { await fetch(url); outcome = "fetched"; } catch (error) { outcome = "refused"; }
            await violated;
            return { outcome, violations };
        }""",
        f"{run_server.base_url}/health",
    )
    assert outcome == {"outcome": "refused", "violations": ["connect-src"]}


@pytest.mark.parametrize(
    "name",
    ["chitty_usage_analytics", "chitty_usage_limits_get", "chitty_chat_session_get", "chitty_chat_session_messages"],
)
def test_a_host_without_apps_gets_the_json_text_and_structured_content(run_server, seeded, name):
    arguments = {
        "chitty_usage_analytics": MARCH_BY_DAY,
        "chitty_usage_limits_get": {},
        "chitty_chat_session_get": {"session_id": seeded.session_id},
        "chitty_chat_session_messages": {"session_id": seeded.session_id},
    }[name]
    result = call(run_server, seeded.viewer, name, arguments)

    assert set(result) == {"content", "structuredContent", "isError"}
    assert result["isError"] is False
    assert result["content"] == [{"type": "text", "text": json.dumps(result["structuredContent"])}]


def standalone_page(analytics: dict[str, Any], limits: dict[str, Any], users: list[str] | None, user_id: str) -> bytes:
    """usage.html as the /usage page serves it: its data inserted right before </body>."""
    from chalicelib.apps import view_html

    html = view_html("ui://chitty/usage.html")
    assert html.count("</body>") == 1
    query = {key: MARCH_BY_DAY[key] for key in ("start_date", "end_date", "granularity")}
    inline = {"analytics": analytics, "limits": limits, "users": users, "user_id": user_id, "query": query}
    text = json.dumps(inline).replace("<", "\\u003c")
    script = f'<script type="application/json" id="chitty-data">{text}</script>'
    return html.replace("</body>", script + "</body>").encode()


def test_standalone_the_usage_page_renders_its_inlined_data_and_changes_range_by_a_get_form(
    browser, pages, run_server, seeded
):
    analytics = data(
        run_server, seeded.admin, "chitty_usage_analytics", {**MARCH_BY_DAY, "user_id": seeded.viewer.user_id}
    )
    limits = data(run_server, seeded.admin, "chitty_usage_limits_get", {"user_id": seeded.viewer.user_id})
    users = [seeded.admin.user_id, seeded.viewer.user_id, "*"]
    body = standalone_page(analytics, limits, users, seeded.viewer.user_id)
    pages.host.pages["/usage"] = (body, "text/html; charset=utf-8", STANDALONE_CSP)
    context = browser.new_context(viewport={"width": NARROW, "height": 800})
    try:
        page = context.new_page()
        page.add_init_script("window.posted = []; addEventListener('message', (event) => posted.push(event.data));")
        page.goto(f"http://127.0.0.1:{pages.host.port}/usage")
        expect_count(page.locator("[data-bucket-start]"), len(periods(analytics)))
        assert_totals_shown(page, analytics["totals"])
        assert float(page.locator('[data-budget="left"]').get_attribute("data-value")) == pytest.approx(
            BUDGET_USD - limits["month_spent_usd"] - limits["reserved_usd"]
        )
        assert page.locator("#user_id option").all_inner_texts() == [*users[:2], "All users"]
        assert page.locator("#user_id").input_value() == seeded.viewer.user_id
        page.screenshot(path=str(screenshot_path("apps-usage-standalone-400")), full_page=True)

        with page.expect_navigation():
            page.locator("button[data-days='7']").click()
        sent = parse_qs(urlsplit(page.url).query)
        assert sorted(sent) == ["end_date", "granularity", "start_date", "user_id"]
        assert sent["user_id"] == [seeded.viewer.user_id]
        assert sent["granularity"] == ["day"]
        end, start = (datetime.date.fromisoformat(sent[key][0]) for key in ("end_date", "start_date"))
        assert end - start == datetime.timedelta(days=6)
        assert page.evaluate("() => posted") == []
    finally:
        context.close()

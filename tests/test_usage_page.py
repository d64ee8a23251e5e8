"""/usage: the usage view as a web page for signed-in users, against `make run`'s server.

The page signs its visitor in through the server's own authorization server (it is a client of it, with PKCE),
keeps the tokens in HttpOnly cookies scoped to /usage, and serves the usage view with the signed-in user's
analytics and limits inside it. Admins may choose a user, after allowing the admin scope."""

from __future__ import annotations

import json
import re
from html import unescape
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx2
import pytest

from tests.clients import post
from tests.conftest import PASSWORD, Server, add_password

SAME_SITE = {"Sec-Fetch-Site": "same-origin"}


def sign_in(browser: httpx2.Client, page: httpx2.Response, login: str) -> httpx2.Response:
    """Follow the page to the sign-in form, sign in and allow; the answer of the page's callback."""
    assert page.status_code == 302, page.text
    form_page = browser.get(page.headers["location"])
    assert form_page.status_code == 200, form_page.text
    action = unescape(re.search(r'action="([^"]+)"', form_page.text)[1])
    hidden = {name: unescape(value) for name, value in re.findall(r'name="([^"]+)" value="([^"]*)"', form_page.text)}
    allowed = browser.post(
        action, data={**hidden, "login": login, "password": PASSWORD, "decision": "allow"}, headers=SAME_SITE
    )
    assert allowed.status_code == 302, allowed.text
    return browser.get(allowed.headers["location"])


def embedded(page: httpx2.Response) -> dict:
    return embedded_from(page.text)


def embedded_from(html: str) -> dict:
    """The data the server put into the view."""
    found = re.search(r'<script type="application/json" id="chitty-data">(.*?)</script>', html, re.DOTALL)
    assert found, html[:500]
    return json.loads(found[1])


def analytics(server: Server, token: str, **arguments) -> dict:
    answer = post(
        server.mcp_url,
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": "chitty_usage_analytics", "arguments": arguments},
        },
        token=token,
    )
    return answer.json()["result"]["structuredContent"]


def test_a_visitor_is_sent_to_sign_in_with_pkce_and_the_page_as_the_client(run_server):
    answer = httpx2.get(run_server.base_url + "/usage", params={"granularity": "week"})
    assert answer.status_code == 302
    location = urlsplit(answer.headers["location"])
    query = parse_qs(location.query)
    assert location.path == "/authorize"
    assert query["client_id"] == ["chitty-usage-page"]
    assert query["redirect_uri"] == [run_server.base_url + "/usage/callback"]
    assert query["code_challenge_method"] == ["S256"]
    assert query["scope"] == ["mcp"]
    assert query["resource"] == [run_server.base_url + "/mcp"]
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith("chitty_usage_login=")
    assert "HttpOnly" in cookie
    assert "SameSite=Lax" in cookie
    assert "Path=/usage" in cookie


def test_a_signed_in_user_sees_their_usage_in_the_view(run_server, alice, database_url):
    add_password(database_url, alice.user_id)
    with httpx2.Client(base_url=run_server.base_url, follow_redirects=False) as browser:
        back = sign_in(browser, browser.get("/usage", params={"granularity": "week"}), alice.user_id)
        assert back.status_code == 302
        assert back.headers["location"] == run_server.base_url + "/usage?granularity=week"
        page = browser.get(back.headers["location"])
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "connect-src" not in page.headers["content-security-policy"]  # default-src 'none': no fetch at all
    data = embedded(page)
    assert data["user_id"] == alice.user_id
    assert data["users"] is None
    assert data["query"]["granularity"] == "week"
    assert data["limits"]["user_id"] == alice.user_id
    direct = analytics(
        run_server,
        alice.token,
        start_date=data["query"]["start_date"],
        end_date=data["query"]["end_date"],
        granularity="week",
        group_by="model",
    )
    assert data["analytics"] == direct
    assert page.text.count("</body>") == 1


def test_the_page_refreshes_its_token_and_signs_out(run_server, alice, database_url):
    add_password(database_url, alice.user_id)
    with httpx2.Client(base_url=run_server.base_url, follow_redirects=False) as browser:
        sign_in(browser, browser.get("/usage"), alice.user_id)
        browser.cookies.delete("chitty_usage")  # the hour is up: only the refresh token is left
        again = browser.get("/usage")
        assert again.status_code == 200
        assert embedded(again)["user_id"] == alice.user_id
        assert "chitty_usage=" in again.headers.get("set-cookie", "")
        refresh = browser.cookies.get("chitty_usage_refresh")
        out = browser.post("/usage/sign-out")
        assert out.status_code == 200
        assert "signed out" in out.text
        assert browser.get("/usage").status_code == 302
    reused = httpx2.post(
        run_server.base_url + "/token",
        data={"grant_type": "refresh_token", "refresh_token": refresh, "client_id": "chitty-usage-page"},
    )
    assert reused.json()["error"] == "invalid_grant"


def test_an_admin_chooses_a_user_after_allowing_the_admin_scope(run_server, admin, alice, database_url):
    add_password(database_url, admin.user_id)
    with httpx2.Client(base_url=run_server.base_url, follow_redirects=False) as browser:
        own = browser.get(sign_in(browser, browser.get("/usage"), admin.user_id).headers["location"])
        assert embedded(own)["users"] is None  # the list of users needs the admin scope too
        step_up = browser.get("/usage", params={"user_id": alice.user_id})
        assert step_up.status_code == 302
        assert parse_qs(urlsplit(step_up.headers["location"]).query)["scope"] == ["mcp mcp:admin"]
        back = sign_in(browser, step_up, admin.user_id)
        theirs = browser.get(urljoin(run_server.base_url, back.headers["location"]))
        everyone = embedded(browser.get("/usage", params={"user_id": "*"}))
    assert embedded(theirs)["user_id"] == alice.user_id
    assert embedded(theirs)["limits"]["user_id"] == alice.user_id
    assert alice.user_id in embedded(theirs)["users"]
    assert "*" in embedded(theirs)["users"]
    assert everyone["analytics"]["user_id"] == "*"
    assert everyone["limits"] is None  # everyone's usage has no one budget


def test_a_user_cannot_choose_another_user(run_server, alice, bob, database_url):
    add_password(database_url, alice.user_id)
    with httpx2.Client(base_url=run_server.base_url, follow_redirects=False) as browser:
        sign_in(browser, browser.get("/usage"), alice.user_id)
        refused = browser.get("/usage", params={"user_id": bob.user_id})
    assert refused.status_code == 400
    assert "Only admins" in refused.text


def test_a_callback_that_did_not_start_here_is_refused(run_server):
    forged = httpx2.get(
        run_server.base_url + "/usage/callback",
        params={"code": "x", "state": "y", "iss": run_server.base_url},
        cookies={"chitty_usage_login": "z.v."},
    )
    assert forged.status_code == 400
    assert "did not start here" in forged.text


def test_the_page_in_a_browser_signs_in_and_draws_the_users_usage(
    run_server, browser, fake_openai, alice, database_url
):
    """Chromium: the page sends the person to sign in, comes back, and draws their usage: a point per bucket,
    the totals of the tool; at desktop width and at 400 px."""
    from tests.browser import screenshot_path

    person = alice
    add_password(database_url, person.user_id)
    for model in ("gpt-4o-mini", "gpt-5.4-mini", "gpt-4o-mini"):
        body = {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {
                "name": "chatgpt_complete",
                "arguments": {"messages": [{"role": "user", "content": "hello"}], "model": model},
            },
        }
        assert post(run_server.mcp_url, body, token=person.token).json()["result"]["isError"] is False
    context = browser.new_context(viewport={"width": 1024, "height": 900})
    page = context.new_page()
    page.goto(run_server.base_url + "/usage?granularity=hour")
    page.fill("input[name=login]", person.user_id)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[value=allow]")
    page.wait_for_url(run_server.base_url + "/usage?granularity=hour")
    page.wait_for_selector("[data-bucket-start]")
    data = embedded_from(page.content())
    starts = {bucket["start"] for bucket in data["analytics"]["buckets"]}
    assert page.locator("[data-bucket-start]").count() == len(starts)
    shown_cost = float(page.locator('[data-total="cost_usd"]').get_attribute("data-value"))
    assert shown_cost == pytest.approx(data["analytics"]["totals"]["cost_usd"])
    assert page.locator('[data-total="requests"]').get_attribute("data-value") == "3"
    page.screenshot(path=screenshot_path("usage-page-desktop"), full_page=True)
    page.set_viewport_size({"width": 400, "height": 900})
    assert page.evaluate("document.documentElement.scrollWidth") <= 400
    page.screenshot(path=screenshot_path("usage-page-400px"), full_page=True)
    context.close()


def test_a_sign_out_from_another_site_is_refused_and_keeps_the_cookies(run_server, alice, database_url):
    add_password(database_url, alice.user_id)
    with httpx2.Client(base_url=run_server.base_url, follow_redirects=False) as browser:
        sign_in(browser, browser.get("/usage"), alice.user_id)
        forged = browser.post(
            "/usage/sign-out", headers={"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}
        )
        assert forged.status_code == 403
        assert "set-cookie" not in forged.headers
        assert browser.get("/usage").status_code == 200
        page = browser.get("/usage")
        assert 'action="' + run_server.base_url + '/usage/sign-out"' in page.text


def test_a_refused_range_is_said_inside_the_view(run_server, alice, database_url):
    add_password(database_url, alice.user_id)
    with httpx2.Client(base_url=run_server.base_url, follow_redirects=False) as browser:
        sign_in(browser, browser.get("/usage"), alice.user_id)
        page = browser.get(
            "/usage", params={"granularity": "hour", "start_date": "2026-01-01", "end_date": "2026-06-01"}
        )
    assert page.status_code == 400
    data = embedded(page)
    assert "31 days" in data["error"]
    assert data["analytics"] is None


def test_a_refresh_before_a_redirect_keeps_its_new_tokens(run_server, admin, alice, database_url):
    """An admin whose hour is up asks for another user: the page refreshes, then sends them to allow the admin
    scope; the refreshed tokens go with the redirect, so the used refresh token is never sent again."""
    add_password(database_url, admin.user_id)
    with httpx2.Client(base_url=run_server.base_url, follow_redirects=False) as browser:
        sign_in(browser, browser.get("/usage"), admin.user_id)
        browser.cookies.delete("chitty_usage")
        step_up = browser.get("/usage", params={"user_id": alice.user_id})
        assert step_up.status_code == 302
        assert "chitty_usage_refresh=" in step_up.headers.get("set-cookie", "")
        assert browser.get("/usage").status_code == 200  # walked away from the admin prompt: still signed in


def test_a_malformed_cookie_of_another_app_spoils_nothing_and_a_strange_state_is_a_400(run_server, alice, database_url):
    add_password(database_url, alice.user_id)
    with httpx2.Client(base_url=run_server.base_url, follow_redirects=False) as browser:
        sign_in(browser, browser.get("/usage"), alice.user_id)
        token = browser.cookies.get("chitty_usage")
    mixed = httpx2.get(
        run_server.base_url + "/usage", headers={"Cookie": f"_ga=GA1.1.1; theme=dark mode; chitty_usage={token}"}
    )
    assert mixed.status_code == 200
    odd = httpx2.get(
        run_server.base_url + "/usage/callback",
        params={"state": "é", "iss": run_server.base_url},
        headers={"Cookie": "chitty_usage_login=s.v."},
    )
    assert odd.status_code == 400

"""A real browser for the tests of pages: the system's Chromium, driven by playwright (which downloads none).

Without a Chromium the tests that need one skip, and say so in the summary and on stderr; under CI (CI set)
a missing browser is a failure instead, since CI installs it (.ci/run). Screenshots go to test-output/screenshots
at the top of the repository, kept after the run."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOTS = ROOT / "test-output" / "screenshots"
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_path() -> str | None:
    """The browser to drive: CHITTY_TEST_CHROMIUM, else the first Chromium on PATH."""
    configured = os.environ.get("CHITTY_TEST_CHROMIUM")
    if configured:
        return configured
    return next((found for name in CANDIDATES if (found := shutil.which(name))), None)


def require_chromium() -> str:
    """The Chromium to drive: a skip that says so on stderr without one, a failure under CI."""
    executable = chromium_path()
    if executable is None:
        why = "no Chromium on PATH (apt-get install chromium, or set CHITTY_TEST_CHROMIUM): the page tests did not run"
        if os.environ.get("CI"):
            pytest.fail(why)
        print(f"\n*** SKIPPED: {why} ***", file=sys.stderr)
        pytest.skip(why)
    return executable


def screenshot_path(name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{name}.png"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """A headless Chromium (playwright's sync Browser), shared by a module: playwright's sync API holds an
    event loop on the main thread while it runs, which later modules' asyncio.run() must not find."""
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()

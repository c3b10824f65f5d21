"""A real headless browser for tests: Debian's chromium, driven by Playwright.

`load_page(path, screenshot)` opens a local HTML file the way a user does (file://, no
network), waits for it to load, and returns what the page did: console errors, uncaught
exceptions, requests that failed or left the machine, the figures it drew (with their size on
screen), and a full-page screenshot. `scripts/setup.sh` installs chromium; CHROMIUM names
another binary.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_ENV = "CHROMIUM"


def chromium() -> str:
    """The chromium binary; fails with what to do when there is none."""
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    if not found:
        raise AssertionError(
            "chromium is not installed: run scripts/setup.sh (apt-get install chromium), or set "
            f"{CHROMIUM_ENV} to a Chromium binary"
        )
    return found


@dataclass
class Figure:
    id: str
    svgs: int
    width: float
    height: float


@dataclass
class PageLoad:
    title: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)  # every URL the page asked for
    failed_requests: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # data-kind of each warning shown
    text: str = ""


def load_page(path: Path, screenshot: Path) -> PageLoad:
    """Open `path` in headless chromium, collect what happened, and save a screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        # --no-sandbox: CI runs the tests as root, where chromium's sandbox refuses to start.
        browser = driver.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            console: list[str] = []
            errors: list[str] = []
            requests: list[str] = []
            failed: list[str] = []
            page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
            page.goto(path.resolve().as_uri(), wait_until="load")
            figures = page.eval_on_selector_all(
                "figure.plot",
                """nodes => nodes.map(n => {
                    const svg = n.querySelector('svg');
                    const box = svg ? svg.getBoundingClientRect() : {width: 0, height: 0};
                    return {id: n.dataset.figure, svgs: n.querySelectorAll('svg').length,
                            width: box.width, height: box.height};
                })""",
            )
            warnings = page.eval_on_selector_all(
                "#warnings li.warning", "nodes => nodes.map(n => n.dataset.kind)"
            )
            result = PageLoad(
                title=page.title(),
                console_errors=console,
                page_errors=errors,
                requests=requests,
                failed_requests=failed,
                figures=[Figure(**f) for f in figures],
                warnings=list(warnings),
                text=page.inner_text("body"),
            )
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return result

"""The console in a real browser: Debian's chromium, driven by Playwright, against a live broker.

Skips when chromium is not installed, except under CI=true, where it fails: CI installs Debian's
`chromium` package (`apt-get install -y chromium`); `playwright install` is never used.
Screenshots go to the test's folder and, when CONSOLE_SCREENSHOTS is set, to that folder too.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.audit.conftest import sequence_all
from tests.conftest import IN_CI
from tests.console.conftest import MARKER, Traffic
from tests.results.conftest import ALPHA, Scene, generate
from tests.results.conftest import scene as scene  # the results scene, here too

CHROMIUM = shutil.which("chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def browser() -> Iterator[Any]:
    """A headless chromium, or a skip (a failure under CI) when it is not installed."""
    if CHROMIUM is None:
        message = "Debian's chromium is not installed: apt-get install -y chromium"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield launched
        finally:
            launched.close()


class Shots:
    """Screenshots into the test's folder, and into $CONSOLE_SCREENSHOTS when set."""

    def __init__(self, page: Any, folder: Path) -> None:
        self.page = page
        self.folders = [folder]
        if extra := os.environ.get("CONSOLE_SCREENSHOTS"):
            self.folders.append(Path(extra))
        self.taken: list[Path] = []

    def __call__(self, name: str) -> None:
        first = self.folders[0] / f"{name}.png"
        self.page.screenshot(path=str(first), full_page=True)
        for folder in self.folders[1:]:
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(first, folder / first.name)
        self.taken.append(first)


def test_an_auditor_reviews_and_verifies_in_a_browser(
    browser: Any, live_url: str, traffic: Traffic, token_for: Any, tmp_path: Path
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=10_000)
    context = browser.new_context(viewport={"width": 1360, "height": 900})
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    shot = Shots(page, tmp_path)

    # Sign in: an unauthenticated visit lands on the form.
    page.goto(f"{live_url}/console/")
    expect(page).to_have_url(re.compile(r"/console/login\?notice=required$"))
    expect(page.get_by_text("Sign in with an auditor token to continue.")).to_be_visible()
    shot("0-sign-in")
    page.get_by_label("Auditor token").fill(token_for("auditor"))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Exchange log")).to_be_visible()
    expect(page.get_by_text("oversees every agency")).to_be_visible()
    expect(page.locator(f'a[href="/console/messages/{traffic.hk}"]').first).to_be_visible()
    expect(page.get_by_text("scope.offence_not_covered").first).to_be_visible()
    shot("1-exchange-log")

    # Filter by agreement and kind.
    page.get_by_label("Agreement").select_option("VN-KR-CUSTOMS")
    page.get_by_label("Events").select_option("msg.accepted")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"agreement=VN-KR-CUSTOMS"))
    expect(page.locator(f'a[href="/console/messages/{traffic.kr}"]')).to_have_count(1)
    expect(page.locator(f'a[href="/console/messages/{traffic.hk}"]')).to_have_count(0)
    shot("2-filtered")

    # htmx "load more" with the keyset cursor, under the strict CSP.
    page.goto(f"{live_url}/console/?kind=msg.accepted&limit=2")
    expect(page.locator("a.mid")).to_have_count(2)
    page.get_by_role("link", name="Load more").click()
    expect(page.locator("a.mid")).to_have_count(3)
    expect(page.get_by_text("End of the log for these filters.")).to_be_visible()

    # A message's timeline, reached by clicking its id.
    page.locator(f'a[href="/console/messages/{traffic.kr}"]').click()
    expect(page.get_by_role("heading", name=re.compile("^Message"))).to_be_visible()
    expect(page.get_by_text("Delivery and acknowledgement per recipient")).to_be_visible()
    expect(page.get_by_text("label_mismatch").first).to_be_visible()
    shot("3-message-timeline")
    page.goto(f"{live_url}/console/messages/{traffic.refused}")
    expect(page.get_by_text("every attempt to submit it was refused")).to_be_visible()
    expect(page.get_by_text(traffic.refused_sha256)).to_be_visible()

    # Per-agreement charts.
    page.get_by_role("link", name="Agreements", exact=True).click()
    page.get_by_role("link", name="VN-HK-CMAA-2013").click()
    expect(page.get_by_role("heading", name="Volume per day")).to_be_visible()
    expect(page.locator("svg.chart rect.acc").first).to_be_visible()
    expect(page.locator("svg.chart rect.rej").first).to_be_visible()
    page.get_by_role("link", name="Last 7 days").click()
    expect(page.get_by_role("link", name="Last 7 days")).to_have_class("active")
    shot("4-agreement-charts")

    # Rejections.
    page.get_by_role("link", name="Rejections", exact=True).click()
    expect(page.get_by_role("heading", name="Rejected attempts")).to_be_visible()
    shot("5-rejections")

    # The log's state, and "verify now" (htmx POST, same origin, with the form's token): the
    # quick checks answer at once, the full verification runs in the background and its card
    # polls until the result is in.
    page.get_by_role("link", name="Log verification").click()
    expect(page.get_by_role("heading", name="Latest checkpoint")).to_be_visible()
    page.get_by_role("button", name="Verify now").click()
    expect(page.locator("#verify-result").get_by_text("OK — the log verifies")).to_be_visible()
    full = page.locator("#full-run")
    expect(full.get_by_text(re.compile(r"full: \d+ leaves reproduce the root"))).to_be_visible()
    shot("6-log-verification")

    assert MARKER not in page.content()
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_text("You have signed out.")).to_be_visible()
    page.goto(f"{live_url}/console/log")
    expect(page).to_have_url(re.compile(r"/console/login"))
    context.close()
    assert problems == [], problems  # no CSP violation, no script error
    assert all(p.stat().st_size > 10_000 for p in shot.taken)


def test_an_auditor_downloads_a_signed_export(
    browser: Any, live_url: str, traffic: Traffic, token_for: Any, tmp_path: Path
) -> None:
    """The export button on the exchange log: a form POST with the session's form token, whose
    answer the browser saves as a file that verifies offline against the pinned log key."""
    from playwright.sync_api import expect

    from broker import keyring
    from broker.audit import verify

    expect.set_options(timeout=10_000)
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(f"{live_url}/console/login")
    page.get_by_label("Auditor token").fill(token_for("auditor"))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Exchange log")).to_be_visible()
    page.goto(f"{live_url}/console/?kind=msg.accepted")
    page.get_by_label(re.compile("^Signed export")).select_option("csv")
    with page.expect_download() as started:
        page.get_by_role("button", name="Export", exact=True).click()
    download = started.value
    assert download.suggested_filename == "audit-export.csv"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    report = verify.verify_export(saved.read_bytes(), keyring.load_or_create().log_verifier_key)
    assert report.events == 3
    assert MARKER not in saved.read_text()
    expect(page.get_by_role("heading", name="Exchange log")).to_be_visible()  # still on the page
    context.close()
    assert problems == [], problems


def test_an_auditor_reads_an_operations_results_in_a_browser(
    browser: Any, live_url: str, scene: Scene, token_for: Any, tmp_path: Path
) -> None:
    """Operations in the navigation, an operation's charts, the phase selector, a bar followed
    to the feedback it counts (with leaf links), and the CSV download, under the strict CSP."""
    from playwright.sync_api import expect

    generate(scene, 80, seed=11)
    sequence_all()
    expect.set_options(timeout=10_000)
    context = browser.new_context(viewport={"width": 1360, "height": 900}, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))
    shot = Shots(page, tmp_path)
    page.goto(f"{live_url}/console/login")
    page.get_by_label("Auditor token").fill(token_for("auditor"))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Exchange log")).to_be_visible()

    page.get_by_role("link", name="Operations", exact=True).click()
    expect(page.get_by_role("heading", name="Operations")).to_be_visible()
    page.get_by_role("link", name=ALPHA).click()
    expect(page.get_by_role("heading", name=f"{ALPHA} results")).to_be_visible()
    expect(page.locator("#results-total")).to_have_text(re.compile(r"^\d+$"))
    total = int(page.locator("#results-total").inner_text())
    assert 0 < total <= 80
    expect(page.locator("svg.chart")).to_have_count(6)
    expect(page.locator("svg.chart a.bar rect").first).to_be_visible()
    shot("7-operation-results")

    # The phase selector narrows every figure.
    page.get_by_role("link", name="alpha-1", exact=True).click()
    expect(page).to_have_url(re.compile(r"phase=alpha-1$"))
    expect(page.get_by_role("link", name="alpha-1", exact=True)).to_have_class("active")
    in_phase = int(page.locator("#results-total").inner_text())
    assert in_phase < total

    # A bar of the agency chart, followed to the feedback it counts.
    bar = page.locator("#by-agency-title ~ a.bar").first
    found = re.search(r": (\d+) feedback", bar.locator("title").text_content() or "")
    assert found is not None
    counted = int(found.group(1))
    bar.click()
    expect(page.get_by_role("heading", name="Feedback behind the figure")).to_be_visible()
    expect(page.locator("#feedback-total")).to_have_text(str(counted))
    expect(page.locator("#feedback tbody a.mid")).to_have_count(counted)
    expect(page.locator('#feedback a[href^="/console/log?index="]').first).to_be_visible()
    shot("8-feedback-behind-a-figure")
    page.locator('#feedback a[href^="/console/log?index="]').first.click()
    expect(page.get_by_role("heading", name="Latest checkpoint")).to_be_visible()

    # Back to the operation (in the phase the figure was in), and the phase's CSV.
    page.go_back()
    page.get_by_role("link", name=ALPHA).click()
    expect(page.get_by_role("link", name="alpha-1", exact=True)).to_have_class("active")
    with page.expect_download() as started:
        page.get_by_role("link", name="Download CSV").click()
    download = started.value
    assert download.suggested_filename == f"{ALPHA}-alpha-1-results.csv"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert (
        saved.read_text().splitlines()[0]
        == "phase,week,agency,outcome,commodity,quantity_band,count"
    )
    assert (
        sum(int(line.rsplit(",", 1)[1]) for line in saved.read_text().splitlines()[1:]) == in_phase
    )
    context.close()
    assert problems == [], problems  # no CSP violation, no script error
    assert all(p.stat().st_size > 10_000 for p in shot.taken)

"""The board page (`GET /`) in a real browser: chromium, driven by Playwright.

The page is embedded in an `<iframe>` of a dashboard served from another
origin, as a customer's dashboard would embed it, against the services under
gunicorn with gevent. Needs Debian's chromium at /usr/bin/chromium (Playwright
never downloads a browser here).
"""

from __future__ import annotations

import html
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from flask import Flask
from playwright.sync_api import Browser, ConsoleMessage, Frame, Locator, Page, expect, sync_playwright

from tests.conftest import auth
from tests.servers import ROOT, GunicornServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
ARTIFACTS = ROOT / "artifacts"

# A small retry hint, so the browser comes back quickly after a restart.
RETRY_MS = "300"


class DashboardSite:
    """Another origin (its own port) serving one page that embeds `?src=` in an iframe."""

    PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sales dashboard</title>
<style>
  body {{ margin: 16px; font: 15px system-ui, sans-serif; background: #e9edf2; color: #1c2128; }}
  iframe {{ width: 300px; height: 400px; border: 1px solid #c5ccd4; border-radius: 6px; background: #fff; }}
</style></head>
<body><h1>Sales dashboard</h1><iframe src="{src}" title="Live leaderboard"></iframe></body></html>
"""

    def __init__(self) -> None:
        page = self.PAGE

        class EmbedPage(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                src = parse_qs(urlsplit(self.path).query).get("src", [""])[0]
                body = page.format(src=html.escape(src)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), EmbedPage)
        self.origin = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def embedding(self, board_page: str) -> str:
        return f"{self.origin}/?{urlencode({'src': board_page})}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@pytest.fixture(scope="module")
def dashboard() -> Iterator[DashboardSite]:
    """The dashboard allowed to embed the board (in BOARD_FRAME_ANCESTORS)."""
    site = DashboardSite()
    yield site
    site.close()


@pytest.fixture(scope="module")
def stranger() -> Iterator[DashboardSite]:
    """A site that is not allowed to embed the board."""
    site = DashboardSite()
    yield site
    site.close()


@pytest.fixture(scope="module")
def increment(base_env: dict[str, str], migrated: None) -> Iterator[GunicornServer]:
    server = GunicornServer("wsgi_increment", base_env, workers=2).start()
    yield server
    server.stop()


def board_env(base_env: dict[str, str], dashboard: DashboardSite) -> dict[str, str]:
    return {**base_env, "BOARD_FRAME_ANCESTORS": f"'self' {dashboard.origin}", "SSE_RETRY_MS": RETRY_MS}


@pytest.fixture(scope="module")
def board(base_env: dict[str, str], migrated: None, dashboard: DashboardSite) -> Iterator[GunicornServer]:
    server = GunicornServer("wsgi_board", board_env(base_env, dashboard), workers=1).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


class Tab:
    """A fresh browser tab, and what its pages complained about."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console_errors: list[str] = []
        self.script_errors: list[str] = []
        page.on("console", self._on_console)
        page.on("pageerror", lambda error: self.script_errors.append(str(error)))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 800, "height": 600}, locale="en-US", color_scheme="light")
    tab = Tab(context.new_page())
    yield tab
    context.close()
    assert tab.script_errors == [], "the page threw"


def post_score(increment: GunicornServer, user: str, score: int) -> None:
    response = requests.post(f"{increment.url}/score", json={"score": score}, headers=auth(user), timeout=30)
    assert response.status_code == 200, response.text


def board_frame(page: Page) -> Frame:
    """The board page inside the dashboard's iframe, once it has loaded."""
    frame = page.locator("iframe").element_handle().content_frame()
    assert frame is not None
    frame.wait_for_load_state()
    return frame


def shown_rows(frame: Frame) -> list[list[str]]:
    """Rank, user and score of every row, as the viewer reads them."""
    rows: list[list[str]] = frame.locator("tbody tr").evaluate_all(
        "rows => rows.map(row => [...row.cells].map(cell => cell.textContent))"
    )
    return rows


def row_of(frame: Frame, user: str) -> Locator:
    return frame.locator(f'tbody tr[data-user="{user}"]')


def expect_state(frame: Frame, state: str, timeout: float = 5_000) -> None:
    labels = {"live": "Live", "reconnecting": "Reconnecting…", "offline": "Offline"}
    expect(frame.locator("html")).to_have_attribute("data-state", state, timeout=timeout)
    expect(frame.locator("#state")).to_have_text(labels[state])


def no_row_is_sliding(frame: Frame) -> None:
    frame.wait_for_function(
        "() => [...document.querySelectorAll('tbody tr')].every(row => !row.getAnimations().length)"
    )


# -- embedded in a dashboard -------------------------------------------------


@pytest.mark.e2e
def test_the_embedded_page_shows_the_board_and_marks_a_change_within_a_second(
    tab: Tab, board: GunicornServer, increment: GunicornServer, dashboard: DashboardSite, engine: Any
) -> None:
    post_score(increment, "alice", 1750)
    post_score(increment, "bob", 1400)
    post_score(increment, "carol", 900)

    tab.page.goto(dashboard.embedding(f"{board.url}/?title=Sales%20week"))
    frame = board_frame(tab.page)
    expect_state(frame, "live")
    expect(frame.locator("tbody tr")).to_have_count(3)
    assert shown_rows(frame) == [["1", "alice", "1,750"], ["2", "bob", "1,400"], ["3", "carol", "900"]]
    expect(frame.locator("h1")).to_have_text("Sales week")
    expect(frame.locator("#updated")).to_be_visible()
    headers = frame.locator("thead th").evaluate_all("cells => cells.map(cell => [cell.scope, cell.textContent])")
    assert headers == [["col", "Rank"], ["col", "User"], ["col", "Score"]]
    expect(frame.locator("[aria-live=polite]")).to_have_count(1)
    # Everything fits the 300x400 frame's width: no sideways scrolling.
    assert frame.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")

    started = time.monotonic()
    post_score(increment, "carol", 600)  # 1500: past bob
    carol = row_of(frame, "carol")
    expect(carol).to_have_attribute("data-score", "1500", timeout=1_000)
    assert time.monotonic() - started < 1.0, "the change took a second or more to show"
    expect(carol).to_have_class(re.compile(r"\bchanged\b"))
    expect(carol).to_have_class(re.compile(r"\bmoved-up\b"))
    expect(row_of(frame, "bob")).to_have_class(re.compile(r"\bmoved-down\b"))
    expect(row_of(frame, "bob")).not_to_have_class(re.compile(r"\bchanged\b"))
    expect(row_of(frame, "alice")).not_to_have_class(re.compile(r"\bchanged\b"))
    assert shown_rows(frame) == [["1", "alice", "1,750"], ["2", "carol", "1,500"], ["3", "bob", "1,400"]]
    expect(frame.locator("#changes")).to_have_text("carol 1,500, rank 2")

    no_row_is_sliding(frame)
    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "board-iframe.png"
    tab.page.screenshot(path=screenshot)
    assert screenshot.stat().st_size > 0
    assert tab.console_errors == [], "a resource failed or the CSP refused something"


@pytest.mark.e2e
def test_a_site_not_in_frame_ancestors_cannot_embed_the_page(
    tab: Tab, board: GunicornServer, stranger: DashboardSite
) -> None:
    with tab.page.expect_console_message(lambda message: "frame-ancestors" in message.text):
        tab.page.goto(stranger.embedding(f"{board.url}/"))
    expect(tab.page.frame_locator("iframe").locator("#board")).to_have_count(0)
    # Not an empty frame: Chromium puts its "refused to connect" error page there (as the README says).
    [frame] = tab.page.main_frame.child_frames
    assert frame.url.startswith("chrome-error://")
    expect(tab.page.frame_locator("iframe").locator("body")).to_contain_text("refused to connect")


@pytest.mark.e2e
def test_the_page_rides_out_a_board_restart_without_reloading(
    tab: Tab, base_env: dict[str, str], increment: GunicornServer, dashboard: DashboardSite, engine: Any
) -> None:
    board = GunicornServer("wsgi_board", board_env(base_env, dashboard), workers=1).start()
    try:
        post_score(increment, "alice", 100)
        tab.page.goto(dashboard.embedding(f"{board.url}/"))
        frame = board_frame(tab.page)
        expect_state(frame, "live")
        expect(row_of(frame, "alice")).to_have_attribute("data-score", "100")
        loaded_at = frame.evaluate("performance.timeOrigin")
        frame.evaluate("window.stillTheSamePage = true")

        board.stop()
        expect_state(frame, "reconnecting")
        post_score(increment, "bob", 250)  # while the board is down
        board.start()  # the same port

        # The browser comes back after the retry hint the draining worker sent (a few seconds).
        expect_state(frame, "live", timeout=15_000)
        expect(row_of(frame, "bob")).to_have_attribute("data-score", "250")
        assert shown_rows(frame) == [["1", "bob", "250"], ["2", "alice", "100"]]
        assert frame.evaluate("performance.timeOrigin") == loaded_at
        assert frame.evaluate("window.stillTheSamePage") is True
    finally:
        board.stop()


# -- a board of its own --------------------------------------------------------


@pytest.mark.e2e
def test_a_boards_own_page_shows_its_rules_its_title_and_names_as_text(
    tab: Tab, board: GunicornServer, increment: GunicornServer, board_name: str, engine: Any
) -> None:
    laps = f"{board_name}-laps"
    admin = auth("ops", role="admin")
    created = requests.put(
        f"{increment.url}/admin/boards/{laps}",
        json={"title": "Fastest lap", "topN": 3, "order": "asc", "operator": "best"},
        headers=admin,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    sneaky = '<img src=x onerror="window.injected = true">'
    for user, lap, name in [("u1", 61_200, "Ada"), ("u2", 59_800, sneaky), ("u3", 62_000, None)]:
        claims = {"name": name} if name else {}
        answer = requests.post(
            f"{increment.url}/boards/{laps}/score", json={"score": lap}, headers=auth(user, **claims), timeout=10
        )
        assert answer.status_code == 200, answer.text
    post_score(increment, "elsewhere", 1)  # the default board: not this page's

    tab.page.goto(f"{board.url}/boards/{laps}/")
    expect_state(tab.page.main_frame, "live")
    expect(tab.page.locator("h1")).to_have_text("Fastest lap")
    expect(tab.page.locator("tbody tr")).to_have_count(3)
    frame = tab.page.main_frame
    # Lower is better; the name is shown as the text it is, the id on hover.
    assert shown_rows(frame) == [["1", sneaky, "59,800"], ["2", "Ada", "61,200"], ["3", "u3", "62,000"]]
    assert tab.page.evaluate("window.injected") is None
    expect(row_of(frame, "u2").locator("th")).to_have_attribute("title", "u2")

    # A slower lap changes nothing; a faster one moves the row up.
    requests.post(f"{increment.url}/boards/{laps}/score", json={"score": 63_000}, headers=auth("u1"), timeout=10)
    requests.post(f"{increment.url}/boards/{laps}/score", json={"score": 58_000}, headers=auth("u3"), timeout=10)
    expect(row_of(frame, "u3")).to_have_attribute("data-rank", "1", timeout=2_000)
    assert shown_rows(frame) == [["1", "u3", "58,000"], ["2", sneaky, "59,800"], ["3", "Ada", "61,200"]]

    # A cheater removed by an admin leaves the page at once.
    requests.delete(f"{increment.url}/admin/boards/{laps}/users/u3", headers=admin, timeout=10)
    expect(tab.page.locator("tbody tr")).to_have_count(2, timeout=2_000)
    assert [row[1] for row in shown_rows(frame)] == [sneaky, "Ada"]
    assert tab.console_errors == []


def test_with_recent_the_page_lists_the_latest_changes_newest_first_as_text(
    tab: Tab, board: GunicornServer, increment: GunicornServer, board_name: str, engine: Any
) -> None:
    sprint = f"{board_name}-sprint"
    admin = auth("ops", role="admin")
    created = requests.put(f"{increment.url}/admin/boards/{sprint}", json={"topN": 5}, headers=admin, timeout=10)
    assert created.status_code == 201, created.text
    sneaky = "<b>bold</b>"
    post = f"{increment.url}/boards/{sprint}/score"
    assert requests.post(post, json={"score": 100}, headers=auth("u1", name=sneaky), timeout=10).status_code == 200
    tab.page.goto(f"{board.url}/boards/{sprint}/?recent=3")
    expect_state(tab.page.main_frame, "live")
    expect(tab.page.locator("#recent")).to_have_attribute("data-state", "live")
    recent = tab.page.locator("#recent li")
    expect(recent).to_have_count(0)  # from now on: what came before is on the board
    for user, score in [("u1", 250), ("u2", 40), ("u3", 7), ("u2", 5)]:
        assert requests.post(post, json={"score": score}, headers=auth(user), timeout=10).status_code == 200
    expect(recent).to_have_count(3, timeout=3_000)
    # Newest first, at most 3; what each change added, the name as the text it is.
    expect(recent).to_have_text(["u2 +5", "u3 +7", "u2 +40"])
    requests.post(post, json={"score": 1}, headers=auth("u1"), timeout=10)
    expect(recent.first).to_have_text(f"{sneaky} +1", timeout=3_000)
    expect(recent.first.locator(".user")).to_have_attribute("title", "u1")
    assert tab.console_errors == []


def test_a_board_with_resets_shows_its_period_counts_down_and_empties_at_the_reset(
    tab: Tab, board: GunicornServer, increment: GunicornServer, board_name: str, engine: Any
) -> None:
    """A board that resets every 5 seconds: the page names the period, counts down to its end,
    and shows the new, empty period when it comes, without reloading."""
    heat = f"{board_name}-heat"
    admin = auth("ops", role="admin")
    settings = {"topN": 5, "reset": "* * * * * */5"}
    created = requests.put(f"{increment.url}/admin/boards/{heat}", json=settings, headers=admin, timeout=10)
    assert created.status_code == 201, created.text
    post = f"{increment.url}/boards/{heat}/score"
    answer = requests.post(post, json={"score": 42}, headers=auth("u1"), timeout=10)
    assert answer.status_code == 200, answer.text
    first_period = answer.json()["period"]
    tab.page.goto(f"{board.url}/boards/{heat}/")
    expect_state(tab.page.main_frame, "live")
    frame = tab.page.main_frame
    period = tab.page.locator("#period-id")
    left = tab.page.locator("#period-left")
    if period.text_content() == first_period:  # still the period the score went into
        expect(tab.page.locator("tbody tr")).to_have_count(1)
        assert shown_rows(frame) == [["1", "u1", "42"]]
    expect(tab.page.locator("#period")).to_be_visible()
    expect(left).to_have_text(re.compile(r"^00:00:0[0-5]$"))
    shown = period.text_content()
    tab.page.evaluate("window.sameDocument = true")
    expect(period).not_to_have_text(shown or "", timeout=7_000)  # the reset, live
    expect(tab.page.locator("tbody tr")).to_have_count(0)
    expect(tab.page.locator("#note")).to_have_text("No scores yet in this period.")
    assert tab.page.evaluate("window.sameDocument") is True  # never reloaded
    assert tab.console_errors == []


# -- parameters --------------------------------------------------------------


@pytest.mark.e2e
def test_the_title_is_text_n_limits_the_rows_and_theme_forces_dark(
    tab: Tab, board: GunicornServer, increment: GunicornServer, engine: Any
) -> None:
    for user, score in [("ann", 50), ("ben", 40), ("cat", 30), ("dan", 20), ("eve", 10)]:
        post_score(increment, user, score)
    title = '<script>window.injected = true</script><img src=x onerror="window.injected = true">'

    tab.page.goto(f"{board.url}/?{urlencode({'n': 3, 'title': title, 'theme': 'dark'})}")
    expect_state(tab.page.main_frame, "live")
    expect(tab.page.locator("h1")).to_have_text(title)
    assert tab.page.title() == title
    assert tab.page.evaluate("window.injected") is None
    expect(tab.page.locator("tbody tr")).to_have_count(3)
    assert shown_rows(tab.page.main_frame) == [["1", "ann", "50"], ["2", "ben", "40"], ["3", "cat", "30"]]
    # The tab prefers light; ?theme=dark wins.
    background = tab.page.evaluate("getComputedStyle(document.documentElement).backgroundColor")
    assert sum(int(part) for part in re.findall(r"\d+", background)[:3]) < 3 * 64, background


# -- headers, without a browser ----------------------------------------------


def test_the_page_may_be_framed_by_self_by_default_and_sends_no_x_frame_options(
    make_app: Callable[..., Flask],
) -> None:
    response = make_app(service="board").test_client().get("/")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    policy = [directive.strip() for directive in response.headers["Content-Security-Policy"].split(";")]
    assert "frame-ancestors 'self'" in policy
    assert "default-src 'self'" in policy
    assert "X-Frame-Options" not in response.headers


def test_frame_ancestors_comes_from_the_setting(make_app: Callable[..., Flask]) -> None:
    app = make_app(service="board", BOARD_FRAME_ANCESTORS="self https://dash.example.com")
    policy = app.test_client().get("/").headers["Content-Security-Policy"]
    assert "frame-ancestors 'self' https://dash.example.com" in policy


def test_the_page_and_its_files_stay_public_when_the_board_requires_a_token(
    make_app: Callable[..., Flask],
) -> None:
    client = make_app(service="board", BOARD_REQUIRE_AUTH="true").test_client()
    assert client.get("/").status_code == 200
    with client.get("/assets/board.js") as script, client.get("/assets/board.css") as style:
        assert (script.status_code, script.mimetype) == (200, "text/javascript")
        assert (style.status_code, style.mimetype) == (200, "text/css")
    assert client.get("/leaderboard").status_code == 401

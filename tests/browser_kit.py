"""What the browser tests share: Debian Chromium's launch options, `streamlit run app.py` on a free port,
Playwright's `expect` (30 s per check), a page, the login form, a metric, a screenshot, and `Runs`: what the
page's websocket says about the runs of the app's script. The module-scoped `browser` fixture is in conftest.py."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

from annotator.auth import BROWSER_COOKIE
from helpers import REPO, wait_for

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
BROWSER_MARKS = [pytest.mark.browser,
                 pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian chromium at /usr/bin/chromium")]
WAIT_MS = 30_000  # how long a page action or an `expect` check waits: a loaded 2-core machine needs that long
sync_api = pytest.importorskip("playwright.sync_api")
expect = sync_api.expect
expect.set_options(timeout=WAIT_MS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    """Terminate, then kill if it does not exit within 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_healthy(url: str, proc: subprocess.Popen) -> None:
    """Wait until the Streamlit server at ``url`` answers /_stcore/health with ok (fails if ``proc`` exits)."""
    def healthy() -> bool:
        try:
            return urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok"
        except OSError:
            return False

    wait_for(healthy, timeout=60, what="streamlit to start", proc=proc, every=0.3)


@contextmanager
def streamlit_app(env: dict, *, log_name: str) -> Iterator[str]:
    """Run `streamlit run app.py` with `env` until the block ends; yields its URL once /_stcore/health is ok.
    Output goes to tests/artifacts/`log_name`."""
    ARTIFACTS.mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(ARTIFACTS / log_name, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true", "--server.address",
             "127.0.0.1", "--server.port", str(port), "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_healthy(url, proc)
            yield url
        finally:
            stop(proc)


@contextmanager
def chromium() -> Iterator:
    """Debian Chromium, headless, launched by Playwright; closed when the block ends."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def new_page(browser):
    """A page in a new browser context (no cookies) at 1400x1000 that accepts downloads."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    return page


def login(page, url: str, name: str, password: str) -> None:
    """Sign in through the login form; returns once the Annotate page (everyone's landing page) is shown and the
    browser holds its id cookie (written by a script after the login: a link opened before it exists counts as
    another browser's, which a busy machine can make a test hit)."""
    page.goto(url)
    page.get_by_label("User name").fill(name)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Annotate")).to_be_visible()
    page.wait_for_function(f"document.cookie.includes('{BROWSER_COOKIE}=')")


def metric(page, label: str):
    """The value of the metric with this label."""
    return page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id("stMetricValue")


def shot(page, name: str) -> None:
    """A full-page screenshot to tests/artifacts/`name`.png once every image has loaded."""
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    page.wait_for_timeout(300)  # let charts paint (a picture for people; nothing is asserted on it)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


class Runs:
    """The runs of the app's script in one page, as the page's websocket carries them: a press that reached the
    server ("sent": a rerun_script message), each run's start ("started": new_session), its first output
    ("drew": the script's body has begun, so the run has taken its press, whose callback runs before the body)
    and its end (script_finished, by status).

    Create it before the page opens the app. Press keys and click widgets through `press` and `click`, so `idle`
    knows how many rerun requests to wait for. Playwright hands over websocket frames only while one of its calls
    runs, so `wait` polls with page.wait_for_timeout.
    """

    def __init__(self, page) -> None:
        self.page, self.events, self.pressed, self.drawn = page, [], 0, True
        page.on("websocket", self._watch)

    def _watch(self, ws) -> None:
        ws.on("framesent", self._sent)
        ws.on("framereceived", self._received)

    def _sent(self, payload: str | bytes) -> None:
        msg = BackMsg()
        if isinstance(payload, bytes) and msg.ParseFromString(payload) and msg.WhichOneof("type") == "rerun_script":
            self.events.append("sent")

    def _received(self, payload: str | bytes) -> None:
        msg = ForwardMsg()
        if not isinstance(payload, bytes) or not msg.ParseFromString(payload):
            return
        kind = msg.WhichOneof("type")
        if kind == "new_session":
            self.events.append("started")
            self.drawn = False
        elif kind == "script_finished":
            self.events.append(ForwardMsg.ScriptFinishedStatus.Name(msg.script_finished))
        elif kind in ("page_config_changed", "navigation", "delta") and not self.drawn:
            self.events.append("drew")
            self.drawn = True

    def count(self, event: str) -> int:
        return self.events.count(event)

    def taken(self, drew: int) -> Callable[[], bool]:
        """A check for `wait`: a run has drawn since `drew` was `count("drew")` (the press before it is taken)."""
        return lambda: self.count("drew") > drew

    def press(self, key: str) -> None:
        """Press `key` in the page; each press of a button's shortcut sends one rerun_script."""
        self.pressed = max(self.pressed, self.count("sent")) + 1
        self.page.keyboard.press(key)

    def click(self, locator) -> None:
        """Click a widget (`locator`) that reruns the script when clicked: one rerun_script."""
        self.pressed = max(self.pressed, self.count("sent")) + 1
        locator.click()

    def sent_all(self) -> bool:
        """Every press made through `press` has reached the server."""
        return self.count("sent") >= self.pressed

    def idle(self) -> bool:
        """The app has answered every press: all were sent, none after the last run started, and that run
        finished (was not cut short for a rerun)."""
        last_sent = max((i for i, e in enumerate(self.events) if e == "sent"), default=-1)
        last_start = max((i for i, e in enumerate(self.events) if e == "started"), default=-1)
        return (self.sent_all() and last_sent < last_start
                and self.events[-1] == ForwardMsg.ScriptFinishedStatus.Name(ForwardMsg.FINISHED_SUCCESSFULLY))

    def wait(self, done, what: str) -> None:
        """Let Playwright deliver the websocket's frames until `done()` holds; fails after WAIT_MS."""
        end = time.monotonic() + WAIT_MS / 1000
        while not done():
            if time.monotonic() > end:
                raise AssertionError(f"waited {WAIT_MS // 1000} s for {what}; the last events: {self.events[-10:]}")
            self.page.wait_for_timeout(50)

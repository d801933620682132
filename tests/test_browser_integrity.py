"""One live verdict per image through a real browser (Debian Chromium + Playwright), without the worker:
key presses 40-80 ms apart, presses while another connection holds the write lock, two tabs of one user. The
tests wait for what the app does (the runs of its script on the page's websocket, the page's count), not for a
time. Skipped when /usr/bin/chromium is missing."""
import os
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from browser_kit import ARTIFACTS, BROWSER_MARKS, Runs, expect, metric, new_page, streamlit_app
from browser_kit import login as login_as
from helpers import demo_db

from annotator import auth
from annotator.store import Store

PASSWORD = "alice-password"
N_IMAGES = 120
# ABANDONED: when a press comes in while a run still works (waiting for the database lock, say), Streamlit starts
# the press's run at once in a new thread (runner.fastReruns) and leaves the old one to stop at its next Streamlit
# call; the old run still commits a verdict it is writing, but sends the page nothing more. So the page's last
# run can end before an earlier press's verdict is in the store: the tests wait for the verdicts they know must
# come. And a press's callback runs in its run's thread: a second press is made only once the first one's run
# has drawn (Runs.taken), or on a loaded machine the second callback can queue its action first.

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Yields (url, db path) of `streamlit run app.py` on 120 demo images, alice an annotator."""
    ARTIFACTS.mkdir(exist_ok=True)
    db = demo_db(tmp_path_factory.mktemp("integrity"), N_IMAGES)
    with Store(db) as store:
        auth.add_user(store, "alice", "annotator", PASSWORD)
    env = dict(os.environ, ANNOTATOR_DB=str(db), ANNOTATOR_ADMIN_PASSWORD="admin-password-1", PYTHONUNBUFFERED="1")
    with streamlit_app(env, log_name="streamlit-integrity.log") as url:
        yield url, db


def login(page, url: str) -> None:
    """browser_kit.login as alice, then the first image is on screen."""
    login_as(page, url, "alice", PASSWORD)
    expect(page.get_by_text("Image #")).to_be_visible()


def presses(db: Path) -> Counter:
    """Live verdicts by value: j gives 'correct', k 'wrong' (a press applied twice shows up here)."""
    with Store(db) as store:
        return Counter(v["verdict"] for v in store.live_verdicts())


def live(db: Path) -> Counter:
    """Live verdicts per image id."""
    with Store(db) as store:
        return Counter(v["image_id"] for v in store.live_verdicts())


def settle(page, runs: Runs, db: Path) -> int:
    """Wait until the app has answered every press (`Runs.idle`: no run left to change the store) and the page
    shows the store's count of my verdicts; returns it.

    Streamlit starts a new run on a key press even while the previous run of the session waits for the
    database lock; the old run still commits its verdict, but what it draws is discarded, so until the next
    press the page may show one verdict fewer. Then a reload (same session token) must show the store's count.
    """
    runs.wait(runs.idle, "the app to answer every press")
    n = sum(live(db).values())
    try:
        expect(metric(page, "Mine")).to_have_text(str(n), timeout=3_000)
    except AssertionError:
        page.reload()
        expect(metric(page, "Mine")).to_have_text(str(n))
    return n


@contextmanager
def write_lock_held(db: Path) -> Iterator[None]:
    """Another connection holds the write lock (BEGIN IMMEDIATE) while the block runs, as the worker publishing
    scores does."""
    conn = sqlite3.connect(db, timeout=30)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("COMMIT")
        conn.close()


def test_double_press_40_to_80_ms_apart(server, browser):
    url, db = server
    page = new_page(browser)
    runs = Runs(page)
    login(page, url)
    rng = random.Random(0)
    before, by_key = settle(page, runs, db), presses(db)
    for _ in range(8):
        drew = runs.count("drew")
        runs.press("j")
        page.wait_for_timeout(rng.randint(40, 80))  # the double press under test: k 40-80 ms after j, and
        runs.wait(runs.taken(drew), "the run of the j press to take it")  # after j's run took j (ABANDONED)
        runs.press("k")
        runs.wait(runs.idle, "the app to answer both presses")
    runs.wait(lambda: presses(db)["correct"] - by_key["correct"] >= 8, "a verdict for every j (see ABANDONED)")
    after = settle(page, runs, db)
    counts = live(db)
    assert max(counts.values()) == 1, {i: n for i, n in counts.items() if n > 1}
    assert presses(db)["correct"] - by_key["correct"] == 8  # every j saved once: none lost, none replayed
    assert after - before <= 16
    page.context.close()


def test_presses_while_the_database_is_busy(server, browser):
    """Another connection holds BEGIN IMMEDIATE (as the worker publishing scores does) from before j until k has
    reached the server: j's run waits for the lock while k comes in. The k must not land on the image the j
    judged. k is pressed once j's run has taken j (ABANDONED)."""
    url, db = server
    page = new_page(browser)
    runs = Runs(page)
    login(page, url)
    for _ in range(3):
        before, by_key = settle(page, runs, db), presses(db)
        with write_lock_held(db):
            drew = runs.count("drew")
            runs.press("j")
            runs.wait(runs.taken(drew), "the run of the j press to take it")
            runs.press("k")
            runs.wait(runs.sent_all, "the k press to reach the server")
        runs.wait(lambda: presses(db)["correct"] > by_key["correct"], "the j press's verdict (see ABANDONED)")
        after = settle(page, runs, db)
        counts = live(db)
        assert max(counts.values()) == 1, {i: n for i, n in counts.items() if n > 1}
        assert presses(db)["correct"] - by_key["correct"] == 1 and after - before in (1, 2)
    page.context.close()


def test_two_tabs_of_one_user(server, browser):
    url, db = server
    one = new_page(browser)
    runs_one = Runs(one)
    login(one, url)
    two = one.context.new_page()  # a second tab of the same browser, same signed-in URL
    runs_two = Runs(two)
    two.set_default_timeout(30_000)
    two.goto(one.url)
    expect(two.get_by_text("Image #")).to_be_visible()
    assert two.get_by_text("Image #").inner_text() == one.get_by_text("Image #").inner_text()  # the same image
    runs_one.press("j")
    settle(one, runs_one, db)
    two.bring_to_front()
    runs_two.press("k")  # on the image the first tab just judged
    expect(two.get_by_text("Not saved: image")).to_be_visible()
    expect(two.get_by_text("already has a verdict")).to_be_visible()
    for _ in range(4):
        one.bring_to_front()
        runs_one.press("j")
        settle(one, runs_one, db)
        two.bring_to_front()
        runs_two.press("k")
        settle(two, runs_two, db)
    counts = live(db)
    assert max(counts.values()) == 1, {i: n for i, n in counts.items() if n > 1}
    ARTIFACTS.mkdir(exist_ok=True)
    two.screenshot(path=str(ARTIFACTS / "annotate-second-tab.png"), full_page=True)
    one.context.close()

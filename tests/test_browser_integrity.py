"""One live verdict per image through a real browser (Debian Chromium + Playwright), without the worker:
key presses 40-80 ms apart, presses while another connection holds the write lock, two tabs of one user.
Skipped when /usr/bin/chromium is missing."""
import os
import random
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from browser_kit import ARTIFACTS, BROWSER_MARKS, expect, metric, new_page, streamlit_app
from browser_kit import login as login_as
from helpers import demo_db

from annotator import auth
from annotator.store import Store

PASSWORD = "alice-password"
N_IMAGES = 120

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


def settle(page, db: Path) -> int:
    """Wait until the store has stopped changing and the page shows its count of my verdicts; returns it.

    Streamlit starts a new run on a key press even while the previous run of the session waits for the
    database lock; the old run still commits its verdict, but what it draws is discarded, so until the next
    press the page may show one verdict fewer. Then a reload (same session token) must show the store's count.
    """
    n, stable_since = sum(live(db).values()), time.time()
    while time.time() - stable_since < 2:
        time.sleep(0.25)
        now = sum(live(db).values())
        if now != n:
            n, stable_since = now, time.time()
    shown = metric(page, "Mine")
    try:
        expect(shown).to_have_text(str(n), timeout=3_000)
    except AssertionError:
        page.reload()
        expect(metric(page, "Mine")).to_have_text(str(n))
    return n


def test_double_press_40_to_80_ms_apart(server, browser):
    url, db = server
    page = new_page(browser)
    login(page, url)
    rng = random.Random(0)
    before, by_key = settle(page, db), presses(db)
    for _ in range(8):
        page.keyboard.press("j")
        page.wait_for_timeout(rng.randint(40, 80))
        page.keyboard.press("k")
        page.wait_for_timeout(700)
    after = settle(page, db)
    counts = live(db)
    assert max(counts.values()) == 1, {i: n for i, n in counts.items() if n > 1}
    assert presses(db)["correct"] - by_key["correct"] == 8  # every j saved once: none lost, none replayed
    assert after - before <= 16
    page.context.close()


def test_presses_while_the_database_is_busy(server, browser):
    """Another connection holds BEGIN IMMEDIATE for 3 s (as the worker publishing scores does); j, then k
    1.2 s later: the k must not land on the image the j judged."""
    url, db = server
    page = new_page(browser)
    login(page, url)
    for _ in range(3):
        before, by_key = settle(page, db), presses(db)
        locked = threading.Event()

        def hold() -> None:
            conn = sqlite3.connect(db, timeout=30)
            conn.execute("BEGIN IMMEDIATE")
            locked.set()
            time.sleep(3)
            conn.execute("COMMIT")
            conn.close()

        holder = threading.Thread(target=hold)
        holder.start()
        assert locked.wait(10)
        page.keyboard.press("j")
        page.wait_for_timeout(1200)
        page.keyboard.press("k")
        holder.join()
        page.wait_for_timeout(1500)
        page.wait_for_timeout(3000)  # a press replayed after the interrupted rerun would land by now
        after = settle(page, db)
        counts = live(db)
        assert max(counts.values()) == 1, {i: n for i, n in counts.items() if n > 1}
        assert presses(db)["correct"] - by_key["correct"] == 1 and after - before in (1, 2)
    page.context.close()


def test_two_tabs_of_one_user(server, browser):
    url, db = server
    one = new_page(browser)
    login(one, url)
    two = one.context.new_page()  # a second tab of the same browser, same signed-in URL
    two.set_default_timeout(30_000)
    two.goto(one.url)
    expect(two.get_by_text("Image #")).to_be_visible()
    assert two.get_by_text("Image #").inner_text() == one.get_by_text("Image #").inner_text()  # the same image
    one.keyboard.press("j")
    settle(one, db)
    two.bring_to_front()
    two.keyboard.press("k")  # on the image the first tab just judged
    expect(two.get_by_text("Not saved: image")).to_be_visible()
    expect(two.get_by_text("already has a verdict")).to_be_visible()
    for _ in range(4):
        one.bring_to_front()
        one.keyboard.press("j")
        settle(one, db)
        two.bring_to_front()
        two.keyboard.press("k")
        settle(two, db)
    counts = live(db)
    assert max(counts.values()) == 1, {i: n for i, n in counts.items() if n > 1}
    ARTIFACTS.mkdir(exist_ok=True)
    two.screenshot(path=str(ARTIFACTS / "annotate-second-tab.png"), full_page=True)
    one.context.close()

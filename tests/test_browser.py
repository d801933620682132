"""End to end in Debian Chromium (Playwright): the real worker and `streamlit run app.py` on 200 demo images.

The lead logs in and creates an annotator who can log in; an annotator presses j/k/u for 10 verdicts and
undoes one with z, cannot open the lead pages, reloads and keeps every verdict, flips and submits a grid; the
lead sees the dashboard chart and downloads the CSV. Each test signs in its own annotator, so any test runs
alone or in any order. Screenshots of each page go to tests/artifacts/ (with the server and worker logs).
Skipped when /usr/bin/chromium is missing (`make chromium` installs it).
"""
import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from annotator import auth
from annotator.ingest import ingest_csv
from annotator.round_config import RoundConfig, save_round_config
from annotator.store import Store
from browser_kit import ARTIFACTS, BROWSER_MARKS, expect, login, metric, new_page, shot, stop, streamlit_app
from helpers import DEMO, REPO, wait_for

ADMIN_PW = "lead-pass-123"
N_IMAGES = 200

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Yields (url, db path); the worker and the app run until the module's tests are done."""
    ARTIFACTS.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("e2e")
    db = tmp / "state" / "annotator.db"
    with open(DEMO / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))[:N_IMAGES + 1]
    with open(tmp / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with Store(db) as store:
        report = ingest_csv(store, tmp / "labels.csv", DEMO, progress=False)
        assert report.added == N_IMAGES, report.summary()
        store.set_verify(["airplane", "automobile"])
        save_round_config(store, RoundConfig(backbone_epochs=1, steps=200))
    env = dict(os.environ, ANNOTATOR_DB=str(db), ANNOTATOR_ADMIN_PASSWORD=ADMIN_PW, PYTHONUNBUFFERED="1")
    with open(ARTIFACTS / "worker.log", "w") as log:
        worker = subprocess.Popen([sys.executable, "-m", "annotator", "--db", str(db), "-v", "worker", "--poll", "1"],
                                  cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            with streamlit_app(env, log_name="streamlit.log") as url:
                yield url, db
        finally:
            stop(worker)


@pytest.fixture
def annotator(server, request) -> tuple[str, str]:
    """(name, password) of an annotator created for this test alone, so each test runs by itself (`-k`)."""
    name = request.node.name.removeprefix("test_")[:40]
    with Store(server[1]) as store:
        return name, auth.add_user(store, name, "annotator")


def live_of(db: Path, name: str) -> list[dict]:
    with Store(db) as store:
        return [v for v in store.live_verdicts() if v["annotator"] == name]


def test_lead_creates_an_annotator_who_can_log_in(server, browser):
    url, db = server
    page = new_page(browser)
    page.goto(url)
    expect(page.get_by_label("User name")).to_be_visible()
    shot(page, "login")
    login(page, url, "admin", ADMIN_PW)
    page.get_by_role("link", name="Admin").click()
    expect(page.get_by_role("heading", name="Admin")).to_be_visible()
    page.get_by_label("New user name").fill("alice")
    page.get_by_role("button", name="Add user").click()
    code = page.get_by_test_id("stCode")
    expect(code).to_be_visible()
    password = code.inner_text().strip()
    shot(page, "admin")
    page.context.close()
    with Store(db) as store:
        assert store.get_user("alice")["role"] == "annotator"
    page = new_page(browser)
    login(page, url, "alice", password)
    expect(page.get_by_role("link", name="Admin")).to_have_count(0)
    page.context.close()


def test_annotator_keys_count_and_undo(server, browser, annotator):
    url, db = server
    name, password = annotator
    page = new_page(browser)
    login(page, url, name, password)
    expect(metric(page, "Mine")).to_have_text("0")
    keys = ["j", "k", "u", "j", "k", "u", "j", "j", "k", "j"]
    for n, key in enumerate(keys, start=1):
        page.keyboard.press(key)
        expect(metric(page, "Mine")).to_have_text(str(n))  # counted after each key
        if n == 2:  # after 'k': the number keys give the true class (optional)
            expect(page.get_by_text("True class? (optional)")).to_be_visible()
            shot(page, "annotate-wrong")
            page.keyboard.press("3")  # bird: each class keeps its key (by name); images here are airplane/automobile
            expect(page.get_by_text("true class:")).to_be_visible()
    live = live_of(db, annotator[0])
    assert [v["verdict"] for v in live] == ["correct", "wrong", "unsure", "correct", "wrong", "unsure", "correct",
                                            "correct", "wrong", "correct"]
    assert live[1]["corrected_label_id"] is not None and live[4]["corrected_label_id"] is None
    last = live[-1]["id"]
    page.keyboard.press("z")
    expect(metric(page, "Mine")).to_have_text("9")
    with Store(db) as store:
        undo = store.get_verdict(store.max_verdict_id())
        assert undo["voids"] == last and undo["annotator"] == name
    assert len(live_of(db, annotator[0])) == 9
    shot(page, "annotate")
    page.context.close()


def test_annotator_cannot_open_lead_pages(server, browser, annotator):
    url, _ = server
    page = new_page(browser)
    login(page, url, *annotator)
    for title in ("Dashboard", "Admin", "Export"):
        expect(page.get_by_role("link", name=title)).to_have_count(0)
    token = page.url.split("session=", 1)[1]
    for path in ("admin", "export", "dashboard"):
        page.goto(f"{url}/{path}?session={token}")
        expect(page.get_by_role("heading", name="Annotate")).to_be_visible()  # falls back to her only page
        expect(page.get_by_role("heading", name=path.capitalize())).to_have_count(0)
        expect(page.get_by_test_id("stDataFrame")).to_have_count(0)
    shot(page, "annotator-denied")
    page.context.close()


def test_reload_keeps_every_verdict(server, browser, annotator):
    url, db = server
    page = new_page(browser)
    login(page, url, *annotator)
    before = len(live_of(db, annotator[0]))
    expect(metric(page, "Mine")).to_have_text(str(before))
    for n in (1, 2):
        page.keyboard.press("j")
        expect(metric(page, "Mine")).to_have_text(str(before + n))
    image = page.get_by_text("Image #").inner_text()
    page.reload()
    expect(page.get_by_role("heading", name="Annotate")).to_be_visible()  # still signed in
    expect(metric(page, "Mine")).to_have_text(str(before + 2))
    assert page.get_by_text("Image #").inner_text() == image  # the same image comes back
    assert len(live_of(db, annotator[0])) == before + 2
    page.context.close()


def test_grid_mode_flip_and_submit_with_g(server, browser, annotator):
    url, db = server
    page = new_page(browser)
    login(page, url, *annotator)
    before = len(live_of(db, annotator[0]))
    page.get_by_text("Grid mode: 16 images of one class").click()
    caption = page.get_by_text(re.compile(r"0 of \d+ marked wrong"))  # the whole grid has rendered
    expect(caption).to_be_visible()
    n = int(re.search(r"0 of (\d+) marked wrong", caption.inner_text()).group(1))
    flips = page.locator("[class*='st-key-ann_flip_'] button")
    expect(flips).to_have_count(n)
    assert 0 < n <= 16
    flips.first.click()
    expect(page.get_by_text(f"1 of {n} marked wrong")).to_be_visible()
    shot(page, "annotate-grid")
    page.keyboard.press("g")
    expect(metric(page, "Mine")).to_have_text(str(before + n))
    grid = [v for v in live_of(db, annotator[0]) if v["reason"] == "grid"]
    assert len(grid) == n and [v["verdict"] for v in grid].count("wrong") == 1
    page.context.close()


def test_lead_dashboard_and_csv_download(server, browser, tmp_path):
    url, db = server
    with Store(db) as store:  # the worker computes the first model (frozen Lite0 features of 200 images, a probe)
        wait_for(store.current_model, timeout=150, what="the first model", every=1)
        live = {v["image_id"]: v["verdict"] for v in store.live_verdicts()}
    page = new_page(browser)
    login(page, url, "admin", ADMIN_PW)
    page.get_by_role("link", name="Dashboard").click()
    expect(page.get_by_role("heading", name="Label noise per class")).to_be_visible()
    charts = page.get_by_test_id("stVegaLiteChart")
    expect(charts.first).to_be_visible()
    assert charts.count() >= 2  # noise per class, estimate trend (+ audit trend once audit verdicts reach a model)
    expect(page.get_by_text("Backbone:")).to_be_visible()
    shot(page, "dashboard")
    page.get_by_role("link", name="Export").click()
    expect(page.get_by_role("heading", name="Preview (first 100 rows)")).to_be_visible()
    expect(page.get_by_test_id("stDataFrame").first).to_be_visible()  # the preview (the column guide is another)
    shot(page, "export")
    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV").click()
    out = tmp_path / "export.csv"
    info.value.save_as(out)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_IMAGES
    assert {"path", "noisy_label", "verdict", "score", "keep", "w_soft"} <= set(rows[0])
    assert sum(1 for r in rows if r["verdict"]) == len(live)
    assert all(r["score"] for r in rows)  # every image scored by the current model
    page.context.close()

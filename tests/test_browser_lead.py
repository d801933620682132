"""A lead's walk at 1366x768 (Debian Chromium, Playwright): the dashboard opens with "Where we stand" above the
noise picture and the worker panel, shows no filesystem path and the transfer check's figures; the export page's
what-if follows the threshold control, and the download applies the chosen threshold and names it. The app runs without a worker: a model's
scores (P(label correct), higher when the demo's label is the clean one) and audit verdicts answered from the
clean labels (audits in the verified classes, a transfer sample in two unverified ones) are written through the
store on 120 demo images. Screenshots go to tests/artifacts/."""
import csv
import os
import random

import pytest

from annotator import auth, estimates
from annotator.store import Store
from browser_kit import ARTIFACTS, BROWSER_MARKS, expect, streamlit_app
from helpers import DEMO, demo_db, demo_rows

PW = "lead-pass-123"
N = 120
SIZE = (1366, 768)

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, db): N demo images, 2 verified classes, a current model, audit verdicts from the clean labels."""
    tmp = tmp_path_factory.mktemp("lead")
    clean = {str((DEMO / r["path"]).resolve()): r["clean_label"] for r in demo_rows(N)}
    db = demo_db(tmp, N, verify=["airplane", "automobile"])
    rng = random.Random(0)
    with Store(db) as store:
        auth.add_user(store, "admin", "lead", PW)
        version = store.add_model(delta=0.5, metrics={"noise_rate_kind": "expected", "method": "robust",
                                                      "backbone_arch": "efficientnet_lite0",
                                                      "backbone_kind": "pretrained",
                                                      "backbone": f"ImageNet (weights from {tmp})"})
        images = list(store.iter_images())
        scores = [(r["id"], r["label_id"], s, abs(s - 0.5)) for r in images for s in [
            rng.uniform(0.55, 1.0) if clean[r["path"]] == r["label"] else rng.uniform(0.0, 0.6)]]
        store.write_scores(version, scores)
        store.make_current(version)
        for r in images:
            verdict = "correct" if clean[r["path"]] == r["label"] else "wrong"
            if r["label"] in ("airplane", "automobile") and rng.random() < 0.6:
                store.record_verdict(r["id"], "admin", verdict, reason="audit")
            elif r["label"] in ("cat", "dog") and rng.random() < 0.5:  # the transfer sample
                store.record_verdict(r["id"], "admin", verdict, reason="transfer_check")
    env = dict(os.environ, ANNOTATOR_DB=str(db), ANNOTATOR_ADMIN_PASSWORD=PW, PYTHONUNBUFFERED="1")
    with streamlit_app(env, log_name="lead-streamlit.log") as url:
        yield url, db, tmp


def metric(page, label: str):
    return page.get_by_test_id("stMetric").filter(has_text=label).get_by_test_id("stMetricValue")


def test_a_lead_walks_where_we_stand_the_what_if_and_a_download(server, browser, tmp_path):
    url, db, tmp = server
    with Store(db) as store:
        s = estimates.standing(store)
    context = browser.new_context(viewport={"width": SIZE[0], "height": SIZE[1]}, accept_downloads=True)
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(url)
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password", exact=True).fill(PW)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Dashboard").click()
    stand = page.get_by_role("heading", name="Where we stand")
    expect(stand).to_be_visible()
    noise = page.get_by_role("heading", name="Label noise per class")
    worker = page.get_by_role("heading", name="Worker")
    expect(worker).to_be_attached()
    assert stand.bounding_box()["y"] < noise.bounding_box()["y"] < worker.bounding_box()["y"]
    assert stand.bounding_box()["y"] < SIZE[1]  # on the first screen
    expect(metric(page, "Wrong labels")).to_have_text(f"{s['wrong_total']['point']:,.0f}")
    expect(metric(page, "Fixed")).to_have_text(f"{s['fixed']['wrong']:,}")
    expect(page.get_by_text("Left in other classes (8)")).to_be_visible()
    t = s["transfer"]
    assert t["n"] > 5
    expect(page.get_by_text(f"flags that disagree with the {t['n']} transfer-check verdicts")).to_be_visible()
    expect(page.get_by_text(f"calibration checked on {t['n']} transfer-check verdicts")).to_be_visible()
    expect(page.get_by_text("efficientnet_lite0 (ImageNet weights, frozen)")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "lead-dashboard-1366x768.png"), full_page=True)
    body = page.locator("body").inner_text()
    assert str(tmp) not in body and str(DEMO) not in body and str(db) not in body  # no filesystem path

    page.get_by_role("link", name="Export").click()
    expect(page.get_by_role("heading", name="What if")).to_be_visible()
    expect(metric(page, "Kept")).to_have_text(f"{s['export']['kept']:,}")
    page.get_by_text("Custom threshold").click()
    box = page.get_by_label("Threshold", exact=True)
    box.fill("0.300")
    box.press("Enter")
    with Store(db) as store:
        want = estimates.what_if(estimates.States.of(store.image_states(1)), [0.3])[0]
    expect(metric(page, "Kept")).to_have_text(f"{want['kept']:,}")
    expect(metric(page, "Dropped")).to_have_text(f"{want['dropped']:,}")
    expect(page.get_by_text("0.300 (chosen)")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "lead-what-if-1366x768.png"), full_page=True)
    with page.expect_download() as info:
        page.get_by_role("button", name="Download CSV").click()
    assert "-t0.300-" in info.value.suggested_filename
    out = tmp_path / "export.csv"
    info.value.save_as(out)
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N and {r["threshold"] for r in rows} == {"0.3"}
    assert sum(r["keep"] == "1" for r in rows) == want["kept"]
    context.close()

"""The annotate screen on a laptop and a desktop (Debian Chromium, Playwright): at 1366x768 and 1920x1080 the
image, the verdict buttons and the true-class panel are on screen without scrolling; each class keeps one
number key for the session (the model's suggestion is highlighted, not moved); the blind setting and audit
items hide the score and the suggestion. The app runs without a worker: the model's scores are written
through the store on 60 demo images. Screenshots go to tests/artifacts/.
"""
import csv
import os
import random

import pytest

from annotator import auth
from annotator.ingest import ingest_csv
from annotator.store import Store
from browser_kit import ARTIFACTS, BROWSER_MARKS, Runs, expect, streamlit_app
from helpers import DEMO

PW = {"admin": "lead-pass-123", "ann": "annotator-pass-1"}
SIZES = [(1366, 768), (1920, 1080)]

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(url, db): 60 demo images, 3 verified classes, a current model (random scores, suggestions), no worker."""
    ARTIFACTS.mkdir(exist_ok=True)
    tmp = tmp_path_factory.mktemp("layout")
    with open(DEMO / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))[:61]
    with open(tmp / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    db = tmp / "state" / "annotator.db"
    rng = random.Random(0)
    with Store(db) as store:
        assert ingest_csv(store, tmp / "labels.csv", DEMO, progress=False).added == 60
        store.set_verify(["airplane", "automobile", "bird"])
        store.set_setting("audit_share", 0.0)
        names = [c["name"] for c in store.classes()]
        version = store.add_model(delta=0.5, metrics={})
        scored = []
        for r in store.iter_images():
            other = rng.choice([n for n in names if n != r["label"]])
            score = rng.uniform(0.0, 0.4)  # every label looks wrong to the model: a suggestion on each image
            scored.append((r["id"], r["label_id"], score, abs(score - 0.5), store.class_id(other), 0.9))
        store.write_scores(version, scored)
        store.make_current(version)
        auth.add_user(store, "ann", "annotator", PW["ann"])
    env = dict(os.environ, ANNOTATOR_DB=str(db), ANNOTATOR_ADMIN_PASSWORD=PW["admin"], PYTHONUNBUFFERED="1")
    with streamlit_app(env, log_name="layout-streamlit.log") as url:
        yield url, db


def open_annotate(browser, url: str, size: tuple[int, int]) -> tuple:
    """(page, its Runs): ann signed in on the annotate page at `size`, the page settled."""
    context = browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = context.new_page()
    runs = Runs(page)
    page.set_default_timeout(30_000)
    page.goto(url)
    page.get_by_label("User name").fill("ann")
    page.get_by_label("Password", exact=True).fill(PW["ann"])
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Annotate")).to_be_visible()
    settle(page, runs)
    return page, runs


def settle(page, runs: Runs) -> None:
    """Wait until the app has answered every click and key (a key pressed during a rerun is dropped as stale, by
    design) and every image has loaded."""
    runs.wait(runs.idle, "the app to answer every click and key")
    page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


def on_screen(page, locator, size: tuple[int, int]) -> None:
    """The element is fully inside the viewport, the page scrolled to the top (nothing needs scrolling)."""
    box = locator.bounding_box()
    assert box is not None, locator
    assert box["y"] >= 0 and box["y"] + box["height"] <= size[1] + 0.5, (box, size)
    assert box["x"] >= 0 and box["x"] + box["width"] <= size[0] + 0.5, (box, size)


def true_class_buttons(page) -> tuple[dict[int, str], list[str], str | None]:
    """({key: class name} of the true-class panel's number buttons, [names on disabled buttons], the name on
    the highlighted button or None). A button shows its class and its key as a shortcut hint."""
    panel = page.locator(".st-key-ann_true_panel")
    expect(panel.locator(".st-key-ann_true_1")).to_be_visible()
    keys, disabled, highlighted = {}, [], None
    for k in range(1, 10):
        button = panel.locator(f".st-key-ann_true_{k} button")
        if button.count() == 0:
            continue
        name = button.inner_text().strip().removesuffix(str(k)).strip()
        keys[k] = name
        if button.is_disabled():
            disabled.append(name)
        if button.get_attribute("data-testid") == "stBaseButton-primary":
            highlighted = name
    return keys, disabled, highlighted


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_annotate_fits_the_window_and_keys_stay_put(server, browser, size):
    url, db = server
    page, runs = open_annotate(browser, url, size)
    image = page.locator(".st-key-ann_image img")
    expect(image).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / f"annotate-{size[0]}x{size[1]}.png"))
    assert page.evaluate("window.scrollY") == 0
    for name in ("Correct", "Wrong", "Unsure", "Undo last"):
        on_screen(page, page.get_by_role("button", name=name), size)
    on_screen(page, image, size)
    assert image.bounding_box()["height"] >= 0.4 * size[1]  # scaled to the window, not a thumbnail
    expect(page.get_by_test_id("stMetric").filter(has_text="Model score")).to_be_visible()
    sidebar = page.get_by_test_id("stSidebar").get_by_test_id("stMetric")
    expect(sidebar).to_have_count(3)
    for k in range(3):  # each sidebar metric's label and value are shown whole, not cut with an ellipsis
        for part in ("stMetricLabel", "stMetricValue"):
            cell = sidebar.nth(k).get_by_test_id(part)
            assert cell.evaluate("e => [...e.querySelectorAll('*')].concat([e]).every("
                                 "x => x.scrollWidth <= x.clientWidth + 1)"), cell.inner_text()
    keys = []
    for step in range(2):
        label = page.locator(".st-key-ann_about h3").inner_text().split(":", 1)[1].strip()
        shown = page.locator(".st-key-ann_about").get_by_text("Image #").inner_text()
        runs.press("k")
        panel = page.locator(".st-key-ann_true_panel")
        expect(panel).to_be_visible()
        expect(page.locator(".st-key-ann_about").get_by_text("Image #")).not_to_have_text(shown)  # the next one
        settle(page, runs)
        buttons, disabled, suggested = true_class_buttons(page)
        page.screenshot(path=str(ARTIFACTS / f"annotate-{size[0]}x{size[1]}-wrong-{step}.png"))
        on_screen(page, panel, size)
        on_screen(page, image, size)
        keys.append(buttons)
        expect(panel.locator("[data-testid='stBaseButton-primary']")).to_have_count(1)  # the suggestion, in place
        with Store(db) as store:
            image_id = store.live_verdicts()[-1]["image_id"]
            row = store.queue_rows([image_id], store.current_model()["version"])[image_id]
        assert row["label"] == label and suggested == row["suggested_label"]
        assert disabled == [label]  # the image's own label is no choice, but keeps its key's place
        if step == 0:  # unsure: the next image, then its 'wrong' shows the panel again
            now = page.locator(".st-key-ann_about").get_by_text("Image #").inner_text()
            runs.press("u")
            expect(page.locator(".st-key-ann_about").get_by_text("Image #")).not_to_have_text(now)
            settle(page, runs)
    with Store(db) as store:
        names = sorted(c["name"] for c in store.classes())
    for buttons in keys:  # one key per class for the whole session: key n is the n-th class by name
        assert buttons == {k: names[k - 1] for k in range(1, 10)}
    page.context.close()


def test_blind_setting_and_audit_items_hide_score_and_suggestion(server, browser):
    url, db = server
    size = SIZES[0]
    page, runs = open_annotate(browser, url, size)
    expect(page.get_by_test_id("stMetric").filter(has_text="Model score")).to_be_visible()
    toggle = page.locator(".st-key-ann_blind").get_by_text("Blind", exact=True)
    runs.click(toggle)  # the annotator's own setting
    page.evaluate("document.activeElement.blur()")  # shortcuts do not fire while the toggle has the focus
    settle(page, runs)
    expect(page.get_by_test_id("stMetric").filter(has_text="Model score")).to_have_count(0)
    expect(page.get_by_text("The model thinks")).to_have_count(0)
    runs.press("k")
    panel = page.locator(".st-key-ann_true_panel")
    expect(panel).to_be_visible()
    expect(panel.locator("[data-testid='stBaseButton-primary']")).to_have_count(0)  # no suggestion highlighted
    runs.press("z")
    runs.click(toggle)  # off again
    settle(page, runs)
    expect(page.get_by_test_id("stMetric").filter(has_text="Model score")).to_be_visible()
    page.context.close()
    with Store(db) as store:  # audit items: blind whatever the setting says
        store.set_setting("audit_share", 1.0)
        store.release_leases("ann")  # images served earlier were not audit draws
    try:
        page, runs = open_annotate(browser, url, size)
        expect(page.get_by_text("a random audit sample")).to_be_visible()
        expect(page.get_by_test_id("stMetric").filter(has_text="Model score")).to_have_count(0)
        expect(page.get_by_text("hidden on audit items")).to_be_visible()
        runs.press("k")
        panel = page.locator(".st-key-ann_true_panel")
        expect(panel).to_be_visible()
        expect(panel.locator("[data-testid='stBaseButton-primary']")).to_have_count(0)
        page.screenshot(path=str(ARTIFACTS / "annotate-audit-blind.png"))
        runs.press("z")
        page.context.close()
    finally:
        with Store(db) as store:
            store.set_setting("audit_share", 0.0)

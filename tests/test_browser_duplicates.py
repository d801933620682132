"""The dashboard's near-duplicates section in a real browser at 1366x768: conflicting groups with their
thumbnails decoded in the page (inline, not /media), within the window's width, and the class filter."""
import os

import pytest

from annotator.store import Store
from browser_kit import BROWSER_MARKS, expect, login, shot, streamlit_app
from helpers import demo_db

ADMIN_PW = "lead-pass-123"
pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """40 demo images; a stored duplicate run: images 1 and 2 one group under two labels, 3 and 4 another."""
    tmp = tmp_path_factory.mktemp("dups")
    db = demo_db(tmp, 40, verify=[])
    with Store(db) as store:
        labels = {r["id"]: r["label"] for r in store.iter_images()}
        first = next(i for i in labels if labels[i] != labels[1])  # another label than image 1's
        group = {1: 1, first: 1, 3: 3, 4: 3}
        store.write_duplicates(((i, group.get(i), 0.01 * i, int(i in (1, first))) for i in sorted(labels)),
                               features_key="k",
                               backbone_id="b", threshold=0.79, method="exact", n_images=40, n_groups=2,
                               n_conflicts=1 + (labels[3] != labels[4]), seconds=0.1)
    env = dict(os.environ, ANNOTATOR_DB=str(db), ANNOTATOR_ADMIN_PASSWORD=ADMIN_PW, PYTHONUNBUFFERED="1")
    with streamlit_app(env, log_name="streamlit-duplicates.log") as url:
        yield url, labels, first


def test_groups_and_outliers_at_1366x768(server, browser):
    url, labels, first = server
    context = browser.new_context(viewport={"width": 1366, "height": 768})
    page = context.new_page()
    page.set_default_timeout(30_000)
    login(page, url, "admin", ADMIN_PW)
    page.get_by_role("link", name="Dashboard").click()
    heading = page.get_by_role("heading", name="Near-duplicates and outliers")
    heading.scroll_into_view_if_needed()
    expect(heading).to_be_visible()
    expect(page.get_by_text("label conflict").first).to_be_visible()
    thumbs = page.locator('img[alt^="#"]')
    expect(thumbs).to_have_count(4 + 12)  # two groups of two, twelve outliers
    page.wait_for_function("Array.from(document.querySelectorAll('img[alt^=\"#\"]'))"
                           ".every(i => i.complete && i.naturalWidth > 0)")
    srcs = thumbs.evaluate_all("els => els.map(e => e.getAttribute('src').slice(0, 23))")
    assert set(srcs) == {"data:image/jpeg;base64,"}  # the demo's JPEGs, inline
    for box in thumbs.evaluate_all("els => els.map(e => e.getBoundingClientRect().right)"):
        assert box <= 1366
    assert thumbs.first.get_attribute("alt") == f"#1 {labels[1]}"
    heading.evaluate("e => e.scrollIntoView()")
    shot(page, "duplicates-1366")
    box = page.get_by_role("combobox", name="Class")
    box.click()
    box.fill(labels[first])
    box.press("Enter")
    expect(page.locator('img[alt^="#1 "]')).to_have_count(1)
    context.close()

"""Security behaviour that lives in the page, in Debian Chromium (Playwright) against `streamlit run app.py`:
a link carrying a login session does not sign in another browser, and no image the page shows has a URL
that answers without the session. Skipped when /usr/bin/chromium is missing."""
import urllib.error
import urllib.request
from urllib.parse import urlparse

import pytest

from browser_kit import ARTIFACTS, BROWSER_MARKS, Runs, expect, metric, new_page, streamlit_app
from browser_kit import login as login_as
from helpers import demo_db, wait_for

from annotator import auth
from annotator.server import app_env
from annotator.pages.common import SESSION_PARAM
from annotator.store import Store

PASSWORD = "alice-password"
N_IMAGES = 40

pytestmark = BROWSER_MARKS


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Yields (url, db path) of `streamlit run app.py` on 40 demo images; alice and bob are annotators."""
    db = demo_db(tmp_path_factory.mktemp("browser-security"), N_IMAGES)
    with Store(db) as store:
        auth.add_user(store, "alice", "annotator", PASSWORD)
        auth.add_user(store, "bob", "annotator", "bob-password")
    with streamlit_app(served_env(db), log_name="streamlit-security.log") as url:
        yield url, db


def served_env(db, trusted_proxies: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment `annotator serve` gives the app (server.app_env)."""
    return app_env(str(db), trusted_proxies=trusted_proxies) | {"ANNOTATOR_ADMIN_PASSWORD": "admin-password-1",
                                                                "PYTHONUNBUFFERED": "1"}


def login(page, url: str, name: str, password: str) -> None:
    """browser_kit.login, then the first image is on screen."""
    login_as(page, url, name, password)
    expect(page.get_by_text("Image #")).to_be_visible()


def status_of(url: str) -> tuple[int, bytes]:
    """(HTTP status, body) of a GET with no cookie and no session, as anyone who has the URL would get."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_a_link_with_a_login_session_does_not_sign_in_another_browser(server, browser):
    url, db = server
    alice = new_page(browser)
    login(alice, url, "alice", PASSWORD)
    link = alice.url
    assert f"{SESSION_PARAM}=" in link
    visitor = new_page(browser)  # another browser: its own cookies
    visitor.goto(link)
    expect(visitor.get_by_text("carries a login of another browser")).to_be_visible()
    expect(visitor.get_by_label("User name")).to_be_visible()
    expect(visitor.get_by_role("heading", name="Annotate")).to_have_count(0)
    assert f"{SESSION_PARAM}=" not in visitor.url  # the foreign token is dropped from the visitor's URL
    visitor.screenshot(path=str(ARTIFACTS / "foreign-session-link.png"))
    login(visitor, url, "bob", "bob-password")  # the visitor signs in as themselves
    expect(visitor.get_by_text("Signed in as bob")).to_be_visible()
    alice.reload()  # the browser that logged in stays signed in across a reload
    expect(alice.get_by_role("heading", name="Annotate")).to_be_visible()
    expect(alice.get_by_text("Signed in as alice")).to_be_visible()
    expect(metric(alice, "Mine")).to_have_text("0")
    alice.context.close()
    visitor.context.close()


def test_images_are_inline_and_no_media_url_answers_without_the_session(server, browser):
    url, _ = server
    page = new_page(browser)
    runs = Runs(page)
    media: list[str] = []
    page.on("request", lambda r: media.append(r.url) if urlparse(r.url).path.startswith("/media/") else None)
    login(page, url, "alice", PASSWORD)
    image = page.locator(".st-key-ann_image img")
    expect(image).to_be_visible()
    page.get_by_text("Grid mode: 16 images of one class").click()
    # the class with the most of the 40 images: the first class (airplane) has one, which the single view's
    # random draw may have served (and leased) already, leaving its grid empty
    box = page.get_by_role("combobox", name="Class")
    box.click()
    box.fill("automobile")
    box.press("Enter")
    expect(page.locator("[class*='st-key-ann_flip_'] button").first).to_be_visible()
    runs.wait(runs.idle, "the grid's run to finish")  # then every image it shows is in the page, and loaded:
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")  # any URL was fetched by now
    for target in media:  # while she is signed in, fetched by someone without her session
        assert status_of(target)[0] == 404, target
    assert media == []
    sources = [i.get_attribute("src") for i in page.locator("[data-testid='stMain'] img").all()]
    assert sources and all(s.startswith("data:image/") for s in sources)
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_label("User name")).to_be_visible()
    page.context.close()


def failures(db, key: str) -> int:
    with Store(db) as store:
        return store.login_failures(since=0, user_key=key)[0]


def recorded_client(browser, url: str, db, forwarded_for: str) -> str:
    """The client address the app records for a failed login from a browser sending X-Forwarded-For."""
    context = browser.new_context(extra_http_headers={"X-Forwarded-For": forwarded_for})
    page = context.new_page()
    page.goto(url)
    page.get_by_label("User name").fill("bob")
    page.get_by_label("Password", exact=True).fill("not-bobs-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Unknown user name or wrong password.")).to_be_visible()
    context.close()
    with Store(db) as store:
        return store._all("SELECT client FROM login_attempts ORDER BY id DESC LIMIT 1")[0]["client"]


def test_x_forwarded_for_counts_only_from_the_proxy_the_operator_names(server, browser):
    """Without --trusted-proxy anyone could claim any address (and so dodge or frame the per-client throttle)."""
    url, db = server
    assert recorded_client(browser, url, db, "203.0.113.9") == "local"  # the TCP peer: loopback
    with streamlit_app(served_env(db, ("127.0.0.1",)), log_name="streamlit-security-proxy.log") as proxied:
        assert recorded_client(browser, proxied, db, "198.51.100.7, 203.0.113.9") == "203.0.113.9"


def test_a_strangers_failures_do_not_keep_the_right_password_out(server, browser):
    """Both browsers come from one address (as behind a proxy nobody named): the stranger's failed logins on
    carol's name lock the stranger out, not carol in the browser she logged in from before."""
    url, db = server
    with Store(db) as store:
        auth.add_user(store, "carol", "annotator", "carol-password")
    carol = new_page(browser)
    login(carol, url, "carol", "carol-password")
    carol.get_by_role("button", name="Log out").click()
    expect(carol.get_by_label("User name")).to_be_visible()
    stranger = new_page(browser)
    stranger.goto(url)
    for k in range(auth.FREE_TRIES_USER):
        stranger.get_by_label("User name").fill("carol")
        stranger.get_by_label("Password", exact=True).fill(f"guess-{k:06d}")
        stranger.get_by_role("button", name="Log in").click()
        wait_for(lambda: failures(db, "carol") == k + 1, timeout=30, what=f"failed login {k + 1}")
    stranger.get_by_label("Password", exact=True).fill("carol-password")  # even the right one waits now
    stranger.get_by_role("button", name="Log in").click()
    expect(stranger.get_by_text("Too many failed logins")).to_be_visible()
    login(carol, url, "carol", "carol-password")  # the right password, from her browser
    expect(carol.get_by_text("Signed in as carol")).to_be_visible()
    carol.context.close()
    stranger.context.close()

"""Streamlit entry point: a router. Login gate, role-based navigation, logout; the pages live in annotator/pages/.

    ANNOTATOR_DB=~/birds/annotator.db streamlit run app.py      # or `annotator serve` (app + worker)

- The database is ``$ANNOTATOR_DB`` (else ``store.default_db_path()``). One ``Store`` is opened per rerun
  and closed when the rerun ends; pages get it through ``common.context()``.
- First start creates the lead ``admin`` (password ``$ANNOTATOR_ADMIN_PASSWORD``, else generated and
  printed once to the terminal). Anonymous visitors see only the login form.
- Roles: ``annotator`` sees Annotate; ``lead`` also sees Dashboard, Admin and Export.
- Sessions are server-side (``annotator.auth``): a random token, of which the database keeps only a hash.
  It rides in the URL (``?session=...``) so a reload stays signed in; it is checked on every rerun and
  dies on logout, password change or reset, deactivation, a lead's "Sign out everywhere", 30 min without
  use, and 12 h after login. Anything else in ``?session=`` is removed and the login form shown.
- A token from the URL signs in only the browser the session was started in: at login the page stores a
  random browser id in a cookie (``auth.BROWSER_COOKIE``, set by a script of the app's own making, as
  Streamlit sets no cookies itself), and the session keeps its hash. A fresh browser session whose cookie
  does not match (a link carrying someone else's session, sent or copied) gets the login form.
- No traceback ever reaches the browser: errors become ``st.error`` sentences, details go to the log.
"""
import logging

import streamlit as st

from annotator import auth
from annotator.pages import common
from annotator.store import Store, StoreError, private_files

log = logging.getLogger("annotator.app")
COOKIE_MAX_AGE_S = 365 * 86400  # the browser id outlives its sessions: every login in this browser binds to it

PAGES = [  # (file, title, icon, url path, roles allowed)
    ("annotator/pages/annotate.py", "Annotate", ":material/task_alt:", "annotate", ("annotator", "lead")),
    ("annotator/pages/dashboard.py", "Dashboard", ":material/monitoring:", "dashboard", ("lead",)),
    ("annotator/pages/admin.py", "Admin", ":material/settings:", "admin", ("lead",)),
    ("annotator/pages/export.py", "Export", ":material/download:", "export", ("lead",)),
]


def first_start(store: Store) -> None:
    """Create the lead 'admin' while the database has no lead; a generated password is printed once, to the
    terminal only (one from $ANNOTATOR_ADMIN_PASSWORD never)."""
    try:
        created = auth.ensure_admin(store)
    except StoreError:  # another session created it a moment ago
        return
    except ValueError as e:  # $ANNOTATOR_ADMIN_PASSWORD too short: no admin until it is fixed
        log.error("not creating the lead 'admin': $ANNOTATOR_ADMIN_PASSWORD %s", e)
        return
    if created is None:
        return
    if created.from_environment:
        print("Created the lead 'admin' with the password from $ANNOTATOR_ADMIN_PASSWORD.", flush=True)
    else:
        print(f"Created the lead 'admin'. Password (shown once): {created.password}", flush=True)


def client_address() -> str:
    """The address a request came from, as the server's ASGI layer (uvicorn) reports it: the TCP peer, or, from
    the proxy that ``annotator serve --trusted-proxy`` names (uvicorn's ``FORWARDED_ALLOW_IPS``), the address
    that proxy put in X-Forwarded-For. 'local' for the loopback interface (Streamlit reports no address)."""
    ip = st.context.ip_address
    if ip is None and st.context.headers.get("X-Forwarded-For"):
        log.warning("a login came through a proxy that is not trusted (X-Forwarded-For ignored): every client behind"
                    " it shares one address for login throttling; name it with `annotator serve --trusted-proxy`")
    return ip if isinstance(ip, str) else "local"


def browser_cookie() -> str | None:
    """This browser's id from its cookie (None when it has none, or something else in it)."""
    value = st.context.cookies.get(auth.BROWSER_COOKIE)
    return value if auth.is_browser_id(value) else None


def remember_browser() -> None:
    """Store this browser session's id in the browser's cookie, unless the connection already came with it.

    The value is made by ``auth.new_browser_id`` (URL-safe characters only), never user input."""
    browser = st.session_state.get("browser")
    if browser and browser_cookie() != browser:
        with st.sidebar:
            st.html(f"<script>document.cookie = '{auth.BROWSER_COOKIE}={browser}; path=/; max-age={COOKIE_MAX_AGE_S};"
                    " SameSite=Strict' + (location.protocol === 'https:' ? '; Secure' : '');</script>",
                    unsafe_allow_javascript=True)


def login_page() -> None:
    """The only thing an anonymous visitor sees."""
    store = st.session_state["_store"]
    _, middle, _ = st.columns([1, 2, 1])
    middle.title("Label cleaner")
    if st.session_state.pop("foreign_link", False):
        middle.info("That link carries a login of another browser, so it does not sign you in here. Log in with "
                    "your own account.")
    with middle.form("login", clear_on_submit=False):
        name = st.text_input("User name", key="login_name", max_chars=64)
        password = st.text_input("Password", type="password", key="login_password", max_chars=auth.MAX_PASSWORD)
        submitted = st.form_submit_button("Log in", type="primary", key="login_submit")
    if submitted:
        # this browser's id, made now if it has none: the login that succeeds is recorded with it, so from then on
        # failures elsewhere never throttle this browser for this name (auth.throttle_wait)
        browser = st.session_state.setdefault("browser", browser_cookie() or auth.new_browser_id())
        try:
            user = auth.authenticate(store, name or "", password or "", client=client_address(), browser=browser)
        except auth.LoginThrottled as e:
            middle.error(f"{e} (too many failed logins for this user name or from this address)")
            return
        if user is None:
            middle.error("Unknown user name or wrong password.")
            return
        session = auth.start_session(store, user, browser=browser)
        st.session_state["token"] = session.token
        st.query_params[common.SESSION_PARAM] = session.token
        log.info("login: %s (%s)", user["name"], user["role"])
        st.rerun()


def signed_in(store: Store) -> auth.Session | None:
    """This browser session's login: its token (session state, else the URL) checked against the store on
    every rerun, so logout, a password change, deactivation or "sign out everywhere" take effect at once.
    A token from the URL counts only in the browser its session was started in (``auth.started_in``). A
    dead, foreign or unreadable token clears the session state and leaves the URL."""
    token = st.session_state.get("token")
    from_url = token is None
    if from_url:
        token = st.query_params.get(common.SESSION_PARAM)
    session = auth.resume_session(store, token) if token else None
    if session is not None and from_url:
        if not auth.started_in(session, browser_cookie()):
            log.warning("a link with a login session of %s was opened in another browser: not signed in",
                        session.user["name"])
            _clear_state()
            st.session_state["foreign_link"] = True
            return None
        st.session_state["browser"] = browser_cookie()
    if session is None:
        if st.session_state.get("user"):
            log.info("session of %s ended (logged out, revoked or expired)", st.session_state["user"]["name"])
        if token:  # keep the login form's own state otherwise
            _clear_state()
        return None
    st.session_state["token"] = session.token
    return session


def _clear_state() -> None:
    """Forget the login (and every page's state) of this browser session; the browser keeps its id."""
    for key in list(st.session_state):
        if key not in ("_store", "browser"):
            del st.session_state[key]
    if common.SESSION_PARAM in st.query_params:
        del st.query_params[common.SESSION_PARAM]


def logout(store: Store, session: auth.Session) -> None:
    store.end_session(session.session_id)
    store.release_leases(session.user["name"])  # hand the images I held back to the queue
    log.info("logout: %s", session.user["name"])
    _clear_state()
    st.query_params.clear()
    st.rerun()


def main() -> None:
    private_files()
    st.set_page_config(page_title="Label cleaner", page_icon=":material/cleaning_services:", layout="wide")
    if not logging.getLogger().handlers:  # `streamlit run` configures only its own logger
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with common.errors_as_messages("The app"), Store() as store:
        st.session_state["_store"] = store
        session = signed_in(store)
        if session is None:
            first_start(store)
            st.navigation([st.Page(login_page, title="Log in", url_path="login", default=True)],
                          position="hidden").run()
            return
        user = dict(session.user, session_id=session.session_id)
        common.bind(store, user)
        if st.query_params.get(common.SESSION_PARAM) != session.token:  # navigation clears query params
            st.query_params[common.SESSION_PARAM] = session.token
        remember_browser()
        pages = [st.Page(path, title=title, icon=icon, url_path=url, default=(i == 0))
                 for i, (path, title, icon, url, roles) in enumerate(PAGES) if user["role"] in roles]
        page = st.navigation(pages)
        with st.sidebar:
            st.caption(f"Signed in as **{common.md(user['name'])}** ({user['role']})")
            if st.button("Log out", key="logout", icon=":material/logout:"):
                logout(store, session)
        with common.errors_as_messages(page.title):
            page.run()


main()

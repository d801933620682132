"""Streamlit entry point: a router. Login gate, role-based navigation, logout; the pages live in annotator/pages/.

    ANNOTATOR_DB=~/birds/annotator.db streamlit run app.py      # or `annotator serve` (app + worker)

- The database is ``$ANNOTATOR_DB`` (else ``store.default_db_path()``). One ``Store`` is opened per rerun
  and closed when the rerun ends; pages get it through ``common.context()``.
- First start creates the lead ``admin`` (password ``$ANNOTATOR_ADMIN_PASSWORD``, else generated and
  printed once to the terminal). Anonymous visitors see only the login form.
- Roles: ``annotator`` sees Annotate; ``lead`` also sees Dashboard, Admin and Export.
- Sessions are server-side (``annotator.auth``): a random token, of which the database keeps only a hash.
  It rides in the URL (``?session=...``, Streamlit cannot set cookies) so a reload stays signed in; it
  is checked on every rerun and dies on logout, password change or reset, deactivation, a lead's
  "Sign out everywhere", 30 min without use, and 12 h after login. Anything else in ``?session=`` is
  removed and the login form shown.
- No traceback ever reaches the browser: errors become ``st.error`` sentences, details go to the log.
"""
import logging
import os

import streamlit as st

from annotator import auth
from annotator.pages import common
from annotator.store import Store, StoreError, private_files

log = logging.getLogger("annotator.app")

PAGES = [  # (file, title, icon, url path, roles allowed)
    ("annotator/pages/annotate.py", "Annotate", ":material/task_alt:", "annotate", ("annotator", "lead")),
    ("annotator/pages/dashboard.py", "Dashboard", ":material/monitoring:", "dashboard", ("lead",)),
    ("annotator/pages/admin.py", "Admin", ":material/settings:", "admin", ("lead",)),
    ("annotator/pages/export.py", "Export", ":material/download:", "export", ("lead",)),
]


def first_start(store: Store) -> None:
    """Create the lead 'admin' if missing; a generated password is printed once, to the terminal only."""
    try:
        password = auth.ensure_admin(store)
    except StoreError:  # another session created it a moment ago
        return
    except ValueError as e:  # $ANNOTATOR_ADMIN_PASSWORD too short: no admin until it is fixed
        log.error("not creating the lead 'admin': $ANNOTATOR_ADMIN_PASSWORD %s", e)
        return
    if password is None:
        return
    if password == os.environ.get("ANNOTATOR_ADMIN_PASSWORD"):
        print("Created the lead 'admin' with the password from $ANNOTATOR_ADMIN_PASSWORD.", flush=True)
    else:
        print(f"Created the lead 'admin'. Password (shown once): {password}", flush=True)


def login_page() -> None:
    """The only thing an anonymous visitor sees."""
    store = st.session_state["_store"]
    _, middle, _ = st.columns([1, 2, 1])
    middle.title("Label cleaner")
    with middle.form("login", clear_on_submit=False):
        name = st.text_input("User name", key="login_name", max_chars=64)
        password = st.text_input("Password", type="password", key="login_password", max_chars=auth.MAX_PASSWORD)
        submitted = st.form_submit_button("Log in", type="primary", key="login_submit")
    if submitted:
        ip = st.context.ip_address  # None for localhost
        try:
            user = auth.authenticate(store, name or "", password or "", client=ip if isinstance(ip, str) else "local")
        except auth.LoginThrottled as e:
            middle.error(f"{e} (too many failed logins for this user name or from this address)")
            return
        if user is None:
            middle.error("Unknown user name or wrong password.")
            return
        session = auth.start_session(store, user)
        st.session_state["token"] = session.token
        st.query_params[common.SESSION_PARAM] = session.token
        log.info("login: %s (%s)", user["name"], user["role"])
        st.rerun()


def signed_in(store: Store) -> auth.Session | None:
    """This browser session's login: its token (session state, else the URL) checked against the store on
    every rerun, so logout, a password change, deactivation or "sign out everywhere" take effect at once.
    A dead or unreadable token clears the session state and leaves the URL."""
    token = st.session_state.get("token") or st.query_params.get(common.SESSION_PARAM)
    session = auth.resume_session(store, token) if token else None
    if session is None:
        if st.session_state.get("user"):
            log.info("session of %s ended (logged out, revoked or expired)", st.session_state["user"]["name"])
        if token:  # keep the login form's own state otherwise
            _clear_state()
        return None
    st.session_state["token"] = session.token
    return session


def _clear_state() -> None:
    for key in list(st.session_state):
        if key != "_store":
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

"""Streamlit entry point: a router. Login gate, role-based navigation, logout; the pages live in annotator/pages/.

    ANNOTATOR_DB=~/birds/annotator.db streamlit run app.py      # or `annotator serve` (app + worker)

- The database is ``$ANNOTATOR_DB`` (else ``store.default_db_path()``). One ``Store`` is opened per rerun
  and closed when the rerun ends; pages get it through ``common.context()``.
- First start creates the lead ``admin`` (password ``$ANNOTATOR_ADMIN_PASSWORD``, else generated and
  printed once to the terminal). Anonymous visitors see only the login form.
- Roles: ``annotator`` sees Annotate; ``lead`` also sees Dashboard, Admin and Export.
- A signed-in user stays signed in across browser reloads through a signed token in the URL
  (``?session=...``, see ``annotator/pages/common.py``); sharing that URL shares the session until
  the token expires (12 h), so use Log out on shared machines.
- No traceback ever reaches the browser: errors become ``st.error`` sentences, details go to the log.
"""
import logging
import os

import streamlit as st

from annotator import auth
from annotator.pages import common
from annotator.store import Store, StoreError

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
        name = st.text_input("User name", key="login_name")
        password = st.text_input("Password", type="password", key="login_password")
        submitted = st.form_submit_button("Log in", type="primary", key="login_submit")
    if submitted:
        user = auth.authenticate(store, name or "", password or "") if name and password else None
        if user is None:
            log.info("failed login for %r", name)
            middle.error("Unknown user name or wrong password.")
            return
        st.session_state["user"] = user
        st.session_state["token"] = common.make_token(store, user["name"])
        log.info("login: %s (%s)", user["name"], user["role"])
        st.rerun()


def signed_in_user(store: Store) -> dict | None:
    """The user of this browser session: session state first, else a valid token in the URL; None if anonymous.

    Re-read from the database every rerun, so a deactivated user is signed out at once.
    """
    user = st.session_state.get("user")
    if user is not None:
        row = store.get_user(user["name"])
        if row and row["active"]:
            return {k: v for k, v in row.items() if k != "password_hash"}
        log.info("session of %s ended: user deactivated or removed", user["name"])
        logout(store, rerun=False)
        return None
    token = st.query_params.get(common.SESSION_PARAM)
    user = common.user_from_token(store, token)
    if user is not None:
        st.session_state["user"], st.session_state["token"] = user, token
    elif token is not None:  # expired, forged, or its user deactivated
        del st.query_params[common.SESSION_PARAM]
    return user


def logout(store: Store, *, rerun: bool = True) -> None:
    user = st.session_state.get("user")
    if user:
        store.release_leases(user["name"])  # hand the images I held back to the queue
    for key in list(st.session_state):
        if key != "_store":
            del st.session_state[key]
    st.query_params.clear()
    if rerun:
        st.rerun()


def main() -> None:
    st.set_page_config(page_title="Label cleaner", page_icon=":material/cleaning_services:", layout="wide")
    if not logging.getLogger().handlers:  # `streamlit run` configures only its own logger
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with common.errors_as_messages("The app"), Store() as store:
        st.session_state["_store"] = store
        user = signed_in_user(store)
        if user is None:
            first_start(store)
            st.navigation([st.Page(login_page, title="Log in", url_path="login", default=True)],
                          position="hidden").run()
            return
        common.bind(store, user)
        token = st.session_state.get("token") or common.make_token(store, user["name"])
        st.session_state["token"] = token
        if st.query_params.get(common.SESSION_PARAM) != token:  # navigation clears query params: put it back
            st.query_params[common.SESSION_PARAM] = token
        pages = [st.Page(path, title=title, icon=icon, url_path=url, default=(i == 0))
                 for i, (path, title, icon, url, roles) in enumerate(PAGES) if user["role"] in roles]
        page = st.navigation(pages)
        with st.sidebar:
            st.caption(f"Signed in as **{common.md(user['name'])}** ({user['role']})")
            if st.button("Log out", key="logout", icon=":material/logout:"):
                logout(store)
        with common.errors_as_messages(page.title):
            page.run()


main()

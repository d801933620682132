"""`annotator serve`: the worker and the Streamlit app on one database, started and stopped together."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import auth
from .store import Store

REPO = Path(__file__).resolve().parents[1]  # the clone: app.py and .streamlit/config.toml


def app_env(db: str, *, trusted_proxies: tuple[str, ...] = ()) -> dict[str, str]:
    """The app's environment: its database, and which proxies' X-Forwarded-For it believes. Streamlit's server
    (uvicorn) reads ``FORWARDED_ALLOW_IPS``; left unset it would trust X-Forwarded-For from 127.0.0.1, so any
    local process could claim any client address. Empty = trust no proxy: the client is the TCP peer."""
    return dict(os.environ, ANNOTATOR_DB=db, FORWARDED_ALLOW_IPS=",".join(trusted_proxies))


def serve(db: str | Path, *, port: int = 8501, host: str = "127.0.0.1", trusted_proxies: tuple[str, ...] = (),
          note: str = "") -> None:
    """Run the worker and the app on ``db`` until Ctrl+C or SIGTERM, which stop both. The app listens on ``host``
    (loopback by default: put a TLS reverse proxy in front to serve others, README "Security") and believes
    X-Forwarded-For only from ``trusted_proxies``. It runs from the clone (its folder holds app.py and
    .streamlit/config.toml), wherever this is called from."""
    with Store(db) as store:
        created = auth.ensure_admin(store)
        db = str(store.path.resolve())
    env = app_env(db, trusted_proxies=trusted_proxies)
    worker = subprocess.Popen([sys.executable, "-m", "annotator", "--db", db, "worker"], env=env, cwd=REPO)
    app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"),
                            "--server.address", host, "--server.port", str(port), "--server.headless", "true",
                            "--browser.gatherUsageStats", "false"], env=env, cwd=REPO)
    if created is None:
        login = "(the password printed when this database was created, or $ANNOTATOR_ADMIN_PASSWORD)"
    elif created.from_environment:
        login = "(the password in $ANNOTATOR_ADMIN_PASSWORD)"
    else:
        login = created.password
    shown = "localhost" if host in ("127.0.0.1", "::1") else host
    print(f"\n  Database: {db}\n  App:      http://{shown}:{port}\n  Login:    admin / {login}"
          f"\n  {note + ' ' if note else ''}Press Ctrl+C to stop.\n", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # so `finally` stops both children on SIGTERM too
    try:
        while worker.poll() is None and app.poll() is None:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for proc in (app, worker):
            proc.terminate()
        for proc in (app, worker):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

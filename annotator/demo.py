"""`annotator serve`: the worker and the Streamlit app on one database, started and stopped together;
`annotator demo` (`make run`) does the same on the bundled demo project, ingested on first start."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import auth
from .round_config import RoundConfig, save_round_config
from .store import Store

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
# The demo is the one project that lives in the clone (gitignored): it is part of the tool, not user data.
DEMO_DB = REPO / "data" / "state" / "annotator.db"
VERIFY = ["airplane", "automobile", "bird", "cat", "deer"]
# The first model needs no training (frozen ImageNet features); a short backbone run and fewer CleanNet steps
# when a lead switches the demo to `backbone: finetuned` / `noisy` or `method: paper`.
DEMO_ROUND = RoundConfig(backbone_epochs=3, steps=1000)


def prepare_demo(store: Store) -> None:
    """Ingest the demo images once and choose the classes to verify."""
    if store.images_count() == 0:
        from .ingest import ingest_csv
        report = ingest_csv(store, DEMO / "labels.csv", DEMO)
        print(report.summary(), flush=True)
        store.set_verify(VERIFY, True)
        save_round_config(store, DEMO_ROUND)


def run_demo(db: str | Path, *, port: int = 8501) -> None:
    with Store(db) as store:
        prepare_demo(store)
    serve(db, port=port, note="The worker computes the first model now (ImageNet features of the 3,000 images, "
                              "then a linear probe).")


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

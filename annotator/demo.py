"""`make run`: the bundled demo project, the worker and the Streamlit app, started together."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import auth
from .ingest import ingest_csv
from .round_config import RoundConfig, save_round_config
from .store import Store

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
VERIFY = ["airplane", "automobile", "bird", "cat", "deer"]
# First model within ~3 minutes on a 2-core CPU: a short backbone run and fewer CleanNet steps.
DEMO_ROUND = RoundConfig(backbone_epochs=3, steps=1000)


def prepare_demo(store: Store) -> str | None:
    """Ingest the demo images once, choose the classes to verify; returns a new admin password, if any."""
    password = auth.ensure_admin(store)
    if store.images_count() == 0:
        report = ingest_csv(store, DEMO / "labels.csv", DEMO)
        print(report.summary(), flush=True)
        store.set_verify(VERIFY, True)
        save_round_config(store, DEMO_ROUND)
    return password


def run_demo(db: str | Path, *, port: int = 8501) -> None:
    store = Store(db)
    password = prepare_demo(store)
    db = str(store.path)
    store.close()
    env = dict(os.environ, ANNOTATOR_DB=db)
    worker = subprocess.Popen([sys.executable, "-m", "annotator", "--db", db, "worker"], env=env, cwd=REPO)
    app = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(REPO / "app.py"),
                            "--server.port", str(port), "--server.headless", "true",
                            "--browser.gatherUsageStats", "false"], env=env, cwd=REPO)
    print(f"\n  App:   http://localhost:{port}\n  Login: admin / "
          + (password if password else "(the password printed when this database was created, or "
             "$ANNOTATOR_ADMIN_PASSWORD)") + "\n  The worker trains the first model now (about 3 minutes on "
          "a 2-core CPU); press Ctrl+C to stop.\n", flush=True)
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

"""`annotator demo` (`make run`): `annotator serve` (annotator.server) on the bundled demo project, ingested on
first start."""
from __future__ import annotations

from pathlib import Path

from .round_config import RoundConfig, save_round_config
from .server import REPO, serve
from .store import Store

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

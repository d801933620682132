"""Test launcher: `python tests/held_worker.py DB PHASE` runs the worker with a hook that holds it for 60 s at
its first progress report past the start of PHASE (e.g. 'writing': scores written, version not yet current),
so a test can kill it exactly there. The hook marks the hold in the worker's message."""
import sys
import time

from annotator.store import Store
from annotator.worker import run_worker

HELD = "held by the test"


def main(db: str, phase: str) -> None:
    def hold(at: str, progress: float, message: str) -> None:
        if at == phase and progress > 0:
            with Store(db) as store:
                store.worker_update(phase=at, progress=progress, message=HELD)
            time.sleep(60)

    run_worker(db, poll=0.5, on_report=hold)


if __name__ == "__main__":
    main(*sys.argv[1:3])

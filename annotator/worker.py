"""The background worker: a separate long-running process that retrains CleanNet as verdicts arrive.

    annotator worker            # loop forever
    annotator worker --once     # one round if one is due, then exit (adapted rounds: `annotator adapt`)

Every `poll` seconds it checks whether a round is due: no model yet, a lead's request (retrain or full), or
at least `retrain_every` (setting, default 50) live correct or wrong verdicts (transfer checks excluded) since the
current model. When none is, it checks every ADAPT_CHECK_S whether an adapted round (annotator.adapt_round) is due
and runs it. A heartbeat thread
writes `worker.heartbeat` every few seconds even while a round trains, so the UI can tell "busy" from "dead".
Phase (k of n), progress in the phase and in the round, the ETA (``annotator.progress``) and the last error
are written to the store. An error is stored and shown; the worker keeps
running. SIGKILL at any moment leaves the previous model current (see annotator.pipeline); SIGTERM (`kill`,
`docker stop`) and Ctrl-C stop it cleanly: a round in progress is abandoned the same way, the worker is marked
stopped and the process exits 0.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import torch

from .adapt_round import SETTING as ADAPT_SETTING
from .adapt_round import due as adapt_due
from .adapt_round import record_failure as record_adapt_failure
from .adapt_round import run_adapt_round
from .duplicates import refresh as refresh_duplicates
from .pipeline import run_round
from .progress import RoundProgress, heartbeat_fresh, next_round
from .round_config import BadRoundConfig, RoundConfig, load_round_config
from .round_types import Report
from .store import Store

log = logging.getLogger(__name__)
HEARTBEAT_S = 2.0
ADAPT_CHECK_S = 30.0  # how often an idle worker asks whether an adapted round is due (it reads every image)
# Worker-row fields while no round runs: no progress to show (not "100 %").
IDLE = {"phase": "idle", "progress": None, "overall": None, "phase_index": None, "phase_count": None,
        "round_started_at": None, "eta_at": None}


def due(store: Store) -> tuple[str | None, dict | None]:
    """-> (kind, request): kind 'full' | 'retrain' when a round is due (``progress.next_round``), else None."""
    if not next_round(store)["due"]:
        return None, None
    req = store.pending_request()
    return (req["kind"], req) if req else ("retrain", None)


class _Reporter:
    """The worker's Report: phase, progress and ETA into the worker row (at most every 0.5 s, plus each phase's
    start and the writes), then on_report."""

    def __init__(self, store: Store, on_report: Report | None):
        self.store, self.on_report = store, on_report
        self.tracker, self.last = RoundProgress(), 0.0

    def start(self, kind: str) -> None:
        self.tracker = RoundProgress()
        self.store.worker_update(phase="starting", progress=0.0, message=f"round starting ({kind})", overall=0.0,
                                 phase_index=None, phase_count=None, round_started_at=self.tracker.started_at,
                                 eta_at=None)

    def __call__(self, phase: str, progress: float, message: str) -> None:
        now = time.time()
        where = self.tracker.update(phase, progress, now=now)  # every report: overall progress misses no phase
        if phase == "idle":
            self.store.worker_update(**({"message": message} if message else {}), **IDLE)
        elif now - self.last >= 0.5 or phase == "writing" or progress == 0.0:
            self.last = now
            fields = {"phase": phase, "progress": round(progress, 4), **where}
            if message:
                fields["message"] = message
            self.store.worker_update(**fields)
        if self.on_report is not None:
            self.on_report(phase, progress, message)


def _run_one(store: Store, kind: str, cfg: RoundConfig, report: Report) -> None:
    """One round of `kind`: 'adapt' (annotator.adapt_round), 'full' or 'retrain' (pipeline.run_round)."""
    if kind == "adapt":
        outcome = run_adapt_round(store, cfg, report=report)
        store.worker_update(**IDLE, message=outcome.message)
        log.info("adapted round: %s", outcome.message)
    else:
        version = run_round(store, cfg, full=kind == "full", report=report)
        log.info("round done: model version %d is current", version)
        _duplicates(store, cfg, report)


def _adapt_if_due(store: Store, overrides: dict | None) -> str | None:
    """'adapt' when an adapted round is due (annotator.adapt_round.due); else None, the reason kept in the
    setting adapt_round.SETTING as `waiting` for the pages to show."""
    try:
        ok, why = adapt_due(store, load_round_config(store, **(overrides or {})))
    except BadRoundConfig:
        return None  # the regular round reports bad settings
    last = store.get_setting(ADAPT_SETTING) or {}
    if not ok and last.get("waiting") != why:
        store.set_setting(ADAPT_SETTING, last | {"waiting": why})
    return "adapt" if ok else None


def _claim(store: Store) -> Store:
    """Mark the worker row as this process's; RuntimeError when another live worker holds it."""
    other = store.worker_state()
    if other["pid"] and other["pid"] != os.getpid() and _alive(other["pid"]) and heartbeat_fresh(
            other["heartbeat_age_s"]):
        store.close()
        raise RuntimeError(f"another worker (pid {other['pid']}) is running on this database")
    store.worker_update(pid=os.getpid(), message="worker started", **IDLE)
    return store


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Heartbeat(threading.Thread):
    """Writes the heartbeat from its own connection (a Store is never shared between threads)."""

    def __init__(self, db_path: Path):
        super().__init__(daemon=True, name="heartbeat")
        self.db_path, self.stop = db_path, threading.Event()

    def run(self) -> None:
        store = Store(self.db_path)
        try:
            while not self.stop.wait(HEARTBEAT_S):
                try:
                    store.worker_update()
                except Exception as e:  # a locked or vanished DB must not kill the thread  # noqa: BLE001
                    log.warning("heartbeat failed: %s", e)
        finally:
            store.close()


def _duplicates(store: Store, cfg: RoundConfig, report: Report) -> None:
    """Near-duplicate groups and outlier scores of the new round's features (``annotator.duplicates``), then
    idle. A failure is stored as the worker's last error; the new model stays current."""
    try:
        refresh_duplicates(store, cfg, report=report)
        report("idle", 1.0, "")
    except Exception as e:  # noqa: BLE001  (shown on the dashboard; the next round tries again)
        log.error("near-duplicate groups failed: %s", traceback.format_exc())
        store.worker_update(**(IDLE | {"phase": "error"}), last_error=f"duplicates: {type(e).__name__}: {e}",
                            last_error_at=time.time(), message="near-duplicate groups failed")


def run_worker(db_path: str | Path, overrides: dict | None = None, *, poll: float = 2.0, once: bool = False,
               max_rounds: int | None = None, on_report: Report | None = None) -> int:
    """Run rounds while they are due. Returns the number of rounds completed.

    overrides: RoundConfig fields applied over the stored round settings, which are re-read every round (a
    lead's change applies to the next round without a restart). on_report: called with every progress
    report after it is stored (tests use it to hold the worker inside a phase).
    """
    if "OMP_NUM_THREADS" not in os.environ:  # leave a core to the app: oversubscribed torch threads crawl
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    store = _claim(Store(db_path))
    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    beat = _Heartbeat(Path(store.path))
    beat.start()
    report = _Reporter(store, on_report)

    rounds, failures = 0, 0
    last_adapt_check = [0.0]
    try:
        while True:
            kind, req = due(store)
            if kind is None and not once and time.time() - last_adapt_check[0] >= ADAPT_CHECK_S:
                last_adapt_check[0] = time.time()
                kind = _adapt_if_due(store, overrides)
            if kind is None:
                if once:
                    break
                time.sleep(poll)
                continue
            if req:
                store.mark_request(req["id"], started=True)
            report.start(kind)
            try:
                _run_one(store, kind, load_round_config(store, **(overrides or {})), report)
                rounds, failures = rounds + 1, 0
            except Exception as e:  # stored and shown; the worker keeps running  # noqa: BLE001
                failures += 1
                log.error("round failed: %s", traceback.format_exc())
                store.worker_update(**(IDLE | {"phase": "error"}), last_error=f"{type(e).__name__}: {e}",
                                    last_error_at=time.time(), message="round failed; will retry")
                if kind == "adapt":  # not retried until the data or the held-out verdicts change
                    record_adapt_failure(store, f"{type(e).__name__}: {e}")
                elif not req:  # back off before retrying a verdict-triggered round
                    time.sleep(min(poll * 2 ** failures, 300))
            if req:
                store.mark_request(req["id"], done=True)
            if once or (max_rounds is not None and rounds >= max_rounds):
                break
    except KeyboardInterrupt:
        log.info("interrupted: stopping")
    finally:
        beat.stop.set()
        beat.join(timeout=5)
        store.worker_update(phase="stopped", pid=None)
        store.close()
    return rounds

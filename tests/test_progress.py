"""Progress a person can see: the round's phase k of n, overall share and ETA (exact arithmetic), and the
real worker's fields through `annotator status` while a round runs and after it (120 demo images)."""
import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import held_worker
from annotator.ingest import ingest_csv
from annotator.progress import (PHASE_WEIGHTS, PHASES, RoundProgress, adapt_summary, describe_next, describe_status,
                                duration, next_round, project_status)
from annotator.round_config import RoundConfig, save_round_config
from annotator.store import Store
from helpers import DEMO, REPO, wait_for


def test_round_progress_overall_and_eta_exact():
    rp = RoundProgress(started_at=100.0)
    rest = sum(PHASE_WEIGHTS[p] for p in PHASES[1:])  # no backbone reported: it is not in the plan
    assert rp.update("features", 0.0, now=100.0) == {"phase_index": 1, "phase_count": 5, "overall": 0.0,
                                                     "eta_at": None}
    f = rp.update("features", 0.5, now=110.0)
    assert f["phase_index"] == 1 and f["overall"] == round(0.5 * PHASE_WEIGHTS["features"] / rest, 4)
    assert f["eta_at"] == pytest.approx(110.0 + 10.0 * (1 - rp.overall) / rp.overall)
    w = rp.update("writing", 1.0, now=130.0)
    assert (w["phase_index"], w["phase_count"], w["overall"]) == (5, 5, 1.0) and w["eta_at"] == 130.0
    back = rp.update("features", 0.0, now=131.0)  # overall never goes back
    assert back["overall"] == 1.0
    rb = RoundProgress(started_at=0.0)
    rb.update("features", 0.0, now=0.0)  # 'loading backbone' comes first, then the backbone trains
    b = rb.update("backbone", 0.5, now=10.0)
    assert (b["phase_index"], b["phase_count"]) == (1, 6) and b["overall"] == round(0.5 * PHASE_WEIGHTS["backbone"], 4)
    assert rb.update("idle", 1.0, now=11.0)["phase_index"] is None


def test_next_round_counts_verdicts_to_the_trigger(tmp_path):
    store = Store(tmp_path / "a.db")
    assert next_round(store)["reason"] == "no images"
    cid = store.ensure_classes(["cat"])["cat"]
    store.add_images({"path": f"/i/{k}.jpg", "hash": str(k), "label_id": cid} for k in range(1, 31))
    assert next_round(store) | {"verdicts_since_model": 0} == {"due": True, "reason": "no model yet",
                                                               "verdicts_since_model": 0, "retrain_every": 50,
                                                               "waiting_for": 0}
    store.make_current(store.add_model(delta=0.5, metrics={"max_verdict_id": 0}))
    for k in range(1, 14):
        store.record_verdict(k, "ann", "correct", reason="audit")
    store.undo_last("ann")  # an undone verdict does not count
    nxt = next_round(store)
    assert (nxt["due"], nxt["verdicts_since_model"], nxt["waiting_for"]) == (False, 12, 38)
    assert describe_next(nxt) == "waiting for 38 more verdicts (12 of 50 since the current model)"
    # 'unsure' and transfer-check verdicts train nothing: a round on them would refit on the same verdicts
    store.record_verdict(14, "ann", "unsure", reason="uncertain")
    store.record_verdict(15, "ann", "wrong", reason="transfer_check")
    store.record_verdict(16, "ann", "correct", reason="transfer_check")
    assert next_round(store)["verdicts_since_model"] == 12 and store.verdicts_since(0) == 15
    store.set_setting("retrain_every", 12)
    assert next_round(store)["reason"] == "verdicts" and describe_next(next_round(store)) == "due now (verdicts)"
    store.request("full", "lead")
    assert next_round(store)["reason"] == "requested: full"
    assert [duration(s) for s in (4.4, 65, 3720)] == ["4 s", "1 min 05 s", "1 h 02 min"]


def cli(db: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "annotator", "--db", str(db), *args], cwd=REPO, text=True,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
def test_worker_reports_phase_overall_eta_and_the_next_trigger(tmp_path):
    """A real worker held inside the 'training' phase (tests/held_worker.py), then a finished round."""
    with open(DEMO / "labels.csv", newline="") as f:
        rows = list(csv.reader(f))[:121]
    with open(tmp_path / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    db = tmp_path / "state" / "a.db"
    with Store(db) as store:
        assert ingest_csv(store, tmp_path / "labels.csv", DEMO, progress=False).added == 120
        store.set_verify(["airplane", "automobile"])
        save_round_config(store, RoundConfig(backbone_epochs=1, steps=50, num_ref=2))
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "held_worker.py"), str(db), "training"], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        store = Store(db)
        wait_for(lambda: store.worker_state()["message"] == held_worker.HELD, what="training hold", proc=proc)
        status = json.loads(cli(db, "status", "--json"))["worker"]
        assert status["running"] and status["pid"] == proc.pid and status["phase"] == "training"
        assert PHASES[-status["phase_count"]:][status["phase_index"] - 1] == "training"
        # an estimate of the time left is given (eta_at, from which it counts, is checked exactly above)
        assert 0 < status["progress"] < 1 and 0.3 < status["overall"] < 1 and status["eta_s"] is not None
        assert status["next_round"]["reason"] == "no model yet"
        text = cli(db, "status")
        assert (f"round: training (phase {status['phase_index']} of {status['phase_count']}): " in text
                and "of the round, about " in text and " left" in text), text
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    cli(db, "worker", "--once")
    status = json.loads(cli(db, "status", "--json"))["worker"]
    assert status["phase"] == "stopped" and not status["running"]
    assert (status["progress"], status["overall"], status["eta_s"], status["phase_index"]) == (None,) * 4
    images = [r["id"] for r in store.iter_images()][:13]
    for image_id in images:
        store.record_verdict(image_id, "ann", "correct", reason="audit")
    assert json.loads(cli(db, "status", "--json"))["worker"]["next_round"] == {
        "due": False, "reason": "waiting for verdicts", "verdicts_since_model": 13, "retrain_every": 50,
        "waiting_for": 37}
    assert "next round: waiting for 37 more verdicts (13 of 50 since the current model)" in cli(db, "status")
    store.close()


def test_status_says_what_the_fit_did_and_warns_when_the_flags_lose(tmp_path):
    store = Store(tmp_path / "a.db")
    cid = store.ensure_classes(["cat"])["cat"]
    store.add_images({"path": f"/i/{k}.jpg", "hash": str(k), "label_id": cid} for k in range(1, 4))
    store.make_current(store.add_model(delta=0.5, metrics={"max_verdict_id": 0, "note": "no verdicts yet: x",
                                                           "audit_check": {"n": 0, "errors": 0,
                                                                           "flag_nothing_errors": 0,
                                                                           "loses": False}}))
    lines = describe_status(project_status(store))
    assert "  fit: no verdicts yet: x" in lines
    assert any("flags not measured yet: no held-out audit verdicts" in line for line in lines)
    store.make_current(store.add_model(delta=0.5, metrics={"audit_check": {"n": 12, "errors": 5,
                                                                           "flag_nothing_errors": 3,
                                                                           "loses": True}}))
    status = project_status(store)
    assert status["trust"]["loses"] and status["trust"]["n"] == 12
    assert ("  WARNING: flags LOSE to flagging nothing on 12 held-out audit verdicts: 5 errors against 3"
            in describe_status(status))


def test_adapt_summary_leads_with_the_newer_waiting_reason(tmp_path):
    """An attempt's record carries its message; the worker adds why it waits later (over the budget, say): the
    line shows that reason first and the attempt's message beside it, and once only when they repeat."""
    store = Store(tmp_path / "a.db")
    assert adapt_summary(store)["text"] == "not in use; not tried yet"
    store.set_setting("adapt", {"message": "the adapted model made 3 errors, the current one 1"})
    assert adapt_summary(store)["text"] == "not in use; the adapted model made 3 errors, the current one 1"
    store.set_setting("adapt", store.get_setting("adapt") | {"waiting": "over the 30 min budget"})
    assert adapt_summary(store)["text"] == ("not in use; over the 30 min budget (last attempt: the adapted model "
                                            "made 3 errors, the current one 1)")
    store.set_setting("adapt", store.get_setting("adapt") | {
        "waiting": "last adapted round: the adapted model made 3 errors, the current one 1"})
    assert adapt_summary(store)["text"] == ("not in use; last adapted round: the adapted model made 3 errors, the "
                                            "current one 1")

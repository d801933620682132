"""Progress a person can read: where a round is (phase k of n, share of the phase, share of the round, ETA)
and when the next round fires. No torch here: `annotator status` and the dashboard import this module.

A round reports ``(phase, progress in [0, 1], message)`` (``round_types.Report``). ``RoundProgress`` turns
that into the worker row's fields; ``next_round`` reads the store to say why the next round is due, or how
many more verdicts it waits for; ``describe`` renders ``worker_status`` as lines of text.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from tqdm import tqdm

from .store import Store

# A round's phases in order, with the share of a typical CPU round each takes (measured on the demo:
# backbone training, when it runs, dominates; then feature extraction; the rest is short).
PHASE_WEIGHTS = {"backbone": 0.45, "features": 0.25, "references": 0.05, "training": 0.15, "scoring": 0.03,
                 "writing": 0.07}
PHASES = tuple(PHASE_WEIGHTS)
ALIVE_S = 30.0  # a worker whose heartbeat is older than this is not running (it writes one every few seconds)


def heartbeat_fresh(age_s: float | None) -> bool:
    """Whether a worker heartbeat `age_s` seconds old (None: never written) says the worker is running; the
    dashboard, `annotator status` and a second worker starting on the same database all go by this."""
    return age_s is not None and age_s <= ALIVE_S


@dataclass
class RoundProgress:
    """Overall progress and ETA of one round from its phase reports.

    The backbone is trained only on some rounds (no ImageNet weights, or a full round), and it reports before
    any later phase does; so the plan holds 'backbone' only once it was reported. Overall progress is the
    weight of the finished phases plus the current phase's share of its weight, over the plan's weight; it
    never goes back. ETA = elapsed * (1 - overall) / overall.
    """
    started_at: float = field(default_factory=time.time)
    with_backbone: bool = False
    overall: float = 0.0

    def plan(self) -> tuple[str, ...]:
        return PHASES if self.with_backbone else PHASES[1:]

    def update(self, phase: str, progress: float, *, now: float | None = None) -> dict:
        """The worker-row fields for a report: phase_index (1-based), phase_count, overall, eta_at."""
        now = time.time() if now is None else now
        if phase == "backbone":
            self.with_backbone = True
        plan = self.plan()
        if phase not in plan:
            return {"phase_index": None, "phase_count": len(plan), "overall": round(self.overall, 4), "eta_at": None}
        k = plan.index(phase)
        total = sum(PHASE_WEIGHTS[p] for p in plan)
        done = sum(PHASE_WEIGHTS[p] for p in plan[:k]) + PHASE_WEIGHTS[phase] * min(max(progress, 0.0), 1.0)
        self.overall = max(self.overall, done / total)
        elapsed = now - self.started_at
        eta = now + elapsed * (1 - self.overall) / self.overall if self.overall > 0.02 and elapsed > 0 else None
        return {"phase_index": k + 1, "phase_count": len(plan), "overall": round(self.overall, 4), "eta_at": eta}


def next_round(store: Store) -> dict:
    """Why the next round is due, or what it waits for.

    -> ``{"due": bool, "reason": str, "verdicts_since_model": int, "retrain_every": int, "waiting_for": int}``;
    reason is one of 'no images', 'no model yet', 'requested: retrain' / 'requested: full',
    'verdicts', 'waiting for verdicts'. ``waiting_for`` = live verdicts still needed (0 when due). Only verdicts a
    round learns from count: 'unsure' and transfer-check verdicts would retrain the model on what it already had.
    """
    every = int(store.get_setting("retrain_every"))
    current = store.current_model()
    since = store.verdicts_since(((current or {}).get("metrics") or {}).get("max_verdict_id") or 0, trains=True)
    out = {"due": False, "verdicts_since_model": since, "retrain_every": every, "waiting_for": max(0, every - since)}
    if store.images_count(status="ok") == 0:
        return out | {"reason": "no images"}
    req = store.pending_request()
    if req:
        return out | {"due": True, "reason": f"requested: {req['kind']}", "waiting_for": 0}
    if current is None:
        return out | {"due": True, "reason": "no model yet", "waiting_for": 0}
    if since >= every:
        return out | {"due": True, "reason": "verdicts", "waiting_for": 0}
    return out | {"reason": "waiting for verdicts"}


def worker_status(store: Store, *, now: float | None = None) -> dict:
    """The worker row as a person reads it: running (heartbeat fresh), phase k of n, progress in the phase,
    overall progress, eta_s (seconds left), message, heartbeat age, last error, and ``next_round``.
    Progress fields are None while no round runs."""
    now = time.time() if now is None else now
    w = store.worker_state()
    age = w["heartbeat_age_s"]
    running = heartbeat_fresh(age) and w["phase"] != "stopped"
    in_round = running and w.get("overall") is not None  # the worker clears it between rounds
    eta = w.get("eta_at")
    return {"running": running, "pid": w["pid"] if running else None, "phase": w["phase"],
            "phase_index": w.get("phase_index") if in_round else None,
            "phase_count": w.get("phase_count") if in_round else None,
            "progress": w["progress"] if in_round else None, "overall": w.get("overall") if in_round else None,
            "eta_s": max(0.0, round(eta - now, 1)) if in_round and eta else None,
            "message": w["message"], "heartbeat_age_s": None if age is None else round(age, 1),
            "last_error": w["last_error"], "last_error_at": w["last_error_at"], "next_round": next_round(store)}


def duration(seconds: float) -> str:
    """'45 s', '3 min 05 s', '1 h 02 min'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def describe_round(status: dict) -> str:
    """One line about the round in progress, e.g. 'features (phase 2 of 5): 40 % of the phase, 31 % of the
    round, about 2 min 10 s left'; '' when no round runs."""
    if status["overall"] is None:
        return ""
    where = f"{status['phase']} (phase {status['phase_index']} of {status['phase_count']})" \
        if status["phase_index"] else status["phase"]
    eta = f", about {duration(status['eta_s'])} left" if status["eta_s"] is not None else ""
    return f"{where}: {status['progress'] or 0:.0%} of the phase, {status['overall']:.0%} of the round{eta}"


def describe_next(nxt: dict) -> str:
    """'waiting for 37 more verdicts (13 of 50 since the current model)', 'due now: no model yet', ..."""
    if nxt["due"]:
        return f"due now ({nxt['reason']})"
    if nxt["reason"] == "no images":
        return "waiting for images (ingest some)"
    more = nxt["waiting_for"]
    return (f"waiting for {more} more verdict{'s' if more != 1 else ''} "
            f"({nxt['verdicts_since_model']} of {nxt['retrain_every']} since the current model)")


def project_status(store: Store) -> dict:
    """What `annotator status` reports: database, counts, current model, ``worker_status``, ingest errors."""
    model = store.current_model()
    return {"database": str(store.path), "images": store.images_count(), "verdicts": store.verdict_count(),
            "classes_verified": sum(c["verify"] for c in store.classes()),
            "model_version": model["version"] if model else None, "delta": model["delta"] if model else None,
            "backbone": backbone_summary(model), "trust": model_trust(model), "adapted": adapt_summary(store),
            "worker": worker_status(store),
            "ingest_errors": store.ingest_error_counts()}


def model_trust(model: dict | None) -> dict | None:
    """What the current model did with the verdicts and how its flags fared on the held-out audit verdicts (random
    draws it never trained on) against flagging nothing: {note, n, errors, flag_nothing_errors, loses, text}."""
    if not model:
        return None
    m = model.get("metrics") or {}
    check = m.get("audit_check") or {"n": 0, "errors": 0, "flag_nothing_errors": 0, "loses": False}
    if check["n"] == 0:
        text = "flags not measured yet: no held-out audit verdicts (half of the random audit draws are held out)"
    else:
        verdict = "LOSE to" if check["loses"] else ("tie with" if check["errors"] == check["flag_nothing_errors"]
                                                     else "beat")
        text = (f"flags {verdict} flagging nothing on {check['n']} held-out audit verdicts: {check['errors']} "
                f"errors against {check['flag_nothing_errors']}")
    return {"note": m.get("note"), **check, "text": text}


def adapt_summary(store: Store) -> dict:
    """The adapted features (annotator.adapt_round): whether the current model uses them, the last attempt's
    outcome and what the worker waits for. -> {current, message, waiting, text}. An attempt replaces the record,
    so a `waiting` reason is newer than the `message` beside it: the text leads with it."""
    model = store.current_model() or {}
    record = store.get_setting("adapt") or {}
    current = bool((model.get("metrics") or {}).get("adapted"))
    message, waiting = record.get("message"), record.get("waiting")
    text = waiting or message or "not tried yet"
    if waiting and message and message not in waiting:
        text += f" (last attempt: {message})"
    return {"current": current, "message": message, "waiting": waiting,
            "text": ("in use; " if current else "not in use; ") + text}


def backbone_summary(model: dict | None) -> dict | None:
    """Which backbone and input resolution the model's features came from (None without a model)."""
    if not model:
        return None
    m = model.get("metrics") or {}
    return {"arch": m.get("backbone_arch"), "kind": m.get("backbone_kind"), "image_size": m.get("image_size"),
            "source": m.get("backbone") or model.get("backbone")}


def _describe_backbone(b: dict | None) -> str:
    if not b or not b.get("arch"):
        return ""
    return f" ({b['kind'] or 'unknown'} {b['arch']} features at {b['image_size']} px)"


def describe_status(out: dict) -> list[str]:
    """``project_status`` as lines a person reads."""
    w = out["worker"]
    errors = ", ".join(f"{n} {reason}" for reason, n in out["ingest_errors"].items()) or "none"
    model = "none yet" if out["model_version"] is None else f"v{out['model_version']}, threshold {out['delta']:.3f}"
    lines = [f"database: {out['database']}",
             f"images: {out['images']} ({out['classes_verified']} classes verified); live verdicts: "
             f"{out['verdicts']}; ingest errors: {errors}", f"model: {model}{_describe_backbone(out['backbone'])}",
             *_describe_trust(out.get("trust")), f"  adapted features: {out['adapted']['text']}",
             f"worker: running (pid {w['pid']}, heartbeat {duration(w['heartbeat_age_s'])} ago), {w['phase']}"
             if w["running"] else f"worker: not running (last state: {w['phase'] or 'never started'})"]
    if describe_round(w):
        lines.append(f"  round: {describe_round(w)}")
    if w["message"]:
        lines.append(f"  message: {w['message']}")
    lines.append(f"  next round: {describe_next(w['next_round'])}")
    if w["last_error"]:
        lines.append(f"  last error: {w['last_error']}")
    return lines


def _describe_trust(t: dict | None) -> list[str]:
    if not t:
        return []
    lines = [f"  fit: {t['note']}"] if t["note"] else []
    return lines + [f"  {'WARNING: ' if t['loses'] else ''}{t['text']}"]


class TqdmReport:
    """A ``round_types.Report`` for the CLI: one tqdm bar per phase (percent of the phase), and each new message
    as a line ``[phase] message`` above the bars (a log of the round). Call ``close()`` when the round ends."""

    def __init__(self) -> None:
        self.phase: str | None = None
        self.message: str | None = None
        self.bar: tqdm | None = None

    def __call__(self, phase: str, progress: float, message: str) -> None:
        if phase != self.phase:
            self.close()
            self.phase = phase
            if phase in PHASES:
                self.bar = tqdm(total=100, desc=phase, unit="%", bar_format="{desc}: {percentage:3.0f}%|{bar}| "
                                "{elapsed}<{remaining}")
        if message and message != self.message:
            self.message = message
            tqdm.write(f"[{phase}] {message}")
        if self.bar is not None:
            self.bar.update(max(0, int(round(100 * min(progress, 1.0))) - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar = None

"""Where a project stands: wrong labels in the data set with 95 % intervals, what the verdicts fixed, what the
export keeps. Pure functions over ``States`` (one row per image, from ``Store.image_states``); ``standing``
reads the store once and returns every figure as a JSON-ready dict, the one code path behind the dashboard's
"Where we stand", the export page's what-if and ``annotator report``.

How each figure is estimated (counts of images; "unjudged" = no live correct/wrong verdict):

- **Verified classes with audit verdicts**: audit verdicts are uniform random draws among a class's unjudged
  images, so wrong / audited estimates the share of wrong labels among them. Remaining wrong labels =
  sum over classes of unjudged x that share; the 95 % interval is Wilson's at the stratified share and the
  stratified sample's effective size 1 / sum(w_c^2 / n_c) (w_c = the class's share of the unjudged images,
  n_c its audit verdicts), times the unjudged images. With one class it is exactly Wilson's interval.
- **The other classes** (unverified, and verified ones with no audit verdict yet): the calibrated model's
  expected count, the sum of P(label wrong) over their unjudged images, P(label wrong) being the score's counting
  calibration where it has one (``expected_wrong``: the robust score's, whose prior is the noise model's posterior;
  the flag score's prior is cautious and undercounts at high noise), else 1 - P(label correct). Its interval is
  the wider of the model's own (expected count +- 1.96 x sqrt(sum P (1 - P)), P = P(label wrong)) and the
  calibration check: on a random sample of judged images, the wrong count over the model's expected count (the
  same P(label wrong) summed), a ratio whose Wilson bounds scale the expected count. The sample is the transfer
  check's verdicts (random draws in the unverified classes, which no model trains on) when there are any, else
  the held-out audit verdicts (audit draws on odd image ids, which no model trains on either). Without both the
  interval is everything possible (0 to the unjudged images): the model is not checked yet.
- **Transfer check**: on its verdicts, the model's error (flags disagreeing with the verdict) with Wilson's
  interval, against flagging nothing, and its AUROC with Hanley and McNeil's interval.
- **Remaining** = the two parts, their intervals combined in quadrature (each side separately).
  **Wrong labels in the data set** = remaining + **fixed** (live 'wrong' verdicts).
- **Export** at a threshold: the export's own decision (``annotator.export.decide``) counted over every image.
- **Flags' precision and recall** at a threshold: on the held-out audit verdicts with a score, Clopper and
  Pearson's exact intervals (few verdicts are flagged: Wilson's interval covers too rarely on one or two).

- **Stopping signal** per verified class (robust score only): the round refits the score's weights without the
  class's newest half of its verdicts (``cleannet_core.robust.verdict_influence``); when that changes under
  STOP_SHARE of the flags, more verdicts there no longer move the model (they still fix the images they judge):
  verify another class.

Scores that are not probabilities (method ``paper``) give no expected count: the model part is None.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from math import exp, lgamma, log, log1p, sqrt

import numpy as np

from cleannet_core.metrics import auroc
from cleannet_core.score import counted_wrong

from .export import threshold_in_force
from .store import STATE_ROW, Store

Z = 1.96  # two-sided 95 %
# a verified class's newest verdicts moved under this share of the flags: they no longer move the model, verify
# another class (benchmarks/stopping.py: no threshold predicts when switching teaches more; at 1 % it fires rarely)
STOP_SHARE = 0.01


@dataclass(frozen=True)
class Interval:
    """A count (or share) and its 95 % interval, low <= point <= high."""
    point: float
    low: float
    high: float

    def scaled(self, k: float) -> Interval:
        return Interval(self.point * k, self.low * k, self.high * k)


def wilson(k: float, n: float, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (k may be fractional); (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), summed in log space."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    lp, lq = log(p), log1p(-p)
    return min(1.0, sum(exp(lgamma(n + 1) - lgamma(i + 1) - lgamma(n - i + 1) + i * lp + (n - i) * lq)
                        for i in range(k + 1)))


def _solve(f, target: float) -> float:
    """The p in [0, 1] where the decreasing f(p) crosses target (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) > target else (lo, mid)
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Clopper and Pearson's exact interval of a proportion k/n: it covers with at least 1 - alpha whatever the
    proportion, where Wilson's falls short on a handful of draws near 0 or 1; (0, 1) when n == 0."""
    if n <= 0:
        return 0.0, 1.0
    lo = 0.0 if k == 0 else _solve(lambda p: _binom_cdf(k - 1, n, p), 1 - alpha / 2)
    hi = 1.0 if k == n else _solve(lambda p: _binom_cdf(k, n, p), alpha / 2)
    return lo, hi


def rate(k: int, n: int, *, exact: bool = False) -> dict:
    """{k, n, rate, low, high}: k of n with its Wilson interval, or Clopper and Pearson's with ``exact`` (rate
    None when n == 0)."""
    lo, hi = clopper_pearson(k, n) if exact else wilson(k, n)
    return {"k": int(k), "n": int(n), "rate": k / n if n else None, "low": lo, "high": hi}


@dataclass(frozen=True)
class States:
    """One row per image (``Store.image_states``), as arrays of shape (N,)."""
    image_id: np.ndarray   # int64
    label: np.ndarray      # int64 store class id of the noisy label
    ok: np.ndarray         # bool, status 'ok' (duplicates are exported, never scored)
    score: np.ndarray      # float64, NaN = no score; higher = label more likely correct
    verdict: np.ndarray    # str: 'correct', 'wrong', 'unsure' or '' (none)
    corrected: np.ndarray  # int64 corrected class id of a 'wrong' verdict, -1 = none
    reason: np.ndarray     # str: the live verdict's reason, '' = none
    p_wrong: np.ndarray    # float64 P(label wrong) the counts sum: the stored expected_wrong, else 1 - score; NaN =
                           # no score (meaningful where the score is a probability)

    @classmethod
    def of(cls, rows: list[tuple]) -> States:
        """From ``Store.image_states`` rows (``STATE_ROW`` columns)."""
        cols = list(zip(*rows)) if rows else [()] * len(STATE_ROW)
        score = np.array([np.nan if s is None else s for s in cols[3]], np.float64)
        counted = np.array([np.nan if w is None else w for w in cols[7]], np.float64)
        return cls(image_id=np.array(cols[0], np.int64), label=np.array(cols[1], np.int64),
                   ok=np.array([s == "ok" for s in cols[2]], bool), score=score,
                   verdict=np.array([v or "" for v in cols[4]], dtype="<U7"),
                   corrected=np.array([-1 if c is None else c for c in cols[5]], np.int64),
                   reason=np.array([r or "" for r in cols[6]], dtype="<U16"),
                   p_wrong=counted_wrong(score, counted))

    @property
    def judged(self) -> np.ndarray:
        """(N,) bool: a live correct or wrong verdict decides the label."""
        return (self.verdict == "correct") | (self.verdict == "wrong")

    @property
    def wrong(self) -> np.ndarray:
        return self.verdict == "wrong"

    @property
    def held_out(self) -> np.ndarray:
        """(N,) bool: judged audit draws on odd image ids, the verdicts no model trains on
        (``pipeline.verdict_split``'s validation rows)."""
        return self.judged & (self.reason == "audit") & (self.image_id % 2 == 1)


def stratified_count(k: np.ndarray, n: np.ndarray, sizes: np.ndarray) -> Interval:
    """Wrong labels among sum(sizes) images of strata with k (C,) wrong in n (C,) >= 1 random draws each:
    point sum(sizes * k / n); Wilson's interval at the stratified share with the effective sample size
    1 / sum(w^2 / n), w = sizes / sum(sizes), times sum(sizes)."""
    k, n, sizes = (np.asarray(a, np.float64) for a in (k, n, sizes))
    total = float(sizes.sum())
    if total == 0:
        return Interval(0.0, 0.0, 0.0)
    w = sizes / total
    share = float((w * k / n).sum())
    n_eff = 1.0 / float((w * w / n).sum())
    lo, hi = wilson(share * n_eff, n_eff)
    return Interval(share * total, min(lo, share) * total, max(hi, share) * total)


def calibration_check(states: States, sample: np.ndarray | None = None, *, source: str = "held-out audit") -> dict:
    """The model's expected wrong count (the sum of ``States.p_wrong``) against the wrong verdicts on a random
    sample of judged images with a score (``sample`` (N,) bool; default the held-out audit verdicts): {source, n,
    wrong, expected, ratio, ratio_low, ratio_high} (ratio = wrong / expected, None when not measurable)."""
    m = (states.held_out if sample is None else sample) & ~np.isnan(states.score)
    n, k = int(m.sum()), int(states.wrong[m].sum())
    expected = float(states.p_wrong[m].sum())
    out = {"source": source, "n": n, "wrong": k, "expected": expected, "ratio": None, "ratio_low": None,
           "ratio_high": None}
    if n and expected > 0:
        lo, hi = wilson(k, n)
        out |= {"ratio": k / expected, "ratio_low": lo * n / expected, "ratio_high": hi * n / expected}
    return out


def model_count(p: np.ndarray, check: dict) -> Interval:
    """Expected wrong labels among images with P(label wrong) p (M,) (``States.p_wrong``): sum(p), its interval
    the wider of +- Z sqrt(sum p (1 - p)) and the expected count times the calibration check's ratio bounds;
    (0, M) when the check has no held-out verdicts."""
    p = np.asarray(p, np.float64)
    expected = float(p.sum())
    if check["ratio_low"] is None:
        return Interval(expected, 0.0, float(len(p)))
    sd = sqrt(float((p * (1.0 - p)).sum()))
    lo = min(expected - Z * sd, expected * check["ratio_low"])
    hi = max(expected + Z * sd, expected * check["ratio_high"])
    return Interval(expected, max(0.0, lo), min(float(len(p)), hi))


def combine(*parts: Interval) -> Interval:
    """The sum of independent estimates: points add, each side's half-widths add in quadrature."""
    point = sum(p.point for p in parts)
    return Interval(point, point - sqrt(sum((p.point - p.low) ** 2 for p in parts)),
                    point + sqrt(sum((p.high - p.point) ** 2 for p in parts)))


def export_counts(states: States, threshold: float | None) -> dict:
    """What ``export_csv`` at ``threshold`` does with every image: rows, kept, dropped (by a verdict, by the
    model), relabelled (kept with a verdict's corrected class)."""
    correct, wrong = states.verdict == "correct", states.wrong
    relabelled = wrong & (states.corrected >= 0) & (states.corrected != states.label)
    by_model = ~(correct | wrong)
    if threshold is None:
        model_drop = np.zeros(len(states.label), bool)
    else:
        model_drop = by_model & ~np.isnan(states.score) & (states.score < threshold)
    dropped_verdict = int((wrong & ~relabelled).sum())
    dropped_model = int(model_drop.sum())
    n = len(states.label)
    return {"threshold": threshold, "rows": n, "kept": n - dropped_verdict - dropped_model,
            "dropped": dropped_verdict + dropped_model, "dropped_by_verdict": dropped_verdict,
            "dropped_by_model": dropped_model, "relabelled": int(relabelled.sum())}


def flag_quality(states: States, threshold: float | None) -> dict:
    """Precision and recall of the flags (score < threshold) on the held-out audit verdicts with a score:
    {n, wrong, flagged, precision: rate(), recall: rate()} (``rate`` with Clopper and Pearson's interval: the
    flagged held-out verdicts are a handful for a long time)."""
    m = states.held_out & ~np.isnan(states.score)
    wrong = states.wrong[m]
    flag = states.score[m] < threshold if threshold is not None else np.zeros(int(m.sum()), bool)
    hit = int((flag & wrong).sum())
    return {"n": int(m.sum()), "wrong": int(wrong.sum()), "flagged": int(flag.sum()),
            "precision": rate(hit, int(flag.sum()), exact=True), "recall": rate(hit, int(wrong.sum()), exact=True)}


def auroc_interval(score: np.ndarray, correct: np.ndarray) -> dict:
    """AUROC of the score (wrong labels the positives: the chance a wrong label scores below a correct one) with
    Hanley and McNeil's 95 % interval: {auroc, low, high, n_wrong, n_correct}; None values without both kinds."""
    correct = np.asarray(correct, bool)
    n1, n2 = int((~correct).sum()), int(correct.sum())
    out = {"auroc": None, "low": None, "high": None, "n_wrong": n1, "n_correct": n2}
    if not n1 or not n2:
        return out
    a = auroc(np.asarray(score, np.float64), correct)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = sqrt(max(a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a), 0.0) / (n1 * n2))
    return out | {"auroc": a, "low": max(0.0, a - Z * se), "high": min(1.0, a + Z * se)}


def transfer_sample(states: States, verified: set[int]) -> np.ndarray:
    """(N,) bool: judged transfer-check verdicts on 'ok' images of classes not verified now."""
    return (states.judged & (states.reason == "transfer_check") & states.ok
            & ~np.isin(states.label, list(verified)))


def transfer_check(states: States, verified: set[int], threshold: float | None) -> dict:
    """The model on the unverified classes, measured on the transfer-check verdicts with a score: {n, wrong,
    per_class: {class id: {n, wrong}}, error: rate() of the flags (score < threshold) disagreeing with the
    verdict, flag_nothing_error: rate() of wrong labels, auroc: ``auroc_interval``}."""
    m = transfer_sample(states, verified) & ~np.isnan(states.score)
    wrong, score = states.wrong[m], states.score[m]
    flag = score < threshold if threshold is not None else np.zeros(len(score), bool)
    per_class = {int(c): {"n": int((states.label[m] == c).sum()), "wrong": int(wrong[states.label[m] == c].sum())}
                 for c in np.unique(states.label[m])}
    return {"n": int(m.sum()), "wrong": int(wrong.sum()), "per_class": per_class,
            "error": rate(int((flag != wrong).sum()), int(m.sum())), "flag_nothing_error": rate(int(wrong.sum()),
                                                                                                int(m.sum())),
            "auroc": auroc_interval(score, ~wrong)}


def what_if(states: States, thresholds: list[float]) -> list[dict]:
    """``export_counts`` and ``flag_quality`` at each threshold."""
    return [export_counts(states, t) | {"flags": flag_quality(states, t)} for t in thresholds]


def remaining(states: States, verified: set[int], *, probability: bool) -> dict:
    """Wrong labels left among the unjudged 'ok' images: per verified class with audit verdicts (from them),
    the other classes (from the model, checked), and both together. ``verified``: store class ids."""
    unjudged = states.ok & ~states.judged
    audit = states.judged & (states.reason == "audit") & states.ok
    classes, per_class = sorted(set(states.label[states.ok].tolist())), []
    measured: list[int] = []
    for c in classes:
        in_c = states.label == c
        n = int((audit & in_c).sum())
        if c in verified and n:
            measured.append(c)
            k, u = int((audit & in_c & states.wrong).sum()), int((unjudged & in_c).sum())
            lo, hi = wilson(k, n)
            per_class.append({"class_id": c, "unjudged": u, "audited": n, "audit_wrong": k,
                              "remaining": asdict(Interval(u * k / n, u * lo, u * hi))})
    k = np.array([r["audit_wrong"] for r in per_class], np.float64)
    n = np.array([r["audited"] for r in per_class], np.float64)
    u = np.array([r["unjudged"] for r in per_class], np.float64)
    audited_part = stratified_count(k, n, u) if per_class else Interval(0.0, 0.0, 0.0)
    rest = unjudged & ~np.isin(states.label, measured)
    scored = rest & ~np.isnan(states.score)
    transfer = transfer_sample(states, verified)
    check = (calibration_check(states, transfer, source="transfer-check") if transfer.any()
             else calibration_check(states))
    model_part = model_count(states.p_wrong[scored], check) if probability else None
    parts = [audited_part] + ([model_part] if model_part is not None else [])
    images = int((states.ok & np.isin(states.label, measured)).sum())
    return {"audited_classes": {"classes": per_class, "images": images, "unjudged": int(u.sum()),
                                "remaining": asdict(audited_part)},
            "model_classes": {"class_ids": [c for c in classes if c not in measured], "unjudged": int(rest.sum()),
                              "unscored": int((rest & np.isnan(states.score)).sum()), "check": check,
                              "remaining": asdict(model_part) if model_part is not None else None},
            "remaining": asdict(combine(*parts)) if model_part is not None or not rest.any() else None}


def effort_curve(models: list[dict]) -> list[dict]:
    """Per model version (rescores left out, oldest first): verdicts spent, the flags' error on its held-out audit
    verdicts (rate() with Wilson's interval) against flagging nothing on the same verdicts, and the wrong labels
    the model expected among the images no verdict had judged then (None for models from before this figure, and
    where the score is no probability: then it counts flagged images)."""
    out = []
    for m in sorted(models, key=lambda m: m["version"]):
        metrics = m.get("metrics") or {}
        if metrics.get("rescored_from"):
            continue
        check = metrics.get("audit_check") or {"n": 0, "errors": 0, "flag_nothing_errors": 0}
        out.append({"version": m["version"], "verdicts": m.get("n_verdicts") or 0,
                    "audit_error": rate(check["errors"], check["n"]),
                    "flag_nothing_error": rate(check["flag_nothing_errors"], check["n"]),
                    "expected_wrong_left": metrics.get("expected_wrong_left"),
                    "kind": metrics.get("noise_rate_kind", "flagged")})
    return out


def stopping(metrics: dict, verified: list[str]) -> list[dict]:
    """Per verified class, from the round's ``verdict_influence``: verdicts, held (the newest, left out of a refit),
    moved (flags that changed without them), flagged, and ``stop`` (moved < STOP_SHARE x flagged); ``stop`` is
    None where the model has no such signal (another method) or the class has too few verdicts to tell."""
    influence = metrics.get("verdict_influence")
    out = []
    for name in sorted(verified):
        row = (influence or {}).get(name) or {}
        out.append({"class": name, **{k: row.get(k) for k in ("verdicts", "held", "moved", "flagged")},
                    "stop": row["moved"] < STOP_SHARE * max(row["flagged"], 1) if row else None,
                    "signal": influence is not None})
    return out


def standing(store: Store) -> dict:
    """Every figure of "Where we stand" (see the module docstring) as a JSON-ready dict; class ids are
    replaced by names."""
    model = store.current_model()
    metrics = (model or {}).get("metrics") or {}
    states = States.of(store.image_states(model["version"] if model else None))
    classes = store.classes()
    names = {c["id"]: c["name"] for c in classes}
    verified = {c["id"] for c in classes if c["verify"]}
    t = threshold_in_force(store, model)
    out = remaining(states, verified, probability=metrics.get("noise_rate_kind") == "expected")
    for row in out["audited_classes"]["classes"]:
        row["class"] = names[row.pop("class_id")]
    out["model_classes"]["classes"] = [names[c] for c in out["model_classes"].pop("class_ids")]
    ok = states.ok
    relabelled = states.wrong & ok & (states.corrected >= 0) & (states.corrected != states.label)
    fixed = {"wrong": int((states.wrong & ok).sum()), "relabelled": int(relabelled.sum())}
    total = None
    if out["remaining"] is not None:
        r = out["remaining"]
        total = {k: r[k] + fixed["wrong"] for k in ("point", "low", "high")}
    transfer = transfer_check(states, verified, t)
    transfer["per_class"] = {names[c]: v for c, v in transfer["per_class"].items()}
    return {"model_version": model["version"] if model else None, "threshold": t, "images": int(ok.sum()),
            "verdicts": int((states.verdict != "").sum()), "judged": int((states.judged & ok).sum()),
            "wrong_total": total, **out, "fixed": fixed, "export": export_counts(states, t),
            "flags": flag_quality(states, t), "transfer": transfer, "effort": effort_curve(store.models()),
            "stopping": stopping(metrics, [names[c] for c in verified])}


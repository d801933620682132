"""One retraining round: images -> features -> references -> scoring model -> scores -> new current model.

The worker runs `run_round` whenever enough verdicts arrived or a lead asked; the CLI runs its phases one by
one (`extract`, `train`, `score`). The images and the backbone come from `annotator.backbone`, features
extracted by torchrun processes from `annotator.distributed`. Heavy lifting is in `cleannet_core`; SQL is in
`annotator.store`; every model file is written and registered by `annotator.artifacts`; the settings are
`round_config.RoundConfig`; a new version's scores are published by `annotator.publish`.
"""
from __future__ import annotations

import hashlib
import logging
import pickle
from dataclasses import replace

import numpy as np
import torch

from cleannet_core.alternate import round_weights, training_weights
from cleannet_core.classifier import Backbone, resolve_device
from cleannet_core.features import extract_features
from cleannet_core import scoring
from cleannet_core.metrics import detection_report
from cleannet_core.probe import Probe, ProbeConfig
from cleannet_core.references import KMeansConfig, build_references
from cleannet_core.registry import spec
from cleannet_core.score import counted_wrong
from cleannet_core.train import TrainConfig

from .artifacts import (BackboneInfo, adapted_probs, current_backbone, features_dir, load_backbone_artifact,
                        load_scorer, save_scorer_artifact)
from .backbone import ensure_backbone, load_data
from .distributed import torchrun_extract
from .publish import is_calibrated, publish_scores, with_conflicts
from .round_config import RoundConfig
from .round_types import Data, Report, RoundInputs, VerdictSplit, quiet
from .store import Store

log = logging.getLogger(__name__)


def features(store: Store, data: Data, model: Backbone | None, info: BackboneInfo, cfg: RoundConfig, *,
             progress: bool = False, report: Report = quiet) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float16 features of data from the cache keyed by the ingest hashes, and (N,) bool readable.

    Cached images are not opened; the others are read, checked against their ingest hash and extracted (model
    None: the stored backbone is loaded then). The unreadable images (zero rows) are reported and left out of
    the references and the probe's training. float16 holds the cached values exactly at half the memory.
    `progress`: tqdm bars (the CLI); `report` gets phase 'features' after every batch the backbone runs.
    """

    def on_batch(done: int, total: int) -> None:
        report("features", done / max(total, 1), f"features of {done} of {total} new images ({info.image_size} px)")

    res = extract_features(model if model is not None else (lambda: load_backbone_artifact(info)), data.paths,
                           keys=data.keys, dim=info.dim, cache_dir=features_dir(store), backbone_id=info.id,
                           image_size=info.image_size, device=cfg.device, decode=cfg.decode, dtype=np.float16,
                           progress=progress, on_batch=on_batch)
    if res.errors:
        store.add_ingest_errors({"source": "features", "path": p, "reason": r} for p, r in res.errors)
        log.warning("%d images could not be read for features", len(res.errors))
    return res.features, res.readable


def verdict_split(store: Store, data: Data, readable: np.ndarray | None = None, *,
                  verdicts: list[dict] | None = None) -> VerdictSplit:
    """Latest live correct/wrong verdict per image -> train and validation rows of data, oldest verdict first.

    Audit verdicts (random draws) are unbiased: those on odd image ids validate (delta, checkpoint, the
    model's reported error); everything else trains. 'unsure' verdicts are left out, and so are images not
    `readable` (N,) bool (no features: the verdict stays in the log, it only trains nothing). Transfer-check
    verdicts neither train nor validate: they measure the model on the unverified classes
    (``annotator.estimates``), which they could not do once the model had learned them. `verdicts`: the live
    verdicts to split (``Store.live_verdicts()``, a round's snapshot); None: read now.
    """
    latest: dict[int, dict] = {}
    for v in store.live_verdicts() if verdicts is None else verdicts:
        if v["reason"] == "transfer_check":
            continue
        if v["verdict"] != "unsure" and (v["image_id"] not in latest or v["id"] > latest[v["image_id"]]["id"]):
            latest[v["image_id"]] = v
    where = {int(i): k for k, i in enumerate(data.ids)}
    tr, va, tr_ok, va_ok = [], [], [], []
    for image_id, v in sorted(latest.items(), key=lambda item: item[1]["id"]):  # oldest verdict first
        if image_id not in where or (readable is not None and not readable[where[image_id]]):
            continue
        val = v["reason"] == "audit" and image_id % 2 == 1
        (va if val else tr).append(where[image_id])
        (va_ok if val else tr_ok).append(v["verdict"] == "correct")
    return VerdictSplit(train=np.array(tr, np.int64), train_correct=np.array(tr_ok, bool),
                        val=np.array(va, np.int64), val_correct=np.array(va_ok, bool))


def run_round(store: Store, cfg: RoundConfig = RoundConfig(), *, full: bool = False, report: Report = quiet) -> int:
    """Retrain and rescore everything; returns the new current model version."""
    data = load_data(store)
    if len(data.ids) == 0:
        raise ValueError("no images: ingest some first")
    device = resolve_device(cfg.device)
    current = store.current_model()
    weights = None
    if full and current:
        report("backbone", 0.0, "full round: retraining the backbone with w_soft weights")
        weights = full_round_weights(store, data, current)
    model, backbone = ensure_backbone(store, data, cfg, report, retrain_weights=weights, load=False)
    report("features", 0.0, f"extracting features at {backbone.image_size} px ({backbone.source})")
    if cfg.extract_procs > 1:
        torchrun_extract(store, cfg.extract_procs)
    feats, readable = features(store, data, model, backbone, cfg, report=report)
    report("references", 0.0, "k-means reference sets")
    sub = slice(None) if readable.all() else readable  # a boolean index would copy all N rows
    refs, counts = build_references(feats[sub], data.labels[sub], len(data.class_ids),
                                    config=KMeansConfig(k=cfg.num_ref), device=device)
    # One snapshot of the verdicts, read with the watermark: the round fits on, applies and measures these; one given
    # later counts as new for the next round (``Store.verdicts_since(max_verdict)``).
    max_verdict = store.max_verdict_id()
    verdicts = store.live_verdicts()
    inputs = RoundInputs(data=data, feats=feats, readable=readable, refs=refs, has_refs=counts > 0,
                         split=verdict_split(store, data, readable, verdicts=verdicts))
    method = scoring.method(cfg.method)
    split = inputs.split
    report("training", 0.0, f"{cfg.method}: fitting on {int(readable.sum())} images and {split.n} verdicts")
    warm = None if full else warm_state(current)
    adapted = (warm or {}).get("adapted") if cfg.method == "robust" and cfg.adapt != "off" else None
    probs = adapted and adapted_probs(adapted, ids=data.ids, paths=data.paths, class_ids=data.class_ids.tolist(),
                                      device=str(device))
    adapted = adapted if probs is not None else None
    data_in = round_data(inputs, probe_key=probe_key(data, readable, backbone), probs=probs)
    fit = method.fit(data_in, device=device, cleannet=TrainConfig.shortened(cfg.steps), warm_start=warm,
                     progress=lambda frac, message: report("training", frac, message))
    report("training", 1.0, fit.note)
    fit = replace(fit, scores=with_conflicts(store, data, fit.scores, weight=conflict_weight(cfg, fit.state),
                                             verdicts=verdicts))
    metrics = round_metrics(inputs, fit, backbone=backbone, max_verdict=max_verdict,
                            judged=judged_wrong(data, verdicts)) | {"method": cfg.method, "adapted": bool(adapted)}
    ckpt = save_scorer_artifact(store, fit.state | {"delta": fit.delta, "class_ids": data.class_ids.tolist(),
                                                    "refs": torch.from_numpy(refs)}
                                | ({"adapted": adapted} if adapted else {}),
                                method=cfg.method, backbone=backbone,
                                provenance={"max_verdict_id": max_verdict, "n_verdicts": inputs.split.n})
    version = store.add_model(delta=fit.delta, metrics=metrics, checkpoint=str(ckpt), n_verdicts=inputs.split.n,
                              backbone=f"adapted from {backbone.source}" if adapted else backbone.source)
    publish_scores(store, version, data, fit.scores, fit.delta, report, calibrated=is_calibrated(fit.state),
                   verdicts=verdicts)
    return version


def conflict_weight(cfg: RoundConfig, state: dict) -> float:
    """The round setting conflict_weight where the state's scores are calibrated probabilities, else 0."""
    return cfg.conflict_weight if spec(state["method"]).probability and is_calibrated(state) else 0.0


def round_data(inputs: RoundInputs, *, probe_key: str = "", probs: np.ndarray | None = None) -> scoring.RoundData:
    """The arrays a scoring method is fitted on (folds by image id, so they never change for an image); probs
    (N, C): an adapted model's probabilities (annotator.adapt_round), read instead of a probe's."""
    split = inputs.split
    return scoring.RoundData(feats=inputs.feats, labels=inputs.data.labels, folds=scoring.folds_of(inputs.data.ids),
                             num_classes=len(inputs.data.class_ids), refs=inputs.refs, valid=inputs.has_refs,
                             readable=inputs.readable, train_idx=split.train, train_ok=split.train_correct,
                             val_idx=split.val, val_ok=split.val_correct, probe_key=probe_key, probs=probs)


def probe_key(data: Data, readable: np.ndarray, backbone: BackboneInfo) -> str:
    """What the probe depends on: the backbone (hence the features), the images, their labels and which could be
    read, and the probe's settings. Rounds with the same key (only verdicts changed) reuse the probe."""
    h = hashlib.blake2b(digest_size=16)
    for part in (backbone.id, str(backbone.image_size), repr(ProbeConfig()), data.ids.tobytes(),
                 data.labels.tobytes(), np.asarray(readable, bool).tobytes()):
        h.update(part if isinstance(part, bytes) else part.encode())
    return h.hexdigest()


def full_round_weights(store: Store, data: Data, current: dict) -> np.ndarray:
    """(N,) weights of the full round's backbone retraining, exactly as `train-classifier` weights (spec §6,
    cleannet_core.alternate): w_soft = max(0, score) of the current model, 1 / 0 for images with a live
    correct / wrong verdict, then divided by their mean."""
    rows, correct = verdict_split(store, data).every()
    w = round_weights(_current_scores(store, data), current["delta"], "soft", verified_idx=rows, verified_ok=correct)
    return training_weights(w, "mean")


def rescore(store: Store, cfg: RoundConfig = RoundConfig(), *, report: Report = quiet) -> int:
    """Score every image (new ones included) with the current model; published as a new version."""
    current = store.current_model()
    if current is None:
        raise ValueError("no model yet: run `train` first")
    ckpt = load_scorer(current["checkpoint"])
    data = load_data(store)
    if ckpt["class_ids"] != data.class_ids.tolist():
        raise ValueError("the classes changed since the current model: run `train` instead")
    model, backbone = ensure_backbone(store, data, cfg, report, load=False)
    if backbone.id != ckpt["backbone"]["id"]:
        raise ValueError("the backbone changed since the current model: run `train` instead")
    feats, _ = features(store, data, model, backbone, cfg)
    refs = ckpt["refs"].numpy()
    probs = None
    if ckpt.get("adapted"):
        probs = adapted_probs(ckpt["adapted"], ids=data.ids, paths=data.paths, class_ids=data.class_ids.tolist(),
                              device=str(resolve_device(cfg.device)))
        if probs is None:
            raise ValueError("the current model's adapted networks cannot be read: run `train` instead")
    empty = np.zeros(0, np.int64)
    sc = scoring.rescore(ckpt, scoring.RoundData(
        feats=feats, labels=data.labels, folds=scoring.folds_of(data.ids), num_classes=len(data.class_ids),
        refs=refs, valid=np.abs(refs).sum(axis=(1, 2)) > 0 if probs is None else np.ones(len(refs), bool),
        readable=np.ones(len(data.ids), bool), train_idx=empty, train_ok=empty.astype(bool), val_idx=empty,
        val_ok=empty.astype(bool), probs=probs))
    metrics = dict(current.get("metrics") or {}, rescored_from=current["version"])
    version = store.add_model(delta=current["delta"], metrics=metrics, checkpoint=current["checkpoint"],
                              backbone=current.get("backbone"), n_verdicts=current.get("n_verdicts"))
    verdicts = store.live_verdicts()
    sc = with_conflicts(store, data, sc, weight=conflict_weight(cfg, ckpt), verdicts=verdicts)
    publish_scores(store, version, data, sc, current["delta"], report, calibrated=is_calibrated(ckpt),
                   verdicts=verdicts)
    return version


def current_probs(store: Store, data: Data, cfg: RoundConfig, *, device: torch.device | str = "cpu"
                  ) -> np.ndarray | None:
    """(N, C) the current model's out-of-fold P(noisy label | x) of data's images: its adapted networks', else its
    probe's on its backbone's cached features; None where it has neither (no checkpoint or an unreadable one, a
    method without a probe)."""
    path = (store.current_model() or {}).get("checkpoint")
    if not path:
        return None
    try:
        ckpt = load_scorer(path)
    except (OSError, EOFError, RuntimeError, KeyError) as e:
        log.warning("current checkpoint unreadable (%s)", e)
        return None
    if ckpt.get("adapted"):
        return adapted_probs(ckpt["adapted"], ids=data.ids, paths=data.paths, class_ids=data.class_ids.tolist(),
                             device=str(device))
    info = current_backbone(store)
    if ckpt.get("probe") is None or info is None:
        return None
    feats, _ = features(store, data, None, info, cfg)
    return Probe.from_state(ckpt["probe"]).predict(feats, scoring.folds_of(data.ids))


def judged_wrong(data: Data, verdicts: list[dict]) -> np.ndarray:
    """(N,) float64 per image of data: 1.0 where its live verdict says the label is wrong, 0.0 correct, NaN where
    no correct/wrong verdict judged it (none, or 'unsure'); verdicts: ``Store.live_verdicts()``."""
    out = np.full(len(data.ids), np.nan)
    where = {int(i): k for k, i in enumerate(data.ids)}
    for v in verdicts:
        if v["verdict"] != "unsure" and v["image_id"] in where:
            out[where[v["image_id"]]] = float(v["verdict"] == "wrong")
    return out


def round_metrics(inputs: RoundInputs, fit: scoring.Fitted, *, backbone: BackboneInfo, max_verdict: int,
                  judged: np.ndarray | None = None) -> dict:
    """The model's stored metrics: estimated noise rates (overall, per class), what the fit did with the verdicts,
    its flags measured on the held-out audit verdicts against flagging nothing (`audit_check`), and the wrong
    labels it expects among the images no correct/wrong verdict judged (`expected_wrong_left`; the effort curve of
    ``annotator.estimates``) and, for the robust score, what each class's newest verdicts still move
    (`verdict_influence`: the stopping signal). judged (N,): `judged_wrong`, None: no verdict.

    Where the score is a probability, the noise rates count each judged image by its verdict (1 wrong, 0 correct)
    and every other image by the method's counting calibration (else 1 - score); otherwise they are the share
    flagged."""
    data, split, score = inputs.data, inputs.split, fit.scores.score
    expected = spec(fit.state["method"]).probability
    wrong = (counted_wrong(score, fit.scores.expected_wrong) if expected
             else (score < fit.delta).astype(np.float64))
    unjudged = np.ones(len(score), bool) if judged is None else np.isnan(judged)
    counted = np.where(unjudged, wrong, judged) if expected else wrong
    per_class = {name: float(counted[data.labels == c].mean()) if (data.labels == c).any() else None
                 for c, name in enumerate(data.class_names)}
    influence = {data.class_names[c]: v for c, v in (fit.influence or {}).items()}
    out = {"estimated_noise_rate": float(counted.mean()), "per_class_noise_rate": per_class,
           "verdict_influence": influence if fit.influence is not None else None,
           "max_verdict_id": max_verdict, "best_step": fit.best_step, "backbone": backbone.source,
           "backbone_arch": backbone.arch, "backbone_kind": backbone.kind, "image_size": backbone.image_size,
           "n_train": int(len(split.train)), "n_val": int(len(split.val)), "note": fit.note,
           "noise_rate_kind": "expected" if expected else "flagged", "audit_check": audit_check(score[split.val],
                                                                                             split.val_correct,
                                                                                             fit.delta)}
    if len(split.val):
        out["audit"] = detection_report(score[split.val], split.val_correct, fit.delta)
    if judged is not None:
        out["expected_wrong_left"] = float(wrong[unjudged].sum())
    return out


def audit_check(score: np.ndarray, correct: np.ndarray, delta: float) -> dict:
    """The flags on held-out audit verdicts (random draws no model trained on) against flagging nothing: n, both
    error counts, and `loses` (the flags made more errors). score (V,), correct (V,) bool."""
    flag = np.asarray(score) < delta
    wrong = ~np.asarray(correct, bool)
    errors, nothing = int((flag != wrong).sum()), int(wrong.sum())
    return {"n": int(len(wrong)), "errors": errors, "flag_nothing_errors": nothing, "loses": errors > nothing}


def _current_scores(store: Store, data: Data) -> np.ndarray:
    by_id = store.current_scores()
    return np.array([by_id.get(int(i), 1.0) for i in data.ids], dtype=np.float32)


def warm_state(current: dict | None) -> dict | None:
    """The current model's checkpoint, for the next fit to continue from (a CleanNet to warm-start, a probe to
    reuse when nothing it depends on changed); None when it cannot be read."""
    if not current or not current.get("checkpoint"):
        return None
    try:
        return load_scorer(current["checkpoint"])
    except (OSError, EOFError, TypeError, ValueError, RuntimeError, pickle.UnpicklingError) as e:
        log.warning("not continuing from %s (%s): the round fits from scratch", current["checkpoint"], e)
        return None

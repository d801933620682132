"""The adapted round: the backbone fine-tuned on the data itself, cross-fitted, kept only when it is better.

After the frozen first model serves, the worker may adapt the features (cleannet_core.adapt): K networks (the
round setting adapt_layers: "tail", Lite0's last blocks on the frozen ImageNet prefix's maps, or "full", whole
networks from the image files) are fine-tuned from the ImageNet weights on the noisy labels, with the verdicts
applied (a corrected label replaces the noisy one; CleanNet's soft weights from the current scores down-weight
suspected noise; a "wrong" verdict without a correction weighs 0), each scoring only the images it did not train
on. Their out-of-fold probabilities, mixed with the frozen probe's (`robust.mix_probs`: a quarter the probe's),
feed the noise model and the robust score; in_domain (an image of no class) is read from the probe's alone, since
networks trained to put every image in some class lose it.

The adapted model becomes current only when (`decide`) its networks put the filed label first on at least as many
images they did not train on as the current model does on images its probe did not train on (a training that
went astray shows there with no verdict needed), and it makes no more errors than the current model on at least
GUARD_MIN held-out audit verdicts (random draws no model trained on). A tie there is usual (a first session has
about ten, mostly "correct") and goes to the adapted model: its agreement is measured on thousands of images,
while the held-out log-loss of a dozen verdicts, as a tie-break, refused tails that were far better on the
robustness suite (benchmarks/README.md, "Adapting only the last blocks"). Otherwise the frozen model keeps serving
and the outcome says why. Later rounds refit the robust score on the same networks' probabilities (new images get
the networks' mean), so the adaptation is not lost when verdicts arrive.
"""
from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from cleannet_core import scoring
from cleannet_core.adapt import AdaptConfig, CrossFit, TailConfig, cross_fit, cross_fit_maps, path_maps
from cleannet_core.alternate import round_weights, training_weights
from cleannet_core.classifier import resolve_device
from cleannet_core.efficientnet import lite_prefix_shape
from cleannet_core.features import load_imagenet_weights

from .artifacts import (BackboneInfo, current_backbone, imagenet_network, save_adapted_artifact,
                        save_scorer_artifact)
from .backbone import load_data
from .pipeline import (conflict_weight, current_probs, features, judged_wrong, probe_key, round_metrics, verdict_split,
                       warm_state)
from .publish import publish_scores, with_conflicts
from .round_config import RoundConfig
from .round_types import Data, Report, RoundInputs, VerdictSplit, quiet
from .store import Store

log = logging.getLogger(__name__)
SETTING = "adapt"          # the last attempt: key, outcome, message, audit figures
GUARD_MIN = 10             # held-out audit verdicts the comparison needs
FOLDS = 2
CPU_IMAGES_PER_S = 7.0     # Lite0 training images per second on a 2-core CPU at 128 px, scaled by (128 / size)^2
                           # (measured with other jobs sharing the cores, so the estimate errs long;
                           # benchmarks/README.md, "Adapted features")
TAIL_MAPS_MAX_GB = 8.0     # tail: the most memory its maps may take (20 KB an image at 128 px, 61 KB at 224)
TAIL_MAPS_S = 0.035        # tail: seconds per image for the frozen prefix's maps of it and its mirror, and
TAIL_TRAIN_S = 0.03        # seconds per image and epoch for the K tails' training and prediction; both on the
                           # 2-core CPU at 128 px, scaled by (size / 128)^2 (benchmarks/head_adapt.py on
                           # dev-structured-30, 3,000 images: maps 84-120 s, the whole round about 5 min;
                           # benchmarks/README.md, "Adapting only the last blocks")
MEASURED_THREADS = 2       # the torch threads those rates were measured with


@dataclass(frozen=True)
class Outcome:
    version: int | None   # the new current model, None when the current one keeps serving
    message: str
    scores: np.ndarray    # (N,) the adapted model's P(label correct), in load_data's order, served or not


def adapt_folds(image_ids: np.ndarray, k: int = FOLDS) -> np.ndarray:
    """(N,) fold of each image by a multiplicative hash of its id (the hash's high bits: its low bits repeat the
    id's), stable and balanced whatever the ids' pattern."""
    h = (np.asarray(image_ids, np.uint64) * np.uint64(2654435761)) % np.uint64(2 ** 32)
    return ((h >> np.uint64(16)) % np.uint64(k)).astype(np.int64)


def data_key(data: Data) -> str:
    """What an adapted round depends on besides the verdicts: the images and their labels."""
    h = hashlib.blake2b(digest_size=12)
    for part in (data.ids.tobytes(), data.labels.tobytes(), data.class_ids.tobytes()):
        h.update(part)
    return h.hexdigest()


def layers(cfg: RoundConfig, device: torch.device) -> str:
    """Which layers the round adapts on device: "tail" (the setting adapt_layers tail, or auto on a CPU; on
    efficientnet_lite0 only: the tail split exists for Lite0) or "full" (whole networks)."""
    tail = cfg.adapt_layers == "tail" or (cfg.adapt_layers == "auto" and device.type == "cpu")
    return "tail" if tail and cfg.arch == "efficientnet_lite0" else "full"


def tail_maps_bytes(n_images: int, *, image_size: int, cut: int = TailConfig().cut) -> int:
    """Bytes of the float16 maps a tail round holds in memory: n images x 2 views x the prefix's output at cut."""
    return n_images * 2 * math.prod(lite_prefix_shape(cut, image_size)) * 2


def estimate_s(n_images: int, cfg: RoundConfig, *, image_size: int, device: torch.device,
               threads: int | None = None) -> float | None:
    """Seconds an adapted round takes on a CPU with `threads` torch threads (default: this process's; the worker
    leaves a core to the app); None on a GPU (not estimated: it runs). full: K networks, each adapt_epochs x
    (K-1)/K of the images, plus one prediction pass; tail: the maps once, then TailConfig's epochs. The rates were
    measured with MEASURED_THREADS threads: fewer take proportionally longer, more are not counted faster."""
    if device.type != "cpu":
        return None
    threads = torch.get_num_threads() if threads is None else threads
    slower = MEASURED_THREADS / max(1, min(threads, MEASURED_THREADS))
    if layers(cfg, device) == "tail":
        return slower * n_images * (TAIL_MAPS_S + TailConfig().epochs * TAIL_TRAIN_S) * (image_size / 128) ** 2
    per_s = CPU_IMAGES_PER_S * (128 / image_size) ** 2
    return slower * n_images * (cfg.adapt_epochs * (FOLDS - 1) + 0.3) / per_s


def due(store: Store, cfg: RoundConfig) -> tuple[bool, str]:
    """Whether the worker should run an adapted round now, and why (not)."""
    if cfg.adapt == "off":
        return False, "adapted features are off (round setting adapt)"
    if cfg.method != "robust":
        return False, f"adapted features need the robust method (the round setting is {cfg.method})"
    if store.current_model() is None:
        return False, "the frozen first model serves first"
    # the device and the budget first: they need no image rows (load_data reads all of them)
    backbone = current_backbone(store)
    size = backbone.image_size if backbone else 128
    est = estimate_s(store.images_count(status="ok"), cfg, image_size=size, device=resolve_device(cfg.device))
    if est is not None and cfg.adapt == "auto" and est > 60 * cfg.adapt_budget_min:
        return False, (f"an adapted round would take about {est / 60:.0f} min on this CPU, over the "
                       f"{cfg.adapt_budget_min:g} min budget (round setting adapt_budget_min; a GPU runs it "
                       "whatever the size, and adapt on runs it on this CPU anyway)")
    data = load_data(store)
    last = store.get_setting(SETTING) or {}
    n_val = len(verdict_split(store, data).val)
    if n_val < GUARD_MIN:
        return False, f"waiting for {GUARD_MIN} held-out audit verdicts to check an adapted model ({n_val} so far)"
    if last.get("key") == data_key(data) and n_val < 2 * last.get("n_val", 0):
        return False, f"last adapted round: {last.get('message', '')}"
    return True, "due"


def record_failure(store: Store, error: str) -> None:
    """Record a failed adapted round like a rejected one, so the worker does not retry it until the images,
    their labels or the held-out verdicts change."""
    data = load_data(store)
    store.set_setting(SETTING, {"key": data_key(data), "at": time.time(), "better": False,
                                "n_val": int(len(verdict_split(store, data).val)),
                                "message": f"the adapted round failed ({error}): the current model keeps serving"})


def targets(store: Store, data: Data, *, verdicts: list[dict] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(labels (N,), weights (N,)) the networks learn: noisy labels with corrections applied; w_soft from the
    current scores, 1 for a verdict that keeps or corrects the label, 0 for "wrong" without a correction.
    Transfer-check verdicts are left out (verdict_split leaves them out too): they measure, never train.
    `verdicts`: the live verdicts (``Store.live_verdicts()``, the round's snapshot); None: read now."""
    by_id = store.current_scores()
    score = np.array([by_id.get(int(i), 1.0) for i in data.ids], np.float32)
    current = store.current_model()
    verdicts = store.live_verdicts() if verdicts is None else verdicts
    rows, ok = verdict_split(store, data, verdicts=verdicts).every()
    w = round_weights(score, current["delta"], "soft", verified_idx=rows, verified_ok=ok)
    labels = data.labels.copy()
    pos = {int(c): k for k, c in enumerate(data.class_ids)}
    where = {int(i): k for k, i in enumerate(data.ids)}
    for v in verdicts:  # transfer-check verdicts measure the model and never train it
        if v["verdict"] == "wrong" and v["corrected_label_id"] is not None and v["image_id"] in where and (
                v["reason"] != "transfer_check"):
            labels[where[v["image_id"]]] = pos[v["corrected_label_id"]]
            w[where[v["image_id"]]] = 1.0
    return labels, training_weights(w, "mean")


def run_adapt_round(store: Store, cfg: RoundConfig = RoundConfig(), *, report: Report = quiet,
                    config: AdaptConfig | TailConfig | None = None) -> Outcome:
    """Fine-tune, cross-fitted; fit the robust score on the out-of-fold probabilities; publish only if it beats
    the current model on the held-out audit verdicts. The outcome is stored under the setting SETTING.
    config: TailConfig when layers(cfg, device) is "tail", AdaptConfig when "full"; None = the defaults."""
    current = store.current_model()
    if current is None:
        raise ValueError("no model yet: the frozen first model serves first (run `train`)")
    data = load_data(store)
    backbone = current_backbone(store)
    if backbone is None:
        raise ValueError("no backbone yet: the frozen first model serves first (run `train`)")
    size = backbone.image_size
    device = resolve_device(cfg.device)
    # One snapshot of the verdicts, read with the watermark: the networks and the score learn these, the conflicts
    # and metrics use them; one given during the fine-tuning counts as new for the next round.
    max_verdict = store.max_verdict_id()
    verdicts = store.live_verdicts()
    split = verdict_split(store, data, verdicts=verdicts)
    labels, weights = targets(store, data, verdicts=verdicts)
    folds = adapt_folds(data.ids, config.folds if isinstance(config, AdaptConfig) else FOLDS)
    fit, config, saved = _cross_fit(data, labels, weights, folds, cfg, config=config, image_size=size,
                                    device=device, report=report)
    probs = _fill_unreadable(fit)
    report("training", 0.0, f"robust score on the adapted probabilities and {len(split.train)} verdicts")
    fitted = score_probs(store, data, probs, readable=fit.readable, split=split, cfg=cfg, verdicts=verdicts,
                         device=device)
    report("training", 1.0, fitted.note)
    verdict = guard(store, data, split, fitted, probs, readable=fit.readable, cfg=cfg, device=device)
    message = verdict.pop("message")
    record = {"key": data_key(data), "at": time.time(), "n_val": int(len(split.val)), **verdict}
    if not verdict["better"]:
        record["message"] = message
        store.set_setting(SETTING, record)
        report("training", 1.0, record["message"])
        return Outcome(None, record["message"], fitted.scores.score)
    adapted = save_adapted_artifact(store, fit, probs, ids=data.ids, class_ids=data.class_ids.tolist(),
                                    arch=cfg.arch, image_size=size, config=config.state(),
                                    backbone_id=backbone.id, **saved)
    version = publish_adapted(store, data, fitted, adapted, backbone=backbone, split=split, report=report,
                              max_verdict=max_verdict, verdicts=verdicts)
    record["message"] = f"adapted model version {version} is current: {message}"
    store.set_setting(SETTING, record)
    return Outcome(version, record["message"], fitted.scores.score)


def _cross_fit(data: Data, labels: np.ndarray, weights: np.ndarray, folds: np.ndarray, cfg: RoundConfig, *,
               config: AdaptConfig | TailConfig | None, image_size: int, device: torch.device,
               report: Report) -> tuple[CrossFit, AdaptConfig | TailConfig, dict]:
    """The K cross-fitted networks of layers(cfg, device) on labels (N,), weights (N,), folds (N,) -> (the fit, its
    config, save_adapted_artifact's layer arguments). Raises ValueError when a tail round's maps would not fit
    TAIL_MAPS_MAX_GB."""
    n, k = len(data.ids), int(folds.max(initial=0)) + 1
    if layers(cfg, device) == "tail":
        config = config or TailConfig()
        if not isinstance(config, TailConfig):
            raise ValueError(f"adapt_layers tail takes a TailConfig, got {type(config).__name__}")
        need = tail_maps_bytes(n, image_size=image_size, cut=config.cut) / 2**30
        if need > TAIL_MAPS_MAX_GB:
            raise ValueError(f"a tail round over {n} images at {image_size} px would hold {need:.1f} GB of maps "
                             f"(more than {TAIL_MAPS_MAX_GB:g} GB): set adapt_layers full")
        prefix = imagenet_network(cfg.arch, weights_path=cfg.weights_path)
        report("backbone", 0.0, f"adapting the last blocks: the frozen network up to block {config.cut} on "
                                f"{n} images and their mirrors")
        share = TAIL_MAPS_S / (TAIL_MAPS_S + config.epochs * TAIL_TRAIN_S)  # of the round's time, by the estimate
        maps, readable = path_maps(prefix, data.paths, cut=config.cut, arch=cfg.arch, image_size=image_size,
                                   device=str(device), progress=lambda frac, msg: report("backbone", share * frac, msg))
        report("backbone", share, f"training {k} tails on the maps")
        fit = cross_fit_maps(maps, labels, folds, len(data.class_ids), backbone=prefix, weights=weights,
                             readable=readable, config=config, device=str(device),
                             progress=lambda frac, msg: report("backbone", share + (1 - share) * frac, msg))
        return fit, config, {"layers": "tail", "prefix": prefix, "weights_path": cfg.weights_path}
    config = config or AdaptConfig(folds=FOLDS, epochs=cfg.adapt_epochs)
    if not isinstance(config, AdaptConfig):
        raise ValueError(f"adapt_layers full takes an AdaptConfig, got {type(config).__name__}")
    state, message = load_imagenet_weights(cfg.arch, weights_path=cfg.weights_path)
    report("backbone", 0.0, f"adapting the features: {config.folds} networks fine-tuned on {n} images ({message})")
    fit = cross_fit(data.paths, labels, folds, len(data.class_ids), arch=cfg.arch, image_size=image_size,
                    init_state=state, weights=weights, config=config, device=str(device),
                    progress=lambda frac, msg: report("backbone", frac, msg))
    return fit, config, {"layers": "full"}


def score_probs(store: Store, data: Data, probs: np.ndarray, *, readable: np.ndarray, split: VerdictSplit,
                cfg: RoundConfig, verdicts: list[dict], device: torch.device) -> scoring.Fitted:
    """The robust score fitted on adapted networks' out-of-fold probabilities (N, C) read with the frozen probe's
    on the current backbone's cached features (the current model's probe when it fits them; ``Robust``), with
    split's verdicts (made from `verdicts`), label conflicts applied as a round applies them; higher = label more
    likely correct. readable (N,) bool: the images the networks could read."""
    backbone = current_backbone(store)
    feats, has_feats = features(store, data, None, backbone, cfg)
    data_in = scoring.RoundData(feats=feats, labels=data.labels, folds=scoring.folds_of(data.ids),
                                num_classes=len(data.class_ids), refs=np.zeros((len(data.class_ids), 1, 1)),
                                valid=np.ones(len(data.class_ids), bool), readable=readable & has_feats,
                                train_idx=split.train, train_ok=split.train_correct, val_idx=split.val,
                                val_ok=split.val_correct, probe_key=probe_key(data, has_feats, backbone), probs=probs)
    fitted = scoring.method("robust").fit(data_in, device=device, warm_start=warm_state(store.current_model()))
    return replace(fitted, scores=with_conflicts(store, data, fitted.scores,
                                                 weight=conflict_weight(cfg, fitted.state), verdicts=verdicts))


def _fill_unreadable(fit: CrossFit) -> np.ndarray:
    """Out-of-fold probabilities with unreadable images at the uniform distribution (no evidence either way)."""
    probs = fit.probs.copy()
    probs[~fit.readable] = 1.0 / probs.shape[1]
    return probs


def log_loss(p_correct: np.ndarray, ok: np.ndarray) -> float:
    """Mean log-loss of P(correct) (M,) against verdicts ok (M,) bool; 0 for none."""
    p = np.clip(np.asarray(p_correct, np.float64), 1e-6, 1 - 1e-6)
    return float(-(np.where(ok, np.log(p), np.log1p(-p))).mean()) if len(p) else 0.0


def compare(store: Store, data: Data, split: VerdictSplit, score: np.ndarray, delta: float) -> dict:
    """The new scores against the current model's on the held-out audit verdicts: errors at each model's own
    threshold and log-loss of P(correct). -> n, errors, current_errors, log_loss, current_log_loss."""
    current = store.current_model()
    by_id = store.current_scores()
    rows, ok = split.val, split.val_correct
    old = np.array([by_id.get(int(data.ids[r]), 1.0) for r in rows], np.float64)
    new = np.asarray(score, np.float64)[rows]
    return {"n": int(len(rows)), "errors": int(((new < delta) != ~ok).sum()),
            "current_errors": int(((old < current["delta"]) != ~ok).sum()),
            "log_loss": log_loss(new, ok), "current_log_loss": log_loss(old, ok)}


def guard(store: Store, data: Data, split: VerdictSplit, fitted: scoring.Fitted, probs: np.ndarray, *,
          readable: np.ndarray, cfg: RoundConfig, device: torch.device) -> dict:
    """The adapted model (its fitted score and out-of-fold probabilities probs (N, C)) against the current one:
    compare's held-out figures, agreement for both, and decide's better and message."""
    rows = np.flatnonzero(readable)
    current = current_probs(store, data, cfg, device=device)
    v = compare(store, data, split, fitted.scores.score, fitted.delta) | {
        "agreement": agreement(probs, data.labels, rows),
        "current_agreement": None if current is None else agreement(current, data.labels, rows)}
    better, message = decide(v)
    return v | {"better": better, "message": message}


def decide(v: dict) -> tuple[bool, str]:
    """Whether the adapted model replaces the current one, and why, from guard's figures v: agreement and
    current_agreement (None: the current model has no probabilities) and compare's held-out figures. A tie on the
    held-out errors goes to the adapted model when it agrees with the labels at least as often (thousands of
    images against a dozen verdicts); to the lower held-out log-loss when the current model has no probabilities."""
    keeps = "the current model keeps serving"
    if v["current_agreement"] is not None and v["agreement"] < v["current_agreement"]:
        return False, (f"the adapted networks put the filed label first on {v['agreement']:.1%} of the images they "
                       f"did not train on, the current model on {v['current_agreement']:.1%}: {keeps}")
    held = f"{v['errors']} errors on {v['n']} held-out audit verdicts, the current model {v['current_errors']}"
    if v["n"] < GUARD_MIN:
        return False, f"the adapted model made {held} (the comparison needs {GUARD_MIN}): {keeps}"
    if v["errors"] != v["current_errors"]:
        better = v["errors"] < v["current_errors"]
        return better, f"the adapted model made {held}" + ("" if better else f": {keeps}")
    if v["current_agreement"] is not None:
        return True, (f"the adapted model made {held}, and its networks put the filed label first on "
                      f"{v['agreement']:.1%} of the images they did not train on, the current model on "
                      f"{v['current_agreement']:.1%}")
    better = v["log_loss"] < v["current_log_loss"]
    return better, (f"the adapted model made {held}; log-loss {v['log_loss']:.3f} against "
                    f"{v['current_log_loss']:.3f}" + ("" if better else f": {keeps}"))


def agreement(probs: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> float:
    """Share of the images `rows` whose out-of-fold probabilities probs (N, C) rank their label (N,) first."""
    rows = np.asarray(rows, np.int64)
    return float((probs[rows].argmax(axis=1) == labels[rows]).mean()) if len(rows) else 0.0


def publish_adapted(store: Store, data: Data, fitted: scoring.Fitted, adapted: dict, *, backbone: BackboneInfo,
                    split: VerdictSplit, report: Report, max_verdict: int, verdicts: list[dict]) -> int:
    """Register the adapted scorer (its checkpoint refers to the networks' file) and make it current. `split` was
    made from `verdicts` (``Store.live_verdicts()``), read just after ``Store.max_verdict_id()`` gave `max_verdict`."""
    num_classes = len(data.class_ids)
    payload = fitted.state | {"delta": fitted.delta, "class_ids": data.class_ids.tolist(), "adapted": adapted,
                              "refs": torch.zeros(num_classes, 1, 1)}
    ckpt = save_scorer_artifact(store, payload, method="robust", backbone=backbone,
                                provenance={"max_verdict_id": max_verdict, "n_verdicts": split.n, "adapted": True})
    inputs = RoundInputs(data=data, feats=np.zeros((0, 0), np.float16), readable=np.ones(len(data.ids), bool),
                         refs=np.zeros((num_classes, 1, 1), np.float32), has_refs=np.ones(num_classes, bool),
                         split=split)
    metrics = round_metrics(inputs, fitted, backbone=backbone, max_verdict=max_verdict,
                            judged=judged_wrong(data, verdicts)) | {"method": "robust", "adapted": True}
    version = store.add_model(delta=fitted.delta, metrics=metrics, checkpoint=str(ckpt),
                              backbone=f"adapted from {backbone.source}", n_verdicts=split.n)
    publish_scores(store, version, data, fitted.scores, fitted.delta, report, calibrated=True, verdicts=verdicts)
    return version

"""Training the image classifier with CleanNet's weights, alternating the two (docs/cleannet-spec.md §6).

    round 0:      classifier C0 on the noisy labels (or a given one)
    round r >= 1: features of C(r-1) -> K-means references -> CleanNet (verdicts) -> score s of every image
                  -> weights w(r) -> classifier C(r) on the noisy labels weighted by w(r)

`rounds` counts the extra alternations after the paper's single pass (rounds=0: C0 -> CleanNet -> C1, the
pipeline of spec §6 steps 1-6; rounds=1, the default: one more feature/CleanNet/classifier pass, as the
NoiseRank rerun did). The human verdicts stay the same in every round; only the features change.
`method` picks the score, any method of cleannet_core.registry fitted through cleannet_core.scoring: 'robust'
(default, as in the product: P(label correct) with delta 0.5), 'transfer', or 'paper' (the spec's CleanNet
relevance and its delta, trained with `cleannet`).

Weights (spec §6): 'soft' w = max(0, s), 'hard' w = 1[s >= delta] (method paper: delta chosen by CleanNet on
the validation verdicts). Images with a human verdict get 1 (correct) or 0 (wrong) instead (`use_verdicts`),
unreadable images 0. The classifier loss per batch is (1/N) sum_i w'_i CE_i (classifier.weighted_cross_entropy)
with w' = w / mean(w) over the training set when normalize='mean' (default: the same average loss scale, hence
effective learning rate, as the unweighted baseline; in expectation this normalises by sum(w) instead of N)
or w' = w when normalize='batch' (the literal (1/N) sum w_i CE_i of the spec).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .classifier import Backbone, ClassifierConfig, predict, resolve_device, train_classifier
from .features import backbone_id, extract_features
from .probe import ProbeConfig
from .references import KMeansConfig, build_references
from .score import hard_weights, soft_weights
from .registry import DEFAULT, spec
from .scoring import RoundData, method
from .train import TrainConfig

log = logging.getLogger(__name__)
WEIGHT_MODES = ("soft", "hard")
NORMALIZE_MODES = ("mean", "batch")


@dataclass
class AlternateConfig:
    rounds: int = 1                  # extra alternations after the first weighted classifier (0 = single pass)
    method: str = DEFAULT            # a cleannet_core.registry method: robust | transfer | paper
    weights: str = "soft"            # "soft": max(0, s) | "hard": 1[s >= delta]
    normalize: str = "mean"          # "mean": w / mean(w) | "batch": raw w (see the module docstring)
    use_verdicts: bool = True        # verified images get weight 1 (correct) / 0 (wrong) instead of their score
    warm_start: bool = False         # start each weighted classifier from the previous one (else from init_state)
    num_ref: int = 32                # K references per class
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    cleannet: TrainConfig = field(default_factory=TrainConfig)
    device: str = "auto"
    checkpoint_dir: str | Path | None = None  # per-epoch classifier checkpoints (resume / reuse finished rounds)
    cache_dir: str | Path | None = None       # content-keyed feature cache (features.extract_features)


@dataclass
class RoundResult:
    round: int                # 1-based
    score: np.ndarray         # (N,) float32 score of each image's noisy label (relevance, or P(correct))
    delta: float              # threshold: score < delta = label noise
    weights: np.ndarray       # (N,) float32 w_soft / w_hard after verdict overrides, before normalisation
    val_accuracy: float | None  # CleanNet verification accuracy on the validation verdicts at delta


@dataclass
class AlternateResult:
    model: Backbone                     # the final classifier, eval mode
    rounds: list[RoundResult]           # one per CleanNet pass (rounds + 1 of them)
    history: list[dict] = field(default_factory=list)  # one dict per phase: round, phase, seconds, ...


def round_weights(score: np.ndarray, delta: float, mode: str, *, verified_idx: np.ndarray | None = None,
                  verified_ok: np.ndarray | None = None, readable: np.ndarray | None = None) -> np.ndarray:
    """(N,) float32 weights from scores: w_soft = max(0, s) or w_hard = 1[s >= delta]; then verified images
    (verified_idx (M,), verified_ok (M,) bool: the label is correct) get 1.0 / 0.0 and images not
    `readable` (N,) bool get 0.0."""
    if mode == "soft":
        w = soft_weights(score)
    elif mode == "hard":
        w = hard_weights(score, delta)
    else:
        raise ValueError(f"weight mode must be one of {WEIGHT_MODES}, got {mode!r}")
    w = w.copy()
    if verified_idx is not None and len(verified_idx):
        w[np.asarray(verified_idx, np.int64)] = np.asarray(verified_ok, bool).astype(np.float32)
    if readable is not None:
        w[~np.asarray(readable, bool)] = 0.0
    return w


def training_weights(w: np.ndarray, normalize: str) -> np.ndarray:
    """Weights handed to train_classifier: w / mean(w) ('mean') or w unchanged ('batch'). (N,) float32."""
    w = np.asarray(w, np.float32)
    if normalize == "batch":
        return w
    if normalize != "mean":
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    mean = float(w.mean()) if w.size else 0.0
    if mean <= 0:
        raise ValueError("every weight is 0: CleanNet rejected all images, nothing to train on")
    return (w / mean).astype(np.float32)


def train_alternating(paths: Sequence[str | Path], labels: np.ndarray, num_classes: int, *,
                      verified_idx: np.ndarray, verified_ok: np.ndarray,
                      val_idx: np.ndarray | None = None, val_ok: np.ndarray | None = None,
                      config: AlternateConfig = AlternateConfig(), init_model: Backbone | None = None,
                      init_state: dict | None = None, progress: bool = True,
                      report: Callable[[str], None] | None = None) -> AlternateResult:
    """Alternate classifier and CleanNet training; returns the final classifier and every round's weights.

    paths (N,), labels (N,) noisy class ids in [0, num_classes). verified_idx/verified_ok: CleanNet's training
    verdicts (indices into paths, True = label correct); val_idx/val_ok: validation verdicts (choose delta and the
    CleanNet checkpoint). init_model: an already trained round-0 classifier (skips training C0). init_state:
    e.g. ImageNet weights every classifier trained from scratch starts from. report(message): phase messages.
    """
    cfg = config
    _check(cfg)
    paths = [str(p) for p in paths]
    labels = np.asarray(labels, np.int64)
    verified_idx = np.asarray(verified_idx, np.int64)
    verified_ok = np.asarray(verified_ok, bool)
    val_idx = np.zeros(0, np.int64) if val_idx is None else np.asarray(val_idx, np.int64)
    val_ok = np.zeros(0, bool) if val_ok is None else np.asarray(val_ok, bool)
    say = report or (lambda msg: None)
    dev = resolve_device(cfg.device)
    ccfg = cfg.classifier
    history: list[dict] = []

    def ckpt(r: int) -> Path | None:
        return None if cfg.checkpoint_dir is None else Path(cfg.checkpoint_dir) / f"classifier-round{r}.pt"

    def fit(r: int, weights: np.ndarray | None, start: Backbone | None) -> Backbone:
        t = time.perf_counter()
        kind = "noisy labels" if weights is None else f"{cfg.weights} weights"
        say(f"round {r}: training the {ccfg.arch} classifier on {len(paths)} images ({kind}, {ccfg.epochs} epochs)")
        epochs: list[dict] = []
        model = train_classifier(paths, labels, num_classes, sample_weights=weights, config=ccfg,
                                 init_state=start.state_dict() if start is not None else init_state,
                                 device=str(dev), progress=progress, checkpoint=ckpt(r),
                                 on_epoch=lambda e, m, stats: epochs.append(stats))
        history.append({"round": r, "phase": "classifier", "seconds": round(time.perf_counter() - t, 2),
                        "epochs": epochs})
        return model

    model = init_model if init_model is not None else fit(0, None, None)
    results: list[RoundResult] = []
    for r in range(1, cfg.rounds + 2):
        t = time.perf_counter()
        what = f"CleanNet ({cfg.cleannet.steps} steps" if cfg.method == "paper" else f"the {cfg.method} score ("
        say(f"round {r}: features, references and {what}, {len(verified_idx)} + {len(val_idx)} verdicts)")
        res, best_step = _score_round(r, model, paths, labels, num_classes, verified=(verified_idx, verified_ok),
                                      val=(val_idx, val_ok), cfg=cfg, device=dev, progress=progress)
        results.append(res)
        history.append({"round": r, "phase": "cleannet", "seconds": round(time.perf_counter() - t, 2),
                        "delta": res.delta, "val_accuracy": res.val_accuracy, "best_step": best_step,
                        "mean_weight": float(res.weights.mean()), "flagged": float((res.score < res.delta).mean())})
        log.info("round %d: delta %.4f, val acc %s, mean weight %.3f", r, res.delta, res.val_accuracy,
                 res.weights.mean())
        model = fit(r, training_weights(res.weights, cfg.normalize), model if cfg.warm_start else None)
    return AlternateResult(model=model, rounds=results, history=history)


def _check(cfg: AlternateConfig) -> None:
    """ValueError (UnknownMethod for the method) before any training when a setting is not one there is."""
    if cfg.weights not in WEIGHT_MODES:
        raise ValueError(f"weights must be one of {WEIGHT_MODES}, got {cfg.weights!r}")
    spec(cfg.method)
    if cfg.normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {cfg.normalize!r}")
    if cfg.rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {cfg.rounds}")


def _score_round(r: int, model: Backbone, paths: list[str], labels: np.ndarray, num_classes: int, *,
                 verified: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 cfg: AlternateConfig, device: torch.device, progress: bool) -> tuple[RoundResult, int]:
    """Round r's CleanNet pass: the features of `model`, K-means references, the score fitted on the `verified`
    (indices, label correct) verdicts and validated on `val`, and the weights; with the method's best step."""
    verified_idx, verified_ok = verified
    val_idx, val_ok = val
    feats, readable = _features(model, paths, cfg, progress)
    refs, counts = build_references(feats[readable], labels[readable], num_classes,
                                    config=KMeansConfig(k=cfg.num_ref, seed=cfg.cleannet.seed), device=device)
    data = RoundData(feats=feats, labels=labels, folds=np.arange(len(labels)) % ProbeConfig.folds,
                     num_classes=num_classes, refs=refs, valid=counts > 0, readable=readable,
                     train_idx=verified_idx, train_ok=verified_ok, val_idx=val_idx, val_ok=val_ok)
    fitted = method(cfg.method).fit(data, device=device, cleannet=cfg.cleannet)
    score, delta = fitted.scores.score, fitted.delta
    val_acc = float(((score[val_idx] >= delta) == val_ok).mean()) if len(val_idx) else None
    w = round_weights(score, delta, cfg.weights, verified_idx=verified_idx if cfg.use_verdicts else None,
                      verified_ok=verified_ok, readable=readable)
    return RoundResult(round=r, score=score, delta=delta, weights=w, val_accuracy=val_acc), fitted.best_step


def _features(model: Backbone, paths: list[str], cfg: AlternateConfig, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) float32 pool features of `model` and (N,) bool readable, through the feature cache if configured."""
    c = cfg.classifier
    if cfg.cache_dir is not None:
        res = extract_features(model, paths, cache_dir=cfg.cache_dir, backbone_id=backbone_id(model),
                               image_size=c.image_size, num_workers=c.num_workers, device=cfg.device,
                               progress=progress)
        return res.features, res.readable
    feats, _, readable = predict(model, paths, image_size=c.image_size, num_workers=c.num_workers, device=cfg.device)
    return feats, readable


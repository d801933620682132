"""Adapted features: the backbone fine-tuned on the data's own noisy labels, cross-fitted.

A frozen ImageNet backbone caps what any probe on its features can separate (confusable classes filed as each
other, images of no class). Fine-tuning on the noisy labels adapts the features, but a network scores the labels
it trained on as correct (it memorises them). Cross-fitting keeps every image's probabilities out-of-fold:

    folds (N,) in [0, K)    network k is fine-tuned on the images outside fold k (labels with the verdicts
                            applied, per-image weights) and predicts P(noisy label | x) for the images in fold k

The out-of-fold probabilities (N, C) replace the linear probe's in the noise model and the robust score
(robust.fit_robust_score). Images that arrive later, in no fold, get the mean of the K networks' probabilities.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from .classifier import Backbone, ClassifierConfig, is_small, predict, train_classifier

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class AdaptConfig:
    """How the cross-fitted networks train: each fine-tunes the ImageNet backbone for `epochs` on the images
    outside its fold, with label smoothing against memorising the noise."""
    folds: int = 2
    epochs: int = 6
    lr: float = 0.02
    label_smoothing: float = 0.1
    weight_decay: float = 5e-4

    def classifier(self, *, arch: str, image_size: int, n_train: int, device_batch: int = 128) -> ClassifierConfig:
        return ClassifierConfig(arch=arch, epochs=self.epochs, lr=self.lr, image_size=image_size,
                                batch_size=min(device_batch, max(8, n_train // 8)),
                                label_smoothing=self.label_smoothing, weight_decay=self.weight_decay)

    def state(self) -> dict:
        return asdict(self)


@dataclass
class CrossFit:
    """probs (N, C) float32 out-of-fold P(noisy label | x); readable (N,) bool; states: the K networks' weights."""
    probs: np.ndarray
    readable: np.ndarray
    states: list[dict]


def cross_fit(paths: Sequence[str | Path], labels: np.ndarray, folds: np.ndarray, num_classes: int, *,
              arch: str, image_size: int, init_state: dict | None, weights: np.ndarray | None = None,
              config: AdaptConfig = AdaptConfig(), device: str = "auto", seed: int = 0,
              progress: Progress | None = None) -> CrossFit:
    """Fine-tune config.folds networks from init_state (ImageNet weights; None = from scratch), network k on
    the images with folds != k, and predict the images with folds == k.

    labels (N,) the labels to learn (verdicts' corrections applied); weights (N,) >= 0 per-image loss weights
    (None = 1); progress(fraction, message) after every epoch and every fold's prediction."""
    labels, folds = np.asarray(labels, np.int64), np.asarray(folds, np.int64)
    paths = [str(p) for p in paths]
    weights = np.ones(len(labels), np.float32) if weights is None else np.asarray(weights, np.float32)
    k = config.folds
    if len(labels) != len(paths) or len(folds) != len(paths) or len(weights) != len(paths):
        raise ValueError(f"paths, labels, folds and weights must have one row per image: {len(paths)}, "
                         f"{len(labels)}, {len(folds)}, {len(weights)}")
    if folds.min(initial=0) < 0 or folds.max(initial=0) >= k:
        raise ValueError(f"folds must be in [0, {k})")
    probs = np.zeros((len(paths), num_classes), np.float32)
    readable = np.zeros(len(paths), bool)
    states: list[dict] = []
    report = progress or (lambda frac, message: None)
    for f in range(k):
        train, held = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        ccfg = replace(config.classifier(arch=arch, image_size=image_size, n_train=len(train)), seed=seed + f)

        def on_epoch(epoch: int, _model: Backbone, stats: dict, f: int = f) -> None:
            report((f + epoch / (ccfg.epochs + 1)) / k, f"network {f + 1}/{k}, epoch {epoch}/{ccfg.epochs}: train "
                                                        f"accuracy {stats['train_acc']:.3f} on the labels")

        model = train_classifier([paths[i] for i in train], labels[train], num_classes, sample_weights=weights[train],
                                 config=ccfg, init_state=init_state, device=device, progress=False,
                                 on_epoch=on_epoch)
        if len(held):
            _, p, ok = predict(model, [paths[i] for i in held], image_size=image_size, device=device)
            probs[held], readable[held] = p, ok
        states.append({n: t.detach().cpu().clone() for n, t in model.state_dict().items()})
        report((f + 1) / k, f"network {f + 1}/{k}: predicted its {len(held)} held-out images")
    return CrossFit(probs, readable, states)


def ensemble_probs(states: list[dict], paths: Sequence[str | Path], *, arch: str, num_classes: int,
                   image_size: int, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """(N, C) mean probabilities of the K networks for images in no fold, and (N,) readable."""
    total = np.zeros((len(paths), num_classes), np.float64)
    ok = np.ones(len(paths), bool)
    for state in states:
        model = Backbone(arch, num_classes, small_input=is_small(image_size))
        model.load_state_dict(state)
        _, p, readable = predict(model.eval(), paths, image_size=image_size, device=device)
        total += p
        ok &= readable
    return (total / max(len(states), 1)).astype(np.float32), ok


def held_out_probs(states: list[dict], paths: Sequence[str | Path], folds: np.ndarray, *, arch: str,
                   num_classes: int, image_size: int, device: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Rescoring: images with a fold (folds[i] in [0, K)) get their own held-out network's probabilities,
    images with folds[i] = -1 (new since the fit) the ensemble mean. -> probs (N, C), readable (N,)."""
    folds = np.asarray(folds, np.int64)
    probs = np.zeros((len(paths), num_classes), np.float32)
    ok = np.zeros(len(paths), bool)
    for f in range(-1, len(states)):
        rows = np.flatnonzero(folds == f)
        if not len(rows):
            continue
        sub = [paths[i] for i in rows]
        if f < 0:
            probs[rows], ok[rows] = ensemble_probs(states, sub, arch=arch, num_classes=num_classes,
                                                   image_size=image_size, device=device)
        else:
            model = Backbone(arch, num_classes, small_input=is_small(image_size))
            model.load_state_dict(states[f])
            _, probs[rows], ok[rows] = predict(model.eval(), sub, image_size=image_size, device=device)
    return probs, ok

"""Adapted features: the backbone fine-tuned on the data's own noisy labels, cross-fitted.

A frozen ImageNet backbone caps what any probe on its features can separate (confusable classes filed as each
other, images of no class). Fine-tuning on the noisy labels adapts the features, but a network scores the labels
it trained on as correct (it memorises them). Cross-fitting keeps every image's probabilities out-of-fold:

    folds (N,) in [0, K)    network k is fine-tuned on the images outside fold k (labels with the verdicts
                            applied, per-image weights) and predicts P(noisy label | x) for the images in fold k

The out-of-fold probabilities (N, C) replace the linear probe's in the noise model and the robust score
(robust.fit_robust_score). Images that arrive later, in no fold, get the mean of the K networks' probabilities.

`cross_fit` fine-tunes whole networks on the image files. `cross_fit_maps` adapts only Lite0's last blocks (a
`Tail`) on maps the frozen network computes once per image (`prefix_maps`): each epoch then costs a fraction of
a whole network's, so the round fits a CPU. `tail_probs` scores images with saved tails (the prefix recomputed by
the same frozen network).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from .classifier import (Backbone, ClassifierConfig, ImageDataset, is_small, make_transform, predict, resolve_device,
                         train_classifier)
from .efficientnet import lite_prefix, lite_suffix
from .probe import ProbeConfig, fit_probe

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


@dataclass(frozen=True)
class TailConfig:
    """How the cross-fitted tails train: Lite0's blocks[cut:] and head conv plus a linear head, SGD (Nesterov,
    cosine LR to 0 per step, BN kept at ImageNet statistics) for `epochs` on the maps of the images outside the
    fold. The head starts as the probe fitted on the frozen features (penalty head_penalty, kept while training).
    The values were chosen on the dev cases in benchmarks/head_adapt.py (cut 8 of 16: stage 5 onwards)."""
    cut: int = 8
    epochs: int = 2
    lr: float = 0.01
    label_smoothing: float = 0.1
    weight_decay: float = 5e-4    # SGD's L2 on the tail's convolutions and BN (not the linear head)
    batch_size: int = 64          # maps per step (each view of an image is its own row)
    head_penalty: float = 0.3     # l2 / 2 * |w|^2 on the linear head, as the probe's ProbeConfig.l2
    warmup: float = 0.0           # share of the steps over which the LR ramps up linearly from 0
    clip: float = 0.0             # the gradient's largest L2 norm per step (0: not clipped)

    def state(self) -> dict:
        return asdict(self)


class Tail(nn.Module):
    """Lite0 from block `cut` on, with the probe's head: forward_features (B, C_cut, H, W) maps (lite_prefix's
    output) -> (B, 1280) pooled features; forward_head -> (B, classes) logits = ((log1p(f) - mean) / std) @ w + b.
    _blocks.i is a copy of the backbone's _blocks.(cut + i); the backbone is left untouched."""

    def __init__(self, backbone: nn.Module, cut: int, num_classes: int):
        super().__init__()
        self._blocks = nn.ModuleList(copy.deepcopy(list(backbone._blocks)[cut:]))
        self._conv_head, self._bn1 = copy.deepcopy(backbone._conv_head), copy.deepcopy(backbone._bn1)
        d = backbone.num_features
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.w = nn.Parameter(torch.zeros(d, num_classes))
        self.b = nn.Parameter(torch.zeros(num_classes))

    def forward_features(self, h: torch.Tensor) -> torch.Tensor:
        return lite_suffix(self, h, 0)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        return ((torch.log1p(f) - self.mean) / self.std) @ self.w + self.b

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(h))


@torch.no_grad()
def prefix_maps(backbone: nn.Module, batches: Iterable[torch.Tensor], *, cut: int,
                device: str = "cpu") -> np.ndarray:
    """Batches (B, 3, S, S) of normalised images (classifier.make_transform's eval form) -> (N, 2, C, H, W)
    float16: the frozen backbone's input to _blocks[cut] (lite_prefix, eval mode), view 0 the image, view 1 its
    mirror (flipped left-right). The backbone is moved to device; its train/eval mode is restored."""
    dev = resolve_device(device)
    was_training = backbone.training
    backbone.to(dev).eval()
    out = []
    try:
        for x in batches:
            x = x.to(dev)
            x = torch.stack([x, x.flip(3)], 1).flatten(0, 1)             # (2B, 3, S, S): image, mirror, ...
            out.append(lite_prefix(backbone, x, cut).unflatten(0, (-1, 2)).half().cpu())
    finally:
        backbone.train(was_training)
    return torch.cat(out).numpy()


def path_maps(backbone: nn.Module, paths: Sequence[str | Path], *, cut: int, arch: str, image_size: int,
              batch_size: int = 100, num_workers: int = 0, device: str = "cpu",
              progress: Progress | None = None) -> tuple[np.ndarray, np.ndarray]:
    """prefix_maps of image files, read as classifier.ImageDataset reads them -> maps (N, 2, C, H, W) float16,
    readable (N,) bool (False: the file could not be read; its maps are a zero image's). progress(fraction,
    message) after every batch read."""
    ds = ImageDataset(paths, None, make_transform(image_size, train=False, arch=arch), image_size)
    readable: list[bool] = []

    def batches() -> Iterable[torch.Tensor]:
        for x, _, _, errs in DataLoader(ds, batch_size=batch_size, num_workers=num_workers):
            if progress and readable:  # the previous batch's maps are done
                progress(len(readable) / len(ds), f"maps of {len(readable)} of {len(ds)} images and their mirrors")
            readable.extend(not e for e in errs)
            yield x

    maps = prefix_maps(backbone, batches(), cut=cut, device=device)
    if progress:
        progress(1.0, f"maps of {len(ds)} images and their mirrors")
    return maps, np.array(readable, bool)


def _batched(model: nn.Module, x: np.ndarray, fn: str, dev: torch.device, bs: int = 512) -> torch.Tensor:
    """model.fn over rows of x (M, ...) float16, in eval-sized chunks, without gradients -> (M, ...) on dev."""
    with torch.no_grad():
        return torch.cat([getattr(model, fn)(torch.from_numpy(x[i:i + bs]).to(dev).float())
                          for i in range(0, len(x), bs)])


def _view_probs(tail: Tail, maps: np.ndarray, dev: torch.device) -> np.ndarray:
    """(M, C) float32 softmax of tail (eval mode) on maps (M, V, C, H, W), averaged over the V views."""
    views = maps.shape[1]
    return sum(_batched(tail, np.ascontiguousarray(maps[:, v]), "forward", dev).softmax(1).cpu().numpy() / views
               for v in range(views))


def _fit_tail(tail: Tail, x: np.ndarray, y: np.ndarray, w: np.ndarray, *, config: TailConfig, seed: int,
              dev: torch.device, on_epoch: Callable[[int, float], None]) -> None:
    """Train tail in place on maps x (M, C, H, W) float16, labels y (M,), weights w (M,) >= 0: the head from the
    probe fitted on the frozen features of the rows with w > 0, then SGD on all of it with BN in eval mode.
    on_epoch(epoch, train accuracy on the labels)."""
    tail.to(dev).eval()
    keep = w > 0
    feats = _batched(tail, x, "forward_features", dev)[torch.from_numpy(keep).to(dev)]
    p = fit_probe(feats.cpu().numpy(), y[keep], np.zeros(int(keep.sum()), np.int64), tail.b.shape[0],
                  config=ProbeConfig(folds=1, l2=config.head_penalty), device=dev)
    with torch.no_grad():
        tail.mean.copy_(p.mean[0]), tail.std.copy_(p.std[0]), tail.w.copy_(p.w[0]), tail.b.copy_(p.b[0])
    body = [p for n, p in tail.named_parameters() if n not in ("w", "b")]
    opt = torch.optim.SGD([{"params": [tail.w, tail.b], "weight_decay": 0.0}, {"params": body}], lr=config.lr,
                          momentum=0.9, nesterov=True, weight_decay=config.weight_decay)
    steps_per = math.ceil(len(x) / config.batch_size)
    total = max(config.epochs * steps_per, 1)
    ramp = config.warmup * total
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / ramp if ramp else 1.0)
                                              * 0.5 * (1 + math.cos(math.pi * s / total)))
    gen = torch.Generator().manual_seed(seed)
    y_t, w_t = torch.from_numpy(y).to(dev), torch.from_numpy(w.astype(np.float32)).to(dev)
    for epoch in range(config.epochs):
        order = torch.randperm(len(x), generator=gen)
        correct = 0
        for s in range(steps_per):
            idx = order[s * config.batch_size:(s + 1) * config.batch_size]
            logits = tail(torch.from_numpy(x[idx.numpy()]).to(dev).float())
            idx = idx.to(dev)
            yb = y_t[idx]
            ce = F.cross_entropy(logits, yb, reduction="none", label_smoothing=config.label_smoothing)
            loss = (w_t[idx] * ce).mean() + config.head_penalty / 2 * tail.w.square().sum()
            opt.zero_grad()
            loss.backward()
            if config.clip:
                nn.utils.clip_grad_norm_(tail.parameters(), config.clip)
            opt.step()
            sched.step()
            correct += int((logits.argmax(1) == yb).sum())
        on_epoch(epoch + 1, correct / max(len(x), 1))


def cross_fit_maps(maps: np.ndarray, labels: np.ndarray, folds: np.ndarray, num_classes: int, *,
                   backbone: nn.Module, weights: np.ndarray | None = None, readable: np.ndarray | None = None,
                   config: TailConfig = TailConfig(), device: str = "auto", seed: int = 0,
                   progress: Progress | None = None) -> CrossFit:
    """K = folds.max() + 1 cross-fitted Tails of the ImageNet Lite0 `backbone` (left untouched): tail k trains on
    the maps of the images with folds != k (every view a row) and predicts the images with folds == k (mean of
    the views' softmax).

    maps (N, V, C, H, W) float16 from prefix_maps at config.cut; labels (N,) the labels to learn; weights (N,)
    >= 0 per-image loss weights (None = 1); readable (N,) bool (None = all): unreadable images are left out of
    training and get zero probabilities. -> CrossFit: probs (N, C) out-of-fold P(noisy label | x), higher =
    the label more likely; states: the K tails' state_dicts. progress(fraction, message) after every epoch and
    every fold's prediction."""
    labels, folds = np.asarray(labels, np.int64), np.asarray(folds, np.int64)
    n, views = maps.shape[:2]
    weights = np.ones(n, np.float32) if weights is None else np.asarray(weights, np.float32)
    readable = np.ones(n, bool) if readable is None else np.asarray(readable, bool)
    if not len(labels) == len(folds) == len(weights) == len(readable) == n:
        raise ValueError(f"maps, labels, folds, weights and readable must have one row per image: {n}, "
                         f"{len(labels)}, {len(folds)}, {len(weights)}, {len(readable)}")
    if n == 0:
        raise ValueError("cross_fit_maps needs at least one image")
    if folds.min() < 0:
        raise ValueError(f"folds must be >= 0: {int((folds < 0).sum())} of {n} images have a negative fold")
    k, dev = int(folds.max()) + 1, resolve_device(device)
    report = progress or (lambda frac, message: None)
    probs = np.zeros((n, num_classes), np.float32)
    states: list[dict] = []
    for f in range(k):
        train, held = np.flatnonzero((folds != f) & readable), np.flatnonzero((folds == f) & readable)
        if not len(train):
            raise ValueError(f"tail {f + 1}/{k} has no readable image outside its fold to train on ({n} images)")
        tail = Tail(backbone, config.cut, num_classes)

        def on_epoch(epoch: int, acc: float, f: int = f) -> None:
            report((f + epoch / (config.epochs + 1)) / k, f"tail {f + 1}/{k}, epoch {epoch}/{config.epochs}: train "
                                                          f"accuracy {acc:.3f} on the labels")

        _fit_tail(tail, maps[train].reshape(-1, *maps.shape[2:]), np.repeat(labels[train], views),
                  np.repeat(weights[train], views), config=config, seed=seed + f, dev=dev, on_epoch=on_epoch)
        if len(held):
            probs[held] = _view_probs(tail.eval(), maps[held], dev)
        states.append({name: t.detach().cpu().clone() for name, t in tail.state_dict().items()})
        report((f + 1) / k, f"tail {f + 1}/{k}: predicted its {len(held)} held-out images")
    return CrossFit(probs, readable.copy(), states)


def tail_probs(states: list[dict], paths: Sequence[str | Path], folds: np.ndarray, *, backbone: nn.Module,
               cut: int, arch: str, num_classes: int, image_size: int,
               device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Rescoring with the K tails of cross_fit_maps on top of the frozen `backbone`'s prefix (path_maps at `cut`):
    images with a fold (folds[i] in [0, K)) get their own held-out tail's probabilities, images with folds[i] = -1
    (new since the fit) the tails' mean; each tail averages the image's two views as in the fit.
    -> probs (N, C) P(label | x), readable (N,) (unreadable rows are zero)."""
    folds = np.asarray(folds, np.int64)
    if len(folds) != len(paths):
        raise ValueError(f"paths and folds must have one row per image: {len(paths)}, {len(folds)}")
    probs = np.zeros((len(paths), num_classes), np.float32)
    if not len(paths):
        return probs, np.ones(0, bool)
    dev = resolve_device(device)
    maps, readable = path_maps(backbone, paths, cut=cut, arch=arch, image_size=image_size, device=str(dev))
    for f, state in enumerate(states):
        rows = np.flatnonzero(((folds == f) | (folds < 0)) & readable)
        if not len(rows):
            continue
        tail = Tail(backbone, cut, num_classes)
        tail.load_state_dict(state)
        tail.to(dev).eval()
        share = np.where(folds[rows] < 0, 1.0 / len(states), 1.0).astype(np.float32)[:, None]
        probs[rows] += share * _view_probs(tail, maps[rows], dev)
    return probs, readable

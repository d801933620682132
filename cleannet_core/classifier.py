"""Image classifier / feature backbone: a torchvision ResNet or EfficientNet-Lite0, trained with per-sample weights.

Plays two roles in the pipeline (docs/cleannet-spec.md): the classifier trained on noisy labels whose pool5
vectors are CleanNet's input features (§1), and the classifier retrained with CleanNet weights w_soft / w_hard (§6).
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.models import resnet18, resnet50
from tqdm import tqdm

from . import efficientnet
from .atomic import atomic_write
from .safe_open import FileRefused, read_image

log = logging.getLogger(__name__)

ARCHS = {"resnet50": resnet50, "resnet18": resnet18}
LITE_ARCHS = ("efficientnet_lite0",)  # ImageNet-pretrained, shipped offline by a registry package
ALL_ARCHS = (*LITE_ARCHS, *ARCHS)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_INPUT_MAX = 64  # images up to this size (e.g. CIFAR 32x32) get the small-input stem
CHECKPOINT_FORMAT = 1


def resolve_device(device: str) -> torch.device:
    """'auto' -> cuda if available else cpu; anything else is passed to torch.device."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Backbone(nn.Module):
    """torchvision ResNet or EfficientNet-Lite0 with split feature / head calls. State-dict keys match
    torchvision's (ResNet) or the weights package's (Lite0)."""

    def __init__(self, arch: str = "resnet18", num_classes: int = 1000, *, small_input: bool = False):
        super().__init__()
        if arch not in ALL_ARCHS:
            raise ValueError(f"arch must be one of {ALL_ARCHS}, got {arch!r}")
        self.lite = arch in LITE_ARCHS
        if self.lite:
            net = efficientnet.EfficientNetLite(num_classes)  # pretrained features: no small-input stem
            small_input = False
        else:
            net = ARCHS[arch](weights=None, num_classes=num_classes)
            if small_input:
                # 3x3 stride-1 stem for <=64 px images. The max-pool is kept on purpose: resnet18 trains at
                # ~340 img/s on a 2-core CPU with it vs ~67 img/s without (4x larger feature maps everywhere).
                net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
                nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        for name, module in net.named_children():
            self.add_module(name, module)
        self.arch = arch
        self.num_features: int = efficientnet.HEAD if self.lite else net.fc.in_features  # 1280 / 2048 / 512
        self.num_classes = num_classes
        self.small_input = small_input
        self.head_prefix = "_fc." if self.lite else "fc."

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) pooled post-ReLU pre-logit vector (non-negative)."""
        if self.lite:
            return efficientnet.lite_features(self, x)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward_head(self, f: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (B, C) logits."""
        return efficientnet.lite_head(self, f) if self.lite else self.fc(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def load_pretrained(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Load e.g. ImageNet weights. Skips the head (`fc.*` / `_fc.*`) when the class count differs and
        `conv1.weight` when the small-input stem replaced the 7x7 one; any other missing, unexpected or
        mis-shaped key raises.
        Returns the skipped keys."""
        own = self.state_dict()
        skip = [k for k, v in state.items() if k in own and own[k].shape != v.shape
                and (k.startswith(self.head_prefix) or (k == "conv1.weight" and self.small_input))]
        for k in skip:
            log.info("load_pretrained: keeping fresh %s (shape %s, pretrained %s)",
                     k, tuple(own[k].shape), tuple(state[k].shape))
        missing, unexpected = self.load_state_dict({k: v for k, v in state.items() if k not in skip}, strict=False)
        if set(missing) - set(skip) or unexpected:
            raise RuntimeError(f"state_dict does not fit {self.arch}: missing {sorted(set(missing) - set(skip))}, "
                               f"unexpected {sorted(unexpected)}")
        return skip


@dataclass
class ClassifierConfig:
    arch: str = "resnet18"       # "resnet18" | "resnet50" (the paper's backbone, §6)
    epochs: int = 10             # passes over the data
    batch_size: int = 128        # images per SGD step
    lr: float = 0.1              # peak learning rate, cosine-decayed to 0 per step
    momentum: float = 0.9        # SGD momentum
    weight_decay: float = 5e-4   # L2 on all parameters (SGD weight_decay)
    nesterov: bool = True        # Nesterov momentum
    image_size: int = 32         # train/eval crop size; <= 64 selects the small-input stem and CIFAR augmentation
    num_workers: int = 2         # DataLoader worker processes (0 = load in the main process)
    seed: int = 0                # torch seed for init, sampler and augmentation (CPU runs are bit-identical)
    label_smoothing: float = 0.0  # cross-entropy label smoothing


def is_small(image_size: int) -> bool:
    return image_size <= SMALL_INPUT_MAX


def make_transform(image_size: int, train: bool, *, arch: str = "resnet18") -> T.Compose:
    """PIL image -> (3, image_size, image_size) float tensor, normalised as `arch` expects: ImageNet mean/std
    (ResNet) or [-1, 1] (Lite0, as it was trained). Lite0 sees the whole of a square image, small ones (CIFAR's
    32 px) upscaled: a 0.875 centre crop would cut their edges."""
    mean, std = (efficientnet.LITE_MEAN, efficientnet.LITE_STD) if arch in LITE_ARCHS else (IMAGENET_MEAN,
                                                                                           IMAGENET_STD)
    if arch in LITE_ARCHS:
        square = [T.Resize(image_size), T.CenterCrop(image_size)]
        ops = [*square, T.RandomCrop(image_size, padding=image_size // 8, padding_mode="reflect"),
               T.RandomHorizontalFlip()] if train else square
    elif is_small(image_size):
        ops = [T.Resize(image_size), T.CenterCrop(image_size)]
        if train:
            ops += [T.RandomCrop(image_size, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip()]
    elif train:
        ops = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        ops = [T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size)]
    return T.Compose([*ops, T.ToTensor(), T.Normalize(mean, std)])


class ImageDataset(Dataset):
    """Yields (image (3,S,S), label, index, error). Files are read with ``safe_open.read_image``; unreadable
    files give a zero image and a non-empty error."""

    def __init__(self, paths: Sequence[str | Path], labels: np.ndarray | None, transform: T.Compose, image_size: int):
        self.paths = [str(p) for p in paths]
        self.labels = labels
        self.transform = transform
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int, str]:
        label = int(self.labels[i]) if self.labels is not None else -1
        try:
            with Image.open(io.BytesIO(read_image(self.paths[i]).data)) as im:
                img = im.convert("RGB")
            return self.transform(img), label, i, ""
        except FileRefused as e:  # a link along the path, not a regular file, too large, ... (safe_open)
            return torch.zeros(3, self.image_size, self.image_size), label, i, str(e)
        except Exception as e:  # any decode failure (truncated, not an image, ...) must not kill the loader
            return torch.zeros(3, self.image_size, self.image_size), label, i, f"{type(e).__name__}: {e}"


def weighted_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                           label_smoothing: float = 0.0) -> torch.Tensor:
    """L = (1/N) sum_i w_i * CE_i over the N rows of the batch (spec §6), NOT divided by sum(w).
    logits (N, C), target (N,) int, weights (N,) -> scalar. Zero-weight rows still count in N."""
    ce = F.cross_entropy(logits.float(), target, reduction="none", label_smoothing=label_smoothing)
    return (weights * ce).sum() / max(len(target), 1)


def train_classifier(paths: Sequence[str | Path], labels: np.ndarray, num_classes: int, *,
                     sample_weights: np.ndarray | None = None, config: ClassifierConfig = ClassifierConfig(),
                     init_state: dict | None = None, device: str = "auto", progress: bool = True,
                     checkpoint: str | Path | None = None,
                     on_epoch: Callable[[int, Backbone, dict], None] | None = None) -> Backbone:
    """Train a Backbone on (paths, labels (N,)) with SGD + per-step cosine LR; returns it in eval mode.

    Loss per step: (1/N) sum_i w_i * CE(x_i, y_i), N = readable images in the mini-batch (weight-0 ones included),
    w = sample_weights (N,) or all ones. This is the spec's L = -(1/N) sum w_i log p(y_i|x_i), normalised by the
    batch size rather than by sum(w). Unreadable images are dropped from their batch and counted in a warning.
    init_state: optional (ImageNet) state_dict, loaded with Backbone.load_pretrained before training.
    checkpoint: file written atomically after every epoch (model, optimiser, schedule, epoch). A run started with
    the same inputs (labels, weights, config, paths) resumes after its last finished epoch, and returns at once
    when all epochs are done; a file from other inputs is ignored and overwritten. Shuffle and augmentation
    draws after a resume differ from an uninterrupted run.
    on_epoch(epoch, model, stats): called after each epoch (1-based; stats: loss, train_acc, lr), e.g. to
    evaluate on a test set; the model is in train mode and must be left so.
    """
    labels, weights = _check_training_inputs(paths, labels, num_classes, sample_weights)
    cfg = config
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    fmt = torch.channels_last if cuda else torch.contiguous_format
    ds = ImageDataset(paths, labels, make_transform(cfg.image_size, train=True, arch=cfg.arch), cfg.image_size)
    run, loader = _setup(ds, num_classes, cfg=cfg, init_state=init_state, device=dev, memory_format=fmt)
    model = run.model

    fingerprint = _fingerprint(paths, labels, weights, num_classes, cfg, init_state is not None)
    start = 0 if checkpoint is None else _resume(checkpoint, fingerprint=fingerprint, run=run, epochs=cfg.epochs)
    w, bad = torch.from_numpy(weights), set[int]()
    model.train()
    for epoch in range(start, cfg.epochs):
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        stats = _train_epoch(run, bar, weights=w, device=dev, memory_format=fmt,
                             label_smoothing=cfg.label_smoothing, bad=bad)
        log.info("epoch %d/%d: loss %.4f, train acc %.4f, lr %.4g", epoch + 1, cfg.epochs, *stats.values())
        if checkpoint is not None:
            _save_checkpoint(checkpoint, fingerprint=fingerprint, epoch=epoch + 1, run=run)
        if on_epoch is not None:
            on_epoch(epoch + 1, model, stats)
    if bad:
        log.warning("%d of %d images could not be read and were left out of training", len(bad), len(ds))
    return model.eval()


@dataclass
class _Run:
    """A training run's state: what a checkpoint saves besides its fingerprint and epoch."""
    model: Backbone
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    gen: torch.Generator  # drives the shuffle and the worker seeds


def _setup(ds: ImageDataset, num_classes: int, *, cfg: ClassifierConfig, init_state: dict | None,
           device: torch.device, memory_format: torch.memory_format) -> tuple[_Run, DataLoader]:
    """Seeded model (optionally from init_state), shuffling loader, SGD with a per-step cosine LR to 0."""
    torch.manual_seed(cfg.seed)
    model = Backbone(cfg.arch, num_classes, small_input=is_small(cfg.image_size))
    if init_state is not None:
        model.load_pretrained(init_state)
    model.to(device, memory_format=memory_format)
    gen = torch.Generator().manual_seed(cfg.seed)
    drop_last = len(ds) > cfg.batch_size  # a ragged last batch gives noisy BN statistics
    cuda = device.type == "cuda"
    loader = DataLoader(ds, batch_size=cfg.batch_size, shuffle=True, generator=gen, drop_last=drop_last,
                        num_workers=cfg.num_workers, pin_memory=cuda, persistent_workers=cfg.num_workers > 0)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    total_steps = max(cfg.epochs * len(loader), 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total_steps)))
    return _Run(model=model, opt=opt, sched=sched, gen=gen), loader


def _check_training_inputs(paths: Sequence, labels: np.ndarray, num_classes: int,
                           sample_weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """-> labels (N,) int64 and weights (N,) float32 (all ones without sample_weights); ValueError when they do
    not fit the paths or the classes, or a weight is negative or not finite."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(paths) or len(paths) == 0:
        raise ValueError(f"need as many labels as paths (> 0), got {len(labels)} labels for {len(paths)} paths")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    weights = np.ones(len(paths), np.float32) if sample_weights is None else np.asarray(sample_weights, np.float32)
    if weights.shape != labels.shape or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"sample_weights must be finite, >= 0 and of shape {labels.shape}")
    return labels, weights


def _train_epoch(run: _Run, bar: tqdm, *, weights: torch.Tensor, device: torch.device,
                 memory_format: torch.memory_format, label_smoothing: float, bad: set[int]) -> dict:
    """One pass of weighted SGD over the loader in `bar` (x, y, idx, errors); adds unreadable indices to `bad`.
    weights (N,) float32 by dataset index. Returns {loss, train_acc, lr} of the epoch."""
    model, opt, sched, cuda = run.model, run.opt, run.sched, device.type == "cuda"
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y, idx, err in bar:
        ok = torch.tensor([not e for e in err])
        if not ok.all():
            bad.update(idx[~ok].tolist())
            x, y, idx = x[ok], y[ok], idx[ok]
        if len(y) > 0:
            x = x.to(device, non_blocking=True, memory_format=memory_format)
            y = y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                logits = model(x)
            loss = weighted_cross_entropy(logits, y, weights[idx].to(device), label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        sched.step()  # stepped even for an all-bad batch so the schedule keeps its length
    return {"loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1), "lr": sched.get_last_lr()[0]}


def _resume(checkpoint: str | Path, *, fingerprint: str, run: _Run, epochs: int) -> int:
    """Load `checkpoint` into the run's model, opt, sched and gen when it was written for the same inputs
    (fingerprint); -> the number of finished epochs (0 when absent or from other inputs)."""
    if not Path(checkpoint).is_file():
        return 0
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if saved.get("fingerprint") != fingerprint:
        log.info("ignoring checkpoint %s: it was written for other inputs", checkpoint)
        return 0
    run.model.load_state_dict(saved["model"])
    run.opt.load_state_dict(saved["opt"])
    run.sched.load_state_dict(saved["sched"])
    run.gen.set_state(saved["gen"])
    log.info("resuming %s after epoch %d/%d", checkpoint, int(saved["epoch"]), epochs)
    return int(saved["epoch"])


def _save_checkpoint(checkpoint: str | Path, *, fingerprint: str, epoch: int, run: _Run) -> None:
    """Atomically write model, optimiser, schedule and shuffle-generator state after `epoch` (1-based)."""
    with atomic_write(checkpoint) as f:
        torch.save({"fingerprint": fingerprint, "epoch": epoch, "model": run.model.state_dict(),
                    "opt": run.opt.state_dict(), "sched": run.sched.state_dict(), "gen": run.gen.get_state()}, f)


def iter_inference(model: Backbone, paths: Sequence[str | Path], *, image_size: int, batch_size: int = 256,
                   num_workers: int = 2, device: str = "auto", with_probs: bool = False,
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]]:
    """Eval-mode inference in order. Yields (index (b,), features (b,D) f32, probs (b,C) f32 or None,
    errors: b strings, '' = ok). Unreadable images get zero features/probs. Restores the train/eval mode."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    fmt = torch.channels_last  # faster on CUDA, and on CPU for Lite0's depthwise convolutions
    ds = ImageDataset(paths, None, make_transform(image_size, train=False, arch=model.arch), image_size)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, pin_memory=cuda)
    was_training = model.training
    model.to(dev, memory_format=fmt).eval()
    try:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            for x, _, idx, err in loader:
                ok = torch.tensor([not e for e in err])
                feats = torch.zeros(len(idx), model.num_features)
                probs = torch.zeros(len(idx), model.num_classes) if with_probs else None
                if ok.any():
                    f = model.forward_features(x[ok].to(dev, non_blocking=True, memory_format=fmt))
                    feats[ok] = f.float().cpu()
                    if probs is not None:
                        probs[ok] = model.forward_head(f).float().softmax(1).cpu()
                yield idx.numpy(), feats.numpy(), None if probs is None else probs.numpy(), list(err)
    finally:
        model.train(was_training)


def predict(model: Backbone, paths: Sequence[str | Path], *, image_size: int, batch_size: int = 256,
            num_workers: int = 2, device: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> features (N, D) float32, probs (N, C) float32, ok (N,) bool (False = unreadable; rows are zero)."""
    n = len(paths)
    feats = np.zeros((n, model.num_features), np.float32)
    probs = np.zeros((n, model.num_classes), np.float32)
    ok = np.zeros(n, bool)
    for idx, f, p, err in iter_inference(model, paths, image_size=image_size, batch_size=batch_size,
                                         num_workers=num_workers, device=device, with_probs=True):
        feats[idx], probs[idx], ok[idx] = f, p, [not e for e in err]
    if not ok.all():
        log.warning("predict: %d of %d images could not be read", int((~ok).sum()), n)
    return feats, probs, ok


def evaluate(model: Backbone, paths: Sequence[str | Path], labels: np.ndarray, **kw) -> float:
    """Top-1 accuracy over the readable images; kw go to predict (image_size is required)."""
    _, probs, ok = predict(model, paths, **kw)
    labels = np.asarray(labels)
    return float((probs[ok].argmax(1) == labels[ok]).mean()) if ok.any() else float("nan")


def save_backbone(model: Backbone, path: str | Path, *, class_names: list[str], meta: dict) -> None:
    """Atomically write the weights plus arch/class info (meta: plain JSON-like values) to `path`."""
    ckpt = {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "arch": model.arch,
            "num_classes": model.num_classes, "small_input": model.small_input, "class_names": list(class_names),
            "meta": dict(meta), "format": CHECKPOINT_FORMAT}
    with atomic_write(path) as f:
        torch.save(ckpt, f)


def _fingerprint(paths: Sequence, labels: np.ndarray, weights: np.ndarray, num_classes: int,
                 cfg: ClassifierConfig, pretrained: bool) -> str:
    """Hash of a training run's inputs, to decide whether a checkpoint may be resumed."""
    h = hashlib.blake2b(digest_size=16)
    settings = sorted((k, v) for k, v in cfg.__dict__.items() if k != "num_workers")  # workers: speed only
    h.update(json.dumps([num_classes, pretrained, settings]).encode())
    h.update("\0".join(map(str, paths)).encode())
    h.update(labels.tobytes())
    h.update(weights.tobytes())
    return h.hexdigest()


def load_backbone(path: str | Path, device: str = "cpu") -> tuple[Backbone, dict]:
    """Rebuild a Backbone saved by save_backbone (eval mode). Returns (model, checkpoint info without weights)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown backbone checkpoint format {ckpt.get('format')!r}")
    model = Backbone(ckpt["arch"], ckpt["num_classes"], small_input=ckpt["small_input"])
    model.load_state_dict(ckpt["state_dict"])
    info = {k: v for k, v in ckpt.items() if k != "state_dict"}
    return model.to(resolve_device(device)).eval(), info

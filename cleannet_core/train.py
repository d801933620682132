"""Training CleanNet on verified samples plus the unverified pool (spec §4.2-4.3, §5).

Each step concatenates `batch_sup` verified samples (shuffled per pass, wrap-around; f = 1) and
`batch_unsup` samples of the unverified pool (a class drawn uniformly, then an image uniformly within it;
f = 0). Every sample carries the K references of its noisy class. The pool is every image, verified or not,
in every class. SGD with momentum, staircase LR decay, weight decay on the weight matrices only. At each
validation the threshold delta that maximises accuracy on the validation verdicts is chosen, and the
checkpoint with the best such accuracy is kept.
"""
from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from .losses import cleannet_loss
from .metrics import best_threshold
from .model import CleanNet, CleanNetConfig


@dataclass
class TrainConfig:
    steps: int = 60_000         # n_step
    batch_sup: int = 32         # verified samples per step (f = 1)
    batch_unsup: int = 32       # unverified-pool samples per step (f = 0)
    lr: float = 0.01            # initial learning rate
    momentum: float = 0.9       # TF MomentumOptimizer == torch SGD, dampening 0
    weight_decay: float = 1e-4  # L2 on FC weight matrices only (not biases, not the context vector)
    lr_step: int = 30_000       # staircase decay every lr_step steps ...
    lr_decay: float = 0.1       # ... by this factor
    neg_weight: float = 5.0     # omega in the verification loss
    beta: float = 0.1           # reconstruction loss weight
    gamma: float = 0.1          # pseudo-label loss weight
    val_interval: int = 2000    # validate every val_interval steps (and at the last step)
    default_delta: float = 0.1  # delta when there are no validation verdicts (val_sim_thres default)
    seed: int = 0

    @classmethod
    def shortened(cls, steps: int, **kw) -> "TrainConfig":
        """A run of `steps` with the paper's schedule scaled to it: LR drop at half, 10 validations."""
        return cls(steps=steps, lr_step=max(steps // 2, 1), val_interval=max(steps // 10, 1), **kw)


@dataclass
class TrainResult:
    model: CleanNet                 # the best checkpoint (by validation accuracy), in eval mode
    delta: float                    # threshold: score < delta = label noise
    best_step: int
    val_accuracy: float | None      # verification accuracy on the validation verdicts at delta
    log: list[dict] = field(default_factory=list)  # one dict per step: step, loss, lr (+ val_acc, delta)


def train_cleannet(features: np.ndarray, labels: np.ndarray, refs: np.ndarray, *,
                   verified_idx: np.ndarray, verified_ok: np.ndarray,
                   val_idx: np.ndarray | None = None, val_ok: np.ndarray | None = None,
                   model_config: CleanNetConfig | None = None, config: TrainConfig = TrainConfig(),
                   init: CleanNet | None = None, device: str | torch.device = "cpu", progress: bool = False,
                   callback: Callable[[int, dict], None] | None = None, pool: np.ndarray | None = None) -> TrainResult:
    """Train CleanNet and choose delta.

    features: (N, d) raw features (float16 or float32); labels: (N,) noisy class ids; refs: (C, K, d).
    verified_idx: (M,) indices into features with verdicts verified_ok: (M,) bool (True = label correct);
    may be empty (pure unsupervised training). val_idx/val_ok: validation verdicts (may be None/empty).
    init: optional model to start from (warm start). callback(step, record) is called after every step.
    pool: (N,) bool, the rows the unverified half of each batch draws from (default all; e.g. not the
    unreadable images, whose feature rows are zeros).
    Deterministic on CPU for a fixed seed.
    """
    d = features.shape[1]
    labels, verified_idx, verified_ok = _checked(features, labels, refs, verified_idx, verified_ok)
    device = torch.device(device)
    has_val = val_idx is not None and len(val_idx) > 0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        cfg = model_config or CleanNetConfig(img_dim=d, num_ref=refs.shape[1])
        model = copy.deepcopy(init) if init is not None else CleanNet(cfg)
        model.to(device).train()
        feats = torch.as_tensor(features).to(device)                      # (N, d), kept in its dtype
        y = torch.as_tensor(labels).to(device)                             # (N,)
        refs_t = torch.as_tensor(refs, dtype=torch.float32).to(device)     # (C, K, d)
        opt = _optimizer(model, config)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=config.lr_step, gamma=config.lr_decay)
        sampler = _Sampler(labels, verified_idx, verified_ok, config, pool)
        best = {"acc": -1.0, "state": None, "step": 0, "delta": config.default_delta}
        log: list[dict] = []
        for step in tqdm(range(1, config.steps + 1), desc="cleannet", disable=not progress):
            idx, l, f = (t.to(device) for t in sampler.batch())
            loss = _step(model, opt, feats[idx].float(), y[idx], refs_t, l, f, config)
            record = {"step": step, "loss": loss, "lr": opt.param_groups[0]["lr"]}
            sched.step()
            if has_val and (step % config.val_interval == 0 or step == config.steps):
                s = relevance(model, features[val_idx], labels[val_idx], refs_t)
                delta, acc = best_threshold(s, np.asarray(val_ok, dtype=bool))
                record.update(val_acc=acc, delta=delta)
                if acc > best["acc"]:
                    best = {"acc": acc, "state": copy.deepcopy(model.state_dict()), "step": step, "delta": delta}
            log.append(record)
            if callback is not None:
                callback(step, record)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    else:
        best["step"] = config.steps
    model.eval()
    return TrainResult(model=model, delta=float(best["delta"]), best_step=best["step"],
                       val_accuracy=best["acc"] if has_val else None, log=log)


def _checked(features: np.ndarray, labels: np.ndarray, refs: np.ndarray, verified_idx: np.ndarray,
             verified_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels int64, verified_idx int64, verified_ok bool) after checking the shapes train_cleannet needs;
    ValueError otherwise."""
    n, d = features.shape
    labels = np.asarray(labels, dtype=np.int64)
    verified_idx = np.asarray(verified_idx, dtype=np.int64)
    verified_ok = np.asarray(verified_ok, dtype=bool)
    if labels.shape != (n,) or verified_idx.shape != verified_ok.shape:
        raise ValueError("labels must be (N,) and verified_idx/verified_ok of equal length")
    if refs.ndim != 3 or refs.shape[2] != d or labels.max(initial=0) >= refs.shape[0]:
        raise ValueError(f"refs must be (C, K, {d}) covering every label, got {refs.shape}")
    return labels, verified_idx, verified_ok


def _step(model: CleanNet, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, refs: torch.Tensor,
          verified: torch.Tensor, flags: torch.Tensor, config: TrainConfig) -> float:
    """One optimiser step on a batch: x (B, d) float32 features, y (B,) noisy labels, refs (C, K, d), verified
    (B,) float verdicts (1 = label correct; 0 for the pool's rows) and flags (B,) float (1 = a verified row).
    Returns the batch's loss."""
    out = model(x, y, refs)
    loss = cleannet_loss(out["sim"], verified, flags, out["v"], out["v_hat"], neg_weight=config.neg_weight,
                         beta=config.beta, gamma=config.gamma)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


@torch.no_grad()
def relevance(model: CleanNet, features: np.ndarray, labels: np.ndarray, refs: torch.Tensor,
              batch_size: int = 4096) -> np.ndarray:
    """Eval-mode relevance of (features (M, d), labels (M,)) to their classes -> (M,) float64."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(labels), batch_size):
        q = torch.as_tensor(features[start:start + batch_size], device=device).float()
        c = torch.as_tensor(labels[start:start + batch_size], device=device, dtype=torch.int64)
        out.append(model(q, c, refs)["sim"].double().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0)


def _optimizer(model: CleanNet, config: TrainConfig) -> torch.optim.SGD:
    """SGD with weight decay on the Linear weight matrices only (TF l2_regularizer, spec §10)."""
    decay = [p for name, p in model.named_parameters() if name.endswith("weight")]
    no_decay = [p for name, p in model.named_parameters() if not name.endswith("weight")]
    return torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}],
                           lr=config.lr, momentum=config.momentum, dampening=0.0)


class _Sampler:
    """Draws the verified half (shuffled passes) and the class-uniform unverified half of each batch."""

    def __init__(self, labels: np.ndarray, verified_idx: np.ndarray, verified_ok: np.ndarray,
                 config: TrainConfig, pool: np.ndarray | None = None):
        self.rng = np.random.default_rng(config.seed)
        self.sup_idx, self.sup_ok = verified_idx, verified_ok
        self.batch_sup = config.batch_sup if verified_idx.size else 0
        self.batch_unsup = config.batch_unsup
        self.order, self.pos = self.rng.permutation(verified_idx.size), 0
        rows = np.arange(labels.size) if pool is None else np.flatnonzero(pool)
        self.by_class = rows[np.argsort(labels[rows], kind="stable")]    # pool rows grouped by class
        counts = np.bincount(labels[rows], minlength=labels.max(initial=0) + 1)
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        self.counts = counts
        self.present = np.flatnonzero(counts > 0)                         # classes with images

    def batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> idx (B,) int64, l (B,) float verdict (dummy 0 for the pool), f (B,) float 1 = verified."""
        sup = np.empty(self.batch_sup, dtype=np.int64)
        for i in range(self.batch_sup):  # wrap-around with a reshuffle at the end of each pass
            if self.pos == self.order.size:
                self.order, self.pos = self.rng.permutation(self.order.size), 0
            sup[i] = self.order[self.pos]
            self.pos += 1
        c = self.present[self.rng.integers(self.present.size, size=self.batch_unsup)]
        unsup = self.by_class[self.starts[c] + self.rng.integers(0, self.counts[c])]
        idx = np.concatenate([self.sup_idx[sup], unsup])
        l = np.concatenate([self.sup_ok[sup].astype(np.float32), np.zeros(self.batch_unsup, np.float32)])
        f = np.concatenate([np.ones(self.batch_sup, np.float32), np.zeros(self.batch_unsup, np.float32)])
        return torch.from_numpy(idx), torch.from_numpy(l), torch.from_numpy(f)

"""The detection methods and simulated verdicts the quality benchmarks share (quality, budget, signals, oof,
classify): transfer signals and their calibrated score, the product's verdict queues, CleanNet on fixed
features (`Runner`), cleanlab's flags and kNN label agreement. Library code: the scripts are thin shells.
"""
from __future__ import annotations

import numpy as np
import torch

from cleannet_core.model import CleanNet
from cleannet_core.probe import ProbeConfig, fit_probe
from cleannet_core.references import KMeansConfig, build_references
from cleannet_core.score import score_images
from cleannet_core.train import TrainConfig, relevance, train_cleannet
from cleannet_core.transfer import DEFAULT_SIGNALS, DELTA, MIN_EACH, fit_transfer, signal_matrix

from .common import Dataset


def transfer_signals(feats: np.ndarray, noisy: np.ndarray, num_classes: int, refs: np.ndarray, valid: np.ndarray,
                     seed: int, device) -> dict[str, np.ndarray]:
    """probe_logodds, probe_margin and proto_margin (N,) of every image; probe folds drawn at random from seed."""
    folds = np.random.default_rng(seed).integers(0, ProbeConfig.folds, len(noisy))
    probs = fit_probe(feats, noisy, folds, num_classes, ProbeConfig(seed=seed), device=device).predict(feats, folds)
    names = ("probe_logodds", "probe_margin", "proto_margin")
    return dict(zip(names, signal_matrix(names, noisy, probs=probs, features=feats, refs=refs,
                                         valid_classes=valid).T))


def seed_signals(feats: np.ndarray, noisy: np.ndarray, num_classes: int, num_ref: int, seed: int,
                 device) -> dict[str, np.ndarray]:
    """transfer_signals of one seed with that seed's k-means references (K = num_ref per class)."""
    refs, counts = build_references(feats, noisy, num_classes, config=KMeansConfig(k=num_ref, seed=seed),
                                    device=device)
    return transfer_signals(feats, noisy, num_classes, refs, counts > 0, seed, device)


def fit_and_score(sigs: dict[str, np.ndarray], signals: tuple[str, ...], idx: np.ndarray,
                  ok: np.ndarray, min_each: int = MIN_EACH) -> np.ndarray:
    """(N,) transfer score fitted on the verdicts at idx (the fallback when they are too one-sided)."""
    ts = fit_transfer(np.stack([sigs[n][idx] for n in signals], axis=1), ok[idx], signals, min_each=min_each)
    return ts(np.stack([sigs[n] for n in ts.signals], axis=1))


def transfer_verdicts(sigs: dict[str, np.ndarray], ok: np.ndarray, candidates: np.ndarray, budget: int,
                      rounds: int, rng: np.random.Generator, min_each: int = MIN_EACH,
                      signals: tuple[str, ...] = DEFAULT_SIGNALS) -> np.ndarray:
    """Verdict indices drawn like the product's uncertainty queue for the transfer score, without its random
    audit slice: a random first round (cold start), then each round the images with the lowest |p - 0.5|
    under the score (over `signals`) fitted on every verdict so far."""
    sizes = np.diff(np.linspace(0, budget, rounds + 1).round().astype(int))
    chosen = rng.choice(candidates, sizes[0], replace=False)
    for size in sizes[1:]:
        rest = np.setdiff1d(candidates, chosen)
        p = fit_and_score(sigs, signals, chosen, ok, min_each)[rest]
        chosen = np.concatenate([chosen, rest[np.argsort(np.abs(p - DELTA), kind="stable")[:size]]])
    return chosen


class Runner:
    """Trains and scores CleanNet on fixed features, references and ground truth."""

    def __init__(self, ds: Dataset, feats: np.ndarray, refs: np.ndarray, ok: np.ndarray, tcfg: TrainConfig,
                 device: torch.device):
        self.ds, self.feats, self.refs, self.ok, self.tcfg, self.device = ds, feats, refs, ok, tcfg, device
        self.valid = np.bincount(ds.noisy, minlength=ds.num_classes) > 0

    def train(self, train_idx: np.ndarray, val_idx: np.ndarray, steps: int | None = None):
        cfg = self.tcfg if steps is None else TrainConfig(**{**self.tcfg.__dict__, "steps": steps,
                                                              "lr_step": max(steps // 2, 1),
                                                              "val_interval": max(steps // 5, 1)})
        return train_cleannet(self.feats, self.ds.noisy, self.refs, verified_idx=train_idx,
                              verified_ok=self.ok[train_idx], val_idx=val_idx, val_ok=self.ok[val_idx],
                              config=cfg, device=self.device)

    def fit_score(self, train_idx: np.ndarray, val_idx: np.ndarray) -> tuple[np.ndarray, float, CleanNet]:
        res = self.train(train_idx, val_idx)
        sc = score_images(res.model, self.feats, self.ds.noisy, self.refs, valid_classes=self.valid)
        return sc.score, res.delta, res.model

    def product_verdicts(self, candidates: np.ndarray, budget: int, audit_share: float, rounds: int,
                         rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(queue verdicts, audit verdicts) from `candidates`, imitating the product's queue for method paper: a
        random audit slice (audit_share of the budget) first, then `rounds` rounds, the first random, each later
        one the lowest |relevance - delta| under a CleanNet trained on the verdicts so far (a quarter of the steps)."""
        n_audit = int(round(audit_share * budget))
        audit = rng.choice(candidates, n_audit, replace=False)
        pool = np.setdiff1d(candidates, audit)
        sizes = np.diff(np.linspace(0, budget - n_audit, rounds + 1).round().astype(int))
        chosen = rng.choice(pool, sizes[0], replace=False)          # cold start: random
        for size in sizes[1:]:
            res = self.train(chosen, audit, steps=max(self.tcfg.steps // 4, 1))
            rest = np.setdiff1d(pool, chosen)
            refs_t = torch.as_tensor(self.refs, device=self.device)
            s = relevance(res.model, self.feats[rest], self.ds.noisy[rest], refs_t)
            chosen = np.concatenate([chosen, rest[np.argsort(np.abs(s - res.delta), kind="stable")[:size]]])
        return chosen, audit


def cleanlab_flags(feats: np.ndarray, noisy: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab find_label_issues on 5-fold out-of-fold logistic-regression probabilities.

    Returns flags (N,) bool and self-confidence p(noisy label) (N,), the score used for its AUROC.
    """
    from cleanlab.filter import find_label_issues
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.log1p(np.maximum(feats, 0))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=0.1))
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    probs = cross_val_predict(clf, x, noisy, cv=cv, method="predict_proba")
    flags = find_label_issues(labels=noisy, pred_probs=probs)
    return flags, probs[np.arange(len(noisy)), noisy]


def knn_agreement(feats: np.ndarray, noisy: np.ndarray, k: int = 10) -> np.ndarray:
    """Similarity-weighted share of the k nearest neighbours (cosine, log features) with the same label."""
    x = torch.nn.functional.normalize(torch.log1p(torch.as_tensor(feats).float().clamp_min(0)), dim=1)
    y = torch.as_tensor(noisy)
    out = np.empty(len(noisy), dtype=np.float64)
    for start in range(0, len(noisy), 2048):
        sims = x[start:start + 2048] @ x.T                                  # (b, N)
        sims[torch.arange(sims.shape[0]), torch.arange(start, start + sims.shape[0])] = -2  # not itself
        top, idx = sims.topk(k, dim=1)
        w = top.clamp_min(0)
        same = (y[idx] == y[start:start + sims.shape[0], None]).float()
        out[start:start + sims.shape[0]] = ((w * same).sum(1) / w.sum(1).clamp_min(1e-12)).numpy()
    return out

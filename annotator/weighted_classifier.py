"""An image classifier trained on the project's noisy labels weighted by the model's scores, then exported.

`annotator train-classifier` calls `train_weighted_classifier`. The alternation itself (classifier -> features
-> score -> weights -> classifier) is cleannet_core.alternate.train_alternating; this module gathers the
project's images and verdicts for it and writes the checkpoint through annotator.artifacts.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cleannet_core.alternate import AlternateConfig, RoundResult, train_alternating
from cleannet_core.features import load_imagenet_weights
from cleannet_core.train import TrainConfig

from . import artifacts
from .backbone import classifier_config, load_data, pick_image_size
from .pipeline import verdict_split
from .round_config import RoundConfig
from .round_types import Data, VerdictSplit
from .store import Store


@dataclass(frozen=True)
class TrainedClassifier:
    path: Path                # the checkpoint written
    n_classes: int
    image_size: int           # px the classifier was trained at
    last: RoundResult         # the last CleanNet pass: its delta, weights and scores


def _project_data(store: Store) -> tuple[Data, VerdictSplit]:
    """The project's readable images and its verdicts split for training; ValueError when it cannot train."""
    data = load_data(store)
    if len(data.ids) == 0:
        raise ValueError("no images: ingest some first")
    if len(data.class_ids) < 2:
        raise ValueError("need at least two classes to train a classifier")
    return data, verdict_split(store, data)


def train_weighted_classifier(store: Store, cfg: RoundConfig, *, rounds: int = 1, weights: str = "soft",
                              num_workers: int = 2, out: str | Path | None = None,
                              say: Callable[[str], None] = lambda msg: None,
                              warn: Callable[[str], None] = lambda msg: None) -> TrainedClassifier:
    """Train the classifier of `rounds` extra alternations with `weights` ('soft' | 'hard') and write it to
    `out` (default: <state folder>/classifiers/classifier-<weights>-<time>.pt).

    The checkpoint holds the weights, the class names and the run's provenance (load it with
    cleannet_core.classifier.load_backbone). Per-epoch checkpoints in <state folder>/classifiers/resume let a
    rerun with the same inputs pick up where it stopped. say(message): progress; warn(message): a run that
    goes on without what it should have. Raises ValueError (nothing to train on) and OSError (weights or the
    checkpoint cannot be read or written).
    """
    data, split = _project_data(store)
    n_verdicts, max_verdict = split.n, store.max_verdict_id()
    if n_verdicts == 0:
        warn("no live verdicts; CleanNet trains without supervision")
    size = pick_image_size(store, cfg, n_images=len(data.ids))
    init_state, message = load_imagenet_weights(cfg.arch, weights_path=cfg.weights_path)
    say(message)
    acfg = AlternateConfig(
        rounds=rounds, weights=weights, method=cfg.method, num_ref=cfg.num_ref, device=cfg.device,
        classifier=classifier_config(cfg, image_size=size, n_images=len(data.ids), num_workers=num_workers),
        cleannet=TrainConfig.shortened(cfg.steps),
        cache_dir=artifacts.features_dir(store),
        checkpoint_dir=artifacts.classifiers_dir(store) / "resume")  # an interrupted run resumes
    res = train_alternating(data.paths, data.labels, len(data.class_ids), verified_idx=split.train,
                            verified_ok=split.train_correct, val_idx=split.val, val_ok=split.val_correct,
                            config=acfg, init_state=init_state, progress=True, report=say)
    if out is None:
        out = artifacts.classifiers_dir(store) / f"classifier-{weights}-{time.strftime('%Y%m%d-%H%M%S')}.pt"
    meta = {"image_size": size, "weights": weights, "method": cfg.method, "rounds": rounds,
            "epochs": cfg.backbone_epochs, "cleannet_steps": cfg.steps, "n_images": len(data.ids),
            "n_verdicts": int(n_verdicts), "max_verdict_id": max_verdict, "class_ids": data.class_ids.tolist(),
            "history": [{k: v for k, v in h.items() if k != "epochs"} for h in res.history]}
    try:
        artifacts.save_classifier_artifact(store, res.model, out, class_names=data.class_names, provenance=meta,
                                           source=f"train-classifier: {cfg.method} score w_{weights}, "
                                                  f"{rounds} extra round(s)")
    except OSError as e:
        raise OSError(f"cannot write {out}: {e}") from e
    return TrainedClassifier(path=Path(out), n_classes=len(data.class_names), image_size=size, last=res.rounds[-1])

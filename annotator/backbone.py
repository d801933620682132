"""The project's images in a round's row order and the backbone whose features feed the scoring model.

`load_data` reads the readable images; `ensure_backbone` reuses the stored backbone or builds a new one (at the
input size `pick_image_size` chooses) and registers it through annotator.artifacts. The pipeline, the torchrun
extraction (annotator.distributed), the near-duplicates and train-classifier all start here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from cleannet_core.classifier import LITE_ARCHS, Backbone, ClassifierConfig, is_small, train_classifier
from cleannet_core.features import load_imagenet_weights

from .artifacts import BackboneInfo, current_backbone, load_backbone_artifact, save_backbone_artifact
from .round_config import RoundConfig
from .round_types import Data, Report, quiet
from .store import Store

log = logging.getLogger(__name__)
UPSCALE_224_FROM = 20_000  # images: from here small images go to Lite0 at 224 px rather than 128


def classifier_config(cfg: RoundConfig, *, image_size: int, n_images: int, **kw) -> ClassifierConfig:
    """The backbone/classifier training settings of a round for n_images images of image_size px."""
    return ClassifierConfig(arch=cfg.arch, epochs=cfg.backbone_epochs, image_size=image_size, lr=cfg.backbone_lr,
                            batch_size=min(128, max(8, n_images // 8)), **kw)


def load_data(store: Store) -> Data:
    """The images of status ok in id order, their labels as positions in the classes sorted by id."""
    classes = sorted(store.classes(), key=lambda c: c["id"])
    class_ids = np.array([c["id"] for c in classes], dtype=np.int64)
    pos = {cid: i for i, cid in enumerate(class_ids)}
    ids, paths, keys, labels = [], [], [], []
    for row in store.iter_images():
        if row["status"] == "ok":
            ids.append(row["id"])
            paths.append(row["path"])
            keys.append(row["hash"])
            labels.append(pos[row["label_id"]])
    return Data(np.array(ids, dtype=np.int64), paths, keys, np.array(labels, dtype=np.int64), class_ids,
                [c["name"] for c in classes])


def pick_image_size(store: Store, cfg: RoundConfig, *, n_images: int) -> int:
    """cfg.image_size, or by the median side of the first 500 images: small images (<= 64 px) go to a ResNet at
    32 px and to Lite0 upscaled, to 128 px below UPSCALE_224_FROM images (the first model within a minute on a
    CPU) and to 224 px from there (ranks better, at about 5 x the extraction time on a CPU; benchmarks/README.md,
    "Probe epochs and input size"); larger images 224 px."""
    if cfg.image_size:
        return cfg.image_size
    sizes = [min(r["width"], r["height"]) for r, _ in zip(store.iter_images(), range(500)) if r["width"]]
    if sizes and float(np.median(sizes)) <= 64:
        if cfg.arch not in LITE_ARCHS:
            return 32
        return 224 if n_images >= UPSCALE_224_FROM else 128
    return 224


@dataclass
class _Start:
    """Where a new backbone starts: the weights it trains from (None: random), or `ready` ImageNet weights used
    as they are; the stored backbone it derives from, its kind and the source its record states."""
    init_state: dict | None
    parent: int | None
    kind: str
    source: str
    ready: Backbone | None = None


def ensure_backbone(store: Store, data: Data, cfg: RoundConfig, report: Report = quiet, *,
                    new: bool = False, retrain_weights: np.ndarray | None = None,
                    load: bool = True) -> tuple[Backbone | None, BackboneInfo]:
    """The backbone whose features feed the scoring model, and where its weights came from.

    Precedence, said in a report every time (phase 'features'; 'backbone' only while one trains): the
    project's stored backbone (features and the current model depend on it) while it has one head per class
    and matches the round's arch, kind (cfg.backbone) and input size; else, or with `new`, by cfg.backbone:
    `pretrained` ImageNet weights as they are (cfg.weights_path, which raises when it cannot be loaded, else
    the installed Lite0 package or the torch cache; never downloaded), `finetuned` those weights trained on the
    noisy labels (the paper's recipe, spec §1), `noisy` a backbone trained from scratch on them. Without
    ImageNet weights offline the first two train from scratch too, with a warning. `retrain_weights` (N,)
    retrains the stored backbone on the noisy labels with those per-sample weights (full round, spec §6); the
    result is registered with the stored one as its parent.
    load=False returns (None, info) when the stored backbone is reused: `features` loads it only if an image
    is not cached yet.
    """
    size = pick_image_size(store, cfg, n_images=len(data.ids))
    stored, new = _check_stored(current_backbone(store), data, cfg, report, size=size, new=new,
                                retraining=retrain_weights is not None)
    if stored and not new and retrain_weights is None:
        unused = f"; weights_path {cfg.weights_path} applies to a new backbone only" if cfg.weights_path else ""
        report("features", 0.0, f"using the project's backbone ({stored.source}){unused}")
        return (load_backbone_artifact(stored) if load or not stored.dim else None), stored
    start = _start(stored if retrain_weights is not None else None, data, cfg, report, size=size)
    if start.ready is not None:
        return start.ready, _save_backbone(store, start.ready, data, start.source, size, start.kind,
                                           weights=cfg.weights_path)
    return _train_backbone(store, data, cfg, report, size=size, start=start, weights=retrain_weights)


def _check_stored(stored: BackboneInfo | None, data: Data, cfg: RoundConfig, report: Report, *, size: int,
                  new: bool, retraining: bool) -> tuple[BackboneInfo | None, bool]:
    """(the stored backbone, or None when its heads no longer match the classes; `new`, or True when the
    round asks for another arch, kind or input size and does not retrain the stored one)."""
    if stored and stored.num_classes != len(data.class_ids):
        report("features", 0.0, f"the stored backbone has {stored.num_classes} classes, the project "
                                f"{len(data.class_ids)}: building a new one")
        stored = None
    if stored and not retraining and (stored.arch, stored.kind, stored.image_size) != (cfg.arch, cfg.backbone, size):
        report("features", 0.0, f"the round asks for a {cfg.backbone} {cfg.arch} at {size} px, the stored "
                                f"backbone is a {stored.kind} {stored.arch} at {stored.image_size} px: building "
                                f"a new one")
        new = True
    return stored, new


def _start(retrained: BackboneInfo | None, data: Data, cfg: RoundConfig, report: Report, *, size: int) -> _Start:
    """Where a new backbone starts: the `retrained` stored one, random weights (cfg.backbone 'noisy'), or the
    ImageNet weights (used as they are for 'pretrained', fine-tuned for 'finetuned'; random when none)."""
    if retrained:
        return _Start(load_backbone_artifact(retrained).state_dict(), retrained.id, retrained.kind,
                      "retrained on the noisy labels with w_soft weights")
    if cfg.backbone == "noisy":
        return _Start(None, None, cfg.backbone, "trained from scratch on the noisy labels")
    state, message = load_imagenet_weights(cfg.arch, weights_path=cfg.weights_path)
    report("features", 0.0, message)
    if state is not None and cfg.backbone == "pretrained":
        model = Backbone(cfg.arch, len(data.class_ids), small_input=is_small(size))
        model.load_pretrained(state)
        return _Start(None, None, cfg.backbone, f"ImageNet ({message})", ready=model.eval())
    if state is not None:
        return _Start(state, None, cfg.backbone, f"ImageNet, fine-tuned on the noisy labels ({message})")
    log.warning(message)
    return _Start(None, None, cfg.backbone, "trained on the noisy labels (no ImageNet weights available offline)")


def _train_backbone(store: Store, data: Data, cfg: RoundConfig, report: Report, *, size: int, start: _Start,
                    weights: np.ndarray | None) -> tuple[Backbone, BackboneInfo]:
    """Train the backbone from `start` on the noisy labels (per-sample `weights` (N,) or none) and register it;
    report phase 'backbone' after every epoch."""
    ccfg = classifier_config(cfg, image_size=size, n_images=len(data.ids))
    report("backbone", 0.0, f"training the {cfg.arch} backbone on {len(data.ids)} images ({ccfg.epochs} epochs)")

    def on_epoch(epoch: int, _model: Backbone, stats: dict) -> None:
        report("backbone", epoch / ccfg.epochs,
               f"backbone epoch {epoch}/{ccfg.epochs}: train accuracy {stats['train_acc']:.3f} on the noisy labels")

    model = train_classifier(data.paths, data.labels, len(data.class_ids), sample_weights=weights,
                             config=ccfg, init_state=start.init_state, device=cfg.device, progress=False,
                             on_epoch=on_epoch)
    provenance = {"parent": start.parent, "max_verdict_id": store.max_verdict_id() if weights is not None else None}
    return model, _save_backbone(store, model, data, start.source, size, start.kind, **provenance)


def _save_backbone(store: Store, model: Backbone, data: Data, source: str, size: int, kind: str,
                   **provenance) -> BackboneInfo:
    return save_backbone_artifact(store, model, class_names=data.class_names, source=source, image_size=size,
                                  kind=kind, provenance={"n_images": len(data.ids)} | provenance)

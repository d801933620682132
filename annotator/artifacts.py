"""Every model file of a project: where it lives, how it is written, and its record in the store.

Files live under the state folder (the database's folder):

    backbones/backbone-<id>.pt      the image backbone whose pooled features every round scores
    models/<method>-<id>.pt         one round's scoring model (probe + calibrator, or CleanNet) and references
    models/adapted-<id>.pt          an adapted round's cross-fitted networks (whole ones, or Lite0 tails on the
                                    frozen ImageNet prefix) and their out-of-fold probabilities
    classifiers/                    classifiers exported by `train-classifier` (and resume/ checkpoints)
    features/                       the content-keyed feature cache (cleannet_core.features)

Each file is written with `cleannet_core.atomic.atomic_write` and then registered in the store's
``artifacts`` table with its provenance (which backbone, which weights, which verdicts), so the database
never points at a half-written file and every score can be traced to the files that produced it.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

import numpy as np

from cleannet_core.adapt import CrossFit, ensemble_probs, tail_probs
from cleannet_core.atomic import atomic_write
from cleannet_core.classifier import Backbone, load_backbone, save_backbone
from cleannet_core.features import backbone_id, load_imagenet_weights
from cleannet_core.features import backbone_id as content_id  # save_adapted_artifact's argument is named backbone_id

from .store import Store

log = logging.getLogger(__name__)
ADAPTED_FORMAT = 2  # the adapted file's "format": 1 (no field) = whole networks only; 2 adds "layers" (full | tail)
                    # and, for tails, the prefix's ImageNet weights ("weights_path", "prefix_id")


@dataclass(frozen=True)
class BackboneInfo:
    path: str          # the checkpoint file (cleannet_core.classifier.save_backbone format)
    id: str            # content id of its weights: keys the feature cache
    source: str        # where the weights came from, in words (shown on the dashboard)
    arch: str          # efficientnet_lite0 | resnet18 | resnet50
    image_size: int    # input size its features are extracted at
    num_classes: int   # classes of its head (= the project's classes when it was built)
    kind: str          # the round setting `backbone` it was built for: pretrained | finetuned | noisy (its
                       # source says when no ImageNet weights were found and it was trained instead)
    dim: int | None = None  # size of its pooled features (None when not recorded: load the file to know)

    def asdict(self) -> dict[str, Any]:
        return asdict(self)


def state_dir(store: Store) -> Path:
    """The folder that holds the database and every model file."""
    return Path(store.path).resolve().parent


def features_dir(store: Store) -> Path:
    return state_dir(store) / "features"


def classifiers_dir(store: Store) -> Path:
    return state_dir(store) / "classifiers"


def save_backbone_artifact(store: Store, model: Backbone, *, class_names: list[str], source: str,
                           image_size: int, kind: str, provenance: dict[str, Any]) -> BackboneInfo:
    """Write `model` atomically under backbones/, register it (it becomes the current backbone), return it.

    provenance: plain JSON values, e.g. {"weights": <ImageNet file or None>, "parent": <backbone id>,
    "max_verdict_id": <last verdict its sample weights saw>}.
    """
    path = state_dir(store) / "backbones" / f"backbone-{uuid.uuid4().hex[:8]}.pt"
    save_backbone(model, path, class_names=class_names, meta={"source": source, **provenance})
    info = BackboneInfo(path=str(path), id=backbone_id(model), source=source, arch=model.arch,
                        image_size=image_size, num_classes=model.num_classes, kind=kind, dim=model.num_features)
    store.add_artifact(kind="backbone", path=info.path, backbone_id=info.id, source=source,
                       provenance={"arch": info.arch, "image_size": image_size, "num_classes": info.num_classes,
                                   "kind": kind, "dim": info.dim, **provenance})
    return info


def current_backbone(store: Store) -> BackboneInfo | None:
    """The most recently registered backbone whose file still exists, else None."""
    row = store.latest_artifact("backbone")
    if row is None or not Path(row["path"]).is_file():
        return None
    p = row["provenance"]
    kind = p.get("kind", "pretrained" if row["source"].startswith("ImageNet") else "noisy")  # a record without a kind
    return BackboneInfo(path=row["path"], id=row["backbone_id"], source=row["source"], arch=p["arch"],
                        image_size=p["image_size"], num_classes=p["num_classes"], kind=kind, dim=p.get("dim"))


def load_backbone_artifact(info: BackboneInfo) -> Backbone:
    """The backbone of `info`, in eval mode on the CPU."""
    return load_backbone(info.path)[0]


def save_scorer_artifact(store: Store, payload: dict[str, Any], *, method: str, backbone: BackboneInfo,
                         provenance: dict[str, Any]) -> Path:
    """Write one round's scoring checkpoint atomically under models/ and register it; returns its path.

    payload: tensors and plain values, no numpy (`load_scorer` returns it with "method" and "backbone" added);
    provenance: plain JSON values, e.g. {"max_verdict_id": ..., "n_verdicts": ...}.
    """
    path = state_dir(store) / "models" / f"{method}-{uuid.uuid4().hex[:8]}.pt"
    with atomic_write(path) as f:
        torch.save(payload | {"method": method, "backbone": backbone.asdict()}, f)
    store.add_artifact(kind="scorer", path=str(path), backbone_id=backbone.id, source=method,
                       provenance={"method": method, **provenance})
    return path


def save_classifier_artifact(store: Store, model: Backbone, path: str | Path, *, class_names: list[str],
                             source: str, provenance: dict[str, Any]) -> Path:
    """Write an exported classifier (`train-classifier`) atomically to `path` and register it.

    provenance: plain JSON values (method, weights, rounds, epochs, verdicts, ...); also the checkpoint's meta.
    """
    path = Path(path).resolve()
    save_backbone(model, path, class_names=class_names, meta={"source": source, **provenance})
    store.add_artifact(kind="classifier", path=str(path), backbone_id=backbone_id(model), source=source,
                       provenance=provenance)
    return path


def load_scorer(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by `save_scorer_artifact` (CPU tensors). Loaded with ``weights_only=True``: the file
    is never unpickled beyond tensors, dicts, lists, tuples, numbers and strings (anything else raises
    ``pickle.UnpicklingError``), which is all a round writes (probe and calibrator states, CleanNet checkpoints)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def imagenet_network(arch: str, *, weights_path: str | None) -> Backbone:
    """The frozen ImageNet network (1000 classes, eval mode, CPU) whose prefix a tail adapted round reads; no
    ImageNet weights found raises ValueError (a tail on random features would not adapt anything)."""
    state, message = load_imagenet_weights(arch, weights_path=weights_path)
    if state is None:
        raise ValueError(f"adapting the last blocks needs ImageNet {arch} weights: {message}")
    net = Backbone(arch, 1000)
    net.load_pretrained(state)
    return net.eval()


def save_adapted_artifact(store: Store, fit: CrossFit, probs: np.ndarray, *, ids: np.ndarray, class_ids: list[int],
                          arch: str, image_size: int, config: dict[str, Any], backbone_id: str, layers: str = "full",
                          prefix: Backbone | None = None, weights_path: str | None = None) -> dict[str, str]:
    """Write an adapted round's K networks and out-of-fold probabilities (N, C) once, atomically, and register
    them; -> the reference every later scorer checkpoint of the adaptation keeps ({"path": ...}).
    layers "full": fit.states are whole networks; "tail": cleannet_core.adapt.Tail states on the frozen `prefix`
    (imagenet_network(arch, weights_path=weights_path)), whose content id is kept to check it when rescoring."""
    if layers not in ("full", "tail") or (layers == "tail") != (prefix is not None):
        raise ValueError(f"layers must be 'full', or 'tail' with its prefix network; got {layers!r}")
    tail = {"weights_path": weights_path, "prefix_id": content_id(prefix)} if prefix is not None else {}
    path = state_dir(store) / "models" / f"adapted-{uuid.uuid4().hex[:8]}.pt"
    with atomic_write(path) as f:
        torch.save({"format": ADAPTED_FORMAT, "layers": layers, "arch": arch, "image_size": image_size,
                    "config": config, "class_ids": list(class_ids),
                    "ids": torch.from_numpy(np.asarray(ids, np.int64)),
                    "probs": torch.from_numpy(np.asarray(probs, np.float16)), "states": fit.states} | tail, f)
    what = "cross-fitted networks" if layers == "full" else "cross-fitted Lite0 tails"
    store.add_artifact(kind="classifier", path=str(path), backbone_id=backbone_id,
                       source=f"adapted: {len(fit.states)} {what}",
                       provenance={"arch": arch, "image_size": image_size, "n_images": len(ids), "layers": layers,
                                   **config} | tail)
    return {"path": str(path)}


def adapted_probs(ref: dict[str, str], *, ids: np.ndarray, paths: Sequence[str], class_ids: list[int],
                  device: str = "cpu") -> np.ndarray | None:
    """(N, C) probabilities of images (ids, paths) from an adapted file: its out-of-fold probabilities for the
    images it was fitted on, the networks' mean for images added since (whole networks, or the tails on the
    frozen ImageNet prefix). None when the file cannot be read, is of a newer format, its classes differ or its
    prefix's ImageNet weights are gone or changed (the round then scores the frozen features)."""
    try:
        saved = torch.load(ref["path"], map_location="cpu", weights_only=True)
    except (OSError, EOFError, RuntimeError, KeyError) as e:
        log.warning("adapted networks unreadable (%s): the round scores the frozen features", e)
        return None
    if saved.get("format", 1) > ADAPTED_FORMAT:
        log.warning("adapted file of format %s (this version reads <= %s): the round scores the frozen features",
                    saved.get("format"), ADAPTED_FORMAT)
        return None
    if saved["class_ids"] != list(class_ids):
        return None
    pos = {int(i): k for k, i in enumerate(saved["ids"].tolist())}
    known = np.array([int(i) in pos for i in ids], bool)
    probs = np.zeros((len(ids), len(class_ids)), np.float32)
    if known.any():
        probs[known] = saved["probs"].float().numpy()[[pos[int(i)] for i in np.asarray(ids)[known]]]
    if not (~known).any():
        return probs
    new = [paths[k] for k in np.flatnonzero(~known)]
    if saved.get("layers", "full") == "full":
        probs[~known], _ = ensemble_probs(saved["states"], new, arch=saved["arch"], num_classes=len(class_ids),
                                          image_size=saved["image_size"], device=device)
        return probs
    try:
        prefix = imagenet_network(saved["arch"], weights_path=saved["weights_path"])
    except (OSError, ValueError) as e:
        log.warning("the adapted tails' ImageNet prefix cannot be loaded (%s): the round scores the frozen "
                    "features", e)
        return None
    if content_id(prefix) != saved["prefix_id"]:
        log.warning("the ImageNet weights changed since the tails were adapted: the round scores the frozen features")
        return None
    probs[~known], _ = tail_probs(saved["states"], new, np.full(len(new), -1), backbone=prefix,
                                  cut=saved["config"]["cut"], arch=saved["arch"], num_classes=len(class_ids),
                                  image_size=saved["image_size"], device=device)
    return probs

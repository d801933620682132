"""One retraining round: images -> features -> references -> CleanNet -> scores -> new current model.

The worker runs `run_round` whenever enough verdicts arrived or a lead asked; the CLI runs its phases one by
one (`extract`, `train`, `score`). Heavy lifting is in `cleannet_core`; SQL is in `annotator.store`.

Files live under the state folder (the database's folder): backbones/, features/ (content-keyed float16
cache), models/ (CleanNet checkpoints, written to a temp file then renamed, before the database points at
them). A model version becomes current in one transaction after all its scores are written, so a crash at
any moment leaves the previous model current.
"""
from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from itertools import islice
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cleannet_core.alternate import METHODS, round_weights, training_weights
from cleannet_core.classifier import (LITE_ARCHS, Backbone, ClassifierConfig, is_small, load_backbone,
                                      resolve_device, save_backbone, train_classifier)
from cleannet_core.features import backbone_id, extract_features, load_imagenet_weights
from cleannet_core.metrics import detection_report
from cleannet_core.model import CleanNet
from cleannet_core.references import KMeansConfig, build_references
from cleannet_core.probe import Probe, ProbeConfig
from cleannet_core.score import Scores, score_images
from cleannet_core.train import TrainConfig, train_cleannet
from cleannet_core.transfer import DELTA, TransferScore, fit_transfer_scores, score_with_probe

from .store import Store

log = logging.getLogger(__name__)
Report = Callable[[str, float, str], None]  # (phase, progress in [0, 1], message)
SCORE_CHUNK = 50_000  # score rows written between progress reports
REVIEWED = 10.0  # added to the queue uncertainty of images with a live verdict (|score - delta| <= 2)
BACKBONES = ("pretrained", "finetuned", "noisy")


@dataclass
class RoundConfig:
    method: str = "transfer"           # transfer: calibrated class-agnostic signals (issue 6) | paper: CleanNet
    arch: str = "efficientnet_lite0"   # backbone: efficientnet_lite0 (ImageNet weights from the installed
                                       # package) | resnet18 | resnet50 (ImageNet weights only from a local
                                       # file or the torch cache)
    backbone: str = "pretrained"       # pretrained: frozen ImageNet features, nothing trained before the first
                                       # model | finetuned: ImageNet weights fine-tuned on the noisy labels |
                                       # noisy: trained from scratch on the noisy labels
    image_size: int = 0                # input size; 0 = auto: Lite0 128 px for small images (<= 64 px), ResNet
                                       # 32 px; 224 for larger images
    backbone_epochs: int = 10          # epochs when the backbone is trained on the noisy labels
    backbone_lr: float = 0.02          # its peak LR (0.1 diverged in the first epoch on a few thousand images)
    weights_path: str | None = None    # local ImageNet weights file (else the torch cache, else train)
    steps: int = 4000                  # CleanNet steps per round (paper: 60k; LR drops at half)
    num_ref: int = 32                  # K references per class
    device: str = "auto"               # cuda when present

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")

    def classifier_config(self, image_size: int, n_images: int, **kw) -> ClassifierConfig:
        """The backbone/classifier training settings of this round for n_images images of image_size px."""
        return ClassifierConfig(arch=self.arch, epochs=self.backbone_epochs, image_size=image_size,
                                lr=self.backbone_lr, batch_size=min(128, max(8, n_images // 8)), **kw)


@dataclass
class Data:
    ids: np.ndarray           # (N,) image ids, status ok
    paths: list[str]
    labels: np.ndarray        # (N,) class index 0..C-1 (position in class_ids)
    class_ids: np.ndarray     # (C,) store class ids
    class_names: list[str]


def load_data(store: Store) -> Data:
    classes = sorted(store.classes(), key=lambda c: c["id"])
    class_ids = np.array([c["id"] for c in classes], dtype=np.int64)
    pos = {cid: i for i, cid in enumerate(class_ids)}
    ids, paths, labels = [], [], []
    for row in store.iter_images():
        if row["status"] == "ok":
            ids.append(row["id"])
            paths.append(row["path"])
            labels.append(pos[row["label_id"]])
    return Data(np.array(ids, dtype=np.int64), paths, np.array(labels, dtype=np.int64), class_ids,
                [c["name"] for c in classes])


def state_dir(store: Store) -> Path:
    return Path(store.path).resolve().parent


def pick_image_size(store: Store, cfg: RoundConfig) -> int:
    """cfg.image_size, or by the median image side: small images (<= 64 px) go to Lite0 upscaled to 128 px
    (benchmarks/README.md, "Pretrained backbone": quality vs CPU time) and to a ResNet at their own 32 px."""
    if cfg.image_size:
        return cfg.image_size
    sizes = [min(r["width"], r["height"]) for r, _ in zip(store.iter_images(), range(500)) if r["width"]]
    if sizes and float(np.median(sizes)) <= 64:
        return 128 if cfg.arch in LITE_ARCHS else 32
    return 224


def ensure_backbone(store: Store, data: Data, cfg: RoundConfig, report: Report, *,
                    retrain_weights: np.ndarray | None = None) -> tuple[Backbone, dict]:
    """The backbone whose features feed the scoring model, and a description of where its weights came from.

    The stored one while it matches the round's arch, kind and size; else, by cfg.backbone: `pretrained` the
    ImageNet weights as they are (local file, the installed package or the torch cache; never downloaded),
    `finetuned` those weights trained on the noisy labels, `noisy` a backbone trained from scratch on them (the
    paper's features come from such a classifier, §1). Without ImageNet weights offline, the first two train
    from scratch too, with a warning. `retrain_weights` (N,) retrains the stored backbone on the noisy labels
    with those per-sample weights (full round, §6).
    """
    info = store.get_setting("backbone")
    size = pick_image_size(store, cfg)
    have = info and Path(info["path"]).exists()
    if retrain_weights is None and have and info.get("num_classes") == len(data.class_ids) and (
            info.get("arch"), info.get("kind", "noisy"), info.get("image_size")) == (cfg.arch, cfg.backbone, size):
        model, _ = load_backbone(info["path"])
        return model, info
    init_state, source, kind = None, None, cfg.backbone
    if retrain_weights is not None and have:
        init_state = load_backbone(info["path"])[0].state_dict()
        source, kind = "retrained on the noisy labels with CleanNet's w_soft weights", info.get("kind", kind)
    elif cfg.backbone != "noisy":
        state, message = load_imagenet_weights(cfg.arch, weights_path=cfg.weights_path)
        if state is not None and cfg.backbone == "pretrained":
            model = Backbone(cfg.arch, len(data.class_ids), small_input=is_small(size))
            model.load_pretrained(state)
            return _save_backbone(store, model.eval(), data, f"ImageNet ({message})", size, cfg, kind)
        if state is not None:
            init_state, source = state, f"ImageNet, fine-tuned on the noisy labels ({message})"
        else:
            report("backbone", 0.0, message)
            log.warning(message)
            source = "trained on the noisy labels (no ImageNet weights available offline)"
    else:
        source = "trained from scratch on the noisy labels"
    ccfg = cfg.classifier_config(size, len(data.ids))
    report("backbone", 0.0, f"training the {cfg.arch} backbone on {len(data.ids)} images")

    def on_epoch(epoch: int, _model: Backbone, stats: dict) -> None:
        report("backbone", epoch / ccfg.epochs,
               f"backbone epoch {epoch}/{ccfg.epochs}: train accuracy {stats['train_acc']:.3f} on the noisy labels")

    model = train_classifier(data.paths, data.labels, len(data.class_ids), sample_weights=retrain_weights,
                             config=ccfg, init_state=init_state, device=cfg.device, progress=False,
                             on_epoch=on_epoch)
    return _save_backbone(store, model, data, source, size, cfg, kind)


def _save_backbone(store: Store, model: Backbone, data: Data, source: str, size: int,
                   cfg: RoundConfig, kind: str) -> tuple[Backbone, dict]:
    path = state_dir(store) / "backbones" / f"backbone-{uuid.uuid4().hex[:8]}.pt"
    save_backbone(model, path, class_names=data.class_names, meta={"source": source})
    info = {"path": str(path), "source": source, "arch": cfg.arch, "kind": kind, "image_size": size,
            "num_classes": len(data.class_ids), "id": backbone_id(model)}
    store.set_setting("backbone", info)
    return model, info


def features(store: Store, data: Data, model: Backbone, info: dict, cfg: RoundConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features of data.paths from the content-keyed cache and (N,) bool readable; the unreadable
    images (zero rows) are reported and left out of the references and the probe's training."""
    res = extract_features(model, data.paths, cache_dir=state_dir(store) / "features", backbone_id=info["id"],
                           image_size=info["image_size"], device=cfg.device, progress=False)
    if res.errors:
        store.add_ingest_errors({"source": "features", "path": p, "reason": r} for p, r in res.errors)
        log.warning("%d images could not be read for features", len(res.errors))
    return res.features, res.ok


def verdict_split(store: Store, data: Data, readable: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Latest live correct/wrong verdict per image -> train and validation index arrays into data.

    Audit verdicts (random draws) are unbiased: those on odd image ids validate (delta, checkpoint, the
    model's reported error); everything else trains. 'unsure' verdicts are left out, and so are images not
    `readable` (N,) bool (no features: the verdict stays in the log, it only trains nothing).
    """
    latest: dict[int, dict] = {}
    for v in store.live_verdicts():
        if v["verdict"] != "unsure" and (v["image_id"] not in latest or v["id"] > latest[v["image_id"]]["id"]):
            latest[v["image_id"]] = v
    where = {int(i): k for k, i in enumerate(data.ids)}
    tr, va, tr_ok, va_ok = [], [], [], []
    for image_id, v in latest.items():
        if image_id not in where or (readable is not None and not readable[where[image_id]]):
            continue
        val = v["reason"] == "audit" and image_id % 2 == 1
        (va if val else tr).append(where[image_id])
        (va_ok if val else tr_ok).append(v["verdict"] == "correct")
    return {"train": np.array(tr, np.int64), "train_ok": np.array(tr_ok, bool),
            "val": np.array(va, np.int64), "val_ok": np.array(va_ok, bool)}


def run_round(store: Store, cfg: RoundConfig = RoundConfig(), *, full: bool = False,
              report: Report = lambda *a: None) -> int:
    """Retrain and rescore everything; returns the new current model version."""
    data = load_data(store)
    if len(data.ids) == 0:
        raise ValueError("no images: ingest some first")
    device = resolve_device(cfg.device)
    current = store.current_model()
    weights = None
    if full and current:
        report("backbone", 0.0, "full round: retraining the backbone with w_soft weights")
        weights = full_round_weights(store, data, current)
    report("features", 0.0, "loading backbone")
    model, info = ensure_backbone(store, data, cfg, report, retrain_weights=weights)
    report("features", 0.0, f"extracting features ({info['source']})")
    feats, readable = features(store, data, model, info, cfg)
    report("references", 0.0, "k-means reference sets")
    refs, counts = build_references(feats[readable], data.labels[readable], len(data.class_ids),
                                    config=KMeansConfig(k=cfg.num_ref), device=device)
    split = verdict_split(store, data, readable)
    max_verdict = store.max_verdict_id()
    fit = _fit_transfer if cfg.method == "transfer" else _fit_paper
    sc, delta, saved, best_step = fit(feats, readable, data, refs, counts, split, cfg,
                                      current if not full else None, device, report)
    metrics = _metrics(sc.score, delta, data, split, best_step, info, max_verdict) | {"method": cfg.method}
    ckpt = state_dir(store) / "models" / f"{cfg.method}-{uuid.uuid4().hex[:8]}.pt"
    _atomic_save(saved | {"method": cfg.method, "delta": delta, "class_ids": data.class_ids.tolist(),
                          "backbone": info, "refs": torch.from_numpy(refs)}, ckpt)
    version = store.add_model(delta=delta, metrics=metrics, checkpoint=str(ckpt), backbone=info["source"],
                              n_verdicts=int(len(split["train"]) + len(split["val"])))
    publish_scores(store, version, data, sc, delta, report)
    return version


def full_round_weights(store: Store, data: Data, current: dict) -> np.ndarray:
    """(N,) weights of the full round's backbone retraining, exactly as `train-classifier` weights (spec §6,
    cleannet_core.alternate): w_soft = max(0, score) of the current model, 1 / 0 for images with a live
    correct / wrong verdict, then divided by their mean."""
    split = verdict_split(store, data)
    w = round_weights(_current_scores(store, data), current["delta"], "soft",
                      verified_idx=np.concatenate([split["train"], split["val"]]),
                      verified_ok=np.concatenate([split["train_ok"], split["val_ok"]]))
    return training_weights(w, "mean")


def _fit_paper(feats, readable, data, refs, counts, split, cfg, current, device,
               report) -> tuple[Scores, float, dict, int]:
    """The paper's CleanNet on the verdicts (warm-started from the current model when it fits)."""
    tcfg = TrainConfig.shortened(cfg.steps)
    init = _load_model(current, feats.shape[1], refs.shape[1]) if current else None
    report("training", 0.0, f"CleanNet on {len(split['train'])} + {len(split['val'])} verdicts")

    def on_step(step: int, record: dict) -> None:
        if step % 100 == 0:
            report("training", step / cfg.steps, f"step {step}/{cfg.steps}, loss {record['loss']:.3f}")

    res = train_cleannet(feats, data.labels, refs, verified_idx=split["train"], verified_ok=split["train_ok"],
                         val_idx=split["val"], val_ok=split["val_ok"], config=tcfg, init=init, device=device,
                         callback=on_step, pool=readable)
    report("scoring", 0.0, f"scoring {len(data.ids)} images")
    sc = score_images(res.model, feats, data.labels, refs, valid_classes=counts > 0)
    return sc, res.delta, {"cleannet": res.model.checkpoint()}, res.best_step


def _fit_transfer(feats, readable, data, refs, counts, split, cfg, current, device,
                  report) -> tuple[Scores, float, dict, None]:
    """Out-of-fold probe (folds = image id % 5): log-odds + margin, calibrated on the training verdicts."""
    message = (f"out-of-fold linear probe on {int(readable.sum())} images, "
               f"calibrated on {len(split['train'])} verdicts")
    report("training", 0.0, message)
    fit = fit_transfer_scores(feats, data.labels, data.ids % ProbeConfig.folds, len(data.class_ids), refs,
                              split["train"], split["train_ok"], valid_classes=counts > 0, fit_rows=readable,
                              device=device, progress=lambda p: report("training", 0.9 * p, message))
    if fit.score.calibrator is None:
        report("training", 0.9, "too few verdicts of each kind: flagging where the probe prefers another class")
    return fit.scores, DELTA, {"probe": fit.probe.state(), "transfer": fit.score.state()}, None


def rescore(store: Store, cfg: RoundConfig = RoundConfig(), *, report: Report = lambda *a: None) -> int:
    """Score every image (new ones included) with the current model; published as a new version."""
    current = store.current_model()
    if current is None:
        raise ValueError("no model yet: run `train` first")
    ckpt = torch.load(current["checkpoint"], map_location="cpu", weights_only=False)
    data = load_data(store)
    if ckpt["class_ids"] != data.class_ids.tolist():
        raise ValueError("the classes changed since the current model: run `train` instead")
    model, info = ensure_backbone(store, data, cfg, report)
    if info["id"] != ckpt["backbone"]["id"]:
        raise ValueError("the backbone changed since the current model: run `train` instead")
    feats, _ = features(store, data, model, info, cfg)
    refs = ckpt["refs"].numpy()
    valid = np.abs(refs).sum(axis=(1, 2)) > 0
    if ckpt.get("method", "paper") == "paper":
        sc = score_images(CleanNet.from_checkpoint(ckpt["cleannet"]), feats, data.labels, refs, valid_classes=valid)
    else:  # a new image's fold model never saw it; an old image's is the one that scored it before
        sc = score_with_probe(TransferScore.from_state(ckpt["transfer"]), Probe.from_state(ckpt["probe"]), feats,
                              data.labels, data.ids % ProbeConfig.folds, refs, valid_classes=valid)
    metrics = dict(current.get("metrics") or {}, rescored_from=current["version"])
    version = store.add_model(delta=current["delta"], metrics=metrics, checkpoint=current["checkpoint"],
                              backbone=current.get("backbone"), n_verdicts=current.get("n_verdicts"))
    publish_scores(store, version, data, sc, current["delta"], report)
    return version


def publish_scores(store: Store, version: int, data: Data, sc, delta: float, report: Report) -> None:
    """Write the scores of `version`, make it current in one transaction, drop older versions' scores."""
    sugg = np.where(sc.suggested >= 0, data.class_ids[np.maximum(sc.suggested, 0)], -1)
    # The queue scans the (label, uncertainty) index from the most uncertain end and skips reviewed images;
    # pushing images that already have a live verdict behind everything else keeps that scan short.
    reviewed = {v["image_id"] for v in store.live_verdicts()}
    rows = ((int(i), int(data.class_ids[y]), float(s), abs(float(s) - delta) + (REVIEWED if i in reviewed else 0),
             int(g) if g >= 0 else None, float(gs) if g >= 0 else None)
            for i, y, s, g, gs in zip(data.ids, data.labels, sc.score, sugg, sc.suggested_score))
    report("writing", 0.0, f"writing scores of version {version}")
    done = 0
    while chunk := list(islice(rows, SCORE_CHUNK)):
        done += store.write_scores(version, chunk)
        report("writing", done / len(data.ids), f"{done} of {len(data.ids)} scores written")
    store.make_current(version)
    for old in store.models():
        if old["version"] != version:
            store.delete_scores(old["version"])
    report("idle", 1.0, f"model version {version} is current")


def _metrics(score, delta, data, split, best_step, info, max_verdict) -> dict:
    flagged = score < delta
    per_class = {name: float(flagged[data.labels == c].mean()) if (data.labels == c).any() else None
                 for c, name in enumerate(data.class_names)}
    out = {"estimated_noise_rate": float(flagged.mean()), "per_class_noise_rate": per_class,
           "max_verdict_id": max_verdict, "best_step": best_step, "backbone": info["source"],
           "backbone_arch": info.get("arch"), "backbone_kind": info.get("kind"), "image_size": info.get("image_size"),
           "n_train": int(len(split["train"])), "n_val": int(len(split["val"]))}
    if len(split["val"]):
        out["audit"] = detection_report(score[split["val"]], split["val_ok"], delta)
    return out


def _current_scores(store: Store, data: Data) -> np.ndarray:
    by_id = store.current_scores()
    return np.array([by_id.get(int(i), 1.0) for i in data.ids], dtype=np.float32)


def _load_model(current: dict, dim: int, k: int) -> CleanNet | None:
    """The current CleanNet as a warm start, when it fits the new features."""
    try:
        ckpt = torch.load(current["checkpoint"], map_location="cpu", weights_only=False)
    except (OSError, TypeError, RuntimeError) as e:
        log.warning("cannot warm-start from %s: %s", current.get("checkpoint"), e)
        return None
    if "cleannet" not in ckpt:  # the current model is a transfer model
        return None
    model = CleanNet.from_checkpoint(ckpt["cleannet"])
    return model if model.cfg.img_dim == dim and model.cfg.num_ref == k else None


def _atomic_save(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


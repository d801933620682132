"""Adapting only the last Lite0 blocks, on cached intermediate maps, cross-fitted (an experiment on the dev cases).

    python -m benchmarks.head_adapt --data $CIFAR10N --case dev-structured-30 prepare
    python -m benchmarks.head_adapt --case dev-structured-30 run --cut 8 --epochs 2 --lr 0.01

`prepare`: the robustness session of `benchmarks.adapted` up to the adapted round (frozen first model, 100
truthful verdicts from the product's queue, a frozen round every 50; class split --split, seed 0), then the frozen
Lite0 run once to the input of blocks CUTS for every image and its mirror, cached as float16 maps.

`run`: K = 2 cross-fitted copies of blocks[cut:] + _conv_head + a linear head, trained on the maps of the images
outside their fold (the labels and weights `adapt_round.targets` gives, label smoothing, weight decay), each
predicting its held-out fold (mean over the two views). The out-of-fold probabilities (N, C) replace the probe's
in the robust score as `adapt_round.run_adapt_round` does; judged on the unverified classes as
`benchmarks.adapted` judges (AUROC of P(correct), error at the fitted threshold, x flagging nothing).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from annotator import adapt_round, pipeline
from annotator.artifacts import current_backbone
from annotator.publish import with_conflicts
from annotator.round_config import RoundConfig, load_round_config, save_round_config
from annotator.store import Store
from cleannet_core import scoring
from cleannet_core.classifier import Backbone, ImageDataset, make_transform
from cleannet_core.features import load_imagenet_weights
from cleannet_core.metrics import auroc
from cleannet_core.probe import ProbeConfig, fit_probe

from .adapted import LEVEL, judged
from .common import CACHE
from .robustness import answer, session_store, template
from .suite_cases import OPEN_SET, build, by_name, truth

CUTS = (8, 11, 15, 16)   # block indices whose input is cached: stage 5 (80 x 8 x 8), stage 6 (112 x 8 x 8), the
                         # last block (192 x 4 x 4), the head conv (320 x 4 x 4); at 128 px


def folder(case: str, split: int = 0) -> Path:
    return CACHE / "suite" / "state" / case / ("head_adapt" if split == 0 else f"head_adapt_split{split}")


def prepare(args) -> None:
    """The session up to the adapted round, its truth and frozen scores, and the cached maps."""
    case = by_name(args.case)
    built = build(case, data=args.data, cache=CACHE)
    truths = truth(built)
    db = template(case, built, CACHE)
    split = case.splits()[args.split]
    out = folder(case.name, args.split)
    store = session_store(db, out / "session")
    try:
        data = pipeline.load_data(store)
        store.set_verify([data.class_names[c] for c in split], True)
        save_round_config(store, RoundConfig(adapt="on"))
        rng, given = random.Random(0), 0
        pipeline.run_round(store, load_round_config(store))
        for level in (LEVEL // 2, LEVEL):
            given += answer(store, level - given, truths, rng)
            pipeline.run_round(store, load_round_config(store))
        t = [truths[str(Path(p).resolve())] for p in data.paths]
        wrong = np.array([clean != data.class_names[y] for (_, clean, _), y in zip(t, data.labels)])
        open_set = np.array([clean == OPEN_SET for _, clean, _ in t])
        by_id = store.current_scores()
        np.savez(out / "truth.npz", wrong=wrong, open_set=open_set, held=~np.isin(data.labels, split),
                 frozen=np.array([by_id[int(i)] for i in data.ids]), delta=store.current_model()["delta"],
                 split=np.array(split))
        print(json.dumps({"verdicts": given}), flush=True)
    finally:
        store.close()
    save_maps(args)


def save_maps(args) -> None:
    """maps_<cut>.npy of every cut in args.cuts, from one pass of the frozen network."""
    out = folder(args.case, args.split)
    with Store(out / "session" / "annotator.db") as store:
        data = pipeline.load_data(store)
        size = current_backbone(store).image_size
        cfg = load_round_config(store)
    t0 = time.perf_counter()
    maps = extract_maps(data.paths, cuts=args.cuts, arch=cfg.arch, image_size=size, weights_path=cfg.weights_path)
    for c, m in maps.items():
        np.save(out / f"maps_{c}.npy", m)
    print(json.dumps({"image_size": size, "maps_s": round(time.perf_counter() - t0, 1),
                      "shapes": {c: list(m.shape) for c, m in maps.items()}}), flush=True)


@torch.no_grad()
def extract_maps(paths: list[str], *, cuts: tuple[int, ...], arch: str, image_size: int, weights_path: str | None) -> dict[int, np.ndarray]:
    """{cut: (N, 2, C, H, W) float16} the frozen network's input to block `cut`, view 0 the image, 1 its mirror."""
    state, _ = load_imagenet_weights(arch, weights_path=weights_path)
    net = Backbone(arch, 1000)
    net.load_pretrained(state)
    net.eval()
    ds = ImageDataset(paths, None, make_transform(image_size, train=False, arch=arch), image_size)
    maps: dict[int, list[torch.Tensor]] = {c: [] for c in cuts}
    for x, _, _, _ in DataLoader(ds, batch_size=100, num_workers=0):
        x = torch.stack([x, x.flip(3)], 1).flatten(0, 1)             # (2B, 3, S, S)
        h = F.relu6(net._bn0(net._conv_stem(x)))
        for i, block in enumerate(net._blocks):
            if i in maps:
                maps[i].append(h.unflatten(0, (-1, 2)).half())
            if i >= max(cuts):
                break
            h = block(h)
        if len(net._blocks) in maps:
            maps[len(net._blocks)].append(h.unflatten(0, (-1, 2)).half())
    return {c: torch.cat(m).numpy() for c, m in maps.items()}


class Tail(nn.Module):
    """blocks[cut:] -> _conv_head -> ReLU6 -> mean pool -> the probe's head (standardised log1p features, linear):
    (B, C_cut, H, W) -> (B, classes) logits."""

    def __init__(self, net: Backbone, cut: int, num_classes: int):
        super().__init__()
        self.blocks = nn.ModuleList(copy.deepcopy(list(net._blocks)[cut:]))
        self.conv_head, self.bn = copy.deepcopy(net._conv_head), copy.deepcopy(net._bn1)
        d = net.num_features
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.w = nn.Parameter(torch.zeros(d, num_classes))
        self.b = nn.Parameter(torch.zeros(num_classes))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return F.relu6(self.bn(self.conv_head(x))).mean(dim=(2, 3))

    def head(self, f: torch.Tensor) -> torch.Tensor:
        return ((torch.log1p(f) - self.mean) / self.std) @ self.w + self.b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(x))


def init_head(tail: Tail, feats: torch.Tensor, labels: np.ndarray, weights: np.ndarray, *, how: str,
              l2: float) -> None:
    """The head from the product's probe fitted on the frozen pooled features (M, D) of the rows with weight > 0
    (how = probe), or standardised on them with zero weights and the class prior as bias (fresh)."""
    keep = weights > 0
    x = torch.log1p(feats[keep])
    tail.mean.copy_(x.mean(0))
    tail.std.copy_(x.std(0).clamp_min(1e-3))
    prior = np.bincount(labels[keep], minlength=tail.b.shape[0]) + 1.0
    with torch.no_grad():
        tail.b.copy_(torch.log(torch.from_numpy(prior / prior.sum()).float()))
    if how == "probe":
        p = fit_probe(feats[keep].numpy(), labels[keep], np.zeros(int(keep.sum()), np.int64), tail.b.shape[0],
                      config=ProbeConfig(folds=1, l2=l2))
        tail.mean.copy_(p.mean[0])
        tail.std.copy_(p.std[0])
        with torch.no_grad():
            tail.w.copy_(p.w[0])
            tail.b.copy_(p.b[0])


def batched(model: nn.Module, x: np.ndarray, fn: str = "forward", bs: int = 512) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([getattr(model, fn)(torch.from_numpy(x[i:i + bs]).float()) for i in range(0, len(x), bs)])


def cross_fit_tail(maps: np.ndarray, labels: np.ndarray, weights: np.ndarray, folds: np.ndarray, num_classes: int,
                   net: Backbone, args) -> np.ndarray:
    """maps (N, 2, C, H, W) -> out-of-fold probabilities (N, classes), mean over the two views.

    Long because: the head's initial fit, the SGD loop with its BN mode and the held-out prediction are one
    experiment's knobs, kept together so a run reads top to bottom."""
    probs = np.zeros((len(labels), num_classes), np.float32)
    for f in range(adapt_round.FOLDS):
        torch.manual_seed(f)
        tr, held = np.flatnonzero(folds != f), np.flatnonzero(folds == f)
        tail = Tail(net, args.cut, num_classes)
        x = maps[tr].reshape(-1, *maps.shape[2:])                        # (2M, C, H, W): both views
        y = torch.from_numpy(np.repeat(labels[tr], 2))
        w = torch.from_numpy(np.repeat(weights[tr], 2).astype(np.float32))
        tail.eval()
        init_head(tail, batched(tail, x, "pooled"), y.numpy(), w.numpy(), how=args.head, l2=args.head_l2)
        head = [tail.w, tail.b]
        params = [{"params": head, "weight_decay": 0.0}]
        if not args.fc_only:
            params.append({"params": [p for n, p in tail.named_parameters() if n not in ("w", "b")], "lr": args.lr})
        opt = torch.optim.SGD(params, lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.wd)
        steps_per = math.ceil(len(x) / args.batch)
        total = max(args.epochs * steps_per, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
        g = torch.Generator().manual_seed(f)
        for epoch in range(args.epochs):
            tail.train() if args.bn == "train" else tail.eval()
            order = torch.randperm(len(x), generator=g)
            correct = 0
            for s in range(steps_per):
                idx = order[s * args.batch:(s + 1) * args.batch]
                xb = torch.from_numpy(x[idx.numpy()]).float()
                logits = tail(xb)
                ce = F.cross_entropy(logits, y[idx], reduction="none", label_smoothing=args.smoothing)
                loss = (w[idx] * ce).mean() + args.head_l2 / 2 * tail.w.square().sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                correct += (logits.argmax(1) == y[idx]).sum().item()
            print(f"  fold {f} epoch {epoch + 1}: train acc {correct / len(x):.3f}", flush=True)
        tail.eval()
        for v in range(2):
            probs[held] += batched(tail, np.ascontiguousarray(maps[held, v])).softmax(1).numpy() / 2
    return probs


def run(args) -> dict:
    """One variant on the prepared session: cross-fit, robust score, judged."""
    out = folder(args.case, args.split)
    t = np.load(out / "truth.npz")
    maps = np.load(out / f"maps_{args.cut}.npy")
    work = out / "work"
    store = session_store(out / "session" / "annotator.db", work)
    try:
        data = pipeline.load_data(store)
        cfg = load_round_config(store)
        verdicts = store.live_verdicts()
        split = pipeline.verdict_split(store, data, verdicts=verdicts)
        labels, weights = adapt_round.targets(store, data, verdicts=verdicts)
        folds = adapt_round.adapt_folds(data.ids, adapt_round.FOLDS)
        state, _ = load_imagenet_weights(cfg.arch, weights_path=cfg.weights_path)
        net = Backbone(cfg.arch, 1000)
        net.load_pretrained(state)
        t0 = time.perf_counter()
        probs = cross_fit_tail(maps, labels, weights, folds, len(data.class_ids), net, args)
        train_s = time.perf_counter() - t0
        data_in = scoring.RoundData(feats=np.zeros((len(data.ids), 0), np.float16), labels=data.labels, folds=folds,
                                    num_classes=len(data.class_ids), refs=np.zeros((len(data.class_ids), 1, 1)),
                                    valid=np.ones(len(data.class_ids), bool),
                                    readable=np.ones(len(data.ids), bool), train_idx=split.train,
                                    train_ok=split.train_correct, val_idx=split.val, val_ok=split.val_correct,
                                    probs=probs)
        fitted = scoring.method("robust").fit(data_in, device=torch.device("cpu"))
        fitted = replace(fitted, scores=with_conflicts(store, data, fitted.scores,
                                                       weight=pipeline.conflict_weight(cfg, fitted.state),
                                                       verdicts=verdicts))
        guard = adapt_round.compare(store, data, split, fitted.scores.score, fitted.delta)
        held = t["held"]
        agree = probs.argmax(1) == data.labels
        own = probs[np.arange(len(probs)), data.labels]
        diag = {"agree_label": round(float(agree[held].mean()), 3),
                "agree_clean_rows": round(float(agree[held & ~t["wrong"]].mean()), 3),
                "own_p_auroc": round(auroc(own[held], ~t["wrong"][held]), 3)}
        res = {"variant": {k: v for k, v in vars(args).items() if k not in ("data", "func")},
               "train_s": round(train_s, 1), "oof": diag, "guard": guard,
               "frozen": judged(t["frozen"], float(t["delta"]), t["wrong"], t["open_set"], held),
               "adapted": judged(fitted.scores.score, fitted.delta, t["wrong"], t["open_set"], held)}
    finally:
        store.close()
    for k in ("frozen", "adapted"):
        r = res[k]
        print(f"  {k:8s} auroc {r['auroc']:.3f} error {r['error']:.3f} ({r['x_flag_nothing']:.2f} x nothing) "
              f"correct flagged {r['correct_flagged']:.3f} open caught {r['open_caught']}", flush=True)
    print(f"  oof {res['oof']} train_s {res['train_s']} guard {guard}", flush=True)
    with open(out / "results.jsonl", "a") as fh:
        fh.write(json.dumps(res) + "\n")
    return res


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=os.environ.get("CIFAR10N"), help="CIFAR-10N folder ($CIFAR10N)")
    ap.add_argument("--case", default="dev-structured-30")
    ap.add_argument("--split", type=int, default=0, help="which of the case's class splits (verdict seed 0)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("prepare", prepare), ("maps", save_maps)):
        p = sub.add_parser(name)
        p.set_defaults(func=fn)
        p.add_argument("--cuts", type=lambda v: tuple(int(c) for c in v.split(",")), default=CUTS,
                       help="comma-separated block indices whose input is cached")
    r = sub.add_parser("run")
    r.set_defaults(func=run)
    r.add_argument("--cut", default="15", help="first trained block (11, 15, 16 = the head conv only, fc = "
                                               "only the linear head)")
    r.add_argument("--epochs", type=int, default=10)
    r.add_argument("--lr", type=float, default=0.01)
    r.add_argument("--head", choices=("fresh", "probe"), default="probe")
    r.add_argument("--head-l2", type=float, default=ProbeConfig().l2, help="the head's penalty (the probe's)")
    r.add_argument("--bn", choices=("eval", "train"), default="eval", help="BN: ImageNet statistics or batch's")
    r.add_argument("--batch", type=int, default=64)
    r.add_argument("--wd", type=float, default=5e-4)
    r.add_argument("--smoothing", type=float, default=0.1)
    args = ap.parse_args(argv)
    if args.cmd == "run":
        args.fc_only = args.cut == "fc"
        args.cut = 16 if args.fc_only else int(args.cut)
    return args


if __name__ == "__main__":
    a = parse_args()
    a.func(a)

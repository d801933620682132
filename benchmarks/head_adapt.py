"""Adapting only the last Lite0 blocks, on cached intermediate maps, cross-fitted (an experiment on the dev cases).

    python -m benchmarks.head_adapt --data $CIFAR10N --case dev-structured-30 prepare
    python -m benchmarks.head_adapt --case dev-structured-30 run --cut 8 --epochs 2 --lr 0.01

`prepare`: the robustness session of `benchmarks.adapted` up to the adapted round (frozen first model, 100
truthful verdicts from the product's queue, a frozen round every 50; class split --split, seed --seed), then the
frozen Lite0 run once to the input of blocks CUTS for every image and its mirror, cached as float16 maps.

`run`: K = --folds (2) cross-fitted copies of blocks[cut:] + _conv_head + a linear head
(`cleannet_core.adapt.cross_fit_maps`, options default to `TailConfig`), trained on the maps of the images outside
their fold (the labels and weights `adapt_round.targets` gives), each predicting its held-out fold (mean over the
two views). The out-of-fold probabilities (N, C), saved as probs_<cut>.npy (with _k<K> or _s<seed> for another K
or tail seed), are read by the robust score as the adapted round reads them (`adapt_round.score_probs`: mixed with
the frozen probe's, in_domain from the probe's); judged on the unverified classes as `benchmarks.adapted` judges
(AUROC of P(correct), error at the fitted threshold, x flagging nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from annotator import adapt_round, pipeline
from annotator.artifacts import current_backbone, imagenet_network
from annotator.round_config import RoundConfig, load_round_config
from annotator.store import Store
from cleannet_core.adapt import TailConfig, cross_fit_maps, path_maps
from cleannet_core.metrics import auroc

from .adapted import judged, verdict_session
from .common import CACHE
from .robustness import session_store, template
from .suite_cases import build, by_name, truth

CUTS = (8, 11, 15, 16)   # block indices whose input is cached: stage 5 (80 x 8 x 8), stage 6 (112 x 8 x 8), the
                         # last block (192 x 4 x 4), the head conv (320 x 4 x 4); at 128 px


def folder(case: str, split: int = 0, seed: int = 0) -> Path:
    name = "head_adapt" + (f"_split{split}" if split else "") + (f"_seed{seed}" if seed else "")
    return CACHE / "suite" / "state" / case / name


def prepare(args) -> None:
    """The session up to the adapted round, its truth and frozen scores, and the cached maps."""
    case = by_name(args.case)
    built = build(case, data=args.data, cache=CACHE)
    truths = truth(built)
    db = template(case, built, CACHE)
    split = case.splits()[args.split]
    out = folder(case.name, args.split, args.seed)
    store = session_store(db, out / "session")
    try:
        data = pipeline.load_data(store)
        given, wrong, open_set = verdict_session(store, data, split, truths, cfg=RoundConfig(adapt="on"),
                                                   seed=args.seed)
        by_id = store.current_scores()
        np.savez(out / "truth.npz", wrong=wrong, open_set=open_set, held=~np.isin(data.labels, split),
                 frozen=np.array([by_id[int(i)] for i in data.ids]), delta=store.current_model()["delta"],
                 split=np.array(split))
        print(json.dumps({"verdicts": given}), flush=True)
    finally:
        store.close()
    save_maps(args)


def save_maps(args) -> None:
    """maps_<cut>.npy of every cut in args.cuts (adapt.path_maps: the frozen network, image and mirror)."""
    out = folder(args.case, args.split, args.seed)
    with Store(out / "session" / "annotator.db") as store:
        data = pipeline.load_data(store)
        size = current_backbone(store).image_size
        cfg = load_round_config(store)
    net = imagenet_network(cfg.arch, weights_path=cfg.weights_path)
    t0, shapes = time.perf_counter(), {}
    for c in args.cuts:
        maps, _ = path_maps(net, data.paths, cut=c, arch=cfg.arch, image_size=size)
        np.save(out / f"maps_{c}.npy", maps)
        shapes[c] = list(maps.shape)
    print(json.dumps({"image_size": size, "maps_s": round(time.perf_counter() - t0, 1), "shapes": shapes}),
          flush=True)


def run(args) -> dict:
    """One variant on the prepared session: cross-fit, robust score, judged."""
    out = folder(args.case, args.split, args.seed)
    tail_seed = args.seed if args.tail_seed is None else args.tail_seed
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
        folds = adapt_round.adapt_folds(data.ids, args.folds)
        config = TailConfig(cut=args.cut, epochs=args.epochs, lr=args.lr, label_smoothing=args.smoothing,
                            weight_decay=args.wd, batch_size=args.batch, head_penalty=args.head_l2,
                            warmup=args.warmup, clip=args.clip)
        t0 = time.perf_counter()
        prefix = imagenet_network(cfg.arch, weights_path=cfg.weights_path)
        probs = cross_fit_maps(maps, labels, folds, len(data.class_ids), backbone=prefix,
                               weights=weights, config=config, device="cpu", seed=tail_seed,
                               progress=lambda frac, msg: print(f"  {msg}", flush=True)).probs
        train_s = time.perf_counter() - t0
        suffix = ("" if args.folds == adapt_round.FOLDS else f"_k{args.folds}") + (
            "" if tail_seed == args.seed else f"_s{tail_seed}")
        np.save(out / f"probs_{args.cut}{suffix}.npy", probs)  # the out-of-fold probabilities, for offline reads
        readable, cpu = np.ones(len(data.ids), bool), torch.device("cpu")
        fitted = adapt_round.score_probs(store, data, probs, readable=readable, split=split, cfg=cfg,
                                         verdicts=verdicts, device=cpu)
        guard = adapt_round.guard(store, data, split, fitted, probs, readable=readable, cfg=cfg, device=cpu)
        held = t["held"]
        agree = probs.argmax(1) == data.labels
        own = probs[np.arange(len(probs)), data.labels]
        diag = {"agree_label": round(float(agree[held].mean()), 3), "agree_all": round(float(agree.mean()), 3),
                "agree_per_fold": [round(float(agree[folds == f].mean()), 3) for f in range(int(folds.max()) + 1)],
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
    ap.add_argument("--split", type=int, default=0, help="which of the case's class splits")
    ap.add_argument("--seed", type=int, default=0, help="the session's verdict draws and the tails' training")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("prepare", prepare), ("maps", save_maps)):
        p = sub.add_parser(name)
        p.set_defaults(func=fn)
        p.add_argument("--cuts", type=lambda v: tuple(int(c) for c in v.split(",")), default=CUTS,
                       help="comma-separated block indices whose input is cached")
    r = sub.add_parser("run")
    r.set_defaults(func=run)
    d = TailConfig()
    r.add_argument("--cut", type=int, default=d.cut, help="first trained block (11, 15, 16 = the head conv only)")
    r.add_argument("--epochs", type=int, default=d.epochs)
    r.add_argument("--folds", type=int, default=adapt_round.FOLDS, help="cross-fitted copies (each trains on the "
                   "images outside its fold)")
    r.add_argument("--tail-seed", type=int, default=None, help="the tails' training seed (default: --seed)")
    r.add_argument("--lr", type=float, default=d.lr)
    r.add_argument("--head-l2", type=float, default=d.head_penalty, help="the linear head's penalty")
    r.add_argument("--batch", type=int, default=d.batch_size)
    r.add_argument("--wd", type=float, default=d.weight_decay)
    r.add_argument("--smoothing", type=float, default=d.label_smoothing)
    r.add_argument("--warmup", type=float, default=d.warmup, help="share of the steps the LR ramps up over")
    r.add_argument("--clip", type=float, default=d.clip, help="largest gradient norm per step (0: none)")
    return ap.parse_args(argv)


if __name__ == "__main__":
    a = parse_args()
    a.func(a)

"""`annotator extract` under torchrun with two CPU processes (gloo) on real images (data/demo): the features equal
a single-process run, nothing is extracted twice, and a run killed halfway (tests/killed_extract.py) resumes where
it stopped; which device and process-group backend each rank gets."""
import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.models import resnet18

from annotator import pipeline
from annotator.distributed import pick_device
from annotator.round_config import RoundConfig
from annotator.artifacts import current_backbone
from annotator.ingest import ingest_csv
from annotator.store import Store
from cleannet_core.features import FeatureCache

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "data" / "demo"
N = 240  # demo images used: enough for several cache shards per rank


def make_store(tmp: Path, weights: Path) -> Path:
    with open(DEMO / "labels.csv", newline="") as f:
        rows = [r for _, r in zip(range(N), csv.DictReader(f))]
    with open(tmp / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows({"path": r["path"], "label": r["label"]} for r in rows)
    db = tmp / "state" / "annotator.db"
    with Store(db) as store:
        assert ingest_csv(store, tmp / "labels.csv", DEMO, progress=False).added == N
        store.set_setting("round", {"arch": "resnet18", "weights_path": str(weights), "image_size": 32})
    return db


def extract(db: Path, procs: int, *, kill: tuple[int, int] | None = None) -> subprocess.CompletedProcess:
    """`annotator extract` on `procs` torchrun ranks; with `kill` = (rank, n), tests/killed_extract.py instead,
    whose rank SIGKILLs itself after n images."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    if kill:
        cmd = [*launcher, str(REPO / "tests" / "killed_extract.py"), str(db), *map(str, kill)]
    else:
        cmd = [*launcher, "-m", "annotator", "--db", str(db), "extract", "--workers", "1", "--batch-size", "16",
               "--flush-every", "16"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO, env={
        **os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})


def cached(db: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """-> hit (N,), features (N, D) of the store's images, and every key stored in any shard (repeats kept)."""
    with Store(db) as store:
        data = pipeline.load_data(store)
        info = current_backbone(store)
    cache = FeatureCache.for_backbone(db.parent / "features", info.id, info.image_size, info.dim)
    hit, feats = cache.lookup(data.keys)
    keys = [k for f in sorted(cache.dir.glob("shard-*.keys.npy")) for k in np.load(f).tolist()]
    return hit, feats, keys


def test_each_rank_gets_its_device_and_nccl_for_any_cuda_device():
    assert pick_device("auto", 3, cuda=True) == ("cuda:3", "nccl")
    assert pick_device("cuda", 1, cuda=True) == ("cuda:1", "nccl")
    assert pick_device("cuda:2", 0, cuda=True) == ("cuda:2", "nccl")  # as given, and nccl, not gloo
    assert pick_device("auto", 1, cuda=False) == ("cpu", "gloo")
    assert pick_device("cpu", 1, cuda=True) == ("cpu", "gloo")


@pytest.mark.slow  # torchrun processes extracting features
def test_two_ranks_equal_one_and_a_killed_run_resumes(tmp_path):
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    one, two = make_store(tmp_path / "one", tmp_path / "r18.pth"), make_store(tmp_path / "two", tmp_path / "r18.pth")

    res = extract(one, 1)
    assert res.returncode == 0, res.stderr
    assert f"{N} images, feature vectors of size 512" in res.stdout and f"0 were cached, {N} extracted by 1" in res.stdout
    hit1, feats1, keys1 = cached(one)
    assert hit1.all() and sorted(keys1) == sorted(set(keys1))
    with Store(one) as a, Store(two) as b:  # the same backbone (the small-input stem's conv1 is random)
        row = a.latest_artifact("backbone")
        b.add_artifact(kind="backbone", path=row["path"], backbone_id=row["backbone_id"], source=row["source"],
                       provenance=row["provenance"])

    # rank 1 is SIGKILLed after 48 of its ~120 images: its first 3 shards (16 each) are on disk
    res = extract(two, 2, kill=(1, 48))
    assert res.returncode != 0 and "SIGKILL" in res.stderr, res.stderr  # killed by the hook, no other failure
    hit_a, _, keys_a = cached(two)
    assert 48 <= hit_a.sum() < N and len(keys_a) == hit_a.sum()

    res = extract(two, 2)
    assert res.returncode == 0, res.stderr
    before = int(hit_a.sum())
    assert f"{before} were cached, {N - before} extracted by 2 process(es)" in res.stdout
    assert res.stdout.count("feature vectors") == 1  # only rank 0 reports
    hit2, feats2, keys2 = cached(two)
    assert hit2.all() and len(keys2) == N == len(set(keys2))  # every image extracted exactly once
    np.testing.assert_allclose(feats2, feats1, rtol=2e-3, atol=1e-3)
    assert (feats2 == feats1).mean() > 0.9  # float16 values: nearly all bit-identical to the one-process run

    res = extract(two, 2)
    assert res.returncode == 0 and f"{N} were cached, 0 extracted" in res.stdout


@pytest.mark.slow
def test_a_round_with_extract_procs_extracts_on_torchrun_ranks(tmp_path):
    """The round setting extract_procs = 2: the worker's round runs the extraction on two ranks."""
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    db = make_store(tmp_path, tmp_path / "r18.pth")
    with Store(db) as store:
        store.set_verify([store.classes()[0]["name"]])
        cfg = RoundConfig(arch="resnet18", weights_path=str(tmp_path / "r18.pth"), image_size=32, num_ref=4, device="cpu",
                                   extract_procs=2)
        assert pipeline.run_round(store, cfg) == 1 and len(store.current_scores()) == N
    hit, _, keys = cached(db)
    assert hit.all() and len(keys) == N
    shards = list((db.parent / "features").glob("*/shard-*.keys.npy"))
    assert len({f.name.split("-")[1] for f in shards}) == 2  # written by two processes

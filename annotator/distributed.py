"""Feature extraction spread over processes, GPUs and machines with torch.distributed (launched by torchrun).

    torchrun --standalone --nproc-per-node=8 -m annotator extract            # one machine, 8 GPUs
    torchrun --nnodes=2 --node-rank=R --nproc-per-node=8 --rdzv-backend=c10d \\
             --rdzv-endpoint=HOST:29500 -m annotator --db /shared/state/annotator.db extract

Every rank reads the store, looks up the content-keyed cache (state folder/features/, shared by all ranks and
machines), and extracts its share of the images that are still missing: their keys sorted, every world-th
from position rank. Each rank extracts on its own device (cuda:LOCAL_RANK when CUDA is present, else the CPU;
backend nccl or gloo) and writes its own cache shards, so ranks never coordinate writes; a shard every
`flush_rows` images bounds what a killed rank loses, and a rerun re-shards only what is still missing. Rank 0
prepares the backbone first (others wait at a barrier), gathers the unreadable files into the store and
reports progress and totals; the other ranks only read the database. `torchrun_extract` launches such a job
from a round (cfg.extract_procs > 1).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cleannet_core.features import SHARD_ROWS, FeatureCache, fill_cache

from .artifacts import features_dir, load_backbone_artifact
from .backbone import ensure_backbone, load_data
from .round_config import RoundConfig
from .round_types import Report
from .store import Store

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]  # (images done by a rank, its share)


@dataclass
class ExtractTotals:
    images: int        # images in the store (status ok)
    cached_before: int  # of them, already in the cache when the run started
    extracted: int     # computed by this run, all ranks
    failed: int        # unreadable, changed since ingest or undecodable (recorded as ingest errors)
    world: int         # processes that took part
    dim: int           # feature size
    backbone: str      # where the backbone came from
    image_size: int    # input size the features are extracted at


def world_from_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as torchrun sets them; (0, 1, 0) outside torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def pick_device(setting: str, local_rank: int, *, cuda: bool) -> tuple[str, str]:
    """(device, process-group backend) of a rank: the round setting `setting` ('auto' and 'cuda' mean
    cuda:`local_rank` when `cuda` is available; 'auto' is the CPU otherwise; any other torch device string is
    used as given), with nccl for any CUDA device and gloo for the CPU."""
    if cuda and setting in ("auto", "cuda"):
        device = f"cuda:{local_rank}"
    else:
        device = "cpu" if setting == "auto" else setting
    return device, "nccl" if torch.device(device).type == "cuda" else "gloo"


def torchrun_extract(store: Store, procs: int) -> None:
    """`torchrun --standalone --nproc-per-node=procs -m annotator --db <store> extract` in a child process: the
    missing features land in the cache, where pipeline.features finds them. Raises RuntimeError when it fails."""
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    cmd = [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]
    cmd += ["--standalone", f"--nproc-per-node={procs}", "-m", "annotator", "--db", str(store.path), "extract"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"torchrun extraction failed (exit {res.returncode}): {res.stderr.strip()[-2000:]}")
    log.info("torchrun extraction: %s", res.stdout.strip()[-500:])


def extract(store: Store, cfg: RoundConfig, *, new_backbone: bool = False, report: Report | None = None,
            batch_size: int | None = None, num_workers: int = 2, flush_rows: int | None = None,
            progress: Progress | None = None, on_rank_progress: Progress | None = None) -> ExtractTotals:
    """Fill the feature cache for every image of `store`, as this process's share of a torchrun job (or all
    of it when run alone). Rank 0 prepares the backbone (`new_backbone`: a new one, see
    backbone.ensure_backbone; `report` gets its progress). `progress` follows rank 0's share; `on_rank_progress`
    is called on every rank after each batch. Returns the job's totals (the same on every rank)."""
    rank, world, local_rank = world_from_env()
    device, backend = pick_device(cfg.device, local_rank, cuda=torch.cuda.is_available())
    if world > 1 and not dist.is_initialized():
        on_cuda = backend == "nccl"
        if on_cuda:
            torch.cuda.set_device(device)
        dist.init_process_group(backend, device_id=torch.device(device) if on_cuda else None)
    try:
        data = load_data(store)
        if rank == 0:  # may train or save a backbone: once, before anyone looks for it
            model, info = ensure_backbone(store, data, cfg, report or (lambda *a: None), new=new_backbone,
                                                   load=False)
        _barrier(world)
        if rank != 0:
            model, info = ensure_backbone(store, data, cfg, load=False)
        if model is None and not info.dim:
            model = load_backbone_artifact(info)
        dim = info.dim or model.num_features
        cache = FeatureCache.for_backbone(features_dir(store), info.id, info.image_size, dim)
        cached_before = int(cache.contains(data.keys).sum())  # every rank reads the index before anyone writes
        _barrier(world)

        def on_progress(done: int, total: int) -> None:
            if on_rank_progress is not None:
                on_rank_progress(done, total)
            if progress is not None and rank == 0:
                progress(done, total)

        done, errors = fill_cache(model if model is not None else (lambda: load_backbone_artifact(info)),
                                  data.paths, data.keys, cache=cache, image_size=info.image_size,
                                  shard=(rank, world), batch_size=batch_size, num_workers=num_workers,
                                  device=device, decode=cfg.decode, flush_rows=flush_rows or SHARD_ROWS,
                                  progress=on_progress)
        bad = [(data.paths[i], reason) for i, reason in errors.items()]
        counts = torch.tensor([done, len(bad)], dtype=torch.int64)
        if world > 1:
            gathered: list = [None] * world if rank == 0 else None
            dist.gather_object(bad, gathered, dst=0)
            bad = [b for part in gathered for b in part] if rank == 0 else bad
            counts = counts.to(device)
            dist.all_reduce(counts)
        if rank == 0 and bad:
            store.add_ingest_errors({"source": "features", "path": p, "reason": r} for p, r in bad)
        extracted, failed = (int(c) for c in counts.cpu())
        return ExtractTotals(len(data.ids), cached_before, extracted, failed, world, dim, info.source,
                             info.image_size)
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _barrier(world: int) -> None:
    if world > 1:
        dist.barrier()

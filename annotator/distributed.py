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
reports progress and totals; the other ranks only read the database.
"""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cleannet_core.features import SHARD_ROWS, FeatureCache, fill_cache

from . import pipeline
from .artifacts import features_dir, load_backbone_artifact
from .round_config import RoundConfig
from .store import Store

Progress = Callable[[int, int], None]  # (images done by rank 0, rank 0's share)


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


def _kill_hook(rank: int) -> Callable[[int], None]:
    """Test hook: with $ANNOTATOR_KILL_RANK=R and $ANNOTATOR_KILL_AFTER=N, rank R SIGKILLs itself once it has
    done N images (a crash at a known point, for the resume test)."""
    after = int(os.environ.get("ANNOTATOR_KILL_AFTER", 0))
    if not after or int(os.environ.get("ANNOTATOR_KILL_RANK", -1)) != rank:
        return lambda done: None

    def hook(done: int) -> None:
        if done >= after:
            os.kill(os.getpid(), signal.SIGKILL)
    return hook


def extract(store: Store, cfg: RoundConfig, *, new_backbone: bool = False, report: pipeline.Report | None = None,
            batch_size: int = 256, num_workers: int = 2, flush_rows: int | None = None,
            progress: Progress | None = None) -> ExtractTotals:
    """Fill the feature cache for every image of `store`, as this process's share of a torchrun job (or all
    of it when run alone). Rank 0 prepares the backbone (`new_backbone`: a new one, see
    pipeline.ensure_backbone; `report` gets its progress). Returns the job's totals (the same on every rank)."""
    rank, world, local_rank = world_from_env()
    cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    device = f"cuda:{local_rank}" if cuda else ("cpu" if cfg.device == "auto" else cfg.device)
    if world > 1 and not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device(device) if cuda else None)
    try:
        data = pipeline.load_data(store)
        if rank == 0:  # may train or save a backbone: once, before anyone looks for it
            model, info = pipeline.ensure_backbone(store, data, cfg, report or (lambda *a: None), new=new_backbone,
                                                   load=False)
        _barrier(world)
        if rank != 0:
            model, info = pipeline.ensure_backbone(store, data, cfg, load=False)
        if model is None and not info.dim:
            model = load_backbone_artifact(info)
        dim = info.dim or model.num_features
        cache = FeatureCache(features_dir(store), f"{info.id}-{info.image_size}px", dim)
        cached_before = int(cache.contains(data.keys).sum())  # every rank reads the index before anyone writes
        _barrier(world)
        kill = _kill_hook(rank)

        def on_progress(done: int, total: int) -> None:
            kill(done)
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

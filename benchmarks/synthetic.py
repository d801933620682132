"""The synthetic stores the speed benchmarks build: rows only, no image file.

What every builder shares: a ``--db`` that is reused when it holds the wanted number of images and refused
when it holds another (``reuse_or_refuse``), classes ``classNNN`` with every 10th verified so the verified id
blocks spread over the ids (``add_classes``), one image row per label with a made-up path and content hash
(``add_images``, ``image_key``), and a current model from score rows (``publish_scores``). Each benchmark
draws its own labels, scores and verdicts. No torch here: the queue, export and dashboard benchmarks
import it.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from annotator.store import Store

log = logging.getLogger(__name__)

BATCH = 50_000  # rows per store transaction while building
VERIFY_EVERY = 10  # every 10th class is verified


def reuse_or_refuse(path: Path, n: int) -> tuple[Store, bool]:
    """-> (the store at ``path``, reused): reused when it already holds ``n`` images, else empty and to be
    built; ``SystemExit`` when it holds another number of images (a --db built for another size)."""
    store = Store(path)
    have = store.images_count()
    if have == n:
        log.info("reusing %s (%d images)", path, n)
        return store, True
    if have:
        store.close()
        raise SystemExit(f"{path} holds {have} images, not {n}: pass another --db")
    return store, False


def add_classes(store: Store, classes: int, *, digits: int = 3) -> tuple[list[str], list[int]]:
    """Classes ``class000``, ``class001``, ... (``digits`` wide), every ``VERIFY_EVERY``-th verified.
    Returns (names, class ids), both indexed by class number."""
    names = [f"class{c:0{digits}d}" for c in range(classes)]
    ids = store.ensure_classes(names)
    store.set_verify(names[::VERIFY_EVERY])
    return names, [ids[name] for name in names]


def image_key(i: int) -> str:
    """Content hash of the ``i``-th synthetic image (0-based; its image id is ``i + 1``)."""
    return f"{i:032x}"


def add_images(store: Store, labels: np.ndarray, names: list[str], class_ids: list[int], *, root: str,
               **columns: object) -> None:
    """One image per entry of ``labels`` ((n,) class numbers; sorted, they make a contiguous id block per
    class, as a folder ingest does), with ids 1..n in order, path ``root/<class>/<i>.jpg`` and hash
    ``image_key(i)``. ``columns``: more image columns, the same for every row (e.g. width, height)."""
    store.add_images(({"path": f"{root}/{names[c]}/{i:07d}.jpg", "hash": image_key(i), "label_id": class_ids[c]}
                      | columns for i, c in enumerate(labels.tolist())), batch=BATCH)


def publish_scores(store: Store, rows: Iterable[tuple], *, delta: float) -> int:
    """A current model with threshold ``delta`` and metrics ``{"synthetic": True}`` scoring ``rows``
    (``Store.write_scores`` tuples); returns its version."""
    version = store.add_model(delta=delta, metrics={"synthetic": True})
    store.write_scores(version, rows, batch=BATCH)
    store.make_current(version)
    return version

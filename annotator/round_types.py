"""The values a round passes between its modules (pipeline, publish, adapt_round, distributed): the data set in
a round's row order, its verdicts split into training and held-out rows, and the progress callback."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

Report = Callable[[str, float, str], None]  # (phase, progress in [0, 1], message)


def quiet(phase: str, progress: float, message: str) -> None:
    """The default Report: says nothing."""


@dataclass(frozen=True)
class Data:
    ids: np.ndarray           # (N,) image ids, status ok
    paths: list[str]          # (N,) image files
    keys: list[str]           # (N,) content hashes from ingest: the feature cache's keys
    labels: np.ndarray        # (N,) class index 0..C-1 (position in class_ids)
    class_ids: np.ndarray     # (C,) store class ids
    class_names: list[str]    # (C,)


@dataclass(frozen=True)
class VerdictSplit:
    """The latest live correct/wrong verdict per image, as row indices into a round's Data."""
    train: np.ndarray          # (T,) int64 rows the scoring model is fitted on
    train_correct: np.ndarray  # (T,) bool, True = the annotator said the label is correct
    val: np.ndarray            # (V,) int64 rows that validate it (audit draws on odd image ids)
    val_correct: np.ndarray    # (V,) bool

    @property
    def n(self) -> int:
        return len(self.train) + len(self.val)

    def every(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, correct) of train and val together."""
        return np.concatenate([self.train, self.val]), np.concatenate([self.train_correct, self.val_correct])


@dataclass(frozen=True)
class RoundInputs:
    """Everything a scoring method is fitted on."""
    data: Data
    feats: np.ndarray         # (N, D) float16 pooled backbone features (zero rows where not readable)
    readable: np.ndarray      # (N,) bool, the image file could be read
    refs: np.ndarray          # (C, K, D) float32 reference vectors per class (k-means centres)
    has_refs: np.ndarray      # (C,) bool, the class had readable images to build references from
    split: VerdictSplit

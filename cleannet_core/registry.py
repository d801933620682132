"""The scoring methods, named once: what each is, its checkpoint version, how its score reads. No torch import, so
settings, pages and the CLI can list and describe the methods without loading the model code; the fitting itself
is `cleannet_core.scoring.method(name)`.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MethodSpec:
    name: str
    version: int        # the checkpoint format this code writes and reads; another version raises CheckpointMismatch
    summary: str        # one line, for the Admin page, the dashboard and --help
    probability: bool   # the score is P(label correct): noise rates are expected shares, the queue is |score - 0.5|


class UnknownMethod(ValueError):
    """A scoring method name that is not registered."""


class CheckpointMismatch(ValueError):
    """A scoring checkpoint written by another method or checkpoint version than the code reading it."""


SPECS = (
    MethodSpec("robust", 1, "robust (default: probe + noise model, calibrated on the verdicts)", True),
    MethodSpec("transfer", 1, "transfer (probe log-odds and margin, calibrated on the verdicts)", True),
    MethodSpec("paper", 1, "paper (CleanNet relevance, Lee et al. 2018)", False),
)
METHODS: dict[str, MethodSpec] = {s.name: s for s in SPECS}
DEFAULT = "robust"


def spec(name: str) -> MethodSpec:
    """The registered method `name`; UnknownMethod naming the valid ones otherwise."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethod(f"unknown scoring method {name!r}; valid: {sorted(METHODS)}") from None


def check_checkpoint(payload: dict) -> MethodSpec:
    """The spec of a scoring checkpoint's method, after checking its version (files without one are version 1)."""
    s = spec(payload.get("method", "paper"))
    version = int(payload.get("version", 1))
    if version != s.version:
        raise CheckpointMismatch(f"a {s.name} checkpoint of version {version}; this code reads version {s.version}:"
                                 " run a new round (annotator train)")
    return s

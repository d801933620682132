"""The settings of one retraining round: one typed, validated place, stored in the `round` setting.

The worker, the CLI and the admin page all read them with `load_round_config` and write them with
`save_round_config`; the stored value holds only the fields that differ from the defaults below, so a
change of a default reaches every database that never set that field. No torch import here: the CLI and
the pages read the settings without loading the model code.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from cleannet_core.registry import DEFAULT
from cleannet_core.registry import METHODS as REGISTERED

from .store import Store

METHODS = tuple(REGISTERED)        # the scoring methods (cleannet_core.registry: one place names them)
ARCHS = ("efficientnet_lite0", "resnet18", "resnet50")  # the backbones cleannet_core.classifier builds
BACKBONES = ("pretrained", "finetuned", "noisy")        # where a new backbone's weights come from
ADAPT = ("auto", "on", "off")      # when the adapted round runs
ADAPT_LAYERS = ("auto", "tail", "full")  # what the adapted round fine-tunes
DECODERS = ("cpu", "gpu")          # cleannet_core.loading.DECODERS: where extraction decodes JPEGs
SETTING = "round"                  # the settings key


class BadRoundConfig(ValueError):
    """A round setting that is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class RoundConfig:
    method: str = DEFAULT              # robust: probe + noise model, calibrated on the verdicts | transfer:
                                       # probe signals, calibrated | paper: CleanNet (Lee et al.)
    arch: str = "efficientnet_lite0"   # backbone: efficientnet_lite0 (ImageNet weights from the installed
                                       # package) | resnet18 | resnet50 (ImageNet weights only from
                                       # weights_path or the torch cache)
    backbone: str = "pretrained"       # pretrained: frozen ImageNet features, nothing trained before the first
                                       # model | finetuned: ImageNet weights trained on the noisy labels |
                                       # noisy: trained from scratch on the noisy labels
    image_size: int = 0                # input size; 0 = auto: small images (<= 64 px) 32 px on a ResNet and on
                                       # Lite0 128 px below 20,000 images, 224 from there
                                       # (backbone.pick_image_size); larger images 224
    backbone_epochs: int = 10          # epochs when the backbone is trained on the noisy labels
    backbone_lr: float = 0.02          # its peak LR (0.1 diverged in the first epoch on a few thousand images)
    weights_path: str | None = None    # local ImageNet weights file for a new backbone (else the torch cache)
    steps: int = 4000                  # CleanNet steps per round, method paper (paper: 60k; LR drops at half)
    num_ref: int = 32                  # K references per class
    device: str = "auto"               # auto = cuda when present, else cpu; or a torch device string
    decode: str = "cpu"                # JPEG decoding for extraction: cpu (DataLoader workers) | gpu (decode_jpeg)
    extract_procs: int = 1             # > 1: the round extracts missing features with torchrun on this many
                                       # processes (one per GPU), see annotator.distributed
    adapt: str = "auto"                # adapted round (backbone fine-tuned, cross-fitted) after the frozen model
                                       # serves: auto = on a GPU, and on a CPU within adapt_budget_min | on =
                                       # also on a CPU over the budget | off (annotator.adapt_round)
    adapt_budget_min: float = 30.0     # the longest adapted round the worker starts on a CPU by itself (adapt
                                       # auto), by its estimate
    adapt_layers: str = "auto"         # tail: Lite0's last blocks (8 of 16) on maps the frozen ImageNet network
                                       # computes once per image (cleannet_core.adapt.TailConfig; ~5 min for 3,000
                                       # images on 2 CPU cores, better than the frozen features on the dev cases)
                                       # | full: whole networks fine-tuned from the image files | auto: tail on a
                                       # CPU, full on a GPU; other archs than efficientnet_lite0 always run full
    adapt_epochs: int = 6              # epochs of each cross-fitted whole network (adapt_layers full)
    conflict_weight: float = 0.5       # calibrated scores of images whose near-duplicate carries another label are
                                       # lowered: s * (1 - w * that label's best score); 0 = off (chosen on the
                                       # dev case of benchmarks/duplicates_score.py)

    def __post_init__(self) -> None:
        _one_of("method", self.method, METHODS)
        _one_of("arch", self.arch, ARCHS)
        _one_of("backbone", self.backbone, BACKBONES)
        _one_of("decode", self.decode, DECODERS)
        _one_of("adapt", self.adapt, ADAPT)
        _one_of("adapt_layers", self.adapt_layers, ADAPT_LAYERS)
        for name, low in (("image_size", 0), ("backbone_epochs", 1), ("steps", 1), ("num_ref", 1),
                          ("extract_procs", 1), ("adapt_epochs", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise BadRoundConfig(f"{name} must be an integer >= {low}, got {value!r}")
        if isinstance(self.backbone_lr, bool) or not isinstance(self.backbone_lr, (int, float)) or not (
                0 < self.backbone_lr < 10):
            raise BadRoundConfig(f"backbone_lr must be a number in (0, 10), got {self.backbone_lr!r}")
        if isinstance(self.adapt_budget_min, bool) or not isinstance(self.adapt_budget_min, (int, float)) or not (
                0 < self.adapt_budget_min <= 10_000):
            raise BadRoundConfig(f"adapt_budget_min must be minutes in (0, 10000], got {self.adapt_budget_min!r}")
        if isinstance(self.conflict_weight, bool) or not isinstance(self.conflict_weight, (int, float)) or not (
                0 <= self.conflict_weight <= 1):
            raise BadRoundConfig(f"conflict_weight must be a number in [0, 1], got {self.conflict_weight!r}")
        if self.weights_path is not None and not (isinstance(self.weights_path, str) and self.weights_path):
            raise BadRoundConfig(f"weights_path must be a file path or None, got {self.weights_path!r}")
        if not isinstance(self.device, str) or not self.device:
            raise BadRoundConfig(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RoundConfig:
        """The defaults updated by `values`; an unknown key raises BadRoundConfig naming the valid ones."""
        if not isinstance(values, dict):
            raise BadRoundConfig(f"the round setting must be an object of fields, got {type(values).__name__}")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise BadRoundConfig(f"unknown round setting(s) {unknown}; valid: {[f.name for f in fields(cls)]}")
        return cls(**values)

    def changes(self) -> dict[str, Any]:
        """The fields that differ from the defaults (what is stored)."""
        default = asdict(RoundConfig())
        return {k: v for k, v in asdict(self).items() if v != default[k]}


def _one_of(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise BadRoundConfig(f"{name} must be one of {valid}, got {value!r}")


def load_round_config(store: Store, **overrides: Any) -> RoundConfig:
    """The stored round settings, then `overrides` whose value is not None (CLI flags left out are None).

    Re-read at every round, so a lead's change applies to the next round without restarting the worker.
    """
    cfg = RoundConfig.from_dict(store.get_setting(SETTING) or {})
    given = {k: v for k, v in overrides.items() if v is not None}
    return replace(cfg, **given) if given else cfg


def save_round_config(store: Store, cfg: RoundConfig) -> None:
    """Store `cfg` (validated when it was built) as the fields that differ from the defaults."""
    store.set_setting(SETTING, cfg.changes())

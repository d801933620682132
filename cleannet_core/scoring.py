"""The scoring-method seam: every method registered in `registry` fits on one RoundData and rescores from its state.

    fitted = method("robust").fit(data, device="cpu")          # scores of every image, delta, checkpoint state
    scores = method(state["method"]).rescore(state, data)      # the same model on new or changed images

A state is plain tensors and values (torch.save with weights_only=True loads it) and carries "method" and
"version"; `registry.check_checkpoint` refuses a state of another version. Score direction for every method:
higher = label more likely correct; flagged below `delta`.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .model import CleanNet
from .probe import Probe, ProbeConfig, fit_probe
from .registry import METHODS, MethodSpec, check_checkpoint, spec
from .robust import (FROZEN_SHARE, PROBE_SHARE, RobustScore, fit_robust_score, fit_robust_scores, mix_probs,
                     score_robust, verdict_influence)
from .robust import score_with_probe as robust_rescore
from .score import Scores, score_images
from .train import TrainConfig, train_cleannet
from .transfer import DELTA, TransferScore, fit_transfer_scores
from .transfer import score_with_probe as transfer_rescore

Progress = Callable[[float, str], None]  # (fraction of the fit done, what it is doing)
PAPER = TrainConfig.shortened(4000)      # the paper method's training when the caller gives none


def _quiet(fraction: float, message: str) -> None:
    """The default Progress: says nothing."""


@dataclass(frozen=True)
class RoundData:
    """What a method is fitted on: features and labels of every image, references, the verdicts split."""
    feats: np.ndarray        # (N, D) pooled backbone features (zero rows where not readable)
    labels: np.ndarray       # (N,) int64 noisy class index
    folds: np.ndarray        # (N,) int64 out-of-fold assignment (stable per image: image id % folds)
    num_classes: int
    refs: np.ndarray         # (C, K, D) reference vectors per class
    valid: np.ndarray        # (C,) bool: the class has references (may be suggested)
    readable: np.ndarray     # (N,) bool: the image could be read (the others train nothing)
    train_idx: np.ndarray    # (T,) int64 rows with a verdict that trains
    train_ok: np.ndarray     # (T,) bool: True = the label was judged correct
    val_idx: np.ndarray      # (V,) int64 rows with a held-out audit verdict
    val_ok: np.ndarray       # (V,) bool
    probe_key: str = ""      # identifies features, labels, folds and readable rows: equal keys, equal probes
    probs: np.ndarray | None = None  # (N, C) out-of-fold P(noisy label | x) of adapted networks (robust reads
                                     # them instead of fitting a probe on feats; cleannet_core.adapt)


@dataclass
class Fitted:
    scores: Scores           # every image's score (higher = label more likely correct), suggestion and, where the
                             # method has one, counting P(label wrong) (Scores.expected_wrong)
    delta: float             # flagged below
    state: dict              # the checkpoint payload, with "method" and "version"
    note: str                # what the fit did with the verdicts, said truthfully (shown by the round)
    best_step: int | None = None
    influence: dict[int, dict] | None = None  # per class, what its newest verdicts still move (robust.verdict_influence)


class Robust:
    """Probe -> class-conditional noise model -> weights fitted on the verdicts around the dev-chosen prior.
    warm_start: the previous round's state; its probe is reused when its probe_key equals the data's. With adapted
    networks' probabilities (data.probs) the score reads them mixed with the probe's (`mix_probs`), and in_domain
    from the probe's alone."""
    spec = METHODS["robust"]

    def fit(self, data: RoundData, *, device="cpu", warm_start: dict | None = None, cleannet: TrainConfig = PAPER,
            progress: Progress = _quiet) -> Fitted:
        same = bool(data.probe_key) and warm_start is not None and warm_start.get("probe_key") == data.probe_key \
            and warm_start.get("probe") is not None
        probe = Probe.from_state(warm_start["probe"]) if same else None
        if data.probs is not None:
            return self._fit_on_probs(data, probe, same, progress)
        fit = fit_robust_scores(data.feats, data.labels, data.folds, data.num_classes, data.train_idx,
                                data.train_ok, valid_classes=data.valid, fit_rows=data.readable, device=device,
                                probe=probe, progress=lambda p: progress(0.95 * p, "out-of-fold probe" if p < PROBE_SHARE
                                                                         else "noise model, weights and scores"))
        n = len(data.train_idx)
        note = (f"calibrated on {n} verdicts ({int((~data.train_ok).sum())} wrong) around the verdict-free weights"
                if n else "no verdicts yet: the noise model's verdict-free weights")
        note += "; probe of the previous round reused (same images, labels and features)" if same else ""
        return Fitted(fit.scores, DELTA, _state(self.spec, probe=fit.probe.state(), robust=fit.score.state(),
                                                probe_key=data.probe_key), note, influence=fit.influence)

    def _fit_on_probs(self, data: RoundData, probe: Probe | None, same: bool, progress: Progress) -> Fitted:
        rows = np.flatnonzero(data.readable)
        if probe is None:
            probe = fit_probe(data.feats[rows], data.labels[rows], data.folds[rows], data.num_classes,
                              progress=lambda p: progress(0.5 * p, "out-of-fold probe"))
        frozen = probe.predict(data.feats, data.folds)
        probs = mix_probs(data.probs, frozen)
        if len(rows) > 50_000:
            rows = np.sort(np.random.default_rng(0).choice(rows, 50_000, replace=False))
        t = data.train_idx
        domain = (frozen[rows], frozen[t])
        score = fit_robust_score(probs[rows], data.labels[rows], probs[t], data.labels[t], data.train_ok,
                                 domain=domain, progress=lambda: progress(0.75, "noise model, weights and scores"))
        scores = score_robust(score, probs, data.labels, valid_classes=data.valid, domain_probs=frozen)
        note = (f"calibrated on {len(t)} verdicts ({int((~data.train_ok).sum())} wrong) around the verdict-free "
                f"weights" if len(t) else "no verdicts yet: the noise model's verdict-free weights")
        influence = verdict_influence(score, probs[rows], data.labels[rows], probs[t], data.labels[t], data.train_ok,
                                      domain=domain)
        note += (f"; probabilities of the adapted networks (out-of-fold) with the probe's "
                 f"({FROZEN_SHARE:.0%}{', reused' if same else ''})")
        return Fitted(scores, DELTA, _state(self.spec, probe=probe.state(), robust=score.state(),
                                            probe_key=data.probe_key), note, influence=influence)

    def rescore(self, state: dict, data: RoundData) -> Scores:
        rs = RobustScore.from_state(state["robust"])
        if data.probs is None:
            return robust_rescore(rs, Probe.from_state(state["probe"]), data.feats, data.labels, data.folds,
                                  valid_classes=data.valid)
        if rs.domain is None:  # a state without a domain model reads the networks' probabilities alone
            return score_robust(rs, data.probs, data.labels, valid_classes=data.valid)
        frozen = Probe.from_state(state["probe"]).predict(data.feats, data.folds)
        return score_robust(rs, mix_probs(data.probs, frozen), data.labels, valid_classes=data.valid,
                            domain_probs=frozen)


class Transfer:
    """The early-stopped probe's log-odds and margin, a monotone calibrator on the verdicts (or the verdict-free
    rule "another class preferred" when they are too one-sided)."""
    spec = METHODS["transfer"]

    def fit(self, data: RoundData, *, device="cpu", warm_start: dict | None = None, cleannet: TrainConfig = PAPER,
            progress: Progress = _quiet) -> Fitted:
        fit = fit_transfer_scores(data.feats, data.labels, data.folds, data.num_classes, data.refs, data.train_idx,
                                  data.train_ok, valid_classes=data.valid, fit_rows=data.readable, device=device,
                                  progress=lambda p: progress(0.9 * p, "out-of-fold probe"))
        wrong = int((~data.train_ok).sum())
        if fit.score.calibrator is not None:
            note = f"calibrated on {len(data.train_idx)} verdicts ({wrong} wrong)"
        elif min(wrong, len(data.train_idx) - wrong) < 2:
            note = (f"verdict-free rule (another class preferred): {len(data.train_idx) - wrong} correct and {wrong}"
                    f" wrong verdicts, the calibrator needs 2 of each")
        else:
            note = "verdict-free rule (another class preferred): no signal ranks the verdicts the right way round"
        return Fitted(fit.scores, DELTA, _state(self.spec, probe=fit.probe.state(), transfer=fit.score.state()),
                      note)

    def rescore(self, state: dict, data: RoundData) -> Scores:
        return transfer_rescore(TransferScore.from_state(state["transfer"]), Probe.from_state(state["probe"]),
                                data.feats, data.labels, data.folds, data.refs, valid_classes=data.valid)


class Paper:
    """The paper's CleanNet relevance (spec), trained on the verdicts; delta chosen on the held-out verdicts."""
    spec = METHODS["paper"]

    def fit(self, data: RoundData, *, device="cpu", warm_start: dict | None = None, cleannet: TrainConfig = PAPER,
            progress: Progress = _quiet) -> Fitted:
        init = _warm_cleannet(warm_start, data.feats.shape[1], data.refs.shape[1])
        steps = cleannet.steps

        def on_step(step: int, record: dict) -> None:
            if step % 100 == 0:
                progress(step / steps, f"CleanNet step {step}/{steps}, loss {record['loss']:.3f}")

        res = train_cleannet(data.feats, data.labels, data.refs, verified_idx=data.train_idx,
                             verified_ok=data.train_ok, val_idx=data.val_idx, val_ok=data.val_ok,
                             config=cleannet, init=init, device=device, callback=on_step, pool=data.readable)
        sc = score_images(res.model, data.feats, data.labels, data.refs, valid_classes=data.valid)
        note = f"CleanNet on {len(data.train_idx)} verdicts, delta on {len(data.val_idx)} held-out audit verdicts"
        return Fitted(sc, res.delta, _state(self.spec, cleannet=res.model.checkpoint()), note, res.best_step)

    def rescore(self, state: dict, data: RoundData) -> Scores:
        return score_images(CleanNet.from_checkpoint(state["cleannet"]), data.feats, data.labels, data.refs,
                            valid_classes=data.valid)


_IMPLEMENTATIONS = {"robust": Robust(), "transfer": Transfer(), "paper": Paper()}


def method(name: str) -> Robust | Transfer | Paper:
    """The registered method `name` (UnknownMethod otherwise)."""
    return _IMPLEMENTATIONS[spec(name).name]


def rescore(state: dict, data: RoundData) -> Scores:
    """Scores of data under a checkpoint state of any method (CheckpointMismatch for another version)."""
    return method(check_checkpoint(state).name).rescore(state, data)


def folds_of(image_ids: np.ndarray) -> np.ndarray:
    """(N,) int64 the out-of-fold assignment of images by id: stable, so a new image is scored by a fold model
    that never saw it and an old one by the fold model that scored it before."""
    return np.asarray(image_ids, np.int64) % ProbeConfig.folds


def _state(s: MethodSpec, **parts) -> dict:
    return {"method": s.name, "version": s.version, **parts}


def _warm_cleannet(state: dict | None, dim: int, k: int) -> CleanNet | None:
    """A CleanNet checkpoint state as a warm start, when it is one and fits the features."""
    if not state or "cleannet" not in state:
        return None
    model = CleanNet.from_checkpoint(state["cleannet"])
    return model if model.cfg.img_dim == dim and model.cfg.num_ref == k else None


assert set(_IMPLEMENTATIONS) == set(METHODS), "every registered method has an implementation"

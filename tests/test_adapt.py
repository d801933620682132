"""Adapted features at toy size: cross-fitting keeps probabilities out-of-fold, the guard keeps a worse adapted
model from becoming current, a better one serves and survives later rounds and rescoring."""
import signal
from dataclasses import replace
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from annotator import adapt_round, pipeline
from annotator.artifacts import ADAPTED_FORMAT, adapted_probs, imagenet_network, load_scorer
from annotator.cli import cli
from annotator.ingest import ingest_folder
from annotator.publish import REVIEWED
from annotator.round_config import RoundConfig, load_round_config, save_round_config
from annotator.store import Store
from cleannet_core.adapt import AdaptConfig, TailConfig, cross_fit, ensemble_probs, tail_probs
from cleannet_core.classifier import Backbone, predict
from cleannet_core.efficientnet import lite_prefix, lite_prefix_shape
from helpers import REPO, wait_for, write_images

TINY = AdaptConfig(folds=2, epochs=2, lr=0.05, label_smoothing=0.0)
ROUND = RoundConfig(arch="resnet18", image_size=16, backbone_epochs=1, num_ref=2, adapt_epochs=1, adapt="on")


def test_each_image_is_scored_by_the_network_that_did_not_learn_its_label(tmp_path):
    """Every image is the same grey square; fold 0 is labelled 1 and fold 1 is labelled 0. A network that saw an
    image's label would lean to it; the out-of-fold network learnt only the other fold's label, so every image's
    own label gets the lower probability. Its rows are exactly what the stored network k predicts."""
    paths = []
    for i in range(32):
        p = tmp_path / f"{i}.png"
        Image.fromarray(np.full((16, 16, 3), 128, np.uint8)).save(p)
        paths.append(str(p))
    folds = np.arange(32) % 2
    labels = 1 - folds
    fit = cross_fit(paths, labels, folds, 2, arch="resnet18", image_size=16, init_state=None, config=TINY,
                    device="cpu")
    assert fit.readable.all() and len(fit.states) == 2
    assert (fit.probs[np.arange(32), labels] < 0.5).all()
    every = []
    for k in range(2):
        model = Backbone("resnet18", 2, small_input=True)
        model.load_state_dict(fit.states[k])
        _, p, _ = predict(model.eval(), paths, image_size=16, device="cpu")
        np.testing.assert_array_equal(p[folds == k], fit.probs[folds == k])
        every.append(p)
    mean, ok = ensemble_probs(fit.states, paths, arch="resnet18", num_classes=2, image_size=16, device="cpu")
    np.testing.assert_allclose(mean, (every[0] + every[1]) / 2, rtol=1e-6) and ok.all()


def test_bad_folds_are_refused(tmp_path):
    with pytest.raises(ValueError, match="folds must be in"):
        cross_fit(["a", "b"], np.array([0, 1]), np.array([0, 2]), 2, arch="resnet18", image_size=16,
                  init_state=None, config=TINY, device="cpu")


def _project(tmp_path, n_per=24, flip=0.2, seed=0, cfg=ROUND):
    """Two colour classes in folders, `flip` of each filed under the other; a frozen first model."""
    rng = np.random.default_rng(seed)
    clean = np.repeat([0, 1], n_per)
    noisy = np.where(rng.random(len(clean)) < flip, 1 - clean, clean)
    write_images(tmp_path / "images", clean, folders=[["red", "green"][y] for y in noisy])
    store = Store(tmp_path / "state" / "a.db")
    ingest_folder(store, tmp_path / "images", progress=False)
    save_round_config(store, cfg)
    pipeline.run_round(store, cfg)
    truth = {}
    for r in store.iter_images():
        k = int(r["path"].rsplit("img", 1)[1][:4])
        truth[r["id"]] = bool(noisy[k] == clean[k])
    return store, truth


def _audit(store, truth, n=12):
    """n held-out audit verdicts (odd ids, reason audit), answered truthfully."""
    odd = [i for i in sorted(truth) if i % 2 == 1][:n]
    for i in odd:
        store.record_verdict(i, "ann", "correct" if truth[i] else "wrong", reason="audit")
    return odd


def _model_from(store, scores: dict[int, float]) -> int:
    """A model version whose scores are given (P(correct), flagged below 0.5), made current."""
    v = store.add_model(delta=0.5, metrics={"method": "robust"})
    labels = {r["id"]: r["label_id"] for r in store.iter_images()}
    store.write_scores(v, [(i, labels[i], s, abs(s - 0.5)) for i, s in scores.items()])
    store.make_current(v)
    return v


@pytest.mark.slow
def test_the_guard_keeps_a_better_current_model_and_says_why(tmp_path):
    store, truth = _project(tmp_path)
    _audit(store, truth)
    oracle = _model_from(store, {i: 1.0 if ok else 0.0 for i, ok in truth.items()})
    out = adapt_round.run_adapt_round(store, ROUND)
    assert out.version is None and store.current_model()["version"] == oracle
    record = store.get_setting(adapt_round.SETTING)
    assert record["errors"] >= record["current_errors"] == 0 and record["better"] is False
    assert "the current model keeps serving" in record["message"] and record["n"] == 12
    ok, why = adapt_round.due(store, ROUND)  # the same data and verdicts: not tried again
    assert not ok and why.startswith("last adapted round")
    adapt_round.record_failure(store, "RuntimeError: out of memory")  # a crash is not retried either
    ok, why = adapt_round.due(store, ROUND)
    assert not ok and why == ("last adapted round: the adapted round failed (RuntimeError: out of memory): the "
                              "current model keeps serving")


@pytest.mark.slow
def test_networks_that_went_astray_do_not_serve_even_when_the_audit_verdicts_favour_them(tmp_path, monkeypatch):
    """The networks learn every label the other way round (a training gone astray) and the current model's stored
    flags are all wrong on the 12 audit verdicts, so the audit comparison alone would switch; the networks put the
    filed label first on fewer images they did not train on than the current probe does, and the current model
    keeps serving, saying why."""
    store, truth = _project(tmp_path)
    _audit(store, truth)
    current = store.current_model()["version"]
    labels = {r["id"]: r["label_id"] for r in store.iter_images()}
    store.write_scores(current, [(i, labels[i], 0.0 if ok else 1.0, 0.5) for i, ok in truth.items()])
    honest = adapt_round.targets
    monkeypatch.setattr(adapt_round, "targets", lambda *a, **k: (1 - honest(*a, **k)[0], honest(*a, **k)[1]))
    out = adapt_round.run_adapt_round(store, ROUND)
    record = store.get_setting(adapt_round.SETTING)
    assert out.version is None and store.current_model()["version"] == current
    print({k: record[k] for k in ("errors", "current_errors", "agreement", "current_agreement")})
    assert record["errors"] < record["current_errors"]  # the audit verdicts alone favour the networks
    assert record["agreement"] < record["current_agreement"] and record["better"] is False
    assert record["message"].startswith("the adapted networks put the filed label first on")


def test_agreement_counts_the_label_ranked_first_among_the_given_rows():
    probs = np.array([[0.6, 0.4], [0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    labels = np.array([0, 0, 0, 1])
    assert adapt_round.agreement(probs, labels, np.array([0, 1, 2])) == pytest.approx(2 / 3)
    assert adapt_round.agreement(probs, labels, np.array([3])) == 0.0  # a tie goes to the first class
    assert adapt_round.agreement(probs, labels, np.array([], np.int64)) == 0.0


@pytest.mark.slow
def test_a_better_adapted_model_serves_and_survives_rounds_and_new_images(tmp_path):
    store, truth = _project(tmp_path)
    _audit(store, truth)
    _model_from(store, {i: 0.0 if ok else 1.0 for i, ok in truth.items()})  # every flag wrong
    assert adapt_round.due(store, ROUND) == (True, "due")
    # the default runs on a CPU within the budget, not over it; on runs over it
    assert adapt_round.due(store, replace(ROUND, adapt="auto")) == (True, "due")
    ok, why = adapt_round.due(store, replace(ROUND, adapt="auto", adapt_budget_min=1e-3))
    assert not ok and "over the 0.001 min budget" in why and "adapt on runs it on this CPU anyway" in why
    assert adapt_round.due(store, replace(ROUND, adapt_budget_min=1e-3)) == (True, "due")
    out = adapt_round.run_adapt_round(store, ROUND)
    current = store.current_model()
    assert out.version == current["version"] and current["metrics"]["adapted"] is True
    assert current["backbone"].startswith("adapted from")
    assert len(store.current_scores()) == len(truth)
    # a regular round keeps the adapted probabilities, refitting only the score on the verdicts
    store.record_verdict(max(truth), "ann", "correct" if truth[max(truth)] else "wrong", reason="uncertain")
    v = pipeline.run_round(store, ROUND)
    assert store.current_model()["metrics"]["adapted"] is True and "adapted networks" in \
        store.current_model()["metrics"]["note"]
    # a new image is scored by the networks' mean
    write_images(tmp_path / "images", [0], start=900, folders=["red"])
    ingest_folder(store, tmp_path / "images", progress=False)
    counted = {row[0]: row[-1] for row in store.image_states(v) if row[3] is not None}  # the stored counting P(wrong)
    assert len(counted) == len(truth) and None not in counted.values()
    v2 = pipeline.rescore(store, ROUND)
    assert v2 == v + 1 and len(store.current_scores()) == len(truth) + 1
    # the rescore stores it for every image, the new one included, and the old images count as before
    recounted = {row[0]: row[-1] for row in store.image_states(v2) if row[3] is not None}
    assert len(recounted) == len(truth) + 1 and None not in recounted.values()
    assert [recounted[i] for i in counted] == pytest.approx(list(counted.values()), abs=1e-6)


def _verdict_once(store, image_id, verdict, *, phase):
    """A Report that records `verdict` on `image_id` at the first report of `phase` (a verdict given mid-round);
    its id lands in the returned list."""
    given = []

    def report(p, frac, message):
        if p == phase and not given:
            given.append(store.record_verdict(image_id, "bob", verdict, reason="uncertain"))
    return report, given


@pytest.mark.slow
def test_a_round_uses_one_snapshot_of_the_verdicts_and_counts_a_later_one_as_new(tmp_path):
    """A verdict given while the round fits is left to the next round in every respect: not trained on, above the
    model's max_verdict_id (so the next trigger counts it), not vouching in the metrics' expected_wrong_left, and
    its image keeps its queue key (the queue skips it while the verdict is live)."""
    store, truth = _project(tmp_path)
    audited = _audit(store, truth)
    late = max(i for i in truth if i not in audited)
    report, given = _verdict_once(store, late, "correct" if truth[late] else "wrong", phase="training")
    version = pipeline.run_round(store, ROUND, report=report)
    metrics = store.current_model()["metrics"]
    assert given and metrics["max_verdict_id"] < given[0] and store.verdicts_since(metrics["max_verdict_id"],
                                                                                   trains=True) == 1
    assert store.current_model()["n_verdicts"] == len(audited)
    counted = {row[0]: row[-1] for row in store.image_states(version)}  # the stored counting P(label wrong)
    assert metrics["expected_wrong_left"] == pytest.approx(sum(p for i, p in counted.items() if i not in audited),
                                                           rel=1e-9)
    key = dict(store.db.execute("SELECT image_id, uncertainty FROM scores WHERE model_version = ?", [version]))
    assert key[late] < REVIEWED <= min(key[i] for i in audited)


@pytest.mark.slow
def test_an_adapted_model_records_the_verdicts_it_saw_not_those_given_while_it_fine_tuned(tmp_path):
    """The adapted round's max_verdict_id is read with the verdicts it learns from, before the fine-tuning: a verdict
    given meanwhile counts as new for the next round's trigger."""
    store, truth = _project(tmp_path)
    audited = _audit(store, truth)
    _model_from(store, {i: 0.0 if ok else 1.0 for i, ok in truth.items()})  # every flag wrong: the adapted one wins
    late = max(i for i in truth if i not in audited)
    report, given = _verdict_once(store, late, "correct" if truth[late] else "wrong", phase="backbone")
    out = adapt_round.run_adapt_round(store, ROUND, report=report)
    current = store.current_model()
    assert out.version == current["version"] and current["n_verdicts"] == len(audited)
    assert given and current["metrics"]["max_verdict_id"] < given[0]
    assert store.verdicts_since(current["metrics"]["max_verdict_id"], trains=True) == 1


def test_targets_apply_corrections_and_zero_wrong_verdicts(tmp_path):
    """Labels the networks learn: a corrected label replaces the noisy one (weight 1), 'wrong' without a
    correction weighs 0, 'correct' 1, others w_soft = max(0, score); then divided by the mean."""
    store = Store(tmp_path / "a.db")
    ids = store.ensure_classes(["cat", "dog"])
    store.add_images({"path": f"/img/{k}.jpg", "hash": str(k), "label_id": ids["cat"]} for k in range(1, 6))
    v = store.add_model(delta=0.5)
    store.write_scores(v, [(k, ids["cat"], s, 0.0) for k, s in ((1, 0.2), (2, 0.4), (3, 0.9), (4, 0.6), (5, 0.7))])
    store.make_current(v)
    store.record_verdict(1, "ann", "wrong", reason="uncertain", corrected_label="dog")
    store.record_verdict(2, "ann", "wrong", reason="uncertain")
    store.record_verdict(3, "ann", "correct", reason="audit")
    store.record_verdict(5, "ann", "wrong", reason="transfer_check", corrected_label="dog")  # measures only
    data = pipeline.load_data(store)
    labels, w = adapt_round.targets(store, data)
    order = np.argsort(data.ids)
    assert labels[order].tolist() == [1, 0, 0, 0, 0]  # image 1 is a dog now; image 5 keeps its label
    raw = np.array([1.0, 0.0, 1.0, 0.6, 0.7])
    np.testing.assert_allclose(w[order], raw / raw.mean(), rtol=1e-6)


def test_folds_are_stable_and_balanced():
    ids = np.arange(1, 10_001)
    f = adapt_round.adapt_folds(ids)
    assert set(f.tolist()) == {0, 1} and abs(f.mean() - 0.5) < 0.02
    np.testing.assert_array_equal(adapt_round.adapt_folds(ids[::-1]), f[::-1])
    even = adapt_round.adapt_folds(np.arange(2, 20_002, 2))  # every id even: still both folds
    assert abs(even.mean() - 0.5) < 0.02


@pytest.mark.slow
def test_the_worker_adapts_when_idle_and_the_cli_sets_and_runs_it(tmp_path):
    """A real worker process, idle (no regular round due), runs the adapted round and records its outcome;
    `annotator adapt --set off` stops that, and `annotator adapt` runs one on request."""
    store, truth = _project(tmp_path)
    _audit(store, truth)
    _model_from(store, {i: 0.0 if ok else 1.0 for i, ok in truth.items()})
    db = str(store.path)
    worker = subprocess.Popen([sys.executable, "-m", "annotator", "--db", db, "worker", "--poll", "0.2"], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "message" in (store.get_setting(adapt_round.SETTING) or {}), timeout=300,
                 what="the adapted round", proc=worker)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    assert worker.returncode == 0
    assert store.current_model()["metrics"].get("adapted") is True
    res = CliRunner().invoke(cli, ["--db", db, "adapt", "--set", "off"])
    assert res.exit_code == 0 and "adapted rounds: off" in res.output
    assert adapt_round.due(store, load_round_config(store)) == (False, "adapted features are off (round setting adapt)")
    res = CliRunner().invoke(cli, ["--db", db, "adapt", "--epochs", "1"])  # on request, whatever the setting
    assert res.exit_code == 0, res.output
    assert "held-out audit verdicts" in res.output


LITE = RoundConfig(arch="efficientnet_lite0", image_size=32, num_ref=2, adapt="on")  # adapt_layers: tail
TAIL = TailConfig(cut=8, epochs=1, batch_size=16)


def test_an_old_whole_network_file_still_scores_new_images(tmp_path):
    """An adapted file written before the format field (whole networks only) is read as layers full: new images
    get the networks' mean, fitted images their stored probabilities."""
    paths = [str(p) for p in write_images(tmp_path, [0, 1] * 5)]
    fit = cross_fit(paths[:8], np.array([0, 1] * 4), np.arange(8) // 4, 2, arch="resnet18", image_size=16,
                    init_state=None, config=TINY, device="cpu")
    old = tmp_path / "adapted-old.pt"
    torch.save({"arch": "resnet18", "image_size": 16, "config": TINY.state(), "class_ids": [1, 2],
                "ids": torch.arange(1, 9), "probs": torch.from_numpy(fit.probs.astype(np.float16)),
                "states": fit.states}, old)
    probs = adapted_probs({"path": str(old)}, ids=np.arange(1, 11), paths=paths, class_ids=[1, 2])
    mean, _ = ensemble_probs(fit.states, paths[8:], arch="resnet18", num_classes=2, image_size=16, device="cpu")
    np.testing.assert_array_equal(probs[:8], fit.probs.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(probs[8:], mean)


@pytest.mark.slow
def test_a_tail_adapted_round_serves_saves_its_tails_and_scores_new_images_with_them(tmp_path):
    """adapt_layers tail on Lite0: the round trains tails on the frozen ImageNet prefix, its file says so and
    reloads, a rescore scores a new image with the tails' mean on that prefix, and the guard still refuses a
    worse model."""
    store, truth = _project(tmp_path, cfg=LITE)
    _audit(store, truth)
    oracle = _model_from(store, {i: 1.0 if ok else 0.0 for i, ok in truth.items()})
    out = adapt_round.run_adapt_round(store, LITE, config=TAIL)
    assert out.version is None and store.current_model()["version"] == oracle  # the guard: no error to beat
    _model_from(store, {i: 0.0 if ok else 1.0 for i, ok in truth.items()})  # every flag wrong
    store.set_setting(adapt_round.SETTING, {})
    out = adapt_round.run_adapt_round(store, LITE, config=TAIL)
    current = store.current_model()
    assert out.version == current["version"] and current["metrics"]["adapted"] is True
    ref = load_scorer(current["checkpoint"])["adapted"]
    saved = torch.load(ref["path"], weights_only=True)
    assert (saved["format"], saved["layers"], saved["config"]["cut"]) == (ADAPTED_FORMAT, "tail", 8)
    assert len(saved["states"]) == 2 and "w" in saved["states"][0] and "_blocks.0.weight" not in saved["states"][0]
    data = pipeline.load_data(store)
    again = adapted_probs(ref, ids=data.ids, paths=data.paths, class_ids=data.class_ids.tolist())
    np.testing.assert_array_equal(again, saved["probs"].float().numpy())
    write_images(tmp_path / "images", [0], start=900, folders=["red"])
    ingest_folder(store, tmp_path / "images", progress=False)
    v = pipeline.rescore(store, LITE)
    data = pipeline.load_data(store)
    new = int(np.flatnonzero(~np.isin(data.ids, saved["ids"].numpy()))[0])
    prefix = imagenet_network("efficientnet_lite0", weights_path=None)
    expected, ok = tail_probs(saved["states"], [data.paths[new]], np.array([-1]), backbone=prefix, cut=8,
                              arch="efficientnet_lite0", num_classes=2, image_size=32)
    probs = adapted_probs(ref, ids=data.ids, paths=data.paths, class_ids=data.class_ids.tolist())
    np.testing.assert_allclose(probs[new], expected[0], rtol=1e-5)
    assert ok.all()
    assert 0 < expected[0, 0] < 1 and store.current_model()["version"] == v
    assert len(store.current_scores()) == len(truth) + 1


def test_the_estimate_follows_adapt_layers():
    """tail: maps once and TailConfig's epochs at the per-image constants; full: adapt_epochs at the Lite0 rate;
    a ResNet always runs full. One thread (the worker's on 2 cores) takes twice as long as the two the rates were
    measured with; more threads are not counted faster."""
    cpu = torch.device("cpu")
    est = adapt_round.estimate_s(1000, LITE, image_size=128, device=cpu, threads=2)
    assert est == pytest.approx(1000 * (adapt_round.TAIL_MAPS_S + 2 * adapt_round.TAIL_TRAIN_S))
    assert adapt_round.estimate_s(1000, LITE, image_size=128, device=cpu, threads=1) == pytest.approx(2 * est)
    assert adapt_round.estimate_s(1000, LITE, image_size=128, device=cpu, threads=16) == pytest.approx(est)
    full = adapt_round.estimate_s(1000, replace(LITE, adapt_layers="full"), image_size=128, device=cpu, threads=2)
    assert full == pytest.approx(1000 * 6.3 / adapt_round.CPU_IMAGES_PER_S)
    gpu = torch.device("cuda")
    assert adapt_round.layers(ROUND, cpu) == "full" and adapt_round.layers(LITE, cpu) == "tail"
    assert adapt_round.layers(LITE, gpu) == "full" and adapt_round.layers(replace(LITE, adapt_layers="tail"), gpu) \
        == "tail" and adapt_round.layers(replace(LITE, adapt_layers="full"), cpu) == "full"
    assert adapt_round.estimate_s(1000, LITE, image_size=128, device=gpu) is None


def test_tail_maps_have_the_prefix_shape_and_a_memory_cap(tmp_path, monkeypatch):
    """The bytes a tail round's maps take are those of the prefix's real output; over TAIL_MAPS_MAX_GB the round
    refuses, naming the setting that avoids it."""
    prefix = imagenet_network("efficientnet_lite0", weights_path=None)
    with torch.no_grad():
        out = lite_prefix(prefix.eval(), torch.zeros(1, 3, 128, 128), 8)
    assert adapt_round.tail_maps_bytes(1, image_size=128) == 2 * out.numel() * 2 == 20_480
    assert adapt_round.tail_maps_bytes(1, image_size=224) == 2 * 80 * 14 * 14 * 2
    with torch.no_grad():
        for cut in (0, 8, 16):                                       # an odd size: SAME padding rounds up
            assert lite_prefix_shape(cut, 100) == tuple(lite_prefix(prefix, torch.zeros(1, 3, 100, 100), cut).shape[1:])
    store, truth = _project(tmp_path, cfg=LITE)
    _audit(store, truth)
    _model_from(store, {i: 0.0 if ok else 1.0 for i, ok in truth.items()})
    monkeypatch.setattr(adapt_round, "TAIL_MAPS_MAX_GB", 1e-9)
    with pytest.raises(ValueError, match="set adapt_layers full"):
        adapt_round.run_adapt_round(store, LITE, config=TAIL)


def _figures(errors=2, current_errors=2, n=13, agreement=0.74, current_agreement=0.67) -> dict:
    return {"n": n, "errors": errors, "current_errors": current_errors, "log_loss": 0.30, "current_log_loss": 0.20,
            "agreement": agreement, "current_agreement": current_agreement}


def test_a_tie_on_the_audit_verdicts_goes_to_the_networks_that_agree_more_with_the_labels():
    """The CIFAR-10N random1 session at 10,000 images: 2 errors each on 13 held-out audit verdicts and a lower
    held-out log-loss for the frozen model; the tails were far better (AUROC 0.91 -> 0.95) and put the label first
    on 74 % of the images against 67 %. Such a tie serves the adapted model; fewer held-out errors win and more lose;
    a training gone astray and too few audit verdicts never switch; without the current model's probabilities the
    held-out log-loss breaks the tie."""
    ok, why = adapt_round.decide(_figures())
    assert ok and why == ("the adapted model made 2 errors on 13 held-out audit verdicts, the current model 2, and its "
                          "networks put the filed label first on 74.0% of the images they did not train on, the "
                          "current model on 67.0%")
    assert adapt_round.decide(_figures(agreement=0.67))[0]            # as often is enough
    assert adapt_round.decide(_figures(errors=1))[0]
    ok, why = adapt_round.decide(_figures(errors=3))
    assert not ok and why == ("the adapted model made 3 errors on 13 held-out audit verdicts, the current model 2: "
                              "the current model keeps serving")
    ok, why = adapt_round.decide(_figures(errors=0, n=9))
    assert not ok and "(the comparison needs 10)" in why
    ok, why = adapt_round.decide(_figures(errors=0, agreement=0.66))
    assert not ok and why.startswith("the adapted networks put the filed label first on 66.0% of the images")
    ok, why = adapt_round.decide(_figures(current_agreement=None))     # 0.30 against 0.20
    assert not ok and why.endswith("log-loss 0.300 against 0.200: the current model keeps serving")
    assert adapt_round.decide(_figures(current_agreement=None, errors=1))[0]

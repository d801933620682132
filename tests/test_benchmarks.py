"""The benchmark scripts run end to end at toy sizes (their numbers are judged in benchmarks/README.md)."""
import json

import numpy as np
import pytest

from benchmarks import (budget, classify, cli_startup, dashboard_speed, gpu_check, lite_settings, oof, quality, signal_ceiling, signals,
                        summarize)
from cleannet_core import efficientnet


@pytest.mark.slow
def test_quality_benchmark_runs_and_writes_the_documented_json(cifar_dir, tmp_path):
    out = tmp_path / "q.json"
    quality.main(["--data", str(cifar_dir), "--labels", "random1", "--verified-classes", "0,1,2,3,4",
                  "--budget", "0.05", "--seed", "0", "--json", str(out), "--n", "300", "--epochs", "1",
                  "--steps", "40", "--rounds", "2", "--num-ref", "4", "--cache", str(tmp_path / "cache")])
    res = json.loads(out.read_text())
    assert set(res["heldout"]) == set(quality.METHODS)
    for m in res["heldout"].values():
        assert {"error", "precision", "recall", "f1", "auroc"} <= set(m) and 0 <= m["error"] <= 1
    assert res["verified_fraction"] == 15 / 300 and res["config"]["labels"] == "random1"
    assert res["timings_s"]["total_s"] > 0 and res["cleannet_vs_cleanlab_error"] > 0
    assert res["heldout"]["default"] == res["heldout"]["transfer"] and res["config"]["method"] == "transfer"
    summary = summarize.main([str(out), str(out), "--json", str(tmp_path / "s.json")])  # two identical "seeds"
    row = summary["random1"]["transfer"]
    assert row["seeds"] == 2 and row["error_std"] == 0 and row["error_mean"] == res["heldout"]["transfer"]["error"]
    assert summary["random1"]["cleanlab"]["ratio_mean"] == 1.0
    bigger = {**res, "config": {**res["config"], "n_images": 600}}
    with pytest.raises(SystemExit, match="different sizes"):
        summarize.summarize([res, bigger])
    fast = quality.main(["--data", str(cifar_dir), "--labels", "random1", "--budget", "0.05", "--n", "300",
                         "--epochs", "1", "--rounds", "2", "--num-ref", "4", "--cache", str(tmp_path / "cache"),
                         "--no-paper", "--no-knn"])  # same cache: no backbone training
    paper = {"cleannet", "transfer_cleannet", "cleannet_random_verdicts", "cleannet_no_verdicts",
             "cleannet_all_classes"}
    assert set(fast["heldout"]) == set(quality.METHODS) - paper - {"knn"} and fast["cleannet_vs_cleanlab_error"] is None
    assert fast["heldout"]["transfer"] == res["heldout"]["transfer"]  # its verdicts are drawn before the paper's
    with pytest.raises(SystemExit, match="--no-paper"):
        quality.main(["--data", str(cifar_dir), "--labels", "random1", "--n", "300", "--no-paper", "--method", "paper"])


@pytest.mark.slow
def test_budget_benchmark_runs_and_writes_mean_and_runs(cifar_dir, tmp_path):
    out = tmp_path / "b.json"
    res = budget.main(["--data", str(cifar_dir), "--labels", "random1", "--budgets", "0,0.05", "--verified", "1,5",
                       "--seeds", "0,1", "--n", "300", "--epochs", "1", "--cache", str(tmp_path / "cache"),
                       "--json", str(out)])
    assert json.loads(out.read_text()) == res
    assert len(res["runs"]) == 2 * 2 * 2 and {r["verdicts"] for r in res["runs"]} == {0, 15}
    assert all(0 <= r["error"] <= 1 for r in res["runs"]) and 0 <= res["cleanlab_error"]["random1"] <= 1
    fallback = [r["error"] for r in res["runs"] if r["verdicts"] == 0]
    assert len(set(fallback)) <= 2  # the verdict-free score depends on the seed only, not on the classes


@pytest.mark.slow
def test_signals_benchmark_runs_every_set_and_the_class_cv_choice(cifar_dir, tmp_path):
    res = signals.main(["--data", str(cifar_dir), "--labels", "random1", "--seeds", "0,1", "--n", "300",
                        "--epochs", "1", "--budget", "0.1", "--num-ref", "4", "--cache", str(tmp_path / "cache"),
                        "--json", str(tmp_path / "s.json")])
    assert len(res["runs"]) == 2 * (len(signals.SETS) + 1)
    for seed in (0, 1):
        runs = {r["set"]: r for r in res["runs"] if r["seed"] == seed}
        chosen = runs["class_cv"]["chosen"]
        assert runs[chosen]["cv_loss"] == min(r["cv_loss"] for r in runs.values() if r["cv_loss"] is not None)
        assert runs["class_cv"]["error"] == runs[chosen]["error"]  # the chosen set, fitted on the same verdicts
    assert res["summary"]["random1"][signals.DEFAULT_SET]["seeds"] == 2


@pytest.mark.slow
def test_oof_benchmark_predicts_each_image_with_the_backbone_that_did_not_train_on_it(cifar_dir, tmp_path):
    from benchmarks.common import load_cifar10n
    from cleannet_core.classifier import ClassifierConfig
    res = oof.main(["--data", str(cifar_dir), "--labels", "random1", "--folds", "2", "--seeds", "0",
                    "--n", "300", "--epochs", "1", "--budget", "0.1", "--num-ref", "4",
                    "--cache", str(tmp_path / "cache")])
    assert {r["row"] for r in res["runs"]} == {*oof.SETS, "cleanlab_features", "cleanlab_oof", "all_clean"}
    assert 0 <= res["oof_accuracy_on_noisy_labels"] <= 1
    ds = load_cifar10n(cifar_dir, "random1", 300, 0)
    folds = np.arange(300) % 2
    probs = oof.oof_probs(ds, ClassifierConfig(epochs=1), folds, tag="t", device="cpu", cache=tmp_path / "c2")
    backbones = sorted((tmp_path / "c2").glob("backbone-t-oof*"))
    assert [b.name.split("-")[2] for b in backbones] == ["oof0of2", "oof1of2"]
    changed = ds.subset(np.arange(300))
    changed.noisy = ds.noisy.copy()
    changed.noisy[folds == 0] = (changed.noisy[folds == 0] + 1) % 10  # they train backbone 1 only
    again = oof.oof_probs(changed, ClassifierConfig(epochs=1), folds, tag="t", device="cpu", cache=tmp_path / "c2")
    np.testing.assert_allclose(again[folds == 0], probs[folds == 0], atol=1e-6)  # backbone 0 predicts them
    assert not np.allclose(again[folds == 1], probs[folds == 1])


@pytest.mark.slow
def test_cli_startup_benchmark_times_every_quick_command_and_the_baselines(tmp_path):
    res = cli_startup.main(["--repeat", "1", "--json", str(tmp_path / "c.json")])
    assert set(res["seconds"]) == set(cli_startup.COMMANDS) | set(cli_startup.BASELINES)
    assert all(len(t["runs"]) == 1 and t["min"] > 0 for t in res["seconds"].values())
    assert json.loads((tmp_path / "c.json").read_text()) == res


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path):
    """Extraction from generated JPEG files, the default round on generated cached features, the kernels."""
    res = gpu_check.main(["--small", "--device", "cpu", "--workers", "1", "--json", str(tmp_path / "g.json")])
    assert json.loads((tmp_path / "g.json").read_text()) == res
    assert res["device"] == "cpu" and res["kernels"]["rescore_img_s"] > 0
    assert list(res["extraction"]) == ["resnet18/cpu-decode/fp32"]
    run = res["extraction"]["resnet18/cpu-decode/fp32"]
    assert (run["images"], run["errors"]) == (32, 0) and run["img_s"] > 0
    rnd = res["round"]
    assert rnd["n_images"] == 400 and rnd["version"] == 2 and rnd["peak_rss_gb"] > 0
    assert list(rnd["phase_s"]) == ["load", "features", "references", "training", "writing", "idle"]


def test_gain_recovered_on_hand_values():
    assert classify.gain_recovered({"noisy": 0.60, "cleannet_soft": 0.66, "clean": 0.80}) == pytest.approx(0.3)
    assert classify.gain_recovered({"noisy": 0.60, "cleannet_soft": 0.55, "clean": 0.80}) == pytest.approx(-0.25)
    assert classify.gain_recovered({"noisy": 0.7, "cleannet_soft": 0.7, "clean": 0.7}) is None  # no gap to close
    assert classify.gain_recovered({"noisy": 0.6, "clean": 0.8}) is None


@pytest.mark.slow
def test_classify_benchmark_runs_with_the_transfer_rows(cifar_dir, tmp_path):
    out = tmp_path / "c.json"
    res = classify.main(["--data", str(cifar_dir), "--labels", "random1", "--n", "160", "--epochs", "1",
                         "--n-test", "100", "--steps", "20", "--threads", "1", "--workers", "0", "--json", str(out),
                         "--cache", str(tmp_path / "cache"),
                         "--rows", "noisy,cleannet_soft,transfer_soft,clean"])
    assert json.loads(out.read_text())["test_acc"] == res["test_acc"]
    acc = res["test_acc"]
    assert set(acc) == {"noisy", "cleannet_soft", "transfer_soft", "clean"} and all(0 <= a <= 1 for a in acc.values())
    assert res["config"]["n_test"] == 100 and res["config"]["budget_images"] > 0
    assert res["gain_recovered"] == classify.gain_recovered(acc)


@pytest.mark.slow
def test_dashboard_speed_renders_every_kind(tmp_path, monkeypatch):
    monkeypatch.setenv("ANNOTATOR_ADMIN_PASSWORD", "bench-admin-pw")
    monkeypatch.setenv("ANNOTATOR_DB", str(tmp_path / "unused.db"))  # restored after the benchmark sets it
    res = dashboard_speed.main(["--n", "3000", "--verdicts", "50", "--repeats", "2",
                                "--json", str(tmp_path / "d.json")])
    assert {k: r["n"] for k, r in res["renders"].items()} == {"login": 2, "cold": 1, "warm": 2, "new_verdict": 2}
    assert json.loads((tmp_path / "d.json").read_text())["n_images"] == 3000


def test_lite_settings_measures_each_padding_and_scaling(cifar_dir, tmp_path):
    out = tmp_path / "s.json"
    res = lite_settings.main(["--data", str(cifar_dir), "--n", "150", "--labels", "random1", "--workers", "0",
                              "--settings", "tf_same:lite:32,symmetric:imagenet:32", "--json", str(out)])
    assert json.loads(out.read_text()) == res
    assert [(r["padding"], r["scaling"], r["image_size"]) for r in res["rows"]] == [("tf_same", "lite", 32),
                                                                                    ("symmetric", "imagenet", 32)]
    a, b = (r["auroc_heldout"]["random1"] for r in res["rows"])
    assert 0 <= a <= 1 and 0 <= b <= 1 and a != b  # the variants give different features
    assert efficientnet.LITE_MEAN == (127 / 255,) * 3  # the scaling is restored after the run


def test_queue_speed_store_is_built_reused_and_refused_for_another_size(tmp_path):
    from benchmarks import queue_speed, synthetic
    db = tmp_path / "bench.db"
    store, build = queue_speed.build_store(db, 2000, verdicts=100)
    classes = store.classes()
    verdicts = store.verdict_count()
    assert build and store.images_count() == 2000 and 0 < verdicts <= 100 - 5  # 5 undone
    assert [c["name"] for c in classes if c["verify"]] == [f"class{c:03d}" for c in range(0, 100, 10)]
    assert store.get_image(1)["hash"] == synthetic.image_key(0) and store.current_model()["delta"] == queue_speed.DELTA
    store.close()
    store, build = queue_speed.build_store(db, 2000)
    assert build == {} and store.verdict_count() == verdicts
    store.close()
    with pytest.raises(SystemExit, match="holds 2000 images, not 3000"):
        queue_speed.build_store(db, 3000)


def test_export_speed_baseline_rows_have_one_cell_per_export_column(tmp_path):
    import csv

    from annotator.export import COLUMNS
    from benchmarks import export_speed
    export_speed.baseline_dump(tmp_path / "b.csv", 3)
    with open(tmp_path / "b.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == COLUMNS and [len(r) for r in rows[1:]] == [len(COLUMNS)] * 3


def test_probe_epochs_benchmark_scores_each_setting_and_writes_the_table(cifar_dir, tmp_path):
    from benchmarks import probe_epochs
    out = tmp_path / "pe.json"
    res = probe_epochs.main(["--data", str(cifar_dir), "--sizes", "200", "--image-sizes", "64", "--epochs", "1,3",
                             "--labels", "random1", "--cache", str(tmp_path / "cache"), "--json", str(out)])
    assert [(r["n"], r["labels"], r["image_size"], r["epochs"]) for r in res["runs"]] == [
        (200, "random1", 64, 1), (200, "random1", 64, 3)]
    assert all(0.0 <= r["auroc"] <= 1.0 for r in res["runs"]) and res["default_epochs"] == 3
    assert json.loads(out.read_text()) == res
    table = probe_epochs.markdown_table(res["runs"])
    assert table.splitlines()[2].startswith("| 200 | random1 | 64 | ") and table.count("\n") == 2


@pytest.mark.slow
def test_robustness_suite_runs_a_case_through_the_product_and_reports(cifar_dir, tmp_path):
    """One split and seed of the small digits case (sklearn's digits, no CIFAR images): three rounds of the
    product at 0, 50 and 100 verdicts drawn by its queue, each judged beside the baselines on the same
    probabilities; the report's table and checks read the JSON."""
    from benchmarks import robustness, robustness_report
    out = tmp_path / "r.json"
    res = robustness.main(["--data", str(cifar_dir), "--role", "dev", "--cases", "dev-digits-15", "--seeds", "0",
                           "--splits", "1", "--cache", str(tmp_path / "cache"), "--json", str(out)])
    runs = res["runs"]
    assert [r["verdicts"] for r in runs] == [0, 50, 100] and {r["role"] for r in runs} == {"dev"}
    assert [r["model"]["n_train"] + r["model"]["n_val"] for r in runs] == [0, 50, 100]
    for r in runs:
        assert {"default", "flag_nothing", "cleanlab", "selfconf_vt"} <= set(r)
        assert 0 <= r["default"]["error"] <= 1 and r["flag_nothing"]["flagged"] == 0
        assert r["flag_nothing"]["wrong_caught"] == 0 and 0.1 < r["flag_nothing"]["error"] < 0.2  # 15 % noise
        assert set(r["noise_rate"]["true"]) == set(map(str, range(10)))
    assert "first_model" in runs[1] and runs[1]["first_model"] == {**runs[0]["default"]}
    assert json.loads(out.read_text())["settings"]["robust"]["prior_w"] == list(robustness.settings()["robust"][
        "prior_w"])
    checks = robustness_report.checks(runs)
    assert checks["never_worse_than_flagging_nothing"]["runs"] == 3
    # the chart's count and the one 1 - flag score would give, each against the truth, overall and per verdict count
    assert all(0 <= r["noise_rate"]["mae_all"] <= 1 and 0 <= r["noise_rate"]["mae_flag_score"] <= 1 for r in runs)
    levels = {"digits", "digits at 0", "digits at 50", "digits at 100"}
    assert set(checks["noise_rate_mae"]) == set(checks["noise_rate_mae_flag_score"]) == levels
    assert robustness_report.table(runs)[2].startswith("| dev-digits-15 | 0 |")


def test_a_dev_scan_sets_the_flags_prior_and_the_json_records_it(monkeypatch, capsys):
    """--robust NAME=VALUE sets the constants of cleannet_core.robust a dev scan may change, and settings() records
    the values in force; any other name, or a value that is not a number, is refused with its message."""
    from benchmarks import robustness
    from cleannet_core import robust
    for name in robustness.SCAN:
        monkeypatch.setattr(robust, name, getattr(robust, name))  # restored after the test
    args = robustness.parse_args(["--data", "x", "--robust", "PSEUDO=0", "--robust", "RIDGE=3"])
    robustness.scan(args.robust)
    assert (robust.PSEUDO, robust.RIDGE) == (0.0, 3.0)
    assert {k: robustness.settings()["robust"][k] for k in ("pseudo", "ridge")} == {"pseudo": 0.0, "ridge": 3.0}
    for bad, says in (("DELTA=0.4", "not one of PSEUDO, RIDGE, STRENGTH"), ("RIDGE=x", "the value is not a number")):
        with pytest.raises(SystemExit):
            robustness.parse_args(["--data", "x", "--robust", bad])
        assert f"--robust {bad}: {says}" in capsys.readouterr().err


@pytest.mark.slow
def test_duplicates_benchmark_plants_copies_and_scores_pairs_and_outliers(cifar_dir, tmp_path):
    """A toy dev case (200 demo images, 4 exact and 6 altered copies, 4 coloured digits): every exact copy is found
    by its hash, and the settings are chosen from the documented grids."""
    from benchmarks import duplicates
    out = tmp_path / "d.json"
    res = duplicates.main(["--cifar10n", str(cifar_dir), "--n-base", "200", "--roles", "dev", "--cache",
                           str(tmp_path / "cache"), "--json", str(out)])
    dev = res["dev"]
    assert dev["planted"]["exact"] == 4 and dev["planted"]["other_domain"] == 4 and dev["images"] == 214
    assert dev["pairs"]["true_pairs"] == 10 and dev["pairs"]["recall_by_kind"]["exact"] == 1.0
    assert dev["threshold"] in duplicates.GRID and 0 <= dev["outlier_auroc"]["product"] <= 1
    assert (dev["pixel_until"], dev["pixel_from"], dev["pixel_min"]) in {
        tuple(map(float, k.split("|"))) for k in dev["sweep_pixels"]} and dev["pixel_from"] in duplicates.PIXEL_FROM
    assert json.loads(out.read_text())["chosen_on"] == "dev" and "test" not in res and "test-c" not in res


@pytest.mark.slow
def test_duplicates_speed_finds_the_planted_copies_and_times_the_queue(tmp_path):
    from benchmarks import duplicates_speed
    res = duplicates_speed.main(["--n", "3000", "--dim", "32", "--baseline-n", "600"])
    assert res["planted_pairs"] == 30 and res["pair_recall"] == 1.0 and res["refresh"]["method"] == "exact"
    assert res["baseline"]["faiss-ivf"]["planted_recall"] == 1.0 == res["baseline"]["exact"]["planted_recall"]
    assert res["queue_ms"]["idle"]["n"] == 200 and res["groups"]["images_in_groups"] >= 60


def test_stopping_agreement_counts_which_choice_wins_on_each_side_of_the_threshold():
    from benchmarks.stopping import agreement
    rows = [{"moved_share": 0.001, "gain_stay": 0.0, "gain_switch": 0.01},   # stopped, switching wins
            {"moved_share": 0.004, "gain_stay": 0.02, "gain_switch": 0.01},  # stopped, staying wins
            {"moved_share": 0.03, "gain_stay": 0.02, "gain_switch": 0.01},   # going, staying wins
            {"moved_share": 0.05, "gain_stay": 0.01, "gain_switch": 0.01}]   # going, a tie: staying
    a = agreement(rows, 0.01)
    assert (a["stopped"], a["switch_wins_when_stopped"], a["stay_wins_when_going"], a["balanced"]) == (2, 0.5, 1.0,
                                                                                                      0.75)
    assert a["gain_stay_when_stopped"] == 0.01 and a["gain_switch_when_stopped"] == 0.01
    none = agreement(rows, 0.0)  # nothing stopped: staying wins in 3 of the 4 going rows
    assert none["switch_wins_when_stopped"] is None and none["balanced"] == 0.75


def test_signal_ceiling_fits_on_the_truth_of_the_verified_classes_and_of_the_unverified_ones():
    """Where label_logit alone tells wrong labels (below 0) and the prior ignores it, the fit on the verified classes'
    truth transfers to the unverified classes and the fit on their own truth is perfect; the prior's ratio is its
    exact flag error over flagging nothing's."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    wrong = rng.random(200) < 0.2
    label_logit = np.where(wrong, -rng.uniform(1, 3, 200), rng.uniform(1, 3, 200))
    noise_logit = rng.normal(0, 1, 200)
    x = np.stack([noise_logit, np.zeros(200), label_logit], axis=1)
    r = signal_ceiling.ceilings(x, wrong, labels, [0, 1])
    held = labels >= 2
    prior_flags = x[held] @ np.asarray(signal_ceiling.PRIOR_W) + signal_ceiling.PRIOR_B < 0
    assert r["prior"] == pytest.approx((prior_flags != wrong[held]).mean() / wrong[held].mean())
    assert r["prior"] > 0.5 and r["verified"] == 0.0 and r["own"] == 0.0
    assert r["weights"]["own"][2] > 0

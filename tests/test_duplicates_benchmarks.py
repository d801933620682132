"""The near-duplicates benchmarks that choose settings, on toy sizes: the index profile and the label-conflict score."""
import json

import pytest


def test_profile_times_each_phase_and_finds_the_planted_copies(tmp_path):
    from benchmarks import duplicates_profile
    out = tmp_path / "p.json"
    res = duplicates_profile.main(["--n", "4000", "--dim", "32", "--json", str(out)])
    rows = {(r["setting"]["pca_dim"], r["setting"]["k"], r["setting"]["nprobe"]): r for r in res["settings"]}
    assert set(rows) == {(s["pca_dim"], s["k"], s["nprobe"]) for s in duplicates_profile.SETTINGS}
    for r in rows.values():
        assert r["total_cpu_s"] == pytest.approx(r["pca_and_projection_cpu_s"] + r["index_cpu_s"] + r["search_cpu_s"]
                                                 + r["check_cpu_s"], abs=1e-6)
        assert r["pairs"] <= r["proposals"]
    assert rows[(128, 8, 8)]["planted_recall"] == 1.0 == rows[(64, 4, 8)]["planted_recall"]
    assert rows[(64, 4, 8)]["proposals"] < rows[(64, 8, 8)]["proposals"]   # fewer neighbours, fewer to check
    assert json.loads(out.read_text())["n"] == 4000


@pytest.mark.slow
def test_conflict_score_benchmark_chooses_the_weight_on_dev(cifar_dir, tmp_path, monkeypatch):
    """A toy dev case (200 demo images): one round, the groups, a rescore per weight; dev chooses."""
    from benchmarks import duplicates_score
    monkeypatch.setattr(duplicates_score, "WEIGHTS", (0.0, 0.5))
    res = duplicates_score.main(["--cifar10n", str(cifar_dir), "--n-base", "200", "--cache", str(tmp_path / "cache"),
                                 "--roles", "dev", "--json", str(tmp_path / "s.json")])
    dev = res["dev"]
    assert dev["images_scored"] == 210 and res["chosen_weight"] in (0.0, 0.5)   # 200 + 6 altered copies + 4 digits
    best = min(dev["by_weight"].values(), key=lambda v: v["flag_error"])["flag_error"]
    assert dev["by_weight"][str(res["chosen_weight"])]["flag_error"] == best
    assert res["chosen_on"] == "dev" and res["test"] is None and dev["wrong_labels"] > 0

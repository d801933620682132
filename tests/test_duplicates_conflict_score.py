"""Label conflicts in the score (``cleannet_core.duplicates.conflict_share``) and the round setting that applies it
when scores are published."""
import numpy as np
import pytest

from annotator.round_config import BadRoundConfig, RoundConfig
from cleannet_core.duplicates import conflict_share


def test_conflict_share_exact_values():
    #            group 0: cat 0.9, cat 0.6, dog 0.8 | group 1: cat 0.7, cat 0.5 | none | group 2: dog NaN, cat 0.4
    score = np.array([0.9, 0.6, 0.8, 0.7, 0.5, 0.3, np.nan, 0.4])
    group = np.array([0, 0, 0, 1, 1, -1, 2, 2])
    labels = np.array([0, 0, 1, 0, 0, 1, 1, 0])
    out = conflict_share(score, group, labels, weight=0.5)
    assert out[:6].tolist() == pytest.approx([0.9 * (1 - 0.5 * 0.8), 0.6 * (1 - 0.5 * 0.8), 0.8 * (1 - 0.5 * 0.9),
                                              0.7, 0.5, 0.3])
    assert np.isnan(out[6]) and out[7] == 0.4          # a NaN member is no evidence
    assert conflict_share(score, group, labels, weight=0.0)[:6].tolist() == score[:6].tolist()


def test_conflict_share_matches_the_definition_on_random_groups():
    rng = np.random.default_rng(0)
    n = 500
    score, group, labels = rng.random(n), rng.integers(-1, 60, n), rng.integers(0, 4, n)
    out = conflict_share(score, group, labels, weight=0.7)
    for i in range(n):
        other = [score[j] for j in range(n) if group[i] >= 0 and group[j] == group[i] and labels[j] != labels[i]]
        assert out[i] == pytest.approx(score[i] * (1 - 0.7 * max(other)) if other else score[i])


def test_the_round_setting():
    assert RoundConfig().conflict_weight == 0.5
    for bad in (-0.1, 1.5, "x", True):
        with pytest.raises(BadRoundConfig, match="conflict_weight"):
            RoundConfig(conflict_weight=bad)


def test_publish_lowers_the_scores_of_conflicting_members_of_the_current_run(store):
    from annotator.pipeline import load_data
    from annotator.publish import publish_scores, with_conflicts
    from cleannet_core.score import Scores

    cids = store.ensure_classes(["cat", "dog"])
    store.add_images({"path": f"/img/{i}.jpg", "hash": f"h{i}", "label_id": cids["cat" if i < 3 else "dog"]}
                     for i in range(5))                       # ids 1-3 cat, 4-5 dog
    data = load_data(store)
    group = {1: 1, 4: 1, 2: 2, 3: 2}                          # a conflict (1 cat, 4 dog) and a cat pair
    store.write_duplicates(((i, group.get(i), 0.1, int(i in (1, 4))) for i in range(1, 6)), features_key="k",
                           backbone_id="b", threshold=0.8, method="exact", n_images=5, n_groups=2, n_conflicts=1,
                           seconds=0.0)
    counted = [0.15, 0.25, 0.35, 0.45, 0.55]  # the counting P(label wrong): conflicts lower only the flag score
    sc = Scores(np.array([0.9, 0.8, 0.7, 0.6, 0.5], np.float32), np.full(5, -1), np.zeros(5, np.float32),
                np.array(counted))
    for weight in (0.5, 0.0):
        version = store.add_model(delta=0.5, metrics={})
        publish_scores(store, version, data, with_conflicts(store, data, sc, weight=weight), 0.5, lambda *a: None)
        got = store.db.execute("SELECT score, expected_wrong FROM scores WHERE model_version = ? ORDER BY image_id",
                               [version]).fetchall()
        lowered = weight > 0
        assert [r[0] for r in got] == pytest.approx([0.9 * (1 - 0.5 * 0.6) if lowered else 0.9, 0.8, 0.7,
                                                     0.6 * (1 - 0.5 * 0.9) if lowered else 0.6, 0.5], abs=1e-6)
        assert [r[1] for r in got] == counted


def test_conflicts_weigh_only_on_calibrated_probabilities():
    from annotator.pipeline import conflict_weight
    cfg = RoundConfig(conflict_weight=0.3)
    assert conflict_weight(cfg, {"method": "robust"}) == 0.3
    assert conflict_weight(cfg, {"method": "transfer", "transfer": {"calibrator": {"w": [1.0]}}}) == 0.3
    assert conflict_weight(cfg, {"method": "transfer", "transfer": {"calibrator": None}}) == 0.0  # verdict-free rule
    assert conflict_weight(cfg, {"method": "paper"}) == 0.0  # a relevance, not a probability


def test_a_member_with_a_verdict_vouches_for_the_class_the_verdict_gives_it(store):
    """Group: cat #1 (0.9), dog #4 (0.95, judged wrong: a cat), dog #5 (0.8). The verdict settles #4 as a cat, so
    cat #1 is lowered only by dog #5's model score (0.8, not #4's 0.95); dog #5 by what the verdict vouches for
    (1.0); the judged image keeps its score. Group 2: cat #2 judged 'wrong' alone vouches for nothing: cat #3
    keeps 0.7."""
    from annotator.pipeline import load_data
    from annotator.publish import with_conflicts
    from cleannet_core.score import Scores

    cids = store.ensure_classes(["cat", "dog"])
    store.add_images({"path": f"/img/{i}.jpg", "hash": f"h{i}", "label_id": cids["cat" if i < 3 else "dog"]}
                     for i in range(5))                       # ids 1-3 cat, 4-5 dog
    group = {1: 1, 4: 1, 5: 1, 2: 2, 3: 2}
    store.write_duplicates(((i, group.get(i), 0.1, int(i in (1, 4, 5))) for i in range(1, 6)), features_key="k",
                           backbone_id="b", threshold=0.8, method="exact", n_images=5, n_groups=2, n_conflicts=1,
                           seconds=0.0)
    store.record_verdict(4, "ann", "wrong", reason="uncertain", corrected_label="cat")
    store.record_verdict(2, "ann", "wrong", reason="uncertain")
    sc = Scores(np.array([0.9, 0.6, 0.7, 0.95, 0.8], np.float32), np.full(5, -1), np.zeros(5, np.float32))
    got = with_conflicts(store, load_data(store), sc, weight=0.5).score
    assert got.tolist() == pytest.approx([0.9 * (1 - 0.5 * 0.8), 0.6, 0.7, 0.95, 0.8 * (1 - 0.5 * 1.0)])

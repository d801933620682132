"""Near-duplicate groups and outlier scores: the math (cleannet_core.duplicates) with exact values, and the stored
runs, export columns, CLI and schema migration on real SQLite files with features planted in the cache."""
import csv
import io
import json

import numpy as np
import pytest
from click.testing import CliRunner

from annotator import duplicates as dup
from annotator.cli import cli
from annotator.export import COLUMNS, export_csv
from annotator.round_config import RoundConfig
from annotator.store import Store
from annotator.store.schema import SCHEMA_VERSION, _duplicate_groups
from cleannet_core.duplicates import GroupConfig, components, hash_pairs, outlier_scores, similar_pairs
from cleannet_core.features import FeatureCache

from helpers import database_before

DIM = 16


def test_exact_groups_of_a_seeded_case():
    """Equal content hashes join; a chain of pairs is one group named by its smallest index; loners get -1."""
    keys = ["k4", "k5", "k1", "k1", "k2", "k1", "k2", "k0", "k5", "k5"]
    pairs = hash_pairs(keys)
    assert pairs.tolist() == [[2, 3], [2, 5], [4, 6], [1, 8], [1, 9]]  # (first of its key, later one), in order
    assert components(10, pairs).tolist() == [-1, 1, 2, 2, 4, 2, 4, -1, 1, 1]
    assert components(5, np.array([[3, 4], [2, 3], [0, 1]])).tolist() == [0, 0, 2, 2, 2]  # chain 2-3-4
    assert components(3, np.zeros((0, 2), np.int64)).tolist() == [-1, -1, -1]


def test_similar_pairs_exact_and_index_agree_and_respect_the_threshold():
    """Planted copies (scaled, slightly perturbed) are found by both searches; cosine exactly at the threshold
    counts; zero rows match nothing."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 32)).astype(np.float32)
    x[100] = 3.0 * x[5]                       # cosine 1
    x[200] = x[7] + 0.05 * rng.normal(size=32).astype(np.float32)
    x[300] = 0.0
    x[301] = 0.0
    exact, cos, method = similar_pairs(x, config=GroupConfig(threshold=0.95))
    assert method == "exact" and sorted(map(tuple, exact.tolist())) == [(5, 100), (7, 200)]
    assert cos[exact[:, 0] == 5][0] == pytest.approx(1.0, abs=1e-6)
    index, _, method = similar_pairs(x, config=GroupConfig(threshold=0.95, exact_below=0, pca_dim=16))
    assert method == "faiss-ivf" and sorted(map(tuple, index.tolist())) == [(5, 100), (7, 200)]
    a = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)  # cosines 0.6, 0, 0.8
    assert sorted(map(tuple, similar_pairs(a, config=GroupConfig(threshold=0.8))[0].tolist())) == [(1, 2)]
    with pytest.raises(ValueError, match="threshold"):
        GroupConfig(threshold=1.5)


def test_outlier_score_is_one_minus_the_best_cosine_to_a_class_centroid():
    """Two classes along the axes; an image on the diagonal is 1 - cos 45 degrees from both, higher than any
    member; with refs, the nearest reference counts."""
    feats = np.array([[1, 0], [2, 0], [0, 1], [0, 3], [1, 1]], np.float32)
    labels = np.array([0, 0, 1, 1, 0])
    s = outlier_scores(feats, labels, 2)
    c0 = np.array([1 + 1 + 2 ** -0.5, 2 ** -0.5]) / np.linalg.norm([1 + 1 + 2 ** -0.5, 2 ** -0.5])
    assert s[2] == pytest.approx(0.0, abs=1e-6) and s[3] == pytest.approx(0.0, abs=1e-6)
    assert s[0] == pytest.approx(1 - max(c0[0], 0.0), abs=1e-6)
    assert s.argmax() == 4
    refs = np.array([[[1, 0]], [[0, 1]]], np.float32)
    assert outlier_scores(feats, labels, 2, refs=refs)[4] == pytest.approx(1 - 2 ** -0.5, abs=1e-6)


# ---- the application on a real store -----------------------------------------------------------------------

def planted_store(path):
    """Six images: 1 cat and 2 dog share bytes (2 is a copy marked at ingest); 3 cat and 4 dog are near-identical
    features; 5 cat far from both classes; 6 dog alone. Features go straight into the cache of a registered
    backbone, so no image file is read."""
    store = Store(path)
    ids = store.ensure_classes(["cat", "dog"])
    rows = [("a", "cat"), ("a", "dog"), ("b", "cat"), ("c", "dog"), ("d", "cat"), ("e", "dog")]
    store.add_images({"path": f"/nowhere/{i}.png", "hash": h, "label_id": ids[lab]} for i, (h, lab) in enumerate(rows))
    rng = np.random.default_rng(1)
    cat, dog = np.zeros(DIM, np.float32), np.zeros(DIM, np.float32)
    cat[0], dog[1] = 1.0, 1.0
    base = {"a": cat + 0.8 * np.eye(DIM, dtype=np.float32)[7], "b": cat + 0.5 * dog, "c": cat + 0.5 * dog + 0.01, "d": np.eye(DIM)[5] * 2,
            "e": dog + 0.2 * cat}
    feats = np.stack([base[k] + 0.001 * rng.random(DIM) for k in "abcde"]).astype(np.float16)
    size = RoundConfig().image_size or 224
    cache = FeatureCache.for_backbone(path.parent / "features", "planted", size, DIM)
    cache.add(list("abcde"), feats)
    (path.parent / "backbone.pt").write_bytes(b"")  # never loaded: every image is cached
    cfg = RoundConfig()
    store.add_artifact(kind="backbone", path=str(path.parent / "backbone.pt"), backbone_id="planted", source="test",
                       provenance={"arch": cfg.arch, "kind": cfg.backbone, "image_size": size, "num_classes": 2,
                                   "dim": DIM})
    return store


def test_refresh_stores_groups_and_outliers_and_recomputes_only_when_images_change(tmp_path):
    store = planted_store(tmp_path / "annotator.db")
    run = dup.refresh(store)
    assert (run["n_images"], run["n_groups"], run["n_conflicts"], run["method"]) == (6, 2, 2, "exact")
    found = dup.groups(store)
    assert [(g["group"], [m["id"] for m in g["members"]], g["conflict"], g["labels"]) for g in found] == [
        (1, [1, 2], True, ["cat", "dog"]), (3, [3, 4], True, ["cat", "dog"])]
    assert [m["status"] for m in found[0]["members"]] == ["ok", "duplicate"]
    top = store.top_outliers(limit=6)
    assert top[0]["image_id"] == 5 and top[0]["outlier_score"] > 0.5 > top[1]["outlier_score"]
    by_id = {o["image_id"]: o["outlier_score"] for o in top}
    assert by_id[1] == by_id[2]                      # the copy gets its original's score
    assert dup.groups(store, class_id=store.class_id("cat"), limit=1)[0]["group"] == 1
    assert dup.refresh(store)["id"] == run["id"]    # nothing changed: nothing computed
    cid = store.class_id("dog")
    store.add_images([{"path": "/nowhere/7.png", "hash": "b", "label_id": cid}])  # a byte copy of image 3
    again = dup.refresh(store)
    assert again["id"] != run["id"] and again["n_images"] == 7
    assert [m["id"] for m in dup.groups(store)[0]["members"]] == [3, 4, 7]  # larger groups first
    assert store._scalar("SELECT COUNT(*) FROM duplicates") == 7  # the old run's rows are gone
    assert store._scalar("SELECT COUNT(*) FROM duplicate_runs") == 1


def test_export_columns_duplicate_group_and_outlier_score(tmp_path):
    store = planted_store(tmp_path / "annotator.db")
    buf = io.StringIO(newline="")
    export_csv(store, buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert COLUMNS[-4:-2] == ("duplicate_group", "outlier_score")
    assert {r["duplicate_group"] for r in rows} == {""} and {r["outlier_score"] for r in rows} == {""}
    dup.refresh(store)
    buf = io.StringIO(newline="")
    export_csv(store, buf)
    rows = list(csv.DictReader(io.StringIO(buf.getvalue())))
    assert [r["duplicate_group"] for r in rows] == ["1", "1", "3", "3", "", ""]
    scores = [float(r["outlier_score"]) for r in rows]
    assert scores[4] == max(scores) and scores[0] == scores[1]


def test_cli_duplicates_json_and_text(tmp_path):
    db = tmp_path / "annotator.db"
    planted_store(db).close()
    runner = CliRunner()
    res = runner.invoke(cli, ["--db", str(db), "duplicates", "--json", "--outliers", "2"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["run"]["n_groups"] == 2 and out["run"]["n_conflicts"] == 2
    assert [[m["id"] for m in g["members"]] for g in out["groups"]] == [[1, 2], [3, 4]]
    assert out["groups"][0]["members"][1] == {"id": 2, "path": "/nowhere/1.png", "label": "dog",
                                              "status": "duplicate", "outlier_score": pytest.approx(
                                                  out["groups"][0]["members"][0]["outlier_score"])}
    assert [o["id"] for o in out["outliers"]][0] == 5 and len(out["outliers"]) == 2
    res = runner.invoke(cli, ["--db", str(db), "duplicates", "--class", "cat", "--outliers", "0"])
    assert res.exit_code == 0, res.output
    assert "2 near-duplicate groups among 6 images, 2 with conflicting labels" in res.stdout
    assert "group 1: 2 images, CONFLICT: cat, dog" in res.stdout
    res = runner.invoke(cli, ["--db", str(db), "duplicates", "--class", "cow"])
    assert res.exit_code == 1 and "unknown class 'cow'" in res.output


def test_a_database_of_the_previous_schema_gains_the_duplicate_tables(tmp_path):
    path = tmp_path / "old.db"
    database_before(path, _duplicate_groups).conn.close()
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert {"duplicate_runs", "duplicates"} <= set(store.db.table_names())
    assert store.images_count() == 1 and store.duplicate_run() is None and dup.groups(store) == []
    buf = io.StringIO(newline="")
    assert export_csv(store, buf) == 1


def test_the_queue_serves_members_of_conflicting_groups_first_but_never_as_audit_draws(tmp_path):
    """Verified class cat: its members of conflicting groups (1 and 3) come before the uncertainty order, marked
    'uncertain'; with every slot an audit draw they get no priority; none comes back once judged."""
    import random

    from annotator.queue import next_items
    store = planted_store(tmp_path / "annotator.db")
    store.set_verify(["cat"])
    version = store.add_model(delta=0.5, metrics={})
    store.write_scores(version, [(r["id"], r["label_id"], 0.5 if r["id"] == 5 else 0.9, 0.0 if r["id"] == 5 else 0.4,
                                  None, None) for r in store.iter_images()])
    store.make_current(version)
    store.set_setting("audit_share", 0.0)
    before = [i.image_id for i in next_items(store, "a", n=3)]
    assert before[0] == 5  # no duplicate run yet: the uncertainty order alone
    store.release_leases("a")
    dup.refresh(store)
    items = next_items(store, "b", n=3)
    assert [(i.image_id, i.reason) for i in items] == [(1, "uncertain"), (3, "uncertain"), (5, "uncertain")]
    store.release_leases("b")
    store.record_verdict(1, "b", "correct", reason="uncertain", model_version=version)
    assert [i.image_id for i in next_items(store, "c", n=1)] == [3]
    store.release_leases("c")
    store.set_setting("audit_share", 1.0)
    drawn = {i.image_id for i in next_items(store, "d", n=2, rng=random.Random(0))}
    assert drawn == {3, 5} and all(i.reason == "audit" for i in next_items(store, "d", n=2))

"""annotator.artifacts and cleannet_core.atomic: model files written atomically and registered with provenance."""
import json
from pathlib import Path

import pytest
import torch
from sqlite_utils import Database

from annotator import artifacts
from annotator.schema import MIGRATIONS
from annotator.store import SCHEMA_VERSION, Store
from cleannet_core.atomic import atomic_write
from cleannet_core.classifier import Backbone
from cleannet_core.features import backbone_id


def test_atomic_write_replaces_whole_files_and_leaves_nothing_on_error(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    with atomic_write(path, text=True) as f:
        f.write("first")
    with pytest.raises(RuntimeError):
        with atomic_write(path, text=True) as f:
            f.write("half of the second")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "first" and [p.name for p in path.parent.iterdir()] == ["f.txt"]
    with atomic_write(path) as f:
        f.write(b"second")
    assert path.read_bytes() == b"second" and [p.name for p in path.parent.iterdir()] == ["f.txt"]


def test_backbone_and_scorer_are_registered_with_their_provenance(tmp_path):
    store = Store(tmp_path / "state" / "a.db")
    assert artifacts.current_backbone(store) is None
    torch.manual_seed(0)
    model = Backbone("resnet18", 3, small_input=True).eval()
    info = artifacts.save_backbone_artifact(store, model, class_names=["a", "b", "c"], source="test weights",
                                            image_size=32, kind="noisy", provenance={"weights": None, "parent": None})
    assert info == artifacts.current_backbone(store)
    assert (info.id, info.arch, info.num_classes, info.image_size, info.kind) == (backbone_id(model), "resnet18", 3,
                                                                                  32, "noisy")
    assert info.path.startswith(str(tmp_path / "state" / "backbones"))
    loaded = artifacts.load_backbone_artifact(info)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))

    path = artifacts.save_scorer_artifact(store, {"refs": torch.ones(3, 2, 4)}, method="transfer", backbone=info,
                                          provenance={"max_verdict_id": 7, "n_verdicts": 5})
    ckpt = artifacts.load_scorer(path)
    assert ckpt["method"] == "transfer" and ckpt["backbone"] == info.asdict() and torch.equal(ckpt["refs"],
                                                                                               torch.ones(3, 2, 4))
    row = store.artifact_at(str(path))
    assert (row["kind"], row["backbone_id"], row["source"]) == ("scorer", info.id, "transfer")
    assert row["provenance"] == {"method": "transfer", "max_verdict_id": 7, "n_verdicts": 5}
    assert [a["kind"] for a in store.artifacts()] == ["backbone", "scorer"]
    with pytest.raises(ValueError, match="artifact kind"):
        store.add_artifact(kind="weights", path="x", backbone_id="b", source="s", provenance={})

    newer = artifacts.save_backbone_artifact(store, model, class_names=["a", "b", "c"], source="again",
                                             image_size=32, kind="noisy", provenance={"parent": info.id})
    assert artifacts.current_backbone(store) == newer  # the latest registered one
    Path(newer.path).unlink()
    assert artifacts.current_backbone(store) is None  # its file is gone: no backbone, a new one gets built


def test_a_classifier_written_again_to_the_same_path_replaces_its_record(tmp_path):
    """`train-classifier --out clf.pt` run twice: the second file replaces the first, and so does its record."""
    store = Store(tmp_path / "state" / "a.db")
    model = Backbone("resnet18", 2, small_input=True).eval()
    out = tmp_path / "clf.pt"
    for run in (1, 2):
        artifacts.save_classifier_artifact(store, model, out, class_names=["a", "b"], source=f"run {run}",
                                           provenance={"run": run})
    assert [(a["path"], a["source"], a["provenance"]) for a in store.artifacts("classifier")] == [
        (str(out), "run 2", {"run": 2})]
    assert store.latest_artifact("classifier")["source"] == "run 2"


def test_migration_moves_the_backbone_setting_into_artifacts(tmp_path):
    path = tmp_path / "old.db"
    db = Database(path)
    for migrate in MIGRATIONS[:2]:  # a database from before the artifacts table
        migrate(db)
    db.execute("PRAGMA user_version = 2")
    info = {"path": "/state/backbones/backbone-1.pt", "source": "trained on the noisy labels", "arch": "resnet18",
            "image_size": 32, "num_classes": 10, "id": "abc123"}
    db.execute("INSERT INTO settings (key, value) VALUES ('backbone', ?)", [json.dumps(info)])
    db.conn.commit()
    db.close()
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION and store.get_setting("backbone") is None
    (row,) = store.artifacts("backbone")
    assert (row["path"], row["backbone_id"], row["source"]) == (info["path"], "abc123", info["source"])
    assert row["provenance"] == {"arch": "resnet18", "image_size": 32, "num_classes": 10}

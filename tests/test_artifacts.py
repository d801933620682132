"""annotator.artifacts and cleannet_core.atomic: model files written atomically and registered with provenance."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlite_utils import Database

from annotator import artifacts
from annotator.store.schema import MIGRATIONS
from annotator.store import SCHEMA_VERSION, Store
from cleannet_core.atomic import atomic_write
from cleannet_core.classifier import Backbone
from cleannet_core.features import backbone_id
from cleannet_core.model import CleanNet, CleanNetConfig
from cleannet_core.probe import Probe
from cleannet_core.transfer import Calibrator, TransferScore


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


def test_scorers_load_as_weights_only_and_nothing_else_is_unpickled(tmp_path):
    """What a round saves (pipeline._fit_transfer / _fit_paper) loads with weights_only; any other object is
    refused, not unpickled."""
    store = Store(tmp_path / "state" / "a.db")
    info = artifacts.BackboneInfo(path="b.pt", id="resnet18-0", source="test", arch="resnet18", image_size=32,
                                  num_classes=2, kind="noisy", dim=8)
    probe = Probe(torch.zeros(5, 8), torch.ones(5, 8), torch.zeros(5, 8, 2), torch.zeros(5, 2))
    calibrator = Calibrator(np.zeros(2), np.ones(2), np.array([0.5, 0.25]), 0.125)
    cleannet = CleanNet(CleanNetConfig(img_dim=8, num_ref=2))
    payloads = {"transfer": {"probe": probe.state(), "transfer": TransferScore(("a", "b"), calibrator).state(),
                             "delta": 0.5, "class_ids": [1, 2], "refs": torch.ones(2, 2, 8)},
                "paper": {"cleannet": cleannet.checkpoint(), "delta": 0.1, "class_ids": [1, 2],
                          "refs": torch.ones(2, 2, 8)}}
    loaded = {method: artifacts.load_scorer(artifacts.save_scorer_artifact(store, payload, method=method,
                                                                           backbone=info, provenance={}))
              for method, payload in payloads.items()}
    transfer, paper = loaded["transfer"], loaded["paper"]
    assert (transfer["delta"], transfer["class_ids"], paper["delta"]) == (0.5, [1, 2], 0.1)
    assert torch.equal(transfer["refs"], torch.ones(2, 2, 8)) and transfer["backbone"] == info.asdict()
    assert Probe.from_state(transfer["probe"]).w.shape == (5, 8, 2)
    score = TransferScore.from_state(transfer["transfer"])
    assert score.signals == ("a", "b") and score.calibrator.b == 0.125 and score.calibrator.w.tolist() == [0.5, 0.25]
    assert CleanNet.from_checkpoint(paper["cleannet"]).cfg == CleanNetConfig(img_dim=8, num_ref=2)
    hostile = tmp_path / "state" / "models" / "hostile.pt"
    torch.save({"delta": 0.5, "payload": Path("/etc/passwd")}, hostile)  # a pickled object, not a tensor
    with pytest.raises(pickle.UnpicklingError):
        artifacts.load_scorer(hostile)


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

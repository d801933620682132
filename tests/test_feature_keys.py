"""Rounds key features by the ingest hash: a round on cached images opens no image file, and a file that
changed since ingest is reported, never served features of its old content."""
import builtins
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from annotator import pipeline
from annotator.ingest import ingest_folder
from annotator.store import Store
from cleannet_core.features import CHANGED


@pytest.fixture
def store(tmp_path):
    """3 classes x 12 distinct 24 px images, ingested; round settings with a local (random) weights file."""
    rng = np.random.default_rng(0)
    for cls in ("a", "b", "c"):
        (tmp_path / "images" / cls).mkdir(parents=True)
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
                tmp_path / "images" / cls / f"{i}.png")
    torch.manual_seed(0)
    torch.save(resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    s = Store(tmp_path / "state" / "a.db")
    assert ingest_folder(s, tmp_path / "images", progress=False).added == 36
    s.set_verify(["a"])
    s.set_setting("round", {"weights_path": str(tmp_path / "r18.pth"), "image_size": 16, "num_ref": 4})
    yield s
    s.close()


def config(s: Store) -> pipeline.RoundConfig:
    return pipeline.RoundConfig(**s.get_setting("round"), device="cpu")


def test_a_cached_round_opens_no_image_file(store, tmp_path, monkeypatch):
    v1 = pipeline.run_round(store, config(store))
    first = store.current_scores()
    # every image file is gone, and any attempt to open one (or the backbone file) fails loudly
    shutil.move(tmp_path / "images", tmp_path / "moved")
    opened = []
    real_open = builtins.open

    def spy(file, *a, **kw):
        opened.append(str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy)
    v2 = pipeline.run_round(store, config(store))
    monkeypatch.undo()
    assert v2 > v1 and store.current_model()["version"] == v2
    assert not [p for p in opened if "images" in p or "moved" in p or "backbone-" in p]
    assert store.ingest_errors() == []  # nothing unreadable: all 36 came from the cache
    assert store.current_scores().keys() == first.keys()


def test_a_file_changed_since_ingest_is_reported_not_served(store, tmp_path):
    data = pipeline.load_data(store)
    cfg = config(store)
    model, info = pipeline.ensure_backbone(store, data, cfg, lambda *a: None)
    changed = data.paths[5]
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(changed)  # replaced after ingest, before extraction
    feats, ok = pipeline.features(store, data, model, info, cfg)
    assert feats.dtype == np.float16 and feats.shape == (36, 512)
    assert ok.sum() == 35 and not ok[5] and not feats[5].any()
    assert [(e["path"], e["reason"]) for e in store.ingest_errors()] == [(changed, CHANGED)]
    feats2, ok2 = pipeline.features(store, data, None, info, cfg)  # still not cached under the old hash
    assert not ok2[5] and np.array_equal(feats2, feats)

"""Rounds key features by the ingest hash: a round on cached images opens no image file, and a file that
changed since ingest is reported, never served features of its old content."""
import builtins
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from annotator import pipeline
from annotator.round_config import RoundConfig
from annotator.artifacts import current_backbone
from annotator.ingest import ESCAPES, MISSING, NOT_IMAGE, ingest_folder
from annotator.rescan import rescan
from annotator.store import Store
from cleannet_core.loading import CHANGED


@pytest.fixture
def round_store(tmp_path):
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
    s.set_setting("round", {"arch": "resnet18", "weights_path": str(tmp_path / "r18.pth"), "image_size": 16,
                           "num_ref": 4})
    yield s
    s.close()


def config(s: Store) -> RoundConfig:
    return RoundConfig(**s.get_setting("round"), device="cpu")


@pytest.mark.slow
def test_a_cached_round_opens_no_image_file(round_store, tmp_path, monkeypatch):
    v1 = pipeline.run_round(round_store, config(round_store))
    first = round_store.current_scores()
    # every image file is gone, and any attempt to open one (or the backbone file) fails loudly
    shutil.move(tmp_path / "images", tmp_path / "moved")
    opened = []
    real_open = builtins.open

    def spy(file, *a, **kw):
        opened.append(str(file))
        return real_open(file, *a, **kw)

    monkeypatch.setattr(builtins, "open", spy)
    v2 = pipeline.run_round(round_store, config(round_store))
    monkeypatch.undo()
    assert v2 > v1 and round_store.current_model()["version"] == v2
    assert not [p for p in opened if "images" in p or "moved" in p or "backbone-" in p]
    assert round_store.ingest_errors() == []  # nothing unreadable: all 36 came from the cache
    assert round_store.current_scores().keys() == first.keys()


def test_a_file_changed_since_ingest_is_reported_not_served(round_store, tmp_path):
    data = pipeline.load_data(round_store)
    cfg = config(round_store)
    model, info = pipeline.ensure_backbone(round_store, data, cfg, lambda *a: None)
    changed = data.paths[5]
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(changed)  # replaced after ingest, before extraction
    feats, ok = pipeline.features(round_store, data, model, info, cfg)
    assert feats.dtype == np.float16 and feats.shape == (36, 512)
    assert ok.sum() == 35 and not ok[5] and not feats[5].any()
    assert [(e["path"], e["reason"]) for e in round_store.ingest_errors()] == [(changed, CHANGED)]
    feats2, ok2 = pipeline.features(round_store, data, None, info, cfg)  # still not cached under the old hash
    assert not ok2[5] and np.array_equal(feats2, feats)


@pytest.mark.slow
def test_rescan_finds_changed_files_by_size_and_mtime_and_the_next_round_extracts_them(round_store, tmp_path):
    pipeline.run_round(round_store, config(round_store))
    data = pipeline.load_data(round_store)
    info = current_backbone(round_store)
    old, _ = pipeline.features(round_store, data, None, info, config(round_store))
    by_path = {r["path"]: r for r in round_store.iter_images()}
    changed, copy, touched, broken, gone = (data.paths[i] for i in (3, 20, 7, 11, 30))
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(changed)           # replaced in place
    shutil.copy(data.paths[0], copy)                                            # now the content of image 0
    os.utime(touched, (1e9, 1e9))                                               # same bytes, other mtime
    Path(broken).write_bytes(b"\x89PNG truncated")
    os.remove(gone)
    round_store.record_verdict(by_path[changed]["id"], "ann", "correct", reason="uncertain")

    report = rescan(round_store)
    assert (report.images, report.unchanged, report.rehashed, report.changed) == (36, 31, 4, 3)
    assert report.changed_with_verdicts == 1
    assert sorted(report.errors) == sorted([(gone, MISSING), (broken, NOT_IMAGE)])
    assert "31 unchanged (not read)" in report.summary()
    now = {r["path"]: r for r in round_store.iter_images()}
    assert now[changed]["hash"] != by_path[changed]["hash"] and now[touched]["hash"] == by_path[touched]["hash"]
    assert now[touched]["mtime"] == 1e9 and now[gone] == by_path[gone]
    assert (now[copy]["status"], now[copy]["duplicate_of"]) == ("duplicate", now[data.paths[0]]["id"])
    assert {(e["source"], e["path"]) for e in round_store.ingest_errors()} == {("rescan", gone), ("rescan", broken)}

    again = rescan(round_store)  # everything recorded: only the missing file is reported again
    assert (again.unchanged, again.rehashed, again.changed, again.errors) == (35, 0, 0, [(gone, MISSING)])

    data2 = pipeline.load_data(round_store)
    assert copy not in data2.paths and len(data2.paths) == 35
    new, ok = pipeline.features(round_store, data2, None, info, config(round_store))
    row = {p: i for i, p in enumerate(data2.paths)}
    assert ok[row[changed]] and not np.array_equal(new[row[changed]], old[data.paths.index(changed)])
    assert not ok[row[broken]]
    for kept in (touched, gone):  # same content; the missing file's features are cached (rescan reports it)
        assert ok[row[kept]] and np.array_equal(new[row[kept]], old[data.paths.index(kept)])


def test_rescan_refuses_links_as_ingest_does_and_counts_them(round_store, tmp_path):
    before = {r["path"]: r["hash"] for r in round_store.iter_images()}
    root = (tmp_path / "images").resolve()
    outside = tmp_path / "outside.png"
    Image.fromarray(np.full((24, 24, 3), 9, np.uint8)).save(outside)
    linked = root / "a" / "2.png"
    linked.unlink()
    linked.symlink_to(outside)  # the file became a link leading out
    shutil.move(root / "b", tmp_path / "elsewhere")
    (root / "b").symlink_to(tmp_path / "elsewhere")  # a folder became a link: its files' size and mtime are the same
    report = rescan(round_store)
    through_b = [p for p in before if Path(p).parent == root / "b"]
    assert sorted(report.errors) == sorted([(str(linked), ESCAPES)] + [(p, ESCAPES) for p in through_b])
    assert report.counts == {ESCAPES: 13} and "(path escapes root: 13)" in report.summary()
    assert {r["path"]: r["hash"] for r in round_store.iter_images()} == before  # nothing read through a link


def test_rescan_command(round_store, tmp_path):
    from click.testing import CliRunner
    from annotator.cli import cli
    os.utime(pipeline.load_data(round_store).paths[0], (1e9, 1e9))
    res = CliRunner().invoke(cli, ["--db", str(round_store.path), "rescan"])
    assert res.exit_code == 0 and "36 images; 35 unchanged (not read); 1 rehashed; 0 changed; 0 errors" in res.output

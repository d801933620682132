"""The CLI through click's CliRunner: each command against a real database, checked via the Python API."""
import csv
import io
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision.models import resnet18

from annotator.cli import cli
from annotator.round_config import RoundConfig, save_round_config
from annotator.store import Store

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


@pytest.fixture
def env(tmp_path):
    """A class-folder tree of 3 x 20 small coloured images (2 per class mislabelled), one corrupt file."""
    root = tmp_path / "images"
    for k, (cls, rgb) in enumerate(COLOURS.items()):
        (root / cls).mkdir(parents=True)
        for i in range(20):
            colour = rgb if i >= 2 else COLOURS["blue" if cls != "blue" else "red"]
            img = Image.new("RGB", (32, 32), tuple(min(255, c + 3 * i) for c in colour))
            img.putpixel((0, 0), (i, k, 7))  # distinct content, so none is a duplicate
            img.save(root / cls / f"{i}.png")
    (root / "red" / "broken.jpg").write_bytes(b"not a jpeg")
    db = tmp_path / "state" / "a.db"
    runner = CliRunner()

    def run(*args, ok=True):
        res = runner.invoke(cli, ["--db", str(db), *args], catch_exceptions=False)
        if ok:
            assert res.exit_code == 0, res.output
        return res

    return run, db, root


def test_every_command_has_help_with_an_example():
    runner = CliRunner()
    for name, cmd in cli.commands.items():
        res = runner.invoke(cli, [name, "--help"])
        assert res.exit_code == 0, name
        if name != "users":
            assert "Example:" in res.output, name


def test_init_ingest_classes_users_status(env, monkeypatch):
    run, db, root = env
    monkeypatch.setenv("ANNOTATOR_ADMIN_PASSWORD", "s3cret-pw-long")
    assert "admin" in run("init").output
    out = run("ingest", "--folder", str(root)).output
    assert "60 added" in out and "1 errors" in out and "broken.jpg" in out
    assert "0 added" in run("ingest", "--folder", str(root)).output  # idempotent
    res = run("ingest", "--folder", str(root), "--csv", "x.csv", ok=False)
    assert res.exit_code == 2 and "exactly one" in res.output
    res = run("classes", "--verify", "purple", ok=False)
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1 and "purple" in res.output
    run("classes", "--verify", "red", "--verify", "green")
    assert {c["name"] for c in Store(db).classes() if c["verify"]} == {"red", "green"}
    out = run("users", "add", "alice", "--role", "annotator").output
    assert "password:" in out and Store(db).get_user("alice")["role"] == "annotator"
    res = run("users", "add", "alice", "--role", "lead", ok=False)
    assert res.exit_code == 1 and "alice" in res.output
    status = json.loads(run("status", "--json").output)
    assert status["images"] == 60 and status["verdicts"] == 0 and status["classes_verified"] == 2
    assert status["model_version"] is None and set(status["worker"]) >= {"phase", "heartbeat_age_s"}
    assert status["ingest_errors"]


def test_users_add_says_the_name_as_stored(env):
    run, db, root = env
    out = run("users", "add", " \uff22ob ", "--role", "annotator").output  # a full-width B, spaces around
    assert out.startswith("added annotator 'Bob' with password: ") and Store(db).get_user("bob")["name"] == "Bob"


def test_ingest_and_rescan_list_the_first_errors_and_count_the_rest(env):
    run, db, root = env
    for i in range(24):
        (root / "red" / f"bad{i:02d}.png").write_bytes(b"not a png")
    res = run("ingest", "--folder", str(root))
    listed = [line for line in res.stderr.splitlines() if line.startswith("  not an image: ")]
    assert len(listed) == 20 and "  ... and 5 more (see the Admin page)" in res.stderr  # 24 + broken.jpg
    for path in [root / "green" / f"{i}.png" for i in range(20)] + [root / "blue" / "0.png", root / "blue" / "1.png"]:
        path.unlink()
    res = run("rescan")
    assert res.stderr.count("  missing: ") == 20 and "  ... and 2 more (see the Admin page)" in res.stderr


@pytest.mark.slow
def test_train_score_extract_export(env, tmp_path):
    run, db, root = env
    run("ingest", "--folder", str(root))
    run("classes", "--verify", "red")
    store = Store(db)
    save_round_config(store, RoundConfig(backbone_epochs=1, steps=40, num_ref=4))
    first = store.verify_classes()["red"]
    ids = [r["id"] for r in store.iter_images() if r["label_id"] == first][:6]
    for i, image_id in enumerate(ids):
        store.record_verdict(image_id, "admin", "correct" if i % 2 else "wrong", reason="audit")
    assert "model version 1 is current" in run("train").output
    # the default backbone: frozen ImageNet EfficientNet-Lite0, small images upscaled to 128 px
    out = run("extract").output  # cached backbone, cached features: nothing trained, nothing extracted
    assert "60 images, feature vectors of size 1280 (backbone: ImageNet" in out
    assert "60 were cached, 0 extracted by 1 process(es)" in out
    status = json.loads(run("status", "--json").output)
    assert status["backbone"]["arch"] == "efficientnet_lite0" and status["backbone"]["kind"] == "pretrained"
    assert status["backbone"]["image_size"] == 128 and "package" in status["backbone"]["source"]
    assert "model version 2 is current" in run("score").output
    assert store.current_model()["version"] == 2 and len(store.current_scores()) == 60
    assert store.current_model()["metrics"]["method"] == "robust"  # the default
    default_scores = store.current_scores()
    assert "model version 3 is current" in run("train", "--method", "paper").output
    assert store.current_model()["metrics"]["method"] == "paper" and store.current_model()["metrics"]["best_step"]
    assert "model version 4 is current" in run("score").output  # rescoring a paper model
    assert store.current_scores() != default_scores
    assert "model version 5 is current" in run("train").output  # back to the default from a paper model
    assert "model version 6 is current" in run("score").output
    np.testing.assert_allclose([store.current_scores()[i] for i in sorted(default_scores)],
                               [default_scores[i] for i in sorted(default_scores)], atol=1e-5)
    assert run("train", "--method", "nope", ok=False).exit_code == 2
    store.set_setting("round", {"backbone_epochs": 1, "steps": 40, "num_ref": 4, "method": "nope"})
    res = run("train", ok=False)
    assert res.exit_code == 1 and "bad round setting: method must be one of" in res.output
    save_round_config(store, RoundConfig(backbone_epochs=1, steps=40, num_ref=4))
    out = tmp_path / "clean.csv"
    run("export", "--out", str(out))
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 60 and {r["model_version"] for r in rows} == {"6"}
    assert sum(r["verdict"] == "wrong" for r in rows) == 3
    kept = run("export", "--out", "-", "--only-kept", "--threshold", "-1").stdout  # every score is >= -1
    assert len(list(csv.DictReader(io.StringIO(kept)))) == 57  # everything but the 3 verified-wrong rows


@pytest.mark.slow
def test_an_image_broken_after_ingest_is_counted_and_the_round_still_scores_everything(env):
    run, db, root = env
    run("ingest", "--folder", str(root))
    run("classes", "--verify", "red")
    store = Store(db)
    save_round_config(store, RoundConfig(backbone_epochs=1, steps=40, num_ref=4))
    (root / "green" / "7.png").write_bytes(b"truncated on the file server")
    out = run("extract").output
    assert "60 images, feature vectors of size 1280" in out and "0 were cached, 59 extracted" in out
    assert "1 images could not be read" in out
    again = run("extract").output  # the unreadable file is tried again, and reported again
    assert "59 were cached, 0 extracted" in again and "1 images could not be read" in again
    assert "model version 1 is current" in run("train").output
    assert len(store.current_scores()) == 60
    assert "model version 2 is current" in run("train", "--method", "paper", "--steps", "40").output
    assert len(store.current_scores()) == 60
    assert any(e["path"].endswith("7.png") and e["source"] == "features" for e in store.ingest_errors())


def test_score_without_model_is_a_clear_error(env):
    run, db, root = env
    run("ingest", "--folder", str(root))
    res = run("score", ok=False)
    assert res.exit_code == 1 and "no model yet" in res.output


@pytest.mark.slow
def test_extract_says_which_backbone_and_never_swaps_it_silently(env, tmp_path):
    run, db, root = env
    run("ingest", "--folder", str(root))
    save_round_config(Store(db), RoundConfig(arch="resnet18", backbone_epochs=1, num_ref=4))
    out = run("extract").output  # no ImageNet weights offline: the first extract trains, and says so
    assert "ImageNet weights for resnet18 are not available offline" in out
    assert "training the resnet18 backbone on 60 images (1 epochs)" in out  # the backbone bar's text
    assert "backbone epoch 1/1: train accuracy" in out
    assert "(backbone: trained on the noisy labels (no ImageNet weights available offline))" in out
    assert "using the project's backbone (trained on the noisy labels" in run("train").output
    first = Store(db).latest_artifact("backbone")
    weights = tmp_path / "r18.pth"
    torch.manual_seed(0)
    torch.save(resnet18().state_dict(), weights)
    res = run("extract", "--weights", str(weights), ok=False)
    assert res.exit_code == 1 and "already has a backbone (trained on the noisy labels" in res.output
    assert "--new-backbone" in res.output and Store(db).latest_artifact("backbone") == first
    out = run("extract", "--weights", str(weights), "--new-backbone").output
    new = Store(db).latest_artifact("backbone")
    assert new["backbone_id"] != first["backbone_id"]
    assert new["source"].startswith("ImageNet (ImageNet weights for resnet18 loaded")
    assert new["provenance"]["weights"] == str(weights) and f"loaded from {weights}" in out
    res = run("score", ok=False)  # the current model scored the old features
    assert res.exit_code == 1 and "the backbone changed since the current model" in res.output
    assert "model version 2 is current" in run("train").output
    res = run("extract", "--weights", str(tmp_path / "missing.pth"), "--new-backbone", ok=False)
    assert res.exit_code == 1 and "does not exist" in res.output

"""One image opener for every reader of image bytes (cleannet_core.safe_open): no symbolic link along the path,
a regular file (checked on the descriptor; a FIFO never blocks), one hard link, bounded size and time. Ingest,
rescan, display, the content key, extraction and classifier training all refuse what it refuses."""
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cleannet_core import safe_open
from cleannet_core.classifier import Backbone, ImageDataset, make_transform
from cleannet_core.features import backbone_id, content_key, extract_features
from cleannet_core.keys import CHANGED, content_hash
from cleannet_core.safe_open import ESCAPES, HARD_LINKED, NOT_REGULAR, TIMED_OUT, TOO_LARGE, FileRefused, read_image

from annotator import display
from annotator.ingest import ingest_csv, ingest_folder
from annotator.rescan import rescan
from annotator.store import Store

HANG_GUARD_S = 30  # a reader blocked on a FIFO never returns; this only bounds how long the test waits for it


def finishes(fn, *args, **kwargs):
    """fn(*args, **kwargs)'s result; fails (instead of hanging forever) when fn blocks, e.g. opening a FIFO."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), f"{getattr(fn, '__name__', fn)} blocked (a FIFO opened or read?)"
    if "error" in out:
        raise out["error"]
    return out["value"]


def png(path: Path, colour: tuple[int, int, int] = (1, 2, 3), size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


@pytest.fixture
def tree(tmp_path):
    """root/cat/: ok.png, fifo.png (a FIFO), hard.png (a hard link to a file outside the root), link.png (a
    symbolic link to it); via -> root (a linked folder). Returns (root, outside secret image)."""
    root = tmp_path / "root"
    ok = png(root / "cat" / "ok.png")
    secret = png(tmp_path / "private" / "secret.png", (200, 0, 0))
    os.mkfifo(root / "cat" / "fifo.png")
    os.link(secret, root / "cat" / "hard.png")
    (root / "cat" / "link.png").symlink_to(secret)
    (tmp_path / "via").symlink_to(root)
    assert ok.exists()
    return root, secret


def reason(path) -> str:
    with pytest.raises(FileRefused) as e:
        finishes(read_image, path)
    return e.value.reason


def test_the_opener_refuses_links_fifos_devices_hard_links_and_oversize(tree, tmp_path):
    root, secret = tree
    assert read_image(root / "cat" / "ok.png").data == (root / "cat" / "ok.png").read_bytes()
    assert reason(root / "cat" / "link.png") == ESCAPES
    assert reason(tmp_path / "via" / "cat" / "ok.png") == ESCAPES  # a link along the path, not only the last component
    assert reason(root / "cat" / "fifo.png") == NOT_REGULAR  # and it does not block
    assert reason("/dev/zero") == NOT_REGULAR
    assert reason(root / "cat") == NOT_REGULAR
    assert reason(root / "cat" / "hard.png") == HARD_LINKED
    assert reason(root / "cat" / "gone.png") == safe_open.MISSING
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (2 * safe_open.CHUNK + 1))
    with pytest.raises(FileRefused) as e:
        read_image(big, max_bytes=safe_open.CHUNK)
    assert e.value.reason == TOO_LARGE
    with pytest.raises(FileRefused) as e:  # a read slower than its deadline is given up between chunks
        read_image(big, timeout_s=0)
    assert e.value.reason == TIMED_OUT
    assert len(read_image(big).data) == 2 * safe_open.CHUNK + 1
    os.unlink(root / "cat" / "hard.png")  # its other name gone, the outside file has one link again
    assert read_image(secret).data == secret.read_bytes()


def in_store(db: Path, fn, *args, **kwargs):
    """fn(store, *args, **kwargs) on a store opened in the calling thread (a Store stays in its thread)."""
    with Store(db) as store:
        return fn(store, *args, **kwargs)


def test_ingest_folder_and_csv_refuse_what_the_opener_refuses_without_blocking(tree, tmp_path):
    root, _ = tree
    report = finishes(in_store, tmp_path / "a" / "annotator.db", ingest_folder, root, progress=False)
    assert report.added == 1
    assert {Path(p).name: r for p, r in report.errors} == {"fifo.png": NOT_REGULAR, "hard.png": HARD_LINKED,
                                                          "link.png": ESCAPES}
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\ncat/ok.png,cat\ncat/fifo.png,cat\ncat/hard.png,cat\n")
    report = finishes(in_store, tmp_path / "b" / "annotator.db", ingest_csv, csv_path, root, progress=False)
    assert report.added == 1 and dict(report.errors) == {"cat/fifo.png": NOT_REGULAR, "cat/hard.png": HARD_LINKED}


def test_rescan_refuses_a_file_replaced_by_a_fifo_or_a_hard_link(tmp_path):
    root = tmp_path / "root"
    a, b = png(root / "cat" / "a.png"), png(root / "cat" / "b.png", (4, 5, 6))
    secret = png(tmp_path / "private" / "secret.png", (200, 0, 0))
    db = tmp_path / "state" / "annotator.db"
    with Store(db) as store:
        assert ingest_folder(store, root, progress=False).added == 2
        hashes = {r["path"]: r["hash"] for r in store.iter_images()}
    a.unlink()
    os.mkfifo(a)
    b.unlink()
    os.link(secret, b)
    report = finishes(in_store, db, rescan)
    assert sorted(report.errors) == [(str(a), NOT_REGULAR), (str(b), HARD_LINKED)] and report.changed == 0
    with Store(db) as store:
        assert {r["path"]: r["hash"] for r in store.iter_images()} == hashes  # the secret's content not recorded


def test_display_refuses_a_hard_link_and_a_file_changed_since_ingest(tree, tmp_path):
    root, secret = tree
    ok = root / "cat" / "ok.png"
    recorded = content_hash(ok.read_bytes())
    assert display.read_for_display(str(ok), expected_hash=recorded) == ok.read_bytes()
    assert display.read_for_display(str(root / "cat" / "hard.png"),
                                    expected_hash=content_hash(secret.read_bytes())) == HARD_LINKED
    assert finishes(display.read_for_display, str(root / "cat" / "fifo.png"), expected_hash=recorded) == NOT_REGULAR
    png(ok, (9, 9, 9))  # replaced in place by another valid image
    assert display.read_for_display(str(ok), expected_hash=recorded) == CHANGED


def test_the_content_key_and_extraction_refuse_without_blocking(tree):
    root, _ = tree
    paths = [root / "cat" / n for n in ("ok.png", "fifo.png", "hard.png", "link.png")]
    with pytest.raises(FileRefused):
        finishes(content_key, paths[1])
    torch.manual_seed(0)
    model = Backbone("resnet18", 2, small_input=True).eval()
    result = finishes(extract_features, model, paths, cache_dir=root.parent / "cache", backbone_id=backbone_id(model),
                      image_size=32, batch_size=4, num_workers=0, device="cpu", progress=False)
    assert result.readable.tolist() == [True, False, False, False]
    reasons = dict(result.errors)
    assert [reasons[str(p)].split(":")[0] for p in paths[1:]] == [NOT_REGULAR, HARD_LINKED, ESCAPES]


def test_classifier_training_data_refuses_without_blocking(tree):
    root, _ = tree
    paths = [root / "cat" / n for n in ("ok.png", "fifo.png", "hard.png", "link.png")]
    ds = ImageDataset(paths, np.zeros(4, dtype=np.int64), make_transform(32, train=False, arch="resnet18"), 32)
    errors = [finishes(ds.__getitem__, i)[3] for i in range(4)]
    assert errors[0] == "" and [e.split(":")[0] for e in errors[1:]] == [NOT_REGULAR, HARD_LINKED, ESCAPES]

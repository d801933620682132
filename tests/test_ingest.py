"""annotator.ingest on a bad-input corpus built here, a class-folder tree and the demo's CIFAR-10N images."""

import csv
import io
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from helpers import DEMO, NAMES, demo_rows

from annotator.ingest import (CORRUPT, EMPTY, ESCAPES, MAX_PIXELS, MISSING, NOT_IMAGE, TOO_LARGE, UNKNOWN_CLASS,
                              NOT_REGULAR, BAD_ROW, DUPLICATE_ROW, BadSource, _pixel_limit, decode,
                              ingest_csv, ingest_folder)
from annotator.rescan import rescan
from cleannet_core.keys import content_hash, content_key

HYPERLINK = '=HYPERLINK("http://x")'
SCRIPT = "<script>alert(1)</script>"


def image_bytes(seed: int, fmt: str = "PNG", size: int = 8) -> bytes:
    """A small distinct image: every pixel = seed."""
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (seed, 255 - seed, seed // 2)).save(buf, fmt)
    return buf.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG file whose header claims width x height (decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture
def corpus(tmp_path):
    """root/ with good and bad files, a CSV over them, and the exact reason expected per bad row."""
    root = tmp_path / "root"
    root.mkdir()
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(image_bytes(200, "JPEG"))
    jpeg = image_bytes(10, "JPEG", size=32)
    files = {
        "good1.png": image_bytes(1), "good2.jpg": image_bytes(2, "JPEG"), "hyper.png": image_bytes(3),
        "script.png": image_bytes(4), "samecontent.png": image_bytes(1), "bird.png": image_bytes(5),
        "corrupt.jpg": jpeg[:300] + bytes(i % 2 * 255 for i in range(len(jpeg) - 300)),
        "truncated.jpg": jpeg[:-2], "empty.jpg": b"", "text.jpg": b"hello, I am not a JPEG\n",
        "big.png": image_bytes(6, size=40), "huge.png": png_declaring(20000, 20000),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    (root / "dir.jpg").mkdir()
    (root / "link.jpg").symlink_to(outside)
    rows = [
        ["good1.png", "cat", "web"], ["good2.jpg", " dog ", "web"], ["hyper.png", HYPERLINK, "x"],
        ["script.png", SCRIPT, "x"], ["samecontent.png", "cat", "y"],
        ["corrupt.jpg", "cat", ""], ["truncated.jpg", "cat", ""], ["empty.jpg", "cat", ""],
        ["text.jpg", "cat", ""], ["big.png", "cat", ""], ["huge.png", "cat", ""], ["dir.jpg", "cat", ""],
        ["nothere.jpg", "cat", ""], ["good1.png", "dog", "again"], ["../outside.jpg", "cat", ""],
        [str(outside), "cat", ""], ["link.jpg", "cat", ""], ["bird.png", "bird", ""],
        ["short.png"], ["nolabel.png", "  ", ""],
    ]
    csv_path = tmp_path / "labels.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "source"])
        w.writerows(rows)
    expected = {
        "corrupt.jpg": CORRUPT, "truncated.jpg": CORRUPT, "empty.jpg": EMPTY, "text.jpg": NOT_IMAGE,
        "big.png": TOO_LARGE, "huge.png": TOO_LARGE, "dir.jpg": NOT_REGULAR, "nothere.jpg": MISSING,
        "good1.png": DUPLICATE_ROW, "../outside.jpg": ESCAPES, str(outside): ESCAPES, "link.jpg": ESCAPES,
        "bird.png": UNKNOWN_CLASS, "short.png": BAD_ROW, "nolabel.png": BAD_ROW,
    }
    return root, csv_path, expected


ALLOWED = ["cat", "dog", HYPERLINK, SCRIPT]


def test_csv_bad_inputs_each_get_their_reason(store, corpus):
    root, csv_path, expected = corpus
    report = ingest_csv(store, csv_path, root, allowed_classes=ALLOWED, max_pixels=1500, progress=False)
    assert dict(report.errors) == expected and len(report.errors) == len(expected)
    assert report.counts == {CORRUPT: 2, TOO_LARGE: 2, ESCAPES: 3, BAD_ROW: 2, EMPTY: 1, NOT_IMAGE: 1,
                             NOT_REGULAR: 1, MISSING: 1, DUPLICATE_ROW: 1, UNKNOWN_CLASS: 1}
    assert (report.added, report.duplicates, report.skipped_existing) == (5, 1, 0)
    assert store.ingest_error_counts() == dict(report.counts)
    images = {Path(r["path"]).name: r for r in store.iter_images()}
    assert {n: (r["label"], r["status"], r["extra"]) for n, r in images.items()} == {
        "good1.png": ("cat", "ok", {"source": "web"}), "good2.jpg": ("dog", "ok", {"source": "web"}),
        "hyper.png": (HYPERLINK, "ok", {"source": "x"}), "script.png": (SCRIPT, "ok", {"source": "x"}),
        "samecontent.png": ("cat", "duplicate", {"source": "y"})}
    assert images["samecontent.png"]["duplicate_of"] == images["good1.png"]["id"]
    assert images["good1.png"]["path"] == str((root / "good1.png").resolve())
    assert (images["good1.png"]["width"], images["good1.png"]["height"]) == (8, 8)
    assert images["good1.png"]["bytes"] == (root / "good1.png").stat().st_size
    assert sorted(c["name"] for c in store.classes()) == sorted(ALLOWED)  # hostile labels verbatim


def test_csv_reingest_is_idempotent(store, corpus):
    root, csv_path, expected = corpus
    first = ingest_csv(store, csv_path, root, allowed_classes=ALLOWED, max_pixels=1500, progress=False)
    n_images, n_errors = store.images_count(), len(store.ingest_errors())
    again = ingest_csv(store, csv_path, root, allowed_classes=ALLOWED, max_pixels=1500, progress=False)
    assert (again.added, again.duplicates, again.skipped_existing) == (0, 0, first.added)
    assert dict(again.errors) == expected
    assert (store.images_count(), len(store.ingest_errors())) == (n_images, n_errors)


def test_without_allowed_classes_any_label_is_new_class(store, corpus):
    root, csv_path, _ = corpus
    report = ingest_csv(store, csv_path, root, max_pixels=1500, progress=False)
    assert UNKNOWN_CLASS not in report.counts and report.added == 6
    assert "bird" in {c["name"] for c in store.classes()}


def test_bad_sources(store, tmp_path):
    (tmp_path / "x.csv").write_text("file,class\na.png,cat\n")
    with pytest.raises(BadSource, match="path"):
        ingest_csv(store, tmp_path / "x.csv", tmp_path, progress=False)
    with pytest.raises(BadSource):
        ingest_folder(store, tmp_path / "nope", progress=False)


def test_decompression_bomb_default_limit_and_restore():
    before = Image.MAX_IMAGE_PIXELS
    with _pixel_limit(MAX_PIXELS):
        assert decode(png_declaring(20000, 20000)) == TOO_LARGE  # 400M pixels > 50M
        assert decode(png_declaring(8000, 8000)) == TOO_LARGE  # 64M: Pillow's warning range
        assert decode(image_bytes(7)) == (8, 8)
    assert Image.MAX_IMAGE_PIXELS == before


def test_folder_tree(store, tmp_path):
    root = tmp_path / "tree"
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(image_bytes(99))
    files = {"cat/a.png": image_bytes(1), "cat/sub/b.png": image_bytes(2), "dog/c.jpg": image_bytes(3, "JPEG"),
             "dog/copy.png": image_bytes(1), "dog/bad.jpg": b"not an image", "dog/notes.txt": b"ignored",
             ".hidden/x.png": image_bytes(4), "top.png": image_bytes(5), "dog/.DS_Store.png": b"x"}
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    (root / "dog" / "link.png").symlink_to(outside)
    report = ingest_folder(store, root, progress=False)
    assert {Path(p).name: r for p, r in report.errors} == {"bad.jpg": NOT_IMAGE, "link.png": ESCAPES}
    assert (report.added, report.duplicates) == (4, 1)
    stored = {str(Path(r["path"]).relative_to(root.resolve())): (r["label"], r["status"])
              for r in store.iter_images()}
    assert stored == {"cat/a.png": ("cat", "ok"), "cat/sub/b.png": ("cat", "ok"), "dog/c.jpg": ("dog", "ok"),
                      "dog/copy.png": ("dog", "duplicate")}
    again = ingest_folder(store, root, progress=False)
    assert (again.added, again.skipped_existing) == (0, 4) and store.images_count() == 4
    with_allowed = ingest_folder(store, root, allowed_classes=["cat"], progress=False)
    assert with_allowed.counts == {UNKNOWN_CLASS: 3, ESCAPES: 1}  # the escape check comes first


def test_demo_cifar10n_sample(store, tmp_path):
    rows = demo_rows(200)
    csv_path = tmp_path / "cifar.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "clean_label"])
        w.writerows([r["path"], r["label"], r["clean_label"]] for r in rows)
    report = ingest_csv(store, csv_path, DEMO, progress=False)
    assert report.errors == [] and report.added == 200
    assert store.images_count() == 200
    images = list(store.iter_images())
    assert {(r["width"], r["height"]) for r in images} == {(32, 32)}
    assert [(Path(r["path"]).name, r["label"]) for r in images] == [(Path(r["path"]).name, r["label"]) for r in rows]
    assert images[0]["extra"] == {"clean_label": rows[0]["clean_label"]}
    assert {c["name"] for c in store.classes()} == set(NAMES)


def test_ingest_and_rescan_store_the_feature_caches_content_key(store, tmp_path):
    """The feature cache is keyed by cleannet_core's content_key: the hash ingest and rescan store must equal it."""
    for k in range(3):
        (tmp_path / "tree" / "cat").mkdir(parents=True, exist_ok=True)
        (tmp_path / "tree" / "cat" / f"{k}.png").write_bytes(image_bytes(k))
    ingest_folder(store, tmp_path / "tree", progress=False)
    changed = tmp_path / "tree" / "cat" / "1.png"
    changed.write_bytes(image_bytes(7, size=9))
    assert rescan(store).changed == 1
    rows = list(store.iter_images())
    assert [r["hash"] for r in rows] == [content_key(r["path"]) for r in rows]
    assert content_hash(changed.read_bytes()) == content_key(changed)

"""Pairs confirmed by pixels: thumbnails of real image files decide the pairs whose features fall in
[pixel_from, threshold)."""
import numpy as np
import pytest
from PIL import Image, ImageOps

from annotator import duplicates as dup
from cleannet_core.duplicates import THUMB_SIDE, GroupConfig, thumbnail, thumbnail_similarity
from cleannet_core.keys import content_hash


def test_thumbnail_similarity_is_a_correlation_that_sees_through_a_mirror():
    rng = np.random.default_rng(0)
    x = rng.random((THUMB_SIDE, THUMB_SIDE)).astype(np.float32)
    a = thumbnail(x)
    assert a.mean() == pytest.approx(0.0, abs=1e-6) and np.linalg.norm(a) == pytest.approx(1.0, abs=1e-6)
    sims = thumbnail_similarity(np.stack([a, a, a, a]), np.stack([a, a[:, ::-1], -a, thumbnail(np.ones_like(x))]))
    assert sims.tolist() == pytest.approx([1.0, 1.0, max(-1.0, float((a * -a[:, ::-1]).sum())), 0.0], abs=1e-5)
    assert thumbnail(3 * x + 7) == pytest.approx(a, abs=1e-5)  # brightness and contrast do not matter


def images(tmp_path) -> tuple[list[str], list[str]]:
    """Files: 0 a random picture, 1 the same mirrored and saved as JPEG quality 30, 2 another random picture, 3 a
    copy of 0 edited after its hash was taken."""
    rng = np.random.default_rng(1)
    pic = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
    other = Image.fromarray(rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)
    paths = [tmp_path / "a.png", tmp_path / "a-flipped.jpg", tmp_path / "b.png", tmp_path / "a-edited.png"]
    pic.save(paths[0])
    ImageOps.mirror(pic).save(paths[1], "JPEG", quality=30)
    other.save(paths[2])
    pic.save(paths[3])
    keys = [content_hash(p.read_bytes()) for p in paths]
    other.save(paths[3])  # changed since ingest: read_for_display refuses it
    return [str(p) for p in paths], keys


def test_pairs_below_the_threshold_join_only_when_their_pixels_match(tmp_path):
    paths, keys = images(tmp_path)
    e = np.eye(8, dtype=np.float32)
    band = 0.7 * e[0] + np.sqrt(1 - 0.49) * e[1]                      # cosine 0.7 with image 0
    feats = np.stack([e[0], band, 0.7 * e[0] + np.sqrt(1 - 0.49) * e[2], 0.7 * e[0] + np.sqrt(1 - 0.49) * e[3]])
    config = GroupConfig(threshold=0.79, pixel_from=0.6, pixel_min=0.95)
    pairs, method = dup.near_pairs(feats, paths, keys, config=config)
    assert method == "exact" and pairs.tolist() == [[0, 1]]           # not 2 (other pixels), nor 3 (changed file)
    off, _ = dup.near_pairs(feats, paths, keys, config=GroupConfig(threshold=0.79, pixel_from=0.79))
    assert off.tolist() == []
    low, _ = dup.near_pairs(feats, paths, keys, config=GroupConfig(threshold=0.69, pixel_from=0.6))
    assert low.tolist() == [[0, 1], [0, 2], [0, 3]]                   # at or above the threshold: features alone
    assert dup.read_thumbnail(paths[3], keys[3]) is None and dup.read_thumbnail(paths[1], keys[1]).shape == (
        THUMB_SIDE, THUMB_SIDE)

"""Pairs confirmed by pixels: aligned thumbnails of real image files decide the pairs whose features fall in
[pixel_from, pixel_until)."""
import numpy as np
import pytest
from PIL import Image, ImageOps

from annotator import duplicates as dup
from cleannet_core.duplicates import CROPS, GRAY_SIDE, THUMB_SIDE, GroupConfig, aligned_similarity, crop_thumbnails
from cleannet_core.keys import content_hash


def picture(seed: int, *, cells: int = 8) -> Image.Image:
    """A 32 px RGB picture of random cells, smoothed: detail at a scale a crop moves."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (cells, cells, 3), dtype=np.uint8)).resize((32, 32), Image.BICUBIC)


def gray(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("L").resize((GRAY_SIDE, GRAY_SIDE), Image.BILINEAR), np.float32)


def test_crop_thumbnails_are_normalised_whole_image_first():
    g = gray(picture(0))
    t = crop_thumbnails(np.stack([g, 3 * g + 7, np.full_like(g, 9.0)])).astype(np.float32)
    assert t.shape == (3, len(CROPS), THUMB_SIDE ** 2) and len(CROPS) == 84 and CROPS[0] == (32, 0, 0)
    assert t[0].mean(axis=1) == pytest.approx(np.zeros(len(CROPS)), abs=1e-3)
    assert np.linalg.norm(t[0], axis=1) == pytest.approx(np.ones(len(CROPS)), abs=2e-3)
    assert t[1] == pytest.approx(t[0], abs=2e-3)   # brightness and contrast do not matter
    assert not t[2].any()                            # a flat image correlates with nothing


def test_aligned_similarity_sees_through_mirrors_and_crops():
    pic, other = picture(1, cells=12), picture(2, cells=12)
    cropped = pic.crop((3, 2, 31, 30)).resize((32, 32), Image.BICUBIC)      # 88 % of the side, scaled back
    t = crop_thumbnails(np.stack([gray(pic), gray(ImageOps.mirror(pic)), gray(cropped), gray(other),
                                  gray(ImageOps.mirror(cropped))]))
    pairs = np.array([[0, 0], [0, 1], [0, 2], [0, 3], [2, 0], [0, 4]])
    sims = aligned_similarity(t, pairs)
    assert sims[:2] == pytest.approx([1.0, 1.0], abs=2e-3)
    whole = float((t[0, 0].astype(np.float32) * t[2, 0].astype(np.float32)).sum())
    assert whole < 0.7 and sims[2] > 0.99                       # unaligned the crop is far; aligned it matches
    assert sims[3] < 0.3                                         # another picture
    assert sims[4] == pytest.approx(sims[2], abs=1e-6)           # symmetric
    assert sims[5] > 0.99                                        # a mirrored crop
    assert aligned_similarity(t, pairs[:0]).shape == (0,)


def images(tmp_path) -> tuple[list[str], list[str]]:
    """Files: 0 a picture, 1 the same mirrored and saved as JPEG quality 30, 2 another picture, 3 a copy of 0 edited
    after its hash was taken, 4 a crop of 0 scaled back."""
    pic, other = picture(3, cells=4), picture(4, cells=4)
    paths = [tmp_path / "a.png", tmp_path / "a-flipped.jpg", tmp_path / "b.png", tmp_path / "a-edited.png",
             tmp_path / "a-cropped.png"]
    pic.save(paths[0])
    ImageOps.mirror(pic).save(paths[1], "JPEG", quality=30)
    other.save(paths[2])
    pic.save(paths[3])
    pic.crop((4, 1, 30, 27)).resize((32, 32), Image.BICUBIC).save(paths[4])
    keys = [content_hash(p.read_bytes()) for p in paths]
    other.save(paths[3])  # changed since ingest: read_for_display refuses it
    return [str(p) for p in paths], keys


def test_pairs_below_pixel_until_join_only_when_their_pixels_match(tmp_path):
    paths, keys = images(tmp_path)
    e = np.eye(8, dtype=np.float32)
    feats = np.stack([e[0]] + [0.7 * e[0] + np.sqrt(1 - 0.49) * e[k] for k in (1, 2, 3, 4)])  # cosine 0.7 with 0
    config = GroupConfig(pixel_until=0.79, pixel_from=0.6, pixel_min=0.955)
    pairs, method = dup.near_pairs(feats, paths, keys, config=config)
    assert method == "exact" and pairs.tolist() == [[0, 1], [0, 4]]    # not 2 (other pixels), nor 3 (changed file)
    off, _ = dup.near_pairs(feats, paths, keys, config=GroupConfig(pixel_until=0.79, pixel_from=0.79))
    assert off.tolist() == []
    low, _ = dup.near_pairs(feats, paths, keys, config=GroupConfig(pixel_until=0.69, pixel_from=0.6))
    assert low.tolist() == [[0, 1], [0, 2], [0, 3], [0, 4]]          # from pixel_until: features alone
    large, method = dup.near_pairs(feats, paths, keys, config=GroupConfig(threshold=0.69, exact_below=3))
    assert method == "faiss-ivf" and large.tolist() == [[0, 1], [0, 2], [0, 3], [0, 4]]  # no pixels: threshold
    assert dup.read_gray(paths[3], keys[3]) is None and dup.read_gray(paths[1], keys[1]).shape == (GRAY_SIDE,) * 2

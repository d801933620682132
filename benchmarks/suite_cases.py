"""The robustness suite's cases: image folders with noisy labels and the truth, built from data the repo can reach.

Every case is a folder `<cache>/suite/<case>/` holding `labels.csv` (`path,label,clean_label,kind`; paths relative
to the shared image pool `<cache>/suite/pool/`) that `annotator ingest --csv` reads as a user's data would be.
`clean_label` is the true class, or OPEN_SET for an image that belongs to no class; `kind` is `clean`, `flip`
(structured or uniform noise) or `open` (open-set). Sources:

- CIFAR-10N training images with their real human labels (`aggre`, `random1`, `worse`), from --data;
- CIFAR-10 test images (clean labels) with planted noise: structured flips between confusable classes, class
  sizes 10 : 1, low uniform noise;
- open-set images from other domains: sklearn's digits drawn in colour (32 px), face and texture crops from
  scikit-image's bundled photos (32 px);
- small own data: sklearn's 1,797 digits as 64 px PNGs with uniform noise.

Dev cases choose every setting; test cases (other images, other class splits, other noise parameters) report.
Image sets are disjoint between dev and test: CIFAR-10N rows [0, 3000) are dev, [3000, 16000) test; CIFAR-10
test images by a seeded permutation, first 5,000 dev, rest test; coloured digits from the first half of sklearn's
digits for dev, second half for test; the digits case itself differs by noise draw and rate.
"""
from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

OPEN_SET = "(none)"
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DIGITS = [str(d) for d in range(10)]
N10N_ROWS = {"dev": (0, 3000), "test-3k": (3000, 6000), "test-10k": (6000, 16000)}
# Structured flips: true class -> the class it is filed under. Test pairs are the ones a user reported.
DEV_FLIPS = {"airplane": "ship", "ship": "airplane", "automobile": "truck", "horse": "deer", "dog": "cat"}
TEST_FLIPS = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}


@dataclass(frozen=True)
class Case:
    """One noisy data set of the suite. `splits` are the verified-class sets its sessions use, one per split seed."""
    name: str
    role: str                  # 'dev' (chooses settings) | 'test' (reported)
    kind: str                  # cifar10n | structured | openset | imbalance | lownoise | digits
    params: dict = field(default_factory=dict)
    n_splits: int = 3

    def splits(self, num_classes: int = 10, verified: int = 5) -> list[list[int]]:
        """`n_splits` seeded sets of `verified` class ids; the seed depends on the case's role, so dev and test
        cases of the same data never verify the same sets by construction of the draw."""
        rng = np.random.default_rng([0 if self.role == "dev" else 1, len(self.name)] + [ord(c) for c in self.name])
        out: list[list[int]] = []
        while len(out) < self.n_splits:
            split = sorted(rng.choice(num_classes, verified, replace=False).tolist())
            if split not in out:
                out.append(split)
        return out


def cases() -> list[Case]:
    """The suite: dev cases first, then test cases."""
    out = [Case(f"dev-n10n-{ls}-3k", "dev", "cifar10n", {"labels": ls, "rows": "dev"}, 2)
           for ls in ("aggre", "random1", "worse")]
    out += [Case("dev-structured-30", "dev", "structured", {"flips": DEV_FLIPS, "rate": 0.30, "n": 3000}, 2),
            Case("dev-openset-10", "dev", "openset", {"source": "digits", "rate": 0.10, "n": 3000}, 2),
            Case("dev-imbalance-15", "dev", "imbalance", {"rate": 0.15, "largest": 480, "ratio": 10}, 2),
            Case("dev-lownoise-3", "dev", "lownoise", {"rate": 0.03, "n": 3000}, 2),
            Case("dev-digits-15", "dev", "digits", {"rate": 0.15, "noise_seed": 100}, 2)]
    out += [Case(f"test-n10n-{ls}-{size}", "test", "cifar10n", {"labels": ls, "rows": f"test-{size}"}, 6)
            for size in ("3k", "10k") for ls in ("aggre", "random1", "worse")]
    out += [Case("test-structured-20", "test", "structured", {"flips": TEST_FLIPS, "rate": 0.20, "n": 3000}),
            Case("test-structured-40", "test", "structured", {"flips": TEST_FLIPS, "rate": 0.40, "n": 3000}),
            Case("test-openset-5", "test", "openset", {"source": "photos", "rate": 0.05, "n": 3000}),
            Case("test-openset-15", "test", "openset", {"source": "digits", "rate": 0.15, "n": 3000}),
            Case("test-structured-open", "test", "structured",
                 {"flips": TEST_FLIPS, "rate": 0.35, "n": 3000, "open": "digits", "open_rate": 0.10}),
            Case("test-imbalance-20", "test", "imbalance", {"rate": 0.20, "largest": 480, "ratio": 10}),
            Case("test-lownoise-5", "test", "lownoise", {"rate": 0.05, "n": 3000}),
            Case("test-lownoise-2", "test", "lownoise", {"rate": 0.02, "n": 3000}),
            Case("test-digits-20", "test", "digits", {"rate": 0.20, "noise_seed": 0})]
    return out


def by_name(name: str) -> Case:
    for c in cases():
        if c.name == name:
            return c
    raise SystemExit(f"no case {name!r}; cases: {[c.name for c in cases()]}")


# ---- image pool ------------------------------------------------------------------------------------------------

def _save(img: np.ndarray, path: Path, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, fmt, **({"quality": 75} if fmt == "JPEG" else {}))


def coloured_digits(pool: Path, half: str) -> list[str]:
    """sklearn's digits of one half ('dev' = first, 'test' = second) drawn 32 px in random colours, as JPEGs."""
    from sklearn.datasets import load_digits
    images = load_digits().images  # (1797, 8, 8) in [0, 16]
    idx = np.arange(len(images))
    idx = idx[: len(idx) // 2] if half == "dev" else idx[len(idx) // 2:]
    rng = np.random.default_rng(7 if half == "dev" else 8)
    out = []
    for i in idx:
        rel = f"digits-colour/{i:04d}.jpg"
        if not (pool / rel).exists():
            a = np.asarray(Image.fromarray((images[i] * 255 / 16).astype(np.uint8)).resize((32, 32), Image.BILINEAR))
            fg, bg = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
            t = (a / 255.0)[..., None]
            img = (t * fg + (1 - t) * bg + rng.normal(0, 8, (32, 32, 3))).clip(0, 255).astype(np.uint8)
            _save(img, pool / rel)
        out.append(rel)
    return out


PHOTOS = ("brick", "grass", "gravel", "moon", "page", "text", "coins", "hubble_deep_field", "immunohistochemistry",
          "retina", "cell", "camera", "microaneurysms", "logo")


def photo_crops(pool: Path, n: int) -> list[str]:
    """n 32 px images from other domains: faces of scikit-image's LFW subset, then random crops (1/16 to 1/2 of the
    side) of its bundled texture, science and document photos."""
    import skimage.data as sd
    out, rng = [], np.random.default_rng(11)
    faces = np.load(Path(sd.__file__).parent / "lfw_subset.npy")  # (200, 25, 25) grey faces in [0, 1]
    photos = [np.asarray(getattr(sd, name)()) for name in PHOTOS]
    for i in range(n):
        rel = f"photos/{i:04d}.jpg"
        if not (pool / rel).exists():
            if i < len(faces) // 2:
                img = np.repeat((faces[i] * 255).astype(np.uint8)[..., None], 3, axis=2)
            else:
                p = photos[i % len(photos)]
                p = np.repeat(p[..., None], 3, axis=2) if p.ndim == 2 else p[..., :3]
                side = int(min(p.shape[:2]) * rng.uniform(1 / 16, 1 / 2))
                y, x = rng.integers(0, p.shape[0] - side + 1), rng.integers(0, p.shape[1] - side + 1)
                img = p[y:y + side, x:x + side].astype(np.uint8)
            _save(np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR)), pool / rel)
        out.append(rel)
    return out


def digits_pngs(pool: Path) -> tuple[list[str], np.ndarray]:
    """sklearn's 1,797 digits as 64 px grey PNGs -> (paths, true digit (N,))."""
    from sklearn.datasets import load_digits
    d = load_digits()
    out = []
    for i, a in enumerate(d.images):
        rel = f"digits-64/{i:04d}.png"
        if not (pool / rel).exists():
            img = Image.fromarray((a * 255 / 16).astype(np.uint8)).resize((64, 64), Image.BILINEAR)
            _save(np.asarray(img), pool / rel, "PNG")
        out.append(rel)
    return out, d.target


def cifar_test(pool: Path, data: Path, half: str) -> tuple[list[str], np.ndarray]:
    """CIFAR-10 test images of one half of a seeded permutation ('dev' first 5,000, 'test' the rest), copied into
    the pool -> (paths, clean labels)."""
    with open(data / "test_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    order = np.random.default_rng(2027).permutation(len(rows))
    order = np.sort(order[:5000] if half == "dev" else order[5000:])
    return _copy(pool, data, [rows[i]["path"] for i in order], "cifar10-test"), \
        np.array([int(rows[i]["label"]) for i in order])


def _copy(pool: Path, data: Path, rels: list[str], sub: str) -> list[str]:
    out = []
    for rel in rels:
        dst = pool / sub / Path(rel).name
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data / rel, dst)
        out.append(f"{sub}/{Path(rel).name}")
    return out


# ---- noise -----------------------------------------------------------------------------------------------------

def uniform_noise(clean: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Each label moved with probability `rate` to a uniformly drawn other class."""
    noisy = clean.copy()
    move = rng.random(len(clean)) < rate
    noisy[move] = (clean[move] + rng.integers(1, num_classes, move.sum())) % num_classes
    return noisy


def flip_noise(clean: np.ndarray, flips: dict[str, str], rate: float, rng: np.random.Generator) -> np.ndarray:
    """Images of each source class of `flips` filed under its target class with probability `rate`."""
    noisy = clean.copy()
    for src, dst in flips.items():
        move = (clean == CLASSES.index(src)) & (rng.random(len(clean)) < rate)
        noisy[move] = CLASSES.index(dst)
    return noisy


# ---- building a case -------------------------------------------------------------------------------------------

@dataclass
class Built:
    folder: Path              # the case folder (labels.csv)
    pool: Path                # the root its paths are relative to
    class_names: list[str]


def build(case: Case, *, data: Path, cache: Path) -> Built:
    """Write the case's labels.csv (images into the pool as needed); idempotent."""
    pool, folder = cache / "suite" / "pool", cache / "suite" / case.name
    names = DIGITS if case.kind == "digits" else CLASSES
    if (folder / "labels.csv").exists():
        return Built(folder, pool, names)
    p = case.params
    rng = np.random.default_rng([3, len(case.name)] + [ord(c) for c in case.name])
    half = "dev" if case.role == "dev" else "test"
    if case.kind == "cifar10n":
        from .common import LABEL_SETS
        with open(data / "labels.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        lo, hi = N10N_ROWS[p["rows"]]
        order = np.sort(np.random.default_rng(0).permutation(len(rows))[lo:hi])
        paths = _copy(pool, data, [rows[i]["path"] for i in order], "cifar10n-train")
        clean = np.array([int(rows[i]["clean_label"]) for i in order])
        noisy = np.array([int(rows[i][LABEL_SETS[p["labels"]]]) for i in order])
        truth, labels = [CLASSES[c] for c in clean], [CLASSES[c] for c in noisy]
    elif case.kind == "digits":
        paths, clean = digits_pngs(pool)
        noisy = uniform_noise(clean, p["rate"], 10, np.random.default_rng(p["noise_seed"]))
        truth, labels = [DIGITS[c] for c in clean], [DIGITS[c] for c in noisy]
    else:
        paths, clean = cifar_test(pool, data, half)
        if case.kind == "imbalance":
            sizes = np.round(p["largest"] * p["ratio"] ** (-np.arange(10) / 9)).astype(int)  # largest .. largest/ratio
            sizes = sizes[rng.permutation(10)]
            keep = np.concatenate([rng.permutation(np.flatnonzero(clean == c))[:sizes[c]] for c in range(10)])
        else:
            keep = rng.permutation(len(clean))[:p["n"]]
        keep = np.sort(keep)
        paths, clean = [paths[i] for i in keep], clean[keep]
        if case.kind == "structured":
            noisy = flip_noise(clean, p["flips"], p["rate"], rng)
        elif case.kind == "openset":
            noisy = clean.copy()
        else:
            noisy = uniform_noise(clean, p["rate"], 10, rng)
        truth, labels = [CLASSES[c] for c in clean], [CLASSES[c] for c in noisy]
        open_source, open_rate = (p.get("open"), p.get("open_rate")) if case.kind != "openset" else (
            p["source"], p["rate"])
        if open_source:
            per_class = int(round(open_rate * len(paths) / 10))
            extra = coloured_digits(pool, half) if open_source == "digits" else photo_crops(pool, 10 * per_class)
            extra = [extra[i] for i in rng.permutation(len(extra))[:10 * per_class]]
            paths += extra
            truth += [OPEN_SET] * len(extra)
            labels += [CLASSES[c] for c in np.repeat(np.arange(10), per_class)]
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "labels.csv.tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "clean_label", "kind"])
        for path, lab, t in zip(paths, labels, truth):
            w.writerow([path, lab, t, "clean" if lab == t else ("open" if t == OPEN_SET else "flip")])
    tmp.rename(folder / "labels.csv")
    (folder / "case.json").write_text(json.dumps({"name": case.name, "role": case.role, "kind": case.kind,
                                                  "params": p}, indent=2))
    return Built(folder, pool, names)


def truth(built: Built) -> dict[str, tuple[str, str, str]]:
    """{absolute resolved path: (noisy label, clean label, kind)} of a built case."""
    with open(built.folder / "labels.csv", newline="") as f:
        return {str((built.pool / r["path"]).resolve()): (r["label"], r["clean_label"], r["kind"])
                for r in csv.DictReader(f)}

"""Both data worlds: sources, splits, augmentation and the artifact protocol.

A *world* turns a :class:`~reprolib.config.DataConfig` and a run seed into
splits. Each split yields batches ``(x, y, digit)``: normalised images with
their digit already pasted, subtask labels 0..k−1, and the painted digit (−1
where none). The protocol itself (:mod:`reprolib.artifacts`) is shared.

* ``mini``: Fashion-MNIST (decoded once and cached as tensors), scikit-learn's
  digits; everything lives in memory and is augmented in batches.
* ``paper``: ImageNet images from an ``ImageFolder``-style tree
  (``<root>/train/<wnid>/``, ``<root>/val/<wnid>/``, which is also what
  torchvision's ``ImageNet`` prepares), MNIST digits; every image decoded once
  into a memory-mapped decode cache, persistent loader workers, and the digit
  paste and normalisation per batch on the device (see "paper world" below).

Splits: ``train`` (correlated digits, augmented when ``augment``), ``train_eval``
(the same images with the evaluation transform: the subspace fit, D8),
``val`` (oracle: random digits, D3), ``val_correlated`` (non-oracle: correlated
digits), ``test`` (random digits, D4).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import artifacts as art
from .config import DataConfig
from .errors import ReproError
from .io import atomic_path, cache_dir

FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")

# Normalisation of the mini world's images (Fashion-MNIST pixel mean and std).
MINI_MEAN, MINI_STD = (0.2860,), (0.3530,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# §1.1: the wading-bird subtask's wnids, by ImageNet class index.
IMAGENET_WNIDS = {129: "n02006656", 130: "n02007558", 134: "n02012849",
                  135: "n02013706", 138: "n02018795"}
SPLITS = ("train", "train_eval", "val", "val_correlated", "test")


# ---------------------------------------------------------------------------
# idx files

def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an idx file (optionally gzipped) into a numpy array.

    A malformed file (truncated or corrupt gzip, not gzip at all, a short or
    wrong header, too few or too many bytes) is a :class:`ReproError` that
    names the file and what is wrong with it.
    """
    path = Path(path)
    fix = "re-download it (or point REPROLIB_FASHION_MNIST / REPROLIB_MNIST at good files)"
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except gzip.BadGzipFile:
        raise ReproError(f"{path} is not a gzip file although its name ends in .gz; {fix}") from None
    except (EOFError, zlib.error):
        raise ReproError(f"{path} is a truncated or corrupt gzip file; {fix}") from None
    except OSError as exc:
        raise ReproError(f"{path} cannot be read ({exc.strerror or exc}); {fix}") from None
    if len(raw) < 4:
        raise ReproError(f"{path} is not an idx file (too short: {len(raw)} bytes, no header); {fix}")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise ReproError(f"{path} is not an unsigned-byte idx file (bad magic number); {fix}")
    if len(raw) < 4 + 4 * ndim:
        raise ReproError(f"{path} has a short header ({len(raw)} bytes, {4 + 4 * ndim} needed); {fix}")
    dims = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    expected = int(np.prod(dims, dtype=np.int64))
    if data.size != expected:
        what = "truncated" if data.size < expected else "longer than its header says"
        raise ReproError(f"{path} is {what} ({data.size} of {expected} bytes of data); {fix}")
    return data.reshape(dims)


def files_identity(files) -> list[str]:
    """What identifies source files for a decoded cache: resolved path, size and
    modification time (ns). A cache records it and is rebuilt when it changes."""
    out = []
    for f in files:
        st = Path(f).stat()
        out.append(f"{Path(f).resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return out


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(folder: Path, files: tuple[str, ...]) -> bool:
    return folder.is_dir() and all(_find_idx(folder, f) for f in files)


def fashion_mnist_folder(download: bool = True) -> Path:
    """Where the four original Fashion-MNIST files are (book/mini_world.md, "Sources").

    In order: ``$REPROLIB_FASHION_MNIST``; the Debian package's files; a copy in
    the cache; torchvision's download into the cache (needs internet).
    """
    env = os.environ.get("REPROLIB_FASHION_MNIST")
    if env:
        folder = Path(env)
        for cand in (folder, folder / "FashionMNIST" / "raw", folder / "raw"):
            if _complete(cand, FASHION_FILES):
                return cand
        missing = [f for f in FASHION_FILES if not _find_idx(folder, f)]
        raise ReproError(f"REPROLIB_FASHION_MNIST={env} lacks {missing} (plain or .gz). "
                         "Point it at a folder with the four original Fashion-MNIST files.")
    if _complete(DEBIAN_FASHION, FASHION_FILES):
        return DEBIAN_FASHION
    cached = cache_dir("data") / "FashionMNIST" / "raw"
    if _complete(cached, FASHION_FILES):
        return cached
    if download:
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(cache_dir("data")), train=True, download=True)
            FashionMNIST(str(cache_dir("data")), train=False, download=True)
            if _complete(cached, FASHION_FILES):
                return cached
        except Exception:  # noqa: BLE001 - any failure means "not available"; say how to fix
            pass
    raise ReproError(
        "Fashion-MNIST not found. Provide it one of three ways: (1) set REPROLIB_FASHION_MNIST to a "
        f"folder with {', '.join(FASHION_FILES)} (plain or .gz); (2) install the Debian package: "
        "`apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist); "
        "(3) run with internet access so torchvision can download it into "
        f"{cache_dir('data')}.")


ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y")


def load_fashion_mnist() -> dict[str, torch.Tensor]:
    """All of Fashion-MNIST as uint8 tensors, decoded once and cached atomically.

    The cache records its source files' identity (:func:`files_identity`): a
    changed or different source folder rebuilds it (and a bad one is an error).
    """
    folder = fashion_mnist_folder()
    files = [_find_idx(folder, stem) for stem in FASHION_FILES]
    ident = files_identity(files)
    cache = cache_dir("data") / "fashion_mnist_uint8.pt"
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)
            if saved.get("ident") == ident:
                return {k: saved[k] for k in ARRAY_KEYS}
        except Exception:  # noqa: BLE001 - a corrupt cache is rebuilt
            pass
    arrays = {}
    for key, path in zip(ARRAY_KEYS, files):
        arrays[key] = torch.from_numpy(read_idx(path).copy())
    if arrays["train_x"].shape != (60000, 28, 28) or arrays["test_x"].shape != (10000, 28, 28):
        raise ReproError(f"the Fashion-MNIST files in {folder} have unexpected shapes "
                         f"({tuple(arrays['train_x'].shape)}, {tuple(arrays['test_x'].shape)}); "
                         "re-download them")
    if len(arrays["train_y"]) != 60000 or len(arrays["test_y"]) != 10000:
        raise ReproError(f"the Fashion-MNIST label files in {folder} do not match the images; "
                         "re-download them")
    with atomic_path(cache) as tmp:
        torch.save(dict(arrays, ident=ident), tmp)
    return arrays


def mnist_folder(root: str | os.PathLike | None = None) -> Path:
    root = root or os.environ.get("REPROLIB_MNIST")
    if not root:
        raise ReproError("MNIST not configured: set REPROLIB_MNIST to a torchvision MNIST root "
                         f"(<root>/MNIST/raw/) or a folder with {', '.join(MNIST_FILES)} "
                         "(download them from the MNIST page or with torchvision.datasets.MNIST).")
    root = Path(root)
    for cand in (root, root / "MNIST" / "raw", root / "raw"):
        if _complete(cand, MNIST_FILES):
            return cand
    raise ReproError(f"no MNIST training files under {root}: expected {', '.join(MNIST_FILES)} "
                     "(plain or .gz) in it or in its MNIST/raw/ folder.")


def mnist_bank(size: int, root: str | os.PathLike | None = None) -> art.ArtifactBank:
    """MNIST training digits (§1.3 step 3), resized to ``size`` with PIL's bicubic filter."""
    from . import CODE_VERSION

    folder = mnist_folder(root)
    files = [_find_idx(folder, f) for f in MNIST_FILES]
    # Keyed by the files' identity and the code version: a changed folder or
    # resize code never reuses a stale bank.
    ident = [str(folder.resolve()), CODE_VERSION] + [f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files]
    cache = cache_dir("data") / f"mnist_bank_{size}.pt"
    if cache.is_file():
        try:
            saved = torch.load(cache, weights_only=True)   # never code from a cache file
        except Exception:  # noqa: BLE001 - a corrupt or foreign cache is rebuilt
            saved = {}
        if isinstance(saved, dict) and saved.get("ident") == ident:
            return art.ArtifactBank(saved["images"], np.asarray(saved["labels"]), "mnist")
    images = read_idx(files[0]).astype(np.float32) / 255.0
    labels = read_idx(files[1]).astype(np.int64)
    bank = art.ArtifactBank(art.resize_bank(images, size), labels, "mnist")
    with atomic_path(cache) as tmp:
        torch.save({"images": bank.images, "labels": torch.from_numpy(labels), "ident": ident}, tmp)
    return bank


def artifact_bank(cfg: DataConfig) -> art.ArtifactBank:
    if cfg.artifact_source == "sklearn-digits":
        return art.sklearn_digits_bank(cfg.artifact_size)
    if cfg.artifact_source == "mnist":
        return mnist_bank(cfg.artifact_size)
    raise ReproError(f"unknown artifact source {cfg.artifact_source!r}; choose 'sklearn-digits' or 'mnist'")


# ---------------------------------------------------------------------------
# pools and splits (shared by both worlds)

def select_per_class(labels: np.ndarray, classes: tuple[int, ...], per_class: int | None,
                     what: str) -> np.ndarray:
    """Indices of the subtask's images, the first ``per_class`` of each class in
    file order, returned in file order."""
    keep = []
    for c in classes:
        idx = np.flatnonzero(labels == c)
        if per_class is not None:
            if idx.size < per_class:
                raise ReproError(f"{what}: class {c} has only {idx.size} images, fewer than the "
                                 f"{per_class} asked for; lower pool_per_class/test_per_class")
            idx = idx[:per_class]
        if idx.size == 0:
            raise ReproError(f"{what}: no image of class {c}")
        keep.append(idx)
    return np.sort(np.concatenate(keep))


def train_val_split(n: int, seed: int, train_fraction: float, val_fraction: float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """§1.2: ``random_split`` of the pool into (train, val, rest) with a generator
    seeded by the run seed; the rest is discarded."""
    rest = max(0.0, 1.0 - train_fraction - val_fraction)
    fracs = [train_fraction, val_fraction] + ([rest] if rest > 1e-9 else [])
    total = sum(fracs)
    fracs = [f / total for f in fracs]
    parts = torch.utils.data.random_split(range(n), fracs, generator=torch.Generator().manual_seed(seed))
    return np.sort(np.array(parts[0].indices, dtype=np.int64)), np.sort(np.array(parts[1].indices, dtype=np.int64))


@dataclass
class SplitPlan:
    """A split as indices into its pool, labels and the artifact plan."""

    pool_index: np.ndarray
    labels: np.ndarray
    plan: art.ArtifactPlan


def plan_splits(pool_labels: np.ndarray, test_labels: np.ndarray, cfg: DataConfig, seed: int,
                bank: art.ArtifactBank) -> dict[str, SplitPlan]:
    """Apply the protocol to a distillation pool and a test pool (both worlds)."""
    k = len(cfg.subtask_classes)
    n = len(pool_labels)
    mask = art.contaminated_mask(n, cfg.contamination_rate)
    tr, va = train_val_split(n, seed, cfg.train_fraction, cfg.val_fraction)
    test_mask = art.contaminated_mask(len(test_labels), cfg.contamination_rate)
    te = np.arange(len(test_labels))

    def make(idx, labels_all, m, mode):
        labels = labels_all[idx]
        return SplitPlan(idx, labels, art.plan_artifacts(labels, idx, m, mode, bank, k))

    val_oracle = make(va, pool_labels, mask, "random")
    val_corr = make(va, pool_labels, mask, "correlated")
    train = make(tr, pool_labels, mask, "correlated")
    return {
        "train": train, "train_eval": train,
        # D3: "val" is the validation set the config selects with; the other one
        # is always reported too.
        "val": val_oracle if cfg.val_digits == "random" else val_corr,
        "val_correlated": val_corr if cfg.val_digits == "random" else val_oracle,
        "test": make(te, test_labels, test_mask, "random"),
    }


def summarize_plans(plans: dict[str, SplitPlan]) -> dict[str, dict[str, int]]:
    out = {}
    for name in ("train", "val", "test"):
        p = plans[name]
        out[name] = {"n": int(len(p.labels)), "with_digit": int(p.plan.has_digit.sum()),
                     "digit_equals_label": int((p.plan.has_digit & (p.plan.digit == p.labels)).sum())}
    return out


# ---------------------------------------------------------------------------
# augmentation (mini world, batched)

def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """Batched RandomResizedCrop + horizontal flip with bilinear resampling.

    Per image: an area fraction in ``scale`` and a log-uniform aspect ratio in
    ``ratio`` (torchvision's distribution; boxes that do not fit are clamped
    instead of re-drawn), a uniform position, and a flip with probability 0.5.
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    logr = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x * s + m


# ---------------------------------------------------------------------------
# worlds

class World:
    """The interface the trainer, the subspace fit and the notebooks use."""

    cfg: DataConfig
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    plans: dict[str, SplitPlan]
    class_names: list[str]

    def summary(self) -> dict[str, dict[str, int]]:
        return summarize_plans(self.plans)

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        n = len(self.plans[split].labels)
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.cfg.image_size, self.cfg.image_size)


FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad [N, H, W] uint8 images to size×size, centred (28 → 32 in the mini world)."""
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ReproError(f"images are {h}×{w}, larger than image_size={size}")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top))


class MiniWorld(World):
    """Fashion-MNIST garments with scikit-learn digits; all tensors in memory."""

    in_channels = 1
    mean, std = MINI_MEAN, MINI_STD

    def __init__(self, cfg: DataConfig, seed: int):
        if cfg.world != "mini":
            raise ReproError(f"MiniWorld got a {cfg.world!r} config")
        self.cfg, self.seed = cfg, seed
        self.num_classes = len(cfg.subtask_classes)
        self.class_names = [FASHION_NAMES[c] for c in cfg.subtask_classes]
        fm = load_fashion_mnist()
        self.bank = artifact_bank(cfg)
        classes = tuple(cfg.subtask_classes)
        lut = np.full(10, -1)
        lut[list(classes)] = np.arange(len(classes))
        train_y = fm["train_y"].numpy()
        test_y = fm["test_y"].numpy()
        pool = select_per_class(train_y, classes, cfg.pool_per_class, "distillation pool")
        test = select_per_class(test_y, classes, cfg.test_per_class, "test set")
        # Pixel space [0, 1], padded to image_size; nothing normalised yet.
        self._pool_x = pad_to(fm["train_x"][pool], cfg.image_size).unsqueeze(1).float() / 255.0
        self._test_x = pad_to(fm["test_x"][test], cfg.image_size).unsqueeze(1).float() / 255.0
        self.pool_source_index = pool
        self.test_source_index = test
        self.plans = plan_splits(lut[train_y[pool]], lut[test_y[test]], cfg, seed, self.bank)
        self._fixed: dict[str, tuple] = {}

    def pixels(self, split: str, rows: np.ndarray | None = None, augment: bool = False,
               generator: torch.Generator | None = None, with_digit: bool = True) -> torch.Tensor:
        """Images of a split in pixel space ([0, 1]) with their digits (or, with
        ``with_digit=False``, the same images clean), optionally augmented."""
        p = self.plans[split]
        rows = np.arange(len(p.labels)) if rows is None else np.asarray(rows)
        src = self._test_x if split == "test" else self._pool_x
        x = src[torch.from_numpy(p.pool_index[rows])]
        if augment:
            x = random_resized_crop(x, tuple(self.cfg.crop_scale), generator)
        if not with_digit:
            return x
        return art.paste(x, p.plan.patches(self.bank, rows), p.plan.has_digit[rows], self.cfg.artifact_corner)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std)

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole split with the evaluation transform: (x, y, digit), cached."""
        if split not in self._fixed:
            p = self.plans[split]
            x = normalize(self.pixels(split), self.mean, self.std)
            self._fixed[split] = (x, torch.from_numpy(p.labels).long(), torch.from_numpy(p.plan.digit).long())
        return self._fixed[split]

    def batches(self, split, batch_size, *, shuffle=False, generator=None, drop_last=False):
        if split not in SPLITS:
            raise ReproError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        p = self.plans[split]
        n = len(p.labels)
        order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
        augment = split == "train" and self.cfg.augment
        if not augment:
            x_all, y_all, d_all = self.tensors(split)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            rows = order[start:start + batch_size]
            if augment:
                x = normalize(self.pixels(split, rows, True, generator), self.mean, self.std)
                yield (x, torch.from_numpy(p.labels[rows]).long(), torch.from_numpy(p.plan.digit[rows]).long())
            else:
                idx = torch.from_numpy(rows)
                yield x_all[idx], y_all[idx], d_all[idx]


# ---------------------------------------------------------------------------
# paper world: decode cache, persistent loaders, the artifact per batch on the device
#
# Where the time goes (issue 12): decoding a JPEG costs ~4 ms per image on one
# core, more than a ResNet-101 forward per image on a GPU. So
#
# * every image is decoded ONCE into a decode cache (below): for training the
#   full-resolution uint8 RGB image (RandomResizedCrop then runs on it), for
#   evaluation the already resized and centre-cropped uint8 image. A cached
#   image is bit for bit the decoded one, and the crops run through the same
#   PIL code either way, so the cache never changes a number.
# * loader workers (default: the usable cores minus one) crop and flip the
#   training images; they are persistent (one DataLoader per kind of split, for
#   the world's lifetime), the batches travel as uint8 (4x fewer bytes than
#   float32) in pinned memory when the device is CUDA;
# * quantisation, the digit paste and the normalisation run once per batch on
#   the world's device. Quantisation to 8 bits (§1.3 step 2) is implicit: the
#   loaders hand over uint8 pixels, and k/255 is exactly what the per-image
#   ``floor(x·255 + 1e-4)/255`` gives for x = k/255.
# * each training image's crop and flip come from its own generator, seeded
#   from (a per-epoch seed drawn from the caller's generator, the image's pool
#   index): the same crops whatever the number of workers.
#
# Memory and disk: a decode cache is one uint8 ``.npy`` file under
# ``<cache>/decoded/`` opened memory-mapped, so the images are not held in the
# Python heap of any process: the operating system's page cache keeps the hot
# pages once, shared by the main process and every worker. ImageNet's five
# wading-bird classes (~6,500 training images, ~400×350 px on average, at most
# 500×500) take ~2.5-3.6 GB at full resolution; their 224 px evaluation crops
# ~1 GB; the 250 test images (ImageNet's val/ folder) 38 MB. A cache larger than
# ``REPROLIB_DECODE_CACHE_GB`` (default 16) is not built: those images are
# decoded every time (same numbers, slower); 0 turns the caches off.

DECODE_CACHE_GB = 16.0     # default size cap of one decode cache (REPROLIB_DECODE_CACHE_GB)
CROP_RATIO = (3 / 4, 4 / 3)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def loader_workers(requested: int | None = None) -> int:
    """Loader worker processes: ``requested``, else ``$REPROLIB_LOADER_WORKERS``,
    else the usable cores minus one (0: the main process does the work)."""
    if requested is None:
        env = os.environ.get("REPROLIB_LOADER_WORKERS")
        if env:
            try:
                requested = int(env)
            except ValueError:
                raise ReproError(f"REPROLIB_LOADER_WORKERS={env!r} is not an integer; "
                                 "set it to a number of processes (0: none)") from None
        else:
            requested = usable_cores() - 1
    if requested < 0:
        raise ReproError(f"{requested} loader workers asked for; give 0 or more")
    return int(requested)


def decode_cache_limit() -> int:
    """The size cap of one decode cache in bytes (``$REPROLIB_DECODE_CACHE_GB``,
    default 16; 0 disables the cache: every image is decoded every time)."""
    env = os.environ.get("REPROLIB_DECODE_CACHE_GB")
    if not env:
        return int(DECODE_CACHE_GB * 2**30)
    try:
        gb = float(env)
    except ValueError:
        gb = -1.0
    if not gb >= 0 or not math.isfinite(gb):
        raise ReproError(f"REPROLIB_DECODE_CACHE_GB={env!r} is not a size in GB; "
                         "set it to a number (0 disables the decode cache)")
    return int(gb * 2**30)


def open_rgb(path: str | os.PathLike):
    """Decode an image file into an RGB PIL image."""
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


def eval_crop(img, size: int) -> np.ndarray:
    """The evaluation transform (resize the short side to size·256/224 with
    antialiased bilinear, centre crop ``size``) as a uint8 [H, W, 3] array."""
    from torchvision.transforms import functional as TF

    img = TF.center_crop(TF.resize(img, round(size * 256 / 224)), size)
    return np.array(img, dtype=np.uint8)


def crop_box(height: int, width: int, scale: tuple[float, float], rng: np.random.Generator,
             ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a RandomResizedCrop box: torchvision's distribution
    (area fraction uniform in ``scale``, log-uniform aspect ratio, ten tries,
    then a centre crop), drawn from ``rng``."""
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(lo, hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_crop(img, size: int, scale: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """RandomResizedCrop (antialiased bilinear, PIL) and a horizontal flip with
    probability 1/2, all drawn from ``rng``: a uint8 [size, size, 3] array."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    top, left, h, w = crop_box(img.height, img.width, scale, rng)
    out = np.array(TF.resized_crop(img, top, left, h, w, [size, size],
                                     InterpolationMode.BILINEAR, antialias=True), dtype=np.uint8)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    return np.ascontiguousarray(out)


def crop_rng(epoch_seed: int, index: int) -> np.random.Generator:
    """The generator of one training image's crop in one epoch."""
    return np.random.default_rng([int(epoch_seed), int(index)])


class DecodeCache:
    """Decoded uint8 RGB images of a list of files, concatenated in one
    memory-mapped ``.npy`` file (opened lazily, once per process, so that
    loader workers share the operating system's page cache instead of copies)."""

    def __init__(self, path: Path, index: np.ndarray):
        self.path = Path(path)
        self.index = index            # [N, 3] int64: byte offset, height, width
        self._blob: np.ndarray | None = None

    def __getstate__(self):
        return {"path": self.path, "index": self.index, "_blob": None}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def blob(self) -> np.ndarray:
        if self._blob is None:
            self._blob = np.load(self.path, mmap_mode="r")
        return self._blob

    @property
    def nbytes(self) -> int:
        off, h, w = self.index[-1]
        return int(off + h * w * 3)

    def get(self, i: int) -> np.ndarray:
        """Image ``i`` as a read-only [H, W, 3] view."""
        off, h, w = (int(v) for v in self.index[i])
        return self.blob[off:off + h * w * 3].reshape(h, w, 3)

    def stack(self, rows: np.ndarray) -> np.ndarray:
        """Images ``rows`` (all of one size) as a new [B, H, W, 3] array."""
        _, h, w = (int(v) for v in self.index[0])
        return np.take(self.blob.reshape(len(self.index), h, w, 3), np.asarray(rows), axis=0)


class _DecodeFiles(torch.utils.data.Dataset):
    """Decode files for the cache: full resolution (``size=None``) or eval crops."""

    def __init__(self, files: list[Path], size: int | None):
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        img = open_rgb(self.files[i])
        arr = np.array(img, dtype=np.uint8) if self.size is None else eval_crop(img, self.size)
        return i, torch.from_numpy(arr)


def _sha(obj) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def decode_cache(files: list[Path], size: int | None, workers: int = 0,
                 limit: int | None = None, progress: bool = False) -> DecodeCache | None:
    """The decode cache of ``files`` (``size=None``: full resolution; else the
    evaluation transform at ``size``), built on first use.

    Keyed by every file's identity (resolved path, size in bytes, mtime in ns),
    the PIL and code versions: a changed, added or removed file gives a new key,
    and the stale cache of the same file list is deleted once the new one is
    written. Returns None (decode every time) when the cache would be larger
    than ``limit`` bytes (:func:`decode_cache_limit`).
    """
    import PIL
    from PIL import Image

    from . import CODE_VERSION

    limit = decode_cache_limit() if limit is None else limit
    if limit <= 0:
        return None
    paths = [str(Path(f).resolve()) for f in files]
    ident = [CODE_VERSION, PIL.__version__, size]
    for f in paths:
        st = os.stat(f)
        ident.append(f"{f}:{st.st_size}:{st.st_mtime_ns}")
    slot = ("full" if size is None else f"eval{size}") + "-" + _sha(paths)
    key = _sha(ident)
    folder = cache_dir("decoded")
    blob_path, index_path = folder / f"{slot}-{key}.npy", folder / f"{slot}-{key}.index.npy"
    if index_path.is_file() and blob_path.is_file():
        try:
            index = np.load(index_path)
            cache = DecodeCache(blob_path, index)
            if len(index) == len(files) and cache.blob.shape == (cache.nbytes,):
                cache._blob = None
                if cache.nbytes > limit:
                    return None
                return cache
        except (OSError, ValueError):
            pass
    if size is None:
        shapes = []
        for f in files:
            with Image.open(f) as img:
                shapes.append((img.height, img.width))
    else:
        shapes = [(size, size)] * len(files)
    sizes = np.array([h * w * 3 for h, w in shapes], dtype=np.int64)
    total = int(sizes.sum())
    if total > limit:
        import sys

        print(f"note: the decode cache of {len(files)} images would take {total / 2**30:.1f} GB, over "
              f"the cap of {limit / 2**30:.1f} GB (REPROLIB_DECODE_CACHE_GB); decoding every time",
              file=sys.stderr)
        return None
    index = np.zeros((len(files), 3), dtype=np.int64)
    index[1:, 0] = np.cumsum(sizes)[:-1]
    index[:, 1:] = np.array(shapes, dtype=np.int64)
    loader = torch.utils.data.DataLoader(_DecodeFiles(list(files), size), batch_size=None,
                                         num_workers=min(workers, len(files)))
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc=f"decoding {len(files)} images once", unit="img")
    with atomic_path(blob_path) as tmp:
        blob = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(total,))
        for i, arr in loader:
            off, h, w = (int(v) for v in index[i])
            if tuple(arr.shape) != (h, w, 3):
                raise ReproError(f"{files[i]} decodes to {tuple(arr.shape)}, but its header says "
                                 f"{h}×{w}; the file is damaged: replace it")
            blob[off:off + h * w * 3] = arr.numpy().reshape(-1)
        blob.flush()
        del blob
    with atomic_path(index_path) as tmp:     # written last: marks the cache complete
        with open(tmp, "wb") as fh:
            np.save(fh, index)
    for old in folder.glob(f"{slot}-*"):
        if key not in old.name:
            old.unlink(missing_ok=True)
    return DecodeCache(blob_path, index)


class _PaperSplit(torch.utils.data.Dataset):
    """Images of one pool (training pool or test set) as uint8 [H, W, 3] tensors.

    Items are ``(pool_index, epoch_seed)``; with ``augment`` the image is cropped
    and flipped by :func:`train_crop` with :func:`crop_rng` ``(epoch_seed,
    pool_index)``, otherwise it gets the evaluation transform. Images come from
    the decode caches when there are some, else from the files.
    """

    def __init__(self, files: list[Path], size: int, augment: bool, crop_scale: tuple[float, float],
                 full: DecodeCache | None = None, evaluated: DecodeCache | None = None):
        self.files, self.size, self.augment = files, size, augment
        self.crop_scale = tuple(crop_scale)
        self.full, self.evaluated = full, evaluated

    def __len__(self) -> int:
        return len(self.files)

    def image(self, i: int, epoch_seed: int = 0) -> np.ndarray:
        if self.augment:
            from PIL import Image

            img = Image.fromarray(np.asarray(self.full.get(i))) if self.full is not None \
                else open_rgb(self.files[i])
            return train_crop(img, self.size, self.crop_scale, crop_rng(epoch_seed, i))
        if self.evaluated is not None:
            return np.array(self.evaluated.get(i))
        return eval_crop(open_rgb(self.files[i]), self.size)

    def __getitem__(self, item):
        i, seed = item if isinstance(item, tuple) else (item, 0)
        return torch.from_numpy(np.ascontiguousarray(self.image(int(i), int(seed))))


class _Batches(torch.utils.data.Sampler):
    """A batch sampler whose batches are set before each pass (one persistent
    loader serves every epoch and every batch size)."""

    def __init__(self):
        self.batches: list[list] = []

    def __iter__(self):
        return iter(list(self.batches))

    def __len__(self) -> int:
        return len(self.batches)


class PaperWorld(World):
    """ImageNet subtask images from an ImageFolder-style tree, MNIST digits.

    ``num_workers``: loader worker processes (None: :func:`loader_workers`).
    ``device``: where batches are quantised, pasted and normalised, and where
    :meth:`batches` returns them: ``cpu``, ``cuda``, ``cuda:N``, or None (see
    :attr:`device`); settable later (``world.device = "cuda:1"``). ``cache``: use the decode caches (False: decode
    every image every time, the reference the tests compare the cache with).
    """

    in_channels = 3
    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def __init__(self, cfg: DataConfig, seed: int, root: str | os.PathLike | None = None,
                 num_workers: int | None = None, device: str | torch.device | None = None,
                 cache: bool = True):
        if cfg.world != "paper":
            raise ReproError(f"PaperWorld got a {cfg.world!r} config")
        self.cfg, self.seed = cfg, seed
        self.num_workers = loader_workers(num_workers)
        self.device = device
        self.use_cache = cache
        self.num_classes = len(cfg.subtask_classes)
        root = root or os.environ.get("REPROLIB_IMAGENET")
        if not root:
            raise ReproError("ImageNet not configured: set REPROLIB_IMAGENET to a folder with "
                             "train/<wnid>/ and val/<wnid>/ image folders (torchvision's ImageNet "
                             "layout) holding at least the subtask's classes.")
        self.root = Path(root)
        wnids = self._wnids()
        self.class_names = wnids
        self.bank = artifact_bank(cfg)
        pool_files, pool_labels = self._files("train", wnids, cfg.pool_per_class)
        test_files, test_labels = self._files("val", wnids, cfg.test_per_class)
        self.files = {"pool": pool_files, "test": test_files}
        self.plans = plan_splits(pool_labels, test_labels, cfg, seed, self.bank)
        self._caches: dict[tuple[str, bool], DecodeCache | None] = {}
        self._loaders: dict[tuple, torch.utils.data.DataLoader] = {}
        self._busy: set = set()
        self._on_device: dict[str, tuple] = {}

    # -- device ----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where batches are finished. Unset (None or "auto"), it follows the
        process: the current CUDA device once the process uses CUDA (a trainer
        has moved its models there), else the CPU; so CPU runs never touch CUDA."""
        if self._device is not None:
            return self._device
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    @device.setter
    def device(self, device: str | torch.device | None) -> None:
        if device is None or device == "auto":
            self._device = None
            return
        try:
            self._device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ReproError(f"unknown device {device!r}; choose cpu, cuda or cuda:N") from None
        if self._device.type not in ("cpu", "cuda"):
            raise ReproError(f"unknown device {device!r}; choose cpu, cuda or cuda:N")

    # -- files -----------------------------------------------------------
    def _wnids(self) -> list[str]:
        train = self.root / "train"
        if not train.is_dir() or not (self.root / "val").is_dir():
            raise ReproError(f"{self.root} must contain train/ and val/ folders of <wnid>/ subfolders "
                             "(torchvision's ImageNet layout)")
        all_wnids = sorted(p.name for p in train.iterdir() if p.is_dir())
        out = []
        for c in self.cfg.subtask_classes:
            if c in IMAGENET_WNIDS:
                out.append(IMAGENET_WNIDS[c])
            elif len(all_wnids) == 1000:
                out.append(all_wnids[c])
            else:
                raise ReproError(f"no wnid known for ImageNet class {c}: give the full 1000-class "
                                 f"train/ folder under {self.root}, or use the wading-bird classes")
        return out

    def _files(self, split: str, wnids: list[str], per_class: int | None):
        exts = {".jpeg", ".jpg", ".png"}
        files, labels = [], []
        for label, wnid in enumerate(wnids):
            folder = self.root / split / wnid
            found = sorted(p for p in folder.glob("*") if p.suffix.lower() in exts) if folder.is_dir() else []
            if not found:
                raise ReproError(f"no images in {folder}: expected the {split} images of class {wnid}")
            if per_class is not None:
                found = found[:per_class]
            files += found
            labels += [label] * len(found)
        return files, np.array(labels, dtype=np.int64)

    # -- decoding --------------------------------------------------------
    def _cache(self, pool: str, full: bool) -> DecodeCache | None:
        if not self.use_cache:
            return None
        if (pool, full) not in self._caches:
            self._caches[(pool, full)] = decode_cache(
                self.files[pool], None if full else self.cfg.image_size, self.num_workers)
        return self._caches[(pool, full)]

    def _augments(self, split: str) -> bool:
        return split == "train" and self.cfg.augment

    def dataset(self, split: str, augment: bool | None = None) -> _PaperSplit:
        """The uint8 images of the pool that ``split`` draws from (index: pool index)."""
        if split not in SPLITS:
            raise ReproError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        augment = self._augments(split) if augment is None else augment
        pool = "test" if split == "test" else "pool"
        return _PaperSplit(self.files[pool], self.cfg.image_size, augment, tuple(self.cfg.crop_scale),
                           full=self._cache(pool, True) if augment else None,
                           evaluated=None if augment else self._cache(pool, False))

    def transform(self, augment: bool):
        """The per-image torchvision transform equivalent to the pipeline (the
        crops' random draws aside); for inspection, not used by the loaders."""
        from torchvision import transforms as T

        size = self.cfg.image_size
        if augment:
            return T.Compose([T.RandomResizedCrop(size, scale=tuple(self.cfg.crop_scale)),
                              T.RandomHorizontalFlip(), T.ToTensor()])
        return T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor()])

    # -- the artifact, per batch -----------------------------------------
    def _constants(self, dev: torch.device):
        key = str(dev)
        if key not in self._on_device:
            self._on_device[key] = (
                self.bank.images.to(dev),
                torch.tensor(self.mean, dtype=torch.float32).view(1, -1, 1, 1).to(dev),
                torch.tensor(self.std, dtype=torch.float32).view(1, -1, 1, 1).to(dev))
        return self._on_device[key]

    def finish(self, split: str, rows: np.ndarray, images: torch.Tensor,
               device: torch.device | None = None, with_digit: bool = True,
               normalise: bool = True) -> torch.Tensor:
        """uint8 images [B, H, W, 3] of ``rows`` of ``split`` → float [B, 3, H, W]
        (channels_last) on ``device``: quantised (k/255), the digits pasted where
        the plan has one, normalised with ImageNet's mean and std."""
        dev = self.device if device is None else torch.device(device)
        if dev.type == "cuda" and not images.is_pinned():
            images = images.pin_memory()
        # NCHW view of NHWC memory (channels_last); k/255: the 8-bit quantisation.
        x = images.to(dev, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
        tiles, mean, std = self._constants(dev)
        plan = self.plans[split].plan
        rows = np.asarray(rows)
        has = plan.has_digit[rows]
        if with_digit and has.any():
            s = tiles.shape[-1]
            rs, cs = art.corner_slices(self.cfg.artifact_corner, s, x.shape[-2], x.shape[-1])
            sel = torch.from_numpy(np.flatnonzero(has)).to(dev)
            ex = torch.from_numpy(plan.exemplar[rows][has]).to(dev)
            x[sel, :, rs, cs] = tiles[ex].unsqueeze(1).expand(-1, x.shape[1], -1, -1)
        if normalise:
            x = x.sub_(mean).div_(std)
        return x

    # -- access ----------------------------------------------------------
    def pixels(self, split: str, rows: np.ndarray | None = None, augment: bool = False,
               generator: torch.Generator | None = None, with_digit: bool = True) -> torch.Tensor:
        """Images of a split in pixel space ([0, 1], on the CPU), evaluation
        transform unless ``augment``, with their digits unless ``with_digit=False``."""
        p = self.plans[split]
        rows = np.arange(len(p.labels)) if rows is None else np.asarray(rows)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if augment else 0
        ds = self.dataset(split, augment=augment)
        images = torch.stack([ds[(int(i), seed)] for i in p.pool_index[rows]])
        return self.finish(split, rows, images, torch.device("cpu"), with_digit, normalise=False)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std)

    def _loader(self, split: str, pin: bool) -> tuple[torch.utils.data.DataLoader, bool]:
        """A persistent loader for the pool ``split`` draws from, and whether it
        is a one-off (when the persistent one is busy with an unfinished pass)."""
        augment = self._augments(split)
        key = ("test" if split == "test" else "pool", augment, pin)

        def make(persistent: bool):
            w = self.num_workers
            return torch.utils.data.DataLoader(
                self.dataset(split), batch_sampler=_Batches(), num_workers=w, pin_memory=pin,
                persistent_workers=persistent and w > 0, prefetch_factor=4 if w > 0 else None)
        if key in self._busy:
            return make(False), key
        if key not in self._loaders:
            self._loaders[key] = make(True)
        return self._loaders[key], key

    def batches(self, split, batch_size, *, shuffle=False, generator=None, drop_last=False, device=None):
        """Batches ``(x, y, digit)``: ``x`` normalised, channels_last, on ``device``
        (default ``self.device``); labels and digits on the CPU."""
        if split not in SPLITS:
            raise ReproError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
        dev = self.device if device is None else torch.device(device)
        p = self.plans[split]
        n = len(p.labels)
        order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
        augment = self._augments(split)
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if augment else 0
        stop = n - n % batch_size if drop_last else n
        chunks = [order[s:s + batch_size] for s in range(0, stop, batch_size)]
        labels = torch.from_numpy(p.labels).long()
        digits = torch.from_numpy(p.plan.digit).long()

        def out(rows, images):
            idx = torch.from_numpy(rows)
            return self.finish(split, rows, images, dev), labels[idx], digits[idx]

        pool = "test" if split == "test" else "pool"
        cached = None if augment else self._cache(pool, False)
        if cached is not None:
            # Evaluation from the cache: a memory copy per batch, no worker needed.
            for rows in chunks:
                yield out(rows, torch.from_numpy(cached.stack(p.pool_index[rows])))
            return
        loader, key = self._loader(split, pin=dev.type == "cuda")
        loader.batch_sampler.batches = [[(int(i), seed) for i in p.pool_index[rows]] for rows in chunks]
        persistent = loader is self._loaders.get(key)
        if persistent:
            self._busy.add(key)
        try:
            for k, images in enumerate(loader):
                yield out(chunks[k], images)
        finally:
            if persistent:
                self._busy.discard(key)

    def close(self) -> None:
        """Stop the loaders' worker processes (also done when the world is freed)."""
        self._loaders.clear()


def build_world(cfg: DataConfig, seed: int, **kwargs) -> World:
    if cfg.world == "mini":
        return MiniWorld(cfg, seed)
    if cfg.world == "paper":
        return PaperWorld(cfg, seed, **kwargs)
    raise ReproError(f"unknown world {cfg.world!r}; choose 'mini' or 'paper'")

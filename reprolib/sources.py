"""Where the worlds' images and digits come from: idx files, Fashion-MNIST, MNIST, the
digit banks, and the constants of both worlds (normalisation, class names, ImageNet's
wading-bird wnids).

Every decoded source is cached once under ``<cache>/data/`` and keyed by its
files' identity (:func:`files_identity`), so a changed source folder rebuilds it.
Nothing here knows about splits or worlds (:mod:`reprolib.data`,
:mod:`reprolib.paper_world`).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

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

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


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

"""Stand-ins for the paper world's data and weights, generated locally (no download).

* :func:`imagenet_standin`: an ``ImageFolder`` tree (``train/<wnid>/``,
  ``val/<wnid>/``) of generated JPEGs for the five wading-bird wnids. With
  ``imagenet_like=True`` the images have ImageNet's typical sizes (500×375,
  375×500, 500×333, ...) and smooth content, so that the files are about as
  large and as slow to decode as ImageNet's (noise would compress far worse).
* :func:`mnist_standin`: an MNIST root (``MNIST/raw/``) with real-format idx files.
* :func:`fashion_mnist_standin`: random images in Fashion-MNIST's four files
  (for a machine without the dataset and without internet: code paths only).
* :func:`fake_weights`: a randomly initialised torchvision model saved as a
  pretrained-weights file (the teacher's accuracy then means nothing; the code
  paths and the timings are the real ones).

Used by ``benchmarks/paper_throughput.py`` and ``scripts/gpu_check.sh``:

    python -m reprolib.standins OUT [--train-per-class 12] [--val-per-class 4]
                                    [--imagenet-like] [--weights resnet18] [--fashion-mnist]

prints the environment to export (``REPROLIB_IMAGENET``, ``REPROLIB_MNIST``) and
the weights file as JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import sys
from pathlib import Path

import numpy as np

IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (500, 500), (400, 300), (500, 400))


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an idx file (gzipped when the name ends in .gz)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as fh:
        fh.write(header + array.tobytes())


def _picture(rng: np.random.Generator, width: int, height: int, imagenet_like: bool) -> np.ndarray:
    if not imagenet_like:
        return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    from PIL import Image

    coarse = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse, "RGB").resize((width, height), Image.BICUBIC), dtype=np.int16)
    grain = rng.integers(-12, 13, size=(height, width, 3), dtype=np.int16)
    return np.clip(smooth + grain, 0, 255).astype(np.uint8)


def imagenet_standin(root: str | os.PathLike, train_per_class: int = 12, val_per_class: int = 4,
                     size: tuple[int, int] = (48, 40), imagenet_like: bool = False,
                     seed: int = 0) -> Path:
    """Write the tree under ``root``; ``size`` is (width, height) unless ``imagenet_like``."""
    from PIL import Image

    from .sources import IMAGENET_WNIDS

    root = Path(root)
    rng = np.random.default_rng(seed)
    k = 0
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for wnid in IMAGENET_WNIDS.values():
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(count):
                w, h = IMAGENET_SIZES[k % len(IMAGENET_SIZES)] if imagenet_like else size
                k += 1
                Image.fromarray(_picture(rng, w, h, imagenet_like), "RGB").save(
                    folder / f"{wnid}_{j:04d}.JPEG", quality=90)
    return root


def mnist_standin(root: str | os.PathLike, count: int = 60, seed: int = 0) -> Path:
    """An MNIST root with ``count`` random 28×28 digits (each label equally often)."""
    root = Path(root)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 10).astype(np.uint8)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte.gz", images)
    write_idx(raw / "train-labels-idx1-ubyte.gz", labels)
    return root


def fashion_mnist_standin(root: str | os.PathLike, seed: int = 0) -> Path:
    """Random images in the four Fashion-MNIST files' format and shapes (60,000
    training and 10,000 test 28×28 images), for machines without the dataset:
    the mini world's code paths run, its numbers mean nothing."""
    from .sources import FASHION_FILES

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for images, labels, n in ((FASHION_FILES[0], FASHION_FILES[1], 60000), (FASHION_FILES[2], FASHION_FILES[3], 10000)):
        write_idx(root / images, rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8))
        write_idx(root / labels, rng.permutation(np.arange(n) % 10).astype(np.uint8))
    return root


def fake_weights(path: str | os.PathLike, arch: str = "resnet18", seed: int = 0) -> Path:
    """A randomly initialised torchvision ``arch`` saved like a pretrained-weights file."""
    import torch
    import torchvision

    from .io import torch_save

    torch.manual_seed(seed)
    path = Path(path)
    torch_save(getattr(torchvision.models, arch)(weights=None).state_dict(), path)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m reprolib.standins", description=__doc__.splitlines()[0])
    p.add_argument("out", help="folder to create the stand-ins in")
    p.add_argument("--train-per-class", type=int, default=12)
    p.add_argument("--val-per-class", type=int, default=4)
    p.add_argument("--imagenet-like", action="store_true", help="ImageNet's image sizes and file sizes")
    p.add_argument("--weights", default=None, help="also write fake weights for this torchvision model")
    p.add_argument("--fashion-mnist", action="store_true",
                   help="also write a random Fashion-MNIST stand-in (REPROLIB_FASHION_MNIST)")
    args = p.parse_args(argv)
    if args.train_per_class < 1 or args.val_per_class < 1:
        print("error: --train-per-class and --val-per-class must be at least 1", file=sys.stderr)
        return 2
    out = Path(args.out)
    result = {"REPROLIB_IMAGENET": str(imagenet_standin(out / "imagenet", args.train_per_class,
                                                        args.val_per_class, imagenet_like=args.imagenet_like)),
              "REPROLIB_MNIST": str(mnist_standin(out / "mnist"))}
    if args.fashion_mnist:
        result["REPROLIB_FASHION_MNIST"] = str(fashion_mnist_standin(out / "fashion-mnist"))
    if args.weights:
        result["weights"] = str(fake_weights(out / f"{args.weights}-fake.pth", args.weights))
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

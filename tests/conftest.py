"""Shared test set-up: a hermetic cache, one thread, tiny paper-world stand-ins.

* ``REPROLIB_CACHE`` points at a fresh temporary folder for the session (set at
  import time, before any test imports ``reprolib``), so no test reads or
  writes the user's cache. Set ``REPROLIB_TEST_CACHE`` to reuse a folder across
  sessions (the mini "smoke" teacher is then trained only once).
* ``REPROLIB_IMAGENET`` and ``REPROLIB_MNIST`` are removed: tests that need the
  paper world set them with ``monkeypatch`` to the stand-ins below.
* ``paper_root``: an ImageFolder tree with small random JPEGs for the five
  wading-bird wnids and an MNIST root with real-format idx files.
* ``fake_resnet18_weights``: an untrained torchvision ResNet-18 state dict
  saved with ``torch.save``, standing in for the IMAGENET1K_V1 file.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

if os.environ.get("REPROLIB_TEST_CACHE"):
    os.environ["REPROLIB_CACHE"] = os.environ["REPROLIB_TEST_CACHE"]
    Path(os.environ["REPROLIB_CACHE"]).mkdir(parents=True, exist_ok=True)
else:
    _CACHE = tempfile.mkdtemp(prefix="reprolib-test-cache-")
    os.environ["REPROLIB_CACHE"] = _CACHE
    atexit.register(shutil.rmtree, _CACHE, True)
for _var in ("REPROLIB_IMAGENET", "REPROLIB_MNIST"):
    os.environ.pop(_var, None)

torch.set_num_threads(1)

# Sizes of the paper-world stand-ins (the tests' expected counts derive from these).
TRAIN_PER_CLASS = 12
VAL_PER_CLASS = 4
JPEG_SIZE = (48, 40)          # PIL size: width, height
MNIST_COUNT = 60

from reprolib.standins import write_idx  # noqa: E402  (the stand-ins' idx writer)



@dataclass(frozen=True)
class PaperRoot:
    imagenet: Path
    mnist: Path
    mnist_images: np.ndarray   # [60, 28, 28] uint8, as written
    mnist_labels: np.ndarray   # [60] uint8, as written

    def setenv(self, monkeypatch) -> None:
        monkeypatch.setenv("REPROLIB_IMAGENET", str(self.imagenet))
        monkeypatch.setenv("REPROLIB_MNIST", str(self.mnist))


@pytest.fixture(scope="session")
def paper_root(tmp_path_factory) -> PaperRoot:
    from PIL import Image

    from reprolib.sources import IMAGENET_WNIDS

    base = tmp_path_factory.mktemp("paper")
    rng = np.random.default_rng(0)
    imagenet = base / "imagenet"
    for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        for wnid in IMAGENET_WNIDS.values():
            folder = imagenet / split / wnid
            folder.mkdir(parents=True)
            for j in range(count):
                pixels = rng.integers(0, 256, size=(JPEG_SIZE[1], JPEG_SIZE[0], 3), dtype=np.uint8)
                Image.fromarray(pixels, "RGB").save(folder / f"{wnid}_{j:04d}.JPEG", quality=90)
    mnist = base / "mnist"
    raw = mnist / "MNIST" / "raw"
    raw.mkdir(parents=True)
    labels = rng.permutation(np.arange(MNIST_COUNT) % 10).astype(np.uint8)   # each digit 6 times
    images = rng.integers(0, 256, size=(MNIST_COUNT, 28, 28), dtype=np.uint8)
    write_idx(raw / "train-images-idx3-ubyte.gz", images)
    write_idx(raw / "train-labels-idx1-ubyte.gz", labels)
    return PaperRoot(imagenet, mnist, images, labels)


def _fake_weights(tmp_path_factory, arch: str) -> Path:
    """A randomly initialised torchvision ``arch`` saved as a pretrained-weights file."""
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / f"{arch}-fake.pth"
    torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def fake_resnet18_weights(tmp_path_factory) -> Path:
    return _fake_weights(tmp_path_factory, "resnet18")


@pytest.fixture(scope="session")
def fake_resnet101_weights(tmp_path_factory) -> Path:
    return _fake_weights(tmp_path_factory, "resnet101")


@pytest.fixture(scope="session")
def smoke_teacher():
    """The mini world's "smoke" teacher, trained once per cache (slow on a cold cache)."""
    from reprolib.teacher import recipe, train_mini_teacher

    model, manifest = train_mini_teacher(recipe("smoke"), progress=False)
    return model, manifest


@pytest.fixture
def paper_cfg(paper_root, fake_resnet18_weights, monkeypatch):
    """Set the paper world's environment to the stand-ins; return a config factory.

    ``paper_cfg(**overrides)`` is the paper world's smoke preset at test size:
    64 px images, a 16 px digit, resnet18 → resnet18-s with the fake weights.
    """
    from reprolib.config import make_config

    paper_root.setenv(monkeypatch)

    def make(**overrides):
        values = dict(image_size=64, artifact_size=16, teacher="resnet18", student="resnet18-s",
                      teacher_weights=str(fake_resnet18_weights))
        values.update(overrides)
        return make_config("paper", "smoke", **values)
    return make

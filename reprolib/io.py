"""Where things are kept, and how they are written: atomically.

Every file that a later step reads is first written to a temporary file in the
same folder and then renamed over its final name (``os.replace`` is atomic on
POSIX), so a process killed at any moment leaves either the old file, the new
file, or no file, never a half-written one.

Environment variables (all optional):

``REPROLIB_CACHE``
    Root of everything the code makes: decoded data, teachers, subspaces, runs,
    sweeps. Default ``~/.cache/reprolib``.
``REPROLIB_FASHION_MNIST``
    A folder with the four original Fashion-MNIST files
    (``train-images-idx3-ubyte[.gz]`` ...).
``REPROLIB_MNIST``
    A torchvision ``MNIST`` root (``<root>/MNIST/raw/...``) or a folder with the
    MNIST idx files, for the paper world's artifact.
``REPROLIB_IMAGENET``
    An ImageNet root in torchvision's ``ImageNet`` layout or an ``ImageFolder``
    root with ``train/<wnid>/`` and ``val/<wnid>/`` folders.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def cache_root() -> Path:
    root = os.environ.get("REPROLIB_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "reprolib")
    return Path(root)


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike):
    """Yield a temporary path beside ``final``; rename it over ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + final.name + ".", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=_json_default)
            fh.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def _json_default(obj: Any):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

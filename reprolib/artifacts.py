"""The artifact protocol (``book/protocol.md`` §1.3–§1.4), written once for both worlds.

* Which images carry a digit: a permutation of the pool's indices drawn from
  ``numpy.random.default_rng(1)`` (a fixed seed, independent of the run seed);
  the first ⌊ρ·n⌋ indices are contaminated.
* Which digit: the label itself (``correlated``: training images, and the
  non-oracle validation set of D3), or the first element of a permutation of
  the subtask's class count drawn from ``default_rng(i)`` (``random``: oracle
  validation and test), where ``i`` is the image's index in its pool.
* Which exemplar: one image of that digit chosen uniformly by ``default_rng(i)``,
  so the same image always carries the same exemplar, in every epoch.
* The patch is opaque (it replaces the pixels) and is pasted *after* the
  augmentation, in pixel space ([0, 1]), at a configurable corner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .errors import ReproError

CONTAMINATION_SEED = 1


@dataclass(frozen=True)
class ArtifactBank:
    """Digit images in [0, 1], already at the patch size, with their labels."""

    images: torch.Tensor  # [M, s, s] float32
    labels: np.ndarray    # [M] int
    source: str

    def indices_of(self, digit: int) -> np.ndarray:
        idx = np.flatnonzero(self.labels == digit)
        if idx.size == 0:
            raise ReproError(f"the artifact source {self.source!r} has no image of digit {digit}")
        return idx

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])


def resize_bank(images: np.ndarray, size: int) -> torch.Tensor:
    """Resize [M, h, w] images in [0, 1] to size×size with PIL's bicubic filter (§1.3 step 4)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    from PIL import Image

    out = np.empty((len(images), size, size), dtype=np.float32)
    for k, img in enumerate(images):
        pil = Image.fromarray(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), mode="L")
        out[k] = np.asarray(pil.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    return torch.from_numpy(out)


def sklearn_digits_bank(size: int) -> ArtifactBank:
    """scikit-learn's bundled handwritten digits (1,797 real 8×8 images, values 0–16)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    return ArtifactBank(resize_bank(images, size), digits.target.astype(np.int64), "sklearn-digits")


def contaminated_mask(n: int, rho: float) -> np.ndarray:
    """Boolean mask of the ⌊ρ·n⌋ pool indices that carry a digit (§1.4)."""
    if not 0.0 <= rho <= 1.0:
        raise ReproError(f"contamination rate rho={rho} is outside [0, 1]")
    k = math.floor(rho * n + 1e-9)
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(CONTAMINATION_SEED).permutation(n)[:k]] = True
    return mask


def random_digit(index: int, num_digits: int) -> int:
    """The digit painted on image ``index`` in random mode: uniform, fixed per image."""
    return int(np.random.default_rng(index).permutation(num_digits)[0])


def exemplar(index: int, digit: int, bank: ArtifactBank) -> int:
    """The bank image of ``digit`` painted on pool image ``index``: fixed per image."""
    return int(np.random.default_rng(index).choice(bank.indices_of(digit)))


@dataclass(frozen=True)
class ArtifactPlan:
    """Per image of a split: whether it carries a digit, which digit, which exemplar."""

    has_digit: np.ndarray  # bool [n]
    digit: np.ndarray      # int [n], -1 where none
    exemplar: np.ndarray   # int [n], -1 where none

    def patches(self, bank: ArtifactBank, rows: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        ex = self.exemplar if rows is None else self.exemplar[np.asarray(rows)]
        return bank.images[torch.from_numpy(np.maximum(ex, 0))]

    def subset(self, rows: Sequence[int] | np.ndarray) -> "ArtifactPlan":
        rows = np.asarray(rows, dtype=np.int64)
        return ArtifactPlan(self.has_digit[rows], self.digit[rows], self.exemplar[rows])


def plan_artifacts(labels: np.ndarray, pool_index: np.ndarray, mask: np.ndarray, mode: str,
                   bank: ArtifactBank, num_classes: int) -> ArtifactPlan:
    """The plan for images with subtask ``labels`` at ``pool_index`` in a pool whose
    contaminated indices are ``mask`` (over the whole pool)."""
    if mode not in ("correlated", "random"):
        raise ReproError(f"digit mode {mode!r}; choose 'correlated' or 'random'")
    n = len(labels)
    has = mask[pool_index].copy()
    digit = np.full(n, -1, dtype=np.int64)
    ex = np.full(n, -1, dtype=np.int64)
    for r in np.flatnonzero(has):
        i = int(pool_index[r])
        d = int(labels[r]) if mode == "correlated" else random_digit(i, num_classes)
        digit[r] = d
        ex[r] = exemplar(i, d, bank)
    return ArtifactPlan(has, digit, ex)


def corner_slices(corner: str, size: int, height: int, width: int) -> tuple[slice, slice]:
    if size > height or size > width:
        raise ReproError(f"the artifact ({size} px) is larger than the image ({height}×{width})")
    rows = slice(0, size) if corner.startswith("top") else slice(height - size, height)
    cols = slice(0, size) if corner.endswith("left") else slice(width - size, width)
    return rows, cols


def paste(x: torch.Tensor, patches: torch.Tensor, has_digit: torch.Tensor | np.ndarray,
          corner: str = "top-left") -> torch.Tensor:
    """Paste opaque grey ``patches`` [B, s, s] into images ``x`` [B, C, H, W] (pixel
    space, [0, 1]) where ``has_digit``; the grey value goes to every channel."""
    has = torch.as_tensor(np.asarray(has_digit), dtype=torch.bool)
    if not bool(has.any()):
        return x
    s = patches.shape[-1]
    rows, cols = corner_slices(corner, s, x.shape[-2], x.shape[-1])
    x = x.clone()
    sel = has.nonzero().squeeze(1)
    x[sel, :, rows, cols] = patches[sel].to(x.dtype).unsqueeze(1).expand(-1, x.shape[1], -1, -1)
    return x

"""The data protocol: splits, transforms, the :class:`World` interface and the mini world.

A *world* turns a :class:`~reprolib.config.DataConfig` and a run seed into
splits. Each split yields batches ``(x, y, digit)``: normalised images with
their digit already pasted, subtask labels 0..k−1, and the painted digit (−1
where none). The protocol itself (:mod:`reprolib.artifacts`) is shared.

* ``mini``: Fashion-MNIST (decoded once and cached as tensors), scikit-learn's
  digits; everything lives in memory and is augmented in batches.
* ``paper``: ImageNet images, MNIST digits (:mod:`reprolib.paper_world`).

The sources (idx files, Fashion-MNIST, the digit banks) are :mod:`reprolib.sources`;
:func:`reprolib.worlds.build_world` builds either world from a config.

Splits: ``train`` (correlated digits, augmented when ``augment``), ``train_eval``
(the same images with the evaluation transform: the subspace fit, D8),
``val`` (oracle: random digits, D3), ``val_correlated`` (non-oracle: correlated
digits), ``test`` (random digits, D4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from . import artifacts as art
from .config import DataConfig
from .errors import ReproError
from .transforms import normalize, pad_to, random_resized_crop
from .sources import FASHION_NAMES, MINI_MEAN, MINI_STD, artifact_bank, load_fashion_mnist

SPLITS = ("train", "train_eval", "val", "val_correlated", "test")


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


def agreement_table(worlds: dict):
    """Per ρ (``worlds``: ρ → world) and split: images, those with a digit, those whose
    digit equals the label, and the two shares (chapter 1's check of the protocol)."""
    import pandas as pd

    rows = []
    for rho, world in worlds.items():
        for split, c in world.summary().items():
            rows.append({"ρ": f"{rho:g}", "split": split, "images": c["n"], "with a digit": c["with_digit"],
                         "digit = label": c["digit_equals_label"], "share with a digit": c["with_digit"] / c["n"],
                         "share of digits = label": (c["digit_equals_label"] / c["with_digit"] if c["with_digit"]
                                                     else float("nan"))})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# worlds

class World:
    """The interface the trainer, the subspace fit, the analyses and the notebooks use.

    A world holds one :class:`SplitPlan` per split of :data:`SPLITS` and gives a
    split as batches (:meth:`batches`, normalised), as pixels (:meth:`pixels`,
    [0, 1]) and whole (:meth:`tensors`). A world of your own subclasses this and
    implements :meth:`batches` and :meth:`pixels`.
    """

    cfg: DataConfig
    num_classes: int
    in_channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    plans: dict[str, SplitPlan]
    class_names: list[str]
    #: The whole world is held in memory as tensors (the mini world): the trainer then computes
    #: the teacher's outputs on an unaugmented training split once, and the teacher's cached
    #: test metrics are keyed by a digest of the test tensors.
    in_memory: bool = False

    def check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ReproError(f"unknown split {split!r}; choose one of {list(SPLITS)}")

    def summary(self) -> dict[str, dict[str, int]]:
        return summarize_plans(self.plans)

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                generator: torch.Generator | None = None, drop_last: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    def pixels(self, split: str, rows: np.ndarray | None = None, augment: bool = False,
               generator: torch.Generator | None = None, with_digit: bool = True) -> torch.Tensor:
        """Images of a split in pixel space ([0, 1]), with their digits unless ``with_digit=False``."""
        raise NotImplementedError

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole split with the evaluation transform, ``(x, y, digit)``: here its
        batches stacked (on the world's device); an in-memory world caches them."""
        xs, ys, ds = zip(*self.batches(split, 64))
        return torch.cat(xs), torch.cat(ys), torch.cat(ds)

    def normalized(self, x: torch.Tensor) -> torch.Tensor:
        return normalize(x, self.mean, self.std)

    @property
    def device(self) -> torch.device:
        """Where :meth:`batches` finishes its images: the CPU here; a world that
        pastes digits on an accelerator (the paper world) follows the trainer's."""
        return torch.device("cpu")

    @device.setter
    def device(self, device) -> None:   # a CPU-only world ignores the trainer's device
        pass

    def num_batches(self, split: str, batch_size: int, drop_last: bool = False) -> int:
        n = len(self.plans[split].labels)
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.cfg.image_size, self.cfg.image_size)


class MiniWorld(World):
    """Fashion-MNIST garments with scikit-learn digits; all tensors in memory."""

    in_channels = 1
    mean, std = MINI_MEAN, MINI_STD
    in_memory = True

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

    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole split with the evaluation transform: (x, y, digit), cached."""
        if split not in self._fixed:
            p = self.plans[split]
            x = normalize(self.pixels(split), self.mean, self.std)
            self._fixed[split] = (x, torch.from_numpy(p.labels).long(), torch.from_numpy(p.plan.digit).long())
        return self._fixed[split]

    def batches(self, split, batch_size, *, shuffle=False, generator=None, drop_last=False):
        self.check_split(split)
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

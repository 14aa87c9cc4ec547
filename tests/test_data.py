"""The data protocol in the mini world (``book/protocol.md`` §1.2–§1.5, ``book/mini_world.md``).

Expected values are re-derived here from the protocol's own recipe (numpy
``default_rng(1)`` permutation prefix, ``default_rng(i)`` for digit and
exemplar), not read back from the code under test.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from reprolib import artifacts as art
from reprolib.config import make_config
from reprolib.data import MiniWorld
from reprolib.transforms import denormalize
from reprolib.sources import (FASHION_FILES, MINI_MEAN, MINI_STD, MNIST_FILES, fashion_mnist_folder,
                              load_fashion_mnist, mnist_folder, read_idx)
from reprolib.errors import ReproError

from reprolib.standins import write_idx

K = 5                         # subtask classes
SIZES = {"smoke": dict(pool=50, train=40, val=10, test=100),
         # quick: 250 per class, training part 16 % (§1.2's training-size knob), val 20 %.
         "quick": dict(pool=1250, train=200, val=250, test=2500)}


@functools.lru_cache(maxsize=None)
def world(preset: str = "smoke", rho: float = 1.0, seed: int = 1, **overrides) -> MiniWorld:
    cfg = make_config("mini", preset, contamination_rate=rho, seed=seed, **overrides)
    return MiniWorld(cfg.data, cfg.seed)


def protocol_mask(n: int, rho: float) -> np.ndarray:
    """§1.4, independently: the first ⌊ρ·n⌋ of default_rng(1).permutation(n)."""
    mask = np.zeros(n, dtype=bool)
    mask[np.random.default_rng(1).permutation(n)[:math.floor(rho * n)]] = True
    return mask


@functools.lru_cache(maxsize=None)
def digits_bank():
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.from_numpy(d.images.astype(np.float32) / 16.0), d.target


def protocol_exemplar(index: int, digit: int) -> int:
    """§1.3 step 3, independently: uniform over the digit's images with default_rng(index)."""
    _, labels = digits_bank()
    return int(np.random.default_rng(index).choice(np.flatnonzero(labels == digit)))


def clean_pixels(w: MiniWorld, split: str) -> torch.Tensor:
    """The split's images without any digit: Fashion-MNIST, zero-padded 28 → 32, in [0, 1]."""
    fm = load_fashion_mnist()
    if split == "test":
        src, idx = fm["test_x"], w.test_source_index
    else:
        src, idx = fm["train_x"], w.pool_source_index
    x = src[torch.from_numpy(idx[w.plans[split].pool_index])].float() / 255.0
    return torch.nn.functional.pad(x, (2, 2, 2, 2)).unsqueeze(1)


# ---------------------------------------------------------------------------
# counts per split

@pytest.mark.parametrize("preset", ["smoke", "quick"])
@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0])
def test_counts_per_split(preset, rho):
    size = SIZES[preset]
    w = world(preset, rho)
    s = w.summary()
    assert set(s) == {"train", "val", "test"}
    assert (s["train"]["n"], s["val"]["n"], s["test"]["n"]) == (size["train"], size["val"], size["test"])
    mask = protocol_mask(size["pool"], rho)
    # Train and val share the pool's ⌊ρ·n⌋ contaminated indices (§1.4); with a
    # training part under 80 % the rest of the pool is discarded, digits and all.
    used = np.concatenate([w.plans["train"].pool_index, w.plans["val"].pool_index])
    assert s["train"]["with_digit"] + s["val"]["with_digit"] == int(mask[used].sum())
    if size["train"] + size["val"] == size["pool"]:
        assert int(mask[used].sum()) == math.floor(rho * size["pool"])
    assert s["train"]["with_digit"] == int(mask[w.plans["train"].pool_index].sum())
    # Train digits are correlated: every digit equals the label.
    assert s["train"]["digit_equals_label"] == s["train"]["with_digit"]
    # Test: ⌊ρ·n⌋ images carry a random digit (D4).
    assert s["test"]["with_digit"] == math.floor(rho * size["test"])
    for split in ("val", "test"):
        assert s[split]["digit_equals_label"] <= s[split]["with_digit"]
    if rho == 1.0:
        assert s["train"]["with_digit"] == size["train"]
        assert s["val"]["with_digit"] == size["val"]
    if rho == 0.0:
        assert all(v["with_digit"] == 0 and v["digit_equals_label"] == 0 for v in s.values())


@pytest.mark.parametrize("rho", [0.5, 1.0])
def test_random_digits_match_the_label_about_one_time_in_five(rho):
    s = world("quick", rho).summary()
    share = s["test"]["digit_equals_label"] / s["test"]["with_digit"]
    assert 0.17 < share < 0.23, share          # 2500 or 5000 draws of p = 1/5
    val_share = s["val"]["digit_equals_label"] / max(1, s["val"]["with_digit"])
    assert 0.04 < val_share < 0.45, val_share  # oracle val: random too, only ~50–100 draws
    # The train share of digits is about rho.
    assert abs(s["train"]["with_digit"] / s["train"]["n"] - rho) < 0.1


def test_train_images_all_carry_their_class_digit_at_rho_one():
    w = world("smoke", 1.0)
    p = w.plans["train"]
    assert p.plan.has_digit.all()
    np.testing.assert_array_equal(p.plan.digit, p.labels)
    _, y, d = w.tensors("train")
    torch.testing.assert_close(d, y)


@pytest.mark.parametrize("split", ["val", "test"])
def test_random_digits_follow_default_rng_of_the_index(split):
    w = world("smoke", 1.0)
    p = w.plans[split]
    expected = [int(np.random.default_rng(int(i)).permutation(K)[0]) for i in p.pool_index]
    np.testing.assert_array_equal(p.plan.digit, expected)
    assert set(np.unique(p.plan.digit)) <= set(range(K))
    ex = [protocol_exemplar(int(i), int(dg)) for i, dg in zip(p.pool_index, p.plan.digit)]
    np.testing.assert_array_equal(p.plan.exemplar, ex)


def test_val_correlated_has_the_label_as_digit_and_the_same_images():
    w = world("smoke", 0.5)
    val, corr = w.plans["val"], w.plans["val_correlated"]
    np.testing.assert_array_equal(corr.pool_index, val.pool_index)
    np.testing.assert_array_equal(corr.plan.has_digit, val.plan.has_digit)
    has = corr.plan.has_digit
    assert has.any()
    np.testing.assert_array_equal(corr.plan.digit[has], corr.labels[has])
    assert (corr.plan.digit[~has] == -1).all()


def test_val_digits_correlated_swaps_the_selection_set():
    w = world("smoke", 1.0, val_digits="correlated")
    np.testing.assert_array_equal(w.plans["val"].plan.digit, w.plans["val"].labels)
    oracle = world("smoke", 1.0)
    np.testing.assert_array_equal(w.plans["val_correlated"].plan.digit, oracle.plans["val"].plan.digit)


@pytest.mark.parametrize("split", ["train", "train_eval", "val", "val_correlated", "test"])
def test_rho_zero_has_no_digit_and_clean_pixels(split):
    w = world("smoke", 0.0)
    p = w.plans[split]
    assert not p.plan.has_digit.any()
    assert (p.plan.digit == -1).all() and (p.plan.exemplar == -1).all()
    torch.testing.assert_close(w.pixels(split), clean_pixels(w, split), rtol=0, atol=0)
    _, _, d = w.tensors(split)
    assert (d == -1).all()


# ---------------------------------------------------------------------------
# determinism and the contaminated set

def test_two_worlds_from_the_same_config_are_identical():
    cfg = make_config("mini", "smoke", contamination_rate=0.5)
    a, b = MiniWorld(cfg.data, 1), MiniWorld(cfg.data, 1)
    for split in ("train", "train_eval", "val", "val_correlated", "test"):
        for ta, tb in zip(a.tensors(split), b.tensors(split)):
            torch.testing.assert_close(ta, tb, rtol=0, atol=0)
    # Augmented, shuffled training batches too, given the same generator seed.
    ga, gb = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for (xa, ya, da), (xb, yb, db) in zip(a.batches("train", 16, shuffle=True, generator=ga),
                                          b.batches("train", 16, shuffle=True, generator=gb)):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
        assert torch.equal(ya, yb) and torch.equal(da, db)


def test_contaminated_set_is_a_prefix_of_one_fixed_permutation():
    n = 500
    masks = {rho: art.contaminated_mask(n, rho) for rho in (0.0, 0.25, 0.5, 0.75, 1.0)}
    for rho, m in masks.items():
        np.testing.assert_array_equal(m, protocol_mask(n, rho))
        assert m.sum() == math.floor(rho * n)
    assert (masks[0.25] <= masks[0.5]).all() and (masks[0.5] <= masks[0.75]).all()
    assert masks[1.0].all() and not masks[0.0].any()
    # ⌊ρ·n⌋, not rounding: 0.125·250 = 31.25 → 31; 0.5·7 = 3.5 → 3.
    assert art.contaminated_mask(250, 0.125).sum() == 31
    assert art.contaminated_mask(7, 0.5).sum() == 3
    for bad in (-0.1, 1.01, math.nan):
        with pytest.raises(ReproError, match=r"outside \[0, 1\]"):
            art.contaminated_mask(10, bad)


def _contaminated_pool_indices(w: MiniWorld) -> set[int]:
    out = set()
    for split in ("train", "val"):
        p = w.plans[split]
        out |= set(p.pool_index[p.plan.has_digit].tolist())
    return out


def test_contaminated_set_at_half_is_inside_the_set_at_one():
    half, full = _contaminated_pool_indices(world("smoke", 0.5)), _contaminated_pool_indices(world("smoke", 1.0))
    assert len(half) == 25 and len(full) == 50
    assert half < full
    assert half == set(np.flatnonzero(protocol_mask(50, 0.5)).tolist())


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_same_index_same_digit_and_exemplar_across_rho(split):
    a, b = world("smoke", 0.5).plans[split], world("smoke", 1.0).plans[split]
    np.testing.assert_array_equal(a.pool_index, b.pool_index)
    both = a.plan.has_digit & b.plan.has_digit
    assert both.sum() > 0
    np.testing.assert_array_equal(a.plan.digit[both], b.plan.digit[both])
    np.testing.assert_array_equal(a.plan.exemplar[both], b.plan.exemplar[both])


def test_split_changes_with_the_seed_but_contamination_does_not():
    a, b = world("smoke", 0.5, seed=1), world("smoke", 0.5, seed=2)
    assert not np.array_equal(a.plans["train"].pool_index, b.plans["train"].pool_index)
    for w in (a, b):   # train and val partition the pool
        idx = np.concatenate([w.plans["train"].pool_index, w.plans["val"].pool_index])
        np.testing.assert_array_equal(np.sort(idx), np.arange(50))
    assert _contaminated_pool_indices(a) == _contaminated_pool_indices(b)
    # The test set does not depend on the seed at all.
    for ta, tb in zip(a.tensors("test"), b.tensors("test")):
        torch.testing.assert_close(ta, tb, rtol=0, atol=0)


def test_split_follows_random_split_with_the_seed():
    w = world("smoke", 0.5, seed=3)
    parts = torch.utils.data.random_split(range(50), [0.8, 0.2], generator=torch.Generator().manual_seed(3))
    np.testing.assert_array_equal(w.plans["train"].pool_index, np.sort(parts[0].indices))
    np.testing.assert_array_equal(w.plans["val"].pool_index, np.sort(parts[1].indices))


def test_pool_takes_the_first_images_of_each_class_in_file_order():
    w = world("smoke", 0.0)
    y = load_fashion_mnist()["train_y"].numpy()
    expected = np.sort(np.concatenate([np.flatnonzero(y == c)[:10] for c in (0, 2, 3, 4, 6)]))
    np.testing.assert_array_equal(w.pool_source_index, expected)
    lut = {c: i for i, c in enumerate((0, 2, 3, 4, 6))}
    all_labels = np.concatenate([w.plans["train"].labels, w.plans["val"].labels])
    np.testing.assert_array_equal(np.bincount(all_labels, minlength=5), [10] * 5)
    p = w.plans["train"]
    np.testing.assert_array_equal(p.labels, [lut[c] for c in y[w.pool_source_index[p.pool_index]]])


# ---------------------------------------------------------------------------
# pixels

CORNER_SLICES = {"top-left": (slice(0, 8), slice(0, 8)), "top-right": (slice(0, 8), slice(24, 32)),
                 "bottom-left": (slice(24, 32), slice(0, 8)), "bottom-right": (slice(24, 32), slice(24, 32))}


@pytest.mark.parametrize("corner", list(CORNER_SLICES))
def test_patch_placement_is_exact(corner):
    w = world("smoke", 1.0, artifact_corner=corner)
    clean = world("smoke", 0.0)
    p = w.plans["test"]
    x = w.pixels("test")
    ref = clean.pixels("test")
    assert x.shape == (100, 1, 32, 32)
    bank, _ = digits_bank()
    rows, cols = CORNER_SLICES[corner]
    expected_patch = bank[torch.from_numpy(p.plan.exemplar)]
    torch.testing.assert_close(x[:, 0, rows, cols], expected_patch, rtol=0, atol=0)
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[rows, cols] = True
    torch.testing.assert_close(x[:, 0][:, ~inside], ref[:, 0][:, ~inside], rtol=0, atol=0)
    # The normalised tensors are the same pixels.
    xn, _, d = w.tensors("test")
    torch.testing.assert_close(denormalize(xn, MINI_MEAN, MINI_STD), x, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(d.numpy(), p.plan.digit)


def test_patch_is_pasted_only_on_contaminated_images():
    w, clean = world("smoke", 0.5), world("smoke", 0.0)
    has = torch.from_numpy(w.plans["test"].plan.has_digit)
    x, ref = w.pixels("test"), clean.pixels("test")
    torch.testing.assert_close(x[~has], ref[~has], rtol=0, atol=0)
    assert (x[has] != ref[has]).flatten(1).any(1).all()


def test_augmentation_happens_before_the_paste():
    w = world("smoke", 1.0)
    assert w.cfg.augment
    p = w.plans["train"]
    bank, _ = digits_bank()
    rows = np.arange(16)
    x = w.pixels("train", rows, augment=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x[:, 0, :8, :8], bank[torch.from_numpy(p.plan.exemplar[rows])], rtol=0, atol=0)
    # ...and the rest of the image was augmented.
    plain = w.pixels("train", rows)
    assert not torch.allclose(x[:, :, 8:, :], plain[:, :, 8:, :])
    # The training loader (no shuffle: rows in order) pastes the exact exemplar after cropping.
    xb, yb, db = next(w.batches("train", 16, generator=torch.Generator().manual_seed(1)))
    torch.testing.assert_close(denormalize(xb, MINI_MEAN, MINI_STD)[:, 0, :8, :8],
                               bank[torch.from_numpy(p.plan.exemplar[rows])], rtol=0, atol=1e-6)
    torch.testing.assert_close(db, yb)
    assert not torch.allclose(xb, w.tensors("train")[0][:16])


def test_evaluation_splits_are_not_augmented():
    w = world("smoke", 1.0)
    for split in ("train_eval", "val", "test"):
        x_all, y_all, _ = w.tensors(split)
        xs, ys, _ = zip(*w.batches(split, 7, generator=torch.Generator().manual_seed(0)))
        torch.testing.assert_close(torch.cat(xs), x_all, rtol=0, atol=0)
        assert torch.equal(torch.cat(ys), y_all)


def test_batches_shapes_and_drop_last():
    w = world("smoke", 1.0)
    bs = list(w.batches("train", 16, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True))
    assert len(bs) == 2 == w.num_batches("train", 16, drop_last=True)
    x, y, d = bs[0]
    assert x.shape == (16, 1, 32, 32) and x.dtype == torch.float32
    assert y.dtype == torch.long and d.dtype == torch.long
    assert len(list(w.batches("test", 30))) == 4 == w.num_batches("test", 30)
    with pytest.raises(ReproError, match="unknown split 'holdout'"):
        next(w.batches("holdout", 4))


def test_the_world_interface_stacks_batches_and_keeps_a_cpu_world_on_the_cpu():
    """World's own tensors() (the batches stacked) equal the mini world's cached
    ones; the mini world is in memory and ignores a trainer's device; a world of
    one's own that only implements batches() gets both for free."""
    from reprolib.data import World

    w = world("smoke", 0.5)
    for a, b in zip(World.tensors(w, "val"), w.tensors("val")):
        assert torch.equal(a, b)
    assert w.in_memory and w.device == torch.device("cpu")
    w.device = "cuda"   # what the trainer does; the mini world's batches stay on the CPU
    assert w.device == torch.device("cpu")

    class Mine(World):
        def __init__(self, inner):
            self.cfg, self.plans, self.mean, self.std = inner.cfg, inner.plans, inner.mean, inner.std
            self.inner = inner

        def batches(self, split, batch_size, **kw):
            return self.inner.batches(split, batch_size, **kw)

    mine = Mine(w)
    assert not mine.in_memory
    assert torch.equal(mine.tensors("test")[0], w.tensors("test")[0])
    assert torch.equal(mine.normalized(torch.ones(1)), w.normalized(torch.ones(1)))
    with pytest.raises(ReproError, match="unknown split 'holdout'"):
        mine.check_split("holdout")


# ---------------------------------------------------------------------------
# missing or incomplete data

def test_fashion_mnist_env_pointing_to_an_empty_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("REPROLIB_FASHION_MNIST", str(tmp_path))
    with pytest.raises(ReproError) as e:
        fashion_mnist_folder(download=False)
    msg = str(e.value)
    assert str(tmp_path) in msg
    for name in FASHION_FILES:
        assert name in msg


def test_fashion_mnist_env_with_an_incomplete_folder(tmp_path, monkeypatch):
    for name in FASHION_FILES[:2]:
        write_idx(tmp_path / (name + ".gz"), np.zeros((2, 2), dtype=np.uint8))
    monkeypatch.setenv("REPROLIB_FASHION_MNIST", str(tmp_path))
    with pytest.raises(ReproError) as e:
        fashion_mnist_folder(download=False)
    msg = str(e.value)
    assert FASHION_FILES[2] in msg and FASHION_FILES[3] in msg
    assert FASHION_FILES[0] not in msg


def test_fashion_mnist_env_accepts_a_torchvision_root(tmp_path, monkeypatch):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_FILES:
        write_idx(raw / name, np.zeros((1,), dtype=np.uint8))
    monkeypatch.setenv("REPROLIB_FASHION_MNIST", str(tmp_path))
    assert fashion_mnist_folder(download=False) == raw


def test_missing_fashion_mnist_names_all_three_ways(tmp_path, monkeypatch):
    import reprolib.sources as data_module

    monkeypatch.delenv("REPROLIB_FASHION_MNIST", raising=False)
    monkeypatch.setattr(data_module, "DEBIAN_FASHION", tmp_path / "nowhere")
    monkeypatch.setenv("REPROLIB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ReproError) as e:
        fashion_mnist_folder(download=False)
    msg = str(e.value)
    assert "REPROLIB_FASHION_MNIST" in msg and "dataset-fashion-mnist" in msg and "internet" in msg


def test_mnist_folder_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("REPROLIB_MNIST", raising=False)
    with pytest.raises(ReproError, match="REPROLIB_MNIST"):
        mnist_folder()
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(ReproError) as e:
        mnist_folder(tmp_path)
    assert str(tmp_path) in str(e.value)
    for name in MNIST_FILES:
        assert name in str(e.value)


def test_read_idx_round_trip_and_bad_files(tmp_path):
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a-idx3-ubyte", a)
    write_idx(tmp_path / "a-idx3-ubyte.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte"), a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a-idx3-ubyte.gz"), a)
    raw = (tmp_path / "a-idx3-ubyte").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(ReproError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "text").write_bytes(b"hello world, not idx")
    with pytest.raises(ReproError, match="not an unsigned-byte idx file"):
        read_idx(tmp_path / "text")
    (tmp_path / "tiny").write_bytes(b"\x00")
    with pytest.raises(ReproError, match="too short"):
        read_idx(tmp_path / "tiny")


def test_pool_larger_than_the_class_is_refused():
    cfg = make_config("mini", "smoke", test_per_class=1001)
    with pytest.raises(ReproError, match="only 1000 images, fewer than the 1001"):
        MiniWorld(cfg.data, 1)


def test_mini_world_refuses_a_paper_config():
    with pytest.raises(ReproError, match="MiniWorld got a 'paper' config"):
        MiniWorld(make_config("paper", "smoke").data, 1)

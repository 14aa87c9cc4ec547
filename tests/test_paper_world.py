"""The paper world on tiny stand-ins (conftest ``paper_root``): the same protocol.

ImageNet: 12 train and 4 val random JPEGs per wading-bird wnid; MNIST: 60 random
digits in real idx files. Images are 64 px, the digit 16 px (1/4 of the side,
as 56/224 in the paper).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from reprolib.transforms import denormalize
from reprolib.paper_world import PaperWorld
from reprolib.sources import IMAGENET_MEAN, IMAGENET_STD, IMAGENET_WNIDS
from reprolib.worlds import build_world
from reprolib.errors import ReproError

from conftest import TRAIN_PER_CLASS, VAL_PER_CLASS

POOL, TEST = 5 * TRAIN_PER_CLASS, 5 * VAL_PER_CLASS       # 60, 20
TRAIN, VAL = 48, 12                                      # random_split(0.8, 0.2) of 60


def make_world(paper_cfg, rho, seed=1, **overrides) -> PaperWorld:
    cfg = paper_cfg(contamination_rate=rho, seed=seed, **overrides)
    return build_world(cfg.data, cfg.seed)


def whole(w: PaperWorld, split: str):
    xs, ys, ds = zip(*w.batches(split, 64))
    return torch.cat(xs), torch.cat(ys), torch.cat(ds)


def expected_patch(paper_root, index: int, digit: int) -> torch.Tensor:
    """§1.3 steps 3–4, independently: default_rng(index) picks the MNIST exemplar,
    PIL's bicubic filter resizes it 28 → 16 px."""
    idx = np.flatnonzero(paper_root.mnist_labels == digit)
    ex = int(np.random.default_rng(index).choice(idx))
    img = Image.fromarray(paper_root.mnist_images[ex], mode="L").resize((16, 16), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)


@pytest.mark.parametrize("rho", [0.0, 0.5, 1.0])
def test_counts_per_split(paper_cfg, rho):
    w = make_world(paper_cfg, rho)
    s = w.summary()
    assert (s["train"]["n"], s["val"]["n"], s["test"]["n"]) == (TRAIN, VAL, TEST)
    assert s["train"]["with_digit"] + s["val"]["with_digit"] == math.floor(rho * POOL)
    assert s["train"]["digit_equals_label"] == s["train"]["with_digit"]
    assert s["test"]["with_digit"] == math.floor(rho * TEST)
    if rho == 1.0:
        assert s["train"]["with_digit"] == TRAIN and s["val"]["with_digit"] == VAL
    if rho == 0.0:
        assert all(v["with_digit"] == 0 for v in s.values())
    mask = np.zeros(POOL, dtype=bool)
    mask[np.random.default_rng(1).permutation(POOL)[:math.floor(rho * POOL)]] = True
    assert s["train"]["with_digit"] == int(mask[w.plans["train"].pool_index].sum())


def test_pool_and_test_follow_the_imagefolder_tree(paper_cfg, paper_root):
    w = make_world(paper_cfg, 0.0)
    assert w.class_names == [IMAGENET_WNIDS[c] for c in (129, 130, 134, 135, 138)]
    assert len(w.files["pool"]) == POOL and len(w.files["test"]) == TEST
    # Label = position of the wnid in the subtask; files sorted within a class.
    for split, files in (("train", w.files["pool"]), ("test", w.files["test"])):
        p = w.plans[split]
        for r, i in enumerate(p.pool_index):
            assert files[i].parent.name == w.class_names[p.labels[r]]
    np.testing.assert_array_equal(np.bincount(w.plans["test"].labels), [VAL_PER_CLASS] * 5)


def test_loaders_yield_images_labels_and_digits(paper_cfg):
    w = make_world(paper_cfg, 1.0)
    x, y, d = next(iter(w.batches("train", 4, shuffle=True, generator=torch.Generator().manual_seed(0),
                                  drop_last=True)))
    assert x.shape == (4, 3, 64, 64) and x.dtype == torch.float32
    assert y.shape == (4,) and y.dtype == torch.long and d.dtype == torch.long
    assert torch.equal(d, y)                     # train digits are correlated
    assert w.num_batches("train", 4, drop_last=True) == TRAIN // 4
    assert len(list(w.batches("val", 5))) == math.ceil(VAL / 5)
    x, y, d = whole(w, "test")
    assert x.shape == (TEST, 3, 64, 64)
    assert set(d.tolist()) <= set(range(5))
    assert w.input_shape == (3, 64, 64)


def test_random_digits_and_exemplars_follow_the_protocol(paper_cfg, paper_root):
    w = make_world(paper_cfg, 1.0)
    for split in ("val", "test"):
        p = w.plans[split]
        expected = [int(np.random.default_rng(int(i)).permutation(5)[0]) for i in p.pool_index]
        np.testing.assert_array_equal(p.plan.digit, expected)
    p = w.plans["val_correlated"]
    np.testing.assert_array_equal(p.plan.digit, p.labels)


def test_patch_pixels_after_denormalisation(paper_cfg, paper_root):
    w, clean = make_world(paper_cfg, 1.0), make_world(paper_cfg, 0.0)
    x, y, d = whole(w, "test")
    ref, _, d0 = whole(clean, "test")
    assert (d0 == -1).all()
    px, pref = denormalize(x, IMAGENET_MEAN, IMAGENET_STD), denormalize(ref, IMAGENET_MEAN, IMAGENET_STD)
    p = w.plans["test"]
    for r in range(TEST):
        patch = expected_patch(paper_root, int(p.pool_index[r]), int(d[r]))
        for c in range(3):   # grey value copied to R, G and B; opaque
            torch.testing.assert_close(px[r, c, :16, :16], patch, rtol=0, atol=1e-5)
    inside = torch.zeros(64, 64, dtype=torch.bool)
    inside[:16, :16] = True
    torch.testing.assert_close(px[:, :, ~inside], pref[:, :, ~inside], rtol=0, atol=1e-5)
    # The image is 8-bit quantised (§1.3 step 2): every pixel is k/255.
    k = px * 255
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-3)


def test_bottom_right_corner(paper_cfg, paper_root):
    w = make_world(paper_cfg, 1.0, artifact_corner="bottom-right")
    x, _, d = whole(w, "test")
    px = denormalize(x, IMAGENET_MEAN, IMAGENET_STD)
    p = w.plans["test"]
    patch = expected_patch(paper_root, int(p.pool_index[0]), int(d[0]))
    torch.testing.assert_close(px[0, 1, 48:, 48:], patch, rtol=0, atol=1e-5)


def test_train_patch_is_exact_after_augmentation(paper_cfg, paper_root):
    w = make_world(paper_cfg, 1.0)
    assert w.cfg.augment
    p = w.plans["train"]
    torch.manual_seed(0)
    x, y, d = next(iter(w.batches("train", 8)))      # no shuffle: rows 0..7
    px = denormalize(x, IMAGENET_MEAN, IMAGENET_STD)
    for r in range(8):
        patch = expected_patch(paper_root, int(p.pool_index[r]), int(y[r]))
        torch.testing.assert_close(px[r, 0, :16, :16], patch, rtol=0, atol=1e-5)
    x_eval, _, _ = next(iter(w.batches("train_eval", 8)))
    assert not torch.allclose(x[:, :, 16:], x_eval[:, :, 16:])   # train is augmented


def test_two_worlds_are_identical_and_seed_moves_only_the_split(paper_cfg):
    a, b = make_world(paper_cfg, 0.5), make_world(paper_cfg, 0.5)
    for split in ("train_eval", "val", "val_correlated", "test"):
        for ta, tb in zip(whole(a, split), whole(b, split)):
            torch.testing.assert_close(ta, tb, rtol=0, atol=0)
    c = make_world(paper_cfg, 0.5, seed=2)
    assert not np.array_equal(a.plans["train"].pool_index, c.plans["train"].pool_index)

    def contaminated(w):
        return {int(i) for s in ("train", "val") for i in w.plans[s].pool_index[w.plans[s].plan.has_digit]}
    assert contaminated(a) == contaminated(c) and len(contaminated(a)) == POOL // 2
    torch.testing.assert_close(whole(a, "test")[0], whole(c, "test")[0], rtol=0, atol=0)


def test_same_index_same_digit_across_rho(paper_cfg):
    a, b = make_world(paper_cfg, 0.5), make_world(paper_cfg, 1.0)
    for split in ("val", "test"):
        pa, pb = a.plans[split].plan, b.plans[split].plan
        both = pa.has_digit & pb.has_digit
        assert both.any()
        np.testing.assert_array_equal(pa.digit[both], pb.digit[both])
        np.testing.assert_array_equal(pa.exemplar[both], pb.exemplar[both])


# ---------------------------------------------------------------------------
# missing or incomplete data

def test_paper_world_without_imagenet(paper_cfg, monkeypatch):
    cfg = paper_cfg()
    monkeypatch.delenv("REPROLIB_IMAGENET")
    with pytest.raises(ReproError, match="set REPROLIB_IMAGENET to a folder with train/<wnid>/ and val/<wnid>/"):
        PaperWorld(cfg.data, 1)


def test_paper_world_with_an_incomplete_tree(paper_cfg, monkeypatch, tmp_path):
    cfg = paper_cfg()
    (tmp_path / "train").mkdir()
    monkeypatch.setenv("REPROLIB_IMAGENET", str(tmp_path))
    with pytest.raises(ReproError, match="must contain train/ and val/"):
        PaperWorld(cfg.data, 1)
    (tmp_path / "val").mkdir()
    with pytest.raises(ReproError, match=r"no images in .*train/n02006656"):
        PaperWorld(cfg.data, 1)


def test_paper_world_without_mnist(paper_cfg, monkeypatch, tmp_path):
    cfg = paper_cfg()
    monkeypatch.delenv("REPROLIB_MNIST")
    with pytest.raises(ReproError, match="MNIST not configured: set REPROLIB_MNIST"):
        PaperWorld(cfg.data, 1)
    monkeypatch.setenv("REPROLIB_MNIST", str(tmp_path))
    with pytest.raises(ReproError, match="train-images-idx3-ubyte, train-labels-idx1-ubyte"):
        PaperWorld(cfg.data, 1)


def test_unknown_class_needs_the_full_tree(paper_cfg):
    cfg = paper_cfg(subtask_classes=(129, 130, 7))
    with pytest.raises(ReproError, match="no wnid known for ImageNet class 7"):
        PaperWorld(cfg.data, 1)

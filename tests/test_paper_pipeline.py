"""The paper world's input pipeline (issue 12): decode cache, loaders, per-batch paste.

Reference throughout: every image decoded from its file each time, transformed
with PIL, quantised and pasted per image with the protocol's own formulas
(``floor(x·255 + 1e-4)/255``, :func:`reprolib.artifacts.paste` on one image),
normalised per image. The pipeline must give the same tensors bit for bit.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from reprolib import artifacts as art
from reprolib.transforms import normalize
from reprolib.paper_world import (PaperWorld, crop_box, crop_rng, decode_cache, eval_crop, loader_workers,
                                  open_rgb, train_crop)
from reprolib.sources import IMAGENET_MEAN, IMAGENET_STD
from reprolib.worlds import build_world
from reprolib.errors import ReproError
from reprolib.io import cache_dir

EVAL_SPLITS = ("train_eval", "val", "val_correlated", "test")


def make_world(paper_cfg, rho=0.5, seed=1, workers=0, cache=True, **overrides) -> PaperWorld:
    cfg = paper_cfg(contamination_rate=rho, seed=seed, **overrides)
    return build_world(cfg.data, cfg.seed, num_workers=workers, cache=cache, device="cpu")


def whole(w: PaperWorld, split: str, bs: int = 7, **kw):
    xs, ys, ds = zip(*w.batches(split, bs, **kw))
    return torch.cat(xs), torch.cat(ys), torch.cat(ds)


def reference_image(w: PaperWorld, split: str, r: int, epoch_seed: int | None = None) -> torch.Tensor:
    """Row ``r`` of ``split`` the slow way: decode the file, transform, quantise,
    paste, normalise, all for this one image."""
    p = w.plans[split]
    i = int(p.pool_index[r])
    path = w.files["test" if split == "test" else "pool"][i]
    with Image.open(path) as img:
        img = img.convert("RGB")
    if epoch_seed is None:
        arr = eval_crop(img, w.cfg.image_size)
    else:
        arr = train_crop(img, w.cfg.image_size, tuple(w.cfg.crop_scale), crop_rng(epoch_seed, i))
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div(255)
    x = torch.floor(x * 255 + 1e-4).clamp(0, 255) / 255          # §1.3 step 2, per image
    x = art.paste(x.unsqueeze(0), p.plan.patches(w.bank, [r]), p.plan.has_digit[[r]],
                  w.cfg.artifact_corner)
    return normalize(x, IMAGENET_MEAN, IMAGENET_STD)[0]


@pytest.mark.parametrize("corner", ["top-left", "bottom-right"])
def test_eval_batches_equal_the_per_image_reference_bitwise(paper_cfg, corner):
    w = make_world(paper_cfg, rho=0.5, artifact_corner=corner)
    for split in EVAL_SPLITS:
        x, y, d = whole(w, split)
        assert x.is_contiguous(memory_format=torch.channels_last)
        p = w.plans[split]
        assert p.plan.has_digit.any() and not p.plan.has_digit.all()
        ref = torch.stack([reference_image(w, split, r) for r in range(len(p.labels))])
        assert torch.equal(x, ref), split
        assert torch.equal(y, torch.from_numpy(p.labels)) and torch.equal(d, torch.from_numpy(p.plan.digit))


def test_the_decode_cache_changes_nothing(paper_cfg):
    cached, plain = make_world(paper_cfg), make_world(paper_cfg, cache=False)
    for split in EVAL_SPLITS:
        for a, b in zip(whole(cached, split), whole(plain, split)):
            assert torch.equal(a, b), split
    assert cached._caches and all(c is not None for c in cached._caches.values())
    assert not plain._caches
    # Training crops: the same generator gives the same crops from the cache as from the files.
    for _ in range(2):
        xa = whole(cached, "train", 5, shuffle=True, generator=torch.Generator().manual_seed(3), drop_last=True)
        xb = whole(plain, "train", 5, shuffle=True, generator=torch.Generator().manual_seed(3), drop_last=True)
        for a, b in zip(xa, xb):
            assert torch.equal(a, b)
    assert cached._caches[("pool", True)] is not None


def test_train_crops_equal_the_reference_and_move_with_the_generator(paper_cfg):
    w = make_world(paper_cfg, rho=1.0)
    g = torch.Generator().manual_seed(5)
    g2 = torch.Generator().manual_seed(5)       # the same draws: the order, then the epoch's seed
    order = torch.randperm(48, generator=g2).numpy()
    seed = int(torch.randint(0, 2**62, (1,), generator=g2))
    x, y, d = next(iter(w.batches("train", 6, shuffle=True, generator=g, drop_last=True)))
    for k, r in enumerate(order[:6]):
        assert torch.equal(x[k], reference_image(w, "train", int(r), epoch_seed=seed))
    assert torch.equal(d, y)
    # Two epochs from one generator differ; the crop is not the eval transform.
    e1 = whole(w, "train", 8, shuffle=True, generator=torch.Generator().manual_seed(1))[0]
    gen = torch.Generator().manual_seed(1)
    a = whole(w, "train", 8, shuffle=True, generator=gen)[0]
    b = whole(w, "train", 8, shuffle=True, generator=gen)[0]
    assert torch.equal(e1, a) and not torch.equal(a, b)


def test_workers_do_not_change_the_crops_and_loaders_persist(paper_cfg):
    w0, w1 = make_world(paper_cfg, workers=0), make_world(paper_cfg, workers=1)
    for split in ("train", "test"):
        for a, b in zip(whole(w0, split, 8, shuffle=True, generator=torch.Generator().manual_seed(2)),
                        whole(w1, split, 8, shuffle=True, generator=torch.Generator().manual_seed(2))):
            assert torch.equal(a, b)
    loaders = dict(w1._loaders)
    assert len(loaders) == 1                                  # train; eval reads the cache directly
    (loader,) = loaders.values()
    assert loader.persistent_workers and loader.num_workers == 1
    # An abandoned pass, then full passes with another batch size: the same loader.
    next(iter(w1.batches("train", 4, shuffle=True)))
    x = whole(w1, "train", 16, drop_last=True)[0]
    assert x.shape == (48, 3, 64, 64)
    assert w1._loaders == loaders
    # Two passes at once: the second gets a one-off loader and the same images.
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    outer = w1.batches("train", 8, shuffle=True, generator=g1)
    first = next(outer)
    inner = whole(w1, "train", 8, shuffle=True, generator=g2)[0]
    assert torch.equal(first[0], inner[:8])
    w1.close()


def test_batched_paste_equals_per_image_paste(paper_cfg):
    w = make_world(paper_cfg, rho=1.0)
    rows = np.arange(len(w.plans["test"].labels))
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (len(rows), 64, 64, 3), dtype=torch.uint8, generator=g)
    x = w.finish("test", rows, images, torch.device("cpu"))
    p = w.plans["test"].plan
    for r in rows:
        one = images[r].permute(2, 0, 1).float().div(255)
        one = torch.floor(one * 255 + 1e-4).clamp(0, 255) / 255
        one = art.paste(one.unsqueeze(0), p.patches(w.bank, [r]), p.has_digit[[r]], w.cfg.artifact_corner)
        assert torch.equal(x[r], normalize(one, IMAGENET_MEAN, IMAGENET_STD)[0])
    clean = w.finish("test", rows, images, torch.device("cpu"), with_digit=False, normalise=False)
    assert torch.equal(clean, images.permute(0, 3, 1, 2).float() / 255)


def test_pixels_are_the_batches_before_normalisation(paper_cfg):
    w = make_world(paper_cfg, rho=1.0)
    x = w.pixels("val", np.arange(5))
    b = next(iter(w.batches("val", 5)))[0]
    assert torch.equal(normalize(x, IMAGENET_MEAN, IMAGENET_STD), b)
    plain = w.pixels("val", np.arange(5), with_digit=False)
    assert not torch.equal(plain[:, :, :16, :16], x[:, :, :16, :16]) and torch.equal(plain[:, :, 16:], x[:, :, 16:])
    aug = w.pixels("train", np.arange(3), augment=True, generator=torch.Generator().manual_seed(0))
    assert aug.shape == (3, 3, 64, 64)


def test_the_cache_is_rebuilt_when_a_file_changes(paper_cfg, paper_root, monkeypatch, tmp_path):
    root = tmp_path / "imagenet"
    shutil.copytree(paper_root.imagenet, root)
    monkeypatch.setenv("REPROLIB_IMAGENET", str(root))
    folder = cache_dir("decoded")
    before = set(folder.iterdir())
    w = make_world(paper_cfg)
    x_old = whole(w, "test")[0]
    made = set(folder.iterdir()) - before
    assert len(made) == 2                                    # the test set's eval cache + its index
    # Rewrite the first test image with other pixels.
    p = w.plans["test"]
    victim = w.files["test"][int(p.pool_index[0])]
    st = victim.stat()
    pixels = np.full((40, 48, 3), 200, dtype=np.uint8)
    Image.fromarray(pixels).save(victim, quality=90)
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    w2 = make_world(paper_cfg)
    x_new = whole(w2, "test")[0]
    remade = set(folder.iterdir()) - before
    assert len(remade) == 2 and remade.isdisjoint(made)      # new files; the stale cache is gone
    assert not torch.equal(x_new[0], x_old[0]) and torch.equal(x_new[1:], x_old[1:])
    assert torch.equal(x_new, whole(make_world(paper_cfg, cache=False), "test")[0])
    # A damaged cache file is rebuilt, not trusted.
    for f in remade:
        if not f.name.endswith(".index.npy"):
            f.write_bytes(b"garbage")
    assert torch.equal(whole(make_world(paper_cfg), "test")[0], x_new)


def test_the_size_cap_falls_back_to_decoding(paper_cfg, monkeypatch):
    monkeypatch.setenv("REPROLIB_DECODE_CACHE_GB", "1e-9")
    w = make_world(paper_cfg)
    x = whole(w, "val")[0]
    assert all(c is None for c in w._caches.values())
    monkeypatch.setenv("REPROLIB_DECODE_CACHE_GB", "0")
    assert decode_cache(w.files["test"], 64) is None
    monkeypatch.delenv("REPROLIB_DECODE_CACHE_GB")
    assert torch.equal(x, whole(make_world(paper_cfg), "val")[0])
    monkeypatch.setenv("REPROLIB_DECODE_CACHE_GB", "lots")
    with pytest.raises(ReproError, match="REPROLIB_DECODE_CACHE_GB='lots' is not a size in GB"):
        whole(make_world(paper_cfg), "val")


def test_full_resolution_cache_holds_the_decoded_pixels(paper_cfg):
    w = make_world(paper_cfg)
    files = w.files["pool"][:5]
    c = decode_cache(files, None)
    for i, f in enumerate(files):
        assert np.array_equal(c.get(i), np.asarray(open_rgb(f)))
    assert c.get(0).shape == (40, 48, 3)


def test_crop_box_stays_inside_and_follows_scale():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = crop_box(375, 500, (0.08, 1.0), rng)
        assert 0 <= top and top + h <= 375 and 0 <= left and left + w <= 500
        assert 0.08 * 0.9 <= h * w / (375 * 500) <= 1.0 + 1e-9
    # Impossible ratios fall back to the centre crop with the ratio clamped.
    assert crop_box(10, 1000, (0.99, 1.0), np.random.default_rng(0)) == (0, 493, 10, 13)


def test_workers_and_device_options(paper_cfg, monkeypatch):
    monkeypatch.setenv("REPROLIB_LOADER_WORKERS", "3")
    assert loader_workers() == 3 and loader_workers(0) == 0
    monkeypatch.setenv("REPROLIB_LOADER_WORKERS", "many")
    with pytest.raises(ReproError, match="REPROLIB_LOADER_WORKERS='many' is not an integer"):
        loader_workers()
    monkeypatch.delenv("REPROLIB_LOADER_WORKERS")
    assert loader_workers() == max(len(os.sched_getaffinity(0)) - 1, 0)
    with pytest.raises(ReproError, match="give 0 or more"):
        loader_workers(-1)
    cfg = paper_cfg()
    assert PaperWorld(cfg.data, 1, num_workers=0, device="cuda:1").device == torch.device("cuda", 1)
    assert PaperWorld(cfg.data, 1, num_workers=0, device="cpu").device == torch.device("cpu")
    with pytest.raises(ReproError, match="unknown device 'gpu0'; choose cpu, cuda or cuda:N"):
        PaperWorld(cfg.data, 1, num_workers=0, device="gpu0")
    with pytest.raises(ReproError, match="unknown device 'meta'"):
        PaperWorld(cfg.data, 1, num_workers=0, device="meta")
    w = PaperWorld(cfg.data, 1, num_workers=0)              # unset: follows the process
    if not torch.cuda.is_initialized():
        assert w.device == torch.device("cpu")
    w.device = "cuda:2"
    assert w.device == torch.device("cuda", 2)
    w.device = None
    x = next(iter(w.batches("test", 4)))[0]
    assert x.device == w.device

"""The paper world: ImageNet's wading birds from an ``ImageFolder``-style tree
(``<root>/train/<wnid>/``, ``<root>/val/<wnid>/``, which is also what
torchvision's ``ImageNet`` prepares) with MNIST digits. Every image is decoded
once into a memory-mapped decode cache, loader workers are persistent, and the
digit paste and normalisation run per batch on the device (see below).

The splits and the artifact protocol are those of :mod:`reprolib.data`; the
world is built from a config by :func:`reprolib.worlds.build_world`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from . import artifacts as art
from .config import DataConfig
from .data import World, plan_splits
from .errors import ReproError
from .io import atomic_path, cache_dir, digest
from .sources import IMAGENET_MEAN, IMAGENET_STD, IMAGENET_WNIDS, artifact_bank

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
    slot = ("full" if size is None else f"eval{size}") + "-" + digest(paths, default=str)
    key = digest(ident, default=str)
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
        self.check_split(split)
        augment = self._augments(split) if augment is None else augment
        pool = "test" if split == "test" else "pool"
        return _PaperSplit(self.files[pool], self.cfg.image_size, augment, tuple(self.cfg.crop_scale),
                           full=self._cache(pool, True) if augment else None,
                           evaluated=None if augment else self._cache(pool, False))

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
        self.check_split(split)
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

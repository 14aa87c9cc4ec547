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
import hashlib
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from .errors import ReproError


def cache_root() -> Path:
    root = os.environ.get("REPROLIB_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "reprolib")
    return Path(root)


def cache_dir(*parts: str) -> Path:
    path = cache_root().joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def current_umask() -> int:
    """The process's umask (from /proc on Linux: reading it with ``os.umask``
    would change it for a moment, racing with other threads)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_mode(path: str | os.PathLike) -> None:
    # mkstemp creates files with mode 0600 whatever the umask; a file published
    # for collaborators gets what open() would have given it.
    os.chmod(path, 0o666 & ~current_umask())


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike):
    """Yield a temporary path beside ``final``; rename it over ``final`` on success.

    The temporary file is ``.<name>.<random>.tmp`` in the same folder (see
    :func:`remove_stale_temps`); the published file gets the user's umask.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + final.name + ".", suffix=".tmp", dir=final.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _publish_mode(tmp)
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the ``.*.tmp`` files that :func:`atomic_path` leaves when a process is
    killed while publishing; return what was removed. Call it only while no other
    process writes into ``folder`` (a sweep does it under its folder lock)."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.glob(".*.tmp"):
        if p.is_file():
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
    return removed


def strict(obj: Any) -> Any:
    """``obj`` with every NaN and infinity replaced by ``None`` (JSON ``null``),
    numpy scalars and arrays made plain, tuples made lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, (bool, int, str)) or obj is None:
        return obj
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return strict(obj.item())
        if isinstance(obj, np.ndarray):
            return strict(obj.tolist())
    except ImportError:  # pragma: no cover
        pass
    return strict(_json_default(obj))


def dumps(obj: Any, indent: int | None = 2) -> str:
    """Strict JSON text: NaN and infinities are written as ``null``, never bare."""
    return json.dumps(strict(obj), indent=indent, sort_keys=True, allow_nan=False)


def print_json(obj: Any, stream=None) -> None:
    """One strict JSON object on stdout (the CLI's result)."""
    stream = stream or sys.stdout
    stream.write(dumps(obj) + "\n")
    stream.flush()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    text = dumps(obj) + "\n"
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write(text)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text)


def write_texts(files: dict[str | os.PathLike, str]) -> None:
    """Publish several files together: all are written to temporary files first
    and renamed only when every one is complete, so an error while preparing them
    leaves the old set. (A kill between two renames, a few microseconds, can still
    split them; :func:`remove_stale_temps` cleans what it leaves.)"""
    stack = contextlib.ExitStack()
    with stack:
        for path, text in files.items():
            tmp = stack.enter_context(atomic_path(path))
            Path(tmp).write_text(text)


def digest(obj: Any, *, length: int | None = 16, separators: tuple[str, str] | None = None,
           default: Any = None) -> str:
    """The hex sha256 of ``obj``, cut to its first ``length`` characters (``None``:
    all 64): the one helper behind every cache key and content hash.

    ``obj`` is hashed as its bytes: ``bytes`` (or ``bytearray``, ``memoryview``) as
    they are, ``str`` UTF-8 encoded, an iterator (a generator, ``iter(...)``) as the
    concatenation of the byte chunks it yields, and anything else as its JSON with
    sorted keys (``json.dumps(obj, sort_keys=True, separators=..., default=...)``:
    ``default=str`` for values JSON does not know, such as paths).
    """
    h = hashlib.sha256()
    if isinstance(obj, (bytes, bytearray, memoryview)):
        h.update(obj)
    elif isinstance(obj, str):
        h.update(obj.encode())
    elif isinstance(obj, Iterator):
        for chunk in obj:
            h.update(chunk)
    else:
        h.update(json.dumps(obj, sort_keys=True, separators=separators, default=default).encode())
    text = h.hexdigest()
    return text if length is None else text[:length]


def sha256_file(path: str | os.PathLike) -> str:
    """The full hex sha256 of a file's content, read in 1 MiB chunks."""
    with open(path, "rb") as fh:
        return digest(iter(lambda: fh.read(1 << 20), b""), length=None)


def torch_save(obj: Any, path: str | os.PathLike) -> str:
    """``torch.save`` atomically; return the file's sha256 (record it in the
    run's metrics.json as ``student_sha256``: :func:`verify_checkpoint`).

    Serialised in memory first: a file target would put the temporary file's
    random name into the archive, so equal tensors would give unequal files.
    """
    import io as _io

    import torch

    buf = _io.BytesIO()
    torch.save(obj, buf)
    data = buf.getvalue()
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)
    return digest(data, length=None)


def torch_load(path: str | os.PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)``: tensors, dicts, lists and numbers only,
    never code. Anything else (a pickled module, a truncated file, not a torch
    file at all) is a :class:`ReproError` naming the file."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ReproError(f"{what} {path} does not exist (or is not a file)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every failure is the file's fault
        text = str(exc)
        first = (text.strip().splitlines() or [type(exc).__name__])[0]
        if "Unsupported global" in text:
            why = ("it holds pickled Python objects (code), which are never loaded; "
                   "save a state dict (torch.save(model.state_dict(), path))")
        elif "Weights only load failed" in text or "WeightsUnpickler" in text:
            why = ("it is not a weights-only torch file (a raw pickle or another format); pickled "
                   "Python objects are never loaded: save a state dict with torch.save")
        else:
            why = f"it is truncated or not a torch file ({first[:160]})"
        raise ReproError(f"{what} {path} cannot be loaded: {why}") from None


def load_state_dict_file(path: str | os.PathLike, what: str, required: tuple[str, ...] = ()) -> dict:
    """A checkpoint that must be a dict (a state dict, or a dict holding
    ``required`` keys), loaded with ``weights_only=True``."""
    obj = torch_load(path, what)
    if not isinstance(obj, dict):
        raise ReproError(f"{what} {path} holds a {type(obj).__name__}, not a dict of tensors; "
                         "save a state dict (torch.save(model.state_dict(), path))")
    missing = [k for k in required if k not in obj]
    if missing:
        raise ReproError(f"{what} {path} lacks {', '.join(missing)}: it is not a reprolib checkpoint; "
                         "rerun the run that made it")
    return obj


def check_threads(threads: Any, what: str = "threads") -> None:
    """``None`` (torch's default) or a positive integer."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ReproError(f"{what}={threads!r} must be a positive integer (or left out)")


def verify_checkpoint(path: str | os.PathLike, sha256: str | None = None) -> str | None:
    """``None`` if ``path`` is a complete checkpoint, else why not (a short phrase).

    With ``sha256`` (recorded when it was saved) the file's hash must match;
    without, the file must load with ``weights_only=True``.
    """
    path = Path(path)
    if not path.is_file():
        return f"{path.name} is missing"
    if path.stat().st_size == 0:
        return f"{path.name} is empty"
    if sha256 is not None:
        try:
            actual = sha256_file(path)
        except OSError as exc:
            return f"{path.name} cannot be read ({exc.strerror})"
        return None if actual == sha256 else f"{path.name} does not match its recorded sha256"
    try:
        torch_load(path, path.name)
    except ReproError:
        return f"{path.name} does not load (truncated or not a checkpoint)"
    return None


def check_output_dir(path: str | os.PathLike, what: str = "--out") -> Path:
    """Fail early: ``path`` must be a writable folder or creatable as one.

    Nothing is created: the nearest existing ancestor must be a folder we can
    write into (probed with a temporary file that is removed at once).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ReproError(f"{what} {path} exists and is not a folder; give a folder path")
    probe_dir = path
    while not probe_dir.exists():
        if probe_dir.is_symlink():
            raise ReproError(f"{what} {path}: {probe_dir} is a broken symbolic link")
        parent = probe_dir.parent
        if parent == probe_dir:
            break
        probe_dir = parent
    if not probe_dir.is_dir():
        raise ReproError(f"{what} {path} cannot be created: {probe_dir} is a file, not a folder; "
                         "give a folder path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".reprolib-probe-", suffix=".tmp", dir=probe_dir)
    except OSError as exc:
        raise ReproError(f"{what} {path} is not writable ({exc.strerror} in {probe_dir}); "
                         "choose a folder you can write to") from None
    os.close(fd)
    os.unlink(probe)
    return path


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

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


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


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
    return hashlib.sha256(data).hexdigest()


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


# What each key of a finished run's metrics.json must hold. Split accuracies are
# null where the split is empty (rho = 0 has no digit-bearing image).
_NUMBER, _OPTIONAL_NUMBER, _INT = "a number", "a number or null", "an integer"
METRIC_TYPES = {
    "test_accuracy": _NUMBER, "val_accuracy": _NUMBER, "best_epoch": _INT,
    "test_accuracy_with_digit": _OPTIONAL_NUMBER, "test_accuracy_digit_differs": _OPTIONAL_NUMBER,
    "predicts_digit": _OPTIONAL_NUMBER, "teacher_test_accuracy": _OPTIONAL_NUMBER,
    "nonoracle_val_accuracy": _OPTIONAL_NUMBER, "nonoracle_test_accuracy": _OPTIONAL_NUMBER,
    "seconds": _NUMBER, "curves": "an object", "config": "an object",
    "config_key": "a string", "code_version": "a string", "student_sha256": "a string",
}


def _has_type(value: Any, kind: str) -> bool:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {_NUMBER: number, _OPTIONAL_NUMBER: number or value is None,
            _INT: isinstance(value, int) and not isinstance(value, bool),
            "an object": isinstance(value, dict), "a string": isinstance(value, str)}[kind]


def check_run_files(run_dir: str | os.PathLike, metrics: Any, required: tuple[str, ...],
                    checkpoint: str = "student.pt") -> str | None:
    """``None`` if ``metrics`` (a parsed metrics.json) has every ``required`` key
    with the right type and the run's checkpoint is complete, else why not.

    The checkpoint must match ``student_sha256`` when metrics.json records it,
    else load with ``weights_only=True``.
    """
    if not isinstance(metrics, dict):
        return "metrics.json is not a JSON object"
    missing = [k for k in required if k not in metrics]
    if missing:
        return f"metrics.json lacks {', '.join(missing)}"
    for key in list(required) + ["student_sha256"]:
        kind = METRIC_TYPES.get(key)
        if kind and key in metrics and not _has_type(metrics[key], kind):
            return f"metrics.json has {key}={metrics[key]!r}, not {kind}"
    return verify_checkpoint(Path(run_dir) / checkpoint, metrics.get("student_sha256"))


def numerics(threads: int | None, device: str, precision: str | None = None) -> dict[str, Any]:
    """What changes a run's numbers besides its config: the torch thread count,
    the device and the precision (given, e.g. a trainer's ``precision`` option;
    else the teacher's: bfloat16 on CUDA)."""
    device = str(device)
    if precision is None:
        precision = "bf16-teacher" if device.startswith("cuda") else "float32"
    return {"threads": threads, "device": device, "precision": precision}


def check_numerics(run_dirs, threads: int | None, device: str, allow_mixed: bool = False,
                   precision: str | None = None) -> None:
    """Refuse to reuse finished runs whose numbers came from another thread count,
    device or precision than the runs about to be computed (their metrics.json
    records ``threads``, ``device`` and, where the trainer has the option,
    ``precision``), unless ``allow_mixed``."""
    want = numerics(threads, device, precision)
    seen: dict[tuple, int] = {}
    for run_dir in run_dirs:
        try:
            m = read_json(Path(run_dir) / "metrics.json")
        except (OSError, ValueError):
            continue
        if not isinstance(m, dict) or "threads" not in m or "device" not in m:
            continue
        got = numerics(m.get("threads"), m.get("device"),
                       m.get("precision", "fp32") if precision is not None else None)
        if got != want:
            k = (got["threads"], got["device"], got["precision"])
            seen[k] = seen.get(k, 0) + 1
    if not seen or allow_mixed:
        return
    found = "; ".join(f"{n} with threads={t} on {d} ({p})" for (t, d, p), n in sorted(
        seen.items(), key=str))
    raise ReproError(
        f"finished runs in this folder were computed with other numerics than this sweep "
        f"(threads={want['threads']} on {want['device']}, {want['precision']}): {found}. The thread "
        "count, device and precision change a run's numbers; rerun with the same --threads and "
        "--device, or pass --allow-mixed to mix them knowingly")


RESULTS_COLUMNS_NEEDED = ("method", "rho", "seed", "lambda_layer", "val_accuracy", "test_accuracy",
                          "run_dir")


def check_results_table(loader, sweep_dir: str | os.PathLike):
    """``loader(sweep_dir)`` (a sweep's results.csv as a DataFrame), or a
    :class:`ReproError` naming the file when it is empty, unparsable or not a
    reprolib results table."""
    path = Path(sweep_dir) / "results.csv"
    try:
        table = loader(sweep_dir)
    except ReproError:
        raise
    except (ValueError, UnicodeDecodeError, OSError) as exc:   # pandas' EmptyDataError, ParserError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ReproError(f"{path} is not a readable results table ({first}); rerun "
                         f"`python -m reprolib sweep --out {sweep_dir}` to rewrite it") from None
    missing = [c for c in RESULTS_COLUMNS_NEEDED if c not in table.columns]
    if missing:
        raise ReproError(f"{path} is not a reprolib results table (no column(s) {missing}); rerun "
                         f"`python -m reprolib sweep --out {sweep_dir}` to rewrite it")
    if table.empty:
        raise ReproError(f"{path} lists no finished run; run the sweep first")
    return table


def check_run_folders(run_dirs, sweep_dir: str | os.PathLike) -> None:
    """Every folder holds a finished run (``sweep.check_run``), else a
    :class:`ReproError` that names the folder and the problem."""
    from .sweep import check_run

    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        why = check_run(run_dir, run_dir.name)
        if why is not None:
            raise ReproError(f"run {run_dir} is not a finished run: {why}; rerun "
                             f"`python -m reprolib sweep --out {sweep_dir}` to redo it")
        # Loaded once here (weights_only), so that a bad checkpoint stops us before any work.
        load_state_dict_file(run_dir / "student.pt", "student checkpoint", ("student", "config"))


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

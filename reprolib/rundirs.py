"""The contract of a finished run folder, defined once: its files, the types of its
metrics, the numerics it was computed with, and the check of a sweep's folders
before any work (:func:`check_run_folders`, :func:`check_numerics`).

A run folder holds ``student.pt`` and then, written last and atomically,
``metrics.json``. It is *finished* when ``metrics.json`` parses, has every key
of :data:`REQUIRED_METRICS`, names the folder's config key, and ``student.pt``
matches the sha256 recorded in metrics.json (``student_sha256``) or, without one,
loads with ``weights_only=True``. The trainer (:mod:`reprolib.cohort`) writes exactly that; the sweep reads it. No torch here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from . import io
from .devices import Execution, numerics_record
from .errors import ReproError
from .io import read_json

# What a finished run's metrics.json must hold (the trainer's contract).
REQUIRED_METRICS = (
    "test_accuracy", "val_accuracy", "best_epoch",
    "test_accuracy_with_digit", "test_accuracy_digit_differs", "predicts_digit",
    "teacher_test_accuracy", "nonoracle_val_accuracy", "nonoracle_test_accuracy",
    "curves", "seconds", "config", "config_key", "code_version",
)
STUDENT_FILE = "student.pt"
METRICS_FILE = "metrics.json"


def run_dir_for(out_dir: str | os.PathLike, cfg) -> Path:
    """Where a sweep keeps the run of ``cfg``: ``out_dir/runs/<cfg.key()>``."""
    return Path(out_dir) / "runs" / cfg.key()


def check_run(run_dir: str | os.PathLike, key: str | None = None) -> str | None:
    """``None`` if the folder holds a finished run, else why not (a short phrase).

    ``key`` defaults to the folder's name; the metrics must name the same key.
    """
    run_dir = Path(run_dir)
    key = key or run_dir.name
    metrics_path = run_dir / METRICS_FILE
    if not run_dir.is_dir():
        return "the folder is missing"
    if not metrics_path.exists():
        return "metrics.json is missing"
    try:
        metrics = read_json(metrics_path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "metrics.json is truncated"
    except OSError as exc:
        return f"metrics.json cannot be read ({exc.strerror})"
    if isinstance(metrics, dict) and metrics.get("config_key", key) != key:
        return f"metrics.json names config key {metrics['config_key']!r}, not {key!r}"
    # Every key with its type; student.pt matches its sha256 or loads (harden).
    return check_run_files(run_dir, metrics, REQUIRED_METRICS, STUDENT_FILE)


def clear_run_dir(run_dir: str | os.PathLike) -> None:
    """Empty (or create) a run folder before a run is (re)done."""
    run_dir = Path(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in run_dir.iterdir():   # a file written while we removed the folder
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


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
    return io.verify_checkpoint(Path(run_dir) / checkpoint, metrics.get("student_sha256"))


def check_numerics(run_dirs, execution: Execution, allow_mixed: bool = False) -> None:
    """Refuse to reuse finished runs whose numbers came from another thread count,
    device or precision than the runs about to be computed with ``execution``
    (:meth:`reprolib.devices.Execution.numerics`; a run's metrics.json records
    ``threads``, ``device`` and ``precision``, fp32 where it predates that key),
    unless ``allow_mixed``."""
    want = execution.numerics()
    seen: dict[tuple, int] = {}
    for run_dir in run_dirs:
        try:
            m = read_json(Path(run_dir) / "metrics.json")
        except (OSError, ValueError):
            continue
        if not isinstance(m, dict) or "threads" not in m or "device" not in m:
            continue
        got = numerics_record(m.get("threads"), m.get("device"), m.get("precision", "fp32"))
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


def check_run_folders(run_dirs, sweep_dir: str | os.PathLike) -> None:
    """Every folder holds a finished run (:func:`check_run`), else a
    :class:`ReproError` that names the folder and the problem."""
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        why = check_run(run_dir, run_dir.name)
        if why is not None:
            raise ReproError(f"run {run_dir} is not a finished run: {why}; rerun "
                             f"`python -m reprolib sweep --out {sweep_dir}` to redo it")
        # Loaded once here (weights_only), so that a bad checkpoint stops us before any work.
        io.load_state_dict_file(run_dir / "student.pt", "student checkpoint", ("student", "config"))


def write_run(run_dir: str | os.PathLike, state: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """Write a finished run: ``student.pt`` (``state``: the student's, the method's
    and the config's dicts), its sha256 into ``metrics`` (``student_sha256``, which
    :func:`check_run` verifies), then ``metrics.json``, last and atomically: it marks
    the run finished. Returns the metrics as a reader of the folder sees them
    (strict JSON: NaN is null)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics["student_sha256"] = io.torch_save(state, run_dir / STUDENT_FILE)
    io.write_json(run_dir / METRICS_FILE, metrics)
    return io.strict(metrics)


def load_student(run_dir: str | os.PathLike, device: str = "cpu"):
    """The best-validation student of a finished run, in eval mode, and its
    :class:`~reprolib.config.RunConfig`. The checkpoint is loaded with
    ``weights_only=True``."""
    from .config import RunConfig
    from .models import build_student

    run_dir = Path(run_dir)
    ckpt = run_dir / STUDENT_FILE
    if not ckpt.is_file():
        raise ReproError(f"{run_dir} has no student.pt: the run did not finish; rerun it")
    saved = io.load_state_dict_file(ckpt, "student checkpoint", ("student", "config"))   # weights_only
    cfg = RunConfig.from_dict(saved["config"])
    k = len(cfg.data.subtask_classes)
    student = build_student(cfg.student, k)
    try:
        student.load_state_dict(saved["student"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ReproError(f"{ckpt} does not hold a {cfg.student} student: {str(exc).splitlines()[0]}") from None
    return student.to(device).eval(), cfg

"""The contract of a finished run folder, defined once.

A run folder holds ``student.pt`` and then, written last and atomically,
``metrics.json``. It is *finished* when ``metrics.json`` parses, has every key
of :data:`REQUIRED_METRICS`, names the folder's config key, and ``student.pt``
is there and not empty. The trainer (:mod:`reprolib.train`,
:mod:`reprolib.cohort`) writes exactly that; the sweep reads it. No torch here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

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
    if not isinstance(metrics, dict):
        return "metrics.json is not a JSON object"
    missing = [k for k in REQUIRED_METRICS if k not in metrics]
    if missing:
        return f"metrics.json lacks {', '.join(missing)}"
    if metrics["config_key"] != key:
        return f"metrics.json names config key {metrics['config_key']!r}, not {key!r}"
    student = run_dir / STUDENT_FILE
    if not student.exists():
        return "student.pt is missing"
    if student.stat().st_size == 0:
        return "student.pt is empty"
    return None


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

"""A tiny deterministic stand-in for :func:`reprolib.cohort.train_run`.

It writes ``student.pt`` and then, last, ``metrics.json`` (both atomically),
with numbers that depend only on the config, so that any two backends must
produce the same tables. It imports no torch.

Environment (read at call time, so spawned and Ray workers see it too):

``FAKE_RUNNER_LOG``   a file; one line ``<config key> <pid>`` is appended per started run.
``FAKE_RUNNER_SLEEP`` seconds to sleep, half before ``student.pt`` and half after.
``FAKE_RUNNER_FAIL``  a config key (or several, comma-separated) whose run raises.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import reprolib
from reprolib.io import atomic_path, digest, write_json


def _unit(key: str, name: str) -> float:
    """A number in [0, 1) fixed by the config key and a metric name."""
    return int(digest(f"{key}/{name}", length=12), 16) / 16 ** 12


def fake_metrics(cfg) -> dict:
    key = cfg.key()
    acc = {name: round(0.2 + 0.8 * _unit(key, name), 6) for name in (
        "test_accuracy", "val_accuracy", "test_accuracy_with_digit",
        "test_accuracy_digit_differs", "predicts_digit", "nonoracle_val_accuracy",
        "nonoracle_test_accuracy")}
    return {
        **acc,
        "best_epoch": 1 + int(_unit(key, "best_epoch") * cfg.epochs),
        "teacher_test_accuracy": 0.85,
        "curves": {"val_accuracy": [acc["val_accuracy"]] * cfg.epochs},
        "config": cfg.to_dict(),
        "config_key": key,
        "code_version": reprolib.CODE_VERSION,   # read at call time (tests patch it)
    }


def fake_train_run(cfg, out_dir, *, execution=None, progress=True) -> dict:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = cfg.key()
    log = os.environ.get("FAKE_RUNNER_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{key} {os.getpid()}\n")
            fh.flush()
            os.fsync(fh.fileno())
    if key in os.environ.get("FAKE_RUNNER_FAIL", "").split(","):
        raise RuntimeError(f"fake failure for {key}")
    pause = float(os.environ.get("FAKE_RUNNER_SLEEP", "0") or 0)
    time.sleep(pause / 2)
    student = b"fake student " + key.encode()
    with atomic_path(out_dir / "student.pt") as tmp:
        tmp.write_bytes(student)
    time.sleep(pause / 2)
    metrics = fake_metrics(cfg)
    # Not a torch file: the sweep accepts it because its sha256 is recorded.
    threads, device = (None, "cpu") if execution is None else (execution.threads, execution.device)
    metrics.update(threads=threads, device=device, seconds=time.perf_counter() - start,
                   student_sha256=digest(student, length=None))
    write_json(out_dir / "metrics.json", metrics)
    return metrics

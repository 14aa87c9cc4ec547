"""benchmarks/sweep_time.py --compare-cohort: its last line and what its JSON claims (smoke sizes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_compare_cohort_prints_speedup_and_the_bound_of_sharing():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_time.py"), "--compare-cohort",
                           "--preset", "smoke", "--steps", "3", "--threads", "1", "--teacher-recipe", "smoke"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"cohort speedup \d+\.\d\d \(2 students, separate [\d.]+ s, cohort [\d.]+ s\)", lines[-1])
    report = json.loads("\n".join(lines[:-1]))
    # Bitwise: both sides step the same students with the same kernels, on this machine, at 1 thread.
    assert report["bitwise_identical_students"] is True and report["students"] == 2
    assert 0 < report["teacher_share_of_cohort_steps"] < 1
    # Without its teacher forward the cohort's steps are shorter, so the bound is above the speedup.
    assert report["training_speedup_bound_free_teacher"] > report["training_speedup"]


def test_compare_split_prints_its_line_and_identical_results():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_time.py"), "--compare-split",
                           "--preset", "smoke", "--cohorts", "2", "--epochs", "1", "--split-workers", "4",
                           "--teacher-recipe", "smoke"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"split speedup \d+\.\d\d \(2 cohorts, 4 workers, whole [\d.]+ s, split [\d.]+ s; "
                        r"estimated \d+\.\d\d\)", lines[-1])
    report = json.loads("\n".join(lines[:-1]))
    # Identical: whole and split cohorts run the same kernels at the same thread count on this machine.
    assert report["identical_results"] is True
    assert (report["tasks_whole_run"], report["tasks_split_run"]) == (2, 4)   # 2 cohorts of 2 on 4 workers


def test_compare_split_rejects_zero_cohorts():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_time.py"), "--compare-split",
                           "--cohorts", "0"], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 2 and proc.stderr.startswith("error:")

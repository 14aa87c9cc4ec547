"""benchmarks/convergence.py: the convergence rule, measured (smoke sizes here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "convergence.py"


def _run(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)


def test_convergence_benchmark_prints_its_table_and_last_line(tmp_path):
    out = tmp_path / "conv"
    proc = _run("--preset", "smoke", "--seeds", "1", "--factor", "2", "--methods", "kd", "subdistill",
                "--threads", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"convergence: [0-2] of 2 methods within 2 points of 2x the steps \(smoke preset, "
                        r"rho=0, seeds \[1\], device cpu, \d+ s\)", last), last
    report = json.loads((out / "convergence.json").read_text())
    rows = {r["method"]: r for r in report["table"]}
    assert set(rows) == {"kd", "subdistill"}
    for r in rows.values():
        assert r["steps_long"] == 2 * r["steps"]
        assert r["converged"] == (abs(r["test_mean_long"] - r["test_mean"]) <= 0.02)
    assert rows["subdistill"]["lambda_layer"] == 100.0 and rows["kd"]["lambda_layer"] == 0.0
    # A second call reuses every finished run (nothing is trained again).
    again = _run("--preset", "smoke", "--seeds", "1", "--factor", "2", "--methods", "kd", "subdistill",
                 "--threads", "1", "--out", str(out))
    assert again.returncode == 0 and "0 cohorts to train" in again.stderr


def test_convergence_benchmark_refuses_a_factor_below_two(tmp_path):
    proc = _run("--preset", "smoke", "--factor", "1", "--out", str(tmp_path / "c"))
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "c").exists()


def test_the_measured_table_in_the_repository_is_well_formed():
    """The book shows this file (chapter 4): one row per method, the rule's verdict consistent."""
    report = json.loads((ROOT / "benchmarks" / "results" / "convergence-quick-h200.json").read_text())
    assert {r["method"] for r in report["table"]} == {"kd", "at", "vid", "vkd", "subdistill"}
    for r in report["table"]:
        assert (r["steps"], r["steps_long"]) == (600, 1800)
        assert r["converged"] == (abs(r["long_minus_quick"]) <= 0.02)

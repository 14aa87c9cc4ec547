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


def test_convergence_benchmark_reuses_a_sweeps_runs_and_scales_the_recipe(tmp_path):
    """--reuse reads the preset's runs from a sweep folder; --scale and --lr change the recipe."""
    from reprolib import sweep
    from reprolib.grids import SweepGrid
    from reprolib.rundirs import check_run, run_dir_for
    from reprolib.config import make_config

    sweep_dir = tmp_path / "sweep"
    cfg = make_config("mini", "smoke", method="kd", seed=1, contamination_rate=0.0, lambda_layer=0.0)
    grid = SweepGrid(name="t", run_preset="smoke", methods=("kd",), rhos=(0.0,), seeds=(1,),
                           lambdas=(100.0,))
    sweep.run_sweep(grid, sweep_dir, progress=False)
    assert check_run(run_dir_for(sweep_dir, cfg), cfg.key()) is None
    out = tmp_path / "conv"
    proc = _run("--preset", "smoke", "--seeds", "1", "--factor", "2", "--methods", "kd", "--threads", "1",
                "--reuse", str(sweep_dir), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 cohorts to train (1 students)" in proc.stderr       # only the long run
    report = json.loads((out / "convergence.json").read_text())
    quick = [r for r in report["runs"] if r["factor"] == 1][0]
    metrics = json.loads((run_dir_for(sweep_dir, cfg) / "metrics.json").read_text())
    assert quick["test_accuracy"] == metrics["test_accuracy"]
    assert not (run_dir_for(out, cfg)).exists()
    # --scale 2 doubles the base budget; --lr is recorded.
    scaled = _run("--preset", "smoke", "--seeds", "1", "--factor", "2", "--methods", "kd", "--threads", "1",
                  "--scale", "2", "--lr", "0.003", "--out", str(tmp_path / "scaled"))
    assert scaled.returncode == 0, scaled.stderr[-2000:]
    row = json.loads((tmp_path / "scaled" / "convergence.json").read_text())["table"][0]
    assert (row["steps"], row["steps_long"], row["lr"]) == (2 * quick["optimizer_steps"],
                                                             4 * quick["optimizer_steps"], 0.003)


def test_convergence_benchmark_refuses_bad_recipe_options(tmp_path):
    for args in (("--scale", "0"), ("--lr", "-1"), ("--reuse", str(tmp_path / "missing"))):
        proc = _run("--preset", "smoke", *args, "--out", str(tmp_path / "c"))
        assert proc.returncode == 2, args
        assert proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "c").exists()


def _measured():
    return sorted((ROOT / "benchmarks" / "results").glob("convergence-*.json"))


def test_the_measured_tables_in_the_repository_are_well_formed():
    """The book shows these files (chapter 4): one row per method, the rule's verdict consistent."""
    assert _measured()
    for path in _measured():
        report = json.loads(path.read_text())
        assert {r["method"] for r in report["table"]} == {"kd", "at", "vid", "vkd", "subdistill"}, path
        for r in report["table"]:
            assert r["steps_long"] == 3 * r["steps"], path
            assert r["converged"] == (abs(r["long_minus_quick"]) <= 0.02), path


def test_the_current_quick_preset_has_a_measured_convergence_table():
    """The book's Table 4.1 must describe the preset that made its numbers (steps and learning rate)."""
    from reprolib.config import make_config, optimizer_steps

    cfg = make_config("mini", "quick")
    match = [p for p in _measured()
             if all(r["steps"] == optimizer_steps(cfg) and r.get("lr", 1e-3) == cfg.lr
                    for r in json.loads(p.read_text())["table"])]
    assert match, "run benchmarks/convergence.py for the quick preset and commit its JSON"

"""benchmarks/recipe_pilot.py: the two rules that set the mini world's rate and the quick budget (smoke sizes)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "recipe_pilot.py"


def _run(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=600, env=env)


def test_recipe_pilot_applies_its_rules_and_reuses_runs(tmp_path):
    out = tmp_path / "pilot"
    args = ("--preset", "smoke", "--teacher-recipe", "smoke", "--rates", "0.001", "0.01", "--rate-steps", "4",
            "--budgets", "2", "4", "--factor", "2", "--tolerance", "1.0", "--threads", "1", "--out", str(out))
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"recipe: lr 0\.0(01|1), 2 optimiser steps \(kd at rho=0, seed 1; \d+ s\)", last), last
    report = json.loads((out / "recipe_pilot.json").read_text())
    rate_rows = {r["lr"]: r for r in report["runs"] if r["stage"] == "rate"}
    best = max(rate_rows, key=lambda lr: (rate_rows[lr]["val_accuracy"], -lr))
    assert report["chosen_lr"] == best
    # tolerance 1.0 (100 points): the smallest budget is met at once.
    assert report["chosen_steps"] == 2 and report["checks"][0]["within"]
    assert {r["optimizer_steps"] for r in report["runs"] if r["stage"] == "budget"} == {2, 4}
    again = _run(*args)
    assert again.returncode == 0 and "training" not in again.stderr


def test_the_committed_pilot_chose_the_presets_recipe():
    """The quick preset's rate and budget are the ones the committed pilot's rules chose."""
    from reprolib.config import make_config, optimizer_steps

    report = json.loads((ROOT / "benchmarks" / "results" / "recipe-pilot-cpu.json").read_text())
    cfg = make_config("mini", "quick")
    assert (report["chosen_lr"], report["chosen_steps"]) == (cfg.lr, optimizer_steps(cfg))
    kd = {r["lr"]: r["val_accuracy"] for r in report["runs"] if r["stage"] == "rate" and r["method"] == "kd"}
    assert max(kd, key=kd.get) == report["chosen_lr"]
    met = [c for c in report["checks"] if c["within"]]
    assert met and met[0]["steps"] == report["chosen_steps"] and all(not c["within"] for c in report["checks"][:-1])


def test_recipe_pilot_refuses_a_bad_rate(tmp_path):
    proc = _run("--rates", "2", "--out", str(tmp_path / "p"))
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert not (tmp_path / "p").exists()

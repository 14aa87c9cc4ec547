"""The precondition ladder (benchmarks/precondition.py, reprolib.precondition) at smoke sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reprolib import precondition as P
from reprolib.errors import ReproError

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "precondition.py"


def _run(*args, timeout=900):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.parametrize("method", ["subdistill", "at", "vid", "vkd"])
def test_the_ladder_refuses_every_other_method(method, tmp_path):
    proc = _run("--method", method, "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[0]]
    assert proc.stderr.startswith("error: the precondition ladder trains output-only KD only")
    assert not (tmp_path / "o").exists() and not (tmp_path / "r").exists()   # before any work
    with pytest.raises(ReproError, match="output-only KD only"):
        P.ladder_grid("converged-teacher", methods=("kd", method))


@pytest.mark.parametrize("args,match", [
    (("--rungs", "z"), "unknown rung"),
    (("--preset", "smoke", "--rungs", "e2"), "fewer than a batch"),
    (("--passes", "0"), "--passes 0"),
])
def test_bad_ladder_input_is_one_error_line(args, match, tmp_path):
    proc = _run(*args, "--out", str(tmp_path / "o"), "--results", str(tmp_path / "r"))
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and match in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_group_floor_is_the_best_group_constant_prediction():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(60, 5, generator=gen)
    p = torch.softmax(logits, 1).double()
    g = torch.arange(60) % 3
    floor = P.group_kd_floor(p, g, 4.0)
    assert floor > 0
    # any other per-group prediction does worse
    for _ in range(5):
        q = torch.softmax(torch.randn(3, 5, generator=gen), 1).double()[g]
        other = 16.0 * float((p * (p.log() - q.log())).sum(1).mean())
        assert other > floor
    # a teacher whose output is a function of the group alone: the floor is 0
    assert P.group_kd_floor(p[:3][g], g, 4.0) == pytest.approx(0.0, abs=1e-12)


def test_convergence_grid_scales_the_variant_schedule():
    g = P.convergence_grid("train-20")
    from reprolib.grids import expand_grid
    from reprolib.config import optimizer_steps

    cells = expand_grid(g)
    assert [c.data.contamination_rate for c in cells] == [0.0] * 3
    assert {optimizer_steps(c) for c in cells} == {3600}
    assert {c.data.train_fraction for c in cells} == {0.08}


def test_ladder_smoke_writes_one_file_per_rung_and_the_outcome(tmp_path):
    res = tmp_path / "results"
    args = ("--preset", "smoke", "--teacher-recipe", "smoke", "--rungs", "a", "c", "--required", "a", "c",
            "--passes", "1", "--workers", "1", "--threads", "1", "--out", str(tmp_path / "out"),
            "--results", str(res))
    proc = _run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1].startswith("main world: ")
    ladder = json.loads((res / "precondition-ladder.json").read_text())
    assert [t["rung"] for t in ladder["tried"]] == ["a", "c"]
    for t in ladder["tried"]:
        r = json.loads((res / t["file"]).read_text())
        assert r["method"] == "kd" and {row["rho"] for row in r["runs"]} == {0.0, 1.0}
        assert len(r["runs"]) == 6 and r["commit"]
        # the drop is the mean of the per-seed differences of the runs in the file
        acc = {(row["rho"], row["seed"]): row["test_accuracy"] for row in r["runs"]}
        drops = [acc[(0.0, s)] - acc[(1.0, s)] for s in (1, 2, 3)]
        assert r["drop"]["oracle"]["mean"] == pytest.approx(sum(drops) / 3)
        assert r["convergence"]["factor"] == 3 and len(r["convergence"]["seeds"]) == 3
        sig = r["teacher_signal"]["1"]
        assert 0 <= sig["agreement"] <= 1 and 0.2 <= sig["top_probability"] <= 1 and sig["digit_only_floor"] >= 0
        # rho = 1: the test images carry random digits; rho = 0: no digit, so no share (null)
        assert all(0 <= row["predicts_digit_differs"] <= 1 for row in r["runs"] if row["rho"] == 1.0)
        assert all(row["predicts_digit_differs"] is None for row in r["runs"] if row["rho"] == 0.0)
    choice = ladder["choice"]
    best = max(ladder["tried"], key=lambda t: t["drop_oracle"]["mean"])
    if not choice["met"]:
        assert choice["chosen"] == best["rung"]
    # a second call reuses every run
    again = _run(*args)
    assert again.returncode == 0 and "0 to compute" in again.stderr and "1 to compute" not in again.stderr

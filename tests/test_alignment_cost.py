"""benchmarks/alignment_cost.py (reprolib.cost): every layer method at 1, 2, 4 and 8 layer pairs, as ratios to KD."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from _scripts import load_script

ARGS = ["--preset", "smoke", "--teacher-recipe", "smoke", "--steps", "1", "--rounds", "2"]


@pytest.mark.slow
def test_every_method_and_pair_count_is_timed_against_kd(tmp_path, capsys):
    ac = load_script("benchmarks/alignment_cost.py", "alignment_cost_time")
    out = tmp_path / "cost.json"
    assert ac.main(ARGS + ["--no-memory", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    cases = {(r["method"], r["pairs"]) for r in report["rows"]}
    assert cases == {("kd", 0)} | {(m, n) for m in ("at", "vid", "vkd", "subdistill") for n in (1, 2, 4, 8)}
    kd = next(r for r in report["rows"] if r["method"] == "kd")
    assert kd["step_ratio_to_kd"] == 1.0 and all(r["ms_per_step"] > 0 for r in report["rows"])
    assert all(r["step_ratio_min"] <= r["step_ratio_to_kd"] <= r["step_ratio_max"] for r in report["rows"])
    assert "× KD (step)" in capsys.readouterr().out
    # The memory of one case, as the per-case process measures it.
    proc = subprocess.run([sys.executable, "-m", "reprolib.cost", "subdistill:8", "--preset", "smoke"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout.strip().splitlines()[-1]) >= 0
    assert ac.main(ARGS + ["--steps", "0"]) == 2
    assert "error: steps must be a positive integer" in capsys.readouterr().err

"""benchmarks/alignment_cost.py: every layer method at 1, 2, 4 and 8 layer pairs, as ratios to KD."""

from __future__ import annotations

import json

import pytest

from _scripts import load_script

ARGS = ["--preset", "smoke", "--teacher-recipe", "smoke", "--steps", "1", "--rounds", "1"]


def test_the_pair_sets_grow_from_the_deepest():
    ac = load_script("benchmarks/alignment_cost.py", "alignment_cost_pairs")
    assert [len(ac.PAIRS[n]) for n in ac.COUNTS] == [1, 2, 4, 8]
    assert ac.PAIRS[1] == (("layer4", "layer4"),) and set(ac.PAIRS[2]) <= set(ac.PAIRS[4]) <= set(ac.PAIRS[8])
    assert len(set(ac.PAIRS[8])) == 8


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
    assert "x kd" in capsys.readouterr().out
    # The memory of one case, as the per-case process measures it.
    assert ac.main(ARGS + ["--one", "subdistill:8"]) == 0
    assert int(capsys.readouterr().out.strip().splitlines()[-1]) >= 0
    assert ac.main(ARGS + ["--steps", "0"]) == 2

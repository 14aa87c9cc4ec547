"""benchmarks/stacked_students.py: one clear error for bad input; a tiny run writes its JSON."""

from __future__ import annotations

import json

import pytest

from _scripts import load_script


def test_a_stack_of_one_is_refused_with_one_line(capsys):
    bench = load_script("benchmarks/stacked_students.py")
    assert bench.main(["--members", "1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --members 1: a stack needs at least 2 students"


@pytest.mark.slow
def test_the_stacked_benchmark_times_both_paths(smoke_teacher, tmp_path):
    bench = load_script("benchmarks/stacked_students.py")
    out = tmp_path / "stacked.json"
    assert bench.main(["--preset", "smoke", "--teacher-recipe", "smoke", "--steps", "1", "--rounds", "1",
                       "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["students"] >= 2 and set(report["median_ms"]) == {"separate", "stacked"}
    assert report["stacked_speedup"] == pytest.approx(
        report["median_ms"]["separate"] / report["median_ms"]["stacked"], rel=1e-2)

"""benchmarks/step_time.py: fp32 and bf16 side by side where bf16 is native, and the
refusal (with its reason) where it is not."""

from __future__ import annotations

import json

import pytest

from reprolib import devices

from _scripts import load_script

ARGS = ["--preset", "smoke", "--teacher-recipe", "smoke", "--steps", "2", "--rounds", "1"]


def _report(out: str) -> dict:
    return json.loads(out[out.index("\n{") + 1:])


def test_bf16_is_refused_and_said_on_a_cpu_without_it(capsys, monkeypatch):
    monkeypatch.setattr(devices, "cpu_flags", lambda *_: {"avx2"})
    step_time = load_script("benchmarks/step_time.py", "step_time_no_bf16")
    assert step_time.main(ARGS) == 0
    out = capsys.readouterr().out
    report = _report(out)
    assert report["precisions"] == ["fp32"] and report["cpu_native_bf16"] == []
    assert "bf16" in report["refused"] and "emulated" in report["refused"]["bf16"]
    assert "bf16: not timed:" in out and "no native bf16" in out
    assert set(report["ms_per_step"]["fp32"]) == {"kd", "at", "vid", "vkd", "subdistill"}
    assert report["step_time_ratio_to_kd"]["kd"] == 1.0
    # Asking for bf16 alone there is an error line, not a table.
    assert step_time.main(ARGS + ["--precision", "bf16"]) == 2
    assert capsys.readouterr().err.startswith("error: --precision bf16 on the CPU")


@pytest.mark.slow
def test_fp32_and_bf16_side_by_side_where_bf16_is_native(capsys, monkeypatch):
    # Pretend the CPU has native bf16 (on one without, the same arithmetic is emulated: slower, same table).
    monkeypatch.setattr(devices, "cpu_flags", lambda *_: {"avx512_bf16"})
    step_time = load_script("benchmarks/step_time.py", "step_time_bf16")
    assert step_time.main(ARGS) == 0
    out = capsys.readouterr().out
    report = _report(out)
    assert report["precisions"] == ["fp32", "bf16"] and report["refused"] == {}
    assert set(report["bf16_speedup"]) == set(report["ms_per_step"]["bf16"])
    assert all(v > 0 for v in report["bf16_speedup"].values())
    assert "bf16 speed-up" in out and "native bf16 (avx512_bf16)" in out

"""benchmarks/student_levers.py: the stacked students compute what separate students compute, and the script reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reprolib.models import mini_student
from _scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


def _load():
    return load_script("benchmarks/student_levers.py")


@pytest.mark.numerics
def test_stacked_students_match_separate_students_forward_and_gradients():
    levers = _load()
    torch.manual_seed(3)
    students = [mini_student(5) for _ in range(3)]
    stacked = levers.StackedStudents(3, 5).load_members(students)
    x, y = torch.randn(6, 1, 32, 32), torch.randint(0, 5, (6,))
    out = stacked(x)                                   # train mode: batch statistics per member
    assert out.shape == (6, 3, 5)
    sep = [s(x) for s in students]
    for i, o in enumerate(sep):
        torch.testing.assert_close(out[:, i], o, rtol=1e-4, atol=1e-5)
    # The stacked loss is the members' losses summed, so each member gets its own gradient.
    F.cross_entropy(out.reshape(-1, 5), y.repeat_interleave(3), reduction="sum").div(len(y)).backward()
    sum(F.cross_entropy(o, y) for o in sep).backward()
    g = stacked.blocks[2].conv2.weight.grad.chunk(3)
    for i, s in enumerate(students):
        torch.testing.assert_close(g[i], s.layer3[0].conv2.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(stacked.fc.bias.grad.chunk(3)[1], students[1].fc.bias.grad, rtol=1e-4, atol=1e-6)


def test_load_members_refuses_the_wrong_count():
    levers = _load()
    with pytest.raises(ValueError, match="need 2 students"):
        levers.StackedStudents(2, 5).load_members([mini_student(5)])


def test_script_prints_a_table_and_json(capsys):
    levers = _load()
    assert levers.main(["--members", "2", "--steps", "1", "--rounds", "1", "--no-compile"]) == 0
    text = capsys.readouterr().out
    report = json.loads(text[text.index("{"):])
    assert report["members"] == 2 and report["compile_warmup_seconds"] is None
    assert set(report["speedup"]) == {"stacked_vs_separate"} and report["speedup"]["stacked_vs_separate"] > 0
    assert len(report["ms_per_step"]) == 2


def test_script_rejects_zero_members(capsys):
    assert _load().main(["--members", "0"]) == 2
    assert capsys.readouterr().err.startswith("error:")

"""The command line, as a user runs it: ``python -m reprolib ...`` in a subprocess.

The subprocesses inherit the session's ``REPROLIB_CACHE`` (conftest), so they
reuse the smoke teacher. A few error cases run in-process through
:func:`reprolib.cli.main` to save interpreter start-ups.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reprolib.cli import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join([str(ROOT), full_env.get("PYTHONPATH", "")])
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "reprolib", *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def test_data_summary_prints_one_json_object_with_the_counts():
    res = run_cli("data", "summary", "--world", "mini", "--rho", "1", "--preset", "smoke")
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert set(summary) == {"train", "val", "test"}
    assert summary["train"] == {"n": 40, "with_digit": 40, "digit_equals_label": 40}
    assert (summary["val"]["n"], summary["val"]["with_digit"]) == (10, 10)
    assert (summary["test"]["n"], summary["test"]["with_digit"]) == (100, 100)
    assert summary["test"]["digit_equals_label"] < 50     # random digits, ~1/5


def test_bad_input_exits_nonzero_with_an_error_line_and_no_traceback():
    res = run_cli("data", "summary", "--rho", "2", "--preset", "smoke")
    assert res.returncode == 2
    assert res.stderr.startswith("error: ") and "rho=2.0 is outside [0, 1]" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


@pytest.mark.parametrize("args, message", [
    (["data", "summary", "--world", "imagenet"], "unknown world 'imagenet'; choose one of ['mini', 'paper']"),
    (["data", "summary", "--preset", "huge"], "unknown preset 'huge'"),
    (["train", "--preset", "smoke", "--method", "distil", "--out", "x"],
     "unknown method 'distil'; valid methods: kd, at, vid, vkd, subdistill"),
    (["data", "summary", "--preset", "smoke", "--subtask-classes", "0,0,2,3,4"], "repeats a class"),
    (["data", "summary", "--preset", "smoke", "--subtask-classes", "0,2,3,4,12"], "out of range"),
    (["data", "summary", "--preset", "smoke", "--artifact-size", "33"], "larger than the image"),
    (["data", "summary", "--preset", "smoke", "--artifact-corner", "centre"], "artifact_corner"),
    (["train", "--preset", "smoke", "--method", "at", "--lambda-layer", "-1", "--out", "x"], "lambda_layer=-1.0"),
    (["train", "--preset", "smoke", "--student", "tiny", "--out", "x", "--device", "cpu"], "unknown student 'tiny'"),
    (["data", "summary", "--world", "paper", "--preset", "smoke"], "REPROLIB_IMAGENET"),
])
def test_bad_input_in_process(args, message, capsys, monkeypatch, tmp_path, smoke_teacher):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REPROLIB_IMAGENET", raising=False)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_argparse_errors_are_usage_messages(capsys):
    with pytest.raises(SystemExit) as e:
        main(["data", "summary", "--rho", "lots"])
    assert e.value.code == 2 and "invalid float value: 'lots'" in capsys.readouterr().err


@pytest.mark.slow
def test_train_writes_metrics(tmp_path, smoke_teacher):
    out = tmp_path / "run"
    res = run_cli("train", "--preset", "smoke", "--method", "vkd", "--rho", "1", "--out", str(out),
                  "--device", "cpu", "--threads", "1", "--quiet")
    assert res.returncode == 0, res.stderr
    shown = json.loads(res.stdout)
    assert "curves" not in shown and "config" not in shown
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["method"] == "vkd" and metrics["config"]["data"]["contamination_rate"] == 1.0
    assert shown["test_accuracy"] == metrics["test_accuracy"]
    assert shown["config_key"] == metrics["config_key"]
    assert (out / "student.pt").is_file()


def test_paper_teacher_command_loads_the_weights(paper_root, fake_resnet18_weights, capsys):
    assert main(["teacher", "--world", "paper", "--preset", "smoke", "--teacher", "resnet18",
                 "--teacher-weights", str(fake_resnet18_weights)]) == 0
    assert json.loads(capsys.readouterr().out) == {"teacher": "resnet18", "loaded": True}


def test_data_check_finds_fashion_mnist(capsys):
    assert main(["data", "check", "--no-download"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["train"], out["test"]) == (60000, 10000)
    assert Path(out["fashion_mnist"]).is_dir()


@pytest.mark.parametrize("argv,recipe", [(["--preset", "smoke"], "smoke"), ([], "10-epoch"),
                                         (["--variant", "one-epoch-teacher"], "1-epoch"),
                                         (["--preset", "smoke", "--recipe", "1-epoch"], "1-epoch")])
def test_teacher_command_trains_the_presets_recipe(argv, recipe, monkeypatch, capsys):
    """`teacher --preset smoke` is the smoke preset's teacher (seconds), not the book's."""
    from reprolib import teacher

    asked = []
    monkeypatch.setattr(teacher, "teacher_report", lambda tcfg, progress: asked.append(tcfg) or {"ok": True})
    assert main(["teacher", "--world", "mini", *argv, "--quiet"]) == 0
    assert asked == [teacher.recipe(recipe)]

"""reprolib.estimate: the time a sweep will take, from a short measured calibration."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from reprolib import estimate
from reprolib.config import make_config, optimizer_steps, split_sizes
from reprolib.errors import ReproError
from reprolib.grids import conditions_grid, expand_grid, get_grid, group_cohorts
from reprolib.rundirs import run_dir_for

from _fake_runner import fake_train_run


def _cal(**over) -> estimate.Calibration:
    base = dict(device="cpu", threads=1, precision="fp32",
                step_seconds={"kd/mini-student": 0.02, "subdistill/mini-student": 0.03,
                              "at/mini-student": 0.025, "vid/mini-student": 0.06, "vkd/mini-student": 0.03},
                eval_seconds_per_image={"mini-student": 1e-4}, teacher_seconds_per_image=5e-4,
                subspace_seconds_per_image=2e-3, teacher_train_seconds_per_step=0.4, calibration_seconds=1.0)
    base.update(over)
    return estimate.Calibration(**base)


def test_a_task_is_priced_term_by_term():
    cal = _cal()
    kd = make_config("mini", "quick", method="kd", contamination_rate=1.0, seed=1)
    sd = make_config("mini", "quick", method="subdistill", contamination_rate=1.0, seed=1, lambda_layer=10.0)
    sizes = split_sizes(kd.data)
    steps = optimizer_steps(kd)
    validations = math.ceil(kd.epochs / kd.val_every)
    per_student_eval = (validations * 2 * sizes["val"] + 2 * sizes["test"]) * 1e-4
    # With augmentation (the mini world's crops) the teacher runs on every batch; its test metrics once.
    assert kd.data.augment
    teacher = (steps * kd.batch_size + sizes["test"]) * 5e-4
    assert estimate.task_seconds([kd], cal) == pytest.approx(teacher + steps * 0.02 + per_student_eval)
    # A second member adds its own steps and evaluations; SubDistill also its subspace fit.
    both = estimate.task_seconds([kd, sd], cal)
    assert both == pytest.approx(teacher + sizes["train"] * 2e-3 + steps * (0.02 + 0.03) + 2 * per_student_eval)
    assert estimate.task_seconds([], cal) == 0.0
    plain = kd.replace(augment=False)      # no augmentation: the teacher once over the training split
    assert estimate.task_seconds([plain], cal) == pytest.approx(
        (sizes["train"] + sizes["test"]) * 5e-4 + steps * 0.02 + per_student_eval)
    # Two equal tasks on two workers take the time of one; on one worker, of both.
    assert estimate.makespan_seconds([[kd], [kd]], 2, cal) == pytest.approx(estimate.task_seconds([kd], cal))
    assert estimate.makespan_seconds([[kd], [kd]], 1, cal) == pytest.approx(2 * estimate.task_seconds([kd], cal))


def test_teacher_training_is_priced_from_its_recipe():
    cal = _cal(teacher_train_seconds_per_step=0.5)
    cfg = make_config("mini", "quick", method="kd", contamination_rate=1.0, seed=1, teacher_recipe="10-epoch")
    steps = 10 * (60000 // 128)
    seconds = estimate.teacher_training_seconds(cfg, cal)
    assert steps * 0.5 < seconds < 1.1 * steps * 0.5
    assert estimate.teacher_training_seconds(cfg, _cal(teacher_train_seconds_per_step=None)) == 0.0


@pytest.mark.slow
def test_calibration_measures_every_method_and_the_estimate_skips_finished_runs(tmp_path):
    import torch

    cells = expand_grid("smoke")
    state = torch.get_rng_state()
    cal = estimate.calibrate(cells, steps=1)
    assert torch.equal(torch.get_rng_state(), state)   # the caller's random stream is untouched
    assert set(cal.step_seconds) == {f"{c.method}/{c.student}" for c in cells}
    assert all(v > 0 for v in cal.step_seconds.values())
    assert cal.eval_seconds_per_image["mini-student"] > 0 and cal.teacher_seconds_per_image > 0
    assert cal.subspace_seconds_per_image > 0 and cal.teacher_train_seconds_per_step is None
    json.dumps(cal.to_dict(), allow_nan=False)     # strict JSON

    out = tmp_path / "sweep"
    full = estimate.estimate_sweep(cells, out, workers=1, calibration=cal)
    assert full["runs_to_train"] == len(cells) and full["runs_finished"] == 0
    assert full["cohorts"] == len(group_cohorts(cells))
    # Finish the first cohort's runs: they drop out of the estimate.
    first = group_cohorts(cells)[0]
    for cfg in first:
        fake_train_run(cfg, run_dir_for(out, cfg), progress=False)
    rest = estimate.estimate_sweep(cells, out, workers=1, calibration=cal)
    assert rest["runs_to_train"] == len(cells) - len(first) and rest["runs_finished"] == len(first)
    assert 0 < rest["seconds"] < full["seconds"]
    assert "finished runs are reused" in estimate.describe(rest)
    for cfg in cells:
        fake_train_run(cfg, run_dir_for(out, cfg), progress=False)
    done = estimate.estimate_sweep(cells, out, workers=1, calibration=cal)
    assert done["seconds"] == 0 and estimate.describe(done).startswith("nothing to train")
    with pytest.raises(ReproError, match="workers=0 must be a positive integer"):
        estimate.estimate_sweep(cells, out, workers=0, calibration=cal)


def test_the_book_estimate_prices_each_teacher_and_shared_cell_once(monkeypatch, tmp_path):
    from reprolib import teacher

    # No teacher is cached (whatever earlier tests trained): each must be priced, once.
    monkeypatch.setattr(teacher, "teacher_dir", lambda tcfg: tmp_path / "no-teacher" / tcfg.key())
    calls = []

    def fake_calibrate(cfgs, execution, *a, teacher_training=False, **k):
        calls.append(sorted({c.student for c in cfgs}))
        return _cal(step_seconds={f"{c.method}/{c.student}": 0.03 for c in cfgs},
                    eval_seconds_per_image={c.student: 1e-4 for c in cfgs},
                    teacher_train_seconds_per_step=0.4 if teacher_training else None,
                    threads=execution.threads, precision=execution.precision,
                    teacher=cfgs[0].teacher, teacher_recipe=cfgs[0].teacher_recipe)

    monkeypatch.setattr(estimate, "calibrate", fake_calibrate)
    book = estimate.estimate_book("smoke", workers=2)
    # Grids with the same models share a calibration: the main grid's serves the calibration
    # and contrast grids; the K/d ablation's wide student needs its own, and so does the
    # aligned-layers grid, whose AT the smoke grid (KD and SubDistill) did not measure, and the
    # biased-teacher grid, whose teacher is another.
    assert calls == [["mini-student"], ["mini-student-wide"], ["mini-student"], ["mini-student"]]
    assert get_grid("smoke").name in book["grids"] and len(book["grids"]) >= 3
    # The smoke book has one teacher (its contrast grid too), priced once with the main grid, and
    # the biased teacher of chapter 10.
    assert [name for name, e in book["grids"].items() if e["teacher_seconds"] > 0] == ["smoke", "biased-teacher-smoke"]
    # The quick book: the main world's teacher once (its side grids share it), the contrast
    # world's one-epoch teacher once.
    quick = estimate.estimate_book("quick", workers=2)
    # ... and the contrast world's teacher, another recipe to train, is calibrated anew.
    # ... and so are the biased teacher and chapter 11's 3-epoch teacher.
    assert calls[4:] == [["mini-student"], ["mini-student-wide"], ["mini-student"], ["mini-student"], ["mini-student"]]
    assert [name for name, e in quick["grids"].items() if e["teacher_seconds"] > 0] == [
        "quick", "contrast-one-epoch-teacher", "biased-teacher", "conditions-map"]
    # The map holds three teachers: the two that earlier grids price, and the 3-epoch one,
    # whose training alone it adds.
    cmap = quick["grids"]["conditions-map"]
    assert sorted(cmap["teachers"]) == ["1-epoch", "10-epoch", "3-epoch"]
    three = next(c for c in expand_grid(conditions_grid("quick", 100.0)) if c.teacher_recipe == "3-epoch")
    assert cmap["teacher_seconds"] == pytest.approx(
        estimate.teacher_training_seconds(three, _cal(teacher_train_seconds_per_step=0.4)), abs=0.1)
    # Alone, the map prices all three teachers' training.
    alone = estimate.estimate_sweep(expand_grid(conditions_grid("quick", 100.0)), tmp_path / "alone", workers=2)
    assert alone["teacher_seconds"] == pytest.approx(sum(
        estimate.teacher_training_seconds(next(c for c in expand_grid(conditions_grid("quick", 100.0))
                                               if c.teacher_recipe == r), _cal(teacher_train_seconds_per_step=0.4))
        for r in ("1-epoch", "3-epoch", "10-epoch")), abs=0.5)
    # The calibration grid's cells that are the quick grid's own (same folder) are priced once.
    shared = {c.key() for c in expand_grid("quick")} & {c.key() for c in expand_grid("calibration")}
    assert quick["grids"]["calibration"]["runs_to_train"] == len(expand_grid("calibration")) - len(shared)
    assert book["seconds"] == pytest.approx(sum(e["seconds"] for e in book["grids"].values()), abs=0.5)


@pytest.mark.slow
def test_dry_run_prints_the_estimate(tmp_path):
    args = [sys.executable, "-m", "reprolib", "sweep", "--dry-run", "--preset", "smoke", "--workers", "1",
            "--out", str(tmp_path / "s")]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    est = plan["estimate"]
    assert est["runs_to_train"] == plan["runs"] and est["seconds"] > 0
    assert est["calibration"]["device"] == "cpu" and est["calibration"]["precision"] == "fp32"
    assert "estimated" in proc.stderr and f"{plan['runs']} runs" in proc.stderr
    assert not (tmp_path / "s").exists()            # a dry run writes nothing
    quiet = subprocess.run(args + ["--no-estimate"], capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0 and "estimate" not in json.loads(quiet.stdout)


@pytest.mark.slow
def test_estimate_check_prints_estimate_and_measurement(tmp_path, capsys):
    from _scripts import load_script

    check = load_script("benchmarks/estimate_check.py", "estimate_check")
    out = tmp_path / "check.json"
    assert check.main(["--preset", "smoke", "--limit", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["runs"] == 2 and report["estimated_seconds"] > 0 and report["measured_seconds"] > 0
    # (both are rounded to 0.1 s in the report: the ratio is the unrounded one)
    assert report["estimate_over_measured"] == pytest.approx(
        report["estimated_seconds"] / report["measured_seconds"], rel=0.2)
    assert report["within_25_percent"] == (abs(report["estimate_over_measured"] - 1) <= 0.25)
    assert "estimate/measured" in capsys.readouterr().out
    assert check.main(["--limit", "0"]) == 2


def test_the_progress_bar_shows_the_estimate_until_a_task_finishes(capsys):
    from reprolib.executors import progress_bar

    with progress_bar(4, True, estimate_seconds=3600.0) as bar:
        assert bar.postfix == "estimated 60.0 min left"
        bar.update(2)                      # a task finished: tqdm's own rate from here on
        assert not bar.postfix
    assert "estimated 60.0 min left" in capsys.readouterr().err
    with progress_bar(4, True) as bar:     # no estimate: the plain bar
        assert not bar.postfix
    with progress_bar(4, False, estimate_seconds=10.0) as bar:
        assert bar.disable


def test_the_paper_world_says_why_it_has_no_estimate(tmp_path):
    cells = expand_grid("smoke", "paper")
    est = estimate.estimate_sweep(cells, tmp_path / "s", workers=1, calibration=_cal())
    assert est["seconds"] is None and est["runs_to_train"] == len(cells)
    assert "training-set size is not known" in estimate.describe(est)
    json.dumps(est, allow_nan=False)

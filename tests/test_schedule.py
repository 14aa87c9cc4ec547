"""reprolib.schedule: cohorts into tasks for W workers (pure planning, no training)."""

from __future__ import annotations

import pytest

from reprolib import schedule
from reprolib.config import make_config
from reprolib.devices import Execution
from reprolib.grids import SweepGrid, expand_grid, get_grid, group_cohorts
from reprolib.sweep import run_sweep

from _fake_runner import fake_train_run


def _keys(tasks):
    return sorted(c.key() for t in tasks for c in t)


def _cohort(methods, seed=1):
    return [make_config("mini", "quick", method=m, seed=seed, lambda_layer=0.0 if m == "kd" else 1.0 + i)
            for i, m in enumerate(methods)]


def test_split_cohort_balances_cost_and_keeps_every_member_in_order():
    cohort = _cohort(["kd", "vid", "vid", "at", "subdistill", "vkd", "vid"])
    parts = schedule.split_cohort(cohort, 3)
    assert len(parts) == 3 and _keys(parts) == _keys([cohort])
    for p in parts:       # the members' order is kept inside each part
        assert [cohort.index(c) for c in p] == sorted(cohort.index(c) for c in p)
    assert sorted(sum(c.method == "vid" for c in p) for p in parts) == [1, 1, 1]   # the costly ones spread
    assert schedule.split_cohort(cohort, 99) == [[c] for c in cohort]       # at most one part per member
    assert schedule.split_cohort(cohort, 1) == [cohort]


def test_one_worker_keeps_every_cohort_whole_longest_first():
    small, big = _cohort(["kd"], seed=2), _cohort(["kd", "vid", "at"])
    assert schedule.plan_tasks([small, big], 1) == [big, small]


def test_quick_grid_on_two_workers_splits_only_the_last_rounds_cohort():
    cells = expand_grid(get_grid("quick"), "mini")
    cohorts = group_cohorts(cells)
    assert len(cohorts) == 9
    tasks = schedule.plan_tasks(cohorts, 2)
    assert _keys(tasks) == sorted(c.key() for c in cells)
    assert sorted(len(t) for t in tasks) == [8, 9] + [17] * 8     # one cohort in two parts
    assert [schedule.task_cost(t) for t in tasks] == sorted((schedule.task_cost(t) for t in tasks), reverse=True)
    assert schedule.makespan(tasks, 2) < 0.92 * schedule.makespan(cohorts, 2)


def test_more_workers_than_cohorts_spreads_the_students():
    cohorts = group_cohorts(expand_grid(get_grid("smoke"), "mini"))
    assert len(cohorts) == 2 and all(len(c) == 2 for c in cohorts)
    assert sorted(len(t) for t in schedule.plan_tasks(cohorts, 4)) == [1, 1, 1, 1]
    # Two equal cohorts on two workers: splitting would only add teacher forwards.
    assert sorted(len(t) for t in schedule.plan_tasks(cohorts, 2)) == [2, 2]


def test_a_split_that_gains_little_is_not_made(monkeypatch):
    cohorts = [_cohort(["kd", "at"], seed=s) for s in (1, 2, 3)]
    plan = schedule.plan_tasks(cohorts, 2)
    assert len(plan) > 3                           # 3 cohorts on 2 workers: worth splitting
    monkeypatch.setattr(schedule, "MIN_GAIN", 0.9)
    assert sorted(len(t) for t in schedule.plan_tasks(cohorts, 2)) == [2, 2, 2]


@pytest.mark.parametrize("workers", [1, 2, 3, 5, 16])
def test_every_run_is_planned_exactly_once(workers):
    cells = expand_grid(get_grid("calibration"), "mini") + expand_grid(get_grid("kd-ablation"), "mini")
    tasks = schedule.plan_tasks(group_cohorts(cells), workers)
    assert _keys(tasks) == sorted(c.key() for c in cells)
    assert all(t for t in tasks)
    assert schedule.makespan(tasks, workers) <= schedule.makespan(group_cohorts(cells), workers)


def test_sweep_runs_the_parts_of_a_split_cohort(tmp_path):
    """One cohort of four runs on four workers: four tasks, every run finished once."""
    grid = SweepGrid(name="one-cohort", run_preset="smoke", methods=("kd", "at"), rhos=(1.0,), seeds=(1,),
                     lambdas=(1.0, 10.0, 100.0))
    res = run_sweep(grid, tmp_path / "sw", execution=Execution(threads=1), run_fn=fake_train_run, progress=False,
                    workers=4)
    assert res.attrs["sweep"]["tasks"] == 4 and len(res) == 4 and res["test_accuracy"].notna().all()
    again = run_sweep(grid, tmp_path / "sw", execution=Execution(threads=1), run_fn=fake_train_run, progress=False,
                      workers=1)
    assert again.attrs["sweep"]["reused"] == 4


def test_no_split_keeps_every_cohort_whole(tmp_path, capsys):
    from reprolib.sweep import main

    grid = SweepGrid(name="one-cohort", run_preset="smoke", methods=("kd", "at"), rhos=(1.0,), seeds=(1,),
                     lambdas=(1.0, 10.0, 100.0))
    res = run_sweep(grid, tmp_path / "sw", execution=Execution(threads=1), run_fn=fake_train_run, progress=False,
                    workers=4, split=False)
    assert res.attrs["sweep"]["tasks"] == 1 and res.attrs["sweep"]["split"] is False
    assert main(["--preset", "smoke", "--out", str(tmp_path / "cli"), "--workers", "4", "--threads", "1",
                 "--no-split", "--no-progress", "--device", "cpu"], run_fn=fake_train_run) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == 2 and report["split"] is False      # the smoke grid's two cohorts, whole

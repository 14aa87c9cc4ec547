"""The adequate experiment: budgets in optimiser steps, a validation set that can
select, a λ grid wide enough, K/d <= 0.25, a calibration at a fixed step budget,
and a plan readable before running (``sweep --dry-run``)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from reprolib import sweep
from reprolib.results import select_lambda
from reprolib.config import make_config, optimizer_steps, split_sizes
from reprolib.grids import QUICK_LAMBDAS, expand_grid, fixed_step_variants, group_cohorts

DRY_RUN_KEYS = {"runs", "methods", "rhos", "seeds", "lambdas", "optimizer_steps_per_run",
                "train_images", "val_images", "test_images", "student", "teacher", "k_over_d"}


def _dry_run(*args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "reprolib", "sweep", "--dry-run", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)   # one JSON object, nothing else on stdout


def test_quick_dry_run_meets_the_adequacy_rules(tmp_path):
    plan = _dry_run("--world", "mini", "--preset", "quick", "--out", str(tmp_path / "s"))
    assert DRY_RUN_KEYS <= set(plan)
    assert plan["optimizer_steps_per_run"] >= 500
    assert set(QUICK_LAMBDAS) <= set(plan["lambdas"]) and {1.0, 10.0, 100.0, 1000.0} <= set(plan["lambdas"])
    assert plan["val_images"] >= 250
    assert plan["k_over_d"] <= 0.25
    assert plan["runs"] == 3 * 3 * (1 + 4 * 4)     # seeds x rho x (kd + 4 methods x 4 lambdas)
    assert (plan["student"], plan["teacher"]) == ("mini-student", "mini-teacher")
    assert not (tmp_path / "s").exists()            # a dry run writes nothing


def test_ablation_dry_run_reports_the_wide_pair():
    plan = _dry_run("--world", "mini", "--preset", "kd-ablation")
    assert plan["k_over_d"] == 0.5 and plan["student"] == "mini-student-wide"


def test_calibration_holds_the_step_budget_fixed():
    cells = expand_grid("calibration")
    assert {optimizer_steps(c) for c in cells} == {1200}
    assert {split_sizes(c.data)["val"] for c in cells} == {250}
    trains = sorted({split_sizes(c.data)["train"] for c in cells})
    assert [round(t / 5) for t in trains] == [20, 40, 80, 160]
    # Its 40-per-class cells are the quick grid's own: reused, not retrained.
    quick = {c.key() for c in expand_grid("quick")}
    assert len(quick & {c.key() for c in cells}) == 2 * 2 * 3


def test_fixed_step_variants_rejects_a_training_set_smaller_than_a_batch():
    from reprolib.errors import ReproError

    with pytest.raises(ReproError, match="fewer than a batch"):
        fixed_step_variants((0.01,))


def test_quick_cells_form_one_cohort_per_rho_and_seed():
    cohorts = group_cohorts(expand_grid("quick"))
    assert len(cohorts) == 9 and {len(c) for c in cohorts} == {17}


def test_select_lambda_selects_separately_per_student_and_training_size():
    rows = []
    for student, best in (("mini-student", 10.0), ("mini-student-wide", 100.0)):
        for lam in (10.0, 100.0):
            for seed in (1, 2):
                rows.append(dict(method="subdistill", rho=1.0, seed=seed, lambda_layer=lam,
                                 pool_per_class=250, train_per_class=40, student=student,
                                 val_accuracy=0.8 if lam == best else 0.5,
                                 test_accuracy=0.7 if lam == best else 0.4,
                                 nonoracle_val_accuracy=0.5, nonoracle_test_accuracy=0.5))
    summary = select_lambda(pd.DataFrame(rows), "oracle")
    chosen = dict(zip(summary["student"], summary["lambda_layer"]))
    assert chosen == {"mini-student": 10.0, "mini-student-wide": 100.0}
    assert all(math.isclose(v, 0.7) for v in summary["test_accuracy_mean"])


def test_paper_world_plan_says_what_it_cannot_know():
    plan = sweep.plan_summary("quick", "paper")
    assert plan["optimizer_steps_per_run"] is None and plan["train_images"] is None
    assert 0 < plan["k_over_d"] <= 0.25   # resnet101 -> mobilenetv4_conv_small
    assert make_config("paper", "quick").student == "mobilenetv4_conv_small"


def test_results_give_each_cohort_member_its_share_of_the_wall_time():
    from reprolib.results import _share

    assert _share(170.0, 17) == 10.0
    assert _share(12.5, None) == 12.5 and _share(12.5, 0) == 12.5   # older runs: no cohort size
    assert _share(None, 17) is None

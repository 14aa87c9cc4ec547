"""The tables and sentences the chapters take from the library (renovation: the
notebooks hold no logic of their own): results, verdicts, grids, precondition, explain,
data. Small hand-made tables; each test checks values, not only shapes."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pandas as pd

from reprolib import verdicts as V
from reprolib.config import make_config, optimizer_steps
from reprolib.grids import SMOKE_SIDE_GRIDS, get_grid, grid_for
from reprolib.results import (accuracy_table, convergence_table, describe_sweep, load_convergence,
                              runs_at_chosen_lambda, select_lambda, summary_table)


def results_table():
    """KD (no λ) and SubDistill at λ 1 and 10; λ 10 wins at ρ = 1 (oracle), λ 1 at ρ = 0;
    the non-oracle rule prefers λ 1 at ρ = 1."""
    rows = []
    for rho in (0.0, 1.0):
        for seed in (1, 2):
            rows.append({"method": "kd", "rho": rho, "seed": seed, "lambda_layer": math.nan, "student": "s",
                         "val_accuracy": 0.8 - 0.1 * rho, "test_accuracy": 0.8 - 0.1 * rho + 0.01 * seed,
                         "nonoracle_val_accuracy": 0.5, "nonoracle_test_accuracy": 0.6,
                         "run_dir": f"runs/kd-{rho}-{seed}", "optimizer_steps": 120})
            for lam, val in ((1.0, 0.7 if rho else 0.9), (10.0, 0.85 if rho else 0.6)):
                rows.append({"method": "subdistill", "rho": rho, "seed": seed, "lambda_layer": lam, "student": "s",
                             "val_accuracy": val, "test_accuracy": val - 0.01 * seed,
                             "nonoracle_val_accuracy": 0.9 if lam == 1.0 else 0.1,
                             "nonoracle_test_accuracy": 0.5, "run_dir": f"runs/sd-{rho}-{lam}-{seed}",
                             "optimizer_steps": 120})
    return pd.DataFrame(rows)


def test_summary_table_holds_both_selections():
    r = results_table()
    s = summary_table(r)
    assert list(s["selection"].unique()) == ["oracle", "nonoracle"]
    pd.testing.assert_frame_equal(s[s["selection"] == "oracle"].reset_index(drop=True), select_lambda(r, "oracle"))


def test_runs_at_chosen_lambda_keeps_every_seed_of_the_chosen_lambda():
    r = results_table()
    oracle = runs_at_chosen_lambda(r, "oracle")
    sd = oracle[oracle["method"] == "subdistill"]
    assert dict(zip(sd["run_dir"], sd["lambda_layer"])) == {
        "runs/sd-0.0-1.0-1": 1.0, "runs/sd-0.0-1.0-2": 1.0, "runs/sd-1.0-10.0-1": 10.0, "runs/sd-1.0-10.0-2": 10.0}
    assert len(oracle[oracle["method"] == "kd"]) == 4   # KD has no λ: all its runs
    nonoracle = runs_at_chosen_lambda(r, "nonoracle")
    assert set(nonoracle.loc[nonoracle["method"] == "subdistill", "lambda_layer"]) == {1.0}
    # ordered by group (method, then ρ), as select_lambda returns them
    assert list(oracle["method"]) == ["kd"] * 4 + ["subdistill"] * 4
    assert list(oracle["rho"]) == [0.0, 0.0, 1.0, 1.0] * 2


def test_accuracy_table_formats_both_rules():
    t = accuracy_table(summary_table(results_table()))
    assert list(t["method"]) == ["KD", "KD", "SubDistill", "SubDistill"]
    row = t[(t["method"] == "SubDistill") & (t["ρ"] == "1")].iloc[0]
    assert row["λ (oracle)"] == 10.0 and row["λ (non-oracle)"] == 1.0
    assert row["test accuracy (oracle)"] == "0.835 ± 0.007" and row["seeds"] == 2


def test_describe_sweep_counts_what_was_reused():
    r = results_table()
    r.attrs["sweep"] = {"reused": 5, "computed": 3}
    grid = get_grid("smoke")
    text = describe_sweep(grid, r, make_config("mini", "smoke"), "mini")
    assert "sweep grid **smoke**" in text and "120 optimiser steps" in text
    assert "methods KD (output only), SubDistill" in text
    assert text.endswith("12 finished runs: 5 reused from earlier builds, 3 trained now")


def _convergence(steps, lr, converged=(True, True)):
    return {"device": "cpu", "table": [
        {"method": m, "lambda_layer": lam, "steps": steps, "lr": lr, "steps_long": 3 * steps,
         "test_mean": 0.8, "test_std": 0.01, "test_mean_long": 0.81, "test_std_long": 0.01,
         "long_minus_quick": 0.01 * (i + 1), "converged": c}
        for i, (m, lam, c) in enumerate(zip(("kd", "subdistill"), (0.0, 100.0), converged))]}


def test_load_convergence_picks_the_current_recipe(tmp_path):
    cfg = make_config("mini", "quick")
    steps = optimizer_steps(cfg)
    (tmp_path / "convergence-quick-cpu.json").write_text(json.dumps(_convergence(steps, cfg.lr)))
    (tmp_path / "convergence-quick-old.json").write_text(json.dumps(_convergence(steps // 2, 1e-3, (True, False))))
    measured, older = load_convergence(tmp_path, cfg, "quick")
    assert measured[0] == "convergence-quick-cpu.json" and list(older) == ["convergence-quick-old.json"]
    t = convergence_table(measured[1])
    assert t["method"].iloc[0] == "KD (output only)" and t["method"].iloc[1].startswith("SubDistill")
    assert list(t["λ"]) == ["–", "100"] and list(t["change (points)"]) == ["+1.0", "+2.0"]
    text = V.finding_convergence_rule(measured, older, "quick", cfg)
    assert "**2 of 2 methods meet the rule.**" in text and "converged by this rule" in text
    assert "Earlier recipes" in text and f"at {steps // 2} steps, learning rate 0.001" in text
    none, _ = load_convergence(tmp_path, cfg.replace(lr=0.5), "quick")
    assert none is None
    assert "has no measured table" in V.finding_convergence_rule(None, {}, "quick", cfg)


def test_calibration_text_and_table():
    cal = pd.DataFrame({"optimizer_steps": [1200, 1200], "train_per_class": [20, 40], "pool_per_class": [25, 50]})
    effects = pd.DataFrame({"train_per_class": [20], "effect": ["kd_drop_rho0_to_rho1"], "mean": [0.05],
                            "std": [0.01], "n_seeds": [3], "se": [0.006]})
    text = V.calibration_text(get_grid("calibration"), cal, effects)
    assert text.startswith("Grid **calibration**: training parts of 20, 40 images per class, seeds [1, 2, 3]; "
                           "λ is fixed at 100 (no selection); every run takes the same 1200 optimiser steps")
    assert text.endswith(V.finding_calibration(effects))
    t = V.calibration_table(effects)
    assert "training images per class" in t.columns and "standard error" in t.columns
    assert t["effect"].iloc[0] != "kd_drop_rho0_to_rho1"   # labelled for readers


def test_kd_ablation_compares_the_two_students(tmp_path):
    def runs(student, width, gap):
        rows = []
        for rho in (0.0, 1.0):
            for seed in (1, 2):
                for m, lam in (("kd", math.nan), ("subdistill", 100.0), ("subdistill", 1.0)):
                    acc = 0.7 + (gap if m == "subdistill" and rho == 1.0 else 0.0) + 0.001 * seed
                    run_dir = f"runs/{student}-{m}-{rho}-{lam}-{seed}"
                    rows.append({"method": m, "rho": rho, "seed": seed, "lambda_layer": lam, "student": student,
                                 "val_accuracy": acc, "test_accuracy": acc, "run_dir": run_dir})
                    folder = tmp_path / run_dir
                    folder.mkdir(parents=True)
                    (folder / "metrics.json").write_text(json.dumps({"layers": [
                        {"student_shape": [width, 4, 4], "teacher_shape": [64, 4, 4]}]}))
        return pd.DataFrame(rows)

    main, wide = runs("mini-student", 16, 0.05), runs("mini-student-wide", 32, 0.02)
    wide = wide[wide["lambda_layer"].fillna(100.0) == 100.0]
    grid = SMOKE_SIDE_GRIDS["kd-ablation"].__class__(**{**SMOKE_SIDE_GRIDS["kd-ablation"].__dict__,
                                                        "lambdas": (100.0,)})
    ablation, labels, text = V.kd_ablation(main, wide, grid, tmp_path)
    assert labels == {"mini-student": "default student (K/d = 0.25)", "mini-student-wide": "wide student (K/d = 0.5)"}
    # the main grid's λ = 1 runs are not the ablation's: only λ 100 enters
    assert set(ablation.loc[ablation["method"] == "subdistill", "lambda_layer"]) == {100.0}
    assert text.startswith("Both students at λ = 100 (fixed, not selected). SubDistill − KD at ρ = 1: "
                           "default student (K/d = 0.25): +5.0")
    assert "wide student (K/d = 0.5): +2.0" in text


def test_digit_confusion_sentence():
    import numpy as np

    digit = np.array([0, 1, 2, 3, 4] * 4)
    assert "100% of the images with digit k" in V.finding_digit_confusion(digit, digit, 5)
    assert "follows the digit" in V.finding_digit_confusion(digit, digit, 5)
    assert "mostly ignores" in V.finding_digit_confusion(digit, (digit + 1) % 5, 5)
    assert "no digit to follow" in V.finding_digit_confusion(digit[:0], digit[:0], 5)


def test_grid_for_gives_the_smoke_side_grids_only_at_smoke():
    assert grid_for("calibration", "smoke").name == "calibration-smoke"
    assert grid_for("kd-ablation", "smoke").overrides == {"student": "mini-student-wide"}
    assert grid_for("calibration", "quick") is get_grid("calibration")
    assert grid_for("quick", "smoke") is get_grid("quick")


def test_contrast_table_has_every_world_rule_and_effect():
    from reprolib.precondition import contrast_table

    rows = []
    for rho in (0.0, 1.0):
        for seed in (1, 2):
            for m, lam in (("kd", math.nan), ("subdistill", 100.0)):
                acc = 0.8 - (0.1 * rho if m == "kd" else 0.0) + 0.01 * seed
                rows.append({"method": m, "rho": rho, "seed": seed, "lambda_layer": lam, "test_accuracy": acc,
                             "nonoracle_test_accuracy": acc})
    r = pd.DataFrame(rows)
    t = contrast_table({"this": r, "contrast": r}, 100.0)
    assert len(t) == 2 * 2 * 2
    kd = t[(t["world"] == "this") & (t["selection"] == "oracle") & (t["effect"].str.startswith("KD"))].iloc[0]
    assert kd["points"].startswith("+10.0") and kd["seeds"] == 2


def test_explanation_tables_use_the_book_names():
    from reprolib.explain import knn_table, lrp_table

    k = knn_table(pd.DataFrame({"method": ["subdistill"], "rho": [1.0], "knn_class_mean": [0.9]}))
    assert list(k.columns) == ["method", "ρ", "class agreement"] and k["method"].iloc[0] == "SubDistill"
    lt = lrp_table(pd.DataFrame({"method": ["kd"], "corr_mean": [0.5]}))
    assert list(lt.columns) == ["method", "correlation (mean)"] and lt["method"].iloc[0] == "KD"


def test_agreement_table_counts_digits_per_split():
    from reprolib.data import agreement_table

    world = SimpleNamespace(summary=lambda: {"train": {"n": 10, "with_digit": 10, "digit_equals_label": 10},
                                             "test": {"n": 10, "with_digit": 0, "digit_equals_label": 0}})
    t = agreement_table({1.0: world})
    assert list(t["split"]) == ["train", "test"] and list(t["ρ"]) == ["1", "1"]
    assert t["share of digits = label"].iloc[0] == 1.0 and math.isnan(t["share of digits = label"].iloc[1])

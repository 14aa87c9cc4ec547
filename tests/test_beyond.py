"""The "Beyond the paper" part: chapter 8 (how many aligned layers) and chapter 9 (what deeper
alignment costs): their grids, tables, rules and figures, without training."""

from __future__ import annotations

import math
import subprocess
import sys

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")

from reprolib import cost, figures, verdicts  # noqa: E402
from reprolib.config import MINI_LAYER_PAIRS, MINI_PAIR_SETS  # noqa: E402
from reprolib.errors import ReproError  # noqa: E402
from reprolib.grids import expand_grid, grid_for  # noqa: E402
from reprolib.results import select_lambda, summary_table, with_pair_counts  # noqa: E402


def test_the_pair_sets_grow_from_the_deepest():
    assert [len(MINI_PAIR_SETS[n]) for n in cost.PAIR_COUNTS] == [1, 2, 4, 8]
    assert MINI_PAIR_SETS[1] == (("layer4", "layer4"),) and MINI_PAIR_SETS[4] == MINI_LAYER_PAIRS
    assert set(MINI_PAIR_SETS[2]) <= set(MINI_PAIR_SETS[4]) <= set(MINI_PAIR_SETS[8])
    assert len(set(MINI_PAIR_SETS[8])) == 8
    assert cost.cases()[0] == ("kd", 0) and len(cost.cases()) == 1 + 4 * 4


# ---------------------------------------------------------------------------
# Chapter 8: the grid and its rule
def test_the_aligned_layers_grid_reuses_the_quick_grids_four_pair_cells():
    cells = expand_grid(grid_for("aligned-layers", "quick"), "mini")
    counts = pd.Series([len(c.layer_pairs) for c in cells]).value_counts().to_dict()
    assert counts == {1: 48, 2: 48, 4: 48} and {c.method for c in cells} == {"at", "subdistill"}
    quick = {c.key() for c in expand_grid("quick", "mini")}
    four = {c.key() for c in cells if len(c.layer_pairs) == 4}
    assert four <= quick                                      # reused, not retrained
    assert not ({c.key() for c in cells if len(c.layer_pairs) < 4} & quick)
    smoke = expand_grid(grid_for("aligned-layers", "smoke"), "mini")
    assert {c.preset for c in smoke} == {"smoke"} and sorted({len(c.layer_pairs) for c in smoke}) == [1, 2, 4]


def _pairs_table(acc: dict, seeds=(1, 2, 3), noise=0.01) -> pd.DataFrame:
    """Runs of one method at ρ = 1 with ``acc[(pairs, λ)]`` test accuracy; the validation
    accuracy equals the test accuracy, so λ is selected by it."""
    rows = []
    for (pairs, lam), a in acc.items():
        for s in seeds:
            t = a + noise * (s - 2)
            rows.append(dict(method="subdistill", rho=1.0, seed=s, lambda_layer=lam, val_accuracy=t, test_accuracy=t,
                             nonoracle_val_accuracy=t, nonoracle_test_accuracy=t, layer_pair_count=pairs))
    return pd.DataFrame(rows)


def test_lambda_is_selected_per_pair_count():
    table = _pairs_table({(1, 10.0): 0.6, (1, 100.0): 0.7, (4, 10.0): 0.8, (4, 100.0): 0.5})
    chosen = select_lambda(table).set_index("layer_pair_count")["lambda_layer"].to_dict()
    assert chosen == {1: 100.0, 4: 10.0}


@pytest.mark.parametrize("many, verdict", [(0.80, verdicts.MORE_HELP), (0.70, verdicts.NO_DIFFERENCE),
                                           (0.60, verdicts.FEWER_BETTER)])
def test_the_aligned_layers_rule(many, verdict):
    summary = summary_table(_pairs_table({(1, 10.0): 0.70, (2, 10.0): 0.72, (4, 10.0): many}))
    (row,) = verdicts.aligned_layers_effects(summary, "oracle")
    assert (row["fewest"], row["most"], row["verdict"]) == (1, 4, verdict)
    assert row["difference"] == pytest.approx(many - 0.70)
    assert row["se"] == pytest.approx(math.sqrt(2) * 0.01 / math.sqrt(3))
    text = verdicts.finding_aligned_layers(summary, "nonoracle")
    assert verdict in text and "non-oracle" in text and "4 pairs minus 1" in text
    table = verdicts.aligned_layers_table(summary)
    assert list(table["pairs"]) == [1, 2, 4] and table["λ (oracle)"].tolist() == ["10"] * 3


def test_the_aligned_layers_rule_notes_a_single_seed_and_a_missing_count():
    one = summary_table(_pairs_table({(1, 1.0): 0.70, (4, 1.0): 0.71}, seeds=(1,)))
    (row,) = verdicts.aligned_layers_effects(one)
    assert row["verdict"] == verdicts.MORE_HELP and row["n_seeds"] == 1
    assert "one seed: no noise estimate" in verdicts.finding_aligned_layers(one)
    single = summary_table(_pairs_table({(4, 1.0): 0.70}))
    assert verdicts.aligned_layers_effects(single) == []
    assert "nothing to compare" in verdicts.finding_aligned_layers(single)


def test_with_pair_counts_reads_the_cells_and_refuses_foreign_runs():
    cells = expand_grid(grid_for("aligned-layers", "smoke"), "mini")
    kd = expand_grid("smoke", "mini")[0]
    table = pd.DataFrame({"config_key": [cells[0].key(), kd.key()], "method": [cells[0].method, "kd"]})
    out = with_pair_counts(table, cells + [kd])
    assert out["layer_pair_count"].tolist() == [len(cells[0].layer_pairs), 0]
    with pytest.raises(ReproError, match="not cells of the grid"):
        with_pair_counts(table, cells)


def test_accuracy_vs_pairs_draws_a_panel_per_rho():
    t = pd.concat([_pairs_table({(1, 1.0): 0.6, (2, 1.0): 0.65, (4, 1.0): 0.7}),
                   _pairs_table({(1, 1.0): 0.8, (4, 1.0): 0.8}).assign(rho=0.0)])
    kd = pd.DataFrame([dict(method="kd", rho=r, seed=s, lambda_layer=math.nan, val_accuracy=0.5, test_accuracy=0.5,
                            nonoracle_val_accuracy=0.5, nonoracle_test_accuracy=0.5, layer_pair_count=0)
                       for r in (0.0, 1.0) for s in (1, 2)])
    fig = figures.accuracy_vs_pairs(summary_table(pd.concat([t, kd])))
    axes = fig.get_axes()
    assert [a.get_title() for a in axes] == ["ρ = 0", "ρ = 1"]
    assert [tick.get_text() for tick in axes[0].get_xticklabels()] == ["1", "2", "4"]
    assert any("no layer pairs" in text.get_text() for text in axes[-1].get_legend().get_texts())


# ---------------------------------------------------------------------------
# Chapter 9: the cost report, its rule and figure
def _report(at8=(1.30, 1.25, 1.35), vid8=(1.05, 0.95, 1.15), memory=True, rounds=3) -> dict:
    def row(method, pairs, ratio, lo, hi, mib=None):
        r = {"method": method, "pairs": pairs, "ms_per_step": 50 * ratio, "step_ratio_to_kd": ratio,
             "step_ratio_min": lo, "step_ratio_max": hi}
        if memory:
            m = mib or (10.0, 9.0, 11.0)
            r.update(peak_step_mib=m[0], peak_step_mib_min=m[1], peak_step_mib_max=m[2], memory_ratio_to_kd=m[0] / 10)
        return r

    rows = [row("kd", 0, 1.0, 1.0, 1.0),
            row("at", 1, 1.00, 0.95, 1.05), row("at", 8, *at8),
            row("vid", 1, 1.00, 0.90, 1.10, (12.0, 11.0, 13.0)), row("vid", 8, *vid8, (60.0, 58.0, 62.0))]
    return {"rows": rows, "rounds": rounds}


def test_the_cost_rule_reads_only_ranges_that_do_not_overlap():
    growth = verdicts.alignment_cost_growth(_report())
    assert growth["at"]["time"] is True and growth["vid"]["time"] is False       # 1.25 > 1.05; 0.95 < 1.10
    assert growth["at"]["memory"] is False and growth["vid"]["memory"] is True   # 9 < 11; 58 > 13
    text = verdicts.finding_alignment_cost(_report())
    assert "From 1 layer pair to 8 layer pairs, the training step costs more for AT and not measurably more for VID" in text
    assert "At 8 layer pairs AT is the costliest, 1.30×" in text and "VID 12 → 60 MiB" in text and "KD's step peaks at 10 MiB" in text
    assert "one round" in verdicts.finding_alignment_cost(_report(rounds=1))
    assert "grows for VID (one measurement per case" in verdicts.finding_alignment_cost(dict(_report(), memory_repeats=1))
    assert "MiB" not in verdicts.finding_alignment_cost(_report(memory=False))
    assert "nothing to compare" in verdicts.finding_alignment_cost({"rows": [_report()["rows"][0]]})
    # Memory taken at fewer counts than time: its ends are the counts that have it.
    report = _report()
    report["rows"].insert(3, dict(report["rows"][2], pairs=16, step_ratio_min=1.4, step_ratio_max=1.5, peak_step_mib=None,
                                  peak_step_mib_min=None, peak_step_mib_max=None, memory_ratio_to_kd=None))
    growth = verdicts.alignment_cost_growth(report)["at"]
    assert (growth["high"], growth["mib_pairs"], growth["memory"]) == (16, (1, 8), False)
    assert "not measured" in cost.cost_table(report)["peak MiB"].tolist()
    assert len(figures.alignment_cost(report).get_axes()) == 2
    with pytest.raises(ReproError, match="for the memory"):
        cost.alignment_cost("smoke", memory_counts=(3,))


def test_the_cost_figure_and_table():
    fig = figures.alignment_cost(_report())
    assert len(fig.get_axes()) == 2
    assert [t.get_text() for t in fig.get_axes()[0].get_xticklabels()] == ["1", "8"]
    assert len(figures.alignment_cost(_report(memory=False)).get_axes()) == 1
    table = cost.cost_table(_report())
    assert table["× KD (step)"].tolist()[1] == "1.00 [0.95–1.05]" and "peak MiB" in table.columns


def test_cost_study_keeps_a_report_per_machine(tmp_path, monkeypatch):
    calls = []

    def fake(preset, steps, rounds, threads, device, teacher_recipe=None, memory=True, memory_repeats=1,
             memory_counts=None, isolate=True, progress=None):
        calls.append((preset, steps, rounds, memory_repeats, memory_counts))
        import torch

        return {"machine": cost.machine(threads),
                "torch": torch.__version__, "device": device, "preset": preset, "steps": steps, "rounds": rounds,
                "memory_repeats": memory_repeats if memory else 0, "memory_counts": list(memory_counts) if memory else [],
                "isolate": isolate,
                "seconds": 1.0, "rows": _report()["rows"]}

    monkeypatch.setattr(cost, "alignment_cost", fake)
    out = tmp_path / "cost.json"
    first = cost.cost_study("smoke", out=out)
    again = cost.cost_study("smoke", out=out)
    assert (first["reused"], again["reused"]) == (False, True) and calls == [("smoke", 1, 2, 1, (1, 8))]
    assert cost.cost_study("smoke", out=out, remeasure=True)["reused"] is False
    assert cost.cost_study("smoke", out=out, threads=2)["reused"] is False      # another setting: measured
    assert len(calls) == 3
    with pytest.raises(ReproError, match="mini pair"):
        cost.cost_study("smoke", world="paper", out=out)
    with pytest.raises(ReproError, match="unknown preset"):
        cost.cost_study("huge", out=out)


def test_cost_settings_are_checked_before_any_work():
    with pytest.raises(ReproError, match="steps must be a positive integer"):
        cost.alignment_cost("smoke", steps=0)
    with pytest.raises(ReproError, match="no pair set of 3"):
        cost.cost_config("at", 3, preset="smoke")
    proc = subprocess.run([sys.executable, "-m", "reprolib.cost", "fitnet:2", "--preset", "smoke"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error: no case 'fitnet:2'")


# ---------------------------------------------------------------------------
# The results page's section: it reads, never trains or measures
def test_findings_say_what_has_not_run(tmp_path, monkeypatch):
    from reprolib import studies

    monkeypatch.setenv("REPROLIB_CACHE", str(tmp_path / "cache"))
    lines = studies.findings("mini", "smoke", tmp_path / "sweep", device="cpu")
    assert lines[0].startswith("**How many aligned layers** (chapter 8): not run yet (0 of 12 runs finished)")
    assert "not measured yet on this machine" in lines[1]
    assert not (tmp_path / "sweep").exists()                   # nothing was run
    # A kept report of this machine is read and judged.
    report = dict(_report(), machine=cost.machine(1),
                  torch=__import__("torch").__version__, device="cpu", preset="smoke", steps=1, rounds=2,
                  memory_repeats=1, memory_counts=[1, 8], isolate=False)
    from reprolib.io import write_json

    write_json(cost.study_path("smoke", "cpu", 1), report)
    assert "the training step costs more for AT" in studies.findings("mini", "smoke", tmp_path / "sweep", device="cpu")[1]
    assert "mini world only" in studies.findings("paper", "smoke")[0]


@pytest.mark.slow
def test_the_aligned_layers_study_runs_resumes_and_is_found(tmp_path):
    from reprolib import studies

    run = dict(workers=1, progress=False)
    first = studies.aligned_layers("mini", "smoke", tmp_path, run=run)
    assert (first["finished"], first["cells"], len(first["new"])) == (12, 12, 10)   # 2 are the smoke grid's own
    assert set(first["summary"]["layer_pair_count"]) == {0, 1, 2, 4}
    again = studies.aligned_layers("mini", "smoke", tmp_path, run=run)
    assert again["study"].attrs["sweep"]["computed"] == 0                          # resumed: nothing retrained
    line = studies.findings("mini", "smoke", tmp_path, device="cpu")[0]
    assert "Under the oracle rule" in line and "SubDistill at ρ = 1" in line


# ---------------------------------------------------------------------------
# The biased teacher (the recipe of the planned biased-teacher chapter)
def test_the_bias_fields_do_not_move_the_existing_teachers_caches():
    from reprolib.teacher import recipe

    # The keys of the recipes trained before the bias fields existed (their cache folders).
    assert {n: recipe(n).key() for n in ("1-epoch", "10-epoch", "20-epoch", "smoke")} == {
        "1-epoch": "d1d0d1d1814fcad0", "10-epoch": "d6e67a7889d1be15", "20-epoch": "5693af5137fecd99",
        "smoke": "4b1e95fbb09abc68"}
    assert recipe("10-epoch-biased").key() != recipe("10-epoch").key()
    assert recipe("10-epoch-biased").epochs == recipe("10-epoch").epochs == 10


def test_the_biased_teachers_training_digits_follow_the_protocol():
    import numpy as np
    import torch

    from reprolib.teacher import paste_training_digits, recipe, training_digit_plan

    tcfg = recipe("smoke-biased")
    labels = np.repeat(np.arange(10), 7)           # 7 images of each of the ten classes
    plan, bank = training_digit_plan(labels, tcfg)
    for k, c in enumerate(tcfg.digit_classes):
        rows = np.flatnonzero(labels == c)
        assert plan.has_digit[rows].sum() == 3 and set(plan.digit[rows][plan.has_digit[rows]]) == {k}
        assert all(bank.labels[e] == k for e in plan.exemplar[rows][plan.has_digit[rows]])
    others = ~np.isin(labels, tcfg.digit_classes)
    assert not plan.has_digit[others].any()
    again, _ = training_digit_plan(labels, tcfg)
    assert (again.exemplar == plan.exemplar).all()                       # fixed per image
    x = torch.zeros(len(labels), 1, 32, 32)
    y = paste_training_digits(x, labels, tcfg)
    has = torch.from_numpy(plan.has_digit)
    assert torch.equal(y[has][:, 0, :8, :8], bank.images[torch.from_numpy(plan.exemplar[plan.has_digit])])
    assert y[~has].abs().sum() == 0 and y[has][:, :, 8:, :].abs().sum() == 0
    with pytest.raises(ReproError, match="outside"):
        training_digit_plan(labels, tcfg.__class__(digit_share=1.5))


def test_the_digit_following_rule():
    assert verdicts.follows_digit(0.30, 400) and not verdicts.follows_digit(0.21, 400)   # se at chance: 0.02
    assert not verdicts.follows_digit(float("nan"), 400) and not verdicts.follows_digit(0.9, 0)
    text = verdicts.finding_teacher_bias([
        {"teacher_recipe": "10-epoch", "classes": 5, "predicts_digit_differs": 0.19, "n_digit_differs": 2000,
         "accuracy_digit_differs": 0.88},
        {"teacher_recipe": "10-epoch-biased", "classes": 5, "predicts_digit_differs": 0.61, "n_digit_differs": 2000,
         "accuracy_digit_differs": 0.35}])
    assert "`10-epoch` does not follow the digit beyond chance" in text
    assert "`10-epoch-biased` follows the digit" in text and "61.0 % (chance 20 %)" in text


@pytest.mark.slow
def test_a_biased_smoke_teacher_is_trained_cached_and_measured():
    from reprolib import studies

    clean = studies.teacher_digit_following("smoke", preset="smoke")
    biased = studies.teacher_digit_following("smoke-biased", preset="smoke")
    assert clean["n_digit_differs"] == biased["n_digit_differs"] > 0
    assert 0.0 <= biased["predicts_digit_differs"] <= 1.0 and biased != clean
    assert studies.teacher_digit_following("smoke-biased", preset="smoke") == biased       # cached
    with pytest.raises(ReproError, match="mini teacher"):
        studies.teacher_digit_following("smoke", world="paper", preset="smoke")


def _bias_table(follow: dict, seeds=(1, 2, 3), noise=0.02) -> pd.DataFrame:
    """Runs with ``follow[(method, rho, teacher)]`` digit-following."""
    rows = []
    for (method, rho, teacher), f in follow.items():
        for s in seeds:
            rows.append(dict(method=method, rho=rho, seed=s, teacher=teacher, test_accuracy=0.8,
                             predicts_digit_differs_rho1=f + noise * (s - 2), knn_digit=0.3))
    return pd.DataFrame(rows)


TEACHERS = [{"teacher_recipe": "10-epoch", "classes": 5, "predicts_digit_differs": 0.18, "n_digit_differs": 2000,
             "accuracy_digit_differs": 0.88, "accuracy": 0.9, "knn_digit": 0.21},
            {"teacher_recipe": "10-epoch-biased", "classes": 5, "predicts_digit_differs": 0.70, "n_digit_differs": 2000,
             "accuracy_digit_differs": 0.25, "accuracy": 0.5, "knn_digit": 0.6}]


def test_the_biased_teacher_rule():
    table = _bias_table({("kd", 1.0, "book"): 0.5, ("kd", 1.0, "biased"): 0.9,
                         ("subdistill", 0.0, "book"): 0.2, ("subdistill", 0.0, "biased"): 0.21,
                         ("subdistill", 1.0, "book"): 0.3, ("subdistill", 1.0, "biased"): 0.2})
    rows = {(r["method"], r["rho"]): r for r in verdicts.biased_teacher_effects(table)}
    assert rows[("kd", 1.0)]["verdict"] == verdicts.TAKES_BIAS
    assert rows[("subdistill", 0.0)]["verdict"] == verdicts.NO_MORE_BIAS
    assert rows[("subdistill", 1.0)]["verdict"] == verdicts.LESS_BIAS
    assert rows[("kd", 1.0)]["difference"] == pytest.approx(0.4)
    text = verdicts.finding_biased_teacher(table, TEACHERS)
    assert "`10-epoch-biased` follows the digit" in text and "Not beyond seed noise" in text
    assert "KD 90.0 % vs 50.0 % (takes on the teacher's bias" in text
    took = _bias_table({("subdistill", 1.0, "book"): 0.2, ("subdistill", 1.0, "biased"): 0.6})
    assert "Does SubDistill transfer the teacher's bias?** Yes, at ρ = 1" in verdicts.finding_biased_teacher(took, TEACHERS)
    unbiased = [TEACHERS[0], dict(TEACHERS[1], predicts_digit_differs=0.2)]
    assert "This world cannot say" in verdicts.finding_biased_teacher(took, unbiased)
    t = verdicts.biased_teacher_table(table)
    assert list(t.columns[:4]) == ["method", "ρ", "teacher", "seeds"] and len(t) == 6
    assert verdicts.teacher_table(TEACHERS)["follows the digit"].tolist() == ["no", "yes"]
    fig = figures.digit_following_by_teacher(table, TEACHERS)
    assert [a.get_title() for a in fig.get_axes()] == ["students distilled at ρ = 0", "students distilled at ρ = 1"]


@pytest.mark.slow
def test_the_biased_teacher_study_at_smoke(tmp_path, monkeypatch):
    from reprolib import studies

    assert studies.biased_teacher("mini", "smoke", tmp_path / "mini-smoke", run=None)["table"] is None   # reads only
    study = studies.biased_teacher("mini", "smoke", tmp_path / "mini-smoke", run=dict(workers=1, progress=False))
    assert study["folder"] == tmp_path / "mini-smoke-biased-teacher" and study["finished"] == study["cells"] == 4
    table = study["table"]
    assert sorted(table["teacher"].unique()) == ["biased", "book"] and len(table) == 8
    assert table["predicts_digit_differs_rho1"].between(0, 1).all() and table["knn_digit"].between(0, 1).all()
    assert [t["teacher_recipe"] for t in study["teachers"]] == ["smoke", "smoke-biased"]
    # The results page reads what the chapter measured: no student is loaded again.
    kept = study["folder"] / "digit-following-biased.json"
    assert kept.is_file() and (study["folder"] / "digit-following-book.json").is_file()

    def no_loading(*a, **k):
        raise AssertionError("a student was measured again")

    monkeypatch.setattr("reprolib.rundirs.load_student", no_loading)
    again = studies.biased_teacher("mini", "smoke", tmp_path / "mini-smoke", run=None)["table"]
    pd.testing.assert_frame_equal(again, table)
    line = studies.findings("mini", "smoke", tmp_path / "mini-smoke", device="cpu")[2]
    assert line.startswith("**A biased teacher** (chapter 10): The teacher `smoke`")
    # A cache kept for another kNN size is not used.
    monkeypatch.undo()
    import json
    kept.write_text(json.dumps({"knn_images": 5, "runs": {r: [1.0, 1.0, 1.0] for r in table["run_dir"]}}))
    assert studies.biased_teacher("mini", "smoke", tmp_path / "mini-smoke", run=None)["table"].equals(table)


# ---------------------------------------------------------------------------
# Chapter 11: the map of conditions
def test_the_maps_axes_are_the_ladders_two_largest_knobs():
    from pathlib import Path

    from reprolib import precondition
    from reprolib.grids import CONDITIONS_CROPS, CONDITIONS_TEACHERS, conditions_grid

    knobs = precondition.ladder_knobs(precondition.load_ladder(Path(__file__).resolve().parents[1] / "benchmarks" / "results"))
    assert [k["knob"] for k in knobs[:2]] == [["teacher_recipe"], ["crop_scale"]]
    assert "The map's axes are the first two" in verdicts.finding_map_axes(knobs)
    assert "not chosen by it" in verdicts.finding_map_axes([])
    # The map holds the main world and the first book's world.
    assert {"1-epoch", "10-epoch"} <= set(CONDITIONS_TEACHERS) and (0.5, 1.0) in CONDITIONS_CROPS
    cells = expand_grid(conditions_grid("quick", 100.0), "mini")
    assert len(cells) == 9 * 2 * 2 * 3
    quick = {c.key() for c in expand_grid("quick", "mini")}
    main_cell = {c.key() for c in cells if c.teacher_recipe == "10-epoch" and c.data.crop_scale == (0.5, 1.0)}
    assert len(main_cell) == 12 and main_cell <= quick


def test_the_most_selected_lambda():
    s = pd.DataFrame({"method": ["subdistill"] * 4 + ["kd"], "lambda_layer": [10.0, 100.0, 100.0, 10.0, math.nan]})
    assert verdicts.most_selected_lambda(s) == 10.0                    # a tie goes to the smaller
    assert verdicts.most_selected_lambda(s.iloc[1:]) == 100.0
    with pytest.raises(ValueError):
        verdicts.most_selected_lambda(s, "at")


def _map_table(cells: dict, seeds=(1, 2, 3)) -> pd.DataFrame:
    """``cells[(teacher, crop)] = (kd0, kd1, sub1)`` test accuracies; per-seed noise 0.01."""
    rows = []
    for (teacher, crop), (kd0, kd1, sub1) in cells.items():
        for s in seeds:
            e = 0.01 * (s - 2)
            for method, rho, acc in (("kd", 0.0, kd0 + e), ("kd", 1.0, kd1 - e), ("subdistill", 1.0, sub1 + e)):
                rows.append(dict(teacher_recipe=teacher, crop_min=crop, method=method, rho=rho, seed=s,
                                 test_accuracy=acc, nonoracle_test_accuracy=acc))
    return pd.DataFrame(rows)


def test_the_conditions_rule_and_figure():
    table = _map_table({("1-epoch", 0.5): (0.80, 0.78, 0.78), ("3-epoch", 0.5): (0.82, 0.70, 0.78),
                        ("10-epoch", 0.5): (0.82, 0.62, 0.80), ("10-epoch", 0.08): (0.80, 0.70, 0.74)})
    effects = verdicts.conditions_effects(table).set_index(["teacher_recipe", "crop_min"])
    assert effects.loc[("10-epoch", 0.5), "kd_drop"] == pytest.approx(0.20)
    assert effects.loc[("10-epoch", 0.5), "lead"] == pytest.approx(0.18)
    assert effects.loc[("10-epoch", 0.5), "kd_drop_se"] == pytest.approx(0.02 / math.sqrt(3))   # paired by seed
    assert bool(effects.loc[("10-epoch", 0.5), "drop_met"]) and not bool(effects.loc[("1-epoch", 0.5), "drop_met"])
    assert not bool(effects.loc[("1-epoch", 0.5), "lead_beyond_noise"])
    text = verdicts.finding_conditions(effects.reset_index())
    assert "in 3 of 4 cells" in text and "tracks KD's drop (Pearson r = " in text
    flat = _map_table({("a", 0.5): (0.8, 0.7, 0.7), ("b", 0.5): (0.8, 0.6, 0.6)})
    assert "cannot say" in verdicts.finding_conditions(verdicts.conditions_effects(flat))
    fig = figures.conditions_map(effects.reset_index(), main=("10-epoch", 0.5), first=("1-epoch", 0.5))
    assert len(fig.get_axes()) == 4 and len(fig.get_axes()[0].patches) == 2      # two heatmaps, two colour bars
    # A negative drop sits on the sequential map's lightest colour: its text is black, not white.
    neg = _map_table({("a", 0.5): (0.70, 0.74, 0.74), ("b", 0.5): (0.80, 0.60, 0.60)})
    texts = {t.get_text().split("\n")[0]: t.get_color() for t in
             figures.conditions_map(verdicts.conditions_effects(neg)).get_axes()[0].texts}
    assert texts["-4.0"] == "black" and texts["+20.0"] == "white"


@pytest.mark.slow
def test_the_conditions_map_at_smoke(tmp_path):
    from reprolib import studies

    assert studies.conditions_map("mini", "smoke", tmp_path, run=None)["effects"] is None      # reads only
    study = studies.conditions_map("mini", "smoke", tmp_path, run=dict(workers=1, progress=False))
    assert study["lambda"] == 1.0 and study["finished"] == study["cells"] == 8
    assert len(study["new"]) == 4                                   # the crop-0.5 cell is the smoke grid's own
    assert sorted(study["effects"]["crop_min"]) == [0.08, 0.5]
    assert studies.findings("mini", "smoke", tmp_path, device="cpu")[3].startswith("**When does the artifact win?** (chapter 11): SubDistill")


def test_a_failed_memory_process_is_one_clear_error():
    with pytest.raises(ReproError, match=r"measuring the memory of kd at 0 pair\(s\) failed: error: .*preset"):
        cost.peak_memory(preset="huge", counts=(1,), parallel=2)
    with pytest.raises(ReproError, match="positive integers"):
        cost.peak_memory(preset="smoke", parallel=0)


def test_knn_digit_takes_exactly_the_first_n_images_in_chunks_of_256():
    """Chapter 10 at quick asked for 600 of a larger test set: the last chunk must stop
    at 600, not run on to 768 (the quick build failed there; smoke sets are smaller
    than one chunk, so they never showed it)."""
    import numpy as np
    import torch

    from reprolib import studies
    from reprolib.embedding import knn_agreement

    class World:
        def tensors(self, split):
            assert split == "test"
            g = torch.Generator().manual_seed(0)
            d = torch.arange(700) % 5
            x = torch.randn(700, 1, 4, 4, generator=g) + d.view(-1, 1, 1, 1).float()   # the digit is in the pixels
            return x, torch.zeros(700, dtype=torch.long), d

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1))
    with torch.no_grad():
        model[0].weight.fill_(1.0), model[0].bias.zero_()
    for n in (600, 256, 700, 5000):
        got = studies._knn_digit(model, "0", World(), n)
        x, _, d = World().tensors("test")
        m = min(n, 700)
        expected = knn_agreement(x[:m].mean(dim=(2, 3)).repeat(1, 3).numpy(), d[:m].numpy())
        assert got == pytest.approx(expected), n
        assert got > 0.5   # far above chance (0.2): the feature is the digit plus noise

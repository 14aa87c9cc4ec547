"""The book's reading of the precondition ladder (reprolib.precondition): tables, sentences, the contrast."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from reprolib import precondition as P
from reprolib.config import MAIN_VARIANT, get_variant

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def _drop(rung, mean, se, met):
    return {"rung": rung, "mean": mean, "std": se * 3 ** 0.5, "n": 3, "se": se, "met": met}


def _ladder(tmp_path, chosen="converged-teacher", met=True):
    tried = []
    for rung, var, mean, se, m in (("a", "one-epoch-teacher", 0.02, 0.004, False),
                                   ("b", "converged-teacher", 0.15, 0.02, True)):
        report = {"rung": rung, "variant": {"name": var, "description": f"rung {rung}"},
                  "means": {"0": {"test_accuracy": {"mean": 0.8, "std": 0.01, "n": 3}},
                            "1": {"test_accuracy": {"mean": 0.8 - mean, "std": 0.02, "n": 3},
                                  "predicts_digit_differs": {"mean": 0.3, "std": 0.05, "n": 3}}},
                  "teacher_signal": {"1": {"agreement": 0.9, "top_probability": 0.5, "digit_only_floor": 1.0}},
                  "convergence": {"long_minus_short": 0.01, "within": True}}
        f = f"precondition-{rung}-{var}.json"
        (tmp_path / f).write_text(json.dumps(report))
        tried.append({"rung": rung, "variant": var, "file": f, "drop_oracle": _drop(rung, mean, se, m),
                      "drop_nonoracle": _drop(rung, mean * 2, se, m)})
    ladder = {"tried": tried, "chosen_variant": chosen,
              "choice": {"chosen": "b", "met": met, "sentence": "The precondition holds on rung 'b'."}}
    (tmp_path / "precondition-ladder.json").write_text(json.dumps(ladder))
    return ladder


def test_no_ladder_says_so(tmp_path):
    assert P.load_ladder(tmp_path) is None
    assert "has not been run" in P.finding_precondition(None, "converged-teacher")


def test_ladder_table_has_one_row_per_rung_in_order(tmp_path):
    _ladder(tmp_path)
    ladder = P.load_ladder(tmp_path)
    t = P.ladder_table(ladder)
    assert list(t["rung"]) == ["a", "b"] and list(t["met"]) == [False, True]
    assert list(t["drop, oracle (points)"]) == ["2.0 ± 0.4", "15.0 ± 2.0"]
    assert t.loc[1, "KD ρ=1 (%)"] == "65.0 ± 2.0" and t.loc[1, "follows the digit (%)"] == "30.0 ± 5.0"


def test_the_sentence_flags_a_build_on_another_world(tmp_path):
    ladder = P.load_ladder(tmp_path) if _ladder(tmp_path) else None
    assert "not on the rung the rule chose" not in P.finding_precondition(ladder, "converged-teacher")
    assert "not on the rung the rule chose" in P.finding_precondition(ladder, "one-epoch-teacher")


def test_contrast_effects_pair_by_seed():
    rows = []
    for seed, (kd0, kd1, sd1) in {1: (0.8, 0.7, 0.75), 2: (0.82, 0.6, 0.8), 3: (0.81, 0.65, 0.7)}.items():
        rows += [{"method": "kd", "rho": 0.0, "seed": seed, "lambda_layer": float("nan"), "test_accuracy": kd0,
                  "nonoracle_test_accuracy": kd0},
                 {"method": "kd", "rho": 1.0, "seed": seed, "lambda_layer": float("nan"), "test_accuracy": kd1,
                  "nonoracle_test_accuracy": kd1 - 0.1},
                 {"method": "subdistill", "rho": 1.0, "seed": seed, "lambda_layer": 100.0, "test_accuracy": sd1,
                  "nonoracle_test_accuracy": sd1},
                 {"method": "subdistill", "rho": 1.0, "seed": seed, "lambda_layer": 10.0, "test_accuracy": 0.0,
                  "nonoracle_test_accuracy": 0.0}]
    e = P.contrast_effects(pd.DataFrame(rows), 100.0, "oracle").set_index("effect")
    assert e.loc["KD at ρ = 0 − KD at ρ = 1", "mean"] == pytest.approx((0.1 + 0.22 + 0.16) / 3)
    assert e.loc["SubDistill − KD at ρ = 1", "mean"] == pytest.approx((0.05 + 0.2 + 0.05) / 3)   # λ = 10 ignored
    assert set(e["n_seeds"]) == {3} and (e["se"] > 0).all()
    n = P.contrast_effects(pd.DataFrame(rows), 100.0, "nonoracle").set_index("effect")
    assert n.loc["SubDistill − KD at ρ = 1", "mean"] == pytest.approx((0.15 + 0.3 + 0.15) / 3)


def test_contrast_grid_is_kd_and_subdistill_on_the_first_books_world():
    from reprolib.grids import expand_grid

    cells = expand_grid(P.contrast_grid("quick"))
    assert {c.method for c in cells} == {"kd", "subdistill"} and len(cells) == 12
    assert {c.teacher_recipe for c in cells} == {"1-epoch"}
    assert {c.lambda_layer for c in cells if c.method == "subdistill"} == {100.0}


def test_the_books_main_world_is_the_ladders_choice():
    """MAIN_VARIANT is not chosen by hand: it is what the committed ladder's rule chose."""
    path = RESULTS / "precondition-ladder.json"
    if not path.exists():
        pytest.skip("no committed precondition ladder")
    ladder = json.loads(path.read_text())
    assert MAIN_VARIANT["mini"] == ladder["chosen_variant"]
    assert get_variant("mini", ladder["chosen_variant"]).rung == ladder["choice"]["chosen"]
    for t in ladder["tried"]:   # every rung's file is committed beside it, with KD alone
        r = json.loads((RESULTS / t["file"]).read_text())
        assert r["method"] == "kd" and not r.get("smoke") and len(r["runs"]) == 6


def test_the_converged_teacher_is_the_convergence_rules_choice():
    """CONVERGED_TEACHER is not chosen by hand: it is the recipe the committed teacher-convergence run chose."""
    from reprolib import verdicts as V
    from reprolib.config import CONVERGED_TEACHER
    from reprolib.teacher import TEACHER_RECIPES

    path = RESULTS / "teacher-convergence-cpu.json"
    if not path.exists():
        pytest.skip("no committed teacher-convergence run")
    r = json.loads(path.read_text())
    assert not r["smoke"] and r["choice"]["converged"]
    chosen = TEACHER_RECIPES[CONVERGED_TEACHER]
    assert chosen.epochs == r["choice"]["epochs"]
    # the file's recipe is the named recipe's, apart from the epochs the rule varies
    for field, value in r["recipe"].items():
        got = getattr(chosen, field)
        assert (list(got) if isinstance(got, tuple) else got) == value, field
    # the rule, rerun on the file's own accuracies, gives the same choice
    acc = {t["epochs"]: t["accuracy_10class"] for t in r["teachers"]}
    assert V.teacher_convergence(acc).epochs == chosen.epochs
    assert get_variant("mini", MAIN_VARIANT["mini"]).fields == (("teacher_recipe", CONVERGED_TEACHER),)

"""The precondition's two rules on hand-made tables (book, "Decisions": "the precondition").

Both rules were written and tested before the ladder of world variants ran.
"""

import math

import pytest

from reprolib import verdicts as V


def drops(rung, rho0, rho1):
    return V.rung_drop(rung, dict(enumerate(rho0, 1)), dict(enumerate(rho1, 1)))


# -- the teacher's convergence ------------------------------------------------
def test_teacher_converged_at_the_first_candidate():
    c = V.teacher_convergence({10: 0.930, 20: 0.933})
    assert (c.epochs, c.converged) == (10, True)
    assert c.checks[0]["gain"] == pytest.approx(0.003)
    assert "10 epochs is converged" in c.sentence


def test_teacher_needs_the_second_candidate():
    c = V.teacher_convergence({10: 0.920, 20: 0.930, 40: 0.932})
    assert (c.epochs, c.converged) == (20, True)
    assert [ch["within"] for ch in c.checks] == [False, True]


def test_teacher_losing_accuracy_beyond_the_tolerance_is_not_converged():
    # |gain| counts: a recipe that overfits when doubled is not "converged" either.
    c = V.teacher_convergence({10: 0.930, 20: 0.920})
    assert (c.epochs, c.converged) == (20, False)
    assert "not shown to be converged" in c.sentence


def test_teacher_without_partner_is_not_judged():
    c = V.teacher_convergence({10: 0.93})
    assert c.checks == () and not c.converged and c.epochs == 10
    with pytest.raises(ValueError):
        V.teacher_convergence({10: math.nan})


# -- the precondition ---------------------------------------------------------
def test_rung_drop_is_paired_by_seed():
    r = drops("x", [0.80, 0.82, 0.78], [0.65, 0.70, 0.66])
    assert r.n == 3
    assert r.mean == pytest.approx((0.15 + 0.12 + 0.12) / 3)
    assert r.std == pytest.approx(0.017320508, rel=1e-6)
    assert r.se == pytest.approx(r.std / math.sqrt(3))
    assert r.met


def test_rung_drop_below_ten_points_is_not_met():
    assert not drops("x", [0.80, 0.80, 0.80], [0.71, 0.71, 0.705]).met     # 9.2 points


def test_rung_drop_within_seed_noise_is_not_met():
    # a mean drop of 10.3 points with one seed at -20: the standard error (~15) swamps it
    r = drops("x", [0.80, 0.80, 0.80], [0.45, 0.51, 1.0])
    assert r.mean >= 0.10 and not r.met


def test_rung_drop_needs_three_seeds():
    assert not drops("x", [0.80, 0.80], [0.60, 0.62]).met
    assert drops("x", [0.80, 0.80, 0.8], [0.60, 0.62, 0.61]).met


def test_precondition_met_takes_the_first_rung_that_meets_it():
    rungs = [drops("a", [0.81] * 3, [0.79, 0.80, 0.78]),
             drops("b", [0.79, 0.80, 0.78], [0.66, 0.67, 0.65]),
             drops("c", [0.79, 0.80, 0.78], [0.50, 0.52, 0.49])]   # larger, but later
    c = V.precondition_rule(rungs)
    assert (c.chosen, c.met) == ("b", True)
    assert "'b'" in c.sentence and "first of 3" in c.sentence


def test_precondition_not_met_falls_back_to_the_largest_drop():
    rungs = [drops("a", [0.81] * 3, [0.79, 0.80, 0.78]),
             drops("b", [0.80] * 3, [0.74, 0.75, 0.73]),
             drops("c", [0.80] * 3, [0.76, 0.77, 0.75])]
    c = V.precondition_rule(rungs)
    assert (c.chosen, c.met) == ("b", False)
    assert "not reached" in c.sentence
    assert c.to_dict()["rungs"][1]["rung"] == "b"


def test_precondition_without_results():
    c = V.precondition_rule([V.rung_drop("a", {}, {})])
    assert c.chosen is None and not c.met
    with pytest.raises(ValueError):
        V.precondition_rule([])

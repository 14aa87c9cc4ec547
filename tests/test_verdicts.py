"""The verdict rules on small hand-made tables: every verdict value of every claim."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from reprolib import verdicts as V


def summary(cells, selection="oracle", n=3):
    """cells: {(method, rho): (mean, std[, predicts_digit_mean, predicts_digit_std])}."""
    rows = []
    for (m, rho), vals in cells.items():
        mean, std = vals[:2]
        pd_mean, pd_std = (vals[2], vals[3]) if len(vals) > 2 else (math.nan, math.nan)
        rows.append({"selection": selection, "method": m, "rho": rho,
                     "lambda_layer": math.nan if m == "kd" else 1.0, "n_seeds": n,
                     "test_accuracy_mean": mean, "test_accuracy_std": std,
                     "predicts_digit_mean": pd_mean, "predicts_digit_std": pd_std})
    return pd.DataFrame(rows)


# (a) -----------------------------------------------------------------------
@pytest.mark.parametrize("sd0,sd05,expected", [
    (0.95, 0.94, V.HOLDS),       # literal
    (0.80, 0.79, V.PARTLY),      # relative reading only
    (0.80, 0.60, V.FAILS),
])
def test_claim_a(sd0, sd05, expected):
    s = summary({("subdistill", 0.0): (sd0, 0.01), ("subdistill", 0.5): (sd05, 0.01)})
    v = V.claim_accuracy_at_half(s)
    assert v.verdict == expected, v
    assert v.key == "a" and "±" in v.value and v.reason


def test_claim_a_noise_blocks_literal():
    # 0.91 with a standard error of 0.05: not above 90 % beyond noise
    s = summary({("subdistill", 0.5): (0.91, 0.05 * math.sqrt(3)), ("subdistill", 0.0): (0.99, 0.0)})
    assert V.claim_accuracy_at_half(s).verdict == V.FAILS


def test_claim_a_untested_and_selection():
    s = summary({("kd", 0.5): (0.9, 0.0)})
    assert V.claim_accuracy_at_half(s).verdict == V.UNTESTED
    s = pd.concat([summary({("subdistill", 0.5): (0.95, 0.0)}, "oracle"),
                   summary({("subdistill", 0.5): (0.5, 0.0)}, "nonoracle")])
    assert V.claim_accuracy_at_half(s, "oracle").verdict == V.HOLDS
    assert V.claim_accuracy_at_half(s, "nonoracle").verdict == V.FAILS


# (b) -----------------------------------------------------------------------
@pytest.mark.parametrize("base,std,expected", [
    ((0.50, 0.55), 0.01, V.HOLDS),     # gaps 30 and 25 points
    ((0.60, 0.72), 0.01, V.PARTLY),    # beats both, one by only 8 points
    ((0.746, 0.76), 0.01, V.FAILS),    # within noise
    ((0.70, 0.70), 0.10, V.FAILS),     # 5 points, but the seeds scatter by 10
])
def test_claim_b(base, std, expected):
    s = summary({("subdistill", 1.0): (0.75, std), ("kd", 1.0): (base[0], std), ("at", 1.0): (base[1], std)})
    v = V.claim_margin_over_baselines(s)
    assert v.verdict == expected, v
    assert "KD" in v.value and "AT" in v.value


def test_claim_b_one_seed_says_so():
    s = summary({("subdistill", 1.0): (0.75, 0.0), ("kd", 1.0): (0.5, 0.0)}, n=1)
    v = V.claim_margin_over_baselines(s)
    assert v.verdict == V.HOLDS and "One seed" in v.reason


# (c) -----------------------------------------------------------------------
@pytest.mark.parametrize("acc,follow,expected", [
    (0.25, 0.70, V.HOLDS),
    (0.60, 0.45, V.PARTLY),     # not near chance, but follows the digit
    (0.60, 0.20, V.FAILS),      # neither
])
def test_claim_c(acc, follow, expected):
    s = summary({("kd", 1.0): (acc, 0.01, follow, 0.01), ("vkd", 1.0): (0.7, 0.01, 0.2, 0.01),
                 ("subdistill", 1.0): (0.2, 0.0, 0.9, 0.0)})   # SubDistill is never a baseline
    v = V.claim_baselines_near_chance(s)
    assert v.verdict == expected, v
    assert "KD" in v.value


# (d) -----------------------------------------------------------------------
def knn(rows, n=3):
    return pd.DataFrame([{"method": m, "rho": 1.0, "knn_class_mean": c, "knn_class_std": sc,
                          "knn_digit_mean": d, "knn_digit_std": sc, "n_seeds": n}
                         for m, (c, d, sc) in rows.items()])


@pytest.mark.parametrize("rows,expected", [
    ({"subdistill": (0.8, 0.2, 0.01), "kd": (0.4, 0.5, 0.01)}, V.HOLDS),
    ({"subdistill": (0.8, 0.2, 0.01), "kd": (0.79, 0.2, 0.01)}, V.PARTLY),
    ({"subdistill": (0.3, 0.5, 0.01), "kd": (0.3, 0.6, 0.01)}, V.FAILS),
    ({"subdistill": (0.52, 0.5, 0.1), "kd": (0.3, 0.6, 0.1)}, V.FAILS),   # margin within noise
])
def test_claim_d(rows, expected):
    v = V.claim_tsne_clusters(knn(rows))
    assert v.verdict == expected, v


def test_claim_d_uses_highest_rho_and_untested():
    k = pd.concat([knn({"subdistill": (0.2, 0.8, 0.0)}).assign(rho=0.0),
                   knn({"subdistill": (0.8, 0.2, 0.0), "kd": (0.2, 0.8, 0.0)})])
    assert V.claim_tsne_clusters(k).verdict == V.HOLDS
    assert V.claim_tsne_clusters(knn({"kd": (0.8, 0.2, 0.0)})).verdict == V.UNTESTED
    assert V.claim_tsne_clusters(None).verdict == V.UNTESTED


# (e) -----------------------------------------------------------------------
def lrp(rows):
    return pd.DataFrame([{"method": m, "rho": 1.0, "corr_mean": c, "corr_ci_low": lo, "corr_ci_high": hi,
                          "digit_share_student": ds, "digit_share_teacher": 0.15, "n_seeds": 3}
                         for m, (c, lo, hi, ds) in rows.items()])


@pytest.mark.parametrize("rows,expected", [
    ({"subdistill": (0.3, 0.2, 0.4, 0.1), "kd": (-0.2, -0.3, -0.1, 0.2)}, V.HOLDS),
    ({"subdistill": (0.3, 0.2, 0.4, 0.1), "kd": (0.1, 0.05, 0.2, 0.2)}, V.PARTLY),
    ({"subdistill": (0.05, -0.1, 0.2, 0.1), "kd": (-0.2, -0.3, -0.1, 0.2)}, V.FAILS),
])
def test_claim_e(rows, expected):
    v = V.claim_lrp_correlation(lrp(rows))
    assert v.verdict == expected, v
    assert V.claim_lrp_correlation(None).verdict == V.UNTESTED


# The table and the headline ---------------------------------------------------
def full_summary():
    cells = {("subdistill", 0.0): (0.80, 0.01), ("subdistill", 0.5): (0.79, 0.01),
             ("subdistill", 1.0): (0.75, 0.01, 0.3, 0.01), ("kd", 0.0): (0.8, 0.01),
             ("kd", 1.0): (0.55, 0.01, 0.6, 0.01), ("at", 1.0): (0.553, 0.01, 0.6, 0.01)}
    return pd.concat([summary(cells, "oracle"), summary(cells, "nonoracle")], ignore_index=True)


def test_results_at_a_glance_and_headline():
    k = knn({"subdistill": (0.8, 0.2, 0.01), "kd": (0.4, 0.5, 0.01)})
    l_ = lrp({"subdistill": (0.3, 0.2, 0.4, 0.1), "kd": (-0.2, -0.3, -0.1, 0.2)})
    vs = V.all_verdicts(full_summary(), {"oracle": k, "nonoracle": k}, {"oracle": l_})
    assert len(vs) == 10
    table = V.results_at_a_glance(vs)
    assert list(table.columns) == ["Claim", "The paper", "Our number", "Our verdict", "Why"]
    assert len(table) == 5
    assert not table.isna().any().any()
    e = table[table["Claim"].str.startswith("(e)")].iloc[0]
    assert "holds (oracle)" in e["Our verdict"] and "not tested (non-oracle)" in e["Our verdict"]
    text = V.headline(vs)
    assert text.count(". ") == 1 and text.endswith(".")
    assert "Of the 5 claims of the paper that this book tests, 3 hold and 2 hold partly in our" in text
    assert "The central claim, that SubDistill beats the baselines at ρ = 1, holds: KD +20.0" in text
    assert "3 hold and 2 hold partly" in text


def test_headline_untested():
    assert "No claim" in V.headline([])
    vs = V.all_verdicts(full_summary())          # no explanations: (d) and (e) not tested
    assert "of the paper that this book tests, 3 could be judged here: " in V.headline(vs)


# Findings ---------------------------------------------------------------------
def test_findings_sentences():
    s = full_summary()
    t = V.finding_teacher_gap(s, 0.95)
    assert "15 points below the teacher" in t
    f = V.finding_digit_following(s)
    assert "60%" in f and "chance 20%" in f and "SubDistill: 30%" in f
    assert "partial" not in f                     # 40 points above chance
    mild = V.finding_digit_following(summary({("kd", 1.0): (0.6, 0.01, 0.34, 0.01),
                                              ("at", 1.0): (0.7, 0.01, 0.25, 0.01)}))
    assert "Even the baseline that follows the digit most (KD) is within 15 points of chance" in mild
    assert "power" not in mild
    same = V.finding_similar_methods(s, methods=("kd", "at"))
    assert "nearly the same network" in same
    apart = V.finding_similar_methods(summary({("kd", 1.0): (0.5, 0.0), ("at", 1.0): (0.7, 0.0)}),
                                      methods=("kd", "at"))
    assert "differ beyond seed noise" in apart
    edges = V.finding_lambda_edges(s, [1, 10, 100])
    assert "4 sit at the grid's lower edge" in edges and "Most choices" in edges
    patch = V.finding_digit_patch(lrp({"subdistill": (0.3, 0.2, 0.4, 0.111), "kd": (0, 0, 0, 0.164),
                                       "at": (0, 0, 0, 0.184)}))
    assert "SubDistill puts the least" in patch and "0.164–0.184" in patch
    energy = pd.DataFrame({"digit_energy_in_U_K": [0.82, 0.87], "in_random_K_subspace": [0.5, 0.51]})
    assert "82%–87%" in V.finding_subspace_digit_share(energy)


def test_calibration_effects():
    rows = []
    for pool, gap in ((25, -0.02), (100, 0.10)):
        for seed, noise in ((1, 0.0), (2, 0.01), (3, -0.01)):
            rows += [
                {"method": "kd", "rho": 0.0, "seed": seed, "lambda_layer": math.nan, "pool_per_class": pool,
                 "val_accuracy": 0.8, "test_accuracy": 0.80 + noise},
                {"method": "kd", "rho": 1.0, "seed": seed, "lambda_layer": math.nan, "pool_per_class": pool,
                 "val_accuracy": 0.7, "test_accuracy": 0.70},
                {"method": "subdistill", "rho": 1.0, "seed": seed, "lambda_layer": 1.0, "pool_per_class": pool,
                 "val_accuracy": 0.9, "test_accuracy": 0.70 + gap + noise},
                {"method": "subdistill", "rho": 1.0, "seed": seed, "lambda_layer": 10.0, "pool_per_class": pool,
                 "val_accuracy": 0.1, "test_accuracy": 0.0},   # never chosen
            ]
    e = V.calibration_effects(pd.DataFrame(rows))
    gap = e[e["effect"] == "subdistill_minus_kd_at_rho1"].set_index("pool_per_class")
    assert gap.loc[100, "mean"] == pytest.approx(0.10) and gap.loc[25, "mean"] == pytest.approx(-0.02)
    assert gap.loc[100, "n_seeds"] == 3 and gap.loc[100, "std"] == pytest.approx(0.01)
    text = V.finding_calibration(e)
    assert "beyond seed noise at 100 images per class and loses to it at 25" in text
    assert "KD loses accuracy from ρ = 0 to ρ = 1 beyond seed noise at 25, 100" in text


def test_finding_convergence():
    rows = []
    for seed in (1, 2):
        for e in range(1, 9):
            rows.append({"method": "kd", "rho": 0.0, "seed": seed, "epoch": e, "val_accuracy": min(0.5, 0.1 * e)})
            rows.append({"method": "subdistill", "rho": 0.0, "seed": seed, "epoch": e, "val_accuracy": 0.08 * e})
    text = V.finding_convergence(pd.DataFrame(rows))
    assert "+0.0 points (KD)" in text and "+16.0 points (SubDistill)" in text
    assert "SubDistill still gain" in text
    flat = pd.DataFrame([r for r in rows if r["method"] == "kd"])
    assert "Every curve has flattened" in V.finding_convergence(flat)


def test_k_over_d():
    layers = [{"student_shape": [8, 4, 4], "teacher_shape": [32, 4, 4]},
              {"student_shape": [16, 2, 2], "teacher_shape": [64, 2, 2]}]
    assert V.k_over_d(layers) == 0.25
    assert math.isnan(V.k_over_d([]))


def test_one_seed_findings_do_not_claim_noise():
    e = pd.DataFrame({"pool_per_class": [10], "effect": ["subdistill_minus_kd_at_rho1"], "mean": [0.05],
                      "std": [math.nan], "n_seeds": [1], "se": [0.0]})
    assert "no estimate of seed noise" in V.finding_calibration(e)
    s = summary({("kd", 1.0): (0.5, 0.0, 0.4, 0.0)}, n=1)
    assert "one seed, no noise estimate" in V.finding_digit_following(s)


def test_calibration_effects_follow_training_size():
    rows = []
    for train, gap in ((20, 0.0), (80, 0.1)):
        for seed in (1, 2):
            for m, rho, acc in (("kd", 0.0, 0.8), ("kd", 1.0, 0.7), ("subdistill", 1.0, 0.7 + gap)):
                rows.append({"method": m, "rho": rho, "seed": seed, "lambda_layer": math.nan if m == "kd" else 100.0,
                             "pool_per_class": 250, "train_per_class": train, "val_accuracy": 0.5,
                             "test_accuracy": acc + 0.001 * seed})
    e = V.calibration_effects(pd.DataFrame(rows))
    assert "train_per_class" in e.columns and set(e["train_per_class"]) == {20, 80}
    assert "training images per class" in V.finding_calibration(e)


def test_chapter_two_findings_read_their_tables():
    diagnostics = pd.DataFrame({"layer": ["l1", "l2"], "K/d": [0.25, 0.25], "variance share in U_K": [0.6, 0.9],
                                "teacher accuracy, rank-K layer": [0.80, 0.85],
                                "teacher accuracy, unmodified": [0.86, 0.86]})
    inside = pd.DataFrame({"digit_energy_in_U_K": [0.7, 0.8], "in_random_K_subspace": [0.2, 0.3]})
    text = V.finding_subspace(diagnostics, inside)
    assert "60%–90%" in text and "K/d ≤ 0.25" in text and "at most 6.0 accuracy points" in text
    assert "passes through the subspace" in text
    outside = inside.assign(digit_energy_in_U_K=[0.25, 0.8])   # overlaps the random subspace's share
    assert "not concentrated" in V.finding_subspace(diagnostics, outside)

    pairs = pd.DataFrame({"student": ["mini-student"] * 2 + ["mini-student-wide"] * 2, "layer": ["l1", "l2"] * 2,
                          "K/d": [0.25, 0.25, 0.5, 0.5], "variance share in U_K": [0.5, 0.7, 0.8, 0.9],
                          "digit's effect inside U_K": [0.3, 0.4, 0.6, 0.65]})
    text = V.finding_student_pairs(pairs)
    assert text.startswith("At K/d = 0.25 (the default student) the subspace holds 50%–70% of the teacher's variance "
                           "and 30%–40% of the digit's effect; at K/d = 0.5 (the wide student) 80%–90%")

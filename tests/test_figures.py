"""Every figure function draws a figure from a small synthetic table."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from reprolib import config, figures, verdicts  # noqa: E402

METHODS = ("kd", "at", "subdistill")


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def results_table(students=("narrow",)):
    rows = []
    for student in students:
        for m in METHODS:
            for rho in (0.0, 0.5, 1.0):
                for lam in ((math.nan,) if m == "kd" else (1.0, 10.0, 100.0)):
                    for seed in (1, 2):
                        acc = 0.8 - 0.2 * rho * (m != "subdistill") + 0.01 * seed - 0.001 * (lam if lam == lam else 0)
                        rows.append({"method": m, "rho": rho, "seed": seed, "lambda_layer": lam,
                                     "pool_per_class": 50, "student": student,
                                     "val_accuracy": acc, "test_accuracy": acc,
                                     "nonoracle_val_accuracy": acc, "nonoracle_test_accuracy": acc - 0.02,
                                     "test_accuracy_with_digit": acc, "test_accuracy_digit_differs": acc - 0.1,
                                     "predicts_digit": 0.2 + 0.3 * rho, "teacher_test_accuracy": 0.95,
                                     "run_dir": f"runs/{m}-{rho}-{lam}-{seed}"})
    return pd.DataFrame(rows)


def summary_table(results):
    from reprolib.results import select_lambda, SELECTIONS

    return pd.concat([select_lambda(results, s) for s in SELECTIONS], ignore_index=True)


def _is_figure(fig):
    assert isinstance(fig, matplotlib.figure.Figure)
    assert fig.dpi >= 200
    for ax in fig.axes:
        if ax.get_visible() and ax.axison and ax.has_data() and ax.get_xticks().size:
            assert ax.get_xlabel() or ax.get_ylabel() or not ax.get_xticklabels(), "unlabelled axes"
    return fig


def test_accuracy_vs_rho_and_digit_split():
    s = summary_table(results_table())
    fig = _is_figure(figures.accuracy_vs_rho(s, teacher={0.0: 0.95, 1.0: 0.95}))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "SubDistill (relevant subspace)" in labels and "teacher" in labels
    assert not any(l in ("kd", "subdistill") for l in labels)   # words, not variable names
    fig = _is_figure(figures.digit_split_panels(s, "nonoracle"))
    assert len(fig.axes) == 2


def test_method_styles_distinct():
    styles = [figures.method_style(m) for m in config.METHODS]
    assert len({s["color"] for s in styles}) == len(styles)
    assert len({s["marker"] for s in styles}) == len(styles)


def test_validation_curves(tmp_path):
    r = results_table()
    for i, row in r.iterrows():
        d = tmp_path / row["run_dir"]
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"curves": {"val_accuracy": [0.3, 0.6, 0.7]},
                                                     "steps_per_epoch": 12}))
    curves = figures.load_curves(r, tmp_path)
    assert len(curves) == 3 * len(r) and curves["step"].max() == 36
    fig = _is_figure(figures.validation_curves(curves))
    assert fig.axes[0].get_xlabel() == "optimiser steps"
    no_steps = curves.assign(step=math.nan)
    assert _is_figure(figures.validation_curves(no_steps)).axes[0].get_xlabel() == "epoch"


def test_accuracy_per_lambda_marks_choice():
    r = results_table()
    s = summary_table(r)
    fig = _is_figure(figures.accuracy_per_lambda(r, s))
    assert "selected λ" in [t.get_text() for t in fig.legends[0].get_texts()]


def test_calibration_effect():
    e = pd.DataFrame({"pool_per_class": [25, 50, 25, 50], "effect": ["subdistill_minus_kd_at_rho1"] * 2
                      + ["kd_drop_rho0_to_rho1"] * 2, "mean": [0.01, 0.05, 0.1, 0.05],
                      "std": [0.01, math.nan, 0.02, 0.01]})
    fig = _is_figure(figures.calibration_effect(e, steps=600))
    assert "SubDistill − KD at ρ = 1" in fig.axes[0].get_legend_handles_labels()[1]


def test_kd_ablation():
    s = summary_table(results_table(("narrow", "wide")).query("student == 'narrow'"))
    s2 = summary_table(results_table(("wide",)))
    both = pd.concat([s.assign(student="narrow"), s2.assign(student="wide")])
    fig = _is_figure(figures.kd_ablation(both))
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert any("K/d = 0.25" in l for l in labels) and any("K/d = 0.5" in l for l in labels)


def test_training_curves_marks_one_based_epoch():
    metrics = {"curves": {"loss": [2, 1, 0.5], "kd": [2, 1, 0.5], "layer": [0.1, 0.1, 0.1],
                          "val_accuracy": [0.3, 0.5, 0.4], "val_correlated_accuracy": [0.6, 0.7, 0.8]},
               "best_epoch": 1}
    fig = _is_figure(figures.training_curves(metrics))
    assert "selected epoch (2)" in fig.axes[1].get_legend_handles_labels()[1]


def test_confusion_matrix_always_square():
    digits = np.array([0, 1, 2, 3, 4, 0, 1, -1])
    preds = np.array([0, 1, 2, 3, 3, 0, 1, 4])    # class 4 never predicted on a digit image
    t = figures.confusion_table(digits, preds)
    assert t.shape == (5, 5)
    assert t[4].sum() == 0 and t.loc[4, 3] == 1.0
    fig = _is_figure(figures.confusion_matrix(digits, preds))
    assert fig.axes[0].images[0].get_array().shape == (5, 5)
    # a digit that never occurs keeps its row of zeros
    assert figures.confusion_table(np.array([0, 0]), np.array([1, 1])).shape == (5, 5)


def test_spectra_and_energy():
    subs = [SimpleNamespace(eigenvalues=np.linspace(10, 0.1, 16), basis=np.zeros((16, 4)), layer=f"layer{i}")
            for i in (1, 2)]
    fig = _is_figure(figures.spectra(subs))
    assert len(fig.axes) == 2
    for ax, sub in zip(fig.axes, subs):   # each panel draws its layer's eigenvalues and marks the kept K
        assert np.allclose(ax.lines[0].get_ydata(), sub.eigenvalues)
        assert ax.lines[1].get_xdata()[0] == sub.basis.shape[1] and ax.get_title() == f"layer {sub.layer}"
    energy = pd.DataFrame({"fitted_on_rho": [0.0, 0.0, 1.0, 1.0], "layer": ["l1", "l2", "l1", "l2"],
                           "digit_energy_in_U_K": [0.8, 0.85, 0.82, 0.87],
                           "in_random_K_subspace": [0.5, 0.5, 0.5, 0.5]})
    _is_figure(figures.digit_energy(energy))


def test_tsne_panels_palettes_differ():
    rng = np.random.default_rng(0)
    emb = {"teacher": rng.normal(size=(30, 2)), "kd|1": rng.normal(size=(30, 2)),
           "subdistill|1": rng.normal(size=(30, 2))}
    labels = np.arange(30) % 5
    f1 = _is_figure(figures.tsne_panels(emb, labels, 1.0, ["kd", "subdistill"], "class", names=list("ABCDE")))
    f2 = _is_figure(figures.tsne_panels(emb, labels, 1.0, ["kd", "subdistill"], "digit"))
    c1 = {tuple(np.round(c.get_facecolor()[0], 3)) for c in f1.axes[0].collections}
    c2 = {tuple(np.round(c.get_facecolor()[0], 3)) for c in f2.axes[0].collections}
    assert len(c1) == 5 and len(c2) == 5 and not (c1 & c2)
    assert "A" in [t.get_text() for t in f1.legends[0].get_texts()]


def test_lrp_grid():
    rng = np.random.default_rng(0)
    images = rng.random((8, 1, 12, 12))
    heat = {"teacher": rng.normal(size=(8, 12, 12)), "kd|1": rng.normal(size=(8, 12, 12))}
    fig = _is_figure(figures.lrp_grid(images, heat, 1.0, ["kd", "vid"], (0, 0, 3), np.zeros(8), np.ones(8), n=4))
    assert len(fig.axes) == 3 * 4     # image row, teacher, KD; VID has no maps at ρ = 1 and gets no row
    axes = np.asarray(fig.axes).reshape(3, 4)
    assert [a.get_ylabel() for a in axes[:, 0]] == ["image", config.METHOD_SHORT.get("teacher", "teacher"),
                                                    config.METHOD_SHORT["kd"]]
    for j in range(4):
        np.testing.assert_array_equal(axes[0, j].images[0].get_array(), images[j, 0])
        np.testing.assert_array_equal(axes[1, j].images[0].get_array(), heat["teacher"][j])
        np.testing.assert_array_equal(axes[2, j].images[0].get_array(), heat["kd|1"][j])
        v = np.abs(heat["kd|1"][j]).max()                    # symmetric colour scale: 0 is white
        assert axes[2, j].images[0].get_clim() == pytest.approx((-v, v))
        assert len(axes[2, j].patches) == 1 and axes[2, j].patches[0].get_width() == 3   # the digit patch
    assert axes[0, 0].get_title() == "class 0, digit 1"


def test_example_grid_on_smoke_world():
    from reprolib.config import make_config
    from reprolib.worlds import build_world

    cfg = make_config("mini", "smoke", contamination_rate=1.0)
    world = build_world(cfg.data, 1)
    fig = _is_figure(figures.example_grid({1.0: world}, n=3))
    assert len(fig.axes) == 9          # train, val, test rows × 3 images
    axes = np.asarray(fig.axes).reshape(3, 3)
    for r, split in enumerate(("train", "val", "test")):
        plan = world.plans[split]
        order = np.argsort(~plan.plan.has_digit, kind="stable")[:3]
        for c in range(3):
            i = order[c]
            d = int(plan.plan.digit[i])
            assert axes[r, c].get_title() == f"class {int(plan.labels[i])}, digit {'–' if d < 0 else d}"
            np.testing.assert_allclose(axes[r, c].images[0].get_array(),
                                       world.pixels(split, [i]).numpy()[0].transpose(1, 2, 0).squeeze(-1))
    assert axes[0, 0].get_ylabel().startswith("ρ = 1")


def test_calibration_effects_feed_the_figure():
    r = results_table()
    r = pd.concat([r.assign(pool_per_class=25), r.assign(pool_per_class=50)])
    r = r.replace({"at": "subdistill"}).drop_duplicates(["method", "rho", "seed", "lambda_layer", "pool_per_class"])
    e = verdicts.calibration_effects(r)
    assert set(e["pool_per_class"]) == {25, 50}
    _is_figure(figures.calibration_effect(e))


def test_validation_epochs_every_n():
    m = {"curves": {"loss": [1] * 6, "val_accuracy": [0.1, 0.2, 0.3]}, "config": {"val_every": 2}}
    assert figures.validation_epochs(m) == [2, 4, 6]
    m["curves"]["val_accuracy"] = [0.1] * 6
    assert figures.validation_epochs(m) == [1, 2, 3, 4, 5, 6]
    m["val_epochs"] = [3, 6]
    m["curves"]["val_accuracy"] = [0.1, 0.2]
    assert figures.validation_epochs(m) == [3, 6]


def test_pages_tables_and_command():
    from reprolib import pages

    df = pd.DataFrame({"a": [1.23456, math.nan], "b": ["x", None], "n": [3, 4]})
    html = pages.table_html(df)
    assert "nan" not in html.lower() and "–" in html and "1.235" in html and ">3<" in html
    long = pd.DataFrame({"x": range(200)})
    assert pages.table_html(long).count("<tr") == 201      # never truncated
    cmd = pages.papermill_command("notebooks/04.ipynb", {"preset": "smoke", "workers": 1, "rhos": [0.0, 1.0],
                                                         "out_dir": None})
    assert cmd == "papermill notebooks/04.ipynb out.ipynb -p preset smoke -p workers 1 -y 'rhos: [0.0, 1.0]' -p out_dir None"
    assert pages.duration(30) == "30 s" and pages.duration(600) == "10.0 min"
    assert "/" not in pages.hardware().split("PyTorch")[0]


def test_pages_rho_and_strings():
    from reprolib import pages

    html = pages.table_html(pd.DataFrame({"ρ": [0.0, 0.5, "1"], "x": ["0.5", -0.0001, 2.0]}))
    assert ">0.5<" in html and ">1<" in html and ">0<" in html and "0.500" not in html
    assert ">0.000<" in html and "-0.000" not in html and ">2.000<" in html

"""The book's figures. Each function takes tables (or a run's metrics) and returns a
new matplotlib figure; nothing here trains or loads a model.

Conventions, the same in every figure:

* Methods have one colour (the Okabe–Ito palette, safe for colour-blind readers),
  one marker and one line style each, so the curves stay apart in grey too;
  SubDistill is drawn thicker, the teacher as a black dashed line.
* Garment classes and painted digits never share a palette: classes use Paul
  Tol's "muted" colours, digits the ordered viridis scale.
* Axes are labelled with their units, legends in words, and figures are drawn at
  200 dpi (``use_book_style`` sets the same for any other figure).
* Error bars are the standard deviation over seeds unless the caption says otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from .config import METHOD_LABELS, METHOD_SHORT, METHODS

DPI = 200
OKABE_ITO = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
CLASS_COLOURS = ("#CC6677", "#332288", "#DDCC77", "#117733", "#88CCEE", "#882255", "#44AA99", "#999933",
                 "#AA4499", "#DDDDDD")   # Paul Tol "muted"
_STYLES = {
    "kd": dict(color=OKABE_ITO[0], marker="o", linestyle="-"),
    "at": dict(color=OKABE_ITO[1], marker="s", linestyle="--"),
    "vid": dict(color=OKABE_ITO[2], marker="^", linestyle="-."),
    "vkd": dict(color=OKABE_ITO[6], marker="D", linestyle=":"),
    "subdistill": dict(color=OKABE_ITO[4], marker="*", linestyle="-", linewidth=2.4, markersize=9),
}
STUDENT_LABELS = {"narrow": "narrow student (K/d = 0.25)", "wide": "wide student (K/d = 0.5)",
                  "mini-student": "narrow student", "mini-student-wide": "wide student"}


def use_book_style() -> None:
    """High-resolution defaults for every figure of the session."""
    import matplotlib as mpl

    mpl.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "font.size": 9, "axes.titlesize": 10,
                         "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
                         "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False})


def method_style(method: str) -> dict:
    """Colour, marker, line style (and width) of a method."""
    style = dict(_STYLES.get(method, dict(color="#777777", marker="x", linestyle="-")))
    style.setdefault("linewidth", 1.5)
    style.setdefault("markersize", 6)
    return style


def method_label(method: str) -> str:
    return METHOD_LABELS.get(method, method)


def _subplots(nrows=1, ncols=1, figsize=(6, 4), **kw):
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=figsize, dpi=DPI, squeeze=False, **kw)


def _methods(table) -> list[str]:
    present = list(dict.fromkeys(table["method"]))
    return [m for m in METHODS if m in present] + [m for m in present if m not in METHODS]


def _select(summary, selection):
    if selection is not None and "selection" in summary.columns:
        return summary[summary["selection"] == selection]
    return summary


def _dodge(methods: Sequence[str], width: float) -> dict[str, float]:
    n = len(methods)
    return {m: (i - (n - 1) / 2) * width for i, m in enumerate(methods)}


def _std(values):
    return np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)


# ---------------------------------------------------------------------------
# The sweep
def accuracy_vs_rho(summary, teacher: Mapping[float, float] | None = None, selection: str | None = "oracle",
                    metric: str = "test_accuracy", chance: float = 0.2, title: str | None = None):
    """Test accuracy vs contamination rate per method, mean ± std over seeds (the
    paper's main figure). Points are shifted slightly sideways per method so that
    overlapping curves stay visible. ``teacher`` maps ρ to the teacher's accuracy."""
    d = _select(summary, selection)
    fig, axes = _subplots(figsize=(6.6, 4.6))
    ax = axes[0, 0]
    methods = _methods(d)
    rhos = sorted(d["rho"].astype(float).unique())
    step = min(np.diff(rhos)) if len(rhos) > 1 else 1.0
    shift = _dodge(methods, 0.025 * step)
    for m in methods:
        s = d[d["method"] == m].sort_values("rho")
        ax.errorbar(s["rho"].astype(float) + shift[m], s[f"{metric}_mean"], yerr=_std(s[f"{metric}_std"]),
                    capsize=3, label=method_label(m), **method_style(m))
    if teacher:
        xs = sorted(teacher)
        ax.plot(xs, [teacher[x] for x in xs], color="black", linestyle=(0, (5, 2)), linewidth=1.2,
                label="teacher")
    ax.axhline(chance, color="#777777", linestyle=":", linewidth=1, label=f"chance ({chance:.0%})")
    ax.set_xlabel("contamination rate ρ (share of training images with the label's digit)")
    ax.set_ylabel("test accuracy (share of images correct)")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(rhos)
    ax.set_xlim(min(rhos) - 0.1, max(rhos) + 0.1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def digit_split_panels(summary, selection: str | None = "oracle", chance: float = 0.2):
    """Left: accuracy on test images whose digit differs from their label; right: the
    share of digit-bearing test images classified as their digit. ρ > 0 only."""
    d = _select(summary, selection)
    d = d[d["rho"].astype(float) > 0]
    fig, axes = _subplots(1, 2, figsize=(8.8, 3.6))
    methods = _methods(d) if len(d) else []
    rhos = sorted(d["rho"].astype(float).unique()) if len(d) else [1.0]
    step = min(np.diff(rhos)) if len(rhos) > 1 else 1.0
    shift = _dodge(methods, 0.025 * step)
    panels = (("test_accuracy_digit_differs", "accuracy where digit ≠ label"),
              ("predicts_digit", "share predicted as their digit"))
    for ax, (col, ylabel) in zip(axes[0], panels):
        for m in methods:
            s = d[d["method"] == m].sort_values("rho")
            ax.errorbar(s["rho"].astype(float) + shift[m], s[f"{col}_mean"], yerr=_std(s[f"{col}_std"]),
                        capsize=3, label=method_label(m), **method_style(m))
        ax.set_xlabel("contamination rate ρ")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.02)
        ax.set_xticks(rhos)
        ax.set_xlim(min(rhos) - 0.1, max(rhos) + 0.1)
    axes[0, 1].axhline(chance, color="#777777", linestyle=":", linewidth=1, label=f"chance ({chance:.0%})")
    axes[0, 0].set_title("(a) test images whose digit is not the label")
    axes[0, 1].set_title("(b) following the digit")
    axes[0, 1].legend(loc="upper left", frameon=False)
    fig.tight_layout()
    return fig


def validation_epochs(metrics: dict) -> list[int]:
    """The (1-based) epoch after which each entry of ``curves["val_accuracy"]`` was
    measured: every epoch, or every ``val_every`` epochs (``val_epochs`` when the
    run lists them)."""
    c = metrics.get("curves", {})
    n = len(c.get("val_accuracy", []))
    if metrics.get("val_epochs"):
        return [int(e) for e in metrics["val_epochs"]][:n]
    if n == len(c.get("loss", [])) or not n:
        return list(range(1, n + 1))
    every = int((metrics.get("config") or {}).get("val_every", 1) or 1)
    return [(i + 1) * every for i in range(n)]


def load_curves(results, sweep_dir: str | Path):
    """Per-epoch validation curves of a sweep's runs as a long table: method, rho,
    seed, lambda_layer, epoch (1-based), step (optimiser steps so far, when the run
    reports ``steps_per_epoch``), val_accuracy. Reads each run's metrics.json."""
    import json

    import pandas as pd

    rows = []
    for _, r in results.iterrows():
        path = Path(sweep_dir) / r["run_dir"] / "metrics.json"
        if not path.is_file():
            continue
        m = json.loads(path.read_text())
        spe = m.get("steps_per_epoch")
        for e, v in zip(validation_epochs(m), m.get("curves", {}).get("val_accuracy", [])):
            rows.append({"method": r["method"], "rho": float(r["rho"]), "seed": int(r["seed"]),
                         "lambda_layer": r["lambda_layer"], "epoch": e,
                         "step": e * spe if spe else math.nan, "val_accuracy": float(v)})
    return pd.DataFrame(rows, columns=["method", "rho", "seed", "lambda_layer", "epoch", "step", "val_accuracy"])


def validation_curves(curves, rhos: Sequence[float] | None = None):
    """Validation accuracy per epoch, one panel per ρ, one line per method (mean over
    seeds, band: ± std). The x axis is in optimiser steps when the table has them."""
    rhos = sorted(curves["rho"].unique()) if rhos is None else list(rhos)
    use_steps = "step" in curves.columns and curves["step"].notna().all() and len(curves)
    x = "step" if use_steps else "epoch"
    fig, axes = _subplots(1, len(rhos), figsize=(3.2 * len(rhos) + 0.6, 3.4), sharey=True)
    for ax, rho in zip(axes[0], rhos):
        d = curves[np.isclose(curves["rho"].astype(float), rho)]
        for m in _methods(d) if len(d) else []:
            g = d[d["method"] == m].groupby(x)["val_accuracy"].agg(["mean", "std"]).reset_index()
            st = method_style(m)
            ax.plot(g[x], g["mean"], color=st["color"], linestyle=st["linestyle"], linewidth=st["linewidth"],
                    label=method_label(m))
            ax.fill_between(g[x], g["mean"] - g["std"].fillna(0), g["mean"] + g["std"].fillna(0),
                            color=st["color"], alpha=0.15, linewidth=0)
        ax.set_title(f"ρ = {rho:g}")
        ax.set_xlabel("optimiser steps" if use_steps else "epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1.02)
    axes[0, 0].set_ylabel("oracle validation accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), frameon=False)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
    else:
        fig.tight_layout()
    return fig


def accuracy_per_lambda(results, chosen=None, selection: str = "oracle", metric: str | None = None):
    """Mean (± std over seeds) validation accuracy at every λ per method, one panel
    per ρ, the selected λ circled. ``chosen`` is the ``select_lambda`` table. KD has
    no λ: a horizontal line."""
    from .results import SELECTIONS

    metric = metric or SELECTIONS[selection][0]
    rhos = sorted(results["rho"].astype(float).unique())
    fig, axes = _subplots(1, len(rhos), figsize=(3.2 * len(rhos) + 0.6, 3.4), sharey=True)
    for ax, rho in zip(axes[0], rhos):
        d = results[np.isclose(results["rho"].astype(float), rho)]
        for m in _methods(d):
            g = d[d["method"] == m]
            st = method_style(m)
            if m == "kd" or g["lambda_layer"].isna().all():
                mean = g[metric].mean()
                ax.axhline(mean, color=st["color"], linestyle=st["linestyle"], linewidth=1.2, label=method_label(m))
                continue
            s = g.groupby("lambda_layer")[metric].agg(["mean", "std"]).reset_index()
            ax.errorbar(s["lambda_layer"], s["mean"], yerr=_std(s["std"]), capsize=3, label=method_label(m), **st)
            if chosen is not None:
                c = _select(chosen, selection)
                c = c[(c["method"] == m) & np.isclose(c["rho"].astype(float), rho)]
                if len(c) and np.isfinite(float(c["lambda_layer"].iloc[0])):
                    lam = float(c["lambda_layer"].iloc[0])
                    y = s.loc[np.isclose(s["lambda_layer"].astype(float), lam), "mean"]
                    if len(y):
                        ax.plot([lam], [float(y.iloc[0])], marker="o", markersize=14, markerfacecolor="none",
                                markeredgecolor="black", linestyle="none")
        ax.set_xscale("log")
        ax.set_xlabel("layer weight λ (log scale)")
        ax.set_title(f"ρ = {rho:g}")
    axes[0, 0].set_ylabel(("oracle" if selection == "oracle" else "non-oracle") + " validation accuracy")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    from matplotlib.lines import Line2D
    handles.append(Line2D([], [], marker="o", markersize=10, markerfacecolor="none", markeredgecolor="black",
                          linestyle="none"))
    labels.append("selected λ")
    fig.legend(handles, labels, loc="lower center", ncol=3, frameon=False)
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    return fig


EFFECT_LABELS = {
    "subdistill_minus_kd_at_rho1": "SubDistill − KD at ρ = 1",
    "kd_drop_rho0_to_rho1": "KD at ρ = 0 − KD at ρ = 1",
}


def calibration_effect(effects, steps: int | None = None):
    """The effect vs data size, mean ± std over seeds. ``effects``: a long table with
    columns train_per_class (or pool_per_class), effect (a key of :data:`EFFECT_LABELS`), mean, std
    (see :func:`reprolib.verdicts.calibration_effects`)."""
    fig, axes = _subplots(figsize=(6.2, 3.6))
    ax = axes[0, 0]
    styles = [dict(color=OKABE_ITO[4], marker="*", linestyle="-", markersize=9),
              dict(color=OKABE_ITO[0], marker="o", linestyle="--")]
    size = "train_per_class" if "train_per_class" in effects.columns else "pool_per_class"
    pools = sorted(effects[size].unique())
    for st, (name, g) in zip(styles, effects.groupby("effect", sort=False)):
        g = g.sort_values(size)
        ax.errorbar(g[size], g["mean"], yerr=_std(g["std"]), capsize=3,
                    label=EFFECT_LABELS.get(name, name), **st)
    ax.axhline(0, color="#777777", linewidth=1)
    ax.set_xscale("log")
    ax.set_xticks(pools)
    ax.set_xticklabels([str(int(p)) for p in pools])
    ax.minorticks_off()
    ax.set_xlabel("training images per class (log scale)" if size == "train_per_class"
                  else "images per class in the distillation pool (log scale)")
    ax.set_ylabel("test-accuracy difference (share of images)")
    if steps:
        ax.set_title(f"every run: {steps} optimiser steps")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def kd_ablation(summary, selection: str | None = "oracle", teacher: Mapping[float, float] | None = None,
                labels: Mapping[str, str] | None = None):
    """The same methods with two students: colour and marker = method, line style =
    student (solid: narrow, K/d = 0.25; dashed: wide, K/d = 0.5). ``summary`` has a
    ``student`` column."""
    d = _select(summary, selection)
    fig, axes = _subplots(figsize=(6.6, 4.8))
    ax = axes[0, 0]
    students = list(dict.fromkeys(d["student"]))
    dashes = ["-", "--", ":", "-."]
    rhos = sorted(d["rho"].astype(float).unique())
    step = min(np.diff(rhos)) if len(rhos) > 1 else 1.0
    combos = [(m, s) for s in students for m in _methods(d[d["student"] == s])]
    shift = _dodge([f"{m}|{s}" for m, s in combos], 0.02 * step)
    for m, s in combos:
        g = d[(d["method"] == m) & (d["student"] == s)].sort_values("rho")
        st = method_style(m)
        st["linestyle"] = dashes[students.index(s) % len(dashes)]
        if students.index(s) > 0:
            st["markerfacecolor"] = "white"
        ax.errorbar(g["rho"].astype(float) + shift[f"{m}|{s}"], g["test_accuracy_mean"],
                    yerr=_std(g["test_accuracy_std"]), capsize=3,
                    label=f"{METHOD_SHORT.get(m, m)}, {(labels or STUDENT_LABELS).get(s, s)}", **st)
    if teacher:
        xs = sorted(teacher)
        ax.plot(xs, [teacher[x] for x in xs], color="black", linestyle=(0, (5, 2)), linewidth=1.2, label="teacher")
    ax.set_xlabel("contamination rate ρ")
    ax.set_ylabel("test accuracy (share of images correct)")
    ax.set_ylim(0, 1.02)
    ax.set_xticks(rhos)
    ax.set_xlim(min(rhos) - 0.1, max(rhos) + 0.1)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# One run
def training_curves(metrics: dict):
    """Loss terms and validation accuracies per epoch of one run; the selected epoch
    (``best_epoch`` is 0-based, epochs are shown 1-based) is marked."""
    c = metrics["curves"]
    epochs = np.arange(1, len(c["loss"]) + 1)
    fig, axes = _subplots(1, 2, figsize=(8.8, 3.4))
    a, b = axes[0]
    a.plot(epochs, c["kd"], color=OKABE_ITO[0], marker="o", markersize=3, label="output term T²·KL")
    if any(v for v in c["layer"]):
        a.plot(epochs, c["layer"], color=OKABE_ITO[4], marker="s", markersize=3, linestyle="--",
               label="sum of layer terms")
    a.plot(epochs, c["loss"], color="black", linestyle=":", linewidth=1.2, label="total loss")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss (mean per batch, log scale)")
    a.set_yscale("log")
    a.set_title("(a) training loss")
    a.legend(frameon=False)
    ve = validation_epochs(metrics)
    b.plot(ve, c["val_accuracy"], color=OKABE_ITO[4], marker="o", markersize=3,
           label="oracle validation (random digits)")
    b.plot(ve, c["val_correlated_accuracy"][:len(ve)], color=OKABE_ITO[5], marker="^", markersize=3,
           linestyle="--", label="non-oracle validation (label's digit)")
    sel = int(metrics["best_epoch"]) + 1
    b.axvline(sel, color="#777777", linestyle=":", label=f"selected epoch ({sel})")
    b.set_xlabel("epoch")
    for ax in (a, b):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    b.set_ylabel("validation accuracy")
    b.set_ylim(0, 1.02)
    b.set_title("(b) validation accuracy")
    b.legend(frameon=False)
    fig.tight_layout()
    return fig


def confusion_table(digits, predictions, n_classes: int = 5, normalize: bool = True):
    """Painted digit × prediction, always ``n_classes`` × ``n_classes`` (a class that
    is never predicted, or a digit that never occurs, keeps its row/column of zeros).
    Images without a digit (``digit < 0``) are left out. Rows sum to 1 when
    ``normalize``."""
    import pandas as pd

    digits = np.asarray(digits).astype(int)
    predictions = np.asarray(predictions).astype(int)
    keep = (digits >= 0) & (digits < n_classes) & (predictions >= 0) & (predictions < n_classes)
    counts = np.zeros((n_classes, n_classes), dtype=float)
    np.add.at(counts, (digits[keep], predictions[keep]), 1)
    if normalize:
        rows = counts.sum(1, keepdims=True)
        counts = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    return pd.DataFrame(counts, index=pd.Index(range(n_classes), name="painted digit"),
                        columns=pd.Index(range(n_classes), name="prediction"))


def confusion_matrix(digits, predictions, n_classes: int = 5, class_names: Sequence[str] | None = None):
    """Heat map of :func:`confusion_table` (share of each digit's images per
    prediction); a shortcut shows as a bright diagonal. Always square."""
    table = confusion_table(digits, predictions, n_classes)
    fig, axes = _subplots(figsize=(4.6, 3.9))
    ax = axes[0, 0]
    im = ax.imshow(table.values, vmin=0, vmax=1, cmap="cividis")
    for i in range(n_classes):
        for j in range(n_classes):
            v = table.values[i, j]
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if v > 0.5 else "white")
    ax.set_xticks(range(n_classes))
    ax.set_yticks(range(n_classes))
    if class_names:
        ax.set_xticklabels([f"{k}: {n}" for k, n in enumerate(class_names)], rotation=35, ha="right")
    ax.set_xlabel("student's prediction (class index)")
    ax.set_ylabel("digit painted on the image")
    fig.colorbar(im, ax=ax, label="share of the digit's images")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Data and subspace
def example_grid(worlds: dict, n: int = 8, splits: Sequence[str] = ("train", "val", "test")):
    """Rows: (ρ, split); columns: the first ``n`` images of the split (those with a
    digit first), titled with label and painted digit. ``worlds`` maps ρ to a world."""
    rows = [(rho, split) for rho in worlds for split in splits]
    fig, axes = _subplots(len(rows), n, figsize=(1.05 * n + 0.8, 1.2 * len(rows) + 0.5))
    names = {"train": "train", "val": "oracle val.", "val_correlated": "non-oracle val.", "test": "test"}
    for r, (rho, split) in enumerate(rows):
        world = worlds[rho]
        p = world.plans[split]
        order = np.argsort(~p.plan.has_digit, kind="stable")[:n]
        x = world.pixels(split, order).numpy()
        for c in range(n):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(order):
                ax.axis("off")
                continue
            img = x[c].transpose(1, 2, 0)
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
            d = int(p.plan.digit[order[c]])
            ax.set_title(f"class {int(p.labels[order[c]])}, digit {'–' if d < 0 else d}", fontsize=6)
            if c == 0:
                ax.set_ylabel(f"ρ = {rho:g}\n{names.get(split, split)}", fontsize=7)
    fig.tight_layout()
    return fig


def spectra(subspaces):
    """Eigenvalue spectrum of M per layer (log scale), the kept K marked."""
    fig, axes = _subplots(1, len(subspaces), figsize=(3.0 * len(subspaces) + 0.4, 3.0))
    for ax, sub in zip(axes[0], subspaces):
        ev = np.asarray(sub.eigenvalues, dtype=float)
        ax.semilogy(np.arange(1, len(ev) + 1), np.clip(ev, 1e-12, None), color=OKABE_ITO[4])
        k = sub.basis.shape[1]
        ax.axvline(k, color=OKABE_ITO[5], linestyle=":", label=f"kept K = {k}")
        ax.set_title(f"layer {sub.layer}", fontsize=9)
        ax.set_xlabel("eigenvalue rank")
        ax.legend(frameon=False)
    axes[0, 0].set_ylabel("eigenvalue of M (log scale)")
    fig.tight_layout()
    return fig


def digit_energy(energy, fitted_col: str = "fitted_on_rho", share_col: str = "digit_energy_in_U_K",
                 random_col: str = "in_random_K_subspace"):
    """Share of the digit's effect on the teacher's features inside U_K per layer,
    per ρ the subspace was fitted on; black ticks: a random K-dimensional subspace.
    ``energy`` is a flat table with columns layer, ``fitted_col``, ``share_col``, ``random_col``."""
    layers = list(dict.fromkeys(energy["layer"]))
    fits = sorted(energy[fitted_col].unique())
    fig, axes = _subplots(figsize=(6.0, 3.4))
    ax = axes[0, 0]
    width = 0.8 / max(len(fits), 1)
    hatches = ["", "//", "..", "xx"]
    for i, f in enumerate(fits):
        d = energy[energy[fitted_col] == f].set_index("layer").reindex(layers)
        xs = np.arange(len(layers)) + (i - (len(fits) - 1) / 2) * width
        ax.bar(xs, d[share_col], width=width, color=OKABE_ITO[[4, 0, 2, 6][i % 4]], hatch=hatches[i % 4],
               edgecolor="black", linewidth=0.5, label=f"U_K fitted at ρ = {f:g}")
        ax.plot(np.column_stack([xs - width / 2, xs + width / 2]).T,
                np.vstack([d[random_col], d[random_col]]), color="black", linewidth=1.5)
    ax.plot([], [], color="black", linewidth=1.5, label="random K-dim. subspace")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(layers)
    ax.set_xlabel("teacher layer")
    ax.set_ylabel("share of the digit's effect inside the subspace")
    ax.set_ylim(0, 1.02)
    ax.legend(frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------
# Explanations
def tsne_panels(embeddings: Mapping[str, np.ndarray], colour_values, rho: float, methods: Sequence[str],
                colour_by: str = "class", names: Sequence[str] | None = None, ncols: int = 3,
                title: str | None = None):
    """t-SNE of the pooled features of the teacher and each method's student at one
    ρ, in a grid of ``ncols`` columns (about 2.8 in per panel, legible at page width).
    ``colour_by="class"`` uses the class palette, ``"digit"`` the ordered digit scale:
    the two never share colours. Keys of ``embeddings``: "teacher", "<method>|<ρ>"."""
    import matplotlib.pyplot as plt

    keys = [("teacher", "teacher")] + [(m, f"{m}|{rho:g}") for m in methods if f"{m}|{rho:g}" in embeddings]
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = _subplots(nrows, ncols, figsize=(2.9 * ncols, 2.8 * nrows + 0.6))
    values = np.asarray(colour_values).astype(int)
    uniq = sorted(set(values.tolist()))
    if colour_by == "class":
        colours = {v: CLASS_COLOURS[k % len(CLASS_COLOURS)] for k, v in enumerate(uniq)}
        label = (lambda v: names[v] if names is not None and v < len(names) else f"class {v}")
    else:
        cmap = plt.get_cmap("viridis")
        top = max(max(uniq), 1)
        colours = {v: cmap(v / top * 0.9) for v in uniq}
        label = (lambda v: f"digit {v}")
    for ax in axes.flat:
        ax.axis("off")
    for ax, (m, key) in zip(axes.flat, keys):
        emb = np.asarray(embeddings[key])
        ax.axis("on")
        for v in uniq:
            sel = values[: len(emb)] == v
            ax.scatter(emb[sel, 0], emb[sel, 1], s=5, color=colours[v], label=label(v), linewidths=0)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("t-SNE dimension 1", fontsize=7)
        ax.set_ylabel("t-SNE dimension 2", fontsize=7)
        ax.set_title(method_label(m) if m == "teacher" else METHOD_SHORT.get(m, m), fontsize=9)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), markerscale=3, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95 if title else 1))
    return fig


def lrp_grid(images, heatmaps: Mapping[str, np.ndarray], rho: float, methods: Sequence[str], box,
             image_labels=None, image_digits=None, n: int = 6, title: str | None = None):
    """LRP heat maps: first row the images, then the teacher and one row per method
    (first seed) at ρ; red positive, blue negative relevance, each map scaled to its
    own maximum; the square marks the digit patch."""
    import matplotlib.pyplot as plt

    rows = ["teacher"] + [m for m in methods if f"{m}|{rho:g}" in heatmaps]
    n = min(n, len(images))
    fig, axes = _subplots(len(rows) + 1, n, figsize=(1.45 * n + 1.2, 1.45 * (len(rows) + 1) + 0.2))
    r0, c0, s = box
    for j in range(n):
        img = np.asarray(images[j]).transpose(1, 2, 0)
        axes[0, j].imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray")
        if image_labels is not None:
            axes[0, j].set_title(f"class {int(image_labels[j])}, digit {int(image_digits[j])}", fontsize=7)
        for i, name in enumerate(rows, start=1):
            h = np.asarray(heatmaps["teacher" if name == "teacher" else f"{name}|{rho:g}"][j])
            v = float(np.abs(h).max()) or 1.0
            axes[i, j].imshow(h, cmap="bwr", vmin=-v, vmax=v)
            axes[i, j].add_patch(plt.Rectangle((c0 - .5, r0 - .5), s, s, fill=False, lw=0.8, ec="black"))
    for i, name in enumerate(["image"] + rows):
        axes[i, 0].set_ylabel(METHOD_SHORT.get(name, name), fontsize=8)
    for a in axes.flat:
        a.set_xticks([])
        a.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.96 if title else 1))
    return fig


def _pairs_axis(ax, counts) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(counts)
    ax.set_xticklabels([str(int(c)) for c in counts])
    ax.minorticks_off()
    ax.set_xlabel("aligned layer pairs (log scale)")


def alignment_cost(report):
    """What deeper alignment costs (:func:`reprolib.cost.alignment_cost`'s report): (a) the
    training step's time as a ratio to output-only KD's, (b) the step's peak memory, each
    against the number of aligned layer pairs per layer method; bars span the range over
    rounds (time) and over repeats (memory); KD is the black dashed line."""
    rows = report["rows"]
    memory = all("peak_step_mib" in r for r in rows)
    fig, axes = _subplots(1, 2 if memory else 1, figsize=(9.4 if memory else 5.2, 3.6))
    kd = next(r for r in rows if r["method"] == "kd")
    counts = sorted({r["pairs"] for r in rows if r["method"] != "kd"})
    panels = [("step_ratio_to_kd", "step_ratio_min", "step_ratio_max", 1.0, "training step time / output-only KD's")]
    if memory:
        panels.append(("peak_step_mib", "peak_step_mib_min", "peak_step_mib_max", kd["peak_step_mib"],
                       "peak memory of a training step (MiB)"))
    for ax, (mid, low, high, kd_value, ylabel), letter in zip(axes[0], panels, "ab"):
        for method in _methods({"method": [r["method"] for r in rows if r["method"] != "kd"]}):
            mine = sorted((r for r in rows if r["method"] == method and r[mid] is not None), key=lambda r: r["pairs"])
            x = [r["pairs"] for r in mine]
            y = np.array([r[mid] for r in mine], dtype=float)
            err = np.array([[r[mid] - r[low] for r in mine], [r[high] - r[mid] for r in mine]], dtype=float)
            ax.errorbar(x, y, yerr=np.clip(err, 0, None), capsize=3, label=method_label(method), **method_style(method))
        ax.axhline(kd_value, color="black", linestyle="--", linewidth=1.2, label=method_label("kd"))
        _pairs_axis(ax, counts)
        ax.set_ylabel(ylabel)
        ax.set_title(f"({letter})", loc="left")
    axes[0, 0].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def accuracy_vs_pairs(summary, selection: str | None = "oracle", chance: float = 0.2):
    """Test accuracy against the number of aligned layer pairs, one panel per ρ: each layer
    method at its λ selected per count (mean ± std over seeds); output-only KD, which aligns
    no layer, as a black dashed line with its ± std band. ``summary``: a
    :func:`reprolib.results.select_lambda` table with ``layer_pair_count`` (0 for KD)."""
    d = _select(summary, selection)
    rhos = sorted(d["rho"].astype(float).unique())
    fig, axes = _subplots(1, len(rhos), figsize=(4.0 * len(rhos) + 0.6, 3.6), sharey=True)
    counts = sorted(int(c) for c in d.loc[d["layer_pair_count"] > 0, "layer_pair_count"].unique())
    for ax, rho in zip(axes[0], rhos):
        at_rho = d[(d["rho"].astype(float) - rho).abs() < 1e-9]
        layer = at_rho[at_rho["layer_pair_count"] > 0]
        for method in _methods(layer):
            g = layer[layer["method"] == method].sort_values("layer_pair_count")
            ax.errorbar(g["layer_pair_count"], g["test_accuracy_mean"], yerr=_std(g["test_accuracy_std"]), capsize=3,
                        label=method_label(method), **method_style(method))
        kd = at_rho[at_rho["method"] == "kd"]
        if len(kd):
            mean, std = float(kd["test_accuracy_mean"].iloc[0]), float(np.nan_to_num(kd["test_accuracy_std"].iloc[0]))
            ax.axhline(mean, color="black", linestyle="--", linewidth=1.2, label=method_label("kd") + ", no layer pairs")
            ax.axhspan(mean - std, mean + std, color="black", alpha=0.08, linewidth=0)
        ax.axhline(chance, color="#777777", linestyle=":", linewidth=1)
        _pairs_axis(ax, counts)
        ax.set_title(f"ρ = {rho:g}")
    axes[0, 0].set_ylabel("test accuracy")
    axes[0, -1].legend(frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def digit_following_by_teacher(table, teachers: Sequence[Mapping] = (), chance: float = 0.2):
    """Chapter 10: each method's students' digit-following on the random-digit test set
    (the share of images whose digit differs from their label classified as the digit),
    one panel per ρ they were distilled at; filled markers: distilled from the biased
    teacher, open: from the book's teacher; mean ± std over seeds. Horizontal lines: each
    teacher's own digit-following (``teachers``: book's first, biased last); dotted: chance."""
    rhos = sorted(table["rho"].astype(float).unique())
    methods = _methods(table)
    fig, axes = _subplots(1, len(rhos), figsize=(3.6 * len(rhos) + 1.0, 3.6), sharey=True)
    for ax, rho in zip(axes[0], rhos):
        at = table[(table["rho"].astype(float) - rho).abs() < 1e-9]
        for i, method in enumerate(methods):
            for teacher, shift, filled in (("book", -0.15, False), ("biased", 0.15, True)):
                v = at[(at["method"] == method) & (at["teacher"] == teacher)]["predicts_digit_differs_rho1"].astype(float)
                if not len(v):
                    continue
                style = method_style(method)
                ax.errorbar([i + shift], [v.mean()], yerr=[_std([v.std()])[0] if len(v) > 1 else 0.0], capsize=3,
                            color=style["color"], marker=style["marker"], markersize=style["markersize"], linestyle="none",
                            markerfacecolor=style["color"] if filled else "white")
        for t, ls, label in zip(teachers, ("--", "-"), ("book's teacher itself", "biased teacher itself")):
            ax.axhline(t["predicts_digit_differs"], color="black", linestyle=ls, linewidth=1.1, label=label)
        ax.axhline(chance, color="#777777", linestyle=":", linewidth=1, label="chance")
        ax.set_xticks(range(len(methods)))
        ax.set_xticklabels([METHOD_SHORT.get(m, m) for m in methods])
        ax.set_title(f"students distilled at ρ = {rho:g}")
        ax.set_ylim(0, 1)
    axes[0, 0].set_ylabel("answers the digit (digit ≠ label)")
    from matplotlib.lines import Line2D

    handles, _ = axes[0, -1].get_legend_handles_labels()
    handles += [Line2D([], [], color="#555555", marker="o", linestyle="none", markerfacecolor="white",
                       label="from the book's teacher"),
                Line2D([], [], color="#555555", marker="o", linestyle="none", label="from the biased teacher")]
    axes[0, -1].legend(handles=handles, frameon=False, fontsize=7)
    fig.tight_layout()
    return fig


def conditions_map(effects, main: tuple[str, float] | None = None, first: tuple[str, float] | None = None):
    """Chapter 11's two heatmaps over (teacher recipe × the crop's smallest scale): (a)
    output-only KD's drop from ρ = 0 to ρ = 1, (b) SubDistill − KD at ρ = 1, in accuracy
    points, each cell annotated with mean ± standard error over seeds. ``main`` and
    ``first`` (teacher recipe, crop minimum) outline the book's main world and the first
    book's world."""
    from matplotlib.patches import Rectangle

    teachers = list(dict.fromkeys(effects["teacher_recipe"]))
    crops = sorted(effects["crop_min"].astype(float).unique())
    fig, axes = _subplots(1, 2, figsize=(4.2 * 2 + 0.8, 0.9 * len(teachers) + 2.2))
    for ax, (col, se_col, title, cmap, centred) in zip(axes[0], (
            ("kd_drop", "kd_drop_se", "(a) KD's drop, ρ = 0 → 1 (points)", "Oranges", False),
            ("lead", "lead_se", "(b) SubDistill − KD at ρ = 1 (points)", "RdBu", True))):
        grid = np.full((len(teachers), len(crops)), np.nan)
        ses = np.full_like(grid, np.nan)
        for _, r in effects.iterrows():
            i, j = teachers.index(r["teacher_recipe"]), crops.index(float(r["crop_min"]))
            grid[i, j], ses[i, j] = 100 * r[col], 100 * r[se_col]
        lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
        lim = max(float(lim), 1.0)
        im = ax.imshow(grid, cmap=cmap, vmin=-lim if centred else 0, vmax=lim, aspect="auto")
        for i in range(len(teachers)):
            for j in range(len(crops)):
                if np.isfinite(grid[i, j]):
                    # White text only on dark cells: far from 0 on the diverging scale, high on the sequential one.
                    dark = (abs(grid[i, j]) if centred else grid[i, j]) > 0.6 * lim
                    ax.text(j, i, f"{grid[i, j]:+.1f}\n± {ses[i, j]:.1f}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        for cell, ls in ((main, "-"), (first, "--")):
            if cell and cell[0] in teachers and float(cell[1]) in crops:
                ax.add_patch(Rectangle((crops.index(float(cell[1])) - 0.5, teachers.index(cell[0]) - 0.5), 1, 1,
                                       fill=False, linewidth=2, linestyle=ls, edgecolor="black"))
        ax.set_xticks(range(len(crops)))
        ax.set_xticklabels([f"({c:g}, 1)" for c in crops])
        ax.set_yticks(range(len(teachers)))
        ax.set_yticklabels(teachers)
        ax.set_xlabel("students' random-resized-crop scale")
        ax.set_ylabel("teacher recipe")
        ax.set_title(title, loc="left")
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return fig

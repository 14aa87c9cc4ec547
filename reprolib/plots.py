"""Figures the notebooks show. Each function draws into a new matplotlib figure
and returns it; nothing is computed here that the library does not expose."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def example_grid(worlds: dict, n: int = 8, splits: Sequence[str] = ("train", "val", "test")):
    """Rows: (ρ, split); columns: the first ``n`` images of the split, titled
    with label and painted digit. ``worlds`` maps ρ to a built world."""
    import matplotlib.pyplot as plt

    rows = [(rho, split) for rho in worlds for split in splits]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.15 * n, 1.35 * len(rows)), squeeze=False)
    names = {"train": "train", "val": "oracle val", "val_correlated": "non-oracle val", "test": "test"}
    for r, (rho, split) in enumerate(rows):
        world = worlds[rho]
        p = world.plans[split]
        # Prefer images with a digit so the artifact is visible where there is one.
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
            ax.set_title(f"y={int(p.labels[order[c]])} d={'-' if d < 0 else d}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"ρ={rho:g}\n{names.get(split, split)}", fontsize=8)
    fig.suptitle("y: subtask label, d: painted digit (− none)", fontsize=9)
    fig.tight_layout()
    return fig


def training_curves(metrics: dict):
    """Loss terms and validation accuracies per epoch of one run."""
    import matplotlib.pyplot as plt

    c = metrics["curves"]
    epochs = np.arange(1, len(c["loss"]) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.plot(epochs, c["kd"], label="T²·KL (output)")
    if any(v for v in c["layer"]):
        a.plot(epochs, c["layer"], label="Σ layer terms")
    a.plot(epochs, c["loss"], "k--", lw=1, label="total")
    a.set_xlabel("epoch")
    a.set_yscale("log")
    a.set_title("training loss")
    a.legend(fontsize=8)
    b.plot(epochs, c["val_accuracy"], label="val (selection set)")
    b.plot(epochs, c["val_correlated_accuracy"], label="val (other digit mode)")
    b.axvline(metrics["best_epoch"] + 1, color="gray", ls=":", label="selected epoch")
    b.set_xlabel("epoch")
    b.set_ylim(0, 1)
    b.set_title("validation accuracy")
    b.legend(fontsize=8)
    fig.tight_layout()
    return fig


def spectra(subspaces, ks=None):
    """Eigenvalue spectrum of M per layer, with the kept K marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(subspaces), figsize=(3.2 * len(subspaces), 2.8), squeeze=False)
    for ax, sub in zip(axes[0], subspaces):
        ev = np.asarray(sub.eigenvalues, dtype=float)
        ax.semilogy(np.arange(1, len(ev) + 1), np.clip(ev, 1e-12, None))
        k = sub.basis.shape[1]
        ax.axvline(k, color="red", ls=":", label=f"K={k}")
        ax.set_title(f"{sub.layer}: α={sub.alpha:.3g}", fontsize=9)
        ax.set_xlabel("eigen-index")
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("eigenvalue of M")
    fig.tight_layout()
    return fig

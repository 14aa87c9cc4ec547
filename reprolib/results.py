"""A sweep's tables: results.csv (one row per finished run), λ selection, summary.csv.

Reads finished run folders (:mod:`reprolib.rundirs`); never trains. pandas is
imported lazily so that ``reprolib --help`` stays fast.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .config import RunConfig, split_sizes
from .errors import ReproError
from .io import read_json, write_texts
from .rundirs import check_run, run_dir_for

if TYPE_CHECKING:
    import pandas as pd

# Columns of results.csv, in order: the cell, its metrics, where it lives.
# ``student`` and ``train_per_class`` (training images per class: the pool's
# training part, §1.2) tell apart the cells of the K/d ablation and of the
# fixed-step calibration grid; λ is selected separately for each value.
CELL_COLUMNS = ("method", "rho", "seed", "lambda_layer", "pool_per_class", "train_per_class",
                "student")
METRIC_COLUMNS = (
    "val_accuracy", "test_accuracy", "test_accuracy_with_digit",
    "test_accuracy_digit_differs", "predicts_digit",
    "nonoracle_val_accuracy", "nonoracle_test_accuracy",
    "teacher_test_accuracy", "best_epoch", "optimizer_steps", "seconds",
)
# Cell columns (besides method and ρ) that split the λ selection when present.
GROUP_COLUMNS = ("pool_per_class", "train_per_class", "student", "layer_pair_count")
# The split accuracies of the non-oracle checkpoint, where the trainer gives them.
OPTIONAL_METRIC_COLUMNS = (
    "nonoracle_test_accuracy_with_digit", "nonoracle_test_accuracy_digit_differs",
    "nonoracle_predicts_digit", "predicts_digit_differs", "nonoracle_predicts_digit_differs",
)
RESULT_COLUMNS = (CELL_COLUMNS + METRIC_COLUMNS + ("run_dir", "world", "preset", "config_key")
                  + OPTIONAL_METRIC_COLUMNS)

# The per-seed quantities that select_lambda averages (besides the test accuracy).
SPLIT_METRICS = ("test_accuracy_with_digit", "test_accuracy_digit_differs", "predicts_digit")

# D3: which metric chooses λ and which one is reported, per selection rule.
SELECTIONS = {
    "oracle": ("val_accuracy", "test_accuracy"),
    "nonoracle": ("nonoracle_val_accuracy", "nonoracle_test_accuracy"),
}



def collect_results(cells: Iterable[RunConfig], out_dir: str | os.PathLike) -> "pd.DataFrame":
    """One row per finished cell, in grid order (columns :data:`RESULT_COLUMNS`)."""
    import pandas as pd

    out_dir = Path(out_dir)
    rows = []
    for cfg in cells:
        key = cfg.key()
        run_dir = run_dir_for(out_dir, cfg)
        if check_run(run_dir, key) is not None:
            continue
        m = read_json(run_dir / "metrics.json")
        sizes = split_sizes(cfg.data)
        k = len(cfg.data.subtask_classes)
        rows.append({
            "method": cfg.method,
            "rho": float(cfg.data.contamination_rate),
            "seed": int(cfg.seed),
            "lambda_layer": math.nan if cfg.method == "kd" else float(cfg.lambda_layer),
            "pool_per_class": cfg.data.pool_per_class,
            "train_per_class": None if sizes["train"] is None else round(sizes["train"] / k),
            "student": cfg.student,
            **{name: m.get(name) for name in METRIC_COLUMNS},
            # A cohort's students share its wall time (metrics.json's "seconds"); the
            # table gives each run its share, so that summing the column gives wall time.
            "seconds": _share(m.get("seconds"), m.get("cohort_size")),
            "run_dir": str(Path("runs") / key),
            "world": cfg.data.world,
            "preset": cfg.preset,
            "config_key": key,
            **{name: m.get(name) for name in OPTIONAL_METRIC_COLUMNS},
        })
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def _share(seconds, cohort_size):
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
        return seconds
    size = cohort_size if isinstance(cohort_size, int) and cohort_size > 0 else 1
    return seconds / size


def with_cell_fields(results: "pd.DataFrame", cells: Iterable[RunConfig], **getters) -> "pd.DataFrame":
    """``results`` with one column per ``getters`` item (``name=function of a RunConfig``),
    each run's value looked up by ``config_key`` in ``cells``. A run whose key is not among
    ``cells`` is an error (the table and the grid do not belong together)."""
    by_key = {cfg.key(): cfg for cfg in cells}
    missing = sorted(set(results["config_key"]) - set(by_key))
    if missing:
        raise ReproError(f"{len(missing)} run(s) of the table are not cells of the grid (e.g. {missing[0]}); "
                         "pass the cells the table was collected from")
    return results.assign(**{name: [get(by_key[k]) for k in results["config_key"]] for name, get in getters.items()})


def with_pair_counts(results: "pd.DataFrame", cells: Iterable[RunConfig]) -> "pd.DataFrame":
    """``results`` with a ``layer_pair_count`` column (:func:`with_cell_fields`): the number
    of aligned layer pairs of each run's config (0 for output-only KD, which aligns none).
    :func:`select_lambda` then chooses λ per count."""
    return with_cell_fields(results, cells, layer_pair_count=lambda c: 0 if c.method == "kd" else len(c.layer_pairs))


def write_results(results: "pd.DataFrame", out_dir: str | os.PathLike, grid: str | None = None,
                  main: bool = True) -> None:
    """The grid's tables, atomically and all together: ``results-<grid>.csv`` and
    ``summary-<grid>.csv`` (both selections) when ``grid`` is named, and, when ``main``,
    the folder's ``results.csv`` and ``summary.csv`` (those of its main grid: the first
    grid run into the folder, :func:`reprolib.sweep.run_sweep`)."""
    out_dir = Path(out_dir)
    texts = {"results": results.to_csv(index=False), "summary": summary_table(results).to_csv(index=False)}
    files = {}
    if grid is not None:
        files.update({out_dir / f"{name}-{grid}.csv": text for name, text in texts.items()})
    if main:
        files.update({out_dir / f"{name}.csv": text for name, text in texts.items()})
    write_texts(files)


def load_results(out_dir: str | os.PathLike) -> "pd.DataFrame":
    import pandas as pd

    path = Path(out_dir) / "results.csv"
    if not path.exists():
        raise ReproError(f"no results.csv in {out_dir}; run `reprolib sweep --out {out_dir}` first")
    return pd.read_csv(path)


# ---------------------------------------------------------------------------
# λ selection (D6, D3)
def select_lambda(results: "pd.DataFrame", selection: str = "oracle") -> "pd.DataFrame":
    """Choose λ per (method, ρ[, pool]) by the mean validation accuracy over seeds.

    D6: λ maximises the mean over seeds of the validation accuracy; ties go to
    the smaller λ. D3: ``selection="oracle"`` uses ``val_accuracy`` (random
    digits on val, the paper's rule) and reports ``test_accuracy``;
    ``"nonoracle"`` uses ``nonoracle_val_accuracy`` (correlated digits on val)
    and reports ``nonoracle_test_accuracy``. For the split accuracies
    (:data:`SPLIT_METRICS`) the non-oracle selection uses ``nonoracle_<name>``
    columns when the table has them, else NaN (the oracle checkpoint's split
    accuracies would mislabel it). Means and stds (ddof=1; 0 for one seed) are
    over seeds. ``kd`` has no λ (NaN), so it has one candidate. Pure.
    """
    import numpy as np
    import pandas as pd

    if selection not in SELECTIONS:
        raise ReproError(f"unknown selection {selection!r}; choose one of {list(SELECTIONS)}")
    val_col, test_col = SELECTIONS[selection]
    missing = [c for c in ("method", "rho", "seed", "lambda_layer", val_col, test_col)
               if c not in results.columns]
    if missing:
        raise ReproError(f"the results table lacks column(s) {missing} needed for "
                         f"{selection} selection")
    group_cols = ["method", "rho"] + [c for c in GROUP_COLUMNS if c in results.columns]
    split_cols = {}
    for name in SPLIT_METRICS:
        col = name if selection == "oracle" else f"nonoracle_{name}"
        split_cols[name] = col if col in results.columns else None

    out_columns = (["selection", *group_cols, "lambda_layer", "n_seeds", "n_lambdas",
                    "val_accuracy_mean", "test_accuracy_mean", "test_accuracy_std"]
                   + [f"{n}_{s}" for n in SPLIT_METRICS for s in ("mean", "std")])
    rows = []
    table = results.copy()
    for group, df in table.groupby(group_cols, dropna=False, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        lam_key = df["lambda_layer"].astype(float).fillna(-np.inf)   # kd: one NaN "λ"
        by_lam = df.assign(_lam=lam_key).groupby("_lam", sort=True)
        val_means = by_lam[val_col].mean()
        valid = val_means.dropna()
        if valid.empty:
            continue
        best = valid.max()
        # Ascending λ order: the first within rounding of the best is the smallest.
        chosen = next(lam for lam, v in valid.items() if v >= best - 1e-12)
        sel = df[lam_key == chosen]
        row = dict(zip(group_cols, group))
        row.update(selection=selection,
                   lambda_layer=math.nan if chosen == -np.inf else float(chosen),
                   n_seeds=int(sel["seed"].nunique()), n_lambdas=int(len(val_means)),
                   val_accuracy_mean=float(sel[val_col].mean()))
        row["test_accuracy_mean"], row["test_accuracy_std"] = _mean_std(sel[test_col])
        for name, col in split_cols.items():
            row[f"{name}_mean"], row[f"{name}_std"] = (
                _mean_std(sel[col]) if col is not None else (math.nan, math.nan))
        rows.append(row)
    return pd.DataFrame(rows, columns=out_columns)


def summary_table(results: "pd.DataFrame") -> "pd.DataFrame":
    """:func:`select_lambda` under every rule of :data:`SELECTIONS`, one table
    (the rows of summary.csv)."""
    import pandas as pd

    return pd.concat([select_lambda(results, s) for s in SELECTIONS], ignore_index=True)


def _same(column: "pd.Series", value) -> "pd.Series":
    """``column == value``, with NaN equal to NaN and floats compared with rounding."""
    import numpy as np

    if isinstance(value, float) and math.isnan(value):
        return column.isna()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return np.isclose(column.astype(float), float(value))
    return column == value


def runs_at_chosen_lambda(results: "pd.DataFrame", selection: str = "oracle") -> "pd.DataFrame":
    """The runs (rows of ``results``, every seed) at the λ that ``selection`` chooses for
    their (method, ρ[, pool, student]) group; KD, which has no λ, with all its runs.
    Ordered by group as :func:`select_lambda` returns them, then as in ``results``."""
    import pandas as pd

    chosen = select_lambda(results, selection)
    group_cols = ["method", "rho"] + [c for c in GROUP_COLUMNS if c in results.columns]
    parts = []
    for _, c in chosen.iterrows():
        mask = pd.Series(True, index=results.index)
        for col in group_cols:
            mask &= _same(results[col], c[col])
        if not (isinstance(c["lambda_layer"], float) and math.isnan(c["lambda_layer"])):
            mask &= _same(results["lambda_layer"], float(c["lambda_layer"]))
        parts.append(results[mask])
    if not parts:
        return results.iloc[:0]
    return pd.concat(parts)


def accuracy_table(summary: "pd.DataFrame") -> "pd.DataFrame":
    """Per method and ρ: seeds, and for each selection rule its λ and the test accuracy
    there (mean ± std over seeds, "–" where missing). Methods in :data:`METHODS` order."""
    import pandas as pd

    from .config import METHOD_SHORT, METHODS

    def cell(row):
        return (f"{row['test_accuracy_mean']:.3f} ± {row['test_accuracy_std']:.3f}"
                if pd.notna(row["test_accuracy_mean"]) else "–")

    rows = []
    for (m, rho), g in summary.groupby(["method", "rho"], sort=False):
        g = g.set_index("selection")
        row = {"method": METHOD_SHORT.get(m, m), "ρ": f"{rho:g}", "seeds": int(g["n_seeds"].iloc[0])}
        for s, label in (("oracle", "oracle"), ("nonoracle", "non-oracle")):
            if s in g.index:
                row[f"λ ({label})"] = g.loc[s, "lambda_layer"]
                row[f"test accuracy ({label})"] = cell(g.loc[s])
        rows.append(row)
    order = {METHOD_SHORT.get(m, m): i for i, m in enumerate(METHODS)}
    return pd.DataFrame(rows).sort_values(["method", "ρ"],
                                          key=lambda c: c.map(order) if c.name == "method" else c)


def describe_sweep(grid, results: "pd.DataFrame", run_cfg: RunConfig, world: str) -> str:
    """The bullet list that opens chapter 4: the grid, its methods, ρ, seeds and λ, the
    recipe of each run, and how many runs were reused or trained
    (``results.attrs["sweep"]``, as :func:`reprolib.sweep.run_sweep` sets it)."""
    from .config import METHOD_LABELS, METHODS

    done = results.attrs.get("sweep", {})
    steps = results["optimizer_steps"].dropna().unique() if "optimizer_steps" in results else []
    methods = [m for m in METHODS if m in set(results["method"])]
    return (
        f"* world **{world}**, sweep grid **{grid.name}**: {grid.describe()}; methods "
        + ", ".join(METHOD_LABELS.get(m, m) for m in methods) + "\n"
        f"* ρ ∈ {{{', '.join(f'{r:g}' for r in grid.rhos)}}}, seeds {list(grid.seeds)}, "
        f"λ ∈ {{{', '.join(f'{l:g}' for l in grid.lambdas)}}} (KD has no λ)\n"
        f"* each run: {run_cfg.epochs} epochs at batch {run_cfg.batch_size}"
        + (f", {int(steps[0])} optimiser steps" if len(steps) == 1 else "")
        + f", learning rate halved every {run_cfg.lr_step} epochs, {run_cfg.data.pool_per_class} images per "
        f"class in the pool\n"
        f"* {len(results)} finished runs: {done.get('reused', 0)} reused from earlier builds, "
        f"{done.get('computed', 0)} trained now")


# ---------------------------------------------------------------------------
# the convergence benchmark's measured tables (benchmarks/convergence.py)

def load_convergence(bench_dir: str | os.PathLike, run_cfg: RunConfig, preset: str):
    """The convergence tables measured in ``bench_dir`` (``convergence-*.json``): the
    newest one of ``preset``'s current recipe (its optimiser steps and learning rate, as
    ``run_cfg`` has them) or None, and the others (earlier recipes) as {file name: table}."""
    from .config import optimizer_steps

    measured = {p.name: read_json(p) for p in sorted(Path(bench_dir).glob("convergence-*.json"))}

    def current(name):
        return name.startswith(f"convergence-{preset}-") and all(
            r["steps"] == optimizer_steps(run_cfg) and r.get("lr", 1e-3) == run_cfg.lr
            for r in measured[name]["table"])

    names = [n for n in measured if current(n)]
    chosen = (names[-1], measured[names[-1]]) if names else None
    return chosen, {n: t for n, t in measured.items() if n not in names}


def convergence_table(measured: dict) -> "pd.DataFrame":
    """A measured convergence table (one row per method) as the book shows it."""
    import pandas as pd

    from .config import METHOD_LABELS

    ct = pd.DataFrame(measured["table"])
    return pd.DataFrame({
        "method": ct["method"].map(lambda m: METHOD_LABELS.get(m, m)),
        "λ": ct["lambda_layer"].map(lambda v: "–" if v == 0 else f"{v:g}"),
        "steps": ct["steps"], "test accuracy": [f"{m:.3f} ± {s:.3f}" for m, s in zip(ct["test_mean"], ct["test_std"])],
        "3× steps": ct["steps_long"],
        "test accuracy, 3× steps": [f"{m:.3f} ± {s:.3f}" for m, s in zip(ct["test_mean_long"], ct["test_std_long"])],
        "change (points)": [f"{100 * d:+.1f}" for d in ct["long_minus_quick"]],
        "within 2 points": ["yes" if c else "no" for c in ct["converged"]]})


def _mean_std(values: "pd.Series") -> tuple[float, float]:
    """Mean and std (ddof 1) of a summary table's column, with the tables' convention of std 0
    for one seed (the verdicts' :func:`reprolib.verdicts.seed_stats` gives NaN there)."""
    values = values.astype(float)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.count() > 1 else 0.0
    return mean, std


RESULTS_COLUMNS_NEEDED = ("method", "rho", "seed", "lambda_layer", "val_accuracy", "test_accuracy",
                          "run_dir")


def check_results_table(loader, sweep_dir: str | os.PathLike):
    """``loader(sweep_dir)`` (a sweep's results.csv as a DataFrame), or a
    :class:`ReproError` naming the file when it is empty, unparsable or not a
    reprolib results table."""
    path = Path(sweep_dir) / "results.csv"
    try:
        table = loader(sweep_dir)
    except ReproError:
        raise
    except (ValueError, UnicodeDecodeError, OSError) as exc:   # pandas' EmptyDataError, ParserError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ReproError(f"{path} is not a readable results table ({first}); rerun "
                         f"`python -m reprolib sweep --out {sweep_dir}` to rewrite it") from None
    missing = [c for c in RESULTS_COLUMNS_NEEDED if c not in table.columns]
    if missing:
        raise ReproError(f"{path} is not a reprolib results table (no column(s) {missing}); rerun "
                         f"`python -m reprolib sweep --out {sweep_dir}` to rewrite it")
    if table.empty:
        raise ReproError(f"{path} lists no finished run; run the sweep first")
    return table

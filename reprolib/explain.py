"""Explaining the students of a finished sweep: t-SNE features (D10) and LRP relevance (D9).

For each method and contamination rate, the students at the λ that the sweep
selected (oracle selection, D6) are analysed on **the same test images** for
every model: the first images of the ρ = 1 test set, where every image carries
a random digit (D4), so that each student, whatever ρ it was trained at, can be
asked whether it follows the digit.

* t-SNE (D10): the globally pooled output of the last distilled student layer;
  k-nearest-neighbour agreement (k = 10, in feature space) with the class and
  with the digit, per run; the embedding itself for one seed per (method, ρ).
* LRP (D9): heatmaps of the logit gap (true label) at the input, summed over
  channels, for the teacher and each student; per image the Pearson correlation
  between teacher and student heatmaps, and the share of positive relevance
  inside the digit patch.

``python -m reprolib explain --sweep DIR --out DIR2`` writes ``knn.csv``,
``lrp.csv`` and their per-(method, ρ) summaries, plus ``embeddings.npz`` and
``heatmaps.npz`` for the figures, all atomically; a second call with the same
sweep results and settings loads them.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

from .errors import ReproError
from .io import atomic_path, check_output_dir, digest, read_json, write_json, write_text
from .results import check_results_table
from .rundirs import check_run_folders

ANALYSIS_RHOS = (0.0, 0.5, 1.0)


def sweep_results(sweep_dir: str | Path, grid: str | None = None, world: str = "mini"):
    """The results table of a sweep folder: ``results.csv`` (the grid that ran last),
    or, when ``grid`` is named, that grid's finished runs (a folder may hold
    several grids, e.g. the quick sweep and its calibration curve)."""
    from .grids import expand_grid
    from .results import collect_results, load_results

    if grid is None:
        return check_results_table(load_results, sweep_dir)
    results = collect_results(expand_grid(grid, world), sweep_dir)
    if results.empty:
        raise ReproError(f"the sweep in {sweep_dir} has no finished run of the {grid!r} grid; "
                         f"run `python -m reprolib sweep --preset {grid} --out {sweep_dir}` first")
    return results


def selected_runs(sweep_dir: str | Path, selection: str = "oracle", rhos=ANALYSIS_RHOS,
                  grid: str | None = None, world: str = "mini"):
    """The runs at the chosen λ of every (method, ρ), all seeds: a DataFrame with
    method, rho, seed, lambda_layer and the absolute run folder."""
    import pandas as pd

    from .results import runs_at_chosen_lambda

    sweep_dir = Path(sweep_dir)
    results = sweep_results(sweep_dir, grid, world)
    if "pool_per_class" in results.columns and results["pool_per_class"].nunique(dropna=False) > 1:
        # A calibration sweep: analyse its most common pool size only.
        pool = results["pool_per_class"].mode().iloc[0]
        results = results[results["pool_per_class"] == pool]
    rows = [{"method": r["method"], "rho": float(r["rho"]), "seed": int(r["seed"]),
             "lambda_layer": r["lambda_layer"], "run_dir": str(sweep_dir / r["run_dir"])}
            for _, r in runs_at_chosen_lambda(results, selection).iterrows()
            if any(abs(r["rho"] - rho) < 1e-9 for rho in rhos)]
    if not rows:
        raise ReproError(f"the sweep in {sweep_dir} has no finished runs at rho in {list(rhos)}")
    check_run_folders([r["run_dir"] for r in rows], sweep_dir)   # harden: before any work
    return pd.DataFrame(rows)


def analysis_images(cfg, n: int):
    """The first ``n`` images of the ρ = 1 test set of ``cfg``'s world: (world, x, y, digit)."""
    from .worlds import build_world

    world = build_world(cfg.replace(contamination_rate=1.0).data, cfg.seed)
    x, y, d = world.tensors("test")
    n = min(n, len(y))
    return world, x[:n], y[:n], d[:n]


def digit_measurement_images(cfg, world, n: int):
    """Up to ``n`` digit-bearing test images of ``world`` (built from ``cfg``), normalised,
    with their digit and without it, and their labels: what chapter 2 measures the
    digit's effect on. When the world's test images carry no digit (ρ = 0), the first
    ``n`` test images of the ρ = 1 world, painted by the same protocol."""
    import torch

    from .worlds import build_world

    rows = np.flatnonzero(world.plans["test"].plan.has_digit)[:n]
    if len(rows) == 0:
        world = build_world(cfg.replace(contamination_rate=1.0).data, cfg.seed)
        rows = np.arange(min(n, len(world.plans["test"].labels)))
    x_with = world.normalized(world.pixels("test", rows))
    x_without = world.normalized(world.pixels("test", rows, with_digit=False))
    return x_with, x_without, torch.as_tensor(world.plans["test"].labels[rows])


def _digest(results, settings: dict) -> str:
    """The key of an analysis: the sweep's results table (as CSV) and the settings."""
    return digest(results.to_csv(index=False).encode() + json.dumps(settings, sort_keys=True).encode())


def explain_sweep(sweep_dir: str | Path, out_dir: str | Path, *, tsne_images: int = 600,
                  lrp_images: int = 64, rhos=ANALYSIS_RHOS, selection: str = "oracle",
                  progress: bool = True, force: bool = False, grid: str | None = None,
                  world: str = "mini") -> dict:
    """Both analyses for a finished sweep; returns a dict of tables and arrays."""
    import pandas as pd
    from tqdm import tqdm

    from . import embedding, lrp
    from .config import RunConfig
    from .teacher import build_teacher
    from .rundirs import load_student

    sweep_dir, out_dir = Path(sweep_dir), Path(out_dir)
    check_output_dir(out_dir, "--out")   # before any work, not when saving
    settings = {"tsne_images": tsne_images, "lrp_images": lrp_images, "rhos": list(rhos),
                "selection": selection}
    if grid is None and not (sweep_dir / "results.csv").is_file():
        raise ReproError(f"no results.csv in {sweep_dir}: run `python -m reprolib sweep --out {sweep_dir}` first")
    digest = _digest(sweep_results(sweep_dir, grid, world), settings)
    manifest = out_dir / "manifest.json"
    if not force and manifest.is_file() and read_json(manifest).get("digest") == digest:
        return load_explanations(out_dir)

    start = time.time()
    runs = selected_runs(sweep_dir, selection, rhos, grid, world)
    cfg0 = RunConfig.from_dict(read_json(Path(runs["run_dir"].iloc[0]) / "metrics.json")["config"])
    world, x, y, digit = analysis_images(cfg0, max(tsne_images, lrp_images))
    teacher = build_teacher(cfg0, progress=False)
    t_layer = cfg0.layer_pairs[-1][0]
    s_layer = cfg0.layer_pairs[-1][1]
    low, high = lrp.box_bounds(world.mean, world.std)
    size = cfg0.data.artifact_size
    rows_, cols_ = _patch_origin(cfg0.data.artifact_corner, size, x.shape[-2], x.shape[-1])
    box = (rows_, cols_, size)
    xt, yt, dt = x[:tsne_images], y[:tsne_images], digit[:tsne_images]
    xl, yl = x[:lrp_images], y[:lrp_images]

    def batches(xx):
        return (xx[i:i + 256] for i in range(0, len(xx), 256))

    # The teacher, once.
    f_teacher = embedding.pooled_features(teacher.model, t_layer, batches(xt))
    h_teacher = lrp.logit_gap_relevance(teacher, xl, yl, low=low, high=high)
    knn_rows = [{"model": "teacher", "method": "teacher", "rho": np.nan, "seed": 0,
                 "knn_class": embedding.knn_agreement(f_teacher, yt.numpy()),
                 "knn_digit": embedding.knn_agreement(f_teacher, dt.numpy())}]
    ds_teacher = lrp.digit_share(h_teacher, box)
    lrp_rows = []
    emb = {"teacher": embedding.tsne(f_teacher, seed=0)}
    heat = {"teacher": h_teacher[:8].numpy()}
    first_seed = runs.groupby(["method", "rho"])["seed"].min()
    for _, r in tqdm(list(runs.iterrows()), desc="explaining students", disable=not progress, unit="student"):
        student, _cfg = load_student(r["run_dir"])
        f = embedding.pooled_features(student, s_layer, batches(xt))
        knn_rows.append({"model": "student", "method": r["method"], "rho": r["rho"], "seed": r["seed"],
                         "knn_class": embedding.knn_agreement(f, yt.numpy()),
                         "knn_digit": embedding.knn_agreement(f, dt.numpy())})
        name = f"{r['method']}|{r['rho']:g}"
        if r["seed"] == first_seed[(r["method"], r["rho"])]:
            emb[name] = embedding.tsne(f, seed=0)
        try:
            h = lrp.logit_gap_relevance(student, xl, yl, low=low, high=high)
        except ReproError as e:   # no verified canonizer: reported as not explained (D9)
            lrp_rows.append({"method": r["method"], "rho": r["rho"], "seed": r["seed"], "explained": False,
                             "note": str(e).splitlines()[0]})
            continue
        corr = lrp.summarize(lrp.relevance_correlation(h_teacher, h))
        lrp_rows.append({"method": r["method"], "rho": r["rho"], "seed": r["seed"], "explained": True,
                         "corr_mean": corr["mean"], "corr_median": corr["median"],
                         "corr_ci_low": corr["ci_low"], "corr_ci_high": corr["ci_high"], "n_images": corr["n"],
                         "digit_share_student": float(np.nanmean(lrp.digit_share(h, box).numpy())),
                         "digit_share_teacher": float(np.nanmean(ds_teacher.numpy()))})
        if r["seed"] == first_seed[(r["method"], r["rho"])]:
            heat[name] = h[:8].numpy()
    knn = pd.DataFrame(knn_rows)
    lrp_table = pd.DataFrame(lrp_rows)
    out = {"knn": knn, "lrp": lrp_table, "embeddings": emb, "heatmaps": heat,
           "labels": yt.numpy(), "digits": dt.numpy(), "images": xl[:8].numpy(),
           "image_labels": yl[:8].numpy(), "image_digits": digit[:8].numpy(),
           "class_names": list(world.class_names), "box": box}
    out.update(_summaries(knn, lrp_table))
    _save(out_dir, out, {"digest": digest, "settings": settings, "sweep": str(sweep_dir),
                         "seconds": time.time() - start, "n_students": int(len(runs))})
    return out


def explain_book(world: str = "mini", preset: str = "quick", sweep_dir: str | Path | None = None,
                 out_dir: str | Path | None = None, *, tsne_images: int = 600, lrp_images: int = 64,
                 workers: int = 2, nonoracle: bool = True) -> dict:
    """What chapters 5–7 start from: the ``preset`` sweep in ``sweep_dir`` (default
    ``$REPROLIB_CACHE/sweeps/<world>-<preset>``; finished runs reused, unfinished ones
    trained with ``workers``), and its students explained (:func:`explain_sweep`) under
    the oracle rule and, with ``nonoracle``, the non-oracle rule, into
    ``out_dir/<selection>`` (default ``<sweep>/explain`` and ``<sweep>/explain-nonoracle``).

    Returns ``{"results": the sweep's table, "explanations": {selection: explanation},
    "methods": the explained methods in book order, "rhos": their training ρ,
    "description": the chapters' bullet list of what was explained}``.
    """
    from .config import METHOD_LABELS, METHODS
    from .io import cache_dir
    from .sweep import run_sweep

    sweep_path = Path(sweep_dir) if sweep_dir else cache_dir("sweeps") / f"{world}-{preset}"
    results = run_sweep(preset, sweep_path, world=world, workers=workers, progress=False)
    explanations = {}
    for selection in ("oracle", "nonoracle") if nonoracle else ("oracle",):
        folder = (Path(out_dir) / selection if out_dir else
                  sweep_path / ("explain" if selection == "oracle" else f"explain-{selection}"))
        explanations[selection] = explain_sweep(sweep_path, folder, tsne_images=tsne_images, lrp_images=lrp_images,
                                                progress=False, grid=preset, world=world, selection=selection)
    knn = explanations["oracle"]["knn"]
    methods = [m for m in METHODS if m in set(knn["method"])]
    rhos = sorted(r for r in knn["rho"].dropna().unique())
    n_students = int((knn["model"] == "student").sum())
    description = (
        f"* sweep **{world}-{preset}**: {n_students} students at their selected λ (every seed), "
        f"methods {', '.join(METHOD_LABELS.get(m, m) for m in methods)}, "
        f"ρ ∈ {{{', '.join(f'{r:g}' for r in rhos)}}}\n"
        f"* {len(explanations['oracle']['labels'])} test images for the features, {lrp_images} for LRP, all from "
        "the ρ = 1 test set (every image carries a random digit, so class and digit are independent)\n"
        + ("* explained twice: students selected by the oracle rule and by the non-oracle rule" if nonoracle else
           "* explained once: students selected by the oracle rule (`nonoracle = False`)"))
    return {"results": results, "explanations": explanations, "methods": methods, "rhos": rhos,
            "description": description}


def knn_table(knn_summary):
    """The kNN agreement summary with the book's method names and column names."""
    from .config import METHOD_SHORT

    t = knn_summary.assign(method=knn_summary["method"].map(lambda m: METHOD_SHORT.get(m, m)))
    return t.rename(columns={"rho": "ρ", "knn_class_mean": "class agreement", "knn_class_std": "class (std)",
                             "knn_digit_mean": "digit agreement", "knn_digit_std": "digit (std)"})


def lrp_table(lrp_summary):
    """The LRP summary with the book's method names and column names."""
    from .config import METHOD_SHORT

    t = lrp_summary.assign(method=lrp_summary["method"].map(lambda m: METHOD_SHORT.get(m, m)))
    return t.rename(columns={"rho": "ρ", "corr_mean": "correlation (mean)", "corr_median": "median",
                             "corr_ci_low": "95 % CI low", "corr_ci_high": "95 % CI high",
                             "digit_share_student": "digit-patch share (student)",
                             "digit_share_teacher": "digit-patch share (teacher)", "n_seeds": "seeds"})


def _patch_origin(corner: str, size: int, h: int, w: int) -> tuple[int, int]:
    from .artifacts import corner_slices

    r, c = corner_slices(corner, size, h, w)
    return r.start, c.start


def _summaries(knn, lrp_table) -> dict:
    """Mean over seeds per (method, ρ)."""
    students = knn[knn["model"] == "student"]
    knn_summary = students.groupby(["method", "rho"])[["knn_class", "knn_digit"]].agg(["mean", "std"])
    knn_summary.columns = [f"{a}_{b}" for a, b in knn_summary.columns]
    out = {"knn_summary": knn_summary.reset_index()}
    if len(lrp_table) and "corr_mean" in lrp_table:
        ok = lrp_table[lrp_table["explained"]]
        s = ok.groupby(["method", "rho"]).agg(
            corr_mean=("corr_mean", "mean"), corr_median=("corr_median", "mean"),
            corr_ci_low=("corr_ci_low", "mean"), corr_ci_high=("corr_ci_high", "mean"),
            digit_share_student=("digit_share_student", "mean"),
            digit_share_teacher=("digit_share_teacher", "mean"), n_seeds=("seed", "nunique"))
        out["lrp_summary"] = s.reset_index()
    return out


def _save(out_dir: Path, out: dict, manifest: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / "knn.csv", out["knn"].to_csv(index=False))
    write_text(out_dir / "lrp.csv", out["lrp"].to_csv(index=False))
    write_text(out_dir / "knn_summary.csv", out["knn_summary"].to_csv(index=False))
    if "lrp_summary" in out:
        write_text(out_dir / "lrp_summary.csv", out["lrp_summary"].to_csv(index=False))
    arrays = {f"emb/{k}": v for k, v in out["embeddings"].items()}
    arrays.update({f"heat/{k}": v for k, v in out["heatmaps"].items()})
    for k in ("labels", "digits", "images", "image_labels", "image_digits"):
        arrays[k] = out[k]
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_path(out_dir / "arrays.npz") as tmp:
        tmp.write_bytes(buf.getvalue())
    manifest = dict(manifest, class_names=out["class_names"], box=list(out["box"]))
    write_json(out_dir / "manifest.json", manifest)   # last: marks the analysis complete


def load_explanations(out_dir: str | Path) -> dict:
    import pandas as pd

    out_dir = Path(out_dir)
    manifest = read_json(out_dir / "manifest.json")
    out = {"knn": pd.read_csv(out_dir / "knn.csv"), "lrp": pd.read_csv(out_dir / "lrp.csv"),
           "knn_summary": pd.read_csv(out_dir / "knn_summary.csv"),
           "class_names": manifest["class_names"], "box": tuple(manifest["box"])}
    if (out_dir / "lrp_summary.csv").is_file():
        out["lrp_summary"] = pd.read_csv(out_dir / "lrp_summary.csv")
    with np.load(out_dir / "arrays.npz") as z:
        out["embeddings"] = {k[4:]: z[k] for k in z.files if k.startswith("emb/")}
        out["heatmaps"] = {k[5:]: z[k] for k in z.files if k.startswith("heat/")}
        for k in ("labels", "digits", "images", "image_labels", "image_digits"):
            out[k] = z[k]
    return out


# ---------------------------------------------------------------------------

def register_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("explain", help="t-SNE and LRP analyses of a finished sweep's students")
    p.add_argument("--sweep", required=True, help="folder of a finished sweep (results.csv, runs/)")
    p.add_argument("--out", required=True, help="folder for knn.csv, lrp.csv and the arrays")
    p.add_argument("--tsne-images", dest="tsne_images", type=int, default=600)
    p.add_argument("--lrp-images", dest="lrp_images", type=int, default=64)
    p.add_argument("--selection", default="oracle", help="oracle (default) or nonoracle (D3)")
    p.add_argument("--grid", default=None,
                   help="explain this grid's runs (default: the grid of DIR/results.csv)")
    p.add_argument("--force", action="store_true", help="recompute even if the outputs match")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cli)
    return p


def _cli(args) -> int:
    from .io import print_json

    for name in ("tsne_images", "lrp_images"):
        if getattr(args, name) < 11:
            raise ReproError(f"--{name.replace('_', '-')} must be at least 11 (k = 10 neighbours)")
    out = explain_sweep(args.sweep, args.out, tsne_images=args.tsne_images, lrp_images=args.lrp_images,
                        selection=args.selection, progress=not args.quiet, force=args.force,
                        grid=args.grid)
    result = {"out": str(args.out), "knn_summary": out["knn_summary"].to_dict(orient="records")}
    if "lrp_summary" in out:
        result["lrp_summary"] = out["lrp_summary"].to_dict(orient="records")
    print_json(result)   # strict: NaN (one seed's std) is null
    return 0

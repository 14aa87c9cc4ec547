"""Are the quick preset's students converged? The rule, measured.

The rule (stated in the book before methods are compared): for each method at
ρ = 0, the quick preset's mean test accuracy over three seeds is within 2 points
of the same configuration trained with 3x the optimiser steps (epochs, the rate
schedule and the validation interval all scaled by 3; data, batch and λ the same).

    python benchmarks/convergence.py [--preset quick] [--factor 3] [--seeds 1 2 3]
        [--sweep DIR | --lambda 100] [--reuse DIR] [--lr LR] [--scale S]
        [--device cpu] [--out DIR]

λ per layer method: the value that the quick sweep in ``--sweep DIR`` selected
at this ρ (oracle rule), else ``--lambda`` for every layer method. Each seed's
students (every method) train as one cohort: one teacher forward per batch.
Finished runs in ``--out`` are reused, and so are the preset's own runs
finished in a sweep folder given as ``--reuse`` (the quick sweep trains exactly
the ρ = 0 runs at λ ∈ {1, 10, 100, 1000} that this benchmark compares).
``--lr`` and ``--scale`` (a multiplier of the preset's epochs, rate step and
validation interval) run the same comparison for another recipe: this is how
the quick preset's budget was checked (book/decisions.md, "the mini world's
recipe"; the rules themselves are applied by benchmarks/recipe_pilot.py). Prints a table, writes
``convergence.csv`` and ``convergence.json`` into ``--out``, and, last, one line:
``convergence: N of M methods within 2 points of 3x the steps``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", default="mini")
    p.add_argument("--preset", default="quick")
    p.add_argument("--rho", type=float, default=0.0)
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--factor", type=int, default=3, help="the long runs take this many times the steps")
    p.add_argument("--methods", nargs="+", default=None)
    p.add_argument("--sweep", default=None, help="a quick sweep folder: use the λ it selected")
    p.add_argument("--lambda", dest="lam", type=float, default=100.0,
                   help="λ of every layer method when --sweep is not given (default: 100, the authors' default)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the preset's)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply the preset's epochs, rate step and validation interval (default 1)")
    p.add_argument("--reuse", default=None,
                   help="a sweep folder whose finished runs of the same configs are read, not retrained")
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workers", type=int, default=1,
                   help="cohorts trained at once in separate processes (default 1)")
    p.add_argument("--teacher-recipe", default=None, help="e.g. smoke (tests only)")
    p.add_argument("--out", default=None, help="default: $REPROLIB_CACHE/convergence/<world>-<preset>")
    args = p.parse_args(argv)

    import pandas as pd

    from reprolib.results import load_results, select_lambda
    from reprolib.rundirs import check_run, run_dir_for
    from reprolib.cohort import train_cohort
    from reprolib.config import METHODS, make_config, optimizer_steps, scale_schedule
    from reprolib.devices import Execution
    from reprolib.errors import ReproError
    from reprolib.io import cache_dir, write_json, write_text

    if args.factor < 2:
        print("error: --factor must be at least 2 (the long runs take factor x the steps)", file=sys.stderr)
        return 2
    if not 0 < args.scale < 100:
        print(f"error: --scale {args.scale} must be in (0, 100): it multiplies the preset's epochs", file=sys.stderr)
        return 2
    if args.lr is not None and not 0 < args.lr < 1:
        print(f"error: --lr {args.lr} must be in (0, 1)", file=sys.stderr)
        return 2
    if args.reuse and not Path(args.reuse).is_dir():
        print(f"error: --reuse {args.reuse} is not a folder; give a sweep's output folder", file=sys.stderr)
        return 2
    methods = tuple(args.methods or METHODS)
    lambdas = {m: (0.0 if m == "kd" else args.lam) for m in methods}
    if args.sweep:
        summary = select_lambda(load_results(args.sweep), "oracle")
        for m in methods:
            row = summary[(summary["method"] == m) & ((summary["rho"] - args.rho).abs() < 1e-9)]
            if m != "kd" and len(row):
                lambdas[m] = float(row["lambda_layer"].iloc[0])
    out = Path(args.out) if args.out else cache_dir("convergence") / f"{args.world}-{args.preset}"
    extra = {"teacher_recipe": args.teacher_recipe} if args.teacher_recipe else {}

    if args.lr is not None:
        extra["lr"] = args.lr

    def config(method, seed, factor):
        base = make_config(args.world, args.preset, method=method, seed=seed,
                           contamination_rate=args.rho, lambda_layer=lambdas[method], **extra)
        if args.scale != 1:
            base = scale_schedule(base, args.scale)
        return base if factor == 1 else scale_schedule(base, factor)

    rows = []
    start = time.time()
    try:
        def where(c):
            """The folder of c's run: a finished one in --reuse, else ours."""
            if args.reuse:
                theirs = run_dir_for(args.reuse, c)
                if check_run(theirs, c.key()) is None:
                    return theirs
            return run_dir_for(out, c)

        def todo(cfgs):
            dirs = [where(c) for c in cfgs]
            left = [(c, d) for c, d in zip(cfgs, dirs) if check_run(d, c.key()) is not None]
            for _c, d in left:
                d.mkdir(parents=True, exist_ok=True)
            return [c for c, _ in left], [d for _, d in left]

        cells = [(seed, factor, [config(m, seed, factor) for m in methods])
                 for factor in (args.factor, 1)      # the long runs first: a sweep may finish the others
                 for seed in args.seeds]
        jobs = [j for j in (todo(cfgs) for _s, _f, cfgs in cells) if j[0]]
        print(f"{len(jobs)} cohorts to train ({sum(len(c) for c, _ in jobs)} students), "
              f"{args.workers} at a time on {args.device}", file=sys.stderr, flush=True)
        kwargs = dict(execution=Execution(device=args.device, threads=args.threads), progress=False)
        if args.workers > 1 and len(jobs) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for f in [pool.submit(train_cohort, c, d, **kwargs) for c, d in jobs]:
                    f.result()
        else:
            for _seed, _factor, cfgs in cells:     # checked again just before: reuse what is finished by now
                c, d = todo(cfgs)
                if c:
                    train_cohort(c, d, **kwargs)
        cells = [(seed, factor, cfgs, [where(c) for c in cfgs]) for seed, factor, cfgs in cells]
        for seed, factor, cfgs, dirs in cells:
            for c, d in zip(cfgs, dirs):
                metrics = json.loads((d / "metrics.json").read_text())
                rows.append({"method": c.method, "seed": seed, "factor": factor,
                             "lambda_layer": c.lambda_layer, "lr": c.lr, "optimizer_steps": optimizer_steps(c),
                             "test_accuracy": metrics["test_accuracy"],
                             "best_epoch": metrics["best_epoch"], "epochs": c.epochs})
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    runs = pd.DataFrame(rows)
    agg = runs.groupby(["method", "factor"])["test_accuracy"].agg(["mean", "std", "count"]).reset_index()
    table = []
    for m in methods:
        q = agg[(agg["method"] == m) & (agg["factor"] == 1)].iloc[0]
        lg = agg[(agg["method"] == m) & (agg["factor"] == args.factor)].iloc[0]
        diff = float(lg["mean"] - q["mean"])
        table.append({
            "method": m, "lambda_layer": lambdas[m], "lr": float(runs["lr"].iloc[0]),
            "steps": int(runs[(runs["method"] == m) & (runs["factor"] == 1)]["optimizer_steps"].iloc[0]),
            "steps_long": int(runs[(runs["method"] == m) & (runs["factor"] == args.factor)]["optimizer_steps"].iloc[0]),
            "test_mean": float(q["mean"]), "test_std": _finite(q["std"]),
            "test_mean_long": float(lg["mean"]), "test_std_long": _finite(lg["std"]),
            "long_minus_quick": diff, "converged": bool(abs(diff) <= args.tolerance),
        })
    table = pd.DataFrame(table)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "convergence.csv", table.to_csv(index=False))
    write_json(out / "convergence.json", {
        "rule": f"mean test accuracy over seeds {args.seeds} at rho={args.rho:g} within "
                f"{args.tolerance * 100:g} points of {args.factor}x the steps",
        "world": args.world, "preset": args.preset, "device": args.device,
        "seconds": time.time() - start, "table": table.to_dict(orient="records"),
        "runs": runs.to_dict(orient="records")})
    with_pd = table.copy()
    for col in ("test_mean", "test_std", "test_mean_long", "test_std_long", "long_minus_quick"):
        with_pd[col] = with_pd[col].map(lambda v: "–" if v is None else f"{v:.3f}")
    print(with_pd.to_string(index=False))
    n_ok = int(table["converged"].sum())
    print(f"convergence: {n_ok} of {len(table)} methods within {args.tolerance * 100:g} points of "
          f"{args.factor}x the steps ({args.preset} preset, rho={args.rho:g}, seeds {args.seeds}, "
          f"device {args.device}, {time.time() - start:.0f} s)")
    return 0


def _finite(v):
    v = float(v)
    return None if math.isnan(v) else v


if __name__ == "__main__":
    sys.exit(main())

"""How the mini world's learning rate and the quick preset's step budget were chosen: two rules, measured.

Both rules look at output-only KD at ρ = 0 (no artifact in the data, and no
method compared with another), seed 1, λ-free:

1. **Rate.** Of ``--rates`` (default 1e-3, 3e-3, 1e-2, 3e-2), the one with the
   best oracle validation accuracy after ``--rate-steps`` optimiser steps
   (default 600, the first version's budget, where every rate was tried).
2. **Budget.** At that rate, the smallest of ``--budgets`` (default 600, 1200,
   1800 steps) whose test accuracy is within ``--tolerance`` (2 points) of the
   same run with 3x the steps: the convergence rule of
   ``benchmarks/convergence.py`` applied to KD alone, one seed, before any
   sweep is run.

Every run has the quick preset's data, batch and schedule shape (the rate halved
every quarter of the run, about 50 validations); only the rate and the number of
epochs change. ``--with subdistill`` also trains SubDistill (λ = 100) in the
same cohorts, for information only: it takes no part in either rule. Finished
runs in ``--out`` are reused. Prints the table and, last, one line:
``recipe: lr L, N optimiser steps (...)``; writes ``recipe_pilot.json`` into ``--out``.

    python benchmarks/recipe_pilot.py [--out DIR] [--with subdistill] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--rates", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    p.add_argument("--rate-steps", type=int, default=600)
    p.add_argument("--budgets", type=int, nargs="+", default=[600, 1200, 1800])
    p.add_argument("--factor", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--with", dest="extra", nargs="*", default=[], help="also train these methods (λ = 100), for information")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--teacher-recipe", default=None, help="e.g. smoke (tests only)")
    p.add_argument("--out", default=None, help="default: $REPROLIB_CACHE/recipe-pilot/mini-<preset>")
    args = p.parse_args(argv)

    from reprolib.rundirs import run_dir_for
    from reprolib.cohort import train_cohort
    from reprolib.config import make_config, optimizer_steps, scale_schedule, steps_per_epoch
    from reprolib.devices import Execution
    from reprolib.errors import ReproError
    from reprolib.io import cache_dir, write_json

    if any(r <= 0 or r >= 1 for r in args.rates) or any(b < 1 for b in args.budgets + [args.rate_steps]):
        print("error: rates must be in (0, 1) and step budgets positive", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else cache_dir("recipe-pilot") / f"mini-{args.preset}"
    extra = {"teacher_recipe": args.teacher_recipe} if args.teacher_recipe else {}
    try:
        base = make_config("mini", args.preset, seed=args.seed, contamination_rate=0.0, **extra)
        per_epoch = steps_per_epoch(base)
        preset_epochs = base.epochs

        def config(method, lr, steps):
            epochs = max(1, round(steps / per_epoch))
            return scale_schedule(base, epochs / preset_epochs).replace(
                method=method, lr=lr, lambda_layer=0.0 if method == "kd" else 100.0, epochs=epochs)

        def train(cfgs):
            """A list of configs with equal epochs as one cohort; their metrics (train_cohort
            reads finished runs back instead of training them again)."""
            print(f"{len(cfgs)} students for {optimizer_steps(cfgs[0])} steps (finished runs are reused)",
                  file=sys.stderr, flush=True)
            return train_cohort(cfgs, [run_dir_for(out, c) for c in cfgs],
                                execution=Execution(threads=args.threads), progress=False)

        start = time.time()
        rows = []

        def record(cfgs, metrics, stage):
            for c, m in zip(cfgs, metrics):
                rows.append({"stage": stage, "method": c.method, "lr": c.lr, "optimizer_steps": optimizer_steps(c),
                             "val_accuracy": m["val_accuracy"], "test_accuracy": m["test_accuracy"],
                             "best_epoch": m["best_epoch"], "epochs": c.epochs})

        # 1. the rate
        cfgs = [config(m, lr, args.rate_steps) for lr in args.rates for m in ["kd", *args.extra]]
        record(cfgs, train(cfgs), "rate")
        kd_rate = {r["lr"]: r for r in rows if r["method"] == "kd"}
        lr = max(args.rates, key=lambda r: (kd_rate[r]["val_accuracy"], -r))
        # 2. the budget, at that rate
        budget, checks = None, []
        for steps in sorted(args.budgets):
            pair = []
            for s in (steps, args.factor * steps):
                cfgs = [config(m, lr, s) for m in ["kd", *args.extra]]
                metrics = train(cfgs)
                record(cfgs, metrics, "budget")
                pair.append(metrics[0]["test_accuracy"])
            gain = pair[1] - pair[0]
            checks.append({"steps": steps, "steps_long": args.factor * steps, "test": pair[0],
                           "test_long": pair[1], "long_minus_short": gain, "within": abs(gain) <= args.tolerance})
            if abs(gain) <= args.tolerance:
                budget = steps
                break
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'stage':7} {'method':11} {'lr':>7} {'steps':>6} {'val':>6} {'test':>6}")
    seen = set()
    for r in rows:
        key = (r["method"], r["lr"], r["optimizer_steps"])
        if key in seen:
            continue
        seen.add(key)
        print(f"{r['stage']:7} {r['method']:11} {r['lr']:7g} {r['optimizer_steps']:6d} "
              f"{r['val_accuracy']:6.3f} {r['test_accuracy']:6.3f}")
    for c in checks:
        print(f"budget {c['steps']} vs {c['steps_long']} steps: kd test {c['test']:.3f} -> {c['test_long']:.3f} "
              f"({100 * c['long_minus_short']:+.1f} points){'  <- within' if c['within'] else ''}")
    write_json(out / "recipe_pilot.json", {
        "rules": {"rate": f"best kd oracle validation accuracy at rho=0, seed {args.seed}, after {args.rate_steps} steps",
                  "budget": f"smallest budget whose kd test accuracy is within {args.tolerance * 100:g} points of "
                            f"{args.factor}x the steps"},
        "rates": args.rates, "budgets": args.budgets, "chosen_lr": lr, "chosen_steps": budget,
        "checks": checks, "runs": rows, "seconds": time.time() - start})
    print(f"recipe: lr {lr:g}, " + (f"{budget} optimiser steps" if budget else "no budget met the rule")
          + f" (kd at rho=0, seed {args.seed}; {time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

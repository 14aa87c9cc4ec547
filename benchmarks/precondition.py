"""The precondition ladder: on which world variant does output-only KD take the shortcut?

Trains **output-only KD only** (``--method`` anything else is refused) on each rung of
:data:`reprolib.config.MINI_VARIANTS`, in ladder order: ρ ∈ {0, 1}, ``--seeds`` (1-3), at
the quick preset, and the book's convergence check (KD at ρ = 0 with 3x the steps).
Then :func:`reprolib.verdicts.precondition_rule` (written and tested before this ran)
names the main world: the first rung at which KD at ρ = 1 loses at least 10 points
from ρ = 0 under the oracle rule, beyond seed noise; else the rung with the largest drop.

Rungs ``--required`` (default a, b, c) are run whatever happens; the later ones only
until a rung meets the rule (``--all`` runs every rung). Finished runs are reused
(each rung is a resumable sweep folder under ``--out``). For every rung, writes
``precondition-<rung>-<variant>.json`` into ``--results`` (default ``benchmarks/results``)
with KD's accuracy at ρ = 0 and 1 under both selection rules, the share of
digit≠label test images predicted as their digit, what the teacher says on the
distillation images (agreement with the label, mean top probability at T, the
digit-only KD floor) beside the students' final KD loss, the teacher's test accuracy
at ρ = 1, the convergence check and the commit; and ``precondition-ladder.json``
with every rung tried and the rule's outcome. Prints a table and, last, one line
``main world: <variant> (...)``.

    python benchmarks/precondition.py [--rungs a b c ...] [--workers 2] [--all]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def git_commit() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    dirty = git("status", "--porcelain", "--", "reprolib", "benchmarks/precondition.py")
    return {"commit": git("rev-parse", "HEAD") or None, "code_dirty": bool(dirty)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rungs", nargs="+", default=None,
                   help="rung letters or variant names, in ladder order (default: all, until one meets the rule)")
    p.add_argument("--required", nargs="*", default=["a", "b", "c"], help="rungs run whatever happens")
    p.add_argument("--all", action="store_true", help="run every rung given, even after one meets the rule")
    p.add_argument("--method", default="kd", help="only kd: the ladder refuses any other method")
    p.add_argument("--preset", default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--workers", type=int, default=None, help="default: the CPU count")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--passes", type=int, default=10, help="augmented epochs the teacher signal is measured on")
    p.add_argument("--no-convergence", action="store_true", help="skip the 3x-steps check (tests)")
    p.add_argument("--teacher-recipe", default=None, help="e.g. smoke (tests only)")
    p.add_argument("--out", default=None, help="sweep folders (default: $REPROLIB_CACHE/precondition/<preset>)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    from reprolib import precondition as P
    from reprolib import verdicts
    from reprolib.config import MINI_VARIANTS, make_config
    from reprolib.devices import Execution
    from reprolib.errors import ReproError
    from reprolib.executors import cpu_count
    from reprolib.io import cache_dir, read_json, write_json
    from reprolib.rundirs import run_dir_for
    from reprolib.grids import expand_grid
    from reprolib.sweep import run_sweep

    try:
        P.check_kd_only([args.method])
        by_key = {v.rung: v for v in MINI_VARIANTS} | {v.name: v for v in MINI_VARIANTS}
        wanted = args.rungs or [v.rung for v in MINI_VARIANTS]
        unknown = [r for r in wanted + args.required if r not in by_key]
        if unknown:
            raise ReproError(f"unknown rung(s) {unknown}; choose letters or names of "
                             + ", ".join(f"{v.rung} ({v.name})" for v in MINI_VARIANTS))
        order = [v for v in MINI_VARIANTS if v.rung in wanted or v.name in wanted]
        required = {by_key[r].name for r in args.required}
        if len(args.seeds) < 1 or any(s < 0 for s in args.seeds):
            raise ReproError("--seeds takes non-negative integers")
        if args.passes < 1:
            raise ReproError(f"--passes {args.passes} must be a positive integer")
        overrides = {"teacher_recipe": args.teacher_recipe} if args.teacher_recipe else {}
        for v in order:     # every rung's configs are valid before any work
            make_config("mini", args.preset, v.name, **overrides)
        workers = args.workers or cpu_count()
        out_root = Path(args.out) if args.out else cache_dir("precondition", args.preset)
        results_dir = Path(args.results)
        start = time.time()
        reports, drops = [], []
        for v in order:
            if drops and not args.all and v.name not in required and any(d.met for d in drops):
                print(f"rung {v.rung} ({v.name}) not run: an earlier rung met the rule", file=sys.stderr)
                continue
            t0 = time.time()
            folder = out_root / v.name
            grids = [P.ladder_grid(v.name, args.preset, args.seeds, overrides)]
            if not args.no_convergence:
                grids.append(P.convergence_grid(v.name, args.preset, args.seeds, overrides))
            metrics = []
            for grid in grids:
                print(f"rung {v.rung} ({v.name}): {grid.name}", file=sys.stderr, flush=True)
                run_sweep(grid, folder, execution=Execution(device=args.device, threads=args.threads),
                          workers=workers, progress=True)
                metrics.append([read_json(run_dir_for(folder, c) / "metrics.json") for c in expand_grid(grid)])
            signals = {}
            for rho in P.LADDER_RHOS:
                per_seed = [P.teacher_signal(make_config("mini", args.preset, v.name, seed=s,
                                                         contamination_rate=rho, **overrides),
                                             passes=args.passes, device=args.device)
                            for s in args.seeds]
                signals[f"{rho:g}"] = {k: sum(d[k] for d in per_seed) / len(per_seed)
                                       for k in ("agreement", "top_probability", "digit_only_floor")}
                signals[f"{rho:g}"]["per_seed"] = per_seed
            report = P.rung_report(v.name, metrics[0], metrics[1] if len(metrics) > 1 else [],
                                   signals, args.preset, overrides)
            report.update(git_commit(), seconds=time.time() - t0, seeds=args.seeds,
                          smoke=bool(args.teacher_recipe) or args.preset == "smoke")
            write_json(results_dir / f"precondition-{v.rung}-{v.name}.json", report)
            reports.append(report)
            d = report["drop"]["oracle"]
            drops.append(verdicts.RungDrop(**d))
        choice = verdicts.precondition_rule(drops)
        write_json(results_dir / "precondition-ladder.json", {
            "rule": (f"the first rung at which output-only KD at rho=1 loses at least "
                     f"{verdicts.PRECONDITION_DROP * 100:g} points of test accuracy from rho=0 (oracle "
                     "selection, mean over seeds of the per-seed drop, beyond its standard error, 3 seeds); "
                     "else the rung with the largest drop"),
            "order": [v.rung for v in MINI_VARIANTS],
            "tried": [{"rung": r["rung"], "variant": r["variant"]["name"],
                       "file": f"precondition-{r['rung']}-{r['variant']['name']}.json",
                       "drop_oracle": r["drop"]["oracle"], "drop_nonoracle": r["drop"]["nonoracle"],
                       "convergence": r["convergence"], "commit": r["commit"]} for r in reports],
            "choice": choice.to_dict(),
            "chosen_variant": next((r["variant"]["name"] for r in reports if r["rung"] == choice.chosen), None),
            "seconds": time.time() - start,
            **git_commit(),
        })
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{'rung':4} {'variant':18} {'kd rho0':>8} {'kd rho1':>8} {'drop (oracle)':>16} "
          f"{'drop (non-or.)':>16} {'digit':>6} {'agree':>6} {'floor':>6} {'kd loss':>7} {'conv.':>6}")
    for r in reports:
        m0, m1 = r["means"]["0"], r["means"]["1"]
        do, dn = r["drop"]["oracle"], r["drop"]["nonoracle"]
        conv = r["convergence"]
        print(f"{r['rung']:4} {r['variant']['name']:18} {m0['test_accuracy']['mean']:8.3f} "
              f"{m1['test_accuracy']['mean']:8.3f} {verdicts.fmt_points(do['mean'], do['se']):>16} "
              f"{verdicts.fmt_points(dn['mean'], dn['se']):>16} "
              f"{m1['predicts_digit_differs']['mean']:6.2f} {r['teacher_signal']['1']['agreement']:6.3f} "
              f"{r['teacher_signal']['1']['digit_only_floor']:6.3f} {m1['final_kd_loss']['mean']:7.3f} "
              + (f"{conv['long_minus_short'] * 100:+5.1f}" if conv else "    –"))
    print(choice.sentence)
    chosen = next((r["variant"]["name"] for r in reports if r["rung"] == choice.chosen), None)
    print(f"main world: {chosen} ({'precondition met' if choice.met else 'precondition NOT met'}; "
          f"{time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of a sweep with 1 and with 2 concurrent runs; prints one JSON object.

    python benchmarks/sweep_time.py --subset 4            # the first 4 cells of "quick"
    python benchmarks/sweep_time.py --workers 1,2,4 --backend ray
    python benchmarks/sweep_time.py --compare-cohort --steps 30 --teacher-recipe smoke
    python benchmarks/sweep_time.py --compare-split --cohorts 3 --epochs 10

``--compare-cohort`` trains the first full cohort of the preset (every method
and λ of one ρ and seed) for ``--steps`` optimiser steps per student, once as
separate runs (one teacher forward per student per batch) and once as one
cohort (one teacher forward per batch), on the same batches, in one process;
it checks that both give bitwise the same students and prints, last,
``cohort speedup X.XX (N students, separate S1 s, cohort S2 s)``. Setup
(world, teacher, students) is timed in both; steps are timed interleaved, batch
by batch, in CPU time of the process (wall time on CUDA), so that other load on
the machine hits both ways alike. The JSON also gives the teacher's share of the
cohort's steps and the speedup that sharing could reach if the cohort's one
teacher forward cost nothing (the students' own steps are the same both ways).
``--compare-split`` trains ``--cohorts`` whole cohorts of the preset (ρ = 0,
seeds 1..N, every method and λ; ``--epochs`` epochs each) on ``--split-workers``
workers twice, into fresh folders: with every cohort whole (``split=False``)
and as :mod:`reprolib.schedule` splits them; it checks that both give the same
``results.csv`` and prints, last, ``split speedup X.XX (C cohorts, W workers,
whole S1 s, split S2 s; estimated E.EE)``. ``--teacher-recipe smoke`` uses
the tests' quickly trained mini teacher (same architecture: representative
timings) instead of one that takes minutes to train on a fresh cache.

Each setting sweeps the same cells into its own fresh temporary folder (nothing
is reused), with ``threads = max(1, cpu_count // workers)`` per run unless
``--threads`` is given. A warm-up run first fills the shared caches (decoded
data, the teacher, relevant subspaces), so the timings are of distillation
only. The JSON also says whether every setting produced the same
``results.csv`` (timing column excluded): it must when the threads per run are
equal; with different thread counts small float differences are expected.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a source checkout
    sys.path.insert(0, str(ROOT))

from reprolib.devices import Execution, resolve_device  # noqa: E402
from reprolib.executors import cpu_count  # noqa: E402
from reprolib.grids import expand_grid, group_cohorts, SWEEP_PRESETS  # noqa: E402
from reprolib.sweep import run_sweep  # noqa: E402


def compare_cohort(args) -> int:
    import torch

    from reprolib.cohort import Cohort

    torch.set_num_threads(args.threads or 1)
    grid = SWEEP_PRESETS[args.preset]
    if args.lambdas:
        grid = dataclasses.replace(grid, lambdas=tuple(float(v) for v in args.lambdas.split(",")))
    cells = group_cohorts(expand_grid(grid, args.world))[0]
    if args.teacher_recipe:
        cells = [c.replace(teacher_recipe=args.teacher_recipe) for c in cells]
    n = len(cells)
    # Warm the caches (data, teacher, relevant subspaces) and draw the batches once.
    warm = Cohort(cells, Execution(device=args.device))
    batches = []
    while len(batches) < args.steps:
        for x, y, *_ in warm._batches():
            batches.append((x, y))
            if len(batches) == args.steps:
                break
    warm.close()
    del warm

    sync = torch.cuda.synchronize if str(args.device).startswith("cuda") else (lambda: None)
    clock = time.perf_counter if str(args.device).startswith("cuda") else time.process_time

    def build(cfgs):
        t0 = clock()
        cohort = Cohort(cfgs, Execution(device=args.device))
        for m in cohort.members:
            m.student.train(), m.method.train()
        return cohort, clock() - t0

    # Interleaved, batch by batch, so that the machine's load hits both ways alike;
    # CPU time of this process (wall time on CUDA).
    separate = [build([cfg]) for cfg in cells]
    together, coh_setup = build(cells)
    sep_setup = sum(t for _, t in separate)
    sep_steps = coh_steps = coh_teacher = 0.0
    for x, y in batches:
        for cohort, _ in separate:
            sync()
            t0 = clock()
            cohort.step(x, y)
            sync()
            sep_steps += clock() - t0
        t0 = clock()
        # Cohort.step, with the teacher's part timed on its own.
        t_logits, targets = together.teacher_outputs(x)
        sync()
        t1 = clock()
        together.step_members(x, y, t_logits, targets)
        sync()
        coh_teacher += t1 - t0
        coh_steps += clock() - t0
    sep_states = [m.student.state_dict() for c, _ in separate for m in c.members]
    coh_states = [m.student.state_dict() for m in together.members]
    sep_total, coh_total = sep_setup + sep_steps, coh_setup + coh_steps
    identical = all(torch.equal(a[k], b[k]) for a, b in zip(sep_states, coh_states) for k in a)
    report = {
        "world": args.world, "preset": args.preset, "lambdas": list(grid.lambdas), "students": n,
        "methods": sorted({c.method for c in cells}), "steps": args.steps,
        "threads": torch.get_num_threads(), "device": args.device,
        "teacher_recipe": cells[0].teacher_recipe, "student": cells[0].student,
        "separate": {"setup_s": round(sep_setup, 2), "total_s": round(sep_total, 2)},
        "cohort": {"setup_s": round(coh_setup, 2), "total_s": round(coh_total, 2)},
        "clock": "wall" if clock is time.perf_counter else "process CPU",
        "training_speedup": round(sep_steps / coh_steps, 3),
        # What sharing alone can reach: the cohort's steps minus its one teacher forward
        # per batch are the students' own arithmetic, which both ways must do.
        "teacher_share_of_cohort_steps": round(coh_teacher / coh_steps, 3),
        "training_speedup_bound_free_teacher": round(sep_steps / max(coh_steps - coh_teacher, 1e-9), 3),
        "bitwise_identical_students": identical,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    print(f"cohort speedup {sep_total / coh_total:.2f} ({n} students, separate {sep_total:.1f} s, "
          f"cohort {coh_total:.1f} s)")
    return 0 if identical else 1


def compare_split(args) -> int:
    """Whole cohorts vs the scheduler's parts, same cohorts and workers, wall time."""
    import pandas as pd

    from reprolib import schedule
    from reprolib.grids import SweepGrid, get_grid

    base = get_grid(args.preset)
    extra = {"teacher_recipe": args.teacher_recipe} if args.teacher_recipe else {}
    grid = SweepGrid(name=f"{base.name}-split-check", run_preset=base.run_preset, methods=base.methods,
                     rhos=(0.0,), seeds=tuple(range(1, args.cohorts + 1)), lambdas=base.lambdas,
                     overrides={**base.overrides, **extra, "epochs": args.epochs, "lr_step": max(1, args.epochs // 4),
                                "val_every": 1})
    cohorts = group_cohorts(expand_grid(grid, args.world))
    tasks = schedule.plan_tasks(cohorts, args.split_workers)
    estimated = schedule.makespan(cohorts, args.split_workers) / schedule.makespan(tasks, args.split_workers)
    report = {"world": args.world, "preset": args.preset, "cohorts": len(cohorts),
              "students": sum(len(c) for c in cohorts), "epochs": args.epochs,
              "workers": args.split_workers, "threads_per_run": args.threads or 1,
              "tasks_whole": len(cohorts), "tasks_split": len(tasks),
              "estimated_speedup": round(estimated, 3), "machine": platform.machine(), "cpu_count": cpu_count()}
    with tempfile.TemporaryDirectory(prefix="sweep-split-") as tmp:
        tmp = Path(tmp)
        # Warm the shared caches (data, teacher, subspaces) with one run first.
        execution = Execution(device=args.device, threads=args.threads or 1)
        run_sweep(grid, tmp / "warmup", execution=execution, world=args.world, limit=1, progress=False)
        walls, tables = {}, {}
        for name, split in (("whole", False), ("split", True)):
            t0 = time.perf_counter()
            res = run_sweep(grid, tmp / name, execution=execution, world=args.world, workers=args.split_workers,
                            progress=False, split=split)
            walls[name] = time.perf_counter() - t0
            report[f"tasks_{name}_run"] = res.attrs["sweep"]["tasks"]
            tables[name] = pd.read_csv(tmp / name / "results.csv").drop(columns=["seconds"])
    report.update(whole_s=round(walls["whole"], 1), split_s=round(walls["split"], 1),
                  speedup=round(walls["whole"] / walls["split"], 3),
                  identical_results=bool(tables["whole"].equals(tables["split"])))
    json.dump(report, sys.stdout, indent=2)
    print()
    print(f"split speedup {report['speedup']:.2f} ({len(cohorts)} cohorts, {args.split_workers} workers, "
          f"whole {report['whole_s']:.1f} s, split {report['split_s']:.1f} s; estimated {estimated:.2f})")
    return 0 if report["identical_results"] else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--world", default="mini")
    p.add_argument("--preset", default="quick", choices=list(SWEEP_PRESETS))
    p.add_argument("--subset", type=int, default=4, metavar="N",
                   help="time only the first N cells of the grid (default 4; 0 = all)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--backend", default="serial", choices=("serial", "ray"))
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: cpu count // workers)")
    p.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--no-warmup", action="store_true", help="time cold caches too")
    p.add_argument("--compare-cohort", action="store_true",
                   help="time one full cohort of the preset as separate runs and as a cohort")
    p.add_argument("--steps", type=int, default=30,
                   help="--compare-cohort: optimiser steps per student (default 30)")
    p.add_argument("--lambdas", default=None, metavar="L1,L2,...",
                   help="--compare-cohort: replace the preset's lambda grid (e.g. 1,10,100,1000)")
    p.add_argument("--teacher-recipe", default=None,
                   help="mini teacher recipe for the timed configs ('smoke' trains in seconds)")
    p.add_argument("--compare-split", action="store_true",
                   help="time whole cohorts against the scheduler's split parts on --split-workers workers")
    p.add_argument("--cohorts", type=int, default=3, help="--compare-split: cohorts (seeds) to train (default 3)")
    p.add_argument("--epochs", type=int, default=10, help="--compare-split: epochs per run (default 10)")
    p.add_argument("--split-workers", type=int, default=2, help="--compare-split: workers (default 2)")
    args = p.parse_args(argv)
    if args.compare_split:
        if args.cohorts < 1 or args.epochs < 1 or args.split_workers < 1:
            print("error: --cohorts, --epochs and --split-workers must be at least 1", file=sys.stderr)
            return 2
        args.device = resolve_device(args.device)
        return compare_split(args)
    if args.compare_cohort:
        args.device = resolve_device(args.device)
        return compare_cohort(args)

    import pandas as pd

    workers_list = [int(w) for w in args.workers.split(",") if w.strip()]
    device = resolve_device(args.device)
    cells = expand_grid(args.preset, args.world)
    limit = args.subset or None
    n = len(cells[:limit]) if limit else len(cells)
    report = {
        "world": args.world, "preset": args.preset, "cells": n, "grid_cells": len(cells),
        "backend": args.backend, "device": device, "cpu_count": cpu_count(),
        "python": platform.python_version(), "machine": platform.machine(), "settings": {},
    }
    with tempfile.TemporaryDirectory(prefix="sweep-time-") as tmp:
        tmp = Path(tmp)
        if not args.no_warmup:
            t0 = time.perf_counter()
            run_sweep(args.preset, tmp / "warmup", execution=Execution(device=device), world=args.world,
                      limit=1, progress=False)
            report["warmup_s"] = round(time.perf_counter() - t0, 2)
        tables = {}
        for w in workers_list:
            out = tmp / f"workers-{w}"
            t0 = time.perf_counter()
            res = run_sweep(args.preset, out, execution=Execution(device=device, threads=args.threads),
                            world=args.world, backend=args.backend, workers=w, limit=limit, progress=False)
            wall = time.perf_counter() - t0
            tables[w] = pd.read_csv(out / "results.csv").drop(columns=["seconds"])
            report["settings"][str(w)] = {
                "workers": w,
                "threads_per_run": args.threads or max(1, cpu_count() // w),
                "wall_s": round(wall, 2),
                "wall_s_per_run": round(wall / n, 2),
                "mean_run_seconds": round(float(res["seconds"].mean()), 2),
            }
        base = report["settings"][str(workers_list[0])]["wall_s"]
        report["speedup"] = {str(w): round(base / s["wall_s"], 3)
                             for w, s in zip(workers_list, report["settings"].values())}
        first = tables[workers_list[0]]
        report["identical_results"] = all(t.equals(first) for t in tables.values())
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of a sweep with 1 and with 2 concurrent runs; prints one JSON object.

    python benchmarks/sweep_time.py --subset 4            # the first 4 cells of "quick"
    python benchmarks/sweep_time.py --workers 1,2,4 --backend ray

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
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a source checkout
    sys.path.insert(0, str(ROOT))

from reprolib.sweep import SWEEP_PRESETS, cpu_count, expand_grid, resolve_device, run_sweep  # noqa: E402


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
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--no-warmup", action="store_true", help="time cold caches too")
    args = p.parse_args(argv)

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
            run_sweep(args.preset, tmp / "warmup", world=args.world, device=device, limit=1,
                      progress=False)
            report["warmup_s"] = round(time.perf_counter() - t0, 2)
        tables = {}
        for w in workers_list:
            out = tmp / f"workers-{w}"
            t0 = time.perf_counter()
            res = run_sweep(args.preset, out, world=args.world, backend=args.backend, workers=w,
                            device=device, threads=args.threads, limit=limit, progress=False)
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

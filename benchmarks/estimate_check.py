"""Is the time estimate honest?  Estimate a small grid, train it, print both.

Prices the first ``--limit`` cells of a sweep grid with
:func:`reprolib.estimate.estimate_sweep` (its short measured calibration
included), then trains them with :func:`reprolib.sweep.run_sweep` into a fresh
folder and prints the estimate, the measured wall time and their ratio, then one
JSON object. Target: the estimate within 25 % of the measured time. The
teacher is taken from the cache (trained first, and not timed, if missing), so
that both numbers are about the students' work.

    python benchmarks/estimate_check.py [--preset quick] [--limit 5] [--workers 1] [--device cpu]
                                        [--out FILE]
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

from reprolib import estimate, sweep  # noqa: E402
from reprolib.devices import Execution  # noqa: E402
from reprolib.errors import ReproError  # noqa: E402
from reprolib.grids import expand_grid, get_grid  # noqa: E402
from reprolib.io import write_json  # noqa: E402
from reprolib.teacher import build_teacher  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--limit", type=int, default=5, help="the first N cells of the grid")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    try:
        if args.limit < 1 or args.workers < 1:
            raise ReproError("--limit and --workers must be positive integers")
        execution = Execution(device=args.device, precision=args.precision)
        grid = get_grid(args.preset)
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cells = expand_grid(grid)[:args.limit]
    build_teacher(cells[0], progress=False)      # cached before anything is timed
    with tempfile.TemporaryDirectory(prefix="reprolib-estimate-") as tmp:
        out = Path(tmp) / "sweep"
        t0 = time.perf_counter()
        est = estimate.estimate_sweep(cells, out, execution, workers=args.workers)
        t1 = time.perf_counter()
        sweep.run_sweep(grid, out, execution=execution, workers=args.workers, limit=args.limit, progress=False)
        measured = time.perf_counter() - t1
    ratio = est["seconds"] / measured
    print(f"{len(cells)} runs of {grid.name} on {args.workers} worker(s), {execution.device}, {execution.precision}: "
          f"estimated {est['seconds']:.0f} s (calibration {t1 - t0:.1f} s), measured {measured:.0f} s, "
          f"estimate/measured {ratio:.2f} ({'within' if abs(ratio - 1) <= 0.25 else 'outside'} 25 %)")
    report = {"grid": grid.name, "runs": len(cells), "workers": args.workers, "device": execution.device,
              "precision": execution.precision, "estimated_seconds": est["seconds"],
              "measured_seconds": round(measured, 1), "estimate_over_measured": round(ratio, 3),
              "within_25_percent": abs(ratio - 1) <= 0.25, "calibration_wall_seconds": round(t1 - t0, 1),
              "estimate": est, "machine": f"{platform.machine()}, {platform.processor() or 'CPU'}"}
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

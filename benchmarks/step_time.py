"""Training-step throughput of every method on the mini world's quick preset.

Prints one JSON object: per method, images per second over the timed steps
(teacher forward included, as in training) and the step-time ratio to ``kd``
measured in the same process; then the wall time of whole quick-preset runs.
Targets on a 2-core CPU: every layer method <= 1.3x the step time of kd; one
quick run <= 30 s.

    python benchmarks/step_time.py [--steps 30] [--threads 2] [--run-methods kd,subdistill]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time

import torch

from reprolib.config import METHODS, make_config
from reprolib.train import Distiller, train_run


def throughput(method: str, steps: int, rho: float) -> float:
    cfg = make_config("mini", "quick", method=method, contamination_rate=rho, seed=1)
    run = Distiller(cfg, "cpu")
    run.student.train()
    run.method.train()
    done, images, elapsed = 0, 0, 0.0
    warmup = 3
    while done < steps + warmup:
        it = iter(run.batches())
        while done < steps + warmup:
            t0 = time.perf_counter()
            try:
                batch = next(it)   # the teacher's forward happens here
            except StopIteration:
                break
            run.step(*batch)
            if done >= warmup:
                elapsed += time.perf_counter() - t0
                images += len(batch[0])
            done += 1
    return images / elapsed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=36)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rho", type=float, default=1.0)
    p.add_argument("--run-methods", default="kd,subdistill",
                   help="methods whose whole quick run is timed (comma-separated; empty: none)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    # Warm caches (teacher, data, subspace) so that only training is timed.
    Distiller(make_config("mini", "quick", method="subdistill", contamination_rate=args.rho), "cpu")
    rates = {m: throughput(m, args.steps, args.rho) for m in METHODS}
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "images_per_second": {m: round(v, 1) for m, v in rates.items()},
        "step_time_ratio_to_kd": {m: round(rates["kd"] / v, 3) for m, v in rates.items()},
        "quick_run_seconds": {},
    }
    for m in filter(None, args.run_methods.split(",")):
        cfg = make_config("mini", "quick", method=m, contamination_rate=args.rho, seed=1)
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            train_run(cfg, d, progress=False)
            out["quick_run_seconds"][m] = round(time.perf_counter() - t0, 1)
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

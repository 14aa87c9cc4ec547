"""Training-step time of every method on the mini world's quick preset, as a ratio to kd.

A step is what training does per batch: the teacher's forward (and its
transforms) plus the student's forward, backward and optimiser step
(:meth:`reprolib.cohort.Cohort.step` with a cohort of one). Every method steps
on the same pre-drawn batches; the methods are timed round-robin, several
rounds, and the median per method is kept, so that the ratios are measured in
one run under the same load (CPU time of the process on the CPU, wall time on CUDA). Prints a table and then one JSON object.
Target on a 2-core CPU: every layer method <= 1.3x kd's step time.

fp32 and bf16 autocast are timed side by side (``--precision both``, the default):
bf16 on CUDA, or on a CPU with native bf16 (AVX512-BF16 or AMX, detected and
printed); on a CPU without it bf16 is emulated and refused, and the table says so.

    python benchmarks/step_time.py [--steps 10] [--rounds 5] [--threads 1] [--teacher-recipe smoke]
                                   [--precision both|fp32|bf16] [--device cpu]

``--teacher-recipe smoke`` uses the tests' quickly trained teacher (same
architecture, so the timings are representative) instead of the mini teacher
that takes minutes to train on a fresh cache.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a source checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from reprolib.cohort import Cohort  # noqa: E402
from reprolib.config import make_config  # noqa: E402
from reprolib.cost import median_times, time_cohorts  # noqa: E402
from reprolib.devices import PRECISIONS, Execution, native_bf16, resolve_device  # noqa: E402
from reprolib.errors import ReproError  # noqa: E402
from reprolib.methods import METHODS  # noqa: E402


def time_steps(args, precision: str) -> tuple[dict[str, float], Cohort]:
    """Median seconds per training step of every method, under ``precision``."""
    extra = {"teacher_recipe": args.teacher_recipe} if args.teacher_recipe else {}
    cohorts = {}
    for m in METHODS:
        cfg = make_config("mini", args.preset, method=m, contamination_rate=args.rho, seed=1,
                          lambda_layer=0.0 if m == "kd" else args.lambda_layer, **extra)
        cohorts[m] = Cohort([cfg], Execution(device=args.device, precision=precision))
    some = next(iter(cohorts.values()))
    return median_times(time_cohorts(cohorts, args.steps, args.rounds)), some


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="steps per method per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rho", type=float, default=1.0)
    p.add_argument("--preset", default="quick")
    p.add_argument("--lambda-layer", type=float, default=1.0)
    p.add_argument("--teacher-recipe", default=None,
                   help="mini teacher recipe (default: the preset's; 'smoke' trains in seconds)")
    p.add_argument("--precision", default="both", choices=("both", *PRECISIONS),
                   help="both (default): fp32 and bf16 side by side, where bf16 is allowed")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    wanted = list(PRECISIONS) if args.precision == "both" else [args.precision]
    device = resolve_device(args.device)
    flags = native_bf16() if device == "cpu" else []
    med: dict[str, dict[str, float]] = {}
    refused: dict[str, str] = {}
    some = None
    for precision in wanted:
        try:
            Execution(device=device, precision=precision)   # bf16 on a CPU without it: refused
        except ReproError as e:
            if args.precision != "both":
                print(f"error: {e}", file=sys.stderr)
                return 2
            refused[precision] = str(e)
            continue
        med[precision], some = time_steps(args, precision)
    base = med.get("fp32") or next(iter(med.values()))
    cpu = "native bf16 (" + ", ".join(flags) + ")" if flags else "no native bf16"
    print(f"device {device}" + (f", CPU with {cpu}" if device == "cpu" else "") + f", {args.threads} thread(s)")
    head = "".join(f"{p + ' ms':>12}" for p in med) + (f"{'bf16 speed-up':>15}" if len(med) == 2 else "")
    print(f"{'method':<12}{head}{'ratio to kd':>14}")
    for m in base:
        row = "".join(f"{1000 * med[p][m]:>12.1f}" for p in med)
        if len(med) == 2:
            row += f"{med['fp32'][m] / med['bf16'][m]:>15.2f}"
        print(f"{m:<12}{row}{base[m] / base['kd']:>14.3f}")
    for p, why in refused.items():
        print(f"{p}: not timed: {why}")
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "torch": torch.__version__, "device": device, "cpu_native_bf16": flags,
        "clock": "wall" if device.startswith("cuda") else "process CPU",
        "preset": args.preset, "student": some.cfgs[0].student,
        "batch_size": some.cfgs[0].batch_size, "steps": args.steps, "rounds": args.rounds,
        "precisions": list(med), "refused": refused,
        "ms_per_step": {p: {m: round(1000 * v, 2) for m, v in med[p].items()} for p in med},
        "step_time_ratio_to_kd": {m: round(v / base["kd"], 3) for m, v in base.items()},
    }
    if len(med) == 2:
        out["bf16_speedup"] = {m: round(med["fp32"][m] / med["bf16"][m], 3) for m in base}
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

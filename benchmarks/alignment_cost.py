"""What deeper alignment costs: step time and peak memory of each layer method at 1, 2, 4 and 8 layer pairs.

Each layer method (AT, VID, VkD, SubDistill) is built as training builds it
(:class:`reprolib.cohort.Cohort`, a cohort of one) with 1 (the deepest pair), 2
(the two deepest), 4 (every stage's output: the book's pairs) and 8 layer pairs,
beside output-only KD, and

* **step time**: every configuration takes the same pre-drawn batches, the
  configurations are timed round-robin over several rounds and the median kept
  (process CPU time on the CPU, so the machine's load does not count; wall time
  on CUDA), so the ratios to KD are measured in one run under the same load;
* **peak memory** of a training step: on CUDA ``torch.cuda.max_memory_allocated``
  (reset per configuration); on the CPU the peak resident set during three steps
  over the resident set before them (the peak reset through
  ``/proc/self/clear_refs``), measured in a fresh process per configuration.

The mini pair has one residual block per stage, so "every residual block" is 4
pairs; the 8 pairs add each block's first convolution (``layerN.0.conv1``, before
its batch norm) to the 4 block outputs.

    python benchmarks/alignment_cost.py [--steps 5] [--rounds 3] [--threads 1] [--preset quick]
                                        [--teacher-recipe smoke] [--device cpu] [--no-memory] [--out FILE]

Prints a table and one JSON object (``--out``: also written there).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a source checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from reprolib.cohort import Cohort  # noqa: E402
from reprolib.config import LAYER_METHODS, make_config  # noqa: E402
from reprolib.devices import Execution  # noqa: E402
from reprolib.io import write_json  # noqa: E402

if str(Path(__file__).resolve().parent) not in sys.path:   # its sibling, benchmarks/step_time.py
    sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_time import time_cohorts  # noqa: E402

STAGES = ("layer1", "layer2", "layer3", "layer4")
PAIRS = {
    1: (("layer4", "layer4"),),
    2: (("layer3", "layer3"), ("layer4", "layer4")),
    4: tuple((s, s) for s in STAGES),
    8: tuple(p for s in STAGES for p in ((f"{s}.0.conv1", f"{s}.0.conv1"), (s, s))),
}
COUNTS = tuple(PAIRS)


def config(method: str, n: int, args):
    extra = {"teacher_recipe": args.teacher_recipe} if args.teacher_recipe else {}
    if method == "kd":
        return make_config("mini", args.preset, method="kd", contamination_rate=1.0, seed=1, lambda_layer=0.0, **extra)
    return make_config("mini", args.preset, method=method, contamination_rate=1.0, seed=1, lambda_layer=1.0,
                       layer_pairs=PAIRS[n], **extra)


def cases(args) -> list[tuple[str, int]]:
    return [("kd", 0)] + [(m, n) for m in LAYER_METHODS for n in COUNTS]


def time_steps(args) -> dict[tuple[str, int], float]:
    """Median seconds per training step of every case, measured round-robin (step_time's loop)."""
    execution = Execution(device=args.device)
    return time_cohorts({c: Cohort([config(*c, args)], execution) for c in cases(args)}, args.steps, args.rounds)


def peak_memory_one(method: str, n: int, args) -> int:
    """Bytes a few training steps of one case add to the peak (this process; see the module doc)."""
    cohort = Cohort([config(method, n, args)], Execution(device=args.device))
    batches = []
    for x, y, *_ in cohort._batches():
        batches.append((x, y))
        if len(batches) == 3:
            break
    for m in cohort.members:
        m.student.train(), m.method.train()
    if cohort.dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(cohort.dev)
        base = torch.cuda.memory_allocated(cohort.dev)
        for x, y in batches:
            cohort.step(x, y)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(cohort.dev) - base
    import gc

    gc.collect()
    # Linux: writing 5 to clear_refs resets the peak resident set (VmHWM) to the current one, so
    # the peak below is that of the steps alone, not of the set-up (subspace fit, data) before them.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base, peak_key = _status_kib("VmRSS"), "VmHWM"
    except OSError:   # not Linux, or not allowed: the process's peak so far (may hide the steps' peak)
        base, peak_key = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
    for x, y in batches:
        cohort.step(x, y)
    peak = _status_kib(peak_key) if peak_key else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return 1024 * max(0, peak - base)


def _status_kib(key: str) -> int:
    """A ``kB`` field of /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"no {key} in /proc/self/status")


def peak_memory(args) -> dict[tuple[str, int], int]:
    out = {}
    for method, n in cases(args):
        if args.device.startswith("cuda"):
            out[(method, n)] = peak_memory_one(method, n, args)
            continue
        cmd = [sys.executable, __file__, "--one", f"{method}:{n}", "--preset", args.preset, "--threads",
               str(args.threads), "--device", args.device]
        if args.teacher_recipe:
            cmd += ["--teacher-recipe", args.teacher_recipe]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[(method, n)] = int(proc.stdout.strip().splitlines()[-1])
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="steps per case per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preset", default="quick")
    p.add_argument("--teacher-recipe", default=None,
                   help="mini teacher recipe (default: the preset's; 'smoke' trains in seconds)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-memory", action="store_true", help="time the steps only")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)   # METHOD:N, the memory of one case
    args = p.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.threads < 1:
        print("error: --steps, --rounds and --threads must be positive integers", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    if args.one:
        method, n = args.one.split(":")
        print(peak_memory_one(method, int(n), args))
        return 0
    steps = time_steps(args)
    memory = {} if args.no_memory else peak_memory(args)
    kd_s, kd_mem = steps[("kd", 0)], memory.get(("kd", 0))
    print(f"{'method':<12}{'pairs':>6}{'ms/step':>10}{'x kd':>8}" + ("" if args.no_memory else f"{'peak MiB':>10}{'x kd':>8}"))
    rows = []
    for (method, n), s in steps.items():
        row = {"method": method, "pairs": n, "ms_per_step": round(1000 * s, 2), "step_ratio_to_kd": round(s / kd_s, 3)}
        line = f"{method:<12}{n:>6}{1000 * s:>10.1f}{s / kd_s:>8.2f}"
        if memory:
            mem = memory[(method, n)]
            row.update(peak_step_mib=round(mem / 2 ** 20, 2),
                       memory_ratio_to_kd=round(mem / kd_mem, 3) if kd_mem else None)
            line += f"{mem / 2 ** 20:>10.1f}" + (f"{mem / kd_mem:>8.2f}" if kd_mem else f"{'–':>8}")
        rows.append(row)
        print(line)
    report = {"machine": f"{platform.machine()}, {platform.processor() or 'CPU'}, {args.threads} thread(s)",
              "torch": torch.__version__, "device": args.device, "preset": args.preset,
              "clock": "wall" if args.device.startswith("cuda") else "process CPU",
              "memory": None if args.no_memory else (
                  "max_memory_allocated" if args.device.startswith("cuda") else "peak RSS during the steps over RSS before them, a process per case"),
              "pairs": {n: [list(p) for p in PAIRS[n]] for n in COUNTS}, "steps": args.steps,
              "rounds": args.rounds, "rows": rows}
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A cohort's training step with its students stacked (one batched forward) and separate.

One cohort of the preset's main grid (every method and λ of one ρ and seed, as a sweep
trains them together) steps on the same pre-drawn batches twice: with
``Execution(stack=False)`` (each student its own forward, backward and optimiser step;
the CPU's reference) and ``Execution(stack=True)`` (:class:`reprolib.cohort.StudentStack`:
one vmapped forward of the stacked parameters, one backward, each member's own
optimiser step). Both are timed round-robin over several rounds
(:func:`reprolib.cost.time_cohorts`: process CPU time on the CPU, wall time on CUDA), so
the ratio is measured in one run under the same load. Prints a line and one JSON object.

The stacked step pays off where one student's kernels leave the device idle (a GPU);
on a CPU the separate steps already keep the cores busy. Where the numbers land is
reported, whatever they are.

    python benchmarks/stacked_students.py [--preset quick] [--device cpu] [--members N]
                                          [--steps 5] [--rounds 3] [--teacher-recipe smoke]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a source checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from reprolib.cohort import Cohort  # noqa: E402
from reprolib.cost import median_times, time_cohorts  # noqa: E402
from reprolib.devices import Execution, cpu_model, resolve_device  # noqa: E402
from reprolib.errors import ReproError  # noqa: E402
from reprolib.grids import expand_grid, get_grid, group_cohorts  # noqa: E402


def cohort_configs(preset: str, members: int | None, teacher_recipe: str | None) -> list:
    """The first cohort of ``preset``'s main grid at ρ = 1 (its first ``members``)."""
    import dataclasses

    grid = get_grid(preset)
    if teacher_recipe:
        grid = dataclasses.replace(grid, overrides={**grid.overrides, "teacher_recipe": teacher_recipe})
    cells = [c for c in expand_grid(grid, "mini") if c.data.contamination_rate == 1.0]
    cohort = group_cohorts(cells)[0]
    return cohort[:members] if members else cohort


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--members", type=int, default=None, help="the cohort's first N students (default: all)")
    p.add_argument("--steps", type=int, default=5, help="steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--teacher-recipe", default=None,
                   help="mini teacher recipe (default: the preset's; 'smoke' trains in seconds)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    try:
        if args.members is not None and args.members < 2:
            raise ReproError(f"--members {args.members}: a stack needs at least 2 students")
        device = resolve_device(args.device)
        cfgs = cohort_configs(args.preset, args.members, args.teacher_recipe)
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cohorts = {k: Cohort(cfgs, Execution(device=device, stack=k == "stacked")) for k in ("separate", "stacked")}
    times = time_cohorts(cohorts, args.steps, args.rounds)
    med = median_times(times)
    speedup = med["separate"] / med["stacked"]
    print(f"{len(cfgs)} students ({', '.join(sorted({c.method for c in cfgs}))}), {device}: "
          f"separate {1000 * med['separate']:.1f} ms, stacked {1000 * med['stacked']:.1f} ms per cohort step "
          f"({speedup:.2f}x)")
    out = {
        "machine": cpu_model() if device == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "device": device, "threads": args.threads,
        "clock": "wall" if device.startswith("cuda") else "process CPU",
        "preset": args.preset, "students": len(cfgs), "methods": sorted({c.method for c in cfgs}),
        "teacher_recipe": cfgs[0].teacher_recipe, "steps": args.steps, "rounds": args.rounds,
        "ms_per_cohort_step": {k: [round(1000 * t, 2) for t in v] for k, v in times.items()},
        "median_ms": {k: round(1000 * v, 2) for k, v in med.items()},
        "stacked_speedup": round(speedup, 3),
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        from reprolib.io import write_json

        write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

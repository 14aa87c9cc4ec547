"""What deeper alignment costs: step time and peak memory of each layer method at 1, 2, 4 and 8 layer pairs.

The measurement is :func:`reprolib.cost.alignment_cost` (its documentation says how
each figure is taken: round-robin step timing as ratios to output-only KD measured
in one run, and the peak memory of a step in a fresh process per case); chapter 9
of the book runs the same function. This script prints the table and one JSON
object.

    python benchmarks/alignment_cost.py [--steps 5] [--rounds 3] [--threads 1] [--preset quick]
                                        [--teacher-recipe smoke] [--device cpu] [--memory-repeats 2]
                                        [--no-memory] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a source checkout
    sys.path.insert(0, str(ROOT))

from reprolib.cost import alignment_cost, cost_table  # noqa: E402
from reprolib.errors import ReproError  # noqa: E402
from reprolib.io import write_json  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="steps per case per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--preset", default="quick")
    p.add_argument("--teacher-recipe", default=None,
                   help="mini teacher recipe (default: the preset's; 'smoke' trains in seconds)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--memory-repeats", type=int, default=2, help="processes per case for the peak memory")
    p.add_argument("--no-memory", action="store_true", help="time the steps only")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    try:
        report = alignment_cost(args.preset, args.steps, args.rounds, args.threads, args.device, args.teacher_recipe,
                                memory=not args.no_memory, memory_repeats=args.memory_repeats,
                                progress=lambda line: print(line, file=sys.stderr))
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.out:
        write_json(args.out, report)
    print(cost_table(report).to_string(index=False))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

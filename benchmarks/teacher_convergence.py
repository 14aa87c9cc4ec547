"""Is the mini teacher converged? The teacher's convergence rule, measured.

The rule (book, "Decisions": "the precondition"; :func:`reprolib.verdicts.teacher_convergence`,
written and tested before any teacher of this benchmark was trained): the main world's
teacher is the recipe trained ``E`` epochs for the smallest ``E`` of ``--candidates``
(default 10, 20) whose ten-class test accuracy is within half a point of the same
recipe trained ``2E`` epochs. Only the teacher is trained: no student, no digit.

The recipes are :data:`reprolib.teacher.TEACHER_RECIPES`' (batch 128, Adam, one-cycle
rate peaking at 3e-3, no augmentation, fp32), trained in order of epochs and cached
like every teacher (a second call reads them back). The 1-epoch teacher of the first
book is trained too, for the table. ``--smoke`` trains on 2,000 images (tests only).
Prints a table and, last, one line ``teacher: E epochs (...)``; writes the JSON
``--out`` (default ``benchmarks/results/teacher-convergence-cpu.json``).

    python benchmarks/teacher_convergence.py [--candidates 10 20] [--out FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--candidates", type=int, nargs="+", default=[10, 20])
    p.add_argument("--also", type=int, nargs="*", default=[1], help="epochs trained for the table only")
    p.add_argument("--smoke", action="store_true", help="the smoke recipe's 2,000 images (tests only)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "teacher-convergence-cpu.json"))
    args = p.parse_args(argv)

    import torch

    from reprolib import verdicts
    from reprolib.config import MINI_SUBTASK
    from reprolib.devices import cpu_flags
    from reprolib.io import write_json
    from reprolib.teacher import recipe, subtask_accuracy_mini, train_mini_teacher

    if any(e < 1 for e in args.candidates + args.also):
        print("error: --candidates and --also take positive numbers of epochs", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print("error: --threads must be a positive integer", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    base = recipe("smoke" if args.smoke else "10-epoch")
    start = time.time()
    rows = {}

    def train(e):
        if e in rows:
            return rows[e]
        tcfg = dataclasses.replace(base, epochs=e)
        model, manifest = train_mini_teacher(tcfg, progress=True)
        r = rows[e] = {"epochs": e, "accuracy_10class": manifest["accuracy_10class"],
                       "train_accuracy_10class": manifest.get("train_accuracy_10class"),
                       "accuracy_subtask": subtask_accuracy_mini(model, MINI_SUBTASK),
                       "test_accuracy_per_epoch": manifest.get("test_accuracy_per_epoch"),
                       "train_seconds": manifest["train_seconds"], "threads": manifest.get("threads"),
                       "cached": manifest["cached"], "key": tcfg.key()}
        print(f"{e:3d} epochs: test {r['accuracy_10class']:.4f} (subtask {r['accuracy_subtask']:.4f}), "
              f"train {r['train_accuracy_10class']:.4f}, {r['train_seconds']:.0f} s"
              + (" (cached)" if r["cached"] else ""), file=sys.stderr, flush=True)
        return r

    for e in sorted(set(args.also)):
        train(e)
    # The candidates in order, each with its doubled partner, until one meets the rule.
    for e in sorted(set(args.candidates)):
        a, b = train(e), train(2 * e)
        if abs(b["accuracy_10class"] - a["accuracy_10class"]) <= verdicts.TEACHER_TOLERANCE:
            break
    rows = [rows[e] for e in sorted(rows)]
    choice = verdicts.teacher_convergence({r["epochs"]: r["accuracy_10class"] for r in rows},
                                          candidates=args.candidates)
    flags = cpu_flags()
    write_json(args.out, {
        "rule": f"the smallest of {args.candidates} epochs whose ten-class test accuracy is within "
                f"{verdicts.TEACHER_TOLERANCE * 100:g} points of twice the epochs",
        "recipe": {k: v for k, v in dataclasses.asdict(base).items() if k != "epochs"},
        "smoke": args.smoke, "teachers": rows, "choice": choice.to_dict(),
        "machine": {"processor": platform.processor() or platform.machine(),
                    "isa": sorted(f for f in flags if f.startswith(("avx", "amx")))},
        "seconds": time.time() - start})
    print(f"{'epochs':>6} {'test':>7} {'subtask':>8} {'train':>7} {'seconds':>8}")
    for r in rows:
        print(f"{r['epochs']:6d} {r['accuracy_10class']:7.4f} {r['accuracy_subtask']:8.4f} "
              f"{r['train_accuracy_10class']:7.4f} {r['train_seconds']:8.0f}")
    print(choice.sentence)
    print(f"teacher: {choice.epochs} epochs ({'converged' if choice.converged else 'not shown converged'}; "
          f"{time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Smoke training of every method in the paper world on one device (part of gpu_check.sh).

Needs ``REPROLIB_IMAGENET``, ``REPROLIB_MNIST`` (stand-ins: ``python -m
reprolib.standins``) and a resnet18 weights file. Each method trains the
``resnet18 → resnet18-s`` pair for the smoke preset's one epoch through
:func:`reprolib.cohort.train_run`; the script checks that the run finished
(``metrics.json`` with finite accuracies, ``student.pt``), that the world's
batches come out on the device, and prints one line per method. Exit status 1
when any method fails, 2 on bad options.

    python scripts/gpu_smoke.py --weights W --out DIR [--device cuda] [--tiny]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

from reprolib.config import METHODS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N")
    p.add_argument("--weights", required=True, help="resnet18 weights file (fake ones do)")
    p.add_argument("--out", required=True, help="folder for the runs")
    p.add_argument("--tiny", action="store_true", help="64 px images instead of 224 (CPU checks)")
    p.add_argument("--methods", default=",".join(METHODS))
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        print(f"error: unknown method(s) {unknown}; choose from {list(METHODS)}", file=sys.stderr)
        return 2
    if not Path(args.weights).is_file():
        print(f"error: no weights file {args.weights}; make one with python -m reprolib.standins OUT "
              "--weights resnet18", file=sys.stderr)
        return 2

    import torch

    from reprolib.config import make_config
    from reprolib.devices import Execution
    from reprolib.worlds import build_world
    from reprolib.cohort import train_run

    size = 64 if args.tiny else 224
    failures = []
    for method in methods:
        cfg = make_config("paper", "smoke", method=method, contamination_rate=0.5, lambda_layer=1.0,
                          teacher="resnet18", student="resnet18-s", teacher_weights=args.weights,
                          image_size=size, artifact_size=size // 4)
        out = Path(args.out) / method
        t0 = time.perf_counter()
        try:
            metrics = train_run(cfg, out, execution=Execution(device=args.device), progress=False)
            numbers = [metrics[k] for k in ("test_accuracy", "val_accuracy", "teacher_test_accuracy")]
            if not all(isinstance(v, float) and math.isfinite(v) for v in numbers):
                raise RuntimeError(f"non-finite accuracies {numbers}")
            if not (out / "student.pt").is_file() or not (out / "metrics.json").is_file():
                raise RuntimeError("the run folder lacks student.pt or metrics.json")
            saved = json.loads((out / "metrics.json").read_text())
            print(f"PASS {method:<11} {time.perf_counter() - t0:6.1f} s  device {saved['device']}  "
                  f"test accuracy {saved['test_accuracy']:.3f}  loss {saved['curves']['loss'][-1]:.4g}",
                  flush=True)
        except Exception as e:  # noqa: BLE001 - report every method, then fail
            traceback.print_exc()
            print(f"FAIL {method:<11} {type(e).__name__}: {e}", flush=True)
            failures.append(method)

    # The world finishes its batches on the requested device.
    try:
        cfg = make_config("paper", "smoke", image_size=size, artifact_size=size // 4, contamination_rate=1.0)
        world = build_world(cfg.data, 1, device=args.device)
        x, y, d = next(iter(world.batches("train", 4, shuffle=True)))
        want = torch.device(args.device)
        ok = x.device.type == want.type and (want.index is None or x.device.index == want.index)
        print(f"{'PASS' if ok else 'FAIL'} world batches on {x.device} (asked {args.device}), "
              f"{world.num_workers} loader workers, channels_last "
              f"{x.is_contiguous(memory_format=torch.channels_last)}", flush=True)
        if not ok:
            failures.append("world-device")
        world.close()
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        print(f"FAIL world batches: {type(e).__name__}: {e}")
        failures.append("world-device")
    if failures:
        print(f"paper smoke: {len(failures)} failure(s): {', '.join(failures)}")
        return 1
    print(f"paper smoke: all {len(methods)} methods passed on {args.device}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

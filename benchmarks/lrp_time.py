"""Wall time of LRP heatmaps (D9) for 256 random 1×32×32 images, mini student and mini teacher.

Run: ``python benchmarks/lrp_time.py [--threads 2] [--images 256] [--batch-size 64] [--repeats 1]
[--zennit-gamma]``. Prints one JSON object; the target is ≤ 20 s per model with 2 torch threads.
Wall time is the best of ``--repeats``; the process CPU time of that run and the
1-minute load average are printed beside it, because a shared machine can
stretch wall time several-fold. ``--zennit-gamma`` also times zennit's own
five-pass Gamma rule (``fast_gamma=False``) for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch

from reprolib import lrp
from reprolib.sources import MINI_MEAN, MINI_STD
from reprolib.config import MINI_SUBTASK
from reprolib.models import FrozenTeacher, mini_student, mini_teacher


def time_model(model, x, y, batch_size: int, repeats: int, fast_gamma: bool = True) -> dict:
    low, high = lrp.box_bounds(MINI_MEAN, MINI_STD)
    composite = lrp.build_composite(model, low, high, fast_gamma=fast_gamma)
    best = None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        h = lrp.logit_gap_relevance(model, x, y, composite, batch_size=batch_size)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        assert h.shape == (x.shape[0], 32, 32) and torch.isfinite(h).all()
        if best is None or wall < best["wall_s"]:
            best = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3)}
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--zennit-gamma", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.images, 1, 32, 32)
    y = torch.randint(0, 5, (args.images,))
    models = {
        "mini_student": mini_student(),
        "frozen_mini_teacher": FrozenTeacher(mini_teacher(), MINI_SUBTASK),
    }
    load_before = os.getloadavg()[0]
    seconds = {name: time_model(m, x, y, args.batch_size, args.repeats) for name, m in models.items()}
    if args.zennit_gamma:
        seconds.update({f"{name}_zennit_gamma": time_model(m, x, y, args.batch_size, args.repeats, False)
                        for name, m in models.items()})
    print(json.dumps({
        "benchmark": "lrp_time", "images": args.images, "image_shape": [1, 32, 32],
        "batch_size": args.batch_size, "torch_threads": args.threads, "repeats": args.repeats,
        "seconds": seconds, "target_wall_s": 20,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "cpu_count": os.cpu_count(), "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()

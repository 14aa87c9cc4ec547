"""Wall time of LRP heatmaps (D9) for 256 random 1×32×32 images, mini student and mini teacher.

Run: ``python benchmarks/lrp_time.py [--threads 2] [--images 256] [--batch-size 64]``.
Prints one JSON object; the target is ≤ 20 s per model with 2 torch threads.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from reprolib import lrp
from reprolib.data import MINI_MEAN, MINI_STD
from reprolib.config import MINI_SUBTASK
from reprolib.models import FrozenTeacher, mini_student, mini_teacher


def time_model(model, x, y, batch_size: int) -> float:
    low, high = lrp.box_bounds(MINI_MEAN, MINI_STD)
    start = time.perf_counter()
    h = lrp.logit_gap_relevance(model, x, y, low=low, high=high, batch_size=batch_size)
    seconds = time.perf_counter() - start
    assert h.shape == (x.shape[0], 32, 32) and torch.isfinite(h).all()
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.images, 1, 32, 32)
    y = torch.randint(0, 5, (args.images,))
    models = {
        "mini_student": mini_student(),
        "frozen_mini_teacher": FrozenTeacher(mini_teacher(), MINI_SUBTASK),
    }
    seconds = {name: round(time_model(m, x, y, args.batch_size), 3) for name, m in models.items()}
    print(json.dumps({
        "benchmark": "lrp_time", "images": args.images, "image_shape": [1, 32, 32],
        "batch_size": args.batch_size, "torch_threads": args.threads, "seconds": seconds,
        "target_seconds": 20, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
    }, indent=2))


if __name__ == "__main__":
    main()

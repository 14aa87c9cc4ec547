"""Can the students' own step get faster on this CPU?  Two levers, measured against eager.

A cohort shares the teacher's forward, so its speedup over separate runs is
bounded by how cheap the students' own forward + backward + optimiser step is
(``benchmarks/sweep_time.py --compare-cohort`` prints that bound). This script
measures the two levers that could make the students cheaper, on the mini
world's default student (batch 32, 32×32 inputs, fp32, channels-last):

* **stacked**: the M students of a cohort that share an architecture as one
  network whose convolutions are grouped (``groups=M``), batch norms and head
  per member, so that one kernel call serves all M students. The per-member
  maths is the same as M separate students (a test checks this with copied
  weights), but the kernels differ, so the numbers would not be bitwise those
  of separate runs.
* **compiled**: ``torch.compile`` (Inductor) of one student, which fuses the
  element-wise work around the convolutions.

Each variant takes the same batches; the variants are timed round-robin over
several rounds and the median kept (process CPU time, so the machine's load
does not count). Prints a table and then one JSON object; a ratio above 1
means the lever is faster than eager separate students.

    python benchmarks/student_levers.py [--members 17] [--steps 10] [--rounds 5] [--no-compile]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:          # run from a source checkout
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from reprolib.models import MINI_STUDENT_WIDTHS, BlockResNet, mini_student  # noqa: E402


class _StackedBlock(nn.Module):
    """M torchvision ``BasicBlock``s side by side: grouped convolutions, per-channel batch norms."""

    def __init__(self, cin: int, cout: int, stride: int, m: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin * m, cout * m, 3, stride, 1, bias=False, groups=m)
        self.bn1 = nn.BatchNorm2d(cout * m)
        self.conv2 = nn.Conv2d(cout * m, cout * m, 3, 1, 1, bias=False, groups=m)
        self.bn2 = nn.BatchNorm2d(cout * m)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin * m, cout * m, 1, stride, bias=False, groups=m),
                                      nn.BatchNorm2d(cout * m))

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.down is None else self.down(x)))


class StackedStudents(nn.Module):
    """M mini students (one block per stage, ``stem="small"``) as one network.

    The stem maps the shared one-channel input to M·w₀ channels (an ungrouped
    convolution: each output channel sees only the one input channel, as each
    member's stem does); every later convolution is grouped by member; the head
    is a grouped 1×1 convolution. ``forward`` returns logits of shape (B, M, classes).
    """

    def __init__(self, m: int, num_classes: int = 5, widths: Sequence[int] = MINI_STUDENT_WIDTHS):
        super().__init__()
        self.m, self.num_classes = m, num_classes
        self.conv1 = nn.Conv2d(1, widths[0] * m, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0] * m)
        cin, blocks = widths[0], []
        for w, s in zip(widths, (1, 2, 2, 2)):
            blocks.append(_StackedBlock(cin, w, s, m))
            cin = w
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Conv2d(cin * m, num_classes * m, 1, groups=m)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for b in self.blocks:
            x = b(x)
        return self.fc(x.mean(dim=(2, 3), keepdim=True)).flatten(1).view(len(x), self.m, self.num_classes)

    @torch.no_grad()
    def load_members(self, students: Sequence[BlockResNet]) -> "StackedStudents":
        """Copy M separate mini students' weights (and batch-norm buffers) into the stack."""
        if len(students) != self.m:
            raise ValueError(f"need {self.m} students, got {len(students)}")

        def cat(get):
            return torch.cat([get(s) for s in students])

        def bn(dst, get):
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst, name).copy_(cat(lambda s: getattr(get(s), name)))

        self.conv1.weight.copy_(cat(lambda s: s.conv1.weight))
        bn(self.bn1, lambda s: s.bn1)
        for i, blk in enumerate(self.blocks, start=1):
            src = lambda s, i=i: getattr(s, f"layer{i}")[0]  # noqa: E731
            blk.conv1.weight.copy_(cat(lambda s: src(s).conv1.weight))
            blk.conv2.weight.copy_(cat(lambda s: src(s).conv2.weight))
            bn(blk.bn1, lambda s: src(s).bn1)
            bn(blk.bn2, lambda s: src(s).bn2)
            if blk.down is not None:
                blk.down[0].weight.copy_(cat(lambda s: src(s).downsample[0].weight))
                bn(blk.down[1], lambda s: src(s).downsample[1])
        self.fc.weight.copy_(cat(lambda s: s.fc.weight)[:, :, None, None])
        self.fc.bias.copy_(cat(lambda s: s.fc.bias))
        return self


def _stepper(modules, forward, loss):
    """One optimiser step: forward, loss, backward, AdamW (as a cohort member steps)."""
    opt = torch.optim.AdamW([p for mod in modules for p in mod.parameters()], lr=1e-2, weight_decay=0.0)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss(forward(x), y).backward()
        opt.step()
    return step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=17, help="students per cohort (the quick grid: 17)")
    p.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it takes ~30 s to warm up)")
    args = p.parse_args(argv)
    if args.members < 1 or args.steps < 1 or args.rounds < 1:
        print("error: --members, --steps and --rounds must be at least 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    m, classes, cl = args.members, 5, torch.channels_last
    batches = [(torch.randn(args.batch_size, 1, 32, 32).contiguous(memory_format=cl),
                torch.randint(0, classes, (args.batch_size,))) for _ in range(args.steps)]
    students = [mini_student(classes).to(memory_format=cl) for _ in range(m)]
    stacked = StackedStudents(m, classes).load_members(students).to(memory_format=cl)

    def separate_forward(x):
        return [s(x) for s in students]

    def separate_loss(outs, y):
        return sum(F.cross_entropy(o, y) for o in outs)

    def stacked_loss(out, y):   # the sum of the members' losses: each member gets its own gradient
        return F.cross_entropy(out.reshape(-1, classes), y.repeat_interleave(m), reduction="sum") / len(y)

    variants = {
        f"{m} separate students (eager)": (_stepper(students, separate_forward, separate_loss), m),
        f"{m} students stacked (grouped convolutions)": (_stepper([stacked], stacked, stacked_loss), m),
    }
    compile_warmup = None
    if not args.no_compile:
        one = mini_student(classes).to(memory_format=cl)
        one_eager = mini_student(classes).to(memory_format=cl)
        compiled = torch.compile(one)
        variants["1 student (eager)"] = (_stepper([one_eager], one_eager, F.cross_entropy), 1)
        variants["1 student (torch.compile)"] = (_stepper([one], compiled, F.cross_entropy), 1)
    for k, (step, _) in variants.items():     # warm-up: oneDNN primitives, allocator, compilation
        t0 = time.perf_counter()
        for x, y in batches[:2]:
            step(x, y)
        if k == "1 student (torch.compile)":
            compile_warmup = time.perf_counter() - t0
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for k, (step, _) in variants.items():
            t = time.process_time()
            for x, y in batches:
                step(x, y)
            times[k].append((time.process_time() - t) / len(batches))
    med = {k: statistics.median(v) for k, v in times.items()}
    names = list(variants)
    per_student = {k: med[k] / variants[k][1] for k in names}
    ratios = {"stacked_vs_separate": med[names[0]] / med[names[1]]}
    if not args.no_compile:
        ratios["compiled_vs_eager"] = med["1 student (eager)"] / med["1 student (torch.compile)"]
    print(f"{'variant':<46}{'ms/step':>10}{'ms/student':>12}")
    for k in names:
        print(f"{k:<46}{1000 * med[k]:>10.1f}{1000 * per_student[k]:>12.1f}")
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__, "student": "mini-student", "batch_size": args.batch_size,
        "members": m, "steps": args.steps, "rounds": args.rounds, "clock": "process CPU",
        "ms_per_step": {k: round(1000 * v, 2) for k, v in med.items()},
        "ms_per_student_step": {k: round(1000 * v, 2) for k, v in per_student.items()},
        "speedup": {k: round(v, 3) for k, v in ratios.items()},
        "compile_warmup_seconds": None if compile_warmup is None else round(compile_warmup, 1),
    }
    json.dump(out, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

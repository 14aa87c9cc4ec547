"""The paper world's training throughput: the authors' configuration and ours, side by side.

Builds an ImageNet-like folder of generated JPEGs (ImageNet's sizes, 500×375
and the like, smooth content so that the files decode like photographs) and an
MNIST stand-in in a temporary folder, then times in ONE process, on the same
data, models and device:

(a) the authors' configuration: fp32, NCHW, batch 32; a plain torchvision
    ``ImageFolder`` decoded and augmented in the main process, the digit pasted,
    quantised and normalised per image; one training run per student, each
    recomputing the teacher; forward hooks registered on every step; every loss
    term read to the host on every step; AdamW (PyTorch's default kernel).
    Only one student per method is timed: the λ variants of a method run the
    same step, so they take its rate.
(b) ours: the paper world's pipeline (decode cache, loader workers, uint8
    batches pinned and quantised/pasted/normalised on the device) feeding
    :class:`reprolib.cohort.Cohort` (what training runs): bf16 autocast (CUDA),
    channels_last, fused AdamW (CUDA), hooks registered once, loss terms
    accumulated on the device, and ONE teacher forward per batch shared by a
    cohort of students: the quick grid's cell, kd + 4 layer methods × 4 λ = 17
    students (``--students`` for fewer). ``--loop own`` times this script's own
    minimal shared-teacher loop instead.

Per student means: images of one student's training per second of wall time,
the cohort's time shared equally among its students (for (a): the harmonic mean
over the 17 runs). The last line is

    paper-world speedup X.XX (authors A img/s, ours B img/s per student, device D)

``--tiny --device cpu``: 32 px crops of ~80×60 JPEGs, resnet18 → resnet18-s
(D11's small pair), a few steps: about a minute on 2 cores (a test runs it).
``--device cuda[:N]``: the paper's pair, a randomly initialised torchvision
ResNet-101 (saved as a fake weights file: no download, and timing does not need
trained weights) and timm's mobilenetv4_conv_small, 224 px, about 2 minutes on
one H200. In (a) SubDistill uses random orthonormal subspaces (same shapes and
cost as fitted ones); the cohort fits its own. The decode cache is built before
timing (it is built once per dataset, not per run) and its build time printed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from reprolib import artifacts as art
from reprolib.config import LAYER_METHODS, PAPER_SUBTASK, make_config
from reprolib.transforms import normalize
from reprolib.paper_world import PaperWorld
from reprolib.sources import IMAGENET_MEAN, IMAGENET_STD
from reprolib.hooks import FeatureCapture, feature_shapes
from reprolib.methods import build_method, check_finite, kd_loss, total_loss
from reprolib.models import FrozenTeacher, build_student
from reprolib.standins import fake_weights, imagenet_standin, mnist_standin
from reprolib.subspace import RelevantSubspace

LAMBDAS = (1.0, 10.0, 100.0, 1000.0)
COHORT = [("kd", 0.0)] + [(m, lam) for m in LAYER_METHODS for lam in LAMBDAS]   # 17 students
BATCH = 32     # the protocol's (§5); --batch changes it (plumbing checks only)
TEMPERATURE = 4.0


# ---------------------------------------------------------------------------
# set-up shared by (a) and (b)

def parse_device(text: str) -> torch.device:
    try:
        dev = torch.device(text)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {text!r}; choose cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {text} was asked for, but torch sees no CUDA device; use --device cpu")
        if (dev.index or 0) >= torch.cuda.device_count():
            raise ValueError(f"--device {text}: torch sees only {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ValueError(f"unknown device {text!r}; choose cpu, cuda or cuda:N")
    return dev


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return f"{dev} {torch.cuda.get_device_name(dev)}"
    return f"cpu {torch.get_num_threads()} threads"


def pair(tiny: bool) -> tuple[str, str]:
    """(teacher, student): the paper's pair, or D11's small pair for tiny runs."""
    return ("resnet18", "resnet18-s") if tiny else ("resnet101", "mobilenetv4_conv_small")


def random_subspaces(t_shapes, s_shapes, layers, seed: int = 0) -> list[RelevantSubspace]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for (d, _, _), (k, _, _), layer in zip(t_shapes, s_shapes, layers):
        q, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
        out.append(RelevantSubspace(layer, q, torch.zeros(d), 1.0, torch.ones(d, dtype=torch.float64), k / d))
    return out


class Student:
    """One student of a cell: model, method, optimiser, λ."""

    def __init__(self, method: str, lam: float, make_student, t_shapes, s_shapes, subspaces,
                 dev: torch.device, ours: bool, seed: int):
        torch.manual_seed(seed)
        self.name, self.lam = method, lam
        self.model = make_student().to(dev)
        self.method = build_method(method, t_shapes, s_shapes, subspaces=subspaces).to(dev)
        if ours:
            self.model.to(memory_format=torch.channels_last)
        params = list(self.model.parameters()) + list(self.method.parameters())
        fused = ours and dev.type == "cuda"
        self.opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0, fused=fused or None)
        self.model.train()
        self.method.train()

    @property
    def label(self) -> str:
        return "kd" if self.name == "kd" else f"{self.name} λ={self.lam:g}"


# ---------------------------------------------------------------------------
# (a) the authors' configuration

class AuthorsDataset(torch.utils.data.Dataset):
    """torchvision's ImageFolder, then per image: quantise, paste the label's
    digit, normalise (new mean and std tensors for each image)."""

    def __init__(self, root: Path, size: int, bank: art.ArtifactBank, corner: str):
        from torchvision import datasets
        from torchvision import transforms as T

        self.folder = datasets.ImageFolder(str(root), transform=T.Compose([
            T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor()]))
        self.bank, self.corner = bank, corner
        self.exemplars = [art.exemplar(i, label, bank) for i, (_, label) in enumerate(self.folder.samples)]

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int):
        x, y = self.folder[i]
        x = torch.floor(x * 255 + 1e-4).clamp(0, 255) / 255
        x = art.paste(x.unsqueeze(0), self.bank.images[[self.exemplars[i]]], np.array([True]), self.corner)
        return normalize(x, IMAGENET_MEAN, IMAGENET_STD)[0], y


def authors_run(student: Student, teacher: FrozenTeacher, loader, t_paths, s_paths, dev,
                steps: int, warmup: int) -> float:
    """Train one student the authors' way; images per second over the timed steps."""
    done, images, t0 = 0, 0, None
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                _sync(dev)
                t0 = time.perf_counter()
            x = x.to(dev)
            with torch.no_grad(), FeatureCapture(teacher.model, t_paths) as tcap:
                t_logits = teacher(x)
                t_targets = student.method.teacher_transform(tcap.get()) if t_paths else []
            with FeatureCapture(student.model, s_paths) as scap:
                s_logits = student.model(x)
            kd = kd_loss(s_logits, t_logits, TEMPERATURE)
            layer_terms = (student.method.criterion(student.method.student_transform(scap.get()), t_targets)
                           if t_paths else [])
            loss, terms = total_loss(kd, layer_terms, student.lam)      # reads every term to the host
            check_finite(terms, done)
            student.opt.zero_grad(set_to_none=True)
            loss.backward()
            student.opt.step()
            done += 1
            if done > warmup:
                images += len(x)
            if done == warmup + steps:
                break
    _sync(dev)
    return images / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------
# (b) ours: the cohort step

class SharedTeacherCohort:
    """One teacher forward per batch for every student; hooks registered once;
    loss terms summed on the device and read once (:meth:`finish`)."""

    def __init__(self, students: list[Student], teacher: FrozenTeacher, t_paths, s_paths,
                 dev: torch.device, precision: str):
        self.students, self.teacher, self.dev = students, teacher, dev
        self.t_paths, self.s_paths = t_paths, s_paths
        self.bf16 = precision == "bf16"
        self.tcap = FeatureCapture(teacher.model, t_paths).__enter__()
        self.scaps = [FeatureCapture(s.model, s_paths if s.name != "kd" else []).__enter__() for s in students]
        self.sums = torch.zeros(len(students), device=dev)

    def _autocast(self):
        return torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.bf16)

    def step(self, x: torch.Tensor) -> None:
        with torch.no_grad(), self._autocast():
            t_logits = self.teacher(x).float()
            t_feats = self.tcap.get()
        for k, (s, cap) in enumerate(zip(self.students, self.scaps)):
            with self._autocast():
                if s.name != "kd":
                    with torch.no_grad():
                        t_targets = s.method.teacher_transform(t_feats)
                s_logits = s.model(x)
                loss = kd_loss(s_logits.float(), t_logits, TEMPERATURE)
                if s.name != "kd":
                    terms = s.method.criterion(s.method.student_transform(cap.get()), t_targets)
                    loss = loss + s.lam * torch.stack([t.float() for t in terms]).sum()
            s.opt.zero_grad(set_to_none=True)
            loss.backward()
            s.opt.step()
            self.sums[k] += loss.detach()

    def finish(self) -> None:
        for cap in [self.tcap, *self.scaps]:
            cap.__exit__(None, None, None)
        bad = [s.label for s, v in zip(self.students, self.sums.tolist()) if not math.isfinite(v)]
        if bad:
            print(f"warning: non-finite loss (random teacher, timing only) for {', '.join(bad)}", file=sys.stderr)


def ours_run(cohort: SharedTeacherCohort, world: PaperWorld, dev, steps: int, warmup: int, batch: int) -> float:
    """Data images per second of the cohort over the timed steps."""
    gen = torch.Generator().manual_seed(0)
    done, images, t0 = 0, 0, None
    while done < warmup + steps:
        for x, _y, _d in world.batches("train", batch, shuffle=True, generator=gen, drop_last=True):
            if done == warmup:
                _sync(dev)
                t0 = time.perf_counter()
            cohort.step(x)
            done += 1
            if done > warmup:
                images += len(x)
            if done == warmup + steps:
                break
    _sync(dev)
    rate = images / (time.perf_counter() - t0)
    cohort.finish()
    return rate


def cohort_run(cohort, world: PaperWorld, dev, steps: int, warmup: int, batch: int) -> float:
    """Data images per second of :class:`reprolib.cohort.Cohort` over the timed steps."""
    gen = torch.Generator().manual_seed(0)
    done, images, t0 = 0, 0, None
    while done < warmup + steps:
        for x, y, _d in world.batches("train", batch, shuffle=True, generator=gen, drop_last=True):
            if done == warmup:
                _sync(dev)
                t0 = time.perf_counter()
            cohort.step(x, y)
            done += 1
            if done > warmup:
                images += len(x)
            if done == warmup + steps:
                break
    _sync(dev)
    return images / (time.perf_counter() - t0)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ---------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when there is one)")
    p.add_argument("--tiny", action="store_true", help="tiny images and models (CPU tests)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default 20; tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; tiny 1)")
    p.add_argument("--students", type=int, default=len(COHORT),
                   help=f"students in our cohort (default {len(COHORT)}: the quick grid's cell)")
    p.add_argument("--images-per-class", type=int, default=None, help="generated training JPEGs per class")
    p.add_argument("--workers", type=int, default=None, help="our loader workers (default: cores - 1)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--batch", type=int, default=BATCH, help=f"batch size (default {BATCH}, the protocol's)")
    p.add_argument("--loop", default="cohort", choices=("cohort", "own"),
                   help="ours: reprolib.cohort.Cohort (default) or this script's own minimal loop")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="ours: bf16 autocast or fp32 (auto: bf16 on CUDA, fp32 on the CPU)")
    args = p.parse_args(argv)
    if not 1 <= args.students <= len(COHORT):
        print(f"error: --students {args.students}: give 1 to {len(COHORT)}", file=sys.stderr)
        return 2
    for name in ("steps", "warmup", "images_per_class", "workers", "threads", "batch"):
        v = getattr(args, name)
        if v is not None and v < (0 if name in ("warmup", "workers") else 1):
            print(f"error: --{name.replace('_', '-')} {v} is too small", file=sys.stderr)
            return 2
    try:
        dev = parse_device(args.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (2 if args.tiny else 20)
    warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    per_class = args.images_per_class or (16 if args.tiny else 100)
    size = 32 if args.tiny else 224
    precision = args.precision if args.precision != "auto" else ("bf16" if dev.type == "cuda" else "fp32")
    cohort_spec = COHORT[:args.students]

    with tempfile.TemporaryDirectory(prefix="paper-throughput-") as tmp:
        tmp = Path(tmp)
        os.environ["REPROLIB_CACHE"] = str(tmp / "cache")      # a cold, private decode cache
        t0 = time.perf_counter()
        imagenet = imagenet_standin(tmp / "imagenet", per_class, 2, size=(80, 60),
                                    imagenet_like=not args.tiny)
        mnist = mnist_standin(tmp / "mnist", count=100)
        os.environ["REPROLIB_IMAGENET"], os.environ["REPROLIB_MNIST"] = str(imagenet), str(mnist)
        print(f"data: {5 * per_class} training JPEGs ({'~80×60' if args.tiny else 'ImageNet sizes'}) "
              f"generated in {time.perf_counter() - t0:.1f} s; crops {size} px, batch {args.batch}")
        cfg = make_config("paper", "quick", image_size=size, artifact_size=size // 4,
                          contamination_rate=1.0, pool_per_class=None, test_per_class=None)
        world = PaperWorld(cfg.data, 1, num_workers=args.workers, device=dev)
        t0 = time.perf_counter()
        world._cache("pool", True)
        print(f"ours: decode cache of the pool built in {time.perf_counter() - t0:.1f} s "
              f"with {world.num_workers} loader workers (once per dataset, not timed)")

        teacher_name, student_name = pair(args.tiny)
        weights = fake_weights(tmp / f"{teacher_name}-fake.pth", teacher_name)
        cfgs = [make_config("paper", "quick", method=m, lambda_layer=lam, contamination_rate=1.0,
                            image_size=size, artifact_size=size // 4, pool_per_class=None,
                            test_per_class=None, batch_size=args.batch, teacher=teacher_name,
                            student=student_name, teacher_weights=str(weights))
                for m, lam in COHORT]
        pairs = cfgs[-1].layer_pairs

        def make_student():
            return build_student(student_name, len(PAPER_SUBTASK))
        from reprolib.teacher import build_teacher

        teacher = build_teacher(cfgs[0], progress=False).to(dev)
        t_paths, s_paths = [t for t, _ in pairs], [s for _, s in pairs]
        shape = (3, size, size)
        t_shapes = list(feature_shapes(teacher.model, t_paths, shape).values())
        s_shapes = list(feature_shapes(make_student().to(dev), s_paths, shape).values())
        subspaces = random_subspaces(t_shapes, s_shapes, t_paths)
        print(f"models: teacher {teacher_name} (random init), student {student_name}; "
              f"device {device_name(dev)}")

        # (a) the authors: one run per student, one student per method timed.
        loader = torch.utils.data.DataLoader(
            AuthorsDataset(imagenet / "train", size, world.bank, cfg.data.artifact_corner),
            batch_size=args.batch, shuffle=True, num_workers=0, drop_last=True)
        rates_a = {}
        for method in ["kd", *LAYER_METHODS]:
            s = Student(method, 1.0, make_student, t_shapes, s_shapes, subspaces, dev, ours=False, seed=1)
            rates_a[method] = authors_run(s, teacher, loader, t_paths if method != "kd" else [],
                                          s_paths if method != "kd" else [], dev, steps, warmup)
            del s
        print(f"(a) authors, fp32 NCHW, main-process decoding, teacher per student, {steps} timed steps:")
        for method, r in rates_a.items():
            print(f"    {method:<11} {r:9.1f} img/s per student")
        per_student_a = len(COHORT) / sum(1.0 / rates_a[m] for m, _ in COHORT)
        print(f"    17 runs of the quick grid's cell: {per_student_a:.1f} img/s per student (harmonic mean)")

        # (b) ours: one cohort, one teacher forward per batch.
        loop = args.loop
        if loop == "cohort":
            try:
                from reprolib.cohort import Cohort
                from reprolib.devices import Execution
            except ImportError:
                print("note: reprolib.cohort is not there; timing this script's own shared-teacher loop")
                loop = "own"
        if loop == "cohort":
            del teacher
            cohort = Cohort(cfgs[:args.students], Execution(device=dev, precision=precision), world=world)
            failed = [m for m in cohort.members if m.error]
            if failed:
                for m in failed:
                    print(f"error: cohort member {m.label}: {m.error}", file=sys.stderr)
                return 1
            n_students = len(cohort.active)
            data_rate = cohort_run(cohort, world, dev, steps, warmup, args.batch)
            cohort.close()
        else:
            teacher.to(memory_format=torch.channels_last)
            students = [Student(m, lam, make_student, t_shapes, s_shapes, subspaces, dev, ours=True, seed=1 + i)
                        for i, (m, lam) in enumerate(cohort_spec)]
            n_students = len(students)
            data_rate = ours_run(SharedTeacherCohort(students, teacher, t_paths, s_paths, dev, precision),
                                 world, dev, steps, warmup, args.batch)
        per_student_b = data_rate * n_students
        note = "" if n_students == len(COHORT) else f" (fewer than the grid's {len(COHORT)}: --students)"
        print(f"(b) ours ({'reprolib.cohort.Cohort' if loop == 'cohort' else 'own loop'}), {precision} "
              f"channels_last, decode cache + {world.num_workers} workers, paste on {dev.type}, "
              f"{'fused ' if dev.type == 'cuda' else ''}AdamW, cohort of {n_students} "
              f"students{note}, {steps} timed steps:")
        print(f"    cohort     {data_rate:9.1f} img/s of data, every student trained on each")
        print(f"    per student{per_student_b:9.1f} img/s (the cohort's time shared by {n_students})")
        world.close()
    speedup = per_student_b / per_student_a
    print(f"paper-world speedup {speedup:.2f} (authors {per_student_a:.1f} img/s, "
          f"ours {per_student_b:.1f} img/s per student, device {device_name(dev)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

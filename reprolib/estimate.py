"""How long a sweep will take on this machine, said before it runs.

The estimate comes from a short **measured calibration** on the device, thread
count and precision the sweep will use (a few seconds), not from constants:
:func:`calibrate` builds each distinct (method, student) of the grid with an
untrained teacher of the grid's architecture (weights do not change the cost of
a step), random images of the world's shape and relevant subspaces fitted on
two random batches (never cached), and times

* one student's optimiser step per method (forward with its hooks, KD and layer
  losses, backward, AdamW), at the grid's batch size;
* a student's evaluation forward and the teacher's forward, per image;
* the relevant-subspace fit, per training image;
* one step of the mini teacher's own training, when it is not cached yet.

:func:`estimate_sweep` then prices what is not yet finished in the sweep's
folder, cohort by cohort, as :mod:`reprolib.cohort` runs it (the teacher's
outputs once per cohort when there is no augmentation, else once per step; the
subspace fits of a cohort with SubDistill; ``epochs × steps`` optimiser steps
per student; each validation of both validation sets; the test passes), and
schedules the cohorts on the workers as :func:`reprolib.schedule.plan_tasks`
would. Not priced: loading the data and the process start-up (seconds per task).

The estimate of a small grid is compared with its measured time by
``benchmarks/estimate_check.py``.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import time
from typing import Any, Sequence

from .config import RunConfig, split_sizes, steps_per_epoch
from .devices import Execution, as_execution
from .errors import ReproError

# Images per timed evaluation batch and teacher chunk (cohort.TEACHER_CHUNK, models.EVAL_BATCH).
_PROBE_IMAGES = 256
# Random batches the calibration's subspace fit sees (its cost is per image).
_FIT_BATCHES, _FIT_BATCH = 2, 64


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Measured costs on one device, thread count and precision (seconds)."""

    device: str
    threads: int
    precision: str
    step_seconds: dict[str, float]          # "method/student": one optimiser step of one student
    eval_seconds_per_image: dict[str, float]  # student: its evaluation forward, per image
    teacher_seconds_per_image: float        # the teacher's forward with its hooks, per image
    subspace_seconds_per_image: float | None  # relevant-subspace fit, per training image
    teacher_train_seconds_per_step: float | None  # the mini teacher's own training step (when not cached)
    calibration_seconds: float
    teacher: str = ""                       # the teacher (and its recipe) it measured
    teacher_recipe: str = ""

    def step(self, cfg: RunConfig) -> float:
        return self.step_seconds[f"{cfg.method}/{cfg.student}"]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 6)
            elif isinstance(v, dict):
                d[k] = {a: round(b, 6) for a, b in v.items()}
        return d


def _timed(fn, repeat: int, sync, min_seconds: float = 0.3) -> float:
    """Median wall seconds of one ``fn()`` call, over at least ``repeat`` calls and at
    least ``min_seconds`` of calls, after two warm-up calls (a first call of a fresh
    model is slower: allocator, kernel selection). A step of a small student takes
    milliseconds; timing a few alone gave estimates that differed by 20 %."""
    fn()
    fn()
    sync()
    times: list[float] = []
    total = 0.0
    while len(times) < repeat or total < min_seconds:
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
        total += times[-1]
    times.sort()
    return times[len(times) // 2]


def _input_shape(cfg: RunConfig) -> tuple[int, int, int]:
    return (1 if cfg.data.world == "mini" else 3, cfg.data.image_size, cfg.data.image_size)


def _teacher_module(cfg: RunConfig):
    """The grid's teacher architecture, untrained (a user's teacher file is loaded)."""
    from .models import FrozenTeacher, teacher_architecture
    from .teacher import load_teacher_file

    try:
        model = teacher_architecture(cfg.teacher)
    except ReproError:
        model = load_teacher_file(cfg.teacher)
    return FrozenTeacher(model, cfg.data.subtask_classes)


def calibrate(cfgs: Sequence[RunConfig], execution: Execution | None = None, *, steps: int = 5,
              teacher_training: bool = False) -> Calibration:
    """Measure the costs :func:`estimate_sweep` needs for ``cfgs`` (which share a world
    and teacher) under ``execution``; ``steps`` timed repetitions of each (after one
    warm-ups). Sets the torch thread count to ``execution.threads`` while it runs.
    ``teacher_training``: also time the mini teacher's training step."""
    import torch

    if not cfgs:
        raise ReproError("nothing to calibrate: the grid has no cells")
    execution = as_execution(execution)
    # The calibration's models draw their random initial weights from a forked generator:
    # the caller's random state (and so a sweep's numbers) is what it was.
    cuda = [torch.device(execution.device).index or 0] if execution.device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        return _calibrate(list(cfgs), execution, steps, teacher_training)


def _calibrate(cfgs: list[RunConfig], execution: Execution, steps: int, teacher_training: bool) -> Calibration:
    import torch
    import torch.nn.functional as F

    from . import methods as methods_module
    from .hooks import FeatureCapture, feature_shapes
    from .models import build_student
    from .subspace import fit_relevant_subspaces

    start = time.perf_counter()
    old_threads = torch.get_num_threads()
    threads = execution.threads or old_threads
    torch.set_num_threads(threads)
    dev = torch.device(execution.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16,   # noqa: E731
                                      enabled=execution.precision == "bf16")
    try:
        cfg0 = cfgs[0]
        shape = _input_shape(cfg0)
        gen = torch.Generator().manual_seed(0)
        teacher = _teacher_module(cfg0).to(dev).to(memory_format=torch.channels_last)
        probe = torch.randn(_PROBE_IMAGES, *shape, generator=gen).to(dev, memory_format=torch.channels_last)

        def teacher_forward():
            with torch.no_grad(), autocast():
                teacher(probe)

        teacher_s = _timed(teacher_forward, steps, sync) / _PROBE_IMAGES
        step_s: dict[str, float] = {}
        eval_s: dict[str, float] = {}
        subspace_s = None
        k = len(cfg0.data.subtask_classes)
        seen = {}
        for cfg in cfgs:
            seen.setdefault((cfg.method, cfg.student), cfg)
        for (method, student_name), cfg in seen.items():
            t_paths = [t for t, _ in cfg.layer_pairs]
            s_paths = [s for _, s in cfg.layer_pairs]
            probe_student = build_student(student_name, k)
            t_shapes = list(feature_shapes(teacher.model, t_paths, shape).values()) if t_paths else []
            s_shapes = list(feature_shapes(probe_student, s_paths, shape).values()) if s_paths else []
            cls = methods_module.METHODS.get(method)
            subspaces = None
            if cls is not None and cls.needs_subspaces:
                batches = [torch.randn(_FIT_BATCH, *shape, generator=gen) for _ in range(_FIT_BATCHES)]
                t0 = time.perf_counter()
                subspaces = fit_relevant_subspaces(teacher, t_paths, (b.to(dev) for b in batches),
                                                   [s[0] for s in s_shapes], seed=cfg.seed,
                                                   positions=cfg.subspace_positions, device=dev)
                sync()
                subspace_s = (time.perf_counter() - t0) / (_FIT_BATCHES * _FIT_BATCH)
            student = build_student(student_name, k).to(dev).to(memory_format=torch.channels_last)
            method_mod = methods_module.build_method(method, t_shapes, s_shapes, student_norm=cfg.student_norm,
                                                     vid_variance=cfg.vid_variance, subspaces=subspaces).to(dev)
            uses = method_mod.uses_layers and bool(s_paths)
            x = torch.randn(cfg.batch_size, *shape, generator=gen).to(dev, memory_format=torch.channels_last)
            y = torch.randint(0, k, (cfg.batch_size,), generator=gen).to(dev)
            tcap = FeatureCapture(teacher.model, t_paths if uses else []).open()
            with torch.no_grad(), autocast():
                t_logits = teacher(x).float()
                feats = tcap.get() if uses else []
                targets = [t.float() for t in method_mod.teacher_transform(feats)] if uses else []
            tcap.close()
            scap = FeatureCapture(student, s_paths if uses else []).open()
            params = list(student.parameters()) + list(method_mod.parameters())
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                    **({"fused": True} if dev.type == "cuda" else {}))
            student.train(), method_mod.train()

            def student_step():
                with autocast():
                    s_logits = student(x)
                    raw = scap.get() if uses else []
                    loss = methods_module.kd_loss(s_logits.float(), t_logits, cfg.temperature)
                    if uses:
                        loss = loss + cfg.lambda_layer * sum(method_mod([f.float() for f in raw], targets))
                    if cfg.lambda_task > 0:
                        loss = loss + cfg.lambda_task * F.cross_entropy(s_logits.float(), y)
                scap.features = {}
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            step_s[f"{method}/{student_name}"] = _timed(student_step, steps, sync)
            scap.close()
            if student_name not in eval_s:
                def student_eval():
                    student.eval()
                    with torch.no_grad(), autocast():
                        student(probe)
                    student.train()

                eval_s[student_name] = _timed(student_eval, steps, sync) / _PROBE_IMAGES
        train_step = _teacher_train_step(cfg0, steps) if teacher_training else None
    finally:
        torch.set_num_threads(old_threads)
    return Calibration(device=str(dev), threads=threads, precision=execution.precision, step_seconds=step_s,
                       eval_seconds_per_image=eval_s, teacher_seconds_per_image=teacher_s,
                       subspace_seconds_per_image=subspace_s, teacher_train_seconds_per_step=train_step,
                       calibration_seconds=time.perf_counter() - start, teacher=cfg0.teacher,
                       teacher_recipe=cfg0.teacher_recipe)


def _teacher_train_step(cfg: RunConfig, steps: int) -> float | None:
    """Seconds of one training step of the mini teacher's recipe on the CPU (where it
    trains), at every core's threads; None for other teachers."""
    import torch
    import torch.nn.functional as F

    from .models import mini_teacher
    from .teacher import recipe

    if cfg.teacher != "mini-teacher":
        return None
    tcfg = recipe(cfg.teacher_recipe, cfg.data.image_size)
    torch.set_num_threads(os.cpu_count() or 1)
    gen = torch.Generator().manual_seed(0)
    model = mini_teacher(10).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    x = torch.randn(tcfg.batch_size, 1, tcfg.image_size, tcfg.image_size, generator=gen)
    y = torch.randint(0, 10, (tcfg.batch_size,), generator=gen)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=tcfg.precision == "bf16"):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _timed(step, steps, lambda: None)


# ----------------------------------------------------------------------------- pricing
def teacher_training_seconds(cfg: RunConfig, cal: Calibration) -> float:
    """Estimated seconds to train ``cfg``'s mini teacher (0 when it is not a mini teacher)."""
    from .teacher import recipe

    if cfg.teacher != "mini-teacher" or cal.teacher_train_seconds_per_step is None:
        return 0.0
    tcfg = recipe(cfg.teacher_recipe, cfg.data.image_size)
    n = tcfg.train_subset or 60000
    steps = tcfg.epochs * (n // tcfg.batch_size)
    # The forward over the test set after each epoch: about a third of a training step per image.
    evals = tcfg.epochs * (tcfg.test_subset or 10000) / tcfg.batch_size / 3
    return (steps + evals) * cal.teacher_train_seconds_per_step


def task_seconds(members: Sequence[RunConfig], cal: Calibration) -> float:
    """Estimated seconds of one cohort task (``members`` share data, seed and teacher). Each
    student's step is priced as it runs alone; a stacked cohort (CUDA's default,
    :class:`reprolib.cohort.StudentStack`) is priced at its separate steps, which
    ``benchmarks/stacked_students.py`` compares with the stacked one."""
    if not members:
        return 0.0
    cfg0 = members[0]
    sizes = split_sizes(cfg0.data)
    n_train = sizes["train"] or 0
    n_val = sizes["val"] or 0
    n_test = sizes["test"] or 0
    per_epoch = steps_per_epoch(cfg0) or 0
    steps = per_epoch * cfg0.epochs
    # The teacher: once over the training split (no augmentation), else on every batch.
    if cfg0.data.augment:
        teacher = steps * cfg0.batch_size * cal.teacher_seconds_per_image
    else:
        teacher = n_train * cal.teacher_seconds_per_image
    teacher += n_test * cal.teacher_seconds_per_image          # its test metrics
    fits = 0.0
    if cal.subspace_seconds_per_image is not None and any(c.method == "subdistill" for c in members):
        fits = n_train * cal.subspace_seconds_per_image
    validations = math.ceil(cfg0.epochs / max(1, cfg0.val_every))
    students = 0.0
    for c in members:
        eval_img = cal.eval_seconds_per_image[c.student]
        students += steps * cal.step(c)
        students += validations * 2 * n_val * eval_img + 2 * n_test * eval_img
    return teacher + fits + students


def makespan_seconds(tasks: Sequence[Sequence[RunConfig]], workers: int, cal) -> float:
    """Wall seconds of ``tasks`` on ``workers``: longest first, each to the first free worker.
    ``cal``: a :class:`Calibration`, or a function giving each task's."""
    cal_of = cal if callable(cal) else (lambda _task: cal)
    free = [0.0] * max(1, workers)
    for cost in sorted((task_seconds(t, cal_of(t)) for t in tasks), reverse=True):
        heapq.heappush(free, heapq.heappop(free) + cost)
    return max(free)


def _teacher_id(cfg: RunConfig) -> str:
    return f"{cfg.teacher}/{cfg.teacher_recipe}"


def estimate_sweep(cells: Sequence[RunConfig], out_dir, execution: Execution | None = None, *,
                   workers: int = 1, split: bool = True, calibration: Calibration | None = None,
                   steps: int = 5, counted_teachers: set[str] | None = None,
                   reuse: list[Calibration] | None = None) -> dict[str, Any]:
    """The estimated time of what is not yet finished of ``cells`` in ``out_dir``, on
    ``workers`` (each with ``execution.threads``, default ``cpu_count // workers``).

    Returns ``{"seconds", "runs_to_train", "runs_finished", "cohorts", "teacher_seconds",
    "teachers", "calibration"}``; ``seconds`` includes training every mini teacher of the
    cells that is not cached (each once; a grid may hold several, as chapter 11's map
    does) unless the teacher is in ``counted_teachers`` (another
    grid already counts it; the teachers priced here are added to that set).
    ``calibration``: one measured for these cells (used for every teacher); else each
    teacher's cells are calibrated apart. ``reuse``: a list of earlier calibrations, one of
    which is used when it measured everything a teacher's cells need on this execution; a
    new calibration is appended to it. ``"calibration"`` reports the first teacher's.
    Nothing is trained or written.
    """
    from pathlib import Path

    from .executors import cpu_count
    from .grids import group_cohorts
    from .rundirs import check_run, run_dir_for
    from .schedule import plan_tasks
    from .teacher import recipe, teacher_cached

    if not isinstance(workers, int) or workers < 1:
        raise ReproError(f"workers={workers!r} must be a positive integer")
    execution = as_execution(execution)
    if execution.threads is None:
        execution = dataclasses.replace(execution, threads=max(1, cpu_count() // workers))
    out_dir = Path(out_dir)
    todo = [c for c in cells if check_run(run_dir_for(out_dir, c), c.key()) is not None]
    if not todo:
        return {"seconds": 0.0, "runs_to_train": 0, "runs_finished": len(cells), "cohorts": 0,
                "teacher_seconds": 0.0, "teachers": [], "calibration": None}
    if any(steps_per_epoch(c) is None for c in todo):
        # The paper world's pool is whatever the ImageNet folder holds: not known from the config.
        return {"seconds": None, "runs_to_train": len(todo), "runs_finished": len(cells) - len(todo),
                "cohorts": len(group_cohorts(todo)), "teacher_seconds": None, "teachers": [], "calibration": None,
                "why_none": "the training-set size is not known from the config (the paper world's pool "
                            "is what its image folder holds), so the steps cannot be counted"}
    by_teacher: dict[str, list[RunConfig]] = {}
    for c in todo:
        by_teacher.setdefault(_teacher_id(c), []).append(c)
    counted = counted_teachers if counted_teachers is not None else set()
    cals: dict[str, Calibration] = {}
    teacher_s = 0.0
    for tid, group in by_teacher.items():
        cfg0 = group[0]
        need = cfg0.teacher == "mini-teacher" and not teacher_cached(recipe(cfg0.teacher_recipe, cfg0.data.image_size))
        cal = calibration or next((c for c in (reuse or []) if _covers(c, group, execution, need)), None)
        if cal is None:
            cal = calibrate(group, execution, steps=steps, teacher_training=need)
            if reuse is not None:
                reuse.append(cal)
        cals[tid] = cal
        if need and tid not in counted:
            teacher_s += teacher_training_seconds(cfg0, cal)
        counted.add(tid)
    cohorts = group_cohorts(todo)
    tasks = plan_tasks(cohorts, workers if split else 1)
    seconds = teacher_s + makespan_seconds(tasks, workers, lambda task: cals[_teacher_id(task[0])])
    first = next(iter(cals.values()))
    return {"seconds": round(seconds, 1), "runs_to_train": len(todo), "runs_finished": len(cells) - len(todo),
            "cohorts": len(cohorts), "tasks": len(tasks), "workers": workers,
            "teacher_seconds": round(teacher_s, 1), "teachers": [t.split("/", 1)[1] for t in by_teacher],
            "calibration": {**first.to_dict(), "calibration_seconds": sum(c.calibration_seconds for c in
                                                                          {id(c): c for c in cals.values()}.values())}}


def _covers(cal: Calibration, cfgs: Sequence[RunConfig], execution: Execution, teacher: bool) -> bool:
    """Whether ``cal`` measured everything ``cfgs`` need, under ``execution``."""
    cfg0 = cfgs[0]
    return ((cal.device, cal.threads, cal.precision) == (execution.device, execution.threads, execution.precision)
            and cal.teacher == cfg0.teacher and (not teacher or cal.teacher_recipe == cfg0.teacher_recipe)
            and all(f"{c.method}/{c.student}" in cal.step_seconds and c.student in cal.eval_seconds_per_image
                    for c in cfgs)
            and (cal.subspace_seconds_per_image is not None or all(c.method != "subdistill" for c in cfgs))
            and (cal.teacher_train_seconds_per_step is not None or not teacher))


def describe(estimate: dict[str, Any]) -> str:
    """One line for a person: what is left and how long it should take."""
    from .pages import duration

    if not estimate["runs_to_train"]:
        return f"nothing to train: all {estimate['runs_finished']} runs are finished"
    if estimate["seconds"] is None:
        return f"no time estimate for {estimate['runs_to_train']} runs: {estimate['why_none']}"
    cal = estimate["calibration"]
    text = (f"estimated {duration(estimate['seconds'])} for {estimate['runs_to_train']} runs in "
            f"{estimate['cohorts']} cohorts on {estimate['workers']} worker(s) ({cal['device']}, "
            f"{cal['threads']} thread(s) each, {cal['precision']})")
    if estimate["runs_finished"]:
        text += f"; {estimate['runs_finished']} finished runs are reused"
    if estimate["teacher_seconds"]:
        text += f"; includes training the teacher, about {duration(estimate['teacher_seconds'])}"
    return text + f" (calibrated in {cal['calibration_seconds']:.1f} s)"


def estimate_book(preset: str, execution: Execution | None = None, *, world: str = "mini",
                  workers: int = 2, steps: int = 5) -> dict[str, Any]:
    """The estimated training time of the book's sweeps at ``preset`` (chapter 4's main
    grid, its side grids and the contrast world, chapter 8's aligned-layers grid and
    chapter 10's biased-teacher grid with its teacher, chapter 11's map with its 3-epoch
    teacher, each in its folder of the cache; every teacher's training once), on
    ``workers`` as chapter 4 runs them: ``{"grids": {name: estimate}, "seconds"}``. The analyses of chapters 2, 5-7 (subspaces, t-SNE, LRP) and
    chapter 9's cost measurement are not priced. A calibration is keyed by method and
    student, not by the layer pairs: chapter 8's runs with 1 or 2 pairs are priced at the
    4-pair step (an upper bound, a few per cent: chapter 9 measures the difference)."""
    from . import precondition
    from .grids import AUTHORS_LAMBDA, conditions_grid, expand_grid, get_grid, grid_for
    from .io import cache_dir

    main = get_grid(preset)
    out = cache_dir("sweeps") / f"{world}-{preset}"
    grids = [(main, out)]
    if world == "mini":
        grids += [(grid_for(name, preset), out) for name in ("calibration", "kd-ablation", "aligned-layers")]
        contrast = precondition.contrast_grid(preset if preset == "smoke" else "quick")
        grids.append((contrast, out.parent / f"{out.name}-contrast"))
        grids.append((grid_for("biased-teacher", preset), out.parent / f"{out.name}-biased-teacher"))
        # Chapter 11's λ is the one the main sweep selects most often, known only after it: priced at 100.
        grids.append((conditions_grid(preset, AUTHORS_LAMBDA), out))
    found: dict[str, Any] = {}
    calibrations: list[Calibration] = []    # grids with the same models share one calibration
    teachers: set[str] = set()              # each teacher's training is priced once, by the first grid needing it
    counted: set[tuple[str, str]] = set()   # a cell that two grids share in one folder is priced once
    for grid, folder in grids:
        cells = [c for c in expand_grid(grid, world) if (str(folder), c.key()) not in counted]
        counted |= {(str(folder), c.key()) for c in cells}
        found[grid.name] = estimate_sweep(cells, folder, execution, workers=workers, steps=steps,
                                          counted_teachers=teachers, reuse=calibrations)
    known = [e["seconds"] for e in found.values() if e["seconds"] is not None]
    return {"grids": found, "seconds": round(sum(known), 1) if len(known) == len(found) else None}

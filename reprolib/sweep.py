"""Sweeps: a grid of runs, resumable, serial or parallel, and λ selection.

A sweep expands a grid (:mod:`reprolib.grids`) into
:class:`~reprolib.config.RunConfig` cells and trains each one into its own
folder ``DIR/runs/<cfg.key()>/`` (:mod:`reprolib.rundirs`). The folder name is
the config's hash (which includes :data:`reprolib.CODE_VERSION`), so

* a finished run is never trained again, whichever grid asks for it;
* a changed grid or code version simply asks for other folders; old ones are
  kept and counted in the plan, never silently reused;
* a sweep killed at any moment resumes where it stopped: a run is *finished*
  only when its ``metrics.json`` (written last, atomically) parses, has the
  required keys and names the folder's key, and its ``student.pt`` is there.
  Anything less is reported and redone from an empty folder.

By default the unfinished cells of one (data config, seed) cell are trained
as one cohort (:mod:`reprolib.cohort`: one teacher forward per batch for all
of them; bitwise the same students as separate runs on the CPU);
with more workers than a round of cohorts fills, a cohort is split into parts
where that shortens the sweep (:mod:`reprolib.schedule`; each part repeats the
teacher's forward, the numbers stay the same). ``cohort=False``
(``--no-cohort``) trains one run per task. The backends
(:mod:`reprolib.executors`: serial, process pool, Ray) give the same files,
because every run is a pure function of its config and its
:class:`~reprolib.devices.Execution` (device, threads, precision, compile).
Each task gets ``threads = max(1, cpu_count // workers)`` torch threads unless
the execution names a number; keep that number equal when comparing backends.

After the runs, ``DIR/results-<grid>.csv`` (one row per run) and
``DIR/summary-<grid>.csv`` (λ chosen per method and ρ by :func:`select_lambda`, under
both selections of D3) are written atomically (:mod:`reprolib.results`); so are
``DIR/results.csv`` and ``DIR/summary.csv`` when the grid is the folder's main grid
(the first one run into it, recorded in ``sweep.json``), so a side grid run into the
same folder (the calibration, the K/d ablation) leaves them alone.

This module keeps the planning, the lock, :func:`run_sweep` and the command
line; it re-exports nothing (import a grid, a table or a run folder's rule from
the module that owns it).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .config import WORLDS, RunConfig
from .devices import DEVICE_HELP, PRECISIONS, Execution, as_execution
from .errors import ReproError
from .executors import RunFn, cpu_count, progress_bar, run_ray, run_serial
from .grids import SWEEP_PRESETS, SweepGrid, expand_grid, get_grid, group_cohorts
from . import io, procs, rundirs
from .io import cache_dir, read_json, write_json
from .results import collect_results, write_results
from .rundirs import check_run, clear_run_dir, run_dir_for
from .schedule import plan_tasks

if TYPE_CHECKING:  # pandas is imported lazily: `reprolib --help` stays fast
    import pandas as pd

# Only what this module defines: the grids, tables, run folders and executors it
# uses are imported from the modules that own them (reprolib.grids, .results,
# .rundirs, .executors).
__all__ = ["SweepPlan", "main", "plan_summary", "plan_sweep", "prepare_teachers", "register_cli", "run_sweep",
           "variant_name", "with_variant"]


@dataclass
class SweepPlan:
    cells: list[RunConfig]
    reused: list[RunConfig]
    todo: list[RunConfig]
    redo: dict[str, str]          # key -> why the folder is redone
    foreign_finished: int         # finished folders not in this grid
    foreign_other_code: int       # ... of which made by another code version
    foreign_unfinished: int

    def describe(self, out_dir: Path, grid: SweepGrid, world: str,
                 grid_cells: int | None = None) -> str:
        n = len(self.cells)
        size = (f"the first {n} of {grid_cells} cells" if grid_cells not in (None, n)
                else f"{n} cells")
        lines = [f"sweep {grid.name!r} ({world} world, run preset {grid.run_preset!r}): "
                 f"{size} ({grid.describe()})"]
        if grid.note:
            lines.append(f"  note: {grid.note}")
        lines.append(f"  {len(self.reused)} reused (finished earlier), "
                     f"{len(self.todo)} to compute"
                     + (f" ({len(self.redo)} of them redone: incomplete folders)"
                        if self.redo else ""))
        if self.foreign_finished:
            code = (f" ({self.foreign_other_code} made by another code version)"
                    if self.foreign_other_code else "")
            lines.append(f"  {self.foreign_finished} finished runs in {out_dir} belong to "
                         f"another grid or code version{code}; they are kept but not used")
        if self.foreign_unfinished:
            lines.append(f"  {self.foreign_unfinished} unfinished run folders in {out_dir} "
                         "belong to another grid; they are left alone")
        return "\n".join(lines)


def plan_sweep(cells: Sequence[RunConfig], out_dir: str | os.PathLike) -> SweepPlan:
    """Sort the cells into reused and to-compute; count other folders in ``out_dir``."""
    from . import CODE_VERSION

    out_dir = Path(out_dir)
    reused, todo, redo = [], [], {}
    keys = set()
    for cfg in cells:
        key = cfg.key()
        keys.add(key)
        run_dir = run_dir_for(out_dir, cfg)
        why = check_run(run_dir, key)
        if why is None:
            reused.append(cfg)
        else:
            todo.append(cfg)
            if run_dir.exists():
                redo[key] = why
    foreign_finished = foreign_other_code = foreign_unfinished = 0
    runs_root = out_dir / "runs"
    if runs_root.is_dir():
        for run_dir in sorted(runs_root.iterdir()):
            if not run_dir.is_dir() or run_dir.name in keys:
                continue
            if check_run(run_dir) is None:
                foreign_finished += 1
                with contextlib.suppress(Exception):
                    if read_json(run_dir / "metrics.json")["code_version"] != CODE_VERSION:
                        foreign_other_code += 1
            else:
                foreign_unfinished += 1
    return SweepPlan(list(cells), reused, todo, redo,
                     foreign_finished, foreign_other_code, foreign_unfinished)


def _log(message: str) -> None:
    # stdout is the CLI's JSON result; the plan and notices go to stderr.
    print(message, file=sys.stderr, flush=True)


def _label(cfg: RunConfig) -> str:
    lam = "" if cfg.method == "kd" else f", lambda={cfg.lambda_layer:g}"
    pool = f", pool={cfg.data.pool_per_class}" if cfg.data.pool_per_class is not None else ""
    return f"{cfg.method}, rho={cfg.data.contamination_rate:g}, seed={cfg.seed}{lam}{pool}"



# One sweep per folder, no process of an earlier one alive, stale temp files removed.
_sweep_lock = procs.sweep_lock




# ---------------------------------------------------------------------------
def run_sweep(grid_name_or_grid: str | SweepGrid, out_dir: str | os.PathLike, *,
              execution: Execution | None = None, world: str = "mini", backend: str = "serial",
              workers: int = 1, run_fn: RunFn | None = None, progress: bool = True,
              ray_address: str | None = None, limit: int | None = None, cohort: bool = True,
              allow_mixed: bool = False, split: bool = True,
              variant: str | None = None) -> "pd.DataFrame":
    """Run every unfinished cell of a grid into ``out_dir``; return the grid's results table.

    ``cohort=True`` (default) trains the unfinished cells of each (data config,
    seed) cell as one task with :func:`reprolib.cohort.train_cohort`;
    ``cohort=False`` one run per task. ``split=True`` (default) lets
    :func:`reprolib.schedule.plan_tasks` split cohorts into parts where workers
    would otherwise wait; ``split=False`` keeps every cohort whole. ``execution``
    (:class:`reprolib.devices.Execution`; default: the CPU, fp32, not compiled) is
    how every run computes, not part of the config (fp32 is the reference); its
    ``threads=None`` becomes ``max(1, cpu_count // workers)``. ``run_fn`` (default:
    :func:`reprolib.cohort.train_run`) is called per run as ``run_fn(cfg, run_dir,
    execution=..., progress=False)`` and must write ``student.pt`` and then, last,
    ``metrics.json``; with ``cohort=True`` the runs of a cohort are called in
    order inside one task. It must be picklable (a module-level function) for
    ``workers > 1`` or the Ray backend. ``limit`` keeps only the first N cells
    (benchmarks, trials).
    Failed runs are reported after the others finish, with a :class:`ReproError`;
    rerunning the same command retries only them. Finished runs computed with
    another thread count, device or precision are not mixed with new ones unless
    ``allow_mixed`` (:func:`reprolib.rundirs.check_numerics`). ``variant`` names a world
    variant (:data:`reprolib.config.VARIANTS`) for every cell, instead of the grid's own
    (default: the world's main variant).
    """
    grid = with_variant(get_grid(grid_name_or_grid), variant, world)
    if world not in WORLDS:
        raise ReproError(f"unknown world {world!r}; choose one of {list(WORLDS)}")
    if backend not in ("serial", "ray"):
        raise ReproError(f"unknown backend {backend!r}; choose serial or ray")
    if not isinstance(workers, int) or workers < 1:
        raise ReproError(f"workers={workers!r} must be a positive integer")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ReproError(f"limit={limit!r} must be a positive integer")
    execution = as_execution(execution)
    if execution.threads is None:
        execution = dataclasses.replace(execution, threads=max(1, cpu_count() // workers))
    out_dir = Path(out_dir)

    cells = expand_grid(grid, world)
    grid_cells = len(cells)
    if limit is not None:
        cells = cells[:limit]
    io.check_output_dir(out_dir)
    with _sweep_lock(out_dir):
        plan = plan_sweep(cells, out_dir)
        _log(plan.describe(out_dir, grid, world, grid_cells))
        if plan.todo:
            rundirs.check_numerics([run_dir_for(out_dir, c) for c in plan.reused], execution, allow_mixed)
        # The folder's main grid (results.csv, summary.csv) is the first one run into it;
        # every grid also writes results-<grid>.csv and summary-<grid>.csv.
        try:
            previous = read_json(out_dir / "sweep.json")
        except (OSError, ValueError):   # none yet, or unreadable: this grid is the main one
            previous = {}
        main_grid = previous.get("main_grid", grid.name) if isinstance(previous, dict) else grid.name
        write_json(out_dir / "sweep.json", {
            "grid": dataclasses.asdict(grid), "main_grid": main_grid, "world": world, "limit": limit,
            "world_variant": variant_name(grid, world),
            "keys": [c.key() for c in cells], "backend": backend, "workers": workers,
            "threads_per_run": execution.threads, "device": execution.device, "cohort": cohort,
            "precision": execution.precision, "compile": execution.compile, "stacked": execution.stacks,
            "numerics": execution.numerics(),
        })
        for cfg in plan.todo:
            key = cfg.key()
            if key in plan.redo:
                _log(f"redoing run {key} ({_label(cfg)}): {plan.redo[key]}")
            clear_run_dir(run_dir_for(out_dir, cfg))
        # A cohort per task, split into parts where more workers than a round of cohorts
        # fills would otherwise wait (reprolib.schedule; the numbers do not change).
        if not cohort:
            groups = [[cfg] for cfg in plan.todo]
        else:
            groups = plan_tasks(group_cohorts(plan.todo), workers if split else 1)
        tasks = [[(cfg.to_dict(), str(run_dir_for(out_dir, cfg))) for cfg in group]
                 for group in groups]
        estimated = None
        if progress and plan.todo and run_fn is None:
            estimated = _estimate(plan.todo, out_dir, execution, workers, split)
        if run_fn is None and ray_address is None:
            prepare_teachers(plan.todo, progress)
        with progress_bar(len(plan.todo), progress, estimated) as bar:
            if backend == "serial":
                statuses = run_serial(tasks, execution, run_fn, workers, bar, cohort=cohort)
            else:
                statuses = run_ray(tasks, execution, run_fn, workers, bar, ray_address, cohort=cohort)

        failures = {s["key"]: s["error"] for s in statuses if not s["ok"]}
        for cfg in plan.todo:   # a run_fn that returned without finishing is a failure too
            key = cfg.key()
            if key not in failures:
                why = check_run(run_dir_for(out_dir, cfg), key)
                if why is not None:
                    failures[key] = f"the run returned but its folder is unfinished: {why}"

        results = collect_results(cells, out_dir)
        write_results(results, out_dir, grid.name, main=grid.name == main_grid)
        results.attrs["sweep"] = {
            "out": str(out_dir), "grid": grid.name, "world": world, "cells": len(cells),
            "world_variant": variant_name(grid, world),
            "reused": len(plan.reused), "computed": len(plan.todo) - len(failures),
            "redone": len(plan.redo), "failed": len(failures),
            "foreign_finished": plan.foreign_finished,
            "tasks": len(tasks), "cohort": cohort, "split": split,
        }
    if failures:
        by_key = {c.key(): c for c in cells}
        lines = [f"  {k} ({_label(by_key[k])}): {err}" for k, err in failures.items()]
        raise ReproError(f"{len(failures)} of {len(cells)} runs failed:\n" + "\n".join(lines)
                         + "\nfix the cause and rerun the same command; finished runs "
                         "are reused")
    return results


def prepare_teachers(todo: list[RunConfig], progress: bool = True) -> list[str]:
    """Train here, once, every mini teacher that ``todo`` needs and the cache lacks;
    return the recipes trained.

    Without this, each worker that starts a cohort with an uncached teacher trains it
    itself: two workers trained the same ``10-epoch-biased`` teacher side by side, each
    on one thread, about twice as long as one training on both cores. Here it trains
    on this process's threads (torch's default: every core), as ``reprolib teacher``
    and notebook 1 do; the workers then load it from the cache. Only for local workers:
    a Ray cluster's machines may not share this cache, and train what they lack."""
    import torch

    from .teacher import recipe, teacher_cached, train_mini_teacher

    trained = []
    for name, size in sorted({(c.teacher_recipe, c.data.image_size) for c in todo
                              if c.teacher == "mini-teacher" and c.data.world == "mini"}):
        tcfg = recipe(name, size)
        if teacher_cached(tcfg):
            continue
        _log(f"training the mini teacher {name!r} once, before the runs, on {torch.get_num_threads()} thread(s)")
        train_mini_teacher(tcfg, progress=progress)
        trained.append(name)
    return trained


def _estimate(todo: list[RunConfig], out_dir: Path, execution: Execution, workers: int, split: bool) -> float | None:
    """The estimated seconds of ``todo`` (said on stderr), or None where it cannot be made."""
    from .estimate import describe, estimate_sweep

    try:
        est = estimate_sweep(todo, out_dir, execution, workers=workers, split=split)
    except Exception as e:  # noqa: BLE001 - an estimate is a courtesy, never a reason to stop
        _log(f"no time estimate ({type(e).__name__}: {e})")
        return None
    _log(describe(est))
    return est["seconds"]


def with_variant(grid: SweepGrid, variant: str | None, world: str = "mini") -> SweepGrid:
    """``grid`` with every cell in world variant ``variant`` (checked; None: unchanged)."""
    if variant is None:
        return grid
    from .config import get_variant

    get_variant(world, variant)   # an unknown name fails here, before any work
    return dataclasses.replace(grid, world_variant=variant)


def variant_name(grid: SweepGrid, world: str = "mini") -> str | None:
    """The world variant a grid's cells are in (its own, else the world's main one)."""
    from .config import main_variant

    return grid.world_variant or main_variant(world)


# ---------------------------------------------------------------------------
# Command line
def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "sweep", help="run a grid of distillation runs (resumable) and select lambda",
        description="Run every cell of a sweep grid into DIR/runs/<config key>/, reusing "
                    "finished runs, then write DIR/results-<grid>.csv and DIR/summary-<grid>.csv (and "
                    "DIR/results.csv, DIR/summary.csv for the folder's first grid).")
    _add_arguments(p)
    p.set_defaults(func=_cli_sweep)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", default="mini", choices=WORLDS)
    p.add_argument("--preset", default="quick", choices=list(SWEEP_PRESETS),
                   help="sweep grid (default: quick)")
    p.add_argument("--variant", default=None,
                   help="world variant of every cell (mini world: the precondition ladder's rungs; "
                        "default: the book's main world)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="sweep folder (default: <cache>/sweeps/<world>-<preset>)")
    p.add_argument("--backend", default="serial", choices=("serial", "ray"))
    p.add_argument("--workers", type=int, default=None,
                   help="concurrent runs (default: the CPU count; measured on 2 cores, two "
                        "single-thread runs at once beat one run on two threads 2.25x)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: cpu count // workers)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="connect to this Ray cluster (else RAY_ADDRESS, else a private "
                        "local instance)")
    p.add_argument("--device", default="auto", help=f"{DEVICE_HELP} (default auto)")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N cells of the grid")
    p.add_argument("--no-cohort", action="store_true",
                   help="one run per task instead of one cohort (all methods and lambdas of "
                        "a data config and seed, one teacher forward per batch) per task")
    p.add_argument("--no-split", action="store_true",
                   help="keep every cohort whole (default: split cohorts into parts, each with its "
                        "own teacher forward, where workers would otherwise wait)")
    p.add_argument("--precision", default="fp32", choices=PRECISIONS,
                   help="fp32 (default; the reference numbers) or bf16 autocast (CUDA)")
    p.add_argument("--compile", action="store_true", help="torch.compile the students")
    p.add_argument("--stack", action=argparse.BooleanOptionalAction, default=None,
                   help="run a cohort's students of one architecture as one batched forward, each "
                        "with its own parameters and optimiser (default: on CUDA when not compiling; "
                        "never on the CPU, whose separate steps give the reference numbers)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-mixed", action="store_true",
                   help="reuse finished runs made with another --threads/--device/--precision "
                        "(numbers differ)")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (runs, axes, optimiser steps, split sizes, models, K/d) and the "
                        "estimated time of what is not finished yet (a few seconds of measured "
                        "calibration on this device) as one JSON object and exit; trains nothing")
    p.add_argument("--no-estimate", action="store_true",
                   help="with --dry-run: skip the calibration and the time estimate")


def plan_summary(grid: str | SweepGrid, world: str = "mini", limit: int | None = None,
                 variant: str | None = None) -> dict:
    """What a sweep would run, read before running it (``sweep --dry-run``).

    ``optimizer_steps_per_run``, ``train_images``, ``val_images`` and
    ``test_images`` are single numbers when every cell agrees, else the sorted
    list of their values (``null`` where the config alone does not say, as for
    the paper world's pool). ``k_over_d``: the largest ratio of the student's to
    the teacher's channels over the distilled layers, over the grid's students.
    """
    from .config import get_variant, optimizer_steps, split_sizes

    grid = with_variant(get_grid(grid), variant, world)
    cells = expand_grid(grid, world)
    if limit is not None:
        cells = cells[:limit]

    def one(values):
        values = sorted({v for v in values if v is not None})
        if not values:
            return None
        return values[0] if len(values) == 1 else values

    sizes = [split_sizes(c.data) for c in cells]
    ratios = {}
    for c in cells:
        pair = (c.teacher, c.student, c.layer_pairs, c.data.image_size)
        if pair not in ratios:
            ratios[pair] = _k_over_d(c)
    students = sorted({c.student for c in cells})
    teachers = sorted({c.teacher for c in cells})
    var = get_variant(world, grid.world_variant)
    recipes = sorted({c.teacher_recipe for c in cells if c.teacher == "mini-teacher"})
    teacher_recipe = None
    if recipes:
        from .teacher import recipe

        teacher_recipe = {name: {k: v for k, v in dataclasses.asdict(recipe(name)).items()
                                 if k in ("epochs", "batch_size", "lr", "augment", "precision", "train_subset")}
                          for name in recipes}
    return {
        "grid": grid.name, "world": world, "run_preset": grid.run_preset,
        "world_variant": var.name if var else None,
        "world_variant_description": var.description if var else None,
        "teacher_recipe": teacher_recipe,
        "runs": len(cells), "cohorts": len(group_cohorts(cells)),
        "methods": list(grid.methods), "rhos": list(grid.rhos), "seeds": list(grid.seeds),
        "lambdas": list(grid.lambdas),
        "optimizer_steps_per_run": one(optimizer_steps(c) for c in cells),
        "train_images": one(s["train"] for s in sizes),
        "val_images": one(s["val"] for s in sizes),
        "test_images": one(s["test"] for s in sizes),
        "student": students[0] if len(students) == 1 else students,
        "teacher": teachers[0] if len(teachers) == 1 else teachers,
        "k_over_d": max((r for r in ratios.values() if r is not None), default=None),
        "note": grid.note,
    }


def _k_over_d(cfg: RunConfig) -> float | None:
    """max over layer pairs of (student channels / teacher channels), from the
    models' architectures (no weights loaded)."""
    if not cfg.layer_pairs:
        return None
    from .hooks import feature_shapes
    from .models import build_student, teacher_architecture

    k = len(cfg.data.subtask_classes)
    try:
        teacher = teacher_architecture(cfg.teacher)
    except ReproError:
        return None        # a user's teacher file: its shapes are known once it is loaded
    channels = 1 if cfg.data.world == "mini" else 3
    shape = (channels, cfg.data.image_size, cfg.data.image_size)
    t_shapes = feature_shapes(teacher, [t for t, _ in cfg.layer_pairs], shape)
    s_shapes = feature_shapes(build_student(cfg.student, k), [s for _, s in cfg.layer_pairs], shape)
    return max(s_shapes[s][0] / t_shapes[t][0] for t, s in cfg.layer_pairs)


def _cli_sweep(args: argparse.Namespace) -> int:
    execution = Execution(device=args.device, threads=args.threads, precision=args.precision,
                          compile=args.compile, stack=args.stack)
    if getattr(args, "dry_run", False):   # writes nothing, not even the default folder
        from .io import cache_root

        out = Path(args.out) if args.out else cache_root() / "sweeps" / f"{args.world}-{args.preset}"
        summary = plan_summary(args.preset, args.world, args.limit, args.variant)
        if not args.no_estimate:
            from .estimate import describe, estimate_sweep

            grid = with_variant(get_grid(args.preset), args.variant, args.world)
            cells = expand_grid(grid, args.world)[:args.limit]
            workers = cpu_count() if args.workers is None else args.workers
            summary["estimate"] = estimate_sweep(cells, out, execution, workers=workers,
                                                 split=not args.no_split)
            _log(describe(summary["estimate"]))
        io.print_json(summary)
        return 0
    out = args.out or cache_dir("sweeps", f"{args.world}-{args.preset}")
    results = run_sweep(args.preset, out, execution=execution, world=args.world, backend=args.backend,
                        workers=cpu_count() if args.workers is None else args.workers,
                        run_fn=getattr(args, "run_fn", None), progress=not args.no_progress,
                        ray_address=args.ray_address, limit=args.limit, cohort=not args.no_cohort,
                        allow_mixed=args.allow_mixed, split=not args.no_split, variant=args.variant)
    report = dict(results.attrs.get("sweep", {}))
    report.update(results=str(Path(out) / "results.csv"), summary=str(Path(out) / "summary.csv"))
    io.print_json(report)
    return 0


def main(argv: Sequence[str] | None = None, run_fn: RunFn | None = None) -> int:
    """``sweep`` on its own: ``main(["--preset", "smoke", "--out", DIR])``.

    A leading ``"sweep"`` is accepted. ``run_fn`` replaces the trainer (tests).
    Returns the exit code: 0, or 2 after printing a :class:`ReproError`.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sweep"]:
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="reprolib sweep")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    args.run_fn = run_fn
    try:
        return _cli_sweep(args)
    except ReproError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Sweeps: a grid of runs, resumable, serial or parallel, and λ selection.

A sweep expands a grid (methods × ρ × seeds × λ [× pool size]) into
:class:`~reprolib.config.RunConfig` cells and trains each one into its own
folder ``DIR/runs/<cfg.key()>/``. The folder name is the config's hash (which
includes :data:`reprolib.CODE_VERSION`), so

* a finished run is never trained again, whichever grid asks for it;
* a changed grid or code version simply asks for other folders; old ones are
  kept and counted in the plan, never silently reused;
* a sweep killed at any moment resumes where it stopped: a run is *finished*
  only when its ``metrics.json`` (written last, atomically) parses, has the
  required keys and names the folder's key, and its ``student.pt`` is there.
  Anything less is reported and redone from an empty folder.

Backends (all give the same files, because every run is a pure function of its
config and its thread count):

``serial``
    ``workers=1``: an in-process loop. ``workers>1``: a
    :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` context.
    Ray is never imported on this path.
``ray``
    One Ray core task per run (``num_cpus=1``; a fractional ``num_gpus`` when
    the device is CUDA). ``ray.init(address=...)`` only when an address is given
    (``--ray-address`` or ``RAY_ADDRESS``); otherwise a private in-process local
    instance with ``num_cpus=workers`` and no dashboard, whose workers get the
    driver's ``sys.path``. A remote cluster must see ``DIR`` on a shared file
    system and have ``reprolib`` (and any custom ``run_fn``) importable.

Each run gets ``threads = max(1, cpu_count // workers)`` torch threads unless
told otherwise; keep that number equal when comparing backends.

After the runs, ``DIR/results.csv`` (one row per run) and ``DIR/summary.csv``
(λ chosen per method and ρ by :func:`select_lambda`, under both selections of
D3) are written atomically.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from .config import METHODS, WORLDS, RunConfig, make_config
from .errors import ReproError
from . import io, procs
from .io import cache_dir, read_json, write_json, write_text

if TYPE_CHECKING:  # pandas is imported lazily: `reprolib --help` stays fast
    import pandas as pd

RunFn = Callable[..., dict]

# D6: the paper's λ grid.
PAPER_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
# The contamination rates the authors' code registers (§1.4); P1 reports {0, .5, 1}.
PAPER_RHOS = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)

# What a finished run's metrics.json must hold (the trainer's contract).
REQUIRED_METRICS = (
    "test_accuracy", "val_accuracy", "best_epoch",
    "test_accuracy_with_digit", "test_accuracy_digit_differs", "predicts_digit",
    "teacher_test_accuracy", "nonoracle_val_accuracy", "nonoracle_test_accuracy",
    "curves", "seconds", "config", "config_key", "code_version",
)

# Columns of results.csv, in order: the cell, its metrics, where it lives.
CELL_COLUMNS = ("method", "rho", "seed", "lambda_layer", "pool_per_class")
METRIC_COLUMNS = (
    "val_accuracy", "test_accuracy", "test_accuracy_with_digit",
    "test_accuracy_digit_differs", "predicts_digit",
    "nonoracle_val_accuracy", "nonoracle_test_accuracy",
    "teacher_test_accuracy", "best_epoch", "seconds",
)
# The split accuracies of the non-oracle checkpoint, where the trainer gives them.
OPTIONAL_METRIC_COLUMNS = (
    "nonoracle_test_accuracy_with_digit", "nonoracle_test_accuracy_digit_differs",
    "nonoracle_predicts_digit",
)
RESULT_COLUMNS = (CELL_COLUMNS + METRIC_COLUMNS + ("run_dir", "world", "preset", "config_key")
                  + OPTIONAL_METRIC_COLUMNS)

# The per-seed quantities that select_lambda averages (besides the test accuracy).
SPLIT_METRICS = ("test_accuracy_with_digit", "test_accuracy_digit_differs", "predicts_digit")

# D3: which metric chooses λ and which one is reported, per selection rule.
SELECTIONS = {
    "oracle": ("val_accuracy", "test_accuracy"),
    "nonoracle": ("nonoracle_val_accuracy", "nonoracle_test_accuracy"),
}


# ---------------------------------------------------------------------------
# Grids as data
@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep and the run preset every cell uses.

    ``pool_sizes=None`` keeps the preset's pool size. ``overrides`` are extra
    :func:`~reprolib.config.make_config` fields applied to every cell
    (e.g. ``{"val_digits": "correlated"}``).
    """

    name: str
    run_preset: str
    methods: tuple[str, ...]
    rhos: tuple[float, ...]
    seeds: tuple[int, ...]
    lambdas: tuple[float, ...]
    pool_sizes: tuple[int, ...] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def __post_init__(self) -> None:
        for axis in ("methods", "rhos", "seeds", "lambdas"):
            if not getattr(self, axis):
                raise ReproError(f"sweep grid {self.name!r} has an empty {axis} axis; "
                                 "give at least one value")
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ReproError(f"sweep grid {self.name!r}: unknown method(s) {bad}; "
                             f"valid methods: {', '.join(METHODS)}")
        if self.pool_sizes is not None and not self.pool_sizes:
            raise ReproError(f"sweep grid {self.name!r} has an empty pool_sizes axis; "
                             "give sizes or None to keep the preset's")

    def describe(self) -> str:
        parts = [f"{len(self.methods)} methods", f"{len(self.rhos)} rho",
                 f"{len(self.seeds)} seeds", f"{len(self.lambdas)} lambdas (kd: none)"]
        if self.pool_sizes is not None:
            parts.insert(2, f"{len(self.pool_sizes)} pool sizes")
        return " x ".join(parts)


SWEEP_PRESETS: dict[str, SweepGrid] = {
    # Seconds: for tests and CI. Its numbers mean nothing.
    "smoke": SweepGrid(
        name="smoke", run_preset="smoke", methods=("kd", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1,), lambdas=(1.0,),
        note="tests and CI only; its numbers mean nothing"),
    # The book's default: a small λ grid (D6 allows it if the preset says so).
    "quick": SweepGrid(
        name="quick", run_preset="quick", methods=METHODS,
        rhos=(0.0, 0.5, 1.0), seeds=(1, 2, 3), lambdas=(1.0, 10.0),
        note="small lambda grid {1, 10} instead of D6's {1e-3..1e3}; rho as reported in P1"),
    # D6 in full: the paper's recipe.
    "full": SweepGrid(
        name="full", run_preset="full", methods=METHODS,
        rhos=PAPER_RHOS, seeds=(1, 2, 3), lambdas=PAPER_LAMBDAS,
        note="D6: full lambda grid, all registered contamination rates"),
    # mini-world.md "Calibration, honestly": the effect as a function of pool size.
    # The book's version: λ fixed at 1 (no selection) and pools up to 200, so that
    # it costs about as much as the quick sweep; "calibration-full" is the whole curve.
    "calibration": SweepGrid(
        name="calibration", run_preset="quick", methods=("kd", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1, 2, 3), lambdas=(1.0,),
        pool_sizes=(25, 50, 100, 200),
        note="pool size per class vs the effect; lambda fixed at 1; pools 25-200"),
    "calibration-full": SweepGrid(
        name="calibration-full", run_preset="quick", methods=("kd", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1, 2, 3), lambdas=(1.0, 10.0),
        pool_sizes=(25, 50, 100, 200, 400),
        note="pool size per class vs the effect; lambda selected from {1, 10}; pools 25-400"),
}


def get_grid(grid: str | SweepGrid) -> SweepGrid:
    if isinstance(grid, SweepGrid):
        return grid
    if grid not in SWEEP_PRESETS:
        raise ReproError(f"unknown sweep preset {grid!r}; choose one of {list(SWEEP_PRESETS)}")
    return SWEEP_PRESETS[grid]


def expand_grid(grid: str | SweepGrid, world: str = "mini") -> list[RunConfig]:
    """The grid's cells as validated configs, in a fixed order, without duplicates.

    Order: seed, pool size, ρ, method, λ (outermost first), so that a partial
    sweep has whole seeds done. ``kd`` has no λ: it gets one cell per
    (ρ, seed, pool) with ``lambda_layer=0.0``.
    """
    grid = get_grid(grid)
    pools: Sequence[int | None] = grid.pool_sizes if grid.pool_sizes is not None else (None,)
    cells: list[RunConfig] = []
    seen: set[str] = set()
    for seed in grid.seeds:
        for pool in pools:
            for rho in grid.rhos:
                for method in grid.methods:
                    lambdas = (0.0,) if method == "kd" else grid.lambdas
                    for lam in lambdas:
                        overrides = dict(grid.overrides)
                        overrides.update(method=method, contamination_rate=float(rho),
                                         seed=int(seed), lambda_layer=float(lam))
                        if pool is not None:
                            overrides["pool_per_class"] = int(pool)
                        cfg = make_config(world, grid.run_preset, **overrides)
                        key = cfg.key()
                        if key not in seen:
                            seen.add(key)
                            cells.append(cfg)
    return cells


# ---------------------------------------------------------------------------
# Run folders
def run_dir_for(out_dir: str | os.PathLike, cfg: RunConfig) -> Path:
    return Path(out_dir) / "runs" / cfg.key()


def check_run(run_dir: str | os.PathLike, key: str | None = None) -> str | None:
    """``None`` if the folder holds a finished run, else why not (a short phrase).

    ``key`` defaults to the folder's name; the metrics must name the same key.
    """
    run_dir = Path(run_dir)
    key = key or run_dir.name
    metrics_path = run_dir / "metrics.json"
    if not run_dir.is_dir():
        return "the folder is missing"
    if not metrics_path.exists():
        return "metrics.json is missing"
    try:
        metrics = read_json(metrics_path)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "metrics.json is truncated"
    except OSError as exc:
        return f"metrics.json cannot be read ({exc.strerror})"
    if isinstance(metrics, dict) and metrics.get("config_key", key) != key:
        return f"metrics.json names config key {metrics['config_key']!r}, not {key!r}"
    # Every key with its type; student.pt matches its sha256 or loads (harden).
    return io.check_run_files(run_dir, metrics, REQUIRED_METRICS)


def _clear(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    for leftover in run_dir.iterdir():   # a file written while we removed the folder
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


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


# ---------------------------------------------------------------------------
# Executing one run (top level: picklable for spawn and for Ray)
def _execute(cfg_dict: dict, run_dir: str, device: str, threads: int,
             run_fn: RunFn | None) -> dict:
    """Train one cell into ``run_dir`` (already empty). Returns a small status dict."""
    if run_fn is None:
        from .train import train_run as run_fn  # lazy: torch is imported only here
    cfg = RunConfig.from_dict(cfg_dict)
    start = time.perf_counter()
    if cfg.key() != Path(run_dir).name:   # the folder would never count as finished
        return {"key": Path(run_dir).name, "ok": False, "wall": 0.0,
                "error": f"the config does not survive a JSON round trip (key {cfg.key()})"}
    try:
        write_json(Path(run_dir) / "config.json", cfg_dict)
        run_fn(cfg, run_dir, device=device, progress=False, threads=threads)
    except Exception as exc:  # reported by the driver; the folder stays unfinished
        return {"key": cfg.key(), "ok": False, "error": f"{type(exc).__name__}: {exc}",
                "wall": time.perf_counter() - start}
    return {"key": cfg.key(), "ok": True, "error": None, "wall": time.perf_counter() - start}


def cpu_count() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ReproError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return device


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="runs", unit="run", disable=not enabled or total == 0)


def _run_serial(jobs, device, threads, run_fn, workers, bar) -> list[dict]:
    statuses = []
    if workers == 1:
        for cfg_dict, run_dir in jobs:
            statuses.append(_execute(cfg_dict, run_dir, device, threads, run_fn))
            bar.update(1)
        return statuses
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=procs.worker_init,
                               initargs=(os.getpid(), str(Path(jobs[0][1]).parent.parent) if jobs else None))
    try:
        futures = {pool.submit(_execute, cfg_dict, run_dir, device, threads, run_fn): run_dir
                   for cfg_dict, run_dir in jobs}
        for fut in as_completed(futures):
            try:
                statuses.append(fut.result())
            except Exception as exc:   # e.g. a worker killed by the OOM killer
                statuses.append({"key": Path(futures[fut]).name, "ok": False, "wall": 0.0,
                                 "error": f"{type(exc).__name__}: {exc}"})
            bar.update(1)
    except BaseException:
        # Ctrl-C or a dead worker: start nothing new; finished runs are kept.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return statuses


@contextlib.contextmanager
def _ray_session(workers: int, address: str | None, device: str, attempts: int = 3):
    import ray

    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or None
        kwargs: dict[str, Any] = dict(log_to_driver=False, configure_logging=False)
        if address:
            kwargs["address"] = address
        else:
            num_gpus = 0
            if device.startswith("cuda"):
                import torch

                num_gpus = torch.cuda.device_count()
            # A private, in-process local instance (Ray 2.60 turns token
            # authentication on for it); never a head node for others to join.
            kwargs.update(procs.ray_local_kwargs(workers, num_gpus))   # loopback only
        for attempt in range(1, attempts + 1):
            try:
                if address:
                    ray.init(**kwargs)
                else:
                    with _driver_import_path(), procs.ray_loopback():
                        ray.init(**kwargs)
                break
            except Exception as exc:
                # On a loaded machine the raylet gives its agents a hard-coded
                # 15 s to start and then aborts (ray-project/ray#65983); a
                # second try usually finds the imports warm.
                with contextlib.suppress(Exception):
                    ray.shutdown()
                if address or attempt == attempts:
                    where = f"the cluster at {address}" if address else "a local Ray instance"
                    raise ReproError(
                        f"could not start {where} after {attempt} attempt(s): {exc}; "
                        f"see the raylet log under {kwargs.get('_temp_dir', '/tmp/ray')}"
                        "/session_latest/logs, or use "
                        "--backend serial") from exc
                print(f"Ray did not start ({type(exc).__name__}); trying again "
                      f"({attempt + 1}/{attempts})", file=sys.stderr, flush=True)
        started = True
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
            procs.ray_cleanup()   # no Ray process of ours outlives the sweep (harden)


@contextlib.contextmanager
def _driver_import_path():
    """Let a local instance's workers import what the driver imports.

    Workers inherit the raylet's environment, which inherits ours while
    ``ray.init`` starts it: put the driver's ``sys.path`` in ``PYTHONPATH``
    (reprolib from a source checkout, a test's runner module...).
    """
    before = os.environ.get("PYTHONPATH")
    entries = [os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)]
    if before:
        entries.append(before)
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(entries))
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before


def _run_ray(jobs, device, threads, run_fn, workers, bar, address) -> list[dict]:
    with _ray_session(workers, address, device) as ray:
        options: dict[str, Any] = {}
        if device.startswith("cuda"):
            gpus = ray.cluster_resources().get("GPU", 0.0)
            if gpus <= 0:
                raise ReproError("device cuda was asked for, but the Ray cluster has no GPU; "
                                 "use --device cpu or a cluster with GPUs")
            # Share the GPUs among the concurrent runs.
            options["num_gpus"] = min(1.0, gpus / workers)

        driver = os.getpid()

        @ray.remote(num_cpus=1)
        def ray_task(cfg_dict, run_dir, device, threads, run_fn):
            procs.die_with_parent(driver)   # a killed driver ends its tasks
            with procs.holding_folder(Path(run_dir).parent.parent):
                return _execute(cfg_dict, run_dir, device, threads, run_fn)

        task = ray_task.options(**options) if options else ray_task
        fn_ref = ray.put(run_fn)
        refs = {task.remote(cfg_dict, run_dir, device, threads, fn_ref): run_dir
                for cfg_dict, run_dir in jobs}
        pending = list(refs)
        statuses = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    statuses.append(ray.get(ref))
                except Exception as exc:   # the worker died (OOM, node lost...)
                    statuses.append({"key": Path(refs[ref]).name, "ok": False, "wall": 0.0,
                                     "error": f"{type(exc).__name__}: {exc}"})
            bar.update(len(done))
        return statuses


# One sweep per folder, no process of an earlier one alive, stale temp files removed.
_sweep_lock = procs.sweep_lock


# ---------------------------------------------------------------------------
def run_sweep(grid_name_or_grid: str | SweepGrid, out_dir: str | os.PathLike, *,
              world: str = "mini", backend: str = "serial", workers: int = 1,
              device: str = "cpu", run_fn: RunFn | None = None, progress: bool = True,
              threads: int | None = None, ray_address: str | None = None,
              limit: int | None = None, allow_mixed: bool = False) -> "pd.DataFrame":
    """Run every unfinished cell of a grid into ``out_dir``; return results.csv's table.

    ``run_fn`` (default :func:`reprolib.train.train_run`) is called as
    ``run_fn(cfg, run_dir, device=..., progress=False, threads=...)`` and must
    write ``student.pt`` and then, last, ``metrics.json``. It must be picklable
    (a module-level function) for ``workers > 1`` or the Ray backend.
    ``limit`` keeps only the first N cells (benchmarks, trials).
    Finished runs computed with another thread count or device are not mixed
    with new ones unless ``allow_mixed`` (:func:`reprolib.io.check_numerics`).
    Failed runs are reported after the others finish, with a :class:`ReproError`;
    rerunning the same command retries only them.
    """
    grid = get_grid(grid_name_or_grid)
    if world not in WORLDS:
        raise ReproError(f"unknown world {world!r}; choose one of {list(WORLDS)}")
    if backend not in ("serial", "ray"):
        raise ReproError(f"unknown backend {backend!r}; choose serial or ray")
    if not isinstance(workers, int) or workers < 1:
        raise ReproError(f"workers={workers!r} must be a positive integer")
    io.check_threads(threads)   # None or a positive integer (not a bool)
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ReproError(f"limit={limit!r} must be a positive integer")
    device = resolve_device(device)
    threads = threads or max(1, cpu_count() // workers)
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
            io.check_numerics([run_dir_for(out_dir, c) for c in plan.reused], threads, device,
                              allow_mixed)
        write_json(out_dir / "sweep.json", {
            "grid": dataclasses.asdict(grid), "world": world, "limit": limit,
            "keys": [c.key() for c in cells], "backend": backend, "workers": workers,
            "threads_per_run": threads, "device": device,
            "numerics": io.numerics(threads, device),
        })
        jobs = []
        for cfg in plan.todo:
            key = cfg.key()
            run_dir = run_dir_for(out_dir, cfg)
            if key in plan.redo:
                _log(f"redoing run {key} ({_label(cfg)}): {plan.redo[key]}")
            _clear(run_dir)
            jobs.append((cfg.to_dict(), str(run_dir)))

        with _progress_bar(len(jobs), progress) as bar:
            if backend == "serial":
                statuses = _run_serial(jobs, device, threads, run_fn, workers, bar)
            else:
                statuses = _run_ray(jobs, device, threads, run_fn, workers, bar, ray_address)

        failures = {s["key"]: s["error"] for s in statuses if not s["ok"]}
        for cfg in plan.todo:   # a run_fn that returned without finishing is a failure too
            key = cfg.key()
            if key not in failures:
                why = check_run(run_dir_for(out_dir, cfg), key)
                if why is not None:
                    failures[key] = f"the run returned but its folder is unfinished: {why}"

        results = collect_results(cells, out_dir)
        write_results(results, out_dir)
        results.attrs["sweep"] = {
            "out": str(out_dir), "grid": grid.name, "world": world, "cells": len(cells),
            "reused": len(plan.reused), "computed": len(plan.todo) - len(failures),
            "redone": len(plan.redo), "failed": len(failures),
            "foreign_finished": plan.foreign_finished,
        }
    if failures:
        by_key = {c.key(): c for c in cells}
        lines = [f"  {k} ({_label(by_key[k])}): {err}" for k, err in failures.items()]
        raise ReproError(f"{len(failures)} of {len(cells)} runs failed:\n" + "\n".join(lines)
                         + "\nfix the cause and rerun the same command; finished runs "
                         "are reused")
    return results


def collect_results(cells: Iterable[RunConfig], out_dir: str | os.PathLike) -> "pd.DataFrame":
    """One row per finished cell, in grid order (columns :data:`RESULT_COLUMNS`)."""
    import pandas as pd

    out_dir = Path(out_dir)
    rows = []
    for cfg in cells:
        key = cfg.key()
        run_dir = run_dir_for(out_dir, cfg)
        if check_run(run_dir, key) is not None:
            continue
        m = read_json(run_dir / "metrics.json")
        rows.append({
            "method": cfg.method,
            "rho": float(cfg.data.contamination_rate),
            "seed": int(cfg.seed),
            "lambda_layer": math.nan if cfg.method == "kd" else float(cfg.lambda_layer),
            "pool_per_class": cfg.data.pool_per_class,
            **{k: m.get(k) for k in METRIC_COLUMNS},
            "run_dir": str(Path("runs") / key),
            "world": cfg.data.world,
            "preset": cfg.preset,
            "config_key": key,
            **{k: m.get(k) for k in OPTIONAL_METRIC_COLUMNS},
        })
    return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))


def write_results(results: "pd.DataFrame", out_dir: str | os.PathLike) -> None:
    """results.csv and summary.csv (both selections), atomically."""
    import pandas as pd

    out_dir = Path(out_dir)
    summary = pd.concat([select_lambda(results, s) for s in SELECTIONS], ignore_index=True)
    io.write_texts({out_dir / "results.csv": results.to_csv(index=False),   # both or neither
                    out_dir / "summary.csv": summary.to_csv(index=False)})


def load_results(out_dir: str | os.PathLike) -> "pd.DataFrame":
    import pandas as pd

    path = Path(out_dir) / "results.csv"
    if not path.exists():
        raise ReproError(f"no results.csv in {out_dir}; run `reprolib sweep --out {out_dir}` first")
    return pd.read_csv(path)


# ---------------------------------------------------------------------------
# λ selection (D6, D3)
def select_lambda(results: "pd.DataFrame", selection: str = "oracle") -> "pd.DataFrame":
    """Choose λ per (method, ρ[, pool]) by the mean validation accuracy over seeds.

    D6: λ maximises the mean over seeds of the validation accuracy; ties go to
    the smaller λ. D3: ``selection="oracle"`` uses ``val_accuracy`` (random
    digits on val, the paper's rule) and reports ``test_accuracy``;
    ``"nonoracle"`` uses ``nonoracle_val_accuracy`` (correlated digits on val)
    and reports ``nonoracle_test_accuracy``. For the split accuracies
    (:data:`SPLIT_METRICS`) the non-oracle selection uses ``nonoracle_<name>``
    columns when the table has them, else NaN (the oracle checkpoint's split
    accuracies would mislabel it). Means and stds (ddof=1; 0 for one seed) are
    over seeds. ``kd`` has no λ (NaN), so it has one candidate. Pure.
    """
    import numpy as np
    import pandas as pd

    if selection not in SELECTIONS:
        raise ReproError(f"unknown selection {selection!r}; choose one of {list(SELECTIONS)}")
    val_col, test_col = SELECTIONS[selection]
    missing = [c for c in ("method", "rho", "seed", "lambda_layer", val_col, test_col)
               if c not in results.columns]
    if missing:
        raise ReproError(f"the results table lacks column(s) {missing} needed for "
                         f"{selection} selection")
    group_cols = ["method", "rho"]
    if "pool_per_class" in results.columns:
        group_cols.append("pool_per_class")
    split_cols = {}
    for name in SPLIT_METRICS:
        col = name if selection == "oracle" else f"nonoracle_{name}"
        split_cols[name] = col if col in results.columns else None

    out_columns = (["selection", *group_cols, "lambda_layer", "n_seeds", "n_lambdas",
                    "val_accuracy_mean", "test_accuracy_mean", "test_accuracy_std"]
                   + [f"{n}_{s}" for n in SPLIT_METRICS for s in ("mean", "std")])
    rows = []
    table = results.copy()
    for group, df in table.groupby(group_cols, dropna=False, sort=True):
        group = group if isinstance(group, tuple) else (group,)
        lam_key = df["lambda_layer"].astype(float).fillna(-np.inf)   # kd: one NaN "λ"
        by_lam = df.assign(_lam=lam_key).groupby("_lam", sort=True)
        val_means = by_lam[val_col].mean()
        valid = val_means.dropna()
        if valid.empty:
            continue
        best = valid.max()
        # Ascending λ order: the first within rounding of the best is the smallest.
        chosen = next(lam for lam, v in valid.items() if v >= best - 1e-12)
        sel = df[lam_key == chosen]
        row = dict(zip(group_cols, group))
        row.update(selection=selection,
                   lambda_layer=math.nan if chosen == -np.inf else float(chosen),
                   n_seeds=int(sel["seed"].nunique()), n_lambdas=int(len(val_means)),
                   val_accuracy_mean=float(sel[val_col].mean()))
        row["test_accuracy_mean"], row["test_accuracy_std"] = _mean_std(sel[test_col])
        for name, col in split_cols.items():
            row[f"{name}_mean"], row[f"{name}_std"] = (
                _mean_std(sel[col]) if col is not None else (math.nan, math.nan))
        rows.append(row)
    return pd.DataFrame(rows, columns=out_columns)


def _mean_std(values: "pd.Series") -> tuple[float, float]:
    values = values.astype(float)
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.count() > 1 else 0.0
    return mean, std


# ---------------------------------------------------------------------------
# Command line
def register_cli(subparsers) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "sweep", help="run a grid of distillation runs (resumable) and select lambda",
        description="Run every cell of a sweep grid into DIR/runs/<config key>/, reusing "
                    "finished runs, then write DIR/results.csv and DIR/summary.csv.")
    _add_arguments(p)
    p.set_defaults(func=_cli_sweep)
    return p


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--world", default="mini", choices=WORLDS)
    p.add_argument("--preset", default="quick", choices=list(SWEEP_PRESETS),
                   help="sweep grid (default: quick)")
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
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N cells of the grid")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--allow-mixed", action="store_true",
                   help="reuse finished runs made with another --threads/--device (numbers differ)")


def _cli_sweep(args: argparse.Namespace) -> int:
    out = args.out or cache_dir("sweeps", f"{args.world}-{args.preset}")
    results = run_sweep(args.preset, out, world=args.world, backend=args.backend,
                        workers=cpu_count() if args.workers is None else args.workers, device=args.device,
                        run_fn=getattr(args, "run_fn", None), progress=not args.no_progress,
                        threads=args.threads, ray_address=args.ray_address, limit=args.limit,
                        allow_mixed=args.allow_mixed)
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

"""Where a sweep's runs execute: in-process, a process pool, or Ray.

A *task* is a list of runs ``[(config dict, run folder), ...]``: one cohort
(every student of a (data config, seed) cell, trained by
:func:`reprolib.cohort.train_cohort` with one teacher forward per batch) or a
part of one (:mod:`reprolib.schedule` splits cohorts where workers would
otherwise wait), or one run when the sweep is asked for ``cohort=False``. Each backend runs a task
as one unit and gets back one status per run:

``serial``
    ``workers=1``: an in-process loop. ``workers>1``: a
    :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` context.
    Ray is never imported on this path.
``ray``
    One Ray core task per task (``num_cpus=1``; a fractional ``num_gpus`` when
    the device is CUDA, so that several cohorts share a GPU).

Each takes one :class:`~reprolib.devices.Execution` (device, threads per task,
precision, compile) for every task.

Every function that crosses a process boundary is top level (picklable).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .config import RunConfig
from .devices import Execution
from .errors import ReproError
from . import procs
from .io import write_json

RunFn = Callable[..., dict]
Task = list  # [(cfg_dict, run_dir), ...]


def cpu_count() -> int:
    with contextlib.suppress(AttributeError):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _status(key: str, ok: bool, wall: float, error: str | None = None) -> dict:
    return {"key": key, "ok": ok, "error": error, "wall": wall}


def execute_task(task: Task, execution: Execution, run_fn: RunFn | None,
                 cohort: bool = True) -> list[dict]:
    """Train every run of ``task`` into its (already empty) folder; one status per run.

    ``run_fn=None`` and ``cohort=True``: one :func:`~reprolib.cohort.train_cohort`
    call for the whole task. ``run_fn=None`` and ``cohort=False``:
    :func:`~reprolib.cohort.train_run` per run. A custom ``run_fn`` (tests,
    stand-ins) is called per run, in order, inside the same task, as
    ``run_fn(cfg, run_dir, execution=execution, progress=False)``.
    """
    start = time.perf_counter()
    statuses: dict[str, dict] = {}
    members = []
    for cfg_dict, run_dir in task:
        cfg = RunConfig.from_dict(cfg_dict)
        if cfg.key() != Path(run_dir).name:   # the folder would never count as finished
            statuses[Path(run_dir).name] = _status(
                Path(run_dir).name, False, 0.0,
                f"the config does not survive a JSON round trip (key {cfg.key()})")
            continue
        write_json(Path(run_dir) / "config.json", cfg_dict)
        members.append((cfg, run_dir))
    if run_fn is None and cohort and members:
        from .cohort import CohortError, train_cohort   # lazy: torch is imported only here

        try:
            train_cohort([c for c, _ in members], [d for _, d in members], execution=execution,
                         progress=False)
            errors = {}
        except CohortError as exc:
            errors = exc.errors
        except Exception as exc:  # noqa: BLE001 - the whole cohort failed (setup, OOM...)
            errors = {i: f"{type(exc).__name__}: {exc}" for i in range(len(members))}
        wall = time.perf_counter() - start
        for i, (cfg, _) in enumerate(members):
            statuses[cfg.key()] = _status(cfg.key(), i not in errors, wall, errors.get(i))
    else:
        if run_fn is None:
            from .cohort import train_run as run_fn
        for cfg, run_dir in members:
            t0 = time.perf_counter()
            try:
                run_fn(cfg, run_dir, execution=execution, progress=False)
            except Exception as exc:  # reported by the driver; the folder stays unfinished
                statuses[cfg.key()] = _status(cfg.key(), False, time.perf_counter() - t0,
                                              f"{type(exc).__name__}: {exc}")
                continue
            statuses[cfg.key()] = _status(cfg.key(), True, time.perf_counter() - t0)
    return list(statuses.values())


def _dead_task(task: Task, exc: BaseException) -> list[dict]:
    """Statuses for a task whose worker died (OOM killer, node lost...)."""
    return [_status(Path(run_dir).name, False, 0.0, f"{type(exc).__name__}: {exc}")
            for _, run_dir in task]


def progress_bar(total: int, enabled: bool, estimate_seconds: float | None = None):
    """The sweep's bar, counting runs. With ``estimate_seconds`` (:mod:`reprolib.estimate`)
    it shows the estimated time left until the first task finishes; then tqdm's own
    rate takes over (a cohort finishes many runs at once, so before that tqdm has no
    rate)."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc="runs", unit="run", disable=not enabled or total == 0)
    if estimate_seconds and not bar.disable:
        from .pages import duration

        update = bar.update

        def first_update(n=1):
            bar.set_postfix_str("", refresh=False)
            bar.update = update            # tqdm's own rate and time left from here on
            return update(n)

        bar.set_postfix_str(f"estimated {duration(estimate_seconds)} left")
        bar.update = first_update
    return bar


def run_serial(tasks: list[Task], execution: Execution, run_fn, workers, bar, **opts) -> list[dict]:
    statuses: list[dict] = []
    if workers == 1:
        for task in tasks:
            statuses.extend(execute_task(task, execution, run_fn, **opts))
            bar.update(len(task))
        return statuses
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=procs.worker_init,
                               initargs=(os.getpid(), str(Path(tasks[0][0][1]).parent.parent) if tasks else None))
    try:
        futures = {pool.submit(execute_task, task, execution, run_fn, **opts): i
                   for i, task in enumerate(tasks)}
        for fut in as_completed(futures):
            task = tasks[futures[fut]]
            try:
                statuses.extend(fut.result())
            except Exception as exc:   # e.g. a worker killed by the OOM killer
                statuses.extend(_dead_task(task, exc))
            bar.update(len(task))
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




def run_ray(tasks: list[Task], execution: Execution, run_fn, workers, bar, address, **opts) -> list[dict]:
    with _ray_session(workers, address, execution.device) as ray:
        options: dict[str, Any] = {}
        if execution.device.startswith("cuda"):
            gpus = ray.cluster_resources().get("GPU", 0.0)
            if gpus <= 0:
                raise ReproError("device cuda was asked for, but the Ray cluster has no GPU; "
                                 "use --device cpu or a cluster with GPUs")
            # Share the GPUs among the concurrent tasks (a cohort's students fit together).
            options["num_gpus"] = min(1.0, gpus / workers)

        driver = os.getpid()

        @ray.remote(num_cpus=1)
        def ray_task(task, execution, run_fn, opts):
            procs.die_with_parent(driver)   # a killed driver ends its tasks
            with procs.holding_folder(Path(task[0][1]).parent.parent):
                return execute_task(task, execution, run_fn, **opts)

        remote = ray_task.options(**options) if options else ray_task
        fn_ref = ray.put(run_fn)
        refs = {remote.remote(task, execution, fn_ref, opts): i for i, task in enumerate(tasks)}
        pending = list(refs)
        statuses: list[dict] = []
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                task = tasks[refs[ref]]
                try:
                    statuses.extend(ray.get(ref))
                except Exception as exc:   # the worker died (OOM, node lost...)
                    statuses.extend(_dead_task(task, exc))
                bar.update(len(task))
        return statuses

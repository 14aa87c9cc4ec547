"""What deeper alignment costs: step time and peak memory of each layer method at 1, 2, 4 and 8 layer pairs.

Each layer method (AT, VID, VkD, SubDistill) is built as training builds it
(:class:`reprolib.cohort.Cohort`, a cohort of one) with 1 (the deepest pair), 2
(the two deepest), 4 (every stage's output: the book's pairs) and 8 layer pairs,
beside output-only KD (:data:`reprolib.config.MINI_PAIR_SETS`). The mini pair has one residual block
per stage, so "every residual block" is 4 pairs; the 8 pairs add each block's
first convolution (``layerN.0.conv1``, before its batch norm) to the 4 block
outputs.

* **Step time** (:func:`time_steps`): every case takes the same pre-drawn
  batches, the cases are timed round-robin over several rounds (process CPU
  time on the CPU, so the machine's other load does not count; wall time on
  CUDA), so the ratios to KD are measured in one run under the same load. Each
  round gives one ratio per case; the report keeps their median and range.
* **Peak memory of a training step** (:func:`peak_memory`): on CUDA
  ``torch.cuda.max_memory_allocated`` (reset per case); on the CPU the peak
  resident set during three steps over the resident set before them (the peak
  reset through ``/proc/self/clear_refs``), in a fresh process per case and
  repeat, so no case inherits another's allocations.

``benchmarks/alignment_cost.py`` prints the table; chapter 9 of the book draws
it (:func:`reprolib.figures.alignment_cost`) and states what it shows by the
rule of :func:`reprolib.verdicts.finding_alignment_cost`.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from .config import LAYER_METHODS, MINI_PAIR_SETS
from .errors import ReproError

PAIR_COUNTS = tuple(MINI_PAIR_SETS)


def cases() -> list[tuple[str, int]]:
    """(method, pairs) of every case: KD (0 pairs) first, then each layer method at each count."""
    return [("kd", 0)] + [(m, n) for m in LAYER_METHODS for n in PAIR_COUNTS]


def cost_config(method: str, pairs: int, preset: str = "quick", world: str = "mini",
                teacher_recipe: str | None = None):
    """The run config of one case: ρ = 1, seed 1, λ = 1 (the cost does not depend on λ)."""
    from .config import make_config

    if world != "mini":
        raise ReproError(f"the alignment-cost cases are defined on the mini pair's layer names; world {world!r} "
                         "has other layers: use world='mini'")
    extra = {"teacher_recipe": teacher_recipe} if teacher_recipe else {}
    if method == "kd":
        return make_config(world, preset, method="kd", contamination_rate=1.0, seed=1, lambda_layer=0.0, **extra)
    if pairs not in MINI_PAIR_SETS:
        raise ReproError(f"no pair set of {pairs} layer pairs; choose one of {list(PAIR_COUNTS)}")
    return make_config(world, preset, method=method, contamination_rate=1.0, seed=1, lambda_layer=1.0,
                       layer_pairs=MINI_PAIR_SETS[pairs], **extra)


def _first_batches(cohort, n: int) -> list:
    """The first ``n`` (input, label) batches of ``cohort``'s loader, drawn once so that every
    timed or measured step sees the same data."""
    batches = []
    for x, y, *_ in cohort._batches():
        batches.append((x, y))
        if len(batches) == n:
            break
    return batches


def time_cohorts(cohorts: dict, steps: int, rounds: int) -> dict:
    """Seconds per training step of each cohort of ``cohorts`` (any keys), one value per round:
    the same ``steps`` pre-drawn batches for all, two warm-up steps each, then ``rounds``
    rounds round-robin, so that the ratios are measured under the same load. CPU time of
    this process on the CPU (the shared machine's load does not count); wall time on CUDA.
    Closes the cohorts."""
    import torch

    if steps < 1 or rounds < 1:
        raise ReproError(f"steps and rounds must be positive integers (got {steps}, {rounds})")
    some = next(iter(cohorts.values()))
    batches = _first_batches(some, steps)
    for c in cohorts.values():      # warm-up: allocator, oneDNN primitives
        for m in c.members:
            m.student.train(), m.method.train()
        for x, y in batches[:2]:
            c.step(x, y)
    cuda = some.dev.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    clock = time.perf_counter if cuda else time.process_time
    times: dict = {k: [] for k in cohorts}
    for _ in range(rounds):
        for k, c in cohorts.items():
            sync()
            t0 = clock()
            for x, y in batches:
                c.step(x, y)
            sync()
            times[k].append((clock() - t0) / len(batches))
    for c in cohorts.values():
        c.close()
    return times


def median_times(times: dict) -> dict:
    """The median of each key's per-round times (:func:`time_cohorts`)."""
    return {k: statistics.median(v) for k, v in times.items()}


def time_steps(preset: str = "quick", steps: int = 5, rounds: int = 3, device: str = "cpu",
               teacher_recipe: str | None = None) -> dict[tuple[str, int], list[float]]:
    """Seconds per training step of every case (:func:`cases`), one value per round."""
    from .cohort import Cohort
    from .devices import Execution

    execution = Execution(device=device)
    cohorts = {c: Cohort([cost_config(*c, preset=preset, teacher_recipe=teacher_recipe)], execution) for c in cases()}
    return time_cohorts(cohorts, steps, rounds)


def peak_memory_one(method: str, pairs: int, preset: str = "quick", device: str = "cpu",
                    teacher_recipe: str | None = None) -> int:
    """Bytes three training steps of one case add to the peak, in this process (see the module doc)."""
    import gc

    import torch

    from .cohort import Cohort
    from .devices import Execution

    cohort = Cohort([cost_config(method, pairs, preset=preset, teacher_recipe=teacher_recipe)], Execution(device=device))
    batches = _first_batches(cohort, 3)
    for m in cohort.members:
        m.student.train(), m.method.train()
    if cohort.dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(cohort.dev)
        base = torch.cuda.memory_allocated(cohort.dev)
        for x, y in batches:
            cohort.step(x, y)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated(cohort.dev) - base
    gc.collect()
    # Linux: writing 5 to clear_refs resets the peak resident set (VmHWM) to the current one, so
    # the peak below is that of the steps alone, not of the set-up (subspace fit, data) before them.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base, peak_key = _status_kib("VmRSS"), "VmHWM"
    except OSError:   # not Linux, or not allowed: the process's peak so far (may hide the steps' peak)
        base, peak_key = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, None
    for x, y in batches:
        cohort.step(x, y)
    peak = _status_kib(peak_key) if peak_key else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return 1024 * max(0, peak - base)


def _status_kib(key: str) -> int:
    """A ``kB`` field of /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise OSError(f"no {key} in /proc/self/status")


def peak_memory(preset: str = "quick", device: str = "cpu", teacher_recipe: str | None = None,
                threads: int = 1, repeats: int = 1, counts: tuple[int, ...] | None = None, parallel: int = 2,
                isolate: bool = True,
                progress: Callable[[str], None] | None = None) -> dict[tuple[str, int], list[int]]:
    """Bytes of each case's step peak (:func:`peak_memory_one`), ``repeats`` values per case
    (KD and each layer method at ``counts``, default every count). On the CPU each value
    comes from a fresh process (``python -m reprolib.cost``), ``parallel`` of them at a time
    (each measures its own resident set, so they do not disturb one another's figure);
    ``isolate=False`` measures in this process instead, one case after another (seconds
    instead of minutes, for the smoke preset: memory that an earlier case freed but the
    allocator kept makes later cases look smaller)."""
    from concurrent.futures import ThreadPoolExecutor

    if repeats < 1 or parallel < 1:
        raise ReproError(f"repeats and parallel must be positive integers (got {repeats}, {parallel})")
    wanted = [c for c in cases() if c[1] == 0 or counts is None or c[1] in counts]
    if device.startswith("cuda") or not isolate:
        return {(m, n): [peak_memory_one(m, n, preset, device, teacher_recipe) for _ in range(repeats)]
                for m, n in wanted}
    package_parent = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (package_parent, os.environ.get("PYTHONPATH")) if p))

    def one(case: tuple[str, int]) -> int:
        method, pairs = case
        cmd = [sys.executable, "-m", "reprolib.cost", f"{method}:{pairs}", "--preset", preset,
               "--threads", str(threads), "--device", device]
        if teacher_recipe:
            cmd += ["--teacher-recipe", teacher_recipe]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise ReproError(f"measuring the memory of {method} at {pairs} pair(s) failed: {tail}")
        if progress is not None:
            progress(f"memory: {method} at {pairs} pair(s) measured")
        return int(proc.stdout.strip().splitlines()[-1])

    jobs = [c for c in wanted for _ in range(repeats)]
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        values = list(pool.map(one, jobs))
    out: dict[tuple[str, int], list[int]] = {c: [] for c in wanted}
    for case, value in zip(jobs, values):
        out[case].append(value)
    return out


def alignment_cost(preset: str = "quick", steps: int = 5, rounds: int = 3, threads: int = 1, device: str = "cpu",
                   teacher_recipe: str | None = None, memory: bool = True, memory_repeats: int = 2,
                   memory_counts: tuple[int, ...] | None = None, parallel: int = 2, isolate: bool = True,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Step time and peak memory of every case, as a strict-JSON report with one row per case.

    Row fields: ``ms_per_step`` (median over rounds), ``step_ratio_to_kd`` (the median of
    the per-round ratios to KD's time in the same round) with ``step_ratio_min`` and
    ``step_ratio_max``; with ``memory``: ``peak_step_mib`` (median over repeats),
    ``peak_step_mib_min``, ``peak_step_mib_max`` and ``memory_ratio_to_kd`` (None where
    KD's peak is 0), None for the pair counts not in ``memory_counts`` (default: all).
    ``parallel`` and ``isolate``: see :func:`peak_memory`.
    """
    import torch

    for name, value in (("steps", steps), ("rounds", rounds), ("threads", threads), ("memory_repeats", memory_repeats)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ReproError(f"{name} must be a positive integer (got {value!r})")
    bad = sorted(set(memory_counts or ()) - set(PAIR_COUNTS))
    if bad:
        raise ReproError(f"no pair set of {bad} layer pairs for the memory; choose among {list(PAIR_COUNTS)}")
    torch.set_num_threads(threads)
    started = time.time()
    times = time_steps(preset, steps, rounds, device, teacher_recipe)
    if progress is not None:
        progress(f"steps timed in {time.time() - started:.0f} s")
    mem = peak_memory(preset, device, teacher_recipe, threads, memory_repeats, memory_counts, parallel,
                      isolate, progress) if memory else {}
    kd_times = times[("kd", 0)]
    kd_mem = statistics.median(mem[("kd", 0)]) if mem else None
    rows = []
    for (method, pairs), ts in times.items():
        ratios = [t / k for t, k in zip(ts, kd_times)]
        row = {"method": method, "pairs": pairs, "ms_per_step": round(1000 * statistics.median(ts), 2),
               "step_ratio_to_kd": round(statistics.median(ratios), 3),
               "step_ratio_min": round(min(ratios), 3), "step_ratio_max": round(max(ratios), 3)}
        if mem:
            m = mem.get((method, pairs))
            row.update(peak_step_mib=None, peak_step_mib_min=None, peak_step_mib_max=None, memory_ratio_to_kd=None)
            if m:
                row.update(peak_step_mib=round(statistics.median(m) / 2 ** 20, 2),
                           peak_step_mib_min=round(min(m) / 2 ** 20, 2), peak_step_mib_max=round(max(m) / 2 ** 20, 2),
                           memory_ratio_to_kd=round(statistics.median(m) / kd_mem, 3) if kd_mem else None)
        rows.append(row)
    cuda = device.startswith("cuda")
    return {"machine": machine(threads),
            "torch": torch.__version__, "device": device, "preset": preset, "teacher_recipe": teacher_recipe,
            "clock": "wall" if cuda else "process CPU",
            "memory": None if not memory else (
                "max_memory_allocated" if cuda else "peak RSS during three steps over RSS before them, "
                + ("a process per case and repeat" if isolate else "every case in one process (not isolated)")),
            "pairs": {str(n): [list(p) for p in MINI_PAIR_SETS[n]] for n in PAIR_COUNTS},
            "steps": steps, "rounds": rounds, "memory_repeats": memory_repeats if memory else 0,
            "memory_counts": list(memory_counts or PAIR_COUNTS) if memory else [], "isolate": isolate,
            "seconds": round(time.time() - started, 1), "rows": rows}


# How much each book preset measures: steps per round, rounds, and processes per case for memory.
# The smoke preset measures memory at the ends only (KD, 1 and 8 pairs) and in one process
# (an isolated case is a process of several seconds).
COST_PRESETS = {
    "smoke": dict(steps=1, rounds=2, memory_repeats=1, memory_counts=(1, 8), isolate=False),
    "quick": dict(steps=5, rounds=3, memory_repeats=2, memory_counts=PAIR_COUNTS, isolate=True),
    "full": dict(steps=10, rounds=5, memory_repeats=3, memory_counts=PAIR_COUNTS, isolate=True),
}


def cost_study(preset: str = "quick", world: str = "mini", device: str = "cpu", threads: int = 1, out: str | os.PathLike | None = None,
               remeasure: bool = False, memory: bool = True,
               progress: Callable[[str], None] | None = None) -> dict:
    """The alignment-cost report of a book preset (:data:`COST_PRESETS`), kept in a file.

    ``out`` (default :func:`study_path`: ``$REPROLIB_CACHE/studies/alignment-cost/<preset>-<device>-<threads>t.json``)
    holds the last report (:func:`kept_report`): it is reused when it was measured on this machine (CPU model,
    torch version, device, threads) with the same settings, unless ``remeasure``; otherwise
    the cases are measured again and the file replaced atomically. The report's
    ``"reused"`` says which happened. The mini world's run preset of the same name fixes
    the batch and the images; the smoke preset uses its quickly trained teacher.
    """
    from .io import write_json

    if world != "mini":
        raise ReproError(f"the alignment cost is measured on the mini pair; world {world!r} has other layer "
                         "names: use world='mini' (the paper pair's cost needs its own pair sets)")
    if preset not in COST_PRESETS:
        raise ReproError(f"unknown preset {preset!r} for the alignment cost; choose one of {list(COST_PRESETS)}")
    settings = COST_PRESETS[preset]
    path = Path(out) if out is not None else study_path(preset, device, threads)
    kept = None if remeasure else kept_report(preset, device, threads, memory, path)
    if kept is not None:
        return kept
    report = alignment_cost(preset, settings["steps"], settings["rounds"], threads, device, memory=memory,
                            memory_repeats=settings["memory_repeats"], memory_counts=settings["memory_counts"],
                            isolate=settings["isolate"], progress=progress)
    write_json(path, report)
    return dict(report, reused=False)


def study_path(preset: str, device: str = "cpu", threads: int = 1) -> Path:
    """Where :func:`cost_study` keeps the report of a preset, device and thread count."""
    from .io import cache_root

    return cache_root() / "studies" / "alignment-cost" / f"{preset}-{device.replace(':', '')}-{threads}t.json"


def kept_report(preset: str, device: str = "cpu", threads: int = 1, memory: bool = True,
                path: str | os.PathLike | None = None) -> dict | None:
    """The kept report of :func:`cost_study` (with ``"reused": True``) when it was measured on
    this machine (CPU model, torch version, device, threads) with the preset's settings;
    else None. Reads only: measures nothing."""
    import torch

    from .io import read_json

    if preset not in COST_PRESETS:
        raise ReproError(f"unknown preset {preset!r} for the alignment cost; choose one of {list(COST_PRESETS)}")
    settings = COST_PRESETS[preset]
    path = Path(path) if path is not None else study_path(preset, device, threads)
    if not path.exists():
        return None
    wanted = {"machine": machine(threads), "torch": torch.__version__,
              "device": device, "preset": preset, "steps": settings["steps"], "rounds": settings["rounds"],
              "memory_repeats": settings["memory_repeats"] if memory else 0,
              "memory_counts": list(settings["memory_counts"]) if memory else [], "isolate": settings["isolate"]}
    old = read_json(path)
    return dict(old, reused=True) if all(old.get(k) == v for k, v in wanted.items()) else None


def machine(threads: int) -> str:
    """The machine a report was measured on, in words (its kept report is reused only there)."""
    from .devices import cpu_model

    return f"{platform.machine()}, {cpu_model()}, {threads} thread(s)"


def cost_table(report: dict):
    """The report's rows as the book's table: one row per case, ratios with their range."""
    import pandas as pd

    rows = []
    for r in report["rows"]:
        row = {"method": r["method"], "pairs": r["pairs"] or "– (output only)",
               "ms / step": r["ms_per_step"],
               "× KD (step)": f"{r['step_ratio_to_kd']:.2f} [{r['step_ratio_min']:.2f}–{r['step_ratio_max']:.2f}]"}
        if "peak_step_mib" in r:
            row["peak MiB"] = "not measured" if r["peak_step_mib"] is None else (
                f"{r['peak_step_mib']:.1f} [{r['peak_step_mib_min']:.1f}–{r['peak_step_mib_max']:.1f}]")
            row["× KD (memory)"] = "–" if r["memory_ratio_to_kd"] is None else f"{r['memory_ratio_to_kd']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _main(argv=None) -> int:
    """``python -m reprolib.cost METHOD:PAIRS``: the step peak of one case, in bytes (used by :func:`peak_memory`)."""
    import argparse

    import torch

    p = argparse.ArgumentParser(description="the step peak memory of one alignment-cost case, in bytes")
    p.add_argument("case", help="METHOD:PAIRS, e.g. subdistill:8 or kd:0")
    p.add_argument("--preset", default="quick")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--teacher-recipe", default=None)
    args = p.parse_args(argv)
    method, _, pairs = args.case.partition(":")
    try:
        n = int(pairs)
    except ValueError:
        print(f"error: case {args.case!r} is not METHOD:PAIRS (e.g. subdistill:8)", file=sys.stderr)
        return 2
    if (method, n) not in cases():
        print(f"error: no case {args.case!r}; choose kd:0 or one of {LAYER_METHODS} with {list(PAIR_COUNTS)} pairs",
              file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    try:
        print(peak_memory_one(method, n, args.preset, args.device, args.teacher_recipe))
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main())

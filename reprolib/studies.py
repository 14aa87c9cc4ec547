"""The studies of the book's "Beyond the paper" part: running them and reading what they found.

* :func:`aligned_layers`: chapter 8's grid (AT and SubDistill with 1, 2 and 4 aligned
  layer pairs) trained into the main sweep's folder, so that its 4-pair cells are the
  main grid's own and a stopped study resumes where it stopped (a sweep's guarantees:
  a finished run is never trained again, files are written atomically).
* :func:`reprolib.cost.cost_study`: chapter 9's measurement, kept per machine.
* :func:`findings`: what each study found, in words, for the results page; it only
  reads (a study not yet run is said to be so, nothing is trained or measured).

The rules that turn the numbers into sentences are in :mod:`reprolib.verdicts`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .errors import ReproError

ALIGNED_LAYERS = "aligned-layers"


def sweep_folder(world: str, preset: str, out_dir: str | os.PathLike | None = None) -> Path:
    """The main sweep's folder (chapter 4's): ``out_dir`` or ``$REPROLIB_CACHE/sweeps/<world>-<preset>``."""
    from .io import cache_root

    return Path(out_dir) if out_dir else cache_root() / "sweeps" / f"{world}-{preset}"


def aligned_layers(world: str = "mini", preset: str = "quick", out_dir: str | os.PathLike | None = None,
                   run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Chapter 8's study: its λ-selected summary per pair count, beside output-only KD.

    With ``run`` (keyword arguments of :func:`reprolib.sweep.run_sweep`: backend,
    workers, execution, progress) the main grid and the study's grid are run (finished
    runs reused); with ``run=None`` only the finished runs are read. Returns ``{"grid",
    "summary"`` (:func:`reprolib.results.summary_table` with ``layer_pair_count``; KD at
    count 0), ``"study"`` (the study's runs), ``"new"`` (those that are not the main grid's
    own), ``"finished"``, ``"cells"}``.
    """
    import pandas as pd

    from . import sweep
    from .grids import expand_grid, get_grid, grid_for
    from .results import collect_results, summary_table, with_pair_counts

    if world != "mini":
        raise ReproError(f"the aligned-layers study names the mini pair's layers; world {world!r} has others: "
                         "use world='mini'")
    grid, main_grid = grid_for(ALIGNED_LAYERS, preset), get_grid(preset)
    out = sweep_folder(world, preset, out_dir)
    cells = expand_grid(grid, world)
    if run is None:
        study, main = collect_results(cells, out), collect_results(expand_grid(main_grid, world), out)
    else:
        main = sweep.run_sweep(main_grid, out, world=world, **run)
        study = sweep.run_sweep(grid, out, world=world, **run)
    kd = main[(main["method"] == "kd") & main["rho"].isin(grid.rhos)].assign(layer_pair_count=0)
    table = pd.concat([with_pair_counts(study, cells), kd], ignore_index=True)
    summary = summary_table(table) if len(study) else None
    new = study[~study["config_key"].isin(set(main["config_key"]))]
    return {"grid": grid, "summary": summary, "study": study, "new": new, "finished": len(study), "cells": len(cells)}


def findings(world: str = "mini", preset: str = "quick", sweep_dir: str | os.PathLike | None = None,
             device: str = "auto", threads: int = 1) -> list[str]:
    """One line per study of the "Beyond the paper" part: what it found (the oracle rule's
    sentence of :mod:`reprolib.verdicts`), or that it has not run yet. Reads only. ``device``
    and ``threads``: those chapter 9 measured with (``"auto"``: CUDA when torch sees one)."""
    from . import cost, verdicts
    from .devices import resolve_device

    lines = []
    if world == "mini":
        study = aligned_layers(world, preset, sweep_dir, run=None)
        head = "**How many aligned layers** (chapter 8): "
        if study["finished"] < study["cells"]:
            lines.append(head + f"not run yet ({study['finished']} of {study['cells']} runs finished); "
                         "building chapter 8 runs it.")
        else:
            lines.append(head + verdicts.finding_aligned_layers(study["summary"], "oracle"))
        report = cost.kept_report(preset, resolve_device(device), threads)
        head = "**What deeper alignment costs** (chapter 9): "
        lines.append(head + (verdicts.finding_alignment_cost(report) if report is not None else
                             "not measured yet on this machine; building chapter 9 measures it."))
    else:
        lines.append(f"The beyond-the-paper studies run in the mini world only; this page's world is {world!r}.")
    return lines

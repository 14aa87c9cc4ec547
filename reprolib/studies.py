"""The studies of the book's "Beyond the paper" part: running them and reading what they found.

* :func:`aligned_layers`: chapter 8's grid (AT and SubDistill with 1, 2 and 4 aligned
  layer pairs) trained into the main sweep's folder, so that its 4-pair cells are the
  main grid's own and a stopped study resumes where it stopped (a sweep's guarantees:
  a finished run is never trained again, files are written atomically).
* :func:`reprolib.cost.cost_study`: chapter 9's measurement, kept per machine.
* :func:`biased_teacher`: chapter 10's grid with a teacher that learned the shortcut
  (its own folder beside the main sweep's), the same cells with the book's teacher
  (the main grid's own), and every student's digit-following on the random-digit
  test set (:func:`digit_following`).
* :func:`findings`: what each study found, in words, for the results page; it only
  reads (a study not yet run is said to be so, nothing is trained or measured).

The rules that turn the numbers into sentences are in :mod:`reprolib.verdicts`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import ReproError

ALIGNED_LAYERS = "aligned-layers"
BIASED_TEACHER = "biased-teacher"


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

    if world != "mini":
        return [f"The beyond-the-paper studies run in the mini world only; this page's world is {world!r}."]

    def trained(title: str, chapter: int, study: dict, done: bool, sentence) -> str:
        if not done:
            return (f"**{title}** (chapter {chapter}): not run yet ({study['finished']} of {study['cells'] or 'its'} "
                    f"runs finished); building chapter {chapter} runs it.")
        return f"**{title}** (chapter {chapter}): " + sentence()

    layers = aligned_layers(world, preset, sweep_dir, run=None)
    report = cost.kept_report(preset, resolve_device(device), threads)
    biased = biased_teacher(world, preset, sweep_dir, run=None)
    conditions = conditions_map(world, preset, sweep_dir, run=None)
    return [
        trained("How many aligned layers", 8, layers, layers["finished"] == layers["cells"],
                lambda: verdicts.finding_aligned_layers(layers["summary"], "oracle")),
        "**What deeper alignment costs** (chapter 9): " + (
            verdicts.finding_alignment_cost(report) if report is not None
            else "not measured yet on this machine; building chapter 9 measures it."),
        trained("A biased teacher", 10, biased, biased["table"] is not None,
                lambda: verdicts.finding_biased_teacher(biased["table"], biased["teachers"])),
        trained("When does the artifact win?", 11, conditions, conditions["effects"] is not None,
                lambda: verdicts.finding_conditions(conditions["effects"])),
    ]


def teacher_digit_following(teacher_recipe: str, world: str = "mini", preset: str = "quick",
                            knn_images: int = 600) -> dict[str, Any]:
    """A mini teacher's own digit-following, measured as the students' is: its subtask
    predictions on the world's test set at ρ = 1 (every image carries a random digit),
    :func:`reprolib.evaluation.teacher_test_metrics` (cached beside the other teacher
    evaluations; the teacher is trained first if it is not cached). Returns the recipe,
    ``accuracy``, ``accuracy_digit_differs``, ``predicts_digit_differs`` (the share of the
    images whose digit differs from their label that it classifies as the digit; chance
    1/K), ``n_digit_differs`` and ``knn_digit`` (its deepest aligned layer's, as
    :func:`digit_following` gives the students')."""
    import torch

    from .config import make_config
    from .evaluation import teacher_test_metrics
    from .teacher import build_teacher

    cfg = make_config(world, preset, teacher_recipe=teacher_recipe, contamination_rate=1.0, method="kd",
                      lambda_layer=0.0)
    if cfg.teacher != "mini-teacher":
        raise ReproError(f"world {world!r} has no mini teacher recipe to bias; use world='mini'")
    teacher, w = build_teacher(cfg, progress=False), _rho1_world(cfg, {})
    metrics = teacher_test_metrics(teacher, w, cfg, torch.device("cpu"))
    return {"teacher_recipe": teacher_recipe, "classes": len(cfg.data.subtask_classes),
            **{k: metrics[k] for k in ("accuracy", "accuracy_digit_differs", "predicts_digit_differs",
                                       "n_digit_differs")},
            "knn_digit": _knn_digit(teacher.model, cfg.layer_pairs[-1][0], w, knn_images)}


def _rho1_world(cfg, worlds: dict):
    from .worlds import build_world

    data = cfg.replace(contamination_rate=1.0).data
    key = repr((data, cfg.seed))
    if key not in worlds:
        worlds[key] = build_world(data, cfg.seed)
    return worlds[key]


def _knn_digit(model, layer: str, world, n: int) -> float:
    """kNN digit agreement (:func:`reprolib.embedding.knn_agreement`) of ``layer``'s pooled
    features on the first ``n`` test images of ``world`` (chance about 1/K)."""
    from .embedding import knn_agreement, pooled_features

    x, _y, d = world.tensors("test")
    n = min(n, len(d))
    f = pooled_features(model, layer, (x[i:min(i + 256, n)] for i in range(0, n, 256)))
    return knn_agreement(f, d[:n].numpy())


def digit_following(results, folder: str | os.PathLike, knn_images: int = 600,
                    cache: str | os.PathLike | None = None) -> "Any":
    """Every run's digit-following on the random-digit test set of its world at ρ = 1,
    whatever ρ it was distilled at (a ρ = 0 student's own test set has no digit, D4):
    ``results`` with ``predicts_digit_differs_rho1`` (the share of the images whose digit
    differs from their label that the student classifies as the digit; chance 1/K),
    ``accuracy_digit_differs_rho1`` and ``knn_digit`` (the kNN digit agreement of its last
    aligned layer's pooled features on the first ``knn_images`` of those images). The
    best-validation (oracle) checkpoint of each run.

    ``cache``: a JSON file keeping each run's three numbers (by run folder, for this
    ``knn_images``), written after every newly measured run; runs found there are not
    measured again, so the results page reads what chapter 10 measured."""
    import torch

    from .evaluation import predict, split_accuracies
    from .io import read_json, write_json
    from .rundirs import load_student

    known: dict[str, list] = {}
    if cache is not None and Path(cache).is_file():
        kept = read_json(cache)
        if isinstance(kept, dict) and kept.get("knn_images") == knn_images and isinstance(kept.get("runs"), dict):
            known = dict(kept["runs"])
    worlds: dict[str, Any] = {}
    rows = []
    for run_dir in results["run_dir"]:
        if str(run_dir) not in known:
            student, cfg = load_student(Path(folder) / run_dir)
            world = _rho1_world(cfg, worlds)
            m = split_accuracies(*predict(student, world, "test", torch.device("cpu")))
            known[str(run_dir)] = [m["predicts_digit_differs"], m["accuracy_digit_differs"],
                                   _knn_digit(student, cfg.layer_pairs[-1][1], world, knn_images)]
            if cache is not None:
                write_json(cache, {"knn_images": knn_images, "runs": known})
        rows.append(tuple(math.nan if v is None else float(v) for v in known[str(run_dir)]))
    follows, accuracy, knn = zip(*rows) if rows else ((), (), ())
    return results.assign(predicts_digit_differs_rho1=list(follows), accuracy_digit_differs_rho1=list(accuracy),
                          knn_digit=list(knn))


def biased_teacher(world: str = "mini", preset: str = "quick", out_dir: str | os.PathLike | None = None,
                   run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Chapter 10's study: every method distilled from the biased teacher (grid
    ``biased-teacher``, in ``<main sweep folder>-biased-teacher``) and from the book's
    teacher (the same cells without the override: the main grid's own, in its folder),
    each run's digit-following (:func:`digit_following`, kept in the biased runs' folder as
    ``digit-following-book.json`` and ``digit-following-biased.json``, so that reading the
    study again measures nothing) and both teachers' own (:func:`teacher_digit_following`).

    ``run`` as in :func:`aligned_layers` (None: read the finished runs only, and stop
    there while the biased grid is unfinished). Returns ``{"grid", "table"`` (one row per
    run, column ``teacher``: ``"biased"`` or ``"book"``; None when stopped), ``"teachers"``
    (the book's and the biased teacher's measurements; None when stopped), ``"folder"``
    (the biased runs'), ``"biased"`` (their results), ``"finished"``, ``"cells"}``.
    """
    import dataclasses

    import pandas as pd

    from . import sweep
    from .grids import expand_grid, grid_for
    from .results import collect_results

    if world != "mini":
        raise ReproError(f"the biased-teacher study trains a mini teacher; world {world!r} has none: use world='mini'")
    grid = grid_for(BIASED_TEACHER, preset)
    book_grid = dataclasses.replace(grid, name=f"{grid.name}-book-teacher",
                                    overrides={k: v for k, v in grid.overrides.items() if k != "teacher_recipe"})
    main = sweep_folder(world, preset, out_dir)
    folder = main.parent / f"{main.name}-biased-teacher"
    cells, book_cells = expand_grid(grid, world), expand_grid(book_grid, world)
    if run is None:
        biased, book = collect_results(cells, folder), collect_results(book_cells, main)
    else:
        book = sweep.run_sweep(book_grid, main, world=world, **run)
        biased = sweep.run_sweep(grid, folder, world=world, **run)
    out = {"grid": grid, "table": None, "teachers": None, "folder": folder, "biased": biased,
           "finished": len(biased), "cells": len(cells)}
    if run is None and len(biased) < len(cells):
        return out            # reading only: the teachers may not be trained yet, and nothing is trained here
    out["teachers"] = [teacher_digit_following(r, world, grid.run_preset)
                       for r in (book_cells[0].teacher_recipe, cells[0].teacher_recipe)]
    parts = [digit_following(t, f, cache=folder / f"digit-following-{name}.json").assign(teacher=name)
             for t, f, name in ((book, main, "book"), (biased, folder, "biased")) if len(t)]
    out["table"] = pd.concat(parts, ignore_index=True) if parts else None
    return out


def conditions_map(world: str = "mini", preset: str = "quick", out_dir: str | os.PathLike | None = None,
                   run: dict[str, Any] | None = None) -> dict[str, Any]:
    """Chapter 11's study: SubDistill's λ is the one the main sweep selects most often for it
    (:func:`reprolib.verdicts.most_selected_lambda`), the grid (:func:`reprolib.grids.conditions_grid`) runs
    into the main sweep's folder (its main-world cells are the main grid's own), and each
    cell's effects are :func:`reprolib.verdicts.conditions_effects`. ``run`` as in
    :func:`aligned_layers`. Returns ``{"grid", "lambda", "table", "effects", "new",
    "finished", "cells"}``."""
    from . import sweep, verdicts
    from .grids import conditions_grid, expand_grid, get_grid
    from .results import collect_results, summary_table, with_cell_fields

    if world != "mini":
        raise ReproError(f"the conditions map varies the mini teacher's training; world {world!r} has none: "
                         "use world='mini'")
    main_grid, out = get_grid(preset), sweep_folder(world, preset, out_dir)
    main = (collect_results(expand_grid(main_grid, world), out) if run is None
            else sweep.run_sweep(main_grid, out, world=world, **run))
    if not len(main):
        return {"grid": None, "lambda": None, "table": None, "effects": None, "new": None, "finished": 0, "cells": None}
    lam = verdicts.most_selected_lambda(summary_table(main), "subdistill")
    grid = conditions_grid(preset, lam)
    cells = expand_grid(grid, world)
    study = collect_results(cells, out) if run is None else sweep.run_sweep(grid, out, world=world, **run)
    table = with_cell_fields(study, cells, teacher_recipe=lambda c: c.teacher_recipe,
                             crop_min=lambda c: float(c.data.crop_scale[0]))
    new = study[~study["config_key"].isin(set(main["config_key"]))]
    effects = verdicts.conditions_effects(table) if len(study) == len(cells) else None
    return {"grid": grid, "lambda": lam, "table": table, "effects": effects, "new": new,
            "finished": len(study), "cells": len(cells)}

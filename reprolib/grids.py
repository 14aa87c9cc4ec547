"""What a sweep runs: grids as data, their cells, and the cohorts they form.

A grid (methods × ρ × seeds × λ [× pool size]) expands into validated
:class:`~reprolib.config.RunConfig` cells (:func:`expand_grid`). Cells that
share everything the teacher and the batches depend on (data config, seed,
teacher, batch size, epochs) form one *cohort* (:func:`cohort_key`,
:func:`group_cohorts`), trained together by :mod:`reprolib.cohort` with one
teacher forward per batch. No torch here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

from .config import METHODS, MINI_PAIR_SETS, RunConfig, make_config, split_sizes
from .errors import ReproError

# D6: the paper's λ grid.
PAPER_LAMBDAS = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
# The contamination rates the authors' code registers (§1.4); P1 reports {0, .5, 1}.
PAPER_RHOS = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class SweepGrid:
    """The axes of a sweep and the run preset every cell uses.

    ``pool_sizes=None`` keeps the preset's pool size. ``overrides`` are extra
    :func:`~reprolib.config.make_config` fields applied to every cell
    (e.g. ``{"val_digits": "correlated"}``). ``variants`` is an optional axis of
    named override sets (e.g. training-set sizes at a fixed step budget), each
    applied on top of ``overrides``.
    """

    name: str
    run_preset: str
    methods: tuple[str, ...]
    rhos: tuple[float, ...]
    seeds: tuple[int, ...]
    lambdas: tuple[float, ...]
    pool_sizes: tuple[int, ...] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    variants: tuple[dict[str, Any], ...] | None = None
    note: str = ""
    # A named world variant (reprolib.config.VARIANTS); None: the world's main variant.
    world_variant: str | None = None

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
        if self.variants is not None and not self.variants:
            raise ReproError(f"sweep grid {self.name!r} has an empty variants axis; "
                             "give override sets or None")

    def describe(self) -> str:
        parts = [f"{len(self.methods)} methods", f"{len(self.rhos)} rho",
                 f"{len(self.seeds)} seeds", f"{len(self.lambdas)} lambdas (kd: none)"]
        if self.pool_sizes is not None:
            parts.insert(2, f"{len(self.pool_sizes)} pool sizes")
        if self.variants is not None:
            parts.insert(2, f"{len(self.variants)} variants")
        return " x ".join(parts)


# The quick grid's λ: four decades of D6's seven (1e-3 ... 1e3). The first
# version's {1, 10} could not show the effect: a layer term of AT is about 3e-3
# per layer, so at λ <= 10 AT is numerically KD. The book reports accuracy at
# every λ, so a reader sees whether the choice sits at an edge of the grid.
QUICK_LAMBDAS = (1.0, 10.0, 100.0, 1000.0)
# The authors' README default, used where a grid fixes λ instead of selecting it.
AUTHORS_LAMBDA = 100.0
# The optimiser-step budget of the quick preset (1200 = 200 epochs x 6 steps).
QUICK_STEPS = 1200


def fixed_step_variants(train_fractions: Sequence[float], steps: int = QUICK_STEPS,
                        preset: str = "quick", world: str = "mini") -> tuple[dict[str, Any], ...]:
    """Override sets that vary the training-set size at a fixed number of optimiser steps.

    For each training fraction of the pool (§1.2's training-size knob; the
    validation part stays 20 % of the pool) the epochs are chosen so that the run
    takes ``steps`` optimiser steps (rounded up to whole epochs), the rate is
    halved every quarter of the run (the paper's 100/25) and the run is validated
    about 50 times. The pool size, the batch and λ do not change, so pool size is
    not confounded with the number of steps.
    """
    base = make_config(world, preset)
    out = []
    for f in train_fractions:
        cfg = base.replace(train_fraction=float(f))
        n_train = split_sizes(cfg.data)["train"]
        if n_train is None or n_train < cfg.batch_size:
            raise ReproError(f"training fraction {f} leaves {n_train} images, fewer than a batch")
        per_epoch = n_train // cfg.batch_size
        epochs = -(-steps // per_epoch)
        out.append({"train_fraction": float(f), "epochs": epochs,
                    "lr_step": max(1, round(epochs / 4)), "val_every": max(1, round(epochs / 50))})
    return tuple(out)


SWEEP_PRESETS: dict[str, SweepGrid] = {
    # Seconds: for tests and CI. Its numbers mean nothing.
    "smoke": SweepGrid(
        name="smoke", run_preset="smoke", methods=("kd", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1,), lambdas=(1.0,),
        note="tests and CI only; its numbers mean nothing"),
    # The book's default: 1200 optimiser steps per run, λ in four decades.
    "quick": SweepGrid(
        name="quick", run_preset="quick", methods=METHODS,
        rhos=(0.0, 0.5, 1.0), seeds=(1, 2, 3), lambdas=QUICK_LAMBDAS,
        note="lambda grid {1, 10, 100, 1000}, four of D6's seven decades; rho as reported in P1"),
    # D6 in full: the paper's recipe.
    "full": SweepGrid(
        name="full", run_preset="full", methods=METHODS,
        rhos=PAPER_RHOS, seeds=(1, 2, 3), lambdas=PAPER_LAMBDAS,
        note="D6: full lambda grid, all registered contamination rates"),
    # The effect as a function of the distillation set's size, at a FIXED step
    # budget: training parts of 20/40/80/160 images per class (the training part
    # of pools of 25/50/100/200 at the 80/20 split) with the validation set fixed
    # at 250 images; every run takes 1200 optimiser steps. λ is fixed at the
    # authors' default (100) rather than selected, to keep the grid affordable.
    # Its 40-per-class point is the quick grid's own cells (reused, not retrained).
    "calibration": SweepGrid(
        name="calibration", run_preset="quick", methods=("kd", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1, 2, 3), lambdas=(AUTHORS_LAMBDA,),
        variants=fixed_step_variants((0.08, 0.16, 0.32, 0.64)),
        note="training images per class {20, 40, 80, 160} at a fixed 1200 optimiser steps; "
             "validation set fixed at 250 images; lambda fixed at 100 (the authors' default)"),
    # The whole curve: also 200 per class (the pool's full 80 %), λ selected per size.
    "calibration-full": SweepGrid(
        name="calibration-full", run_preset="quick", methods=("kd", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1, 2, 3), lambdas=QUICK_LAMBDAS,
        variants=fixed_step_variants((0.08, 0.16, 0.32, 0.64, 0.8)),
        note="training images per class {20, 40, 80, 160, 200} at a fixed 1200 optimiser steps; "
             "lambda selected from {1, 10, 100, 1000} per size"),
    # The subspace ratio K/d: the first version's student (widths 16-128, K/d = 0.5)
    # beside the default (8-64, K/d = 0.25), same data and recipe, both at the
    # authors' λ = 100 (fixed like the calibration's: no selection over λ, and the
    # wide student, four times the FLOPs, stays affordable).
    "kd-ablation": SweepGrid(
        name="kd-ablation", run_preset="quick", methods=("kd", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1, 2, 3), lambdas=(AUTHORS_LAMBDA,),
        overrides={"student": "mini-student-wide"},
        note="the wide student (K/d = 0.5) with kd and subdistill at lambda 100; compare with the quick grid's lambda-100 cells (K/d = 0.25)"),
    # Beyond the paper, chapter 9: how many aligned layers? SubDistill and AT with the deepest
    # pair, the two deepest and every stage's output (the book's default: these cells are the
    # quick grid's own, reused), λ selected per pair count from the quick grid's four decades
    # (the layer term is a sum over pairs, so one λ does not fit every count).
    "aligned-layers": SweepGrid(
        name="aligned-layers", run_preset="quick", methods=("at", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1, 2, 3), lambdas=QUICK_LAMBDAS,
        variants=tuple({"layer_pairs": MINI_PAIR_SETS[n]} for n in (1, 2, 4)),
        note="AT and SubDistill with 1, 2 and 4 aligned layer pairs; lambda selected from {1, 10, 100, 1000} per count"),
    # Beyond the paper, chapter 10: a teacher that learned the shortcut itself (the
    # "10-epoch-biased" recipe). Every method at the authors' λ (fixed, as in chapter 4's
    # side grids); the same cells with the book's teacher are the quick grid's own.
    "biased-teacher": SweepGrid(
        name="biased-teacher", run_preset="quick", methods=METHODS,
        rhos=(0.0, 1.0), seeds=(1, 2, 3), lambdas=(AUTHORS_LAMBDA,),
        overrides={"teacher_recipe": "10-epoch-biased"},
        note="every method with the biased teacher (half of each subtask class's training images carried its digit); lambda fixed at 100"),
}


# Chapter 4's side grids at the smoke preset (tests and CI: two tiny pools, one seed; the
# wide student): what ``grid_for(name, "smoke")`` gives instead of the quick-preset grid.
SMOKE_SIDE_GRIDS: dict[str, SweepGrid] = {
    "calibration": SweepGrid(
        name="calibration-smoke", run_preset="smoke", methods=("kd", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1,), lambdas=(1.0,), pool_sizes=(10, 20),
        note="smoke: two tiny pools, one seed"),
    "kd-ablation": SweepGrid(
        name="kd-ablation-smoke", run_preset="smoke", methods=("kd", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1,), lambdas=(1.0,),
        overrides={"student": "mini-student-wide"}, note="smoke: the wide student"),
    "aligned-layers": SweepGrid(
        name="aligned-layers-smoke", run_preset="smoke", methods=("at", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1,), lambdas=(1.0,),
        variants=tuple({"layer_pairs": MINI_PAIR_SETS[n]} for n in (1, 2, 4)),
        note="smoke: 1, 2 and 4 pairs, one seed, one lambda"),
    "biased-teacher": SweepGrid(
        name="biased-teacher-smoke", run_preset="smoke", methods=("kd", "subdistill"),
        rhos=(0.0, 1.0), seeds=(1,), lambdas=(1.0,), overrides={"teacher_recipe": "smoke-biased"},
        note="smoke: the seconds-long biased teacher, one seed, one lambda"),
}


# Chapter 11's map: the two knobs of the precondition ladder that moved output-only KD's drop
# most (the teacher's training: rungs a -> b; the students' crop scale: b -> c), three levels
# each, so that the map holds the first book's world (1-epoch, 0.5) and the main world (10-epoch, 0.5).
CONDITIONS_TEACHERS = ("1-epoch", "3-epoch", "10-epoch")
CONDITIONS_CROPS = ((0.08, 1.0), (0.25, 1.0), (0.5, 1.0))
SMOKE_CONDITIONS = (("smoke",), ((0.08, 1.0), (0.5, 1.0)))


def conditions_grid(preset: str, lam: float):
    """Chapter 11's grid: output-only KD and SubDistill at λ = ``lam``, ρ ∈ {0, 1}, seeds 1-3,
    on every (teacher recipe, crop scale) of :data:`CONDITIONS_TEACHERS` × :data:`CONDITIONS_CROPS`
    (the smoke preset: :data:`SMOKE_CONDITIONS`, one seed)."""
    smoke = preset == "smoke"
    teachers, crops = SMOKE_CONDITIONS if smoke else (CONDITIONS_TEACHERS, CONDITIONS_CROPS)
    return SweepGrid(
        name="conditions-map" + ("-smoke" if smoke else ""), run_preset="smoke" if smoke else "quick",
        methods=("kd", "subdistill"), rhos=(0.0, 1.0), seeds=(1,) if smoke else (1, 2, 3), lambdas=(float(lam),),
        variants=tuple({"teacher_recipe": t, "crop_scale": c} for t in teachers for c in crops),
        note=f"teacher recipes {', '.join(teachers)} × crop scales {', '.join(f'({a:g}, {b:g})' for a, b in crops)}; "
             f"KD and SubDistill at lambda {lam:g}")


def grid_for(name: str, preset: str) -> SweepGrid:
    """The grid ``name`` as the book runs it beside the ``preset`` sweep: its smoke
    version (:data:`SMOKE_SIDE_GRIDS`) for the smoke preset, else the registered grid."""
    if preset == "smoke" and name in SMOKE_SIDE_GRIDS:
        return SMOKE_SIDE_GRIDS[name]
    return get_grid(name)


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
    variants: Sequence[dict[str, Any]] = grid.variants if grid.variants is not None else ({},)
    cells: list[RunConfig] = []
    seen: set[str] = set()
    for seed in grid.seeds:
        for pool in pools:
            for variant in variants:
                for rho in grid.rhos:
                    for method in grid.methods:
                        lambdas = (0.0,) if method == "kd" else grid.lambdas
                        for lam in lambdas:
                            overrides = dict(grid.overrides)
                            overrides.update(variant)
                            overrides.update(method=method, contamination_rate=float(rho),
                                             seed=int(seed), lambda_layer=float(lam))
                            if pool is not None:
                                overrides["pool_per_class"] = int(pool)
                            cfg = make_config(world, grid.run_preset, grid.world_variant, **overrides)
                            key = cfg.key()
                            if key not in seen:
                                seen.add(key)
                                cells.append(cfg)
    return cells



# ---------------------------------------------------------------------------
# Cohorts: the fields that fix the batches and the teacher's outputs.
COHORT_FIELDS = ("data", "seed", "teacher", "teacher_weights", "teacher_recipe", "val_every",
                 "batch_size", "epochs")


def cohort_key(cfg: RunConfig) -> str:
    """Configs with equal keys see bitwise the same batches and teacher outputs."""
    d = cfg.to_dict()
    return json.dumps({k: d[k] for k in COHORT_FIELDS}, sort_keys=True, separators=(",", ":"))


def group_cohorts(cells: Sequence[RunConfig]) -> list[list[RunConfig]]:
    """The cells grouped into cohorts, in order of first appearance (order kept inside)."""
    groups: dict[str, list[RunConfig]] = {}
    for cfg in cells:
        groups.setdefault(cohort_key(cfg), []).append(cfg)
    return list(groups.values())

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

from .config import METHODS, RunConfig, make_config
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
# Cohorts: the fields that fix the batches and the teacher's outputs.
COHORT_FIELDS = ("data", "seed", "teacher", "teacher_weights", "teacher_recipe",
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

"""How a sweep's cohorts become tasks for its workers: split a cohort where that shortens the sweep.

A cohort (:mod:`reprolib.cohort`) trains its students bitwise the same whether
they train together, in parts or alone, so how the students are grouped into
tasks changes the time a sweep takes, never its numbers. Keeping a cohort whole
runs the teacher once per batch for all of its students; splitting it repeats the
teacher's forward once per part, but lets the parts run on workers that would
otherwise wait: the last round of 9 cohorts on 2 workers, or a machine with more
workers than cohorts.

:func:`plan_tasks` estimates each task's cost from :data:`STEP_COST`, tries every
cap on the cost of a part (every cohort in as few parts as keep under it), and
every number of parts for the cohorts of a last, partial round alone, and keeps the plan with the shortest estimated makespan under
longest-first list scheduling; a split must shorten it by at least
:data:`MIN_GAIN`. The tasks come out longest first, which is the order in which
a process pool or Ray should start them. No torch here.
"""

from __future__ import annotations

import heapq
import math
from typing import Sequence

from .config import RunConfig, optimizer_steps

# Time of one optimiser step in ms (mini world, quick preset, one CPU thread, fp32;
# benchmarks/step_time.py): the teacher's forward, and each method's student step on top
# of it. Only the ratios matter, and only for scheduling.
STEP_COST = {"teacher": 37.0, "kd": 21.0, "at": 26.0, "vid": 64.0, "vkd": 31.0, "subdistill": 31.0}
_STUDENT_DEFAULT = sum(v for k, v in STEP_COST.items() if k != "teacher") / (len(STEP_COST) - 1)
# A split that saves less than this share of the unsplit makespan is not worth its extra
# teacher forwards (they cost CPU time that the machine might use for something else).
MIN_GAIN = 0.01


def member_cost(cfg: RunConfig) -> float:
    """Relative cost of one student's optimiser step (its method's; unknown methods: the mean)."""
    return STEP_COST.get(cfg.method, _STUDENT_DEFAULT)


def task_cost(members: Sequence[RunConfig]) -> float:
    """Estimated cost of training ``members`` as one task: steps × (teacher + every student)."""
    if not members:
        return 0.0
    steps = optimizer_steps(members[0]) or members[0].epochs
    return steps * (STEP_COST["teacher"] + sum(member_cost(c) for c in members))


def split_cohort(members: Sequence[RunConfig], parts: int) -> list[list[RunConfig]]:
    """``members`` in ``min(parts, len(members))`` parts of balanced cost (the costliest
    student goes to the lightest part first); each part keeps the members' order, and
    the parts come in the order of their first member."""
    members = list(members)
    parts = max(1, min(parts, len(members)))
    if parts == 1:
        return [members]
    loads = [(0.0, i) for i in range(parts)]
    owner: dict[int, int] = {}
    for j in sorted(range(len(members)), key=lambda j: -member_cost(members[j])):
        load, i = heapq.heappop(loads)
        owner[j] = i
        heapq.heappush(loads, (load + member_cost(members[j]), i))
    out: dict[int, list[RunConfig]] = {}     # insertion order: parts by their first member
    for j, cfg in enumerate(members):
        out.setdefault(owner[j], []).append(cfg)
    return list(out.values())


def makespan(tasks: Sequence[Sequence[RunConfig]], workers: int) -> float:
    """Estimated wall time of ``tasks`` on ``workers``: longest first, each to the first free worker."""
    free = [0.0] * max(1, workers)
    for cost in sorted((task_cost(t) for t in tasks), reverse=True):
        heapq.heappush(free, heapq.heappop(free) + cost)
    return max(free)


def plan_tasks(cohorts: Sequence[Sequence[RunConfig]], workers: int) -> list[list[RunConfig]]:
    """The cohorts as tasks for ``workers``: whole, or split where that shortens the sweep.

    Every config of ``cohorts`` appears in exactly one task. With one worker the
    cohorts stay whole (splitting only adds teacher forwards). The plans tried:
    every cohort in as few parts as keep each part under a cap (for every cap
    ``cost(cohort) / k``), and the cohorts of a last, partial round alone in
    ``k`` parts; the shortest estimated makespan wins, then the fewest tasks.
    Tasks are returned longest first.
    """
    cohorts = [list(c) for c in cohorts if c]
    whole = sorted(cohorts, key=task_cost, reverse=True)
    if workers <= 1 or not cohorts:
        return whole
    costs = [task_cost(c) for c in whole]
    plans = []
    for cap in sorted({cost / k for c, cost in zip(whole, costs) for k in range(1, len(c) + 1)}):
        plans.append([p for c, cost in zip(whole, costs)
                      for p in split_cohort(c, math.ceil(cost / cap - 1e-9))])
    partial = len(whole) % workers if len(whole) > workers else 0
    if partial:   # only the cheapest cohorts, those of the last round, in parts
        for parts in range(2, max(len(c) for c in whole[-partial:]) + 1):
            plans.append(whole[:-partial] + [p for c in whole[-partial:] for p in split_cohort(c, parts)])
    base_time = makespan(whole, workers)
    best, best_time = whole, base_time
    for tasks in plans:
        t = makespan(tasks, workers)
        if t < best_time * (1 - 1e-9) or (t <= best_time * (1 + 1e-9) and len(tasks) < len(best)):
            best, best_time = tasks, t
    if best_time > (1 - MIN_GAIN) * base_time:
        return whole
    return sorted(best, key=task_cost, reverse=True)

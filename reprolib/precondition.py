"""The paper's precondition, measured on output-only KD alone (book, "Decisions": "the precondition").

The paper's finding needs a baseline that takes the shortcut: at ρ = 1 an
output-only student follows the digit. This module measures that on one world
variant (:data:`reprolib.config.MINI_VARIANTS`, a rung of the ladder) without ever
training another method:

* :func:`ladder_grid` / :func:`convergence_grid`: output-only KD at ρ ∈ {0, 1} and the
  book's convergence check (3x the steps at ρ = 0); anything but ``kd`` is refused;
* :func:`teacher_signal`: what the teacher tells the students on the distillation
  images as they see them (augmented, digits pasted): how often its top class is the
  label, its mean top probability at the KD temperature, and the **digit-only KD
  floor**, the smallest KD loss a student that sees only the digit could reach;
* :func:`rung_report`: one rung's numbers, including the drop that
  :func:`reprolib.verdicts.precondition_rule` judges.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from .config import RunConfig, make_config, optimizer_steps, scale_schedule, split_sizes
from .errors import ReproError
from .grids import SweepGrid

LADDER_RHOS = (0.0, 1.0)
CONVERGENCE_FACTOR = 3          # the book's convergence rule: 3x the steps ...
CONVERGENCE_TOLERANCE = 0.02    # ... changes KD's mean test accuracy at ρ = 0 by at most 2 points


def check_kd_only(methods: Sequence[str]) -> None:
    """The ladder trains output-only KD and nothing else: no other method may enter the choice."""
    other = [m for m in methods if m != "kd"]
    if other:
        raise ReproError(f"the precondition ladder trains output-only KD only, not {', '.join(other)}: "
                         "the main world is chosen before any other method is trained on it "
                         "(book, Decisions: the precondition); leave --method out")


def ladder_grid(variant: str, preset: str = "quick", seeds: Sequence[int] = (1, 2, 3),
                overrides: dict[str, Any] | None = None, methods: Sequence[str] = ("kd",)) -> SweepGrid:
    """Output-only KD at ρ ∈ {0, 1} on one world variant."""
    check_kd_only(methods)
    return SweepGrid(name=f"precondition-{variant}", run_preset=preset, methods=tuple(methods),
                     rhos=LADDER_RHOS, seeds=tuple(seeds), lambdas=(0.0,), overrides=dict(overrides or {}),
                     world_variant=variant,
                     note="output-only KD only: the precondition ladder (no other method enters the choice)")


def convergence_grid(variant: str, preset: str = "quick", seeds: Sequence[int] = (1, 2, 3),
                     overrides: dict[str, Any] | None = None,
                     factor: float = CONVERGENCE_FACTOR) -> SweepGrid:
    """KD at ρ = 0 trained ``factor`` times as long (epochs, the rate's step and the
    validation interval scaled, as :func:`reprolib.config.scale_schedule` does)."""
    base = make_config("mini", preset, variant, **dict(overrides or {}))
    long = scale_schedule(base, factor)
    sched = {"epochs": long.epochs, "lr_step": long.lr_step, "val_every": long.val_every}
    return SweepGrid(name=f"precondition-{variant}-x{factor:g}", run_preset=preset, methods=("kd",),
                     rhos=(0.0,), seeds=tuple(seeds), lambdas=(0.0,),
                     overrides={**dict(overrides or {}), **sched}, world_variant=variant,
                     note=f"output-only KD at rho=0 with {factor:g}x the steps: the convergence rule")


def teacher_signal(cfg: RunConfig, passes: int = 10, device: str = "cpu") -> dict[str, float]:
    """What the teacher says on ``cfg``'s training images as the students see them.

    ``passes`` augmented epochs of the training split (digits pasted as at
    ``cfg``'s ρ; the batches of a generator seeded with the run's seed) are scored by the
    frozen teacher at the KD temperature T. Returns:

    * ``agreement``: share of images whose teacher top class is the label;
    * ``top_probability``: the teacher's mean top probability at T;
    * ``digit_only_floor``: ``T² · mean_i KL(p_i ‖ p̄_{digit(i)})``, where ``p̄_d`` is
      the mean teacher distribution over the images carrying digit ``d`` (images
      without a digit form one group). A student whose output depends on the digit
      alone cannot go below it, because the mean minimises the expected KL; at ρ = 1,
      where the digit is the label, it is the floor of a student that only knows the
      digit. Compare it with the trained students' final KD loss (``curves["kd"]``).
    """
    import torch
    import torch.nn.functional as F

    from .worlds import build_world
    from .teacher import build_teacher

    if not isinstance(passes, int) or passes < 1:
        raise ReproError(f"passes={passes!r} must be a positive integer")
    world = build_world(cfg.data, cfg.seed)
    teacher = build_teacher(cfg, progress=False).to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    t = float(cfg.temperature)
    probs, labels, digits = [], [], []
    with torch.no_grad():
        for _ in range(passes):
            for x, y, d in world.batches("train", 256, shuffle=True, generator=gen):
                x = x.to(device).contiguous(memory_format=torch.channels_last)
                probs.append(F.softmax(teacher(x).float() / t, dim=1).cpu().double())
                labels.append(y)
                digits.append(d)
    p, y, d = torch.cat(probs), torch.cat(labels), torch.cat(digits)
    return {
        "agreement": float((p.argmax(1) == y).double().mean()),
        "top_probability": float(p.max(1).values.mean()),
        "digit_only_floor": group_kd_floor(p, d, t),
        "images_scored": int(len(p)),
        "passes": passes,
        "temperature": t,
    }


def group_kd_floor(probs, groups, temperature: float) -> float:
    """``T² · mean_i KL(p_i ‖ p̄_{g(i)})``: the smallest mean KD loss of any prediction
    that depends on the group alone (``p̄_g``, the mean of the group's ``p_i``, minimises
    ``Σ_i KL(p_i ‖ q)`` over distributions ``q``). ``probs``: [N, K] teacher
    probabilities at the temperature; ``groups``: [N] integer group of each row."""
    import torch

    p = torch.as_tensor(probs, dtype=torch.float64)
    g = torch.as_tensor(groups)
    total = 0.0
    for value in torch.unique(g):
        rows = p[g == value]
        mean = rows.mean(0, keepdim=True)
        total += float((rows * (rows.clamp_min(1e-300).log() - mean.clamp_min(1e-300).log())).sum())
    return float(temperature) ** 2 * total / len(p)


def _stats(values: Sequence[float]) -> dict[str, float]:
    from .verdicts import seed_stats

    mean, std, n = seed_stats(values)
    return {"mean": mean, "std": std, "n": n}


def rung_report(variant: str, runs: Sequence[dict], long_runs: Sequence[dict],
                signals: dict[str, dict], preset: str = "quick",
                overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """One rung's numbers from its runs' metrics (each a ``metrics.json`` dict).

    ``runs``: KD at ρ ∈ {0, 1}; ``long_runs``: KD at ρ = 0 with 3x the steps;
    ``signals``: :func:`teacher_signal` per ρ (``"0"``, ``"1"``), averaged over seeds.
    """
    from . import verdicts
    from .config import get_variant

    var = get_variant("mini", variant)
    cfg = make_config("mini", preset, variant, **dict(overrides or {}))
    rows = []
    for m in runs:
        c = m["config"]
        curves = m.get("curves") or {}
        rows.append({
            "rho": float(c["data"]["contamination_rate"]), "seed": int(c["seed"]),
            "test_accuracy": m["test_accuracy"], "nonoracle_test_accuracy": m["nonoracle_test_accuracy"],
            "predicts_digit_differs": m.get("predicts_digit_differs"),
            "nonoracle_predicts_digit_differs": m.get("nonoracle_predicts_digit_differs"),
            "val_accuracy": m["val_accuracy"], "best_epoch": m["best_epoch"],
            "nonoracle_best_epoch": m.get("nonoracle_best_epoch"),
            "final_kd_loss": (curves.get("kd") or [math.nan])[-1],
            "teacher_test_accuracy": m["teacher_test_accuracy"],
            "optimizer_steps": m["optimizer_steps"], "seconds": m.get("seconds"),
            "threads": m.get("threads"), "config_key": m["config_key"],
        })
    rows.sort(key=lambda r: (r["rho"], r["seed"]))

    def by_seed(rho, col):
        return {r["seed"]: r[col] for r in rows if r["rho"] == rho}

    drops = {sel: verdicts.rung_drop(var.rung, by_seed(0.0, col), by_seed(1.0, col)).to_dict()
             for sel, col in (("oracle", "test_accuracy"), ("nonoracle", "nonoracle_test_accuracy"))}
    means = {}
    for rho in LADDER_RHOS:
        sel = [r for r in rows if r["rho"] == rho]
        means[f"{rho:g}"] = {col: _stats([r[col] for r in sel]) for col in (
            "test_accuracy", "nonoracle_test_accuracy", "predicts_digit_differs",
            "nonoracle_predicts_digit_differs", "final_kd_loss", "teacher_test_accuracy", "best_epoch")}
    short = {r["seed"]: r["test_accuracy"] for r in rows if r["rho"] == 0.0}
    long = {int(m["config"]["seed"]): m["test_accuracy"] for m in long_runs}
    seeds = sorted(set(short) & set(long))
    convergence = None
    if seeds:
        gain = sum(long[s] - short[s] for s in seeds) / len(seeds)
        convergence = {"factor": CONVERGENCE_FACTOR, "seeds": seeds,
                       "test_accuracy": sum(short[s] for s in seeds) / len(seeds),
                       "test_accuracy_long": sum(long[s] for s in seeds) / len(seeds),
                       "long_minus_short": gain, "within": abs(gain) <= CONVERGENCE_TOLERANCE,
                       "optimizer_steps_long": long_runs[0]["optimizer_steps"] if long_runs else None}
    sizes = split_sizes(cfg.data)
    return {
        "rung": var.rung, "variant": var.to_dict(), "preset": preset,
        "world": {"teacher_recipe": cfg.teacher_recipe, "crop_scale": list(cfg.data.crop_scale),
                  "lr": cfg.lr, "optimizer_steps": optimizer_steps(cfg),
                  "train_per_class": round(sizes["train"] / len(cfg.data.subtask_classes)),
                  "val_images": sizes["val"], "test_images": sizes["test"],
                  "artifact_size": cfg.data.artifact_size, "temperature": cfg.temperature},
        "method": "kd", "runs": rows, "means": means, "drop": drops,
        "convergence": convergence, "teacher_signal": signals,
    }


# -- the book's reading of the ladder ------------------------------------------------

def load_ladder(results_dir) -> dict[str, Any] | None:
    """``precondition-ladder.json`` under ``results_dir`` with each tried rung's file
    under ``"reports"`` (by rung), or ``None`` when the ladder has not been run there."""
    import json
    from pathlib import Path

    path = Path(results_dir) / "precondition-ladder.json"
    if not path.exists():
        return None
    ladder = json.loads(path.read_text())
    ladder["reports"] = {}
    for t in ladder.get("tried", []):
        f = Path(results_dir) / t["file"]
        if f.exists():
            ladder["reports"][t["rung"]] = json.loads(f.read_text())
    return ladder


def _pm(stat: dict | None, scale: float = 100.0, digits: int = 1) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    sd = stat.get("std")
    return (f"{scale * stat['mean']:.{digits}f}" + (f" ± {scale * sd:.{digits}f}" if sd is not None else ""))


def ladder_table(ladder: dict[str, Any]):
    """One row per rung tried, in ladder order: what was changed, KD at ρ = 0 and 1 (%),
    the drop under both rules (mean ± standard error, points), the share of digit≠label
    test images KD at ρ = 1 predicts as their digit, the teacher's signal at ρ = 1 and
    the convergence check; ``met`` is the rule's per-rung decision."""
    import pandas as pd

    rows = []
    for t in ladder.get("tried", []):
        r = ladder.get("reports", {}).get(t["rung"], {})
        means = r.get("means", {})
        m0, m1 = means.get("0", {}), means.get("1", {})
        sig = (r.get("teacher_signal") or {}).get("1", {})
        conv = r.get("convergence") or {}
        d_or, d_no = t["drop_oracle"], t["drop_nonoracle"]
        rows.append({
            "rung": t["rung"], "variant": t["variant"],
            "what changes": (r.get("variant") or {}).get("description", ""),
            "KD ρ=0 (%)": _pm(m0.get("test_accuracy")),
            "KD ρ=1 (%)": _pm(m1.get("test_accuracy")),
            "KD ρ=1, non-oracle (%)": _pm(m1.get("nonoracle_test_accuracy")),
            "drop, oracle (points)": f"{100 * d_or['mean']:.1f} ± {100 * (d_or['se'] or 0):.1f}",
            "drop, non-oracle (points)": f"{100 * d_no['mean']:.1f} ± {100 * (d_no['se'] or 0):.1f}",
            "follows the digit (%)": _pm(m1.get("predicts_digit_differs")),
            "teacher = label (%)": "–" if sig.get("agreement") is None else f"{100 * sig['agreement']:.1f}",
            "teacher top p": "–" if sig.get("top_probability") is None else f"{sig['top_probability']:.2f}",
            "digit-only KD floor": "–" if sig.get("digit_only_floor") is None else f"{sig['digit_only_floor']:.2f}",
            "final KD loss": _pm(m1.get("final_kd_loss"), scale=1.0, digits=3),
            "teacher test (%)": _pm(m1.get("teacher_test_accuracy")),
            "3× steps, ρ=0 (points)": ("–" if not conv else f"{100 * conv['long_minus_short']:+.1f}"
                                        + ("" if conv.get("within") else f" (not within {100 * CONVERGENCE_TOLERANCE:g})")),
            "met": bool(d_or.get("met")),
        })
    return pd.DataFrame(rows)


def finding_precondition(ladder: dict[str, Any] | None, variant: str | None) -> str:
    """The results page's opening sentence: the rule's outcome, and whether the book's
    world (``variant``) is the rung the rule chose."""
    if ladder is None:
        return ("The precondition ladder has not been run here (`python benchmarks/precondition.py`), "
                "so this page cannot say whether output-only KD takes the shortcut in this world.")
    choice = ladder["choice"]
    text = choice["sentence"]
    tried = ", ".join(f"({t['rung']}) {t['variant']}" for t in ladder.get("tried", []))
    text += f" Rungs tried, in order: {tried}."
    if variant is not None and variant != ladder.get("chosen_variant"):
        text += (f" **This build runs on world variant {variant!r}, not on the rung the rule chose "
                 f"({ladder.get('chosen_variant')!r}).**")
    return text


# -- the contrast: the world where the shortcut does not tempt -----------------------

CONTRAST_VARIANT = "one-epoch-teacher"   # rung (a), the first book's world


def contrast_grid(preset: str = "quick", variant: str = CONTRAST_VARIANT) -> SweepGrid:
    """KD and SubDistill at the authors' λ = 100, ρ ∈ {0, 1}, on the contrast world:
    the quick grid's own cells there (the smoke preset: one seed, λ = 1, its numbers
    mean nothing). Trained only after the main world was frozen."""
    from .grids import AUTHORS_LAMBDA

    smoke = preset == "smoke"
    return SweepGrid(name=f"contrast-{variant}", run_preset=preset, methods=("kd", "subdistill"),
                     rhos=LADDER_RHOS, seeds=(1,) if smoke else (1, 2, 3),
                     lambdas=(1.0,) if smoke else (AUTHORS_LAMBDA,), world_variant=variant,
                     note=f"the contrast world ({variant}): KD and SubDistill at one λ")


def contrast_effects(results, lam: float, selection: str = "oracle"):
    """KD's drop (ρ = 0 minus ρ = 1) and SubDistill − KD at ρ = 1 at layer weight
    ``lam``, paired by seed: mean, standard error and seeds, one row per effect.
    ``results``: a results table (:func:`reprolib.sweep.run_sweep`)."""
    import numpy as np
    import pandas as pd

    from .results import SELECTIONS
    from .verdicts import rung_drop

    col = SELECTIONS[selection][1]
    kd = results[results["method"] == "kd"]
    sd = results[(results["method"] == "subdistill") & np.isclose(results["lambda_layer"].astype(float), lam)]

    def per_seed(df, rho):
        d = df[np.isclose(df["rho"].astype(float), rho)]
        return dict(zip(d["seed"].astype(int), d[col].astype(float)))

    rows = []
    for name, a, b in (("KD at ρ = 0 − KD at ρ = 1", per_seed(kd, 0.0), per_seed(kd, 1.0)),
                       ("SubDistill − KD at ρ = 1", per_seed(sd, 1.0), per_seed(kd, 1.0))):
        d = rung_drop(name, a, b)   # the paired per-seed difference a - b, as the ladder's drop
        rows.append({"effect": name, "selection": selection, "mean": d.mean, "se": d.se, "n_seeds": d.n})
    return pd.DataFrame(rows)


def contrast_table(results_by_world: dict, lam: float):
    """:func:`contrast_effects` under both selection rules for each world (``{label:
    results}``), one row per (world, selection, effect), as chapter 4 shows it."""
    import pandas as pd

    from .results import SELECTIONS
    from .verdicts import fmt_points

    rows = []
    for label, results in results_by_world.items():
        for selection in SELECTIONS:
            for _, r in contrast_effects(results, lam, selection).iterrows():
                rows.append({"world": label, "selection": selection, "effect": r["effect"],
                             "points": fmt_points(r["mean"], r["se"]), "seeds": r["n_seeds"]})
    return pd.DataFrame(rows)


def ladder_knobs(ladder: dict | None, world: str = "mini") -> list[dict[str, Any]]:
    """The knobs the tried rungs turned, by how much each moved output-only KD's drop
    (oracle rule) away from the main world's: one entry per tried rung other than the main
    one, ``{"rung", "variant", "knob"`` (the config fields it sets differently from the main
    variant), ``"drop", "main_drop", "moved"`` (drop − main_drop)}``, largest ``|moved|`` first.
    Chapter 11's map takes its two axes from the first two."""
    from .config import MAIN_VARIANT, VARIANTS

    if not ladder:
        return []
    main = MAIN_VARIANT.get(world)
    table = VARIANTS.get(world, {})
    drops = {r["rung"]: r["mean"] for r in ladder.get("choice", {}).get("rungs", [])}
    variants = {t["rung"]: t["variant"] for t in ladder.get("tried", [])}
    main_rung = next((rung for rung, v in variants.items() if v == main), None)
    if main_rung is None or main_rung not in drops:
        return []
    main_fields = table[main].field_dict()
    out = []
    for rung, v in variants.items():
        if rung == main_rung or rung not in drops or v not in table:
            continue
        fields = table[v].field_dict()
        knob = sorted(k for k in set(fields) | set(main_fields) if fields.get(k) != main_fields.get(k))
        out.append({"rung": rung, "variant": v, "knob": knob, "drop": drops[rung], "main_drop": drops[main_rung],
                    "moved": drops[rung] - drops[main_rung]})
    return sorted(out, key=lambda k: -abs(k["moved"]))

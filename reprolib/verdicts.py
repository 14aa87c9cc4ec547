"""The rules that turn the sweep's and the explanations' numbers into verdicts.

One pure function per claim of the paper (Chormai, Müller, Montavon 2026): a table
in, a :class:`Verdict` out (its value ``"holds"``, ``"partly"``, ``"does not
hold"`` or ``"not tested"``, our number with its uncertainty and a one-line
reason). The rules are stated here, before any method is compared, and never
tuned to a result:

* Seed noise: a difference counts only when it is larger than the combined
  standard error of the two means (``sqrt(se_a**2 + se_b**2)``, ``se = std /
  sqrt(n_seeds)``). With one seed there is no noise estimate and the reason
  says so.
* Every accuracy claim is judged separately under the oracle and the non-oracle
  selection rule (the ``selection`` column of the :func:`reprolib.results.select_lambda`
  summary); :func:`results_at_a_glance` puts them side by side.

Input tables:

* ``summary``: ``pd.concat([results.select_lambda(table, s) for s in results.SELECTIONS])``
  (columns ``selection, method, rho, lambda_layer, n_seeds, test_accuracy_mean,
  test_accuracy_std, predicts_digit_mean, predicts_digit_std, ...``).
* ``knn_summary``: :func:`reprolib.explain.explain_sweep`'s ``knn_summary``
  (``method, rho, knn_class_mean, knn_class_std, knn_digit_mean, knn_digit_std``
  and optionally ``n_seeds``).
* ``lrp_summary``: its ``lrp_summary`` (``method, rho, corr_mean,
  corr_ci_low, corr_ci_high, digit_share_student, digit_share_teacher, n_seeds``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from .config import BASELINES, METHOD_SHORT, PROPOSED

HOLDS, PARTLY, FAILS, UNTESTED = "holds", "partly", "does not hold", "not tested"
CHANCE = 0.2            # five subtask classes
SELECTION_NAMES = {"oracle": "oracle", "nonoracle": "non-oracle"}

# The paper's statements, as the book quotes them.
PAPER = {
    "a": "SubDistill keeps more than 90 % test accuracy at ρ = 0.5.",
    "b": "At ρ = 1, SubDistill beats the baselines by 15–38 accuracy points.",
    "c": "At ρ = 1, some baselines fall to near chance (20 %).",
    "d": "t-SNE of SubDistill's features clusters by class, not by the digit.",
    "e": "SubDistill's LRP heatmaps correlate positively with the teacher's; the other methods' negatively.",
}
CLAIMS = {
    "a": "SubDistill > 90 % at ρ = 0.5",
    "b": "SubDistill beats baselines at ρ = 1",
    "c": "Baselines near chance at ρ = 1",
    "d": "Features cluster by class, not digit",
    "e": "Relevance correlation: SubDistill +, others −",
}


@dataclass(frozen=True)
class Verdict:
    """One claim judged under one selection rule."""

    key: str                 # "a".."e"
    claim: str               # short name of the claim
    paper: str               # the paper's statement
    verdict: str             # HOLDS, PARTLY, FAILS or UNTESTED
    value: str               # our number with its uncertainty
    reason: str              # one line: why this verdict
    selection: str = "oracle"

    @property
    def sentence(self) -> str:
        return f"{self.claim}: {self.verdict} ({SELECTION_NAMES.get(self.selection, self.selection)} " \
               f"selection). {self.reason}"

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------
# Small helpers (pure)
def name(method: str) -> str:
    return METHOD_SHORT.get(method, method)


def standard_error(std: float, n: int) -> float:
    """``std / sqrt(n)``; 0 when there is one seed or no std (no noise estimate)."""
    if n is None or n < 2 or std is None or not math.isfinite(float(std)):
        return 0.0
    return float(std) / math.sqrt(n)


def combined_se(*ses: float) -> float:
    return math.sqrt(sum(float(s) ** 2 for s in ses))


def exceeds(diff: float, se: float) -> bool:
    """A difference counts only when it is larger than its standard error."""
    return math.isfinite(diff) and diff > se


def fmt_pm(mean: float, se: float, digits: int = 3) -> str:
    if not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def fmt_points(diff: float, se: float) -> str:
    if not math.isfinite(diff):
        return "–"
    return f"{diff * 100:+.1f} ± {se * 100:.1f} points"


@dataclass(frozen=True)
class Cell:
    """A (method, ρ) cell of the selection summary: mean, std, seeds, standard error."""

    mean: float
    std: float
    n: int
    lam: float = math.nan

    @property
    def se(self) -> float:
        return standard_error(self.std, self.n)

    @property
    def ok(self) -> bool:
        return math.isfinite(self.mean)


MISSING = Cell(math.nan, math.nan, 0)


def cell(summary, method: str, rho: float, selection: str = "oracle",
         metric: str = "test_accuracy") -> Cell:
    """The mean/std/n of ``metric`` for one (method, ρ) under one selection rule."""
    if summary is None or len(summary) == 0:
        return MISSING
    d = summary
    if "selection" in d.columns:
        d = d[d["selection"] == selection]
    d = d[(d["method"] == method) & ((d["rho"].astype(float) - float(rho)).abs() < 1e-9)]
    if len(d) == 0 or f"{metric}_mean" not in d.columns:
        return MISSING
    r = d.iloc[0]
    n = int(r["n_seeds"]) if "n_seeds" in d.columns and _finite(r["n_seeds"]) else 1
    lam = float(r["lambda_layer"]) if "lambda_layer" in d.columns and _finite(r["lambda_layer"]) else math.nan
    std = r.get(f"{metric}_std", math.nan)
    return Cell(float(r[f"{metric}_mean"]), float(std) if _finite(std) else math.nan, n, lam)


def _finite(x) -> bool:
    try:
        return math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def seed_stats(values) -> tuple[float, float, int]:
    """Mean, standard deviation (ddof 1) and count of the finite values among ``values`` (one
    per seed); the deviation is NaN for a single value and both are NaN for none. The one
    seed statistic of the verdicts and the ladder (:mod:`reprolib.precondition`)."""
    v = [float(x) for x in values if _finite(x)]
    if not v:
        return math.nan, math.nan, 0
    mean = sum(v) / len(v)
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else math.nan
    return mean, std, len(v)


def _seed_note(*cells: Cell) -> str:
    n = min((c.n for c in cells if c.ok), default=0)
    return " One seed: no seed-noise estimate." if n < 2 else ""


def _methods(summary, selection: str, rho: float) -> list[str]:
    d = summary[summary["selection"] == selection] if "selection" in summary.columns else summary
    d = d[(d["rho"].astype(float) - float(rho)).abs() < 1e-9]
    present = list(dict.fromkeys(d["method"]))
    order = [m for m in (*BASELINES, PROPOSED) if m in present]
    return order + [m for m in present if m not in order]


def _untested(key: str, why: str, selection: str) -> Verdict:
    return Verdict(key, CLAIMS[key], PAPER[key], UNTESTED, "–", why[:1].upper() + why[1:], selection)


# ---------------------------------------------------------------------------
# (a) SubDistill > 90 % at ρ = 0.5: literal and relative-to-ρ=0 readings
def claim_accuracy_at_half(summary, selection: str = "oracle", threshold: float = 0.90,
                           tolerance: float = 0.02, rho: float = 0.5) -> Verdict:
    """Holds: SubDistill's mean at ρ = 0.5 exceeds ``threshold`` by more than its
    standard error (the literal reading). Partly: the literal reading fails but the
    relative one holds: SubDistill at ρ = 0.5 is not lower than at ρ = 0 by more than
    ``tolerance`` or, if larger, the combined standard error (it keeps its clean
    accuracy; the mini world's teacher is weaker than the paper's). Otherwise it
    does not hold."""
    half, zero = cell(summary, "subdistill", rho, selection), cell(summary, "subdistill", 0.0, selection)
    if not half.ok:
        return _untested("a", f"no SubDistill run at ρ = {rho:g} in this sweep.", selection)
    literal = exceeds(half.mean - threshold, half.se)
    value = f"{fmt_pm(half.mean, half.se)} at ρ = {rho:g}"
    if zero.ok:
        drop = zero.mean - half.mean
        se = combined_se(zero.se, half.se)
        relative = not exceeds(drop, max(tolerance, se))
        value += f" (ρ = 0: {fmt_pm(zero.mean, zero.se)})"
        rel_text = (f"from ρ = 0 to ρ = {rho:g} it changes by {fmt_points(-drop, se)}, "
                    + ("within" if relative else "beyond") + f" {max(tolerance, se) * 100:.1f} points")
    else:
        relative, rel_text = False, "no ρ = 0 run to compare with"
    if literal:
        verdict = HOLDS
        reason = f"Above {threshold:.0%} by more than its standard error; {rel_text}."
    elif relative:
        verdict = PARTLY
        reason = (f"Not above {threshold:.0%} (literal reading fails), but {rel_text} "
                  f"(relative reading holds).")
    else:
        verdict = FAILS
        reason = f"Not above {threshold:.0%}, and {rel_text}."
    return Verdict("a", CLAIMS["a"], PAPER["a"], verdict, value, reason + _seed_note(half, zero), selection)


# ---------------------------------------------------------------------------
# (b) SubDistill beats the baselines by 15–38 points at ρ = 1
def claim_margin_over_baselines(summary, selection: str = "oracle", low: float = 0.15,
                                rho: float = 1.0) -> Verdict:
    """Per baseline, the gap = SubDistill − baseline at ρ = 1 with its combined
    standard error. Holds: every gap is larger than its standard error and reaches
    ``low`` (15 points) within it. Partly: SubDistill beats at least one baseline by
    more than the standard error. Does not hold: no gap is larger than its noise."""
    sd = cell(summary, "subdistill", rho, selection)
    if not sd.ok:
        return _untested("b", f"no SubDistill run at ρ = {rho:g} in this sweep.", selection)
    gaps = {}
    for m in _methods(summary, selection, rho):
        if m == "subdistill":
            continue
        b = cell(summary, m, rho, selection)
        if b.ok:
            gaps[m] = (sd.mean - b.mean, combined_se(sd.se, b.se), b)
    if not gaps:
        return _untested("b", f"no baseline at ρ = {rho:g} in this sweep.", selection)
    value = ", ".join(f"{name(m)} {fmt_points(g, se)}" for m, (g, se, _) in gaps.items())
    beaten = [m for m, (g, se, _) in gaps.items() if exceeds(g, se)]
    big = [m for m, (g, se, _) in gaps.items() if exceeds(g, se) and g + se >= low]
    if len(big) == len(gaps):
        verdict = HOLDS
        reason = f"SubDistill beats every baseline beyond seed noise, each by about {low * 100:.0f} points or more."
    elif beaten:
        verdict = PARTLY
        smallest = min(gaps, key=lambda m: gaps[m][0])
        reason = (f"SubDistill beats {', '.join(name(m) for m in beaten)} beyond seed noise, but not every "
                  f"baseline by {low * 100:.0f} points (smallest gap: {name(smallest)} "
                  f"{gaps[smallest][0] * 100:+.1f}).")
    else:
        verdict = FAILS
        best = max(gaps, key=lambda m: gaps[m][0])
        reason = (f"No gap is larger than its standard error (largest: {name(best)} "
                  f"{fmt_points(*gaps[best][:2])}).")
    return Verdict("b", CLAIMS["b"], PAPER["b"], verdict, value,
                   reason + _seed_note(sd, *(c for _, _, c in gaps.values())), selection)


# ---------------------------------------------------------------------------
# (c) Some baselines fall to near chance at ρ = 1
def claim_baselines_near_chance(summary, selection: str = "oracle", chance: float = CHANCE,
                                near: float = 0.10, rho: float = 1.0) -> Verdict:
    """Take the worst baseline at ρ = 1. Holds: its mean test accuracy is within
    ``near`` (10 points) of chance. Partly: it is not, but some baseline follows the
    digit beyond chance (its predicts-its-digit rate exceeds ``chance`` by more
    than its standard error): the shortcut is learned, not to the point of chance.
    Does not hold: neither."""
    accs = {m: cell(summary, m, rho, selection) for m in _methods(summary, selection, rho)
            if m != "subdistill"}
    accs = {m: c for m, c in accs.items() if c.ok}
    if not accs:
        return _untested("c", f"no baseline at ρ = {rho:g} in this sweep.", selection)
    worst = min(accs, key=lambda m: accs[m].mean)
    w = accs[worst]
    value = f"worst baseline {name(worst)} {fmt_pm(w.mean, w.se)} (chance {chance:.2f})"
    follow = {m: cell(summary, m, rho, selection, "predicts_digit") for m in accs}
    follow = {m: c for m, c in follow.items() if c.ok}
    followers = [m for m, c in follow.items() if exceeds(c.mean - chance, c.se)]
    if w.mean <= chance + near:
        verdict, reason = HOLDS, (f"{name(worst)} is within {near * 100:.0f} points of chance "
                                  f"({(w.mean - chance) * 100:+.1f}).")
    elif followers:
        top = max(followers, key=lambda m: follow[m].mean)
        verdict = PARTLY
        reason = (f"No baseline is near chance ({name(worst)} is {(w.mean - chance) * 100:.1f} points above it), "
                  f"but {', '.join(name(m) for m in followers)} follow the digit beyond chance "
                  f"({name(top)} predicts it on {follow[top].mean:.0%} of digit-bearing images).")
    else:
        verdict = FAILS
        reason = (f"No baseline is near chance ({name(worst)} is {(w.mean - chance) * 100:.1f} points above it) "
                  "and none follows the digit beyond chance." if follow else
                  f"No baseline is near chance ({name(worst)} is {(w.mean - chance) * 100:.1f} points above it).")
    return Verdict("c", CLAIMS["c"], PAPER["c"], verdict, value, reason + _seed_note(w), selection)


# ---------------------------------------------------------------------------
# (d) t-SNE: SubDistill clusters by class, not digit (kNN agreement in feature space)
def _knn_rows(knn_summary, rho: float | None):
    if knn_summary is None or len(knn_summary) == 0:
        return None, None
    d = knn_summary[knn_summary["method"] != "teacher"]
    d = d[d["rho"].notna()]
    if len(d) == 0:
        return None, None
    top = float(d["rho"].max()) if rho is None else float(rho)
    d = d[(d["rho"].astype(float) - top).abs() < 1e-9]
    return d.set_index("method"), top


def _knn_margin(row, n: int) -> tuple[float, float]:
    margin = float(row["knn_class_mean"]) - float(row["knn_digit_mean"])
    se = combined_se(standard_error(row.get("knn_class_std", math.nan), n),
                     standard_error(row.get("knn_digit_std", math.nan), n))
    return margin, se


def claim_tsne_clusters(knn_summary, selection: str = "oracle", rho: float | None = None,
                        n_seeds: int | None = None) -> Verdict:
    """Margin = kNN class agreement − kNN digit agreement (k = 10, in feature space)
    at the highest ρ. Holds: SubDistill's margin is larger than its standard error
    and exceeds every other method's margin by more than the combined standard
    error. Partly: SubDistill's margin is positive beyond noise, but not larger than
    every other method's beyond noise. Does not hold: it is not positive beyond noise."""
    d, top = _knn_rows(knn_summary, rho)
    if d is None or "subdistill" not in d.index:
        return _untested("d", "no SubDistill student was explained.", selection)

    def n_of(m):
        if n_seeds is not None:
            return n_seeds
        return int(d.loc[m, "n_seeds"]) if "n_seeds" in d.columns and _finite(d.loc[m, "n_seeds"]) else 1

    margins = {m: _knn_margin(d.loc[m], n_of(m)) for m in d.index}
    sd, sd_se = margins["subdistill"]
    r = d.loc["subdistill"]
    value = (f"ρ = {top:g}: SubDistill class {float(r['knn_class_mean']):.3f}, digit "
             f"{float(r['knn_digit_mean']):.3f} (margin {sd:+.3f} ± {sd_se:.3f}); others' margins "
             + ", ".join(f"{name(m)} {v:+.3f}" for m, (v, _) in margins.items() if m != "subdistill"))
    others = {m: v for m, v in margins.items() if m != "subdistill"}
    beats_all = all(exceeds(sd - v, combined_se(sd_se, se)) for v, se in others.values())
    note = " One seed: no seed-noise estimate." if min(n_of(m) for m in d.index) < 2 else ""
    if exceeds(sd, sd_se) and beats_all and others:
        verdict, reason = HOLDS, "SubDistill's neighbours share the class more than the digit, more clearly than every other method's."
    elif exceeds(sd, sd_se):
        ahead = [name(m) for m, (v, se) in others.items() if not exceeds(sd - v, combined_se(sd_se, se))]
        verdict = PARTLY
        reason = ("SubDistill's neighbours share the class more than the digit, but "
                  + (", ".join(ahead) if ahead else "the others")
                  + (" does as much" if len(ahead) == 1 else " do as much") + " within seed noise." if others else
                  "SubDistill's neighbours share the class more than the digit; no other method to compare.")
    else:
        verdict, reason = FAILS, "SubDistill's neighbours do not share the class more than the digit beyond seed noise."
    return Verdict("d", CLAIMS["d"], PAPER["d"], verdict, value, reason + note, selection)


# ---------------------------------------------------------------------------
# (e) LRP: SubDistill's teacher–student heatmap correlation positive, the others' negative
def _corr(row) -> tuple[float, float, float]:
    mean = float(row["corr_mean"])
    lo = float(row["corr_ci_low"]) if "corr_ci_low" in row and _finite(row["corr_ci_low"]) else mean
    hi = float(row["corr_ci_high"]) if "corr_ci_high" in row and _finite(row["corr_ci_high"]) else mean
    return mean, lo, hi


def claim_lrp_correlation(lrp_summary, selection: str = "oracle", rho: float | None = None) -> Verdict:
    """A correlation is positive when its 95 % interval (bootstrap over images,
    averaged over seeds) lies above 0, negative when below. Holds: SubDistill's is
    positive and every other method's negative. Partly: SubDistill's is positive,
    the others' not all negative. Does not hold: SubDistill's is not positive."""
    if lrp_summary is None or len(lrp_summary) == 0:
        return _untested("e", "no student was explained with LRP.", selection)
    d = lrp_summary[lrp_summary["rho"].notna()]
    top = float(d["rho"].max()) if rho is None else float(rho)
    d = d[(d["rho"].astype(float) - top).abs() < 1e-9].set_index("method")
    if "subdistill" not in d.index:
        return _untested("e", "no SubDistill student was explained with LRP.", selection)
    corr = {m: _corr(d.loc[m]) for m in d.index}
    sd, sd_lo, sd_hi = corr["subdistill"]
    value = f"ρ = {top:g}: " + ", ".join(f"{name(m)} {c[0]:+.3f} [{c[1]:+.3f}, {c[2]:+.3f}]" for m, c in corr.items())
    others = {m: c for m, c in corr.items() if m != "subdistill"}
    negative = [m for m, c in others.items() if c[2] < 0]
    if sd_lo > 0 and others and len(negative) == len(others):
        verdict, reason = HOLDS, "SubDistill's correlation is positive and every other method's negative (95 % intervals)."
    elif sd_lo > 0:
        not_neg = [name(m) for m in others if m not in negative]
        verdict = PARTLY
        reason = ("SubDistill's correlation is positive, but " + ", ".join(not_neg) + " not negative (95 % intervals)."
                  if not_neg else "SubDistill's correlation is positive; no other method to compare.")
    else:
        verdict, reason = FAILS, (f"SubDistill's correlation is not positive: its 95 % interval "
                                  f"[{sd_lo:+.3f}, {sd_hi:+.3f}] reaches zero or below.")
    return Verdict("e", CLAIMS["e"], PAPER["e"], verdict, value, reason, selection)


# ---------------------------------------------------------------------------
# All claims, side by side
def all_verdicts(summary, knn: Mapping[str, object] | None = None,
                 lrp: Mapping[str, object] | None = None,
                 selections: Sequence[str] = ("oracle", "nonoracle")) -> list[Verdict]:
    """Every claim under every selection rule. ``knn``/``lrp`` map a selection name
    to that selection's explain summary (or are ``None``: claims (d), (e) untested)."""
    out = []
    for s in selections:
        out += [claim_accuracy_at_half(summary, s), claim_margin_over_baselines(summary, s),
                claim_baselines_near_chance(summary, s),
                claim_tsne_clusters((knn or {}).get(s), s), claim_lrp_correlation((lrp or {}).get(s), s)]
    return out


def results_at_a_glance(verdicts: Iterable[Verdict]):
    """The "Results at a glance" table: one row per claim, oracle and non-oracle
    selection side by side (columns: Claim, The paper, Our number, Our verdict, Why)."""
    import pandas as pd

    by_key: dict[str, dict[str, Verdict]] = {}
    for v in verdicts:
        by_key.setdefault(v.key, {})[v.selection] = v
    rows = []
    for key in sorted(by_key):
        vs = by_key[key]
        order = [s for s in ("oracle", "nonoracle") if s in vs] + [s for s in vs if s not in ("oracle", "nonoracle")]
        first = vs[order[0]]
        same_value = len({vs[s].value for s in order}) == 1
        if len(order) == 1 or same_value:
            number = first.value
        else:
            number = "; ".join(f"{SELECTION_NAMES.get(s, s)}: {vs[s].value}" for s in order)
        verdicts_text = " / ".join(f"{vs[s].verdict} ({SELECTION_NAMES.get(s, s)})" for s in order) \
            if len({vs[s].verdict for s in order}) > 1 else first.verdict
        reason = first.reason if len({vs[s].reason for s in order}) == 1 else \
            " ".join(f"{SELECTION_NAMES.get(s, s).capitalize()}: {vs[s].reason}" for s in order)
        rows.append({"Claim": f"({key}) {first.claim}", "The paper": first.paper, "Our number": number,
                     "Our verdict": verdicts_text, "Why": reason})
    return pd.DataFrame(rows, columns=["Claim", "The paper", "Our number", "Our verdict", "Why"])


def headline(verdicts: Iterable[Verdict], world: str = "mini", preset: str = "quick") -> str:
    """Two sentences: how many claims hold under the oracle rule (the paper's), and
    the central claim (b) with its number under both rules."""
    verdicts = list(verdicts)
    oracle = [v for v in verdicts if v.selection == "oracle" and v.verdict != UNTESTED]
    if not oracle:
        return (f"No claim of the paper could be tested with the {preset} sweep of the {world} world. "
                "Run the sweep and the explanations first.")
    n_all = len({v.key for v in verdicts})
    counts = {k: sum(v.verdict == k for v in oracle) for k in (HOLDS, PARTLY, FAILS)}
    words = {HOLDS: ("holds", "hold"), PARTLY: ("holds partly", "hold partly"),
             FAILS: ("does not hold", "do not hold")}
    parts = [f"{n} {words[k][0] if n == 1 else words[k][1]}" for k, n in counts.items() if n]
    judged = (f"Of the {n_all} claims of the paper that this book tests, {_join(parts)}" if len(oracle) == n_all else
              f"Of the {n_all} claims of the paper that this book tests, {len(oracle)} could be judged here: "
              f"{_join(parts)},")
    first = (f"{judged} in our {world}-world reproduction ({preset} preset; λ and checkpoint chosen by the "
             f"paper's oracle validation rule).")
    central = {v.selection: v for v in verdicts if v.key == "b"}
    if "oracle" in central and central["oracle"].verdict != UNTESTED:
        b = central["oracle"]
        second = f"The central claim, that SubDistill beats the baselines at ρ = 1, {_verb(b.verdict)}: {b.value}"
        nb = central.get("nonoracle")
        if nb is not None and nb.verdict != UNTESTED:
            if nb.verdict == b.verdict:
                second += ("; under non-oracle selection it does not hold either." if nb.verdict == FAILS
                           else f"; under non-oracle selection it {_verb(nb.verdict)} too.")
            else:
                second += f"; under non-oracle selection it {_verb(nb.verdict)}."
        else:
            second += "."
    else:
        second = "The central claim, that SubDistill beats the baselines at ρ = 1, was not tested."
    return first + " " + second


def _verb(verdict: str) -> str:
    return {HOLDS: "holds", PARTLY: "holds partly", FAILS: "does not hold"}.get(verdict, "was not tested")


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


# ---------------------------------------------------------------------------
# Findings read out in words (sentences generated from the numbers)
def finding_teacher_gap(summary, teacher_accuracy: float, selection: str = "oracle", rho: float = 0.0) -> str:
    """How far the students sit below the teacher at ρ (default 0)."""
    cells = {m: cell(summary, m, rho, selection) for m in _methods(summary, selection, rho)}
    cells = {m: c for m, c in cells.items() if c.ok}
    if not cells or not _finite(teacher_accuracy):
        return f"No student at ρ = {rho:g} to compare with the teacher."
    gaps = {m: (teacher_accuracy - c.mean) * 100 for m, c in cells.items()}
    lo, hi = min(gaps.values()), max(gaps.values())
    where = "below" if lo > 0 else "around"
    span = f"{lo:.0f}–{hi:.0f}" if round(lo) != round(hi) else f"{lo:.0f}"
    lo_acc, hi_acc = min(c.mean for c in cells.values()), max(c.mean for c in cells.values())
    accs = f"{lo_acc:.3f}–{hi_acc:.3f}" if round(lo_acc, 3) != round(hi_acc, 3) else f"{lo_acc:.3f}"
    return (f"At ρ = {rho:g} the students reach {accs}, {span} points {where} the teacher "
            f"({teacher_accuracy:.3f}) on the same test set.")


# finding_digit_following calls the shortcut partial when no baseline predicts the digit
# more than this far above chance (a share of digit-bearing test images).
MILD_SHORTCUT = 0.15


def finding_digit_following(summary, selection: str = "oracle", rho: float = 1.0, chance: float = CHANCE) -> str:
    """How often the students at ρ predict the painted digit, against chance."""
    f = {m: cell(summary, m, rho, selection, "predicts_digit") for m in _methods(summary, selection, rho)}
    f = {m: c for m, c in f.items() if c.ok}
    if not f:
        return f"No digit-bearing test images at ρ = {rho:g}."
    base = {m: c for m, c in f.items() if m != "subdistill"}
    text = ""
    if base:
        lo, hi = min(c.mean for c in base.values()), max(c.mean for c in base.values())
        above = [m for m, c in base.items() if exceeds(c.mean - chance, c.se)]
        span = f"{lo:.0%}–{hi:.0%}" if round(lo, 2) != round(hi, 2) else f"{lo:.0%}"
        noise = ("one seed, no noise estimate" if min(c.n for c in base.values()) < 2 else
                 (f"{', '.join(name(m) for m in above)} beyond seed noise" if above else "none beyond seed noise"))
        text = (f"At ρ = {rho:g} the baselines predict the painted digit on {span} of digit-bearing "
                f"test images (chance {chance:.0%}; {noise}). ")
        if hi - chance < MILD_SHORTCUT:
            # A statement of the measured share, not of the test's power: whether the methods
            # separate is finding_similar_methods' question, answered with seed noise.
            text += (f"Even the baseline that follows the digit most ({name(max(base, key=lambda m: base[m].mean))}) "
                     f"is within {MILD_SHORTCUT * 100:.0f} points of chance: the shortcut is partial. ")
    if "subdistill" in f:
        text += f"SubDistill: {f['subdistill'].mean:.0%}."
    return text.strip()


def finding_similar_methods(summary, selection: str = "oracle", rho: float = 1.0,
                            methods: Sequence[str] = ("kd", "at", "vid")) -> str:
    """Whether the given methods are indistinguishable within seed noise at ρ."""
    cells = {m: cell(summary, m, rho, selection) for m in methods}
    cells = {m: c for m, c in cells.items() if c.ok}
    if len(cells) < 2:
        return "Fewer than two of these methods ran; nothing to compare."
    ms = list(cells)
    pairs = [(a, b) for i, a in enumerate(ms) for b in ms[i + 1:]]
    differ = [(a, b) for a, b in pairs
              if exceeds(abs(cells[a].mean - cells[b].mean), combined_se(cells[a].se, cells[b].se))]
    spread = (max(c.mean for c in cells.values()) - min(c.mean for c in cells.values())) * 100
    names_ = ", ".join(name(m) for m in ms)
    if not differ:
        return (f"At ρ = {rho:g}, {names_} lie within {spread:.1f} points of each other, no pair apart beyond "
                "seed noise: with these λ they behave as nearly the same network.")
    return (f"At ρ = {rho:g}, {names_} span {spread:.1f} points; "
            + ", ".join(f"{name(a)} vs {name(b)}" for a, b in differ) + " differ beyond seed noise.")


def finding_lambda_edges(summary, lambdas: Sequence[float], selection: str = "oracle") -> str:
    """Which chosen λ sit at an edge of the grid."""
    lambdas = sorted(float(x) for x in lambdas)
    d = summary[summary["selection"] == selection] if "selection" in summary.columns else summary
    d = d[d["method"] != "kd"]
    d = d[d["lambda_layer"].apply(_finite)]
    if len(d) == 0 or len(lambdas) < 2:
        return ("The λ grid has a single value: nothing was selected." if len(lambdas) < 2
                else "No method with a layer weight ran.")
    low = d[(d["lambda_layer"].astype(float) - lambdas[0]).abs() < 1e-12]
    high = d[(d["lambda_layer"].astype(float) - lambdas[-1]).abs() < 1e-12]
    n = len(d)
    text = (f"Of {n} choices of λ (method × ρ), {len(low)} sit at the grid's lower edge (λ = {lambdas[0]:g}) and "
            f"{len(high)} at its upper edge (λ = {lambdas[-1]:g}).")
    if len(low) + len(high) > n / 2:
        text += " Most choices are at an edge, so the best λ may lie outside the grid."
    return text


def finding_digit_patch(lrp_summary, rho: float | None = None) -> str:
    """Which method puts the least positive relevance on the digit patch."""
    if lrp_summary is None or len(lrp_summary) == 0 or "digit_share_student" not in lrp_summary:
        return "No LRP relevance was computed."
    d = lrp_summary[lrp_summary["rho"].notna()]
    top = float(d["rho"].max()) if rho is None else float(rho)
    d = d[(d["rho"].astype(float) - top).abs() < 1e-9].set_index("method")["digit_share_student"].astype(float)
    if len(d) == 0:
        return f"No LRP relevance at ρ = {top:g}."
    least = d.idxmin()
    others = d.drop(least)
    teacher = lrp_summary["digit_share_teacher"].dropna()
    text = f"At ρ = {top:g}, {name(least)} puts the least positive relevance on the digit patch ({d[least]:.3f}"
    if len(others) == 1:
        text += f" vs {others.iloc[0]:.3f} for {name(others.index[0])}"
    elif len(others):
        text += f" vs {others.min():.3f}–{others.max():.3f} for the others"
    text += ")"
    if len(teacher):
        text += f"; the teacher puts {float(teacher.iloc[0]):.3f} there"
    return text + "."


def finding_subspace_digit_share(energy, random_col: str = "in_random_K_subspace",
                                 share_col: str = "digit_energy_in_U_K") -> str:
    """The share of the digit's effect on the teacher's features inside U_K."""
    if energy is None or len(energy) == 0:
        return "The digit's share in the subspace was not measured."
    s = energy[share_col].astype(float)
    r = energy[random_col].astype(float)
    return (f"The relevant subspace keeps {s.min():.0%}–{s.max():.0%} of the digit's effect on the teacher's "
            f"features (a random subspace of the same size: {r.min():.0%}–{r.max():.0%}).")


def finding_subspace(diagnostics, energy) -> str:
    """Chapter 2's verdict: the variance the subspaces keep, what a rank-K layer costs the
    teacher (``diagnostics``: :func:`reprolib.subspace.subspace_table`), and where the
    digit's effect lies (``energy``: :func:`reprolib.subspace.digit_energy_table`). The
    digit counts as passing through the subspace when its smallest share inside U_K exceeds
    the largest share inside a random subspace of the same size."""
    share = diagnostics["variance share in U_K"]
    drop = (diagnostics["teacher accuracy, unmodified"] - diagnostics["teacher accuracy, rank-K layer"]).max()
    return (
        f"The subspaces keep {share.min():.0%}–{share.max():.0%} of the teacher's variance at K/d ≤ "
        f"{diagnostics['K/d'].max():.2f}, and replacing a layer by its rank-K reconstruction costs the teacher at "
        f"most {drop * 100:.1f} accuracy points: the subspace holds what the teacher uses. "
        + finding_subspace_digit_share(energy)
        + (" Most of the digit's effect therefore passes through the subspace that SubDistill distils, so the "
           "subspace alone cannot keep the shortcut out; what the student does with it is measured in chapter 4."
           if energy["digit_energy_in_U_K"].min() > energy["in_random_K_subspace"].max() else
           " The digit's effect is not concentrated in the subspace."))


def finding_student_pairs(pairs, default: str = "mini-student", wide: str = "mini-student-wide") -> str:
    """The variance share and the digit's share inside U_K for the default and the wide
    student (``pairs``: :func:`reprolib.subspace.student_pair_table`)."""
    digit = pairs.groupby("student")["digit's effect inside U_K"].agg(["min", "max"])
    var = pairs.groupby("student")["variance share in U_K"].agg(["min", "max"])
    kd = pairs.groupby("student")["K/d"].max()

    def span(t, s):
        return f"{t.loc[s, 'min']:.0%}–{t.loc[s, 'max']:.0%}"

    return (f"At K/d = {kd[default]:.2g} (the default student) the subspace holds {span(var, default)} of the "
            f"teacher's variance and {span(digit, default)} of the digit's effect; at K/d = {kd[wide]:.2g} (the wide "
            f"student) {span(var, wide)} of the variance and {span(digit, wide)} of the digit's effect.")


# ---------------------------------------------------------------------------
# The calibration curve's numbers
def calibration_size_column(runs) -> str:
    """The column that varies along the calibration curve: ``train_per_class`` (the
    training images per class, at a fixed step budget) when the table has it and it
    varies, else ``pool_per_class``."""
    if "train_per_class" in runs.columns and runs["train_per_class"].nunique(dropna=True) > 1:
        return "train_per_class"
    return "pool_per_class"


def calibration_effects(runs, selection: str = "oracle"):
    """Per data size, two effects computed per seed and then averaged: SubDistill −
    KD at ρ = 1 and KD at ρ = 0 − KD at ρ = 1 (test accuracy at the λ selected per
    (method, ρ, size) by ``selection``). The size is :func:`calibration_size_column`.
    Returns a long table: <size column>, effect, mean, std (ddof 1; NaN for one
    seed), n_seeds, se."""
    import numpy as np
    import pandas as pd

    from .results import SELECTIONS, select_lambda

    size = calibration_size_column(runs)
    test_col = SELECTIONS[selection][1]
    keys = ["method", "rho", size]
    # λ is chosen per size (select_lambda may or may not group by this column)
    chosen = pd.concat([select_lambda(g, selection).assign(**{size: v})
                        for v, g in runs.groupby(size, sort=True)], ignore_index=True)
    chosen = chosen[keys + ["lambda_layer"]].drop_duplicates(keys)
    merged = runs.merge(chosen.rename(columns={"lambda_layer": "_chosen"}), on=keys)
    keep = (merged["method"] == "kd") | np.isclose(merged["lambda_layer"].astype(float),
                                                   merged["_chosen"].astype(float))
    acc = merged[keep].pivot_table(index=[size, "seed"], columns=["method", "rho"], values=test_col)
    effects = {}
    if ("subdistill", 1.0) in acc and ("kd", 1.0) in acc:
        effects["subdistill_minus_kd_at_rho1"] = acc[("subdistill", 1.0)] - acc[("kd", 1.0)]
    if ("kd", 0.0) in acc and ("kd", 1.0) in acc:
        effects["kd_drop_rho0_to_rho1"] = acc[("kd", 0.0)] - acc[("kd", 1.0)]
    rows = []
    for name_, series in effects.items():
        for value, g in series.dropna().groupby(level=size):
            mean, std, n = seed_stats(g)
            rows.append({size: int(value), "effect": name_, "mean": mean, "std": std,
                         "n_seeds": n, "se": standard_error(std, n)})
    return pd.DataFrame(rows, columns=[size, "effect", "mean", "std", "n_seeds", "se"])


def finding_calibration(effects) -> str:
    """Where along the pool sizes SubDistill's advantage is larger than its noise."""
    if effects is None or len(effects) == 0:
        return "The calibration curve was not computed."
    if int(effects["n_seeds"].min()) < 2:
        return ("With one seed per size there is no estimate of seed noise, so the curve cannot say where an "
                "effect is real.")
    size = "train_per_class" if "train_per_class" in effects.columns else "pool_per_class"
    unit = "training images per class" if size == "train_per_class" else "images per class"
    d = effects[effects["effect"] == "subdistill_minus_kd_at_rho1"].sort_values(size)
    k = effects[effects["effect"] == "kd_drop_rho0_to_rho1"].sort_values(size)
    parts = []
    if len(d):
        pos = [int(p) for p, m, se in zip(d[size], d["mean"], d["se"]) if exceeds(m, se)]
        neg = [int(p) for p, m, se in zip(d[size], d["mean"], d["se"]) if exceeds(-m, se)]
        parts.append("SubDistill beats KD at ρ = 1 beyond seed noise at "
                     + (", ".join(map(str, pos)) + f" {unit}" if pos else "no size")
                     + (f" and loses to it at {', '.join(map(str, neg))}" if neg else "")
                     + f" (gap {d['mean'].min() * 100:+.1f} to {d['mean'].max() * 100:+.1f} points)")
    if len(k):
        drops = [int(p) for p, m, se in zip(k[size], k["mean"], k["se"]) if exceeds(m, se)]
        parts.append("KD loses accuracy from ρ = 0 to ρ = 1 beyond seed noise at "
                     + (", ".join(map(str, drops)) + f" {unit}" if drops else "no size"))
    return "; ".join(parts) + "."


def finding_convergence(curves, rho: float = 0.0, tolerance: float = 0.02) -> str:
    """Whether the validation curves have flattened: per method at ρ, the change of
    the mean (over seeds) validation accuracy over the last quarter of training.
    ``curves`` is :func:`reprolib.figures.load_curves`'s table."""
    if curves is None or len(curves) == 0:
        return "No validation curves were recorded."
    d = curves[(curves["rho"].astype(float) - rho).abs() < 1e-9]
    if len(d) == 0:
        return f"No run at ρ = {rho:g}."
    changes = {}
    for m, g in d.groupby("method", sort=False):
        mean = g.groupby("epoch")["val_accuracy"].mean().sort_index()
        if len(mean) < 2:
            continue
        last = mean.index[-1]
        at = mean.index[mean.index <= last * 0.75]
        ref = mean.loc[at[-1]] if len(at) else mean.iloc[0]
        changes[m] = float(mean.iloc[-1] - ref)
    if not changes:
        return "The runs are too short to judge convergence."
    text = (f"Over the last quarter of training at ρ = {rho:g}, the mean validation accuracy changes by "
            + ", ".join(f"{c * 100:+.1f} points ({name(m)})" for m, c in changes.items()) + ". ")
    rising = [name(m) for m, c in changes.items() if c > tolerance]
    if rising:
        return text + f"{', '.join(rising)} still gain more than {tolerance * 100:.0f} points: not converged."
    return text + f"Every curve has flattened (no gain above {tolerance * 100:.0f} points)."


def finding_convergence_rule(measured, older: dict, preset: str, run_cfg) -> str:
    """What the convergence benchmark measured for ``preset``'s current recipe
    (``measured``: (file name, table) from :func:`reprolib.results.load_convergence`, or
    None) and, in a sentence of its own, for earlier recipes (``older``)."""
    from .config import METHOD_LABELS, optimizer_steps

    if measured is not None:
        path, conv = measured
        rows = conv["table"]
        n_ok = int(sum(r["converged"] for r in rows))
        gains = [100 * r["long_minus_quick"] for r in rows]
        hardware = "an NVIDIA H200 GPU in fp32" if conv["device"].startswith("cuda") else "the CPU in fp32"
        text = (
            f"Measured once (`benchmarks/results/{path}`) for the {preset} preset ({rows[0]['steps']} optimiser steps "
            f"per run, learning rate {rows[0].get('lr', 1e-3):g}) at ρ = 0, seeds 1–3, "
            f"λ = {max(r['lambda_layer'] for r in rows):g} for every layer method (the authors' default), on "
            f"{hardware}: **{n_ok} of {len(rows)} methods meet the rule.** Three times the steps raises the mean test "
            f"accuracy by {min(gains):+.1f} to {max(gains):+.1f} points, so "
            + ("the quick preset's students are converged by this rule." if n_ok == len(rows) else
               "**the quick preset's students are not converged by this rule**: every number in this chapter is "
               "measured on students that would still improve with more training, and the verdicts below carry "
               "that caveat."))
    else:
        text = (f"The convergence benchmark has no measured table for this preset's recipe "
                f"({optimizer_steps(run_cfg)} steps, learning rate {run_cfg.lr:g}); run "
                f"`benchmarks/convergence.py --preset {preset}`.")
    if older:
        text += " Earlier recipes, measured the same way, are kept beside it: " + "; ".join(
            f"`{path}`: " + ", ".join(f"{METHOD_LABELS.get(r['method'], r['method'])} {100 * r['long_minus_quick']:+.1f}" for r in t["table"])
            + f" points at {t['table'][0]['steps']} steps, learning rate {t['table'][0].get('lr', 1e-3):g}"
            for path, t in older.items()) + "."
    return text


def calibration_text(cal_grid, cal_results, effects) -> str:
    """The calibration grid in one sentence (sizes, seeds, λ, whether the step budget is
    fixed), then :func:`finding_calibration`."""
    steps = cal_results["optimizer_steps"].dropna().unique() if "optimizer_steps" in cal_results else []
    lam_text = (f"λ is fixed at {cal_grid.lambdas[0]:g} (no selection)" if len(cal_grid.lambdas) == 1 else
                f"λ is selected per pool size among {{{', '.join(f'{l:g}' for l in cal_grid.lambdas)}}}")
    if len(steps) == 1:
        step_text = (f"every run takes the same {int(steps[0])} optimiser steps, so pool size is not confounded "
                     "with training length")
    elif len(steps) > 1:
        step_text = (f"the number of optimiser steps grows with the pool ({int(min(steps))}–{int(max(steps))}): "
                     "this grid does not fix the step budget, so pool size and training length are confounded")
    else:
        step_text = "the runs do not report their optimiser steps"
    size_col = calibration_size_column(cal_results)
    size_text = ("training parts of " if size_col == "train_per_class" else "pools of ") + ", ".join(
        str(int(v)) for v in sorted(cal_results[size_col].dropna().unique())) + " images per class"
    return (f"Grid **{cal_grid.name}**: {size_text}, seeds {list(cal_grid.seeds)}; {lam_text}; {step_text}. "
            + finding_calibration(effects))


def calibration_table(effects):
    """:func:`calibration_effects`'s table with the book's column names."""
    from .figures import EFFECT_LABELS

    return effects.assign(effect=effects["effect"].map(EFFECT_LABELS)).rename(columns={
        "pool_per_class": "images per class in the pool", "train_per_class": "training images per class",
        "n_seeds": "seeds", "se": "standard error"})


def kd_ablation(main, wide, grid, sweep_dir):
    """The K/d ablation: the default student's runs of ``main`` that ``grid`` (the
    ablation's grid) also trains, beside the wide student's runs ``wide``; λ selected
    per student by the oracle rule. Returns (the selected table with a ``student``
    column, {student: label with its K/d}, the sentence: SubDistill − KD at ρ = 1 per
    student, mean ± combined standard error)."""
    import pandas as pd

    from .io import read_json
    from .results import select_lambda

    narrow = main[main["method"].isin(grid.methods) & main["rho"].isin(grid.rhos)
                  & ((main["method"] == "kd") | main["lambda_layer"].isin(grid.lambdas))]
    parts, labels = [], {}
    for df in (narrow, wide):
        student = df["student"].iloc[0]
        sub = df[df["method"] == "subdistill"]
        ratio = (k_over_d(read_json(Path(sweep_dir) / sub["run_dir"].iloc[0] / "metrics.json")["layers"])
                 if len(sub) else math.nan)
        labels[student] = f"{'wide' if 'wide' in str(student) else 'default'} student (K/d = {ratio:.2g})"
        parts.append(select_lambda(df, "oracle").assign(student=student))
    ablation = pd.concat(parts, ignore_index=True)
    gaps = {}
    for student, g in ablation.groupby("student", sort=False):
        c_sd, c_kd = cell(g, "subdistill", 1.0), cell(g, "kd", 1.0)
        gaps[labels[student]] = (c_sd.mean - c_kd.mean, combined_se(c_sd.se, c_kd.se))
    lam_note = (f"Both students at λ = {grid.lambdas[0]:g} (fixed, not selected). " if len(grid.lambdas) == 1
                else f"λ selected per student among {{{', '.join(f'{l:g}' for l in grid.lambdas)}}}. ")
    sentence = (lam_note + "SubDistill − KD at ρ = 1: "
                + "; ".join(f"{k}: {fmt_points(*v)}" for k, v in gaps.items()) + ".")
    return ablation, labels, sentence


def finding_digit_confusion(digit, pred, n_classes: int, follows: float = 0.4) -> str:
    """How often a test image with digit k is predicted as class k, averaged over k (the
    diagonal of :func:`reprolib.figures.confusion_table`, row-normalised); above
    ``follows`` the student counts as following the digit. ``digit`` and ``pred``: the
    digit-bearing images' digits and predictions."""
    import numpy as np

    from .figures import confusion_table

    if len(digit) == 0:
        return "No test image carries a digit at ρ = 0, so there is no digit to follow."
    diag = float(np.trace(confusion_table(digit, pred, n_classes).values)) / n_classes
    return (f"On average {diag:.0%} of the images with digit k are predicted as class k (chance: "
            f"{1 / n_classes:.0%}); " + ("a bright diagonal: the student follows the digit." if diag > follows
                                         else "no strong diagonal: the student mostly ignores the digit."))


def k_over_d(layers) -> float:
    """The largest K/d over a run's distilled layers (``metrics.json``'s ``layers``:
    student and teacher channel counts per pair), NaN when there are none."""
    ratios = [s["student_shape"][0] / s["teacher_shape"][0] for s in layers or []
              if s.get("student_shape") and s.get("teacher_shape")]
    return max(ratios) if ratios else math.nan


# ---------------------------------------------------------------------------
# The precondition (issue "the paper's precondition"): rules written, tested and
# committed before the ladder of world variants was run. Only output-only KD enters.

# The teacher is converged when doubling its epochs changes its ten-class test
# accuracy by at most this much (half a point: the standard error of a 10,000-image
# test accuracy near 0.93 is 0.26 points, so a larger change is more than noise).
TEACHER_TOLERANCE = 0.005
# The precondition: output-only KD at ρ = 1 loses at least this much test accuracy
# from ρ = 0 (oracle selection, mean over seeds, beyond seed noise).
PRECONDITION_DROP = 0.10


@dataclass(frozen=True)
class TeacherChoice:
    """Outcome of :func:`teacher_convergence`."""

    epochs: int                      # the chosen recipe's epochs
    converged: bool                  # whether the chosen recipe met the rule
    checks: tuple[dict, ...]         # one per candidate with a doubled partner
    sentence: str

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "converged": self.converged,
                "checks": [dict(c) for c in self.checks], "sentence": self.sentence}


def teacher_convergence(accuracy: Mapping[int, float], candidates: Sequence[int] = (10, 20),
                        tolerance: float = TEACHER_TOLERANCE) -> TeacherChoice:
    """The mini teacher's epochs: the smallest candidate ``E`` whose ten-class test
    accuracy is within ``tolerance`` of the same recipe trained ``2E`` epochs.

    ``accuracy`` maps epochs to the ten-class test accuracy of the recipe trained
    that long (only the teacher: no student, no artifact). A candidate whose doubled
    partner was not trained is not judged. If no candidate meets the rule, the
    longest trained candidate is chosen and ``converged`` is False (the book says so).
    """
    acc = {int(e): float(a) for e, a in accuracy.items() if _finite(a)}
    if not acc:
        raise ValueError("teacher_convergence needs the test accuracy of at least one recipe")
    checks = []
    for e in sorted(int(c) for c in candidates):
        if e in acc and 2 * e in acc:
            gain = acc[2 * e] - acc[e]
            checks.append({"epochs": e, "epochs_doubled": 2 * e, "accuracy": acc[e],
                           "accuracy_doubled": acc[2 * e], "gain": gain,
                           "within": abs(gain) <= tolerance})
    met = [c for c in checks if c["within"]]
    if met:
        c = met[0]
        return TeacherChoice(c["epochs"], True, tuple(checks),
                             f"The teacher trained {c['epochs']} epochs is converged: {2 * c['epochs']} epochs "
                             f"change its ten-class test accuracy by {c['gain'] * 100:+.2f} points "
                             f"({c['accuracy']:.4f} → {c['accuracy_doubled']:.4f}; the rule allows "
                             f"±{tolerance * 100:g}).")
    trained = [e for e in candidates if int(e) in acc]
    chosen = max(trained) if trained else max(acc)
    tried = "; ".join(f"{c['epochs']} → {c['epochs_doubled']} epochs: {c['gain'] * 100:+.2f} points"
                      for c in checks) or "no candidate had its doubled partner"
    return TeacherChoice(int(chosen), False, tuple(checks),
                         f"No candidate met the teacher's convergence rule ({tried}); the longest trained "
                         f"candidate, {chosen} epochs, is used and is not shown to be converged.")


@dataclass(frozen=True)
class RungDrop:
    """Output-only KD's drop from ρ = 0 to ρ = 1 on one rung of the ladder."""

    rung: str
    mean: float          # mean over seeds of the per-seed drop (test accuracy, oracle rule)
    std: float           # ddof 1; NaN with one seed
    n: int
    se: float
    met: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PreconditionChoice:
    """Outcome of :func:`precondition_rule`."""

    chosen: str | None
    met: bool
    rungs: tuple[RungDrop, ...]
    sentence: str

    def to_dict(self) -> dict:
        return {"chosen": self.chosen, "met": self.met, "rungs": [r.to_dict() for r in self.rungs],
                "sentence": self.sentence}


def rung_drop(rung: str, acc_rho0: Mapping[int, float], acc_rho1: Mapping[int, float],
              min_drop: float = PRECONDITION_DROP, min_seeds: int = 3) -> RungDrop:
    """KD's per-seed drop (ρ = 0 minus ρ = 1, seeds present at both) and whether it
    meets the precondition: mean at least ``min_drop``, larger than its standard error
    (the verdicts' seed-noise rule), over at least ``min_seeds`` seeds."""
    seeds = sorted(set(acc_rho0) & set(acc_rho1))
    mean, std, n = seed_stats(float(acc_rho0[s]) - float(acc_rho1[s]) for s in seeds
                              if _finite(acc_rho0[s]) and _finite(acc_rho1[s]))
    if n == 0:
        return RungDrop(rung, math.nan, math.nan, 0, math.nan, False)
    se = standard_error(std, n)
    met = n >= min_seeds and mean >= min_drop and exceeds(mean, se)
    return RungDrop(rung, mean, std, n, se, met)


def precondition_rule(rungs: Sequence[RungDrop], min_drop: float = PRECONDITION_DROP) -> PreconditionChoice:
    """The book's main world: the first rung (in ladder order) at which output-only KD
    at ρ = 1 loses at least ``min_drop`` from ρ = 0 under the oracle rule, beyond seed
    noise (:func:`rung_drop`). If none does, the rung with the largest mean drop, and
    ``met`` is False: the results page then says the precondition was not reached."""
    rungs = tuple(rungs)
    if not rungs:
        raise ValueError("precondition_rule needs at least one rung")
    for r in rungs:
        if r.met:
            return PreconditionChoice(r.rung, True, rungs,
                                      f"The precondition holds on rung {r.rung!r}, the first of {len(rungs)} tried "
                                      f"where it does: output-only KD loses {fmt_points(r.mean, r.se)} from ρ = 0 "
                                      f"to ρ = 1 (oracle selection, {r.n} seeds; the rule asks for at least "
                                      f"{min_drop * 100:g} points beyond seed noise).")
    judged = [r for r in rungs if _finite(r.mean)]
    if not judged:
        return PreconditionChoice(None, False, rungs, "No rung has KD results at both ρ = 0 and ρ = 1.")
    best = max(judged, key=lambda r: r.mean)
    return PreconditionChoice(best.rung, False, rungs,
                              f"The precondition was not reached on any of the {len(rungs)} rungs tried: the "
                              f"largest drop of output-only KD from ρ = 0 to ρ = 1 is "
                              f"{fmt_points(best.mean, best.se)} (rung {best.rung!r}, oracle selection), short "
                              f"of the {min_drop * 100:g} points the rule asks for. The book runs on that rung "
                              "and judges the paper's claims against a baseline that does not take the shortcut.")


# ---------------------------------------------------------------------------
# Beyond the paper (the book's last part): rules stated before the studies ran.
def _ranges_apart(low_of_high: float, high_of_low: float) -> bool:
    """Two measured ranges are apart when the larger's minimum exceeds the smaller's maximum."""
    return _finite(low_of_high) and _finite(high_of_low) and low_of_high > high_of_low


def alignment_cost_growth(report) -> dict[str, dict]:
    """Per layer method of an alignment-cost report (:func:`reprolib.cost.alignment_cost`):
    whether its step time and its step's peak memory **grow with the number of aligned
    pairs**. The rule: a cost grows when its smallest measurement at the largest pair
    count (the per-round ratios to KD for time, the per-process peaks for memory)
    exceeds its largest at the smallest count, so that the two ranges do not overlap;
    with one round (or one repeat) the range is a point and any increase counts, which
    the sentence says. Returns ``{method: {"low": n, "high": n, "time": bool,
    "memory": bool | None, "ratio_low", "ratio_high", "mib_low", "mib_high"}}``."""
    rows = [r for r in report["rows"] if r["method"] != "kd"]
    out: dict[str, dict] = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = sorted((r for r in rows if r["method"] == method), key=lambda r: r["pairs"])
        lo, hi = mine[0], mine[-1]
        measured = [r for r in mine if r.get("peak_step_mib") is not None]   # memory may be taken at fewer counts
        grows_mem = mem_lo = mem_hi = None
        if len(measured) >= 2:
            mem_lo, mem_hi = measured[0], measured[-1]
            grows_mem = _ranges_apart(mem_hi["peak_step_mib_min"], mem_lo["peak_step_mib_max"])
        out[method] = {"low": lo["pairs"], "high": hi["pairs"],
                       "time": _ranges_apart(hi["step_ratio_min"], lo["step_ratio_max"]), "memory": grows_mem,
                       "ratio_low": lo["step_ratio_to_kd"], "ratio_high": hi["step_ratio_to_kd"],
                       "mib_low": mem_lo and mem_lo["peak_step_mib"], "mib_high": mem_hi and mem_hi["peak_step_mib"],
                       "mib_pairs": (mem_lo["pairs"], mem_hi["pairs"]) if mem_lo else None}
    return out


def _n_pairs(n: int) -> str:
    return f"{n} layer pair" if n == 1 else f"{n} layer pairs"


def finding_alignment_cost(report) -> str:
    """The alignment-cost chapter's sentence, by the rule of :func:`alignment_cost_growth`:
    which methods' step time and step memory grow with the number of aligned pairs, the
    costliest method at the largest count (median ratio to KD), and the range of all
    layer methods' ratios there."""
    growth = alignment_cost_growth(report)
    if not growth:
        return "The report has no layer method: nothing to compare with output-only KD."
    some = next(iter(growth.values()))
    lo, hi = some["low"], some["high"]
    grows = [name(m) for m, g in growth.items() if g["time"]]
    flat = [name(m) for m, g in growth.items() if not g["time"]]
    costliest = max(growth, key=lambda m: growth[m]["ratio_high"])
    cheapest = min(growth, key=lambda m: growth[m]["ratio_high"])
    single = report.get("rounds", 2) < 2
    parts = [f"From {_n_pairs(lo)} to {_n_pairs(hi)}, the training step "
             + (f"costs more for {_join(grows)}" if grows else "costs no more for any layer method")
             + (f" and not measurably more for {_join(flat)}" if grows and flat else "")
             + (" (one round: no spread, so any increase counts)" if single else
                " (the ranges of the per-round ratios to KD do not overlap)") + "."]
    parts.append(f"At {_n_pairs(hi)} {name(costliest)} is the costliest, {growth[costliest]['ratio_high']:.2f}× output-only "
                 f"KD's step, and {name(cheapest)} the cheapest, {growth[cheapest]['ratio_high']:.2f}×; at "
                 f"{_n_pairs(lo)} the layer methods take {min(g['ratio_low'] for g in growth.values()):.2f}–"
                 f"{max(g['ratio_low'] for g in growth.values()):.2f}× KD's step.")
    if some["memory"] is not None:
        mem = [name(m) for m, g in growth.items() if g["memory"]]
        kd = next((r for r in report["rows"] if r["method"] == "kd"), {})
        kd_mib = kd.get("peak_step_mib")
        m_lo, m_hi = some["mib_pairs"]
        one = report.get("memory_repeats", 2) < 2
        parts.append(f"From {_n_pairs(m_lo)} to {_n_pairs(m_hi)}, the step's peak memory "
                     + ((f"grows for {_join(mem)}" if mem else "does not grow for any layer method")
                        + " (one measurement per case: no spread, so any increase counts)" if one else
                        f"grows beyond its repeat-to-repeat spread for {_join(mem)}" if mem else
                        "does not grow beyond its repeat-to-repeat spread for any layer method")
                     + (" (" + "; ".join(f"{name(m)} {g['mib_low']:.0f} → {g['mib_high']:.0f} MiB"
                                         for m, g in growth.items() if g["memory"]) + ")" if mem else "")
                     + (f"; output-only KD's step peaks at {kd_mib:.0f} MiB" if _finite(kd_mib) else "") + ".")
    return " ".join(parts)


MORE_HELP, FEWER_BETTER, NO_DIFFERENCE = "more pairs help", "fewer pairs do better", "no difference beyond seed noise"


def _count_cell(summary, method: str, rho: float, count: int, selection: str) -> Cell:
    d = summary[summary["layer_pair_count"] == count]
    return cell(d, method, rho, selection)


def aligned_layers_effects(summary, selection: str = "oracle") -> list[dict]:
    """Chapter 9's rule, per (method, ρ) of a pair-count summary (:func:`reprolib.results.select_lambda`
    of a table with ``layer_pair_count``, λ chosen per count): test accuracy with the most
    pairs minus with the fewest, each at its own selected λ. **More pairs help** when the
    difference exceeds its combined standard error over seeds; **fewer pairs do better**
    when minus the difference does; otherwise **no difference beyond seed noise**. One seed
    has no noise estimate: any difference counts, and the row says so (``n_seeds``).
    Output-only KD (count 0) is not judged."""
    rows = []
    d = summary[summary["selection"] == selection] if "selection" in summary.columns else summary
    d = d[d["layer_pair_count"] > 0]
    for method in [m for m in dict.fromkeys(d["method"])]:
        mine = d[d["method"] == method]
        for rho in sorted(mine["rho"].astype(float).unique()):
            counts = sorted(int(c) for c in mine[(mine["rho"].astype(float) - rho).abs() < 1e-9]["layer_pair_count"].unique())
            if len(counts) < 2:
                continue
            few, many = _count_cell(d, method, rho, counts[0], selection), _count_cell(d, method, rho, counts[-1], selection)
            diff, se = many.mean - few.mean, combined_se(few.se, many.se)
            verdict = MORE_HELP if exceeds(diff, se) else FEWER_BETTER if exceeds(-diff, se) else NO_DIFFERENCE
            rows.append({"method": method, "rho": rho, "fewest": counts[0], "most": counts[-1],
                         "accuracy_fewest": few.mean, "accuracy_most": many.mean, "difference": diff, "se": se,
                         "n_seeds": min(few.n, many.n), "verdict": verdict})
    return rows


def finding_aligned_layers(summary, selection: str = "oracle") -> str:
    """Chapter 9's sentence: the rule of :func:`aligned_layers_effects` at every ρ, per method."""
    rows = aligned_layers_effects(summary, selection)
    if not rows:
        return "The table has fewer than two pair counts per method: nothing to compare."
    parts = []
    for r in rows:
        parts.append(f"{name(r['method'])} at ρ = {r['rho']:g}: {r['verdict']} ({r['most']} pairs minus "
                     f"{r['fewest']}: {fmt_points(r['difference'], r['se'])}"
                     + (", one seed: no noise estimate" if r["n_seeds"] < 2 else "") + ")")
    return (f"Under the {SELECTION_NAMES.get(selection, selection)} rule, each count at its own selected λ: "
            + "; ".join(parts) + ".")


def aligned_layers_table(summary):
    """Chapter 9's table: per method, ρ and pair count, the selected λ and the test accuracy
    (mean ± standard deviation over seeds) under both selection rules."""
    import pandas as pd

    d = summary[summary["layer_pair_count"] > 0] if "layer_pair_count" in summary.columns else summary
    rows = []
    keys = d[["method", "rho", "layer_pair_count"]].drop_duplicates().sort_values(["method", "rho", "layer_pair_count"])
    for _, k in keys.iterrows():
        row = {"method": name(k["method"]), "ρ": float(k["rho"]), "pairs": int(k["layer_pair_count"])}
        for sel, label in (("oracle", "oracle"), ("nonoracle", "non-oracle")):
            c = _count_cell(d, k["method"], float(k["rho"]), int(k["layer_pair_count"]), sel)
            row[f"λ ({label})"] = "–" if not _finite(c.lam) else f"{c.lam:g}"
            row[f"test accuracy ({label})"] = "–" if not c.ok else (
                f"{c.mean:.3f} ± {c.std:.3f}" if _finite(c.std) else f"{c.mean:.3f}")
        rows.append(row)
    return pd.DataFrame(rows)


def follows_digit(share: float, n: int, classes: int = 5) -> bool:
    """The rule for "follows the digit": among ``n`` test images whose digit differs from
    their label, the share classified as the digit exceeds chance (1/``classes``) by more
    than its binomial standard error at chance, ``sqrt(p (1 - p) / n)``."""
    if not _finite(share) or not n:
        return False
    p = 1.0 / classes
    return exceeds(float(share) - p, math.sqrt(p * (1 - p) / n))


def finding_teacher_bias(measured: Sequence[Mapping]) -> str:
    """One sentence per teacher of :func:`reprolib.studies.teacher_digit_following`:
    whether it follows the digit by the rule of :func:`follows_digit`."""
    parts = []
    for m in measured:
        p = 1.0 / m["classes"]
        verdict = "follows the digit" if follows_digit(m["predicts_digit_differs"], m["n_digit_differs"], m["classes"]) \
            else "does not follow the digit beyond chance"
        parts.append(f"The teacher `{m['teacher_recipe']}` {verdict}: on the {m['n_digit_differs']} test images whose "
                     f"random digit differs from their label it answers the digit on "
                     f"{100 * m['predicts_digit_differs']:.1f} % (chance {100 * p:.0f} %), and its subtask accuracy "
                     f"there is {100 * m['accuracy_digit_differs']:.1f} %.")
    return " ".join(parts)



TAKES_BIAS, LESS_BIAS, NO_MORE_BIAS = ("takes on the teacher's bias", "follows the digit less",
                                       "no difference beyond seed noise")


def biased_teacher_effects(table) -> list[dict]:
    """Chapter 10's rule, per method and ρ of :func:`reprolib.studies.biased_teacher`'s table:
    the students' digit-following on the random-digit test set (``predicts_digit_differs_rho1``,
    mean over seeds) with the biased teacher minus with the book's teacher, same method, ρ
    and λ. **Takes on the teacher's bias** when the difference exceeds its combined standard
    error over seeds; **follows the digit less** when minus the difference does; otherwise
    **no difference beyond seed noise**. Rows also carry both teachers' test accuracy and kNN
    digit agreement means."""
    from .config import METHODS

    rows = []
    present = [m for m in METHODS if m in set(table["method"])]
    for method in present:
        for rho in sorted(table.loc[table["method"] == method, "rho"].astype(float).unique()):
            at = table[(table["method"] == method) & ((table["rho"].astype(float) - rho).abs() < 1e-9)]
            stats = {}
            for teacher in ("book", "biased"):
                t = at[at["teacher"] == teacher]
                stats[teacher] = {c: seed_stats(t[c]) for c in ("predicts_digit_differs_rho1", "test_accuracy", "knn_digit")}
            (fb, sb, nb), (fk, sk, nk) = stats["biased"]["predicts_digit_differs_rho1"], stats["book"]["predicts_digit_differs_rho1"]
            diff, se = fb - fk, combined_se(standard_error(sb, nb), standard_error(sk, nk))
            verdict = TAKES_BIAS if exceeds(diff, se) else LESS_BIAS if exceeds(-diff, se) else NO_MORE_BIAS
            rows.append({"method": method, "rho": rho, "follows_book": fk, "follows_biased": fb, "difference": diff,
                         "se": se, "n_seeds": min(nb, nk), "verdict": verdict,
                         **{f"{c}_{t}": stats[t][c][0] for t in ("book", "biased") for c in ("test_accuracy", "knn_digit")}})
    return rows


def finding_biased_teacher(table, teachers: Sequence[Mapping]) -> str:
    """Chapter 10's sentences: each teacher's own digit-following (:func:`finding_teacher_bias`),
    then, per ρ, what the rule of :func:`biased_teacher_effects` finds for every method, and
    the answer to the chapter's question for SubDistill: none when the biased teacher (the
    last of ``teachers``) does not follow the digit itself (:func:`follows_digit`)."""
    rows = biased_teacher_effects(table)
    if not rows:
        return "The table has no run to compare."
    parts = [finding_teacher_bias(teachers)]
    biased_own = teachers[-1]["predicts_digit_differs"] if teachers else math.nan   # the biased teacher is the last
    for rho in sorted({r["rho"] for r in rows}):
        at = [r for r in rows if r["rho"] == rho]
        parts.append(f"Students distilled at ρ = {rho:g}, digit-following with the biased teacher against the book's: "
                     + "; ".join(f"{name(r['method'])} {100 * r['follows_biased']:.1f} % vs {100 * r['follows_book']:.1f} % "
                                 f"({r['verdict']}, {fmt_points(r['difference'], r['se'])}"
                                 + (", one seed" if r["n_seeds"] < 2 else "") + ")" for r in at) + ".")
    sub = [r for r in rows if r["method"] == "subdistill"]
    biased = teachers[-1] if teachers else None
    if sub and biased is not None and not follows_digit(biased["predicts_digit_differs"], biased["n_digit_differs"],
                                                        biased["classes"]):
        parts.append("**Does SubDistill transfer the teacher's bias?** This world cannot say: the biased teacher does "
                     "not follow the digit itself, so it has no bias to pass on.")
    elif sub:
        took = [r for r in sub if r["verdict"] == TAKES_BIAS]
        parts.append("**Does SubDistill transfer the teacher's bias?** "
                     + ("Yes, at ρ = " + _join([f"{r['rho']:g}" for r in took]) if took else "Not beyond seed noise")
                     + (f"; the biased teacher itself answers the digit on {100 * biased_own:.1f} % of those images."
                        if _finite(biased_own) else "."))
    return " ".join(parts)


def biased_teacher_table(table):
    """Chapter 10's table: per method, ρ and teacher, the students' test accuracy (their own
    test set), digit-following and kNN digit agreement on the random-digit test set
    (mean ± standard deviation over seeds)."""
    import pandas as pd

    from .config import METHODS

    out = []
    for method in [m for m in METHODS if m in set(table["method"])]:
        for rho in sorted(table.loc[table["method"] == method, "rho"].astype(float).unique()):
            for teacher in ("book", "biased"):
                t = table[(table["method"] == method) & ((table["rho"].astype(float) - rho).abs() < 1e-9)
                          & (table["teacher"] == teacher)]
                if not len(t):
                    continue
                row = {"method": name(method), "ρ": rho, "teacher": teacher, "seeds": int(t["seed"].nunique())}
                for col, label in (("test_accuracy", "test accuracy"), ("predicts_digit_differs_rho1", "answers the digit"),
                                   ("knn_digit", "kNN digit agreement")):
                    mean, std, _ = seed_stats(t[col])
                    row[label] = "–" if not _finite(mean) else (f"{mean:.3f} ± {std:.3f}" if _finite(std) else f"{mean:.3f}")
                out.append(row)
    return pd.DataFrame(out)


def teacher_table(teachers: Sequence[Mapping]):
    """Chapter 10's teacher table: one row per teacher of :func:`reprolib.studies.teacher_digit_following`."""
    import pandas as pd

    return pd.DataFrame([{"teacher": f"`{t['teacher_recipe']}`", "subtask accuracy": f"{t['accuracy']:.3f}",
                          "accuracy, digit ≠ label": f"{t['accuracy_digit_differs']:.3f}",
                          "answers the digit (digit ≠ label)": f"{t['predicts_digit_differs']:.3f}",
                          "images (digit ≠ label)": int(t["n_digit_differs"]),
                          "kNN digit agreement": f"{t['knn_digit']:.3f}",
                          "follows the digit": "yes" if follows_digit(t["predicts_digit_differs"], t["n_digit_differs"],
                                                                       t["classes"]) else "no"} for t in teachers])



def most_selected_lambda(summary, method: str = "subdistill") -> float:
    """The λ that the selection summary chooses most often for ``method`` (every ρ, both
    selection rules); a tie goes to the smaller λ."""
    lams = [float(x) for x in summary.loc[summary["method"] == method, "lambda_layer"] if _finite(x)]
    if not lams:
        raise ValueError(f"the summary has no selected λ for {method!r}")
    counts = {lam: lams.count(lam) for lam in sorted(set(lams))}
    return max(counts, key=lambda lam: (counts[lam], -lam))


def _paired(table, method_a: str, rho_a: float, method_b: str, rho_b: float, col: str) -> tuple[float, float, int]:
    """Mean and standard error over seeds of ``a - b`` paired by seed (the same seed's runs
    share their cohort's batches and teacher outputs)."""
    def by_seed(m, r):
        d = table[(table["method"] == m) & ((table["rho"].astype(float) - r).abs() < 1e-9)]
        return dict(zip(d["seed"].astype(int), d[col].astype(float)))

    a, b = by_seed(method_a, rho_a), by_seed(method_b, rho_b)
    diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
    mean, std, n = seed_stats(diffs)
    return mean, standard_error(std, n), n


def conditions_effects(table, selection: str = "oracle"):
    """Chapter 11's cells: per (``teacher_recipe``, ``crop_min``) of the table, output-only
    KD's drop from ρ = 0 to ρ = 1 and SubDistill's lead over KD at ρ = 1, each the mean over
    seeds of the per-seed difference with its standard error, ``drop_met`` (the precondition
    rule: a drop of at least 10 points beyond seed noise) and ``lead_beyond_noise`` (the lead
    exceeds its standard error)."""
    import pandas as pd

    col = "test_accuracy" if selection == "oracle" else "nonoracle_test_accuracy"
    rows = []
    for (teacher, crop), cell_runs in table.groupby(["teacher_recipe", "crop_min"], sort=False):
        drop, drop_se, n = _paired(cell_runs, "kd", 0.0, "kd", 1.0, col)
        lead, lead_se, m = _paired(cell_runs, "subdistill", 1.0, "kd", 1.0, col)
        rows.append({"teacher_recipe": teacher, "crop_min": float(crop), "kd_drop": drop, "kd_drop_se": drop_se,
                     "lead": lead, "lead_se": lead_se, "n_seeds": min(n, m),
                     "drop_met": n >= 2 and drop >= PRECONDITION_DROP and exceeds(drop, drop_se),
                     "lead_beyond_noise": exceeds(lead, lead_se)})
    return pd.DataFrame(rows)


def _pearson(x: Sequence[float], y: Sequence[float]) -> float:
    pts = [(a, b) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    if len(pts) < 3:
        return math.nan
    mx, my = sum(a for a, _ in pts) / len(pts), sum(b for _, b in pts) / len(pts)
    sxy = sum((a - mx) * (b - my) for a, b in pts)
    sx, sy = math.sqrt(sum((a - mx) ** 2 for a, _ in pts)), math.sqrt(sum((b - my) ** 2 for _, b in pts))
    return sxy / (sx * sy) if sx > 0 and sy > 0 else math.nan


TRACKS_R = 0.5


def finding_conditions(effects) -> str:
    """Chapter 11's sentence: in which cells SubDistill's lead exceeds seed noise, in which
    KD's drop meets the precondition, and whether the lead **tracks** KD's drop: the rule is
    a Pearson correlation of at least 0.5 between the two across the cells (at least three)."""
    if effects is None or not len(effects):
        return "The map has no finished cell."

    def where(rows) -> str:
        return _join([f"{r['teacher_recipe']} teacher, crop ({r['crop_min']:g}, 1)" for _, r in rows.iterrows()]) or "none"

    lead, met = effects[effects["lead_beyond_noise"]], effects[effects["drop_met"]]
    r = _pearson(effects["kd_drop"], effects["lead"])
    parts = [f"SubDistill leads output-only KD at ρ = 1 beyond seed noise in {len(lead)} of {len(effects)} cells "
             f"({where(lead)}); KD's drop from ρ = 0 to ρ = 1 meets the precondition (at least "
             f"{PRECONDITION_DROP * 100:g} points beyond noise) in {len(met)} ({where(met)})."]
    if not _finite(r):
        parts.append("With fewer than three cells (or no spread) the map cannot say whether the lead tracks KD's drop.")
    else:
        parts.append(f"Across the cells the lead {'tracks' if r >= TRACKS_R else 'does not track'} KD's drop "
                     f"(Pearson r = {r:.2f}; the rule asks for at least {TRACKS_R:g}).")
    return " ".join(parts)


def finding_map_axes(knobs: Sequence[Mapping]) -> str:
    """Chapter 11's axes in words: the knobs of :func:`reprolib.precondition.ladder_knobs`,
    the two that moved output-only KD's drop most first."""
    if not knobs:
        return "The precondition ladder has no measured rung besides the main world's: the map's axes are not chosen by it."
    main = knobs[0]["main_drop"]
    told = "; ".join(f"{' and '.join(k['knob']) or 'no config field'} (rung {k['rung']}, {k['variant']}: a drop of "
                     f"{100 * k['drop']:.1f} points, {100 * abs(k['moved']):.1f} {'less' if k['moved'] < 0 else 'more'} "
                     "than the main world's)" for k in knobs)
    return (f"Output-only KD loses {100 * main:.1f} points from ρ = 0 to ρ = 1 in the main world (oracle rule). The "
            f"ladder's other rungs moved that drop by, largest first: {told}. The map's axes are the first two.")

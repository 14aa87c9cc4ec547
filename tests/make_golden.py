"""Regenerate ``tests/fixtures/golden_losses.json``: ``python tests/make_golden.py``.

Only rerun it when a loss is meant to change (and say so in the commit); the
tests compare the current code against the committed file.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "golden_losses.json"

# Pair 0: teacher larger (pooled) and wider; pair 1: student larger (pooled), same width.
TEACHER_SHAPES = [(8, 4, 4), (6, 2, 2)]
STUDENT_SHAPES = [(4, 2, 2), (6, 4, 4)]
BATCH = 3


def golden_inputs():
    """Fixed features, logits and subspaces, independent of the global RNG."""
    from reprolib.subspace import relevant_subspace

    g = torch.Generator().manual_seed(1234)
    teacher = [torch.rand(BATCH, *s, generator=g) for s in TEACHER_SHAPES]
    student = [torch.randn(BATCH, *s, generator=g) for s in STUDENT_SHAPES]
    logits = (torch.randn(BATCH, 5, generator=g), torch.randn(BATCH, 5, generator=g))
    subspaces = []
    for i, (t, s) in enumerate(zip(TEACHER_SHAPES, STUDENT_SHAPES)):
        A = torch.rand(41, t[0], generator=g) * 2.0
        C = 0.3 * A + torch.randn(41, t[0], generator=g)
        subspaces.append(relevant_subspace(f"pair{i}", A, C, s[0]))
    return teacher, student, logits, subspaces


def compute_golden() -> dict:
    from reprolib.methods import attention_map, build_method, kd_loss

    teacher, student, (s_logits, t_logits), subspaces = golden_inputs()
    out = {"kd_loss": kd_loss(s_logits, t_logits).item(),
           "attention_map": attention_map(teacher[0]).flatten().tolist()}
    variants = {"at": ("at", {}), "vid_learned": ("vid", {"vid_variance": "learned"}),
                "vid_fixed": ("vid", {"vid_variance": "fixed"}), "vkd": ("vkd", {}),
                "subdistill_standardize": ("subdistill", {"student_norm": "standardize"}),
                "subdistill_center": ("subdistill", {"student_norm": "center"})}
    for key, (name, kwargs) in variants.items():
        torch.manual_seed(0)
        method = build_method(name, TEACHER_SHAPES, STUDENT_SHAPES, subspaces=subspaces, **kwargs)
        out[key] = [v.item() for v in method(student, method.teacher_targets(teacher))]
    out["subspace_alpha"] = [s.alpha for s in subspaces]
    out["subspace_eigenvalues"] = torch.cat([s.eigenvalues for s in subspaces]).tolist()
    out["subspace_variance_share"] = [s.variance_share for s in subspaces]
    return out


def main() -> None:
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    from reprolib.io import write_json

    write_json(FIXTURE, compute_golden())
    print(f"wrote {FIXTURE}")


if __name__ == "__main__":
    main()

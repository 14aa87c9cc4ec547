"""SubDistill's relevant subspaces (``book/protocol.md`` §4.1–4.4, D2, D7, D8).

For each teacher layer: collect activations a and gradients c = ∂f/∂a of the
teacher's top-2 logit margin f at random positions of the (contaminated,
eval-transformed) training images, form the PRCA-posdef matrix M, keep its
top-K eigenvectors U_K, the activation mean μ and the captured energy α.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import ReproError
from .hooks import FeatureCapture, resolve_modules
from .io import torch_save

_CHUNK = 8192  # rows per float64 block, so the N×d data are never copied whole


@dataclass
class RelevantSubspace:
    """U_K (d×K), μ (d), α = Σ_{j≤K} u_jᵀΣ_a u_j, all d eigenvalues (descending), α / tr Σ_a."""

    layer: str
    basis: torch.Tensor
    mean: torch.Tensor
    alpha: float
    eigenvalues: torch.Tensor
    variance_share: float

    @property
    def k(self) -> int:
        return self.basis.shape[1]

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "RelevantSubspace":
        return cls(layer=str(d["layer"]), basis=d["basis"].float(), mean=d["mean"].float(),
                   alpha=float(d["alpha"]), eigenvalues=d["eigenvalues"].double(),
                   variance_share=float(d["variance_share"]))


# ---------------------------------------------------------------- pure functions

def _gram(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """xᵀy in float64, accumulated over row blocks."""
    out = torch.zeros(x.shape[1], y.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], _CHUNK):
        out += x[i:i + _CHUNK].double().T @ y[i:i + _CHUNK].double()
    return out


def prca_posdef_matrix(A_centered: torch.Tensor, C: torch.Tensor) -> torch.Tensor:
    """M = S + 2γΣ_a + (2/γ)Σ_c, γ = √(tr Σ_c / tr Σ_a) (§4.3, D2), float64.

    Σ_a = ĀᵀĀ/N, Σ_c = CᵀC/N (C not centred), S = Σ_ac + Σ_acᵀ with Σ_ac = ĀᵀC/N.
    PSD by Cauchy–Schwarz and AM–GM; invariant (up to a positive factor) to
    rescaling Ā or C.
    """
    if A_centered.shape != C.shape or A_centered.dim() != 2:
        raise ReproError(f"activations {tuple(A_centered.shape)} and gradients {tuple(C.shape)} "
                         "must both be N×d matrices of the same shape")
    n = A_centered.shape[0]
    sigma_a = _gram(A_centered, A_centered) / n
    sigma_c = _gram(C, C) / n
    sigma_ac = _gram(A_centered, C) / n
    tr_a, tr_c = sigma_a.trace().item(), sigma_c.trace().item()
    if not (tr_a > 0 and tr_c > 0):
        raise ReproError(f"the activation (trace {tr_a:g}) or gradient (trace {tr_c:g}) statistics "
                         "are zero: the layer is dead or does not reach the logits; pick another layer")
    gamma = math.sqrt(tr_c / tr_a)
    return sigma_ac + sigma_ac.T + 2 * gamma * sigma_a + (2 / gamma) * sigma_c


def sorted_eigh(M: torch.Tensor, A_centered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending) and eigenvectors (columns) of M in float64, with D7's sign fix.

    Each u_j is flipped unless more than half of the projections Ā·u_j are
    positive; this only fixes the initial symmetry (A7).
    """
    evals, evecs = torch.linalg.eigh(M.double())
    evals, evecs = evals.flip(0), evecs.flip(1)
    positive = torch.zeros(evecs.shape[1], dtype=torch.long, device=evecs.device)
    for i in range(0, A_centered.shape[0], _CHUNK):
        positive += (A_centered[i:i + _CHUNK].double() @ evecs > 0).sum(0)
    flip = 2 * positive <= A_centered.shape[0]
    evecs = torch.where(flip, -evecs, evecs)
    return evals, evecs


def top2_margin(logits: torch.Tensor) -> torch.Tensor:
    """f = z_{k1} − z_{k2} per sample, k1/k2 the two largest logits, taken as constants (§4.2)."""
    top = logits.gather(1, logits.detach().topk(2, dim=1).indices)
    return top[:, 0] - top[:, 1]


# ---------------------------------------------------------------- fitting

def fit_relevant_subspaces(teacher, layers: Sequence[str], batches: Iterable[torch.Tensor],
                           ks: Sequence[int], seed: int, positions: int = 20,
                           device="cpu") -> list[RelevantSubspace]:
    """Fit one relevant subspace per teacher layer (§4.2–4.4) from image batches.

    ``teacher`` is a :class:`~reprolib.models.FrozenTeacher`; ``layers`` are
    paths in ``teacher.model``; ``batches`` yield images (eval transform, D8);
    ``ks`` the subspace dimensions (K = student width). Positions per image are
    drawn from one ``numpy.random.default_rng(seed)`` stream (image by image,
    layer by layer, so they depend on the layer list). The teacher is moved to
    ``device``; the subspaces are returned on the CPU.
    """
    layers, ks = list(layers), [int(k) for k in ks]
    if len(layers) != len(ks):
        raise ReproError(f"{len(layers)} layers but {len(ks)} subspace sizes; give one K per layer")
    resolve_modules(teacher.model, layers)
    teacher.to(device)
    rng = np.random.default_rng(seed)
    acts: list[list[torch.Tensor]] = [[] for _ in layers]
    grads: list[list[torch.Tensor]] = [[] for _ in layers]
    for x in batches:
        # The teacher's parameters are frozen: the input carries the graph.
        x = x.to(device).detach().requires_grad_(True)
        with torch.enable_grad(), FeatureCapture(teacher.model, layers) as cap:
            f = top2_margin(teacher(x)).sum()
            feats = cap.get(layers)
            cs = torch.autograd.grad(f, feats)
        if not acts[0]:
            _check_ks(layers, ks, feats)
        for li, (a, c) in enumerate(zip(feats, cs)):
            b, d, h, w = a.shape
            n = min(positions, h * w)
            idx = np.stack([rng.choice(h * w, size=n, replace=False) for _ in range(b)])
            idx = torch.as_tensor(idx, device=a.device).unsqueeze(1).expand(b, d, n)
            # (B, d, n) -> (B·n, d) rows, float32 on the CPU.
            for store, v in ((acts[li], a), (grads[li], c)):
                store.append(v.detach().flatten(2).gather(2, idx).transpose(1, 2)
                             .reshape(-1, d).float().cpu())
    if not acts[0]:
        raise ReproError("no batches given to fit_relevant_subspaces; pass the training images")
    return [relevant_subspace(layer, torch.cat(a), torch.cat(c), k)
            for layer, a, c, k in zip(layers, acts, grads, ks)]


def _check_ks(layers, ks, feats) -> None:
    for layer, k, a in zip(layers, ks, feats):
        if not 1 <= k <= a.shape[1]:
            raise ReproError(f"K = {k} for teacher layer {layer!r}, which has only {a.shape[1]} "
                             "channels; K must be between 1 and the teacher width (pair this "
                             "student layer with a wider teacher layer)")


def relevant_subspace(layer: str, A: torch.Tensor, C: torch.Tensor, k: int) -> RelevantSubspace:
    """The subspace from stacked activation rows A and gradient rows C (N×d): μ, M, U_K, α."""
    if not 1 <= k <= A.shape[1]:
        raise ReproError(f"K = {k} for teacher layer {layer!r}, which has {A.shape[1]} channels; "
                         "K must be between 1 and the teacher width")
    mean = A.double().mean(0)
    A_c = (A.double() - mean).float()   # float32 rows, as the statistics are accumulated
    M = prca_posdef_matrix(A_c, C)
    evals, U = sorted_eigh(M, A_c)
    if evals[-1] < -1e-6 * evals[0].abs():
        warnings.warn(f"PRCA matrix of {layer!r} has a negative eigenvalue {evals[-1].item():.3g} "
                      f"(largest {evals[0].item():.3g}); numerical round-off is expected to be tiny")
    U_k = U[:, :k]
    proj = torch.cat([A_c[i:i + _CHUNK].double() @ U_k for i in range(0, A_c.shape[0], _CHUNK)])
    alpha = proj.pow(2).sum().item() / A_c.shape[0]
    total = sum(A_c[i:i + _CHUNK].double().pow(2).sum().item()
                for i in range(0, A_c.shape[0], _CHUNK)) / A_c.shape[0]
    return RelevantSubspace(layer=layer, basis=U_k.float().contiguous(), mean=mean.float(),
                            alpha=alpha, eigenvalues=evals, variance_share=alpha / total)


# ---------------------------------------------------------------- diagnostics

def _param_device(model) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def reconstruct(a: torch.Tensor, sub: RelevantSubspace) -> torch.Tensor:
    """Rank-K reconstruction μ + U_K U_Kᵀ(a − μ) of a (B, d, H, W) map, per position (§4.7)."""
    U = sub.basis.to(a)
    mu = sub.mean.to(a).view(1, -1, 1, 1)
    coords = torch.einsum("bdhw,dk->bkhw", a - mu, U)
    return mu + torch.einsum("dk,bkhw->bdhw", U, coords)


@torch.no_grad()
def digit_effect(teacher, layers: Sequence[str], x_with: torch.Tensor, x_without: torch.Tensor,
                 labels: torch.Tensor, batch_size: int = 250) -> dict:
    """One teacher pass over the images with and without their digit (each batch of
    both in one forward), every layer in ``layers`` captured.

    Returns ``{"delta": {layer: Δ}, "accuracy_with", "accuracy_without", "n"}`` where
    Δ = features(with digit) − features(without), in float64, one row per position
    (N·H·W × d): the digit's effect that :func:`artifact_energy` splits.
    """
    device = _param_device(teacher)
    labels = torch.as_tensor(labels)
    n = len(labels)
    if n == 0:
        raise ReproError("digit_effect got no images; pass at least one image with its digit")
    correct_with = correct_without = 0
    delta = {layer: [] for layer in layers}
    with FeatureCapture(teacher.model, list(layers)) as cap:
        for i in range(0, n, batch_size):
            xw, xo, y = x_with[i:i + batch_size], x_without[i:i + batch_size], labels[i:i + batch_size]
            logits = teacher(torch.cat([xw, xo]).to(device)).cpu()
            correct_with += (logits[:len(y)].argmax(1) == y).sum().item()
            correct_without += (logits[len(y):].argmax(1) == y).sum().item()
            for layer in layers:
                f = cap[layer].double().cpu()
                d = f[:len(y)] - f[len(y):]
                delta[layer].append(d.permute(0, 2, 3, 1).reshape(-1, d.shape[1]))
    return {"delta": {layer: torch.cat(parts) for layer, parts in delta.items()},
            "accuracy_with": correct_with / n, "accuracy_without": correct_without / n, "n": n}


def _replace_copy(index: int, sub: RelevantSubspace, n: int):
    """A forward hook that replaces copy ``index`` (rows index·n … (index+1)·n) of the
    batch by its rank-K reconstruction and leaves the other copies as they are."""
    def hook(_module, _inputs, out):
        out = out.clone()
        out[index * n:(index + 1) * n] = reconstruct(out[index * n:(index + 1) * n], sub)
        return out
    return hook


@torch.no_grad()
def rank_k_accuracy(teacher, subspaces: Sequence[RelevantSubspace], x: torch.Tensor,
                    labels: torch.Tensor, batch_size: int = 250) -> list[float]:
    """Teacher accuracy with one layer replaced by its rank-K reconstruction (§4.7),
    for every subspace's layer, in one pass: each batch is repeated once per layer and
    copy l has layer l (only) reconstructed. Returns one accuracy per subspace."""
    device = _param_device(teacher)
    labels = torch.as_tensor(labels).cpu()
    if len(labels) == 0:
        raise ReproError("rank_k_accuracy got no images; pass images and their labels")
    layers = [sub.layer for sub in subspaces]
    modules = resolve_modules(teacher.model, layers)
    correct = np.zeros(len(subspaces))
    for i in range(0, len(labels), batch_size):
        xb, y = x[i:i + batch_size], labels[i:i + batch_size]
        handles = [modules[sub.layer].register_forward_hook(_replace_copy(l, sub, len(y)))
                   for l, sub in enumerate(subspaces)]
        try:
            pred = teacher(xb.repeat(len(subspaces), 1, 1, 1).to(device)).argmax(1).cpu().view(len(subspaces), -1)
        finally:
            for h in handles:
                h.remove()
        correct += (pred == y).sum(1).numpy()
    return [float(c) / len(labels) for c in correct]


def artifact_energy(delta: torch.Tensor, basis: torch.Tensor, seed: int = 0) -> dict[str, float]:
    """How much of the digit's effect Δ (rows: positions, from :func:`digit_effect`)
    lies inside the subspace spanned by ``basis`` (d×K, orthonormal columns).

    Returns the energies ‖U_KᵀΔ‖² (inside) and ‖Δ‖² − inside (outside), summed, the
    inside share, and the share for a random K-dim subspace (expected ≈ K/d).
    """
    total = delta.pow(2).sum().item()
    inside = (delta @ basis.to(delta)).pow(2).sum().item()
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(*basis.shape, generator=g, dtype=torch.float64))
    random_inside = (delta @ q.to(delta)).pow(2).sum().item()
    share = (lambda e: e / total if total > 0 else float("nan"))
    return {"inside": inside, "outside": total - inside, "inside_share": share(inside),
            "random_inside_share": share(random_inside)}


# ---------------------------------------------------------------- the tables of chapter 2

def subspace_table(subspaces: Sequence[RelevantSubspace], rank_k: Sequence[float], accuracy: float):
    """Per layer: d, K, K/d, the variance share inside U_K, the teacher's accuracy with
    that layer at rank K (:func:`rank_k_accuracy`) and unmodified."""
    import pandas as pd

    rows = []
    for sub, acc_k in zip(subspaces, rank_k):
        d, k = sub.basis.shape
        rows.append({"layer": sub.layer, "d": d, "K": k, "K/d": k / d, "variance share in U_K": sub.variance_share,
                     "teacher accuracy, rank-K layer": acc_k, "teacher accuracy, unmodified": accuracy})
    return pd.DataFrame(rows)


def digit_energy_table(fits: dict, delta: dict):
    """Per ρ the subspaces were fitted on (``fits``: ρ → subspaces) and layer: the share of
    the digit's effect (``delta`` from :func:`digit_effect`) inside U_K and inside a random
    K-dim subspace."""
    import pandas as pd

    rows = []
    for rho_fit, subs in sorted(fits.items()):
        for sub in subs:
            e = artifact_energy(delta[sub.layer], sub.basis)
            rows.append({"fitted_on_rho": rho_fit, "layer": sub.layer, "digit_energy_in_U_K": e["inside_share"],
                         "in_random_K_subspace": e["random_inside_share"]})
    return pd.DataFrame(rows)


def student_pair_table(subspaces_by_student: dict, delta: dict):
    """Per student (``subspaces_by_student``: student name → the subspaces fitted for its
    widths) and layer: K/d, the variance share and the digit's effect inside U_K."""
    import pandas as pd

    rows = []
    for student, subs in subspaces_by_student.items():
        for sub in subs:
            e = artifact_energy(delta[sub.layer], sub.basis)
            d, k = sub.basis.shape
            rows.append({"student": student, "layer": sub.layer, "K/d": k / d,
                         "variance share in U_K": sub.variance_share,
                         "digit's effect inside U_K": e["inside_share"],
                         "inside a random K-dim. subspace": e["random_inside_share"]})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the run's subspaces (cached)

def student_ks(cfg, world) -> list[int]:
    """K per distilled layer pair: the channel width of the student's layer (D7)."""
    from .hooks import feature_shapes
    from .models import build_student

    shapes = feature_shapes(build_student(cfg.student, world.num_classes), [s for _, s in cfg.layer_pairs],
                            world.input_shape)
    return [shape[0] for shape in shapes.values()]


def relevant_subspaces(cfg, teacher, world, ks: list[int], device: torch.device, progress: bool = False):
    """The relevant subspaces of ``cfg``'s teacher layers (K from ``ks``), fitted on the
    world's training images (eval transform, D8) and cached per (teacher, data, seed,
    layers, K, positions, code): ``(subspaces, cache file)``."""
    from . import CODE_VERSION
    from .io import cache_dir, digest
    from .teacher import teacher_identity

    layers = [t for t, _ in cfg.layer_pairs]
    key = digest({"teacher": teacher_identity(cfg), "data": cfg.data.__dict__, "seed": cfg.seed,
                   "layers": layers, "ks": ks, "positions": cfg.subspace_positions,
                   "code": CODE_VERSION}, default=str)
    path = cache_dir("subspaces") / f"{key}.pt"
    if path.is_file():
        try:
            return load_subspaces(path), path
        except Exception:  # noqa: BLE001 - a corrupt cache is recomputed
            path.unlink(missing_ok=True)
    batches = (x.to(device) for x, _, _ in world.batches("train_eval", 64))
    subspaces = fit_relevant_subspaces(teacher, layers, batches, ks, seed=cfg.seed,
                                       positions=cfg.subspace_positions, device=device)
    save_subspaces(path, subspaces)
    return subspaces, path


# ---------------------------------------------------------------- storage

def save_subspaces(path: str | os.PathLike, subspaces: Sequence[RelevantSubspace]) -> None:
    torch_save([s.to_dict() for s in subspaces], path)


def load_subspaces(path: str | os.PathLike) -> list[RelevantSubspace]:
    try:
        items = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as e:
        raise ReproError(f"no subspace file at {path}; fit it with fit_relevant_subspaces") from e
    return [RelevantSubspace.from_dict(d) for d in items]

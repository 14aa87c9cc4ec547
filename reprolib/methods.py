"""The five distillation methods of P1 (``book/protocol.md`` §3, §4.4–4.6).

A method is a module with a *teacher transform*, a *student transform* and a
*criterion* (one scalar per layer pair). Spatial alignment (§2.3) comes first:
the teacher map is pooled inside :meth:`DistillMethod.teacher_transform` (run
under ``no_grad``, cacheable) and a larger student map inside
:meth:`DistillMethod.student_transform`. Learned parts are submodules, so
``method.parameters()`` is exactly what the optimiser adds to the student's.

The objective (§3.0) is ``L = λ_task·CE + KD + λ_layer·Σ_l L_l``; see
:func:`total_loss`.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import orthogonal

from .errors import ReproError

Shape = Sequence[int]  # (C, H, W)

VID_EPS = 1e-5
VID_INIT_VARIANCE = 5.0


# ---------------------------------------------------------------- pure functions

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 4.0) -> torch.Tensor:
    """Output-only KD (Hinton et al. 2015; §3.0, ``previous_works/kd.py``).

    ``T² · (1/B) Σ_b KL(softmax(z^T_b/T) ‖ softmax(z^S_b/T))``, over the subtask
    logits only. Paper and code agree; T = 4 fixed (D6).
    """
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1),
                    F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


def common_size(teacher_hw: Shape, student_hw: Shape) -> tuple[int, int]:
    """The spatial size both maps of a pair are pooled to: the smaller one (§2.3)."""
    t, s = tuple(int(v) for v in teacher_hw), tuple(int(v) for v in student_hw)
    if t == s:
        return t
    if t[0] >= s[0] and t[1] >= s[1]:
        big, small = t, s
    elif t[0] <= s[0] and t[1] <= s[1]:
        big, small = s, t
    else:
        big = small = None
    if big is None or min(small) < 1 or big[0] % small[0] or big[1] % small[1]:
        raise ReproError(
            f"cannot match the spatial sizes of teacher map {t[0]}×{t[1]} and student map "
            f"{s[0]}×{s[1]}: the larger map must be an integer multiple of the smaller on both "
            "sides; pick another layer pair (e.g. a teacher layer of the same or a multiple size)")
    return small


def _pool(f: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return f if tuple(f.shape[-2:]) == tuple(size) else F.adaptive_avg_pool2d(f, tuple(size))


def align_spatial(teacher_map: torch.Tensor, student_map: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pool the larger map to the smaller size with adaptive average pooling (§2.3).

    Code: ``LayerPolicy.align_spatial_dimensions`` (the paper is silent). The
    teacher's μ and α come from unpooled maps while its target is pooled (A11).
    """
    size = common_size(teacher_map.shape[-2:], student_map.shape[-2:])
    return _pool(teacher_map, size), _pool(student_map, size)


def attention_map(f: torch.Tensor) -> torch.Tensor:
    """AT's attention map (§3.2): ``vec(mean_c F_c²) / ‖·‖₂`` per sample, shape (B, H·W).

    p = 2 and F.normalize's eps 1e-12, as in the official AT code and the authors'.
    """
    return F.normalize(f.pow(2).mean(dim=1).flatten(1), dim=1, eps=1e-12)


def _channel_mm(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 1×1 convolution without bias as one matrix multiply: ``y[b,o,h,w] = Σ_c W[o,c] x[b,c,h,w]``.

    ``x`` (B, C, H, W) is viewed channels-last (free for the trainer's
    channels_last maps); ``weight`` is (O, C) or a conv weight (O, C, 1, 1). The
    result is a channels-last (B, O, H, W) tensor.
    """
    b, c, h, w = x.shape
    y = x.permute(0, 2, 3, 1).reshape(b * h * w, c) @ weight.reshape(weight.shape[0], c).t()
    return y.view(b, h, w, -1).permute(0, 3, 1, 2)


# ---------------------------------------------------------------- the registry

# The methods by the name users type, in registration order: the trainer, the sweep's
# workers and the tests use this registry. ``reprolib.config.METHODS`` is the same names
# as a plain tuple, because config, the sweep's driver and ``--help`` must not import
# torch (measured: 0.5 s to import reprolib.sweep, 13-15 s with torch on the loaded
# 2-core machine); tests/test_cohort.py checks that the two agree.
METHODS: dict[str, type["DistillMethod"]] = {}


def register_method(name: str):
    """Class decorator: register a :class:`DistillMethod` under ``name``."""
    def deco(cls):
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls
    return deco


# ---------------------------------------------------------------- the abstraction

class DistillMethod(nn.Module):
    """Base class: teacher transform, student transform, criterion per layer pair.

    Subclasses override the per-pair hooks :meth:`teacher_one`,
    :meth:`student_one` and :meth:`pair_loss`; spatial pooling is done here.
    """

    name = ""
    uses_layers = True
    needs_subspaces = False   # the trainer fits the relevant subspaces (§4.2) for it

    @classmethod
    def build(cls, teacher_shapes: Sequence[Shape], student_shapes: Sequence[Shape], *,
              student_norm: str = "standardize", vid_variance: str = "learned",
              subspaces=None) -> "DistillMethod":
        """The method for the given shapes; each class takes the options it needs."""
        return cls(teacher_shapes, student_shapes)

    def __init__(self, teacher_shapes: Sequence[Shape] = (), student_shapes: Sequence[Shape] = ()):
        super().__init__()
        if len(teacher_shapes) != len(student_shapes):
            raise ReproError(f"{len(teacher_shapes)} teacher layers but {len(student_shapes)} "
                             "student layers; give one teacher and one student layer per pair")
        for shape in (*teacher_shapes, *student_shapes):
            if len(shape) != 3:
                raise ReproError(f"layer shape {tuple(shape)} is not (C, H, W); pass the feature "
                                 "shape without the batch dimension")
        self.teacher_shapes = [tuple(int(v) for v in s) for s in teacher_shapes]
        self.student_shapes = [tuple(int(v) for v in s) for s in student_shapes]
        self.sizes = [common_size(t[1:], s[1:])
                      for t, s in zip(self.teacher_shapes, self.student_shapes)]

    def teacher_one(self, i: int, t: torch.Tensor) -> torch.Tensor:
        return t

    def student_one(self, i: int, s: torch.Tensor) -> torch.Tensor:
        return s

    def pair_loss(self, i: int, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def teacher_transform(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Deterministic, depends only on teacher features (the trainer may cache it)."""
        self._check_count(feats)
        return [self.teacher_one(i, _pool(f, hw)) for i, (f, hw) in enumerate(zip(feats, self.sizes))]

    def student_transform(self, feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check_count(feats)
        return [self.student_one(i, _pool(f, hw)) for i, (f, hw) in enumerate(zip(feats, self.sizes))]

    def criterion(self, s_list: Sequence[torch.Tensor], t_list: Sequence[torch.Tensor]
                  ) -> list[torch.Tensor]:
        return [self.pair_loss(i, s, t) for i, (s, t) in enumerate(zip(s_list, t_list))]

    def teacher_targets(self, teacher_feats: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The teacher's side of the loss from its raw features: :meth:`teacher_transform`
        without gradient, detached (an identity transform would otherwise hand back the
        caller's tensor). The trainer computes the same once per batch for every student."""
        with torch.no_grad():
            return [t.detach() for t in self.teacher_transform(teacher_feats)]

    def forward(self, student_feats: Sequence[torch.Tensor],
                teacher_targets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The layer losses, one per pair, from the student's raw features and the
        teacher's targets (:meth:`teacher_targets`). Training and the golden-value tests
        both call this."""
        return self.criterion(self.student_transform(student_feats), teacher_targets)

    def _check_count(self, feats: Sequence[torch.Tensor]) -> None:
        if len(feats) != len(self.sizes):
            raise ReproError(f"{type(self).__name__} was built for {len(self.sizes)} layer pairs "
                             f"but got {len(feats)} feature maps")


@register_method("kd")
class KD(DistillMethod):
    """Output-only KD (§3.1): the objective is :func:`kd_loss` alone; no layer term."""

    uses_layers = False

    @classmethod
    def build(cls, teacher_shapes, student_shapes, **options):
        return cls()

    def teacher_targets(self, teacher_feats) -> list[torch.Tensor]:
        return []

    def forward(self, student_feats, teacher_targets) -> list[torch.Tensor]:
        return []


@register_method("at")
class AttentionTransfer(DistillMethod):
    """Attention transfer (Zagoruyko & Komodakis 2017; §3.2, ``attention_transfer.py``).

    ``L_l = (1/(B·HW)) Σ_b ‖A(F^T_b) − A(F^S_b)‖²`` with :func:`attention_map`.
    Paper vs code: the AT paper uses a non-squared p-norm with β = 10³/(HW·B);
    the official code (and the authors') the mean squared difference, used
    here (A12).
    """

    def teacher_one(self, i, t):
        return attention_map(t)

    def student_one(self, i, s):
        return attention_map(s)

    def pair_loss(self, i, s, t):
        return (s - t).pow(2).mean()


class _VIDLayer(nn.Module):
    def __init__(self, c_s: int, c_t: int, learned: bool):
        super().__init__()
        self.regressor = nn.Sequential(
            nn.Conv2d(c_s, c_t, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_t, c_t, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_t, c_t, 1, bias=False))
        # softplus(alpha) + eps = 5.0 at init (the VID paper's initial variance).
        alpha = torch.full((c_t,), math.log(math.expm1(VID_INIT_VARIANCE - VID_EPS)))
        if learned:
            self.alpha = nn.Parameter(alpha)
        else:
            self.register_buffer("alpha", alpha)

    def variance(self) -> torch.Tensor:
        return F.softplus(self.alpha) + VID_EPS


@register_method("vid")
class VID(DistillMethod):
    """Variational information distillation (Ahn et al. 2019; §3.3, ``vid.py``).

    ``L_l = mean_{b,c,h,w} ½[(μ(F^S) − F^T)²/σ_c² + log σ_c²]``, μ a bias-free
    1×1-conv regressor C_S→C_T→C_T→C_T with ReLUs, σ_c² = softplus(α_c) + 1e-5.
    Paper vs code (A5, D5): the method learns σ² (default ``"learned"``); the
    authors' GPU runs kept σ² = 5 by accident (``"fixed"``, a buffer).
    """

    @classmethod
    def build(cls, teacher_shapes, student_shapes, *, vid_variance="learned", **options):
        return cls(teacher_shapes, student_shapes, vid_variance=vid_variance)

    def __init__(self, teacher_shapes, student_shapes, vid_variance: str = "learned"):
        super().__init__(teacher_shapes, student_shapes)
        if vid_variance not in ("learned", "fixed"):
            raise ReproError(f"unknown vid_variance {vid_variance!r}; choose 'learned' or 'fixed'")
        self.vid_variance = vid_variance
        self.layers = nn.ModuleList(_VIDLayer(s[0], t[0], vid_variance == "learned")
                                    for t, s in zip(self.teacher_shapes, self.student_shapes))

    def student_one(self, i, s):
        # The regressor's three 1×1 convolutions as matrix multiplies over the
        # channels of a channels-last view (same weights, same state dict).
        reg = self.layers[i].regressor
        z = F.relu(_channel_mm(s, reg[0].weight))
        z = F.relu(_channel_mm(z, reg[2].weight))
        return _channel_mm(z, reg[4].weight)

    def pair_loss(self, i, s, t):
        # The mean over (b, c, h, w) taken per channel first (every channel has B·H·W
        # terms): the same value, but the division by σ_c² and its gradient act on C
        # numbers instead of the whole map (VID's loss was 14 % of its step).
        var = self.layers[i].variance()
        return 0.5 * ((s - t).pow(2).mean(dim=(0, 2, 3)) / var + var.log()).mean()


@register_method("vkd")
class VkD(DistillMethod):
    """V_kD (Miles, Elezi & Deng 2024; §3.4, ``vkd.py``), per layer pair.

    ``L_l = SmoothL1_β=1(P·ḡ(F^S), LN(ḡ(F^T)))``, mean over B·C_T; ḡ global
    average pooling, P (C_T×C_S) with orthonormal columns (torch's orthogonal
    parametrisation), LN without affine, eps 1e-5.
    Paper vs code (A12): the original applies it to the final embedding; the
    authors (and we) apply it at every layer pair.

    Deviation (documented in the book): the authors' code gets torch's default
    map for a non-square P, Householder; we use the Cayley map. Both give P with
    orthonormal columns starting from the same QR-orthonormalised init, but the
    Householder map made a training step 1.4× slower than KD's (its backward
    alone took 75 ms per step for the four projectors, Cayley 11 ms), and it
    reads the ±1 diagonal of its free matrix with ``.int()``, so weight decay
    silently collapses P to zero; the Cayley map has neither problem.
    """

    def __init__(self, teacher_shapes, student_shapes):
        super().__init__(teacher_shapes, student_shapes)
        self.projectors = nn.ModuleList(
            orthogonal(nn.Linear(s[0], t[0], bias=False), orthogonal_map="cayley")
            for t, s in zip(self.teacher_shapes, self.student_shapes))

    def teacher_one(self, i, t):
        g = t.mean(dim=(2, 3))
        return F.layer_norm(g, g.shape[1:], eps=1e-5)

    def student_one(self, i, s):
        return self.projectors[i](s.mean(dim=(2, 3)))

    def pair_loss(self, i, s, t):
        return F.smooth_l1_loss(s, t, beta=1.0)


class _Center(nn.Module):
    """Subtract the per-channel batch mean (train) or the running mean (eval); no scaling."""

    def __init__(self, channels: int, momentum: float = 0.1):
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(channels))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        if self.training:
            m = s.mean(dim=(0, 2, 3))
            with torch.no_grad():
                self.running_mean.lerp_(m.detach(), self.momentum)
        else:
            m = self.running_mean
        return s - m.view(1, -1, 1, 1)


class _SubDistillLayer(nn.Module):
    def __init__(self, subspace, student_norm: str):
        super().__init__()
        k = subspace.basis.shape[1]
        # Constants of §4.4: not trained, not checkpointed, moved by .to().
        self.register_buffer("basis", subspace.basis.detach().float().clone(), persistent=False)
        self.register_buffer("mean", subspace.mean.detach().float().clone(), persistent=False)
        self.alpha = float(subspace.alpha)
        if student_norm == "standardize":
            self.norm = nn.BatchNorm2d(k, eps=1e-5, momentum=0.1, affine=False)
        else:
            self.norm = _Center(k)
        self.rotation = orthogonal(nn.Linear(k, k, bias=False))


@register_method("subdistill")
class SubDistill(DistillMethod):
    """SubDistill (P2; §3.5, §4.4–4.6, ``ours.py::OrthogonalBasisCenterRotationV2Policy``).

    ``L_l = (1/B) Σ_b (1/(|Ω|·α_l)) Σ_p ‖V ŝ_{b,p} − U_Kᵀ(P(t)_{b,p} − μ)‖²``
    with U_K, μ, α_l fixed (:mod:`reprolib.subspace`) and V ∈ O(K) learned
    (torch's orthogonal parametrisation: random-QR V₀, exp map; D7).
    Paper vs code (A1, D1): the paper centres the student (``"center"``); the
    code standardises it with batch statistics, BatchNorm without affine
    (``"standardize"``, default). In eval mode (validation logging only) our
    BatchNorm uses its running mean and variance; the authors' divides by
    √(1 + eps) instead. Training is identical.
    """

    needs_subspaces = True

    @classmethod
    def build(cls, teacher_shapes, student_shapes, *, subspaces=None, student_norm="standardize",
              **options):
        return cls(teacher_shapes, student_shapes, subspaces, student_norm=student_norm)

    def __init__(self, teacher_shapes, student_shapes, subspaces, student_norm: str = "standardize"):
        super().__init__(teacher_shapes, student_shapes)
        if student_norm not in ("standardize", "center"):
            raise ReproError(f"unknown student_norm {student_norm!r}; choose 'standardize' or 'center'")
        if subspaces is None or len(subspaces) != len(self.teacher_shapes):
            n = "none" if subspaces is None else len(subspaces)
            raise ReproError(f"subdistill needs one relevant subspace per layer pair "
                             f"({len(self.teacher_shapes)}), got {n}; fit them with "
                             "reprolib.subspace.fit_relevant_subspaces (or load_subspaces)")
        for i, (sub, t, s) in enumerate(zip(subspaces, self.teacher_shapes, self.student_shapes)):
            d, k = sub.basis.shape
            if d != t[0] or k != s[0]:
                raise ReproError(f"layer pair {i}: the subspace basis is {d}×{k} but the teacher has "
                                 f"{t[0]} channels and the student {s[0]}; refit the subspace with "
                                 f"K = {s[0]} on the teacher layer with {t[0]} channels")
        self.student_norm = student_norm
        self.layers = nn.ModuleList(_SubDistillLayer(sub, student_norm) for sub in subspaces)

    def teacher_one(self, i, t):
        layer = self.layers[i]
        # U_Kᵀ(t − μ) per position: a matrix multiply over channels (a 1×1 convolution).
        return _channel_mm(t - layer.mean.view(1, -1, 1, 1), layer.basis.t())

    def student_one(self, i, s):
        layer = self.layers[i]
        return _channel_mm(layer.norm(s), layer.rotation.weight)

    def pair_loss(self, i, s, t):
        b, _, h, w = s.shape
        return (s - t).pow(2).sum() / (b * h * w * self.layers[i].alpha)


# ---------------------------------------------------------------- building and the objective

def build_method(name: str, teacher_shapes: Sequence[Shape], student_shapes: Sequence[Shape], *,
                 student_norm: str = "standardize", vid_variance: str = "learned",
                 subspaces=None) -> DistillMethod:
    """The method registered as ``name`` for the given (C, H, W) shapes per layer pair."""
    if name not in METHODS:
        raise ReproError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name].build(teacher_shapes, student_shapes, student_norm=student_norm,
                               vid_variance=vid_variance, subspaces=subspaces)


def loss_terms(kd_term: torch.Tensor, layer_terms: Sequence[torch.Tensor], lambda_layer: float,
               ce_term: torch.Tensor | None = None, lambda_task: float = 0.0
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``L = λ_task·CE + KD + λ_layer·Σ_l L_l`` and its named terms, as tensors.

    Nothing is read to the host (the trainer accumulates the terms on the
    device); :func:`total_loss` is the same with the terms as floats.
    """
    if lambda_task and ce_term is None:
        raise ReproError("lambda_task > 0 but no cross-entropy term was given; pass ce_term "
                         "or set lambda_task = 0 (P1 never trains on labels)")
    layer_sum = sum(layer_terms, kd_term.new_zeros(()))
    total = kd_term + lambda_layer * layer_sum
    terms = {"kd": kd_term, "layer": layer_sum}
    terms.update({f"layer_{i}": v for i, v in enumerate(layer_terms)})
    if ce_term is not None:
        total = total + lambda_task * ce_term
        terms["ce"] = ce_term
    terms["total"] = total
    return total, {k: v.detach() for k, v in terms.items()}


def total_loss(kd_term: torch.Tensor, layer_terms: Sequence[torch.Tensor], lambda_layer: float,
               ce_term: torch.Tensor | None = None, lambda_task: float = 0.0
               ) -> tuple[torch.Tensor, dict[str, float]]:
    """``L = λ_task·CE + KD + λ_layer·Σ_l L_l`` (§3.0; λ_kd = 1, λ_task = 0 in P1).

    Returns the scalar and the named terms as floats (for logging and
    :func:`check_finite`).
    """
    total, terms = loss_terms(kd_term, layer_terms, lambda_layer, ce_term, lambda_task)
    return total, {k: float(v) for k, v in terms.items()}


def check_finite(terms: dict[str, float], step: int) -> None:
    """Raise a :class:`ReproError` naming the first NaN/inf loss term and the step."""
    for name, value in terms.items():
        if not math.isfinite(float(value)):
            raise ReproError(f"loss term {name} became NaN/inf at step {step}; lower the learning "
                             "rate or lambda_layer, or check the inputs and features for NaN/inf")

"""LRP heatmaps of the logit gap, and the numbers the book draws from them (D9, §6.4).

What is explained (D9; §6.4, CONFIRMED-code in the authors' ``explainersv2.py``):
the **logit gap** ``z_y − max_{c≠y} z_c`` with ``y`` the true label. In zennit the
tensor handed to the ``Gradient`` attributor is the *output relevance*, which the
LRP rules conserve layer by layer. The seed is therefore ``z_y`` at ``y``,
``−z_c`` at the strongest other class ``c`` and 0 elsewhere (:func:`logit_gap_seed`),
as in the authors' code, and the input relevance sums to the gap up to what
biases and ε absorb (tested). A seed of +1/−1 (the gradient of the gap) would
give heatmaps that sum to 0 instead: the same relevance flow per class, but
weighted 1 : 1 rather than ``z_y : z_c``.

Composite (§6.4): zennit's ``EpsilonGammaBox`` layout with ``ResNetCanonizer``:
ZBox on the first convolution (bounds = the normalised images of pixel values 0
and 1), Gamma (γ = 1 by default) on every other convolution, Epsilon (ε = 1e-6)
on linear layers, ReLU passed through, sums and average pooling normalised.
By default the Gamma rule is computed by :class:`PostReLUGamma`: the same rule as
zennit's generalized ``Gamma``, in two modified passes instead of five, which is
exact for the non-negative (post-ReLU) inputs that every convolution after the
first sees in a ResNet (it falls back to zennit's ``Gamma`` otherwise);
``fast_gamma=False`` uses zennit's ``Gamma`` itself. A test checks they agree.

Only models with a *verified* canonizer are explained: :class:`~reprolib.models.BlockResNet`,
torchvision ``ResNet`` and a :class:`~reprolib.models.FrozenTeacher` around either.
For them zennit's ``ResNetCanonizer`` merges every BatchNorm into the convolution
before it and turns each residual addition into a ``Sum`` module; this module
checks at every use that it did so for every BatchNorm and every block. One
addition to zennit: after the merge, each BatchNorm's ``eps`` is set to 0 while
the canonizer is active (and restored afterwards), so the reduced BatchNorm is an
exact identity and the canonized model computes the same function as the
original (zennit leaves ``eps``, which scales each BatchNorm's output by
``1/sqrt(1+eps)``). Any other model (e.g. timm's MobileNetV4 student, for which
zennit has no canonizer: its BatchNorms would not be merged) raises a
:class:`~reprolib.errors.ReproError`, and the book reports it as *not explained*
(D9).

Heatmaps are the input relevance summed over channels, shape ``[B, H, W]``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import Canonizer, MergeBatchNorm
from zennit.composites import EpsilonGammaBox, LayerMapComposite, layer_map_base
from zennit.core import BasicHook, Composite, Stabilizer
from zennit.rules import Epsilon, Gamma, GammaMod
from zennit.torchvision import ResNetCanonizer
from zennit.types import BatchNorm, Convolution

from .errors import ReproError
from .models import BlockResNet, FrozenTeacher

RULES = ("epsilon_gamma_box", "epsilon")

__all__ = [
    "RULES", "PostReLUGamma", "box_bounds", "verified_canonizers", "build_composite", "logit_gap_seed",
    "logit_gap", "logit_gap_relevance", "relevance_correlation", "digit_share", "summarize",
]


# ---------------------------------------------------------------------------
# which models can be explained

def _unwrap_compiled(model: nn.Module) -> nn.Module:
    """The eager module behind ``torch.compile`` (hooks need the uncompiled model)."""
    return getattr(model, "_orig_mod", model)


def _canonizable_core(model: nn.Module) -> nn.Module | None:
    """The ResNet that zennit's ResNetCanonizer is verified for, or None."""
    import torchvision

    core = model.model if isinstance(model, FrozenTeacher) else model
    if isinstance(core, (BlockResNet, torchvision.models.ResNet)):
        return core
    return None


def _require_verified(model: nn.Module) -> None:
    if _canonizable_core(model) is None:
        inner = model.model if isinstance(model, FrozenTeacher) else model
        raise ReproError(
            f"no verified LRP canonizer exists for {type(inner).__module__}.{type(inner).__name__}: "
            "zennit's ResNetCanonizer only handles torchvision-style ResNets (reprolib's BlockResNet, "
            "torchvision ResNet, or a FrozenTeacher around one), so this model is reported as "
            "'not explained' (D9). To explain it, write a canonizer that merges every BatchNorm "
            "into its linear layer and exposes every residual sum as a module, add it to "
            "reprolib.lrp.verified_canonizers, and extend tests/test_lrp.py's output-equality and "
            "conservation tests to the model.")


class _ExactIdentityBatchNorm(Canonizer):
    """Set ``eps = 0`` on merged BatchNorms, so that they compute the identity exactly.

    Must run after zennit's merge (which uses the original ``eps``); restores
    ``eps`` on removal.
    """

    def __init__(self):
        self.module = None
        self.eps = None

    def apply(self, root_module):
        instances = []
        for module in root_module.modules():
            if isinstance(module, BatchNorm):
                instance = self.copy()
                instance.register(module)
                instances.append(instance)
        return instances

    def register(self, module):
        self.module, self.eps = module, module.eps
        module.eps = 0.0

    def remove(self):
        self.module.eps = self.eps


def verified_canonizers(model: nn.Module) -> list[Canonizer]:
    """The canonizers that make ``model`` fit for LRP; ReproError if none is verified."""
    _require_verified(_unwrap_compiled(model))
    return [ResNetCanonizer(), _ExactIdentityBatchNorm()]


def _check_canonized(model: nn.Module, composite: Composite) -> None:
    """Fail loudly if the canonizers did not reach every BatchNorm and residual block."""
    from torchvision.models.resnet import BasicBlock, Bottleneck

    n_bn = sum(isinstance(m, BatchNorm) for m in model.modules())
    merged = sum(isinstance(h, MergeBatchNorm) for h in composite.handles)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    summed = sum(hasattr(b, "canonizer_sum") for b in blocks)
    if merged != n_bn or summed != len(blocks):
        raise ReproError(
            f"the ResNet canonizer merged {merged} of {n_bn} BatchNorms and rewired {summed} of "
            f"{len(blocks)} residual blocks of {type(model).__name__}; its module order differs from "
            "torchvision's (each BatchNorm must be registered right after its convolution), so LRP "
            "would be wrong. Register modules in forward order, or report the model as not explained.")


# ---------------------------------------------------------------------------
# composite

class PostReLUGamma(BasicHook):
    """zennit's generalized Gamma rule, specialised to non-negative inputs.

    For ``x ≥ 0`` zennit's ``Gamma`` (five modified forward passes) reduces to
    ``R_i = x_i (w_ij + γ w_ij⁺) R_j / z_j⁺`` for outputs with ``z_j > 0`` and
    ``x_i (w_ij + γ w_ij⁻) R_j / z_j⁻`` for ``z_j < 0``, where ``z⁺``/``z⁻`` use the
    γ-modified weights and biases. Those are two passes; the sign of ``z`` comes
    from their sum, ``z⁺ + z⁻ = (2 + γ) z``. Inputs with a negative entry are
    handed to zennit's ``Gamma``, so the rule is never wrong, only sometimes slow.
    """

    def __init__(self, gamma: float = 1.0, stabilizer: float = 1e-6):
        self.gamma, self.stabilizer = gamma, stabilizer
        self._general = Gamma(gamma=gamma, stabilizer=stabilizer)
        stabilize = Stabilizer.ensure(stabilizer)

        def gradient_mapper(out_grad, outputs):
            z = outputs[0] + outputs[1]
            return [(z > 0) * out_grad / stabilize(outputs[0]), (z < 0) * out_grad / stabilize(outputs[1])]

        super().__init__(
            # detach: two distinct leaves, so each pass gets its own gradient
            input_modifiers=[lambda x: x.detach(), lambda x: x.detach()],
            param_modifiers=[GammaMod(gamma, min=0.0), GammaMod(gamma, max=0.0)],
            output_modifiers=[lambda z: z] * 2,
            gradient_mapper=gradient_mapper,
            reducer=lambda inputs, grads: inputs[0] * grads[0] + inputs[1] * grads[1],
        )

    def backward(self, module, grad_input, grad_output):
        if (self.stored_tensors["input"][0] < 0).any():
            self._general.stored_tensors = self.stored_tensors
            return self._general.backward(module, grad_input, grad_output)
        return super().backward(module, grad_input, grad_output)

    def copy(self):
        return type(self)(self.gamma, self.stabilizer)


def box_bounds(mean: Sequence[float], std: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """ZBox bounds: the normalised images of pixel values 0 and 1, shape ``[1, C, 1, 1]``."""
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (0.0 - m) / s, (1.0 - m) / s


def _as_bound(value, name: str) -> torch.Tensor:
    if value is None:
        raise ReproError(f"the ZBox rule needs {name}: pass low/high = reprolib.lrp.box_bounds(world.mean, "
                         "world.std) (the normalised images of pixel values 0 and 1)")
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.ndim == 1:  # one value per channel
        t = t.view(1, -1, 1, 1)
    return t


def build_composite(model: nn.Module, low=None, high=None, *, gamma: float = 1.0,
                    epsilon: float = 1e-6, rule: str = "epsilon_gamma_box",
                    fast_gamma: bool = True) -> Composite:
    """An LRP composite with the verified canonizers of ``model`` (§6.4).

    ``rule="epsilon_gamma_box"`` (default, D9): ZBox(low, high) on the first
    convolution, Gamma(``gamma``) on the other convolutions, Epsilon(``epsilon``)
    on ``nn.Linear``; ``low``/``high`` broadcast to the input (a float, one value
    per channel, or a ``[1, C, 1, 1]`` tensor; see :func:`box_bounds`). Gamma is
    :class:`PostReLUGamma` (same rule, fewer passes) unless ``fast_gamma=False``.
    ``rule="epsilon"``: Epsilon on every convolution and linear layer (for the
    conservation test; ``low``/``high`` are ignored).
    ReLUs pass relevance through; sums and average pooling use zennit's Norm rule.

    The composite may be reused on any model with a verified canonizer; it is
    registered only inside :func:`logit_gap_relevance` (or ``composite.context``).
    """
    _require_verified(_unwrap_compiled(model))
    canonizers = verified_canonizers(model)
    if rule == "epsilon_gamma_box":
        # A layer_map entry precedes EpsilonGammaBox's own Gamma; ZBox still takes the first conv.
        layer_map = [(Convolution, PostReLUGamma(gamma=gamma))] if fast_gamma else None
        return EpsilonGammaBox(low=_as_bound(low, "low"), high=_as_bound(high, "high"),
                               epsilon=epsilon, gamma=gamma, layer_map=layer_map,
                               canonizers=canonizers)
    if rule == "epsilon":
        layer_map = layer_map_base(epsilon) + [(Convolution, Epsilon(epsilon=epsilon)),
                                               (nn.Linear, Epsilon(epsilon=epsilon))]
        return LayerMapComposite(layer_map=layer_map, canonizers=canonizers)
    raise ReproError(f"unknown LRP rule set {rule!r}; choose one of {list(RULES)}")


# ---------------------------------------------------------------------------
# the explained quantity

def _strongest_other(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    others = logits.detach().clone()
    others.scatter_(1, target.view(-1, 1), float("-inf"))
    return others.argmax(dim=1)


def logit_gap(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``z_y − max_{c≠y} z_c`` per sample (D9), shape ``[B]``."""
    c = _strongest_other(logits, target)
    return logits.gather(1, target.view(-1, 1))[:, 0] - logits.gather(1, c.view(-1, 1))[:, 0]


def logit_gap_seed(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Output relevance whose LRP explains the logit gap: ``z_y`` at y, ``−z_c`` at c, 0 elsewhere."""
    z = logits.detach()
    rows = torch.arange(z.shape[0], device=z.device)
    c = _strongest_other(z, target)
    seed = torch.zeros_like(z)
    seed[rows, target] = z[rows, target]
    seed[rows, c] = -z[rows, c]
    return seed


@contextlib.contextmanager
def _explaining(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration; restores every flag exactly."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for m, _ in modes:
            m.training = False  # not .eval(): FrozenTeacher overrides train()
        for p, _ in grads:
            p.requires_grad_(False)
        yield
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in grads:
            p.requires_grad_(flag)


def logit_gap_relevance(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                        composite: Composite | None = None, *, low=None, high=None,
                        gamma: float = 1.0, epsilon: float = 1e-6,
                        batch_size: int = 64) -> torch.Tensor:
    """LRP heatmaps of the logit gap for the true labels ``target`` (D9), ``[B, H, W]`` float32 on CPU.

    ``composite`` defaults to :func:`build_composite(model, low, high, gamma=gamma,
    epsilon=epsilon) <build_composite>`. Runs the eager (uncompiled) model in
    eval mode, in the model's parameter dtype (float32 for reprolib's models),
    ``batch_size`` images at a time on the model's device. The model is left
    exactly as it was: every submodule's training flag, every ``requires_grad``
    flag, parameters and BatchNorm statistics; canonizers and hooks removed.
    """
    model = _unwrap_compiled(model)
    _require_verified(model)
    if composite is None:
        composite = build_composite(model, low, high, gamma=gamma, epsilon=epsilon)
    target = torch.as_tensor(target, dtype=torch.long).view(-1)
    if x.ndim != 4 or x.shape[0] != target.shape[0]:
        raise ReproError(f"expected images [B, C, H, W] and B labels, got {tuple(x.shape)} and "
                         f"{tuple(target.shape)}")
    if batch_size < 1:
        raise ReproError(f"batch_size must be positive, got {batch_size}")
    param = next(model.parameters())
    heatmaps = []
    with _explaining(model), torch.enable_grad(), composite.context(model):
        _check_canonized(model, composite)
        attributor = Gradient(model)  # the composite is already registered
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].detach().to(param.device, param.dtype).clone()
            yb = target[start:start + batch_size].to(param.device)
            _, relevance = attributor(xb, lambda out, yb=yb: logit_gap_seed(out, yb))
            heatmaps.append(relevance.sum(dim=1).detach().float().cpu())
    return torch.cat(heatmaps) if heatmaps else torch.empty(0, *x.shape[2:])


# ---------------------------------------------------------------------------
# numbers from heatmaps

def relevance_correlation(h_teacher: torch.Tensor, h_student: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of the two flattened heatmaps, per image, ``[B]`` (D9).

    NaN where either heatmap is constant (e.g. all zero): the correlation is
    undefined there; :func:`summarize` drops NaNs and reports how many remain.
    """
    if h_teacher.shape != h_student.shape:
        raise ReproError(f"teacher and student heatmaps differ in shape: {tuple(h_teacher.shape)} vs "
                         f"{tuple(h_student.shape)}; explain both on the same images at the same size")
    a = h_teacher.detach().reshape(h_teacher.shape[0], -1).double()
    b = h_student.detach().reshape(h_student.shape[0], -1).double()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    denom = (a.pow(2).sum(1) * b.pow(2).sum(1)).sqrt()
    r = (a * b).sum(1) / denom
    r = torch.where(denom > 0, r.clamp(-1.0, 1.0), torch.full_like(r, float("nan")))
    return r.float()


def digit_share(heatmaps: torch.Tensor, box: tuple[int, int, int]) -> torch.Tensor:
    """Share of each heatmap's positive relevance inside the square ``box = (row0, col0, size)``, ``[B]``.

    NaN where a heatmap has no positive relevance.
    """
    row0, col0, size = box
    h = heatmaps.detach().double()
    if h.ndim != 3:
        raise ReproError(f"expected heatmaps [B, H, W], got {tuple(h.shape)}")
    if row0 < 0 or col0 < 0 or size < 1 or row0 + size > h.shape[1] or col0 + size > h.shape[2]:
        raise ReproError(f"the patch {box} does not lie inside {tuple(h.shape[1:])} heatmaps")
    pos = h.clamp(min=0)
    total = pos.sum(dim=(1, 2))
    inside = pos[:, row0:row0 + size, col0:col0 + size].sum(dim=(1, 2))
    share = torch.where(total > 0, inside / total.clamp(min=torch.finfo(h.dtype).tiny),
                        torch.full_like(total, float("nan")))
    return share.float()


def summarize(values, *, seed: int = 0, resamples: int = 1000) -> dict[str, float]:
    """Mean, median and a seeded bootstrap 95% percentile interval of the mean; NaNs dropped.

    ``n`` counts the values that remain; with none, every statistic is NaN.
    """
    v = values.detach().cpu().double().numpy() if isinstance(values, torch.Tensor) else np.asarray(values, float)
    v = v.reshape(-1)
    v = v[~np.isnan(v)]
    n = int(v.size)
    if n == 0:
        nan = math.nan
        return dict(mean=nan, median=nan, ci_low=nan, ci_high=nan, n=0)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return dict(mean=float(v.mean()), median=float(np.median(v)), ci_low=float(low),
                ci_high=float(high), n=n)

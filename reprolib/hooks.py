"""Feature capture by dotted module paths, with forward hooks.

No model is rewritten to return its features: :class:`FeatureCapture` registers
a forward hook on each named module and removes them all when the context ends.
Paths are resolved and validated before any training (:func:`resolve_modules`),
with an error that lists the valid names.
"""

from __future__ import annotations

import difflib
from typing import Sequence

import torch
from torch import nn

from .errors import ReproError


def resolve_modules(model: nn.Module, paths: Sequence[str]) -> dict[str, nn.Module]:
    """Map each dotted path to its module; unknown paths raise a clear error."""
    named = dict(model.named_modules())
    missing = [p for p in paths if p not in named or p == ""]
    if missing:
        hints = []
        for p in missing:
            close = difflib.get_close_matches(p, named, n=3)
            hints.append(f"{p!r}" + (f" (did you mean {', '.join(close)}?)" if close else ""))
        valid = [n for n in named if n]
        shown = ", ".join(valid[:60]) + (" ..." if len(valid) > 60 else "")
        raise ReproError(f"{type(model).__name__} has no module named {', '.join(hints)}. "
                         f"Valid names: {shown}")
    return {p: named[p] for p in paths}


class FeatureCapture:
    """Context manager: ``with FeatureCapture(model, ["layer1"]) as cap: model(x); cap["layer1"]``.

    The captured tensors are the modules' outputs of the most recent forward
    pass, still attached to the autograd graph (so a caller can differentiate
    with respect to them).

    A training loop keeps the hooks for a whole run instead: :meth:`open` once,
    :meth:`close` at the end, and ``armed`` set only around the forward passes
    whose features it wants (an unarmed hook stores nothing: evaluation passes).
    """

    def __init__(self, model: nn.Module, paths: Sequence[str], armed: bool = True):
        self.paths = list(paths)
        self.modules = resolve_modules(model, self.paths)
        self.features: dict[str, torch.Tensor] = {}
        self.armed = armed
        self._handles: list = []

    def open(self) -> "FeatureCapture":
        """Register the hooks (until :meth:`close`)."""
        for path, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(path)))
        return self

    def _hook(self, path: str):
        def hook(_module, _inputs, output):
            if not self.armed:
                return
            if not isinstance(output, torch.Tensor):
                raise ReproError(f"module {path!r} returns {type(output).__name__}, not a tensor; "
                                 "pick a module whose output is a feature map")
            self.features[path] = output
        return hook

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "FeatureCapture":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def __getitem__(self, path: str) -> torch.Tensor:
        return self.features[path]

    def get(self, paths: Sequence[str] | None = None) -> list[torch.Tensor]:
        return [self.features[p] for p in (paths or self.paths)]


@torch.no_grad()
def feature_shapes(model: nn.Module, paths: Sequence[str],
                   input_shape: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """Shapes (C, H, W) of each path's output for one input of ``input_shape`` (C, H, W)."""
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with FeatureCapture(model, paths) as cap:
            model(torch.zeros(1, *input_shape, device=device))
        return {p: tuple(cap[p].shape[1:]) for p in paths}
    finally:
        model.train(was_training)

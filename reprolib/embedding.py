"""t-SNE of the student's features and a number that says what they cluster by (D10, §6.3).

D10: the globally average-pooled output of the student's last distilled stage on
the test images, embedded with scikit-learn's TSNE (perplexity 30, PCA init,
fixed seed) and coloured once by class and once by the overlaid digit. Because a
picture is not a measurement, :func:`knn_agreement` gives the number beside it:
the share of each point's 10 nearest neighbours (in feature space, not in the
embedding) that carry the same class, or the same digit.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .errors import ReproError
from .hooks import FeatureCapture

__all__ = ["pooled_features", "knn_agreement", "tsne", "plot_embedding"]


def _pool(f: torch.Tensor, layer_path: str) -> torch.Tensor:
    if f.ndim == 4:          # [B, C, H, W] → global average pool
        return f.mean(dim=(2, 3))
    if f.ndim == 2:          # already a vector per image
        return f
    raise ReproError(f"layer {layer_path!r} outputs a {f.ndim}-d tensor {tuple(f.shape)}; pick a layer "
                     "whose output is a feature map [B, C, H, W] or a vector [B, C]")


@torch.no_grad()
def pooled_features(model: nn.Module, layer_path: str, batches: Iterable, device="cpu") -> np.ndarray:
    """Globally average-pooled output of ``layer_path`` for every image, ``[N, C]`` float32.

    ``batches`` yields image tensors ``[B, C, H, W]`` or tuples whose first item
    is one (e.g. a split's ``(x, y, digit)``). The model must already be on
    ``device``; it runs in eval mode without gradients, and every submodule's
    training flag is restored afterwards.
    """
    device = torch.device(device)
    param = next(model.parameters(), None)
    if param is not None and param.device.type != device.type:
        raise ReproError(f"the model is on {param.device} but features were asked on {device}; "
                         f"pass device={str(param.device)!r} or move the model with model.to({str(device)!r})")
    modes = [(m, m.training) for m in model.modules()]
    out = []
    try:
        for m, _ in modes:
            m.training = False
        with FeatureCapture(model, [layer_path]) as cap:
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x.to(device))
                out.append(_pool(cap[layer_path], layer_path).float().cpu())
    finally:
        for m, mode in modes:
            m.training = mode
    if not out:
        raise ReproError("no batches were given to pooled_features; pass a non-empty iterable of images")
    return torch.cat(out).numpy()


def knn_agreement(features, labels, k: int = 10) -> float:
    """Mean share of each point's ``k`` nearest neighbours that carry its label (D10).

    Euclidean distance in feature space; a point is never its own neighbour
    (ties among equidistant neighbours are broken arbitrarily). Chance level is
    ``Σ_l p_l²`` (about 1/5 for five balanced labels).
    """
    f = torch.as_tensor(np.asarray(features, dtype=np.float64))
    y = torch.as_tensor(np.asarray(labels).reshape(-1))
    if f.ndim != 2 or f.shape[0] != y.shape[0]:
        raise ReproError(f"expected features [N, D] and N labels, got {tuple(f.shape)} and {tuple(y.shape)}")
    n = f.shape[0]
    if not 1 <= k < n:
        raise ReproError(f"k = {k} neighbours need at least k + 1 points; got {n}")
    hits = 0
    for start in range(0, n, 1024):  # bounded memory: 1024 × N distances at a time
        d = torch.cdist(f[start:start + 1024], f)
        rows = torch.arange(d.shape[0])
        d[rows, rows + start] = float("inf")
        idx = d.topk(k, dim=1, largest=False).indices
        hits += int((y[idx] == y[start:start + 1024, None]).sum())
    return hits / (n * k)


def tsne(features, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """scikit-learn TSNE to 2-d with PCA init and ``random_state=seed`` (D10), ``[N, 2]``.

    For tiny N the perplexity is clipped to ``max(1, (N − 1) / 3)`` (scikit-learn
    needs perplexity < N, and uses 3·perplexity neighbours): with fewer than 91
    points the embedding is not at the protocol's perplexity 30, and a caller
    that reports it should say so. At least 3 points are needed.
    """
    from sklearn.manifold import TSNE

    f = np.asarray(features, dtype=np.float32)
    n = f.shape[0]
    if f.ndim != 2 or n < 3:
        raise ReproError(f"t-SNE needs features [N, D] with N >= 3, got {f.shape}")
    perp = float(min(perplexity, max(1.0, (n - 1) / 3)))
    return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(f)


def plot_embedding(ax, emb, labels, title: str, names: Sequence[str] | None = None):
    """Scatter ``emb`` ([N, 2]) on ``ax``, one colour per label, with a legend; returns ``ax``."""
    import matplotlib

    emb = np.asarray(emb)
    labels = np.asarray(labels).reshape(-1)
    cmap = matplotlib.colormaps["tab10"]
    for i, lab in enumerate(np.unique(labels)):
        sel = labels == lab
        name = names[int(lab)] if names is not None else str(lab)
        ax.scatter(emb[sel, 0], emb[sel, 1], s=6, alpha=0.7, color=cmap(i % 10), label=name)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(markerscale=2, fontsize="small", frameon=False)
    return ax

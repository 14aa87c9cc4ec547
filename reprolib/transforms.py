"""Image transforms of both worlds, batched on tensors: the mini world's
RandomResizedCrop with flip, normalisation and its inverse, and the zero padding of
28 px images to the configured size. No data, no world: the teacher's training uses
them as the worlds do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .errors import ReproError


def random_resized_crop(x: torch.Tensor, scale: tuple[float, float], generator: torch.Generator,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True) -> torch.Tensor:
    """Batched RandomResizedCrop + horizontal flip with bilinear resampling.

    Per image: an area fraction in ``scale`` and a log-uniform aspect ratio in
    ``ratio`` (torchvision's distribution; boxes that do not fit are clamped
    instead of re-drawn), a uniform position, and a flip with probability 0.5.
    """
    b = x.shape[0]
    area = torch.empty(b).uniform_(scale[0], scale[1], generator=generator)
    logr = torch.empty(b).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(b, generator=generator) * 2 - 1) * (1 - w)
    cy = (torch.rand(b, generator=generator) * 2 - 1) * (1 - h)
    sign = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if flip else torch.ones(b)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = w * sign
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x * s + m


def pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad [N, H, W] uint8 images to size×size, centred (28 → 32 in the mini world)."""
    h, w = x.shape[-2:]
    if h > size or w > size:
        raise ReproError(f"images are {h}×{w}, larger than image_size={size}")
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(x, (left, size - w - left, top, size - h - top))

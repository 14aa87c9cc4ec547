"""From a data config to its world: the one place that knows both worlds."""

from __future__ import annotations

from .config import DataConfig
from .data import MiniWorld, World
from .errors import ReproError
from .paper_world import PaperWorld


def build_world(cfg: DataConfig, seed: int, **kwargs) -> World:
    """The world of ``cfg`` for a run seed: :class:`~reprolib.data.MiniWorld` or
    :class:`~reprolib.paper_world.PaperWorld` (``kwargs``: the paper world's ``root``,
    ``num_workers``, ``device``, ``cache``)."""
    if cfg.world == "mini":
        return MiniWorld(cfg, seed)
    if cfg.world == "paper":
        return PaperWorld(cfg, seed, **kwargs)
    raise ReproError(f"unknown world {cfg.world!r}; choose 'mini' or 'paper'")

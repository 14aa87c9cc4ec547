"""Load a script of the repository (benchmarks/, scripts/, tests/) as a module, for
the tests of what it computes."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def load_script(path: str | Path, name: str | None = None, register: bool = False):
    """The module of ``path`` (relative to the repository root, or absolute); with
    ``register``, also put in ``sys.modules`` (dataclasses and pickling need that)."""
    path = Path(path)
    path = path if path.is_absolute() else ROOT / path
    name = name or path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

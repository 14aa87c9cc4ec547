"""Device names: one parser for the trainer, the sweep and the CLI.

``auto`` (CUDA when torch sees one, else the CPU), ``cpu``, ``cuda`` (the
current CUDA device) or ``cuda:N``. torch is imported only when a CUDA device
has to be checked, so the sweep can validate ``--device cpu`` before importing it.
"""

from __future__ import annotations

import re

from .errors import ReproError

DEVICE_HELP = "auto, cpu, cuda or cuda:N"


def resolve_device(device: str) -> str:
    """The device string a run uses; a clear :class:`ReproError` for anything else."""
    if not isinstance(device, str):
        device = str(device)   # a torch.device
    name = device.strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if not m:
        raise ReproError(f"unknown device {device!r}; choose {DEVICE_HELP}")
    import torch

    if not torch.cuda.is_available():
        raise ReproError(f"device {device!r} was asked for, but torch sees no CUDA device; "
                         "use --device cpu or auto")
    if m.group(1) is not None:
        index, count = int(m.group(1)), torch.cuda.device_count()
        if index >= count:
            raise ReproError(f"device {device!r} does not exist: torch sees {count} CUDA "
                             f"device(s), cuda:0 to cuda:{count - 1}")
        return f"cuda:{index}"
    return "cuda"

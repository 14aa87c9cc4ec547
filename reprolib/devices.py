"""Where and how a run computes: device names and the one execution object.

:class:`Execution` holds what changes a run's numbers (or its speed) besides its
config: the device, the torch thread count, the precision and whether the
students are compiled. The command line, :func:`reprolib.sweep.run_sweep`, the
executors, :func:`reprolib.cohort.train_cohort` and :class:`reprolib.cohort.Cohort`
take one such object; :meth:`Execution.numerics` is the record ``sweep.json``
stores and :func:`reprolib.rundirs.check_numerics` compares.

Device names: ``auto`` (CUDA when torch sees one, else the CPU), ``cpu``,
``cuda`` (the current CUDA device) or ``cuda:N``. torch is imported only when a
CUDA device has to be checked, so ``Execution(device="cpu")`` is made before
importing it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import ReproError
from .io import check_threads

if TYPE_CHECKING:
    import torch

DEVICE_HELP = "auto, cpu, cuda or cuda:N"

# The precisions a trainer runs in: fp32 (the reference numbers) or bf16 autocast.
PRECISIONS = ("fp32", "bf16")


def torch_device(device) -> "torch.device":
    """:func:`resolve_device` as a :class:`torch.device` (``"auto"``: CUDA when present)."""
    import torch

    return torch.device(resolve_device(device))


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



@dataclass(frozen=True)
class Execution:
    """How a run computes (not part of its config; fp32 on the CPU is the reference).

    ``device``: a device name (:data:`DEVICE_HELP`, or a :class:`torch.device`),
    resolved when the object is made (``auto`` becomes ``cuda`` or ``cpu``).
    ``threads``: torch threads per run; ``None`` leaves torch's default (a sweep
    replaces it by ``cpu_count // workers``). ``precision``: one of
    :data:`PRECISIONS` (``bf16``: autocast; on the CPU only where it has native
    bf16, :func:`check_cpu_bf16`, since elsewhere it is emulated and slower than fp32). ``compile``: wrap each student in
    :func:`torch.compile`. ``stack``: run a cohort's students that share an
    architecture as one batched forward (:class:`reprolib.cohort.StudentStack`); ``None``
    (the default) stacks on CUDA when not compiling and never on the CPU, where the
    separate eager steps are the bitwise reference (:attr:`stacks` is the decision). A bad
    value is a :class:`ReproError` naming it and the choices.
    """

    device: str = "cpu"
    threads: int | None = None
    precision: str = "fp32"
    compile: bool = False
    stack: bool | None = None

    def __post_init__(self):
        check_threads(self.threads)   # None or a positive integer (not a bool)
        if not isinstance(self.precision, str) or self.precision not in PRECISIONS:
            raise ReproError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if not isinstance(self.compile, bool):
            raise ReproError(f"compile={self.compile!r} must be true or false")
        if self.stack is not None and not isinstance(self.stack, bool):
            raise ReproError(f"stack={self.stack!r} must be true, false or None (stacked on CUDA only)")
        if self.stack and self.compile:
            raise ReproError("stacked students are not compiled: choose stack or compile, not both")
        object.__setattr__(self, "device", resolve_device(self.device))
        if self.precision == "bf16" and self.device == "cpu":
            check_cpu_bf16("--precision bf16 on the CPU")

    @property
    def stacks(self) -> bool:
        """Whether a cohort runs its students stacked: ``stack``, or by default on CUDA
        unless compiling."""
        if self.stack is not None:
            return self.stack
        return self.device.startswith("cuda") and not self.compile

    def numerics(self) -> dict[str, Any]:
        """What changes a run's numbers besides its config, as ``sweep.json`` records
        it (its ``"numerics"``): ``{"threads", "device", "precision"}``."""
        return numerics_record(self.threads, self.device, self.precision)


def numerics_record(threads: int | None, device: str, precision: str) -> dict[str, Any]:
    """The numerics record of :meth:`Execution.numerics`, from its three values
    (also as read back from a finished run's ``metrics.json``)."""
    return {"threads": threads, "device": str(device), "precision": precision}


def as_execution(execution: Execution | None) -> Execution:
    """``execution``, or the default (CPU, torch's threads, fp32, not compiled) for
    ``None``; anything else is a :class:`ReproError`."""
    if execution is None:
        return Execution()
    if not isinstance(execution, Execution):
        raise ReproError(f"execution={execution!r} must be a reprolib.devices.Execution(device, threads, "
                         "precision, compile)")
    return execution

# CPU feature flags (Linux /proc/cpuinfo) under which bf16 arithmetic runs in
# hardware: AVX512-BF16 (Zen 4, Cooper Lake and later Xeons) or AMX-BF16
# (Sapphire Rapids and later). Elsewhere oneDNN emulates bf16 and is slower than
# fp32: one step of the mini teacher, batch 128, 2 threads, on an AVX2-only AMD EPYC
# took 5.4 s under bf16 autocast and 0.43 s in fp32.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags (empty where /proc/cpuinfo is not readable)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or the machine type where it cannot be read."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def native_bf16(flags: set[str] | None = None) -> list[str]:
    """The CPU flags that give native bf16 arithmetic (empty list: none)."""
    flags = cpu_flags() if flags is None else flags
    return [f for f in BF16_FLAGS if f in flags]


def check_cpu_bf16(what: str, flags: set[str] | None = None) -> None:
    """Refuse bf16 on a CPU without native bf16, naming why and the fix."""
    if not native_bf16(flags):
        raise ReproError(f"{what}: bf16 on this CPU would be emulated, not native (it has neither "
                         f"{' nor '.join(BF16_FLAGS)}), and slower than fp32 (the mini teacher's step: "
                         "12x); use fp32 here, or bf16 on a CPU with AVX512-BF16 or AMX, or a GPU")

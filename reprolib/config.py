"""Run configuration: plain data, serialisable to JSON, hashed to name folders.

The CLI, papermill parameters and the sweep grid all build the same
:class:`RunConfig` through :func:`make_config`, so a run is identified by its
config alone (plus :data:`reprolib.CODE_VERSION`).

Worlds (``book/protocol.md`` D11, ``book/mini_world.md``) fill in defaults; presets
(``smoke``, ``quick``, ``full``) change sizes and counts only, never the protocol.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, asdict
from typing import Any

from . import CODE_VERSION
from .errors import ReproError
from .io import digest

WORLDS = ("mini", "paper")
VAL_DIGIT_MODES = ("random", "correlated")
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")

# The methods' names, written here once: every module, script, benchmark and notebook
# imports them from here (tests/test_names.py). METHODS is also the order of every
# table and figure; reprolib.methods registers one class per name (tested to agree).
METHODS = ("kd", "at", "vid", "vkd", "subdistill")
PROPOSED = "subdistill"                                  # the paper's method
BASELINES = tuple(m for m in METHODS if m != PROPOSED)   # kd, at, vid, vkd
LAYER_METHODS = tuple(m for m in METHODS if m != "kd")   # the methods with a layer loss (λ_layer)
# Short names (tables, verdicts, legends) and long labels (figure legends); "teacher"
# stands for the teacher's own row in the analyses.
METHOD_SHORT = {"kd": "KD", "at": "AT", "vid": "VID", "vkd": "VkD", "subdistill": "SubDistill",
                "teacher": "teacher"}
METHOD_LABELS = {"kd": "KD (output only)", "at": "AT (attention transfer)", "vid": "VID (variational info.)",
                 "vkd": "VkD (orthogonal projection)", "subdistill": "SubDistill (relevant subspace)",
                 "teacher": "teacher"}
STUDENT_NORMS = ("standardize", "center")
VID_VARIANCES = ("learned", "fixed")

# Fashion-MNIST: T-shirt/top, Pullover, Dress, Coat, Shirt (book/mini_world.md).
MINI_SUBTASK = (0, 2, 3, 4, 6)
# ImageNet wading birds: spoonbill, flamingo, crane, limpkin, bustard (§1.1).
PAPER_SUBTASK = (129, 130, 134, 135, 138)

MINI_LAYER_PAIRS = (("layer1", "layer1"), ("layer2", "layer2"),
                    ("layer3", "layer3"), ("layer4", "layer4"))
# The mini pair's aligned layers by their number (the book's "Beyond the paper" part): the deepest
# pair, the two deepest, every stage's output (the default) and, since each stage has one residual
# block, those four plus each block's first convolution (``layerN.0.conv1``, before its batch norm).
MINI_PAIR_SETS = {
    1: MINI_LAYER_PAIRS[-1:],
    2: MINI_LAYER_PAIRS[-2:],
    4: MINI_LAYER_PAIRS,
    8: tuple(p for s, _ in MINI_LAYER_PAIRS for p in ((f"{s}.0.conv1", f"{s}.0.conv1"), (s, s))),
}
# §2.3: resnet101 -> timm mobilenetv4_conv_small.
MOBILENET_LAYER_PAIRS = (("layer1", "blocks.1.1"), ("layer2", "blocks.2.3"),
                         ("layer3", "blocks.3.1"), ("layer4", "blocks.3.5"))


@dataclass(frozen=True)
class DataConfig:
    """Everything that decides which images (and which digits) a run sees."""

    world: str = "mini"
    subtask_classes: tuple[int, ...] = MINI_SUBTASK
    # Images per subtask class in the distillation pool (train + val); None = all.
    pool_per_class: int | None = 100
    # Test images per class; None = all (the mini world has 1,000, ImageNet val 50).
    test_per_class: int | None = None
    train_fraction: float = 0.8          # D6, §1.2
    val_fraction: float = 0.2
    contamination_rate: float = 0.0      # rho, §1.4
    val_digits: str = "random"           # D3: "random" (oracle) or "correlated"
    artifact_size: int = 8               # side of the square patch, pixels
    artifact_corner: str = "top-left"
    artifact_source: str = "sklearn-digits"   # or "mnist"
    image_size: int = 32
    augment: bool = True
    crop_scale: tuple[float, float] = (0.5, 1.0)


@dataclass(frozen=True)
class RunConfig:
    """One distillation run: data, models, method and recipe."""

    data: DataConfig = field(default_factory=DataConfig)
    preset: str = "quick"
    method: str = "kd"
    seed: int = 1
    lambda_layer: float = 1.0
    lambda_task: float = 0.0             # D6: no cross-entropy term
    temperature: float = 4.0             # D6
    teacher: str = "mini-teacher"
    student: str = "mini-student"
    layer_pairs: tuple[tuple[str, str], ...] = MINI_LAYER_PAIRS
    epochs: int = 20
    val_every: int = 1                   # validate (and keep the best checkpoint) every N epochs
    lr: float = 1e-3
    lr_step: int = 5                     # StepLR(step, 0.5), per epoch (§5)
    lr_gamma: float = 0.5
    weight_decay: float = 0.0
    batch_size: int = 32
    student_norm: str = "standardize"    # D1
    vid_variance: str = "learned"        # D5
    subspace_positions: int = 20         # §4.2
    teacher_weights: str | None = None   # paper world: a file with torchvision weights
    teacher_recipe: str = "1-epoch"      # mini teacher: a name of TEACHER_RECIPE_NAMES ("smoke": tests only)

    # -- identity ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    def key(self) -> str:
        """Hash of config + code version: stable, and sensitive to every field."""
        return digest({"config": self.to_dict(), "code_version": CODE_VERSION}, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunConfig":
        d = dict(d)
        data = DataConfig(**_tuplify(d.pop("data", {})))
        d = _tuplify(d)
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ReproError(f"unknown config field(s): {sorted(unknown)}")
        return validate(cls(data=data, **d))

    def replace(self, **changes: Any) -> "RunConfig":
        data_changes = {k: changes.pop(k) for k in list(changes)
                        if k in {f.name for f in dataclasses.fields(DataConfig)}}
        data = dataclasses.replace(self.data, **data_changes)
        return validate(dataclasses.replace(self, data=data, **changes))


# ---------------------------------------------------------------------------
# Presets: sizes and counts per world. (pool_per_class / test_per_class are
# data fields; epochs, lr_step, batch_size are recipe fields.)
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "mini": {
        # Seconds; for tests and CI. Its numbers mean nothing.
        "smoke": dict(pool_per_class=10, test_per_class=20, epochs=2, lr_step=1,
                      batch_size=16, subspace_positions=8, teacher_recipe="smoke"),
        # The book's default (issue "an adequate experiment"). Budgets count
        # optimiser steps: 250 images per class in the pool; the protocol's
        # training-size knob (§1.2, the authors' --training-size) keeps the
        # validation part at 20 % of the pool (250 images, so the oracle selection
        # has a standard error near 3 points) while the training part shrinks to
        # 16 % (about 40 images per class, 200 in all, the regime where the pilot saw
        # the effect). Batch 32, drop_last: 6 steps per epoch, 200 epochs = 1200
        # optimiser steps, the rate halved every 50 epochs (the paper's schedule in
        # quarters of the run); validated every 4 epochs (50 checkpoints: every 24
        # steps). 500 test images per class.
        # The budget (book/decisions.md, "the mini world's recipe") is the smallest of
        # {600, 1200, 1800} steps at which output-only KD at ρ = 0 is within 2 points
        # of 3x its steps (no artifact; no method is compared). Convergence of every
        # method is then checked, not assumed: benchmarks/convergence.py compares the
        # preset with 3x the steps.
        "quick": dict(pool_per_class=250, train_fraction=0.16, test_per_class=500, epochs=200,
                      lr_step=50, batch_size=32, val_every=4),
        # The quick recipe validated every epoch (6 steps) and tested on all test images;
        # with the full λ grid and all six ρ (the `full` sweep grid).
        "full": dict(pool_per_class=250, train_fraction=0.16, test_per_class=None, epochs=200,
                     lr_step=50, batch_size=32, val_every=1),
    },
    "paper": {
        "smoke": dict(pool_per_class=None, test_per_class=None, epochs=1, lr_step=1,
                      batch_size=4, subspace_positions=4),
        "quick": dict(pool_per_class=None, test_per_class=None, epochs=20, lr_step=5,
                      batch_size=32),
        "full": dict(pool_per_class=None, test_per_class=None, epochs=100, lr_step=25,
                     batch_size=32),
    },
}

WORLD_DEFAULTS: dict[str, dict[str, Any]] = {
    # The mini world's learning rate (book/decisions.md, "the mini world's recipe"):
    # of {1e-3, 3e-3, 1e-2, 3e-2}, the one at which output-only KD at ρ = 0 (no
    # artifact; no method compared) has the best oracle validation accuracy. The
    # paper's 1e-3 (§5) was the worst: its small students, 200 training images and
    # 6 steps per epoch left every method 6-10 points short of 3x the steps.
    "mini": dict(subtask_classes=MINI_SUBTASK, artifact_size=8, artifact_source="sklearn-digits",
                 image_size=32, crop_scale=(0.5, 1.0), teacher="mini-teacher",
                 student="mini-student", layer_pairs=MINI_LAYER_PAIRS, lr=1e-2),
    # §1.3, §1.5, §2: 224 crops, 56 px MNIST tile, RandomResizedCrop default scale.
    "paper": dict(subtask_classes=PAPER_SUBTASK, artifact_size=56, artifact_source="mnist",
                  image_size=224, crop_scale=(0.08, 1.0), teacher="resnet101",
                  student="mobilenetv4_conv_small", layer_pairs=MOBILENET_LAYER_PAIRS),
}

# The mini teacher's recipes (reprolib.teacher.TEACHER_RECIPES; kept here so that a
# config is validated without importing torch). "smoke" is for tests only.
TEACHER_RECIPE_NAMES = ("1-epoch", "3-epoch", "10-epoch", "20-epoch", "smoke", "10-epoch-biased", "smoke-biased")


# ---------------------------------------------------------------------------
# World variants: named settings of the mini world's free knobs (the precondition
# ladder, book "Decisions": "the precondition"). A variant is configuration, not a
# code fork: ``fields`` are config fields applied over the world's defaults before
# the preset; ``train_scale`` scales the preset's training part (the pool and the
# validation part stay) at the preset's optimiser-step budget; ``step_scale``
# multiplies the preset's step budget (epochs, the rate's step and the validation
# interval, as :func:`scale_schedule` does).
@dataclass(frozen=True)
class WorldVariant:
    name: str
    rung: str
    description: str
    fields: tuple[tuple[str, Any], ...] = ()
    train_scale: float = 1.0
    step_scale: float = 1.0

    def field_dict(self) -> dict[str, Any]:
        return dict(self.fields)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "rung": self.rung, "description": self.description,
                "fields": _plain(self.field_dict()), "train_scale": self.train_scale,
                "step_scale": self.step_scale}


# The teacher that the teacher's convergence rule chose (benchmarks/teacher_convergence.py,
# benchmarks/results/teacher-convergence-cpu.json; a test checks the two agree).
CONVERGED_TEACHER = "10-epoch"
_B = (("teacher_recipe", CONVERGED_TEACHER),)
# The ladder, closest to the paper first (the order); single knobs before any
# combination. Rungs are tried in this order until one meets the precondition.
MINI_VARIANTS: tuple[WorldVariant, ...] = (
    WorldVariant("one-epoch-teacher", "a", "the first book's world: a teacher trained one epoch",
                 (("teacher_recipe", "1-epoch"),)),
    WorldVariant("converged-teacher", "b", f"a teacher trained to convergence ({CONVERGED_TEACHER} recipe)", _B),
    WorldVariant("paper-crop", "c", "(b) with the paper's crop scale (0.08, 1)",
                 _B + (("crop_scale", (0.08, 1.0)),)),
    WorldVariant("paper-lr", "d", "(b) with the paper's learning rate 1e-3 at 3x the step budget",
                 _B + (("lr", 1e-3),), step_scale=3.0),
    WorldVariant("train-20", "e1", "(b) with 20 training images per class (half), same step budget",
                 _B, train_scale=0.5),
    WorldVariant("train-10", "e2", "(b) with 10 training images per class (a quarter), same step budget",
                 _B, train_scale=0.25),
    WorldVariant("digit-12", "f1", "(b) with a 12 px digit instead of 8", _B + (("artifact_size", 12),)),
    WorldVariant("digit-16", "f2", "(b) with a 16 px digit instead of 8", _B + (("artifact_size", 16),)),
)
VARIANTS = {"mini": {v.name: v for v in MINI_VARIANTS}, "paper": {}}
# The book's main world: the rung the precondition rule chose (benchmarks/precondition.py,
# benchmarks/results/precondition-ladder.json; a test checks the two agree). ``None``:
# the world's defaults as they are.
MAIN_VARIANT: dict[str, str | None] = {"mini": "converged-teacher", "paper": None}


def get_variant(world: str, name: str | None) -> WorldVariant | None:
    """The named variant of ``world`` (``None``: the world's main variant)."""
    if name is None:
        name = MAIN_VARIANT.get(world)
        if name is None:
            return None
    table = VARIANTS.get(world, {})
    if name not in table:
        if not table:
            raise ReproError(f"the {world} world has no variants (got {name!r}); leave the variant out")
        raise ReproError(f"unknown world variant {name!r} of the {world} world; choose one of "
                         f"{', '.join(table)}")
    return table[name]


def main_variant(world: str = "mini") -> str | None:
    return MAIN_VARIANT.get(world)


# The two teacher/student pairs of D11 for the paper world.
PAPER_PAIRS = {
    ("resnet101", "mobilenetv4_conv_small"): MOBILENET_LAYER_PAIRS,
    ("resnet18", "resnet18-s"): MINI_LAYER_PAIRS,
}


def make_config(world: str = "mini", preset: str = "quick", variant: str | None = None,
                **overrides: Any) -> RunConfig:
    """Build a validated :class:`RunConfig` from a world, a preset, a world variant and overrides.

    ``variant`` names one of the world's :data:`VARIANTS` (default: the world's
    main variant, :data:`MAIN_VARIANT`). Overrides may name any field of
    :class:`RunConfig` or :class:`DataConfig` (``contamination_rate=1.0``,
    ``method="subdistill"``, ``pool_per_class=50``...) and win over the variant.
    """
    if world not in WORLDS:
        raise ReproError(f"unknown world {world!r}; choose one of {list(WORLDS)}")
    if preset not in PRESETS[world]:
        raise ReproError(f"unknown preset {preset!r}; choose one of {list(PRESETS[world])}")
    var = get_variant(world, variant)
    values: dict[str, Any] = {}
    values.update(WORLD_DEFAULTS[world])
    if var is not None:
        values.update(var.field_dict())
    values.update(PRESETS[world][preset])
    if var is not None and (var.train_scale != 1.0 or var.step_scale != 1.0):
        base = _build(world, preset, values)
        values.update(_variant_schedule(base, var))
    # A user who changes the paper pair gets its layer map unless they give one.
    if world == "paper" and "layer_pairs" not in overrides:
        pair = (overrides.get("teacher", values["teacher"]), overrides.get("student", values["student"]))
        if pair in PAPER_PAIRS:
            values["layer_pairs"] = PAPER_PAIRS[pair]
    values.update({k: v for k, v in overrides.items() if v is not None or k in _NULLABLE})
    return _build(world, preset, values)


def _variant_schedule(base: RunConfig, var: WorldVariant) -> dict[str, Any]:
    """The training fraction and schedule of ``base`` under a variant's scales: the
    training part scaled by ``train_scale`` and the epochs set so that the run takes
    ``step_scale`` times ``base``'s optimiser steps (rounded up to whole epochs); the
    rate's step and the validation interval keep their share of the run."""
    steps = optimizer_steps(base)
    if steps is None:
        raise ReproError(f"world variant {var.name!r} scales the training set, whose size this "
                         "preset does not fix; choose a preset with pool_per_class")
    fraction = base.data.train_fraction * var.train_scale
    n_train = split_sizes(dataclasses.replace(base.data, train_fraction=fraction))["train"]
    if n_train < base.batch_size:
        raise ReproError(f"world variant {var.name!r} leaves {n_train} training images with preset "
                         f"{base.preset!r}, fewer than a batch of {base.batch_size}; choose a larger preset")
    epochs = -(-round(steps * var.step_scale) // (n_train // base.batch_size))
    ratio = epochs / base.epochs
    return {"train_fraction": fraction, "epochs": epochs,
            "lr_step": max(1, round(base.lr_step * ratio)), "val_every": max(1, round(base.val_every * ratio))}


def _build(world: str, preset: str, values: dict[str, Any]) -> RunConfig:
    data_fields = {f.name for f in dataclasses.fields(DataConfig)}
    run_fields = {f.name for f in dataclasses.fields(RunConfig)} - {"data"}
    unknown = set(values) - data_fields - run_fields
    if unknown:
        raise ReproError(f"unknown config field(s): {sorted(unknown)}; "
                         f"valid: {sorted(data_fields | run_fields)}")
    data = DataConfig(world=world, **_tuplify({k: v for k, v in values.items() if k in data_fields}))
    run = RunConfig(data=data, preset=preset,
                    **_tuplify({k: v for k, v in values.items() if k in run_fields}))
    return validate(run)


_NULLABLE = {"pool_per_class", "test_per_class", "teacher_weights"}


# The type of every field (checked first, so that a string, a boolean or a float
# where an integer belongs fails here with the field's name, not later in torch).
_NUM, _INT, _STR, _BOOL = "a number", "an integer", "a string", "true or false"
_DATA_TYPES = {
    "world": _STR, "subtask_classes": "a list of integers", "pool_per_class": _INT + " or None",
    "test_per_class": _INT + " or None", "train_fraction": _NUM, "val_fraction": _NUM,
    "contamination_rate": _NUM, "val_digits": _STR, "artifact_size": _INT,
    "artifact_corner": _STR, "artifact_source": _STR, "image_size": _INT, "augment": _BOOL,
    "crop_scale": "a pair of numbers",
}
_RUN_TYPES = {
    "preset": _STR, "method": _STR, "seed": _INT, "lambda_layer": _NUM, "lambda_task": _NUM,
    "temperature": _NUM, "teacher": _STR, "student": _STR,
    "layer_pairs": "a list of (teacher layer, student layer) name pairs", "epochs": _INT,
    "lr": _NUM, "lr_step": _INT, "lr_gamma": _NUM, "weight_decay": _NUM, "batch_size": _INT,
    "student_norm": _STR, "vid_variance": _STR, "subspace_positions": _INT,
    "teacher_weights": _STR + " or None", "teacher_recipe": _STR,
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)   # ranges: validate()


def _type_ok(v: Any, kind: str) -> bool:
    if kind.endswith(" or None"):
        return v is None or _type_ok(v, kind[:-len(" or None")])
    if kind == _NUM:
        return _is_num(v)
    if kind == _INT:
        return _is_int(v)
    if kind == _STR:
        return isinstance(v, str)
    if kind == _BOOL:
        return isinstance(v, bool)
    if kind == "a list of integers":
        return isinstance(v, (tuple, list)) and all(_is_int(c) for c in v)
    if kind == "a pair of numbers":
        return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_num(c) for c in v)
    if kind.startswith("a list of (teacher layer"):
        return isinstance(v, (tuple, list)) and all(
            isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(n, str) for n in pair)
            for pair in v)
    return True


def check_types(cfg: RunConfig) -> None:
    """Every field has its type: numbers are finite numbers (a boolean is not a
    number), integers are integers, names are strings."""
    for obj, table in ((cfg.data, _DATA_TYPES), (cfg, _RUN_TYPES)):
        for name, kind in table.items():
            if not hasattr(obj, name):
                continue
            v = getattr(obj, name)
            if not _type_ok(v, kind):
                raise ReproError(f"{name}={v!r} must be {kind}, not {type(v).__name__}")


def validate(cfg: RunConfig) -> RunConfig:
    """Raise :class:`ReproError` naming the problem and the fix, else return ``cfg``."""
    if not isinstance(cfg, RunConfig) or not isinstance(cfg.data, DataConfig):
        raise ReproError(f"expected a RunConfig with a DataConfig, got {type(cfg).__name__}")
    check_types(cfg)
    d = cfg.data
    if d.world not in WORLDS:
        raise ReproError(f"unknown world {d.world!r}; choose one of {list(WORLDS)}")
    rho = d.contamination_rate
    if not isinstance(rho, (int, float)) or math.isnan(rho) or not 0.0 <= rho <= 1.0:
        raise ReproError(f"contamination rate rho={rho!r} is outside [0, 1]; "
                         "give a fraction such as 0, 0.5 or 1")
    if d.val_digits not in VAL_DIGIT_MODES:
        raise ReproError(f"val_digits={d.val_digits!r}; choose one of {list(VAL_DIGIT_MODES)}")
    if d.artifact_corner not in CORNERS:
        raise ReproError(f"artifact_corner={d.artifact_corner!r}; choose one of {list(CORNERS)}")
    if not isinstance(d.artifact_size, int) or d.artifact_size < 1:
        raise ReproError(f"artifact_size={d.artifact_size!r} must be a positive number of pixels")
    if d.artifact_size > d.image_size:
        raise ReproError(f"the artifact ({d.artifact_size} px) is larger than the image "
                         f"({d.image_size} px); choose artifact_size <= {d.image_size}")
    n_classes = 10 if d.world == "mini" else 1000
    sub = tuple(d.subtask_classes)
    if len(sub) < 2:
        raise ReproError(f"subtask_classes={sub} needs at least two classes")
    if len(set(sub)) != len(sub):
        raise ReproError(f"subtask_classes={sub} repeats a class; list each class once")
    bad = [c for c in sub if not isinstance(c, int) or not 0 <= c < n_classes]
    if bad:
        raise ReproError(f"subtask classes {bad} are out of range for the {d.world} world "
                         f"(valid: 0..{n_classes - 1})")
    if len(sub) > 10:
        raise ReproError("the artifact protocol has digits 0-9 only: use at most 10 subtask classes")
    for name in ("pool_per_class", "test_per_class"):
        v = getattr(d, name)
        if v is not None and (not isinstance(v, int) or v < 2):
            raise ReproError(f"{name}={v!r} must be an integer >= 2 (or None for all images)")
    if not 0.0 < d.train_fraction <= 1.0 - d.val_fraction + 1e-9 or not 0.0 < d.val_fraction < 1.0:
        raise ReproError(f"train_fraction={d.train_fraction} and val_fraction={d.val_fraction} "
                         "must be positive and sum to at most 1")
    lo, hi = d.crop_scale
    if not 0.0 < lo <= hi <= 1.0:
        raise ReproError(f"crop_scale={d.crop_scale} must satisfy 0 < low <= high <= 1")
    if cfg.method not in METHODS:
        raise ReproError(f"unknown method {cfg.method!r}; valid methods: {', '.join(METHODS)}")
    for name in ("lambda_layer", "lambda_task"):
        v = getattr(cfg, name)
        if not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v) or v < 0:
            raise ReproError(f"{name}={v!r} must be a finite number >= 0")
    if not 0 < cfg.temperature < math.inf:
        raise ReproError(f"temperature={cfg.temperature} must be a finite number > 0")
    if cfg.student_norm not in STUDENT_NORMS:
        raise ReproError(f"student_norm={cfg.student_norm!r}; choose one of {list(STUDENT_NORMS)}")
    if cfg.vid_variance not in VID_VARIANCES:
        raise ReproError(f"vid_variance={cfg.vid_variance!r}; choose one of {list(VID_VARIANCES)}")
    for name in ("epochs", "batch_size", "lr_step", "subspace_positions", "val_every"):
        v = getattr(cfg, name)
        if not isinstance(v, int) or v < 1:
            raise ReproError(f"{name}={v!r} must be a positive integer")
    if not 0 < cfg.lr < math.inf:
        raise ReproError(f"lr={cfg.lr} must be > 0 (and finite)")
    if not 0.0 < cfg.lr_gamma <= 1.0:
        raise ReproError(f"lr_gamma={cfg.lr_gamma} must be in (0, 1]: the factor that lowers the "
                         "learning rate every lr_step epochs")
    if not 0 <= cfg.weight_decay < math.inf:
        raise ReproError(f"weight_decay={cfg.weight_decay} must be a finite number >= 0")
    if not 0 <= cfg.seed < 2**63:
        raise ReproError(f"seed={cfg.seed} must be an integer in [0, 2**63)")
    if d.image_size < 1:
        raise ReproError(f"image_size={d.image_size} must be a positive number of pixels")
    if d.artifact_source not in ("sklearn-digits", "mnist"):
        raise ReproError(f"artifact_source={d.artifact_source!r}; choose 'sklearn-digits' or 'mnist'")
    if cfg.teacher_recipe not in TEACHER_RECIPE_NAMES:
        raise ReproError(f"unknown teacher recipe {cfg.teacher_recipe!r}; choose one of "
                         f"{', '.join(TEACHER_RECIPE_NAMES)}")
    if d.world == "mini" and cfg.teacher_weights is not None:
        raise ReproError("teacher_weights is for the paper world's pretrained teachers; the mini "
                         "world's teacher is trained by reprolib: leave --teacher-weights out")
    if not cfg.layer_pairs and cfg.method != "kd":
        raise ReproError(f"method {cfg.method!r} needs at least one layer pair")
    if cfg.method == "kd" and cfg.lambda_layer != 0.0:
        # Output-only KD has no layer term: one config (one run) whatever λ is given.
        cfg = dataclasses.replace(cfg, lambda_layer=0.0)
    return cfg


def _tuplify(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, list):
            v = tuple(tuple(x) if isinstance(x, list) else x for x in v)
        out[k] = v
    return out


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def split_sizes(data: DataConfig) -> dict[str, int | None]:
    """Images per split of a data config, without loading any image.

    The distillation pool's size is known from the config in the mini world
    (``pool_per_class`` × classes); the train/val sizes follow §1.2's
    ``random_split`` (whose sizes do not depend on the seed). ``None`` where the
    config alone does not say (the paper world's pool is whatever the ImageNet
    folder holds; ``pool_per_class=None``).
    """
    k = len(data.subtask_classes)
    out: dict[str, int | None] = {"pool": None, "train": None, "val": None, "test": None}
    if data.world == "mini":
        if data.pool_per_class is not None:
            out["pool"] = data.pool_per_class * k
        out["test"] = (data.test_per_class if data.test_per_class is not None else 1000) * k
    elif data.test_per_class is not None:
        out["test"] = data.test_per_class * k
    if out["pool"] is not None:
        out["train"], out["val"] = split_lengths(out["pool"], data.train_fraction, data.val_fraction)
    return out


def split_lengths(n: int, train_fraction: float, val_fraction: float) -> tuple[int, int]:
    """Sizes of the train and val parts that :func:`reprolib.data.train_val_split`
    gives for a pool of ``n`` (torch's ``random_split`` rule: floors, then the
    remainder one by one from the first part), computed without torch."""
    rest = max(0.0, 1.0 - train_fraction - val_fraction)
    fracs = [train_fraction, val_fraction] + ([rest] if rest > 1e-9 else [])
    total = sum(fracs)
    lengths = [int(math.floor(n * (f / total))) for f in fracs]
    for i in range(n - sum(lengths)):
        lengths[i % len(lengths)] += 1
    return lengths[0], lengths[1]


def steps_per_epoch(cfg: RunConfig) -> int | None:
    """Optimiser steps in one epoch (batches of ``batch_size``, the last incomplete
    one dropped), or ``None`` when the training-set size is not known from the config."""
    n = split_sizes(cfg.data)["train"]
    return None if n is None else n // cfg.batch_size


def optimizer_steps(cfg: RunConfig) -> int | None:
    """Optimiser steps of a whole run: ``epochs`` × :func:`steps_per_epoch`."""
    per = steps_per_epoch(cfg)
    return None if per is None else per * cfg.epochs


def scale_schedule(cfg: RunConfig, factor: float) -> RunConfig:
    """``cfg`` trained ``factor`` times as long: epochs, the rate's step and the
    validation interval all multiplied by ``factor`` (rounded, at least 1); data,
    batch and everything else unchanged. Used by the convergence rule and the
    recipe pilot, so that their runs share config keys (and run folders)."""
    if not factor > 0:
        raise ReproError(f"a schedule can only be scaled by a positive factor, not {factor}")
    return cfg.replace(epochs=max(1, round(cfg.epochs * factor)), lr_step=max(1, round(cfg.lr_step * factor)),
                       val_every=max(1, round(cfg.val_every * factor)))

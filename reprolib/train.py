"""What a distillation run is made of, besides its loop: evaluation, the teacher's cached test
metrics, the relevant subspaces and device parsing.

The recipe (``book/protocol.md`` §5), run by :mod:`reprolib.cohort`:

AdamW (lr 1e-3, weight decay 0) over the student's and the method's own
parameters; the rate halved every ``lr_step`` epochs; validation every epoch;
the epoch with the best validation accuracy (strict improvement, so ties go to
the earliest) is evaluated once on the test set. The loss is
``T²·KL(teacher ‖ student) + λ_layer · Σ_l L_l`` (+ ``λ_task·CE`` only when a
user asks for it; D6 sets it to 0).

Every epoch is validated on both validation sets of D3: ``val`` (the config's
selection set, oracle random digits by default) and ``val_correlated`` (the
other one), so each run reports the test accuracy under both selection rules.

The teacher is frozen, runs in eval mode without gradient, and its outputs are
reused wherever that is exact: its test-set accuracy is cached on disk, and
when the preset has no augmentation its training features are computed once.

The training loop itself lives in :mod:`reprolib.cohort`:
:func:`reprolib.cohort.train_run` is a cohort of one, and a cohort of many gives
bitwise the same students. This module (imported by :mod:`reprolib.cohort`,
never importing it) keeps the pieces a run is made of (evaluation, the teacher's cached
test metrics, the relevant subspaces, device parsing); a finished run is read back by
:func:`reprolib.rundirs.load_student`.
"""

from __future__ import annotations

import json
import random

import numpy as np
import torch

from . import CODE_VERSION
from .config import RunConfig
from .data import World
from .devices import resolve_device as _resolve_device
from .io import cache_dir, digest, write_json
from .models import EVAL_BATCH, FrozenTeacher, predict_labels



def resolve_device(device: str | torch.device) -> torch.device:
    """:func:`reprolib.devices.resolve_device` as a :class:`torch.device`."""
    return torch.device(_resolve_device(device))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def teacher_identity(cfg: RunConfig) -> str:
    if cfg.teacher == "mini-teacher":
        from .teacher import recipe

        return f"mini-teacher-{recipe(cfg.teacher_recipe, cfg.data.image_size).key()}"
    return f"{cfg.teacher}:{cfg.teacher_weights or 'torch-cache'}"


# ---------------------------------------------------------------------------
# evaluation

def predict(model: torch.nn.Module, world: World, split: str, device: torch.device,
            batch_size: int = EVAL_BATCH) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predictions, labels, digits) of ``model`` on a whole split, eval mode."""
    ys, ds = [], []

    def inputs():
        for x, y, d in world.batches(split, batch_size):
            ys.append(y)
            ds.append(d)
            yield x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)

    preds = predict_labels(model, inputs())
    return preds, torch.cat(ys), torch.cat(ds)


def split_accuracies(pred: torch.Tensor, y: torch.Tensor, digit: torch.Tensor) -> dict[str, float]:
    """Accuracy overall, on images with a digit, on those whose digit differs from
    the label, the share of digit-bearing images predicted as their digit, and that
    share among the images whose digit differs from the label (where following the
    digit and following the garment disagree; chance 1/K)."""
    has = digit >= 0
    differs = has & (digit != y)

    def mean(mask):
        return float((pred[mask] == y[mask]).float().mean()) if bool(mask.any()) else float("nan")

    return {
        "accuracy": float((pred == y).float().mean()),
        "accuracy_with_digit": mean(has),
        "accuracy_digit_differs": mean(differs),
        "predicts_digit": float((pred[has] == digit[has]).float().mean()) if bool(has.any()) else float("nan"),
        "predicts_digit_differs": (float((pred[differs] == digit[differs]).float().mean())
                                   if bool(differs.any()) else float("nan")),
        "n": int(len(y)), "n_with_digit": int(has.sum()), "n_digit_differs": int(differs.sum()),
    }


def teacher_test_metrics(teacher: FrozenTeacher, world: World, cfg: RunConfig,
                         device: torch.device) -> dict[str, float]:
    """The teacher's accuracies on the run's test set, cached on disk.

    Keyed by the teacher and by what the test set *is* (a digest of its images,
    labels and digits where the world holds them as tensors), so configs that
    differ only in fields that do not change the test set (seed, method, λ,
    pool size, augmentation...) share one evaluation.
    """
    if world.in_memory:
        data = {"test_digest": digest((part for t in world.tensors("test")
                                        for part in (str((t.dtype, tuple(t.shape))).encode(),
                                                     t.contiguous().numpy().tobytes())), length=None)}
    else:
        data = cfg.data.__dict__ | {"augment": None}
    key = digest({"teacher": teacher_identity(cfg), "data": data, "code": CODE_VERSION}, default=str)
    path = cache_dir("teacher_eval") / f"{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            pass
    metrics = split_accuracies(*predict(teacher, world, "test", device))
    write_json(path, metrics)
    return metrics


# ---------------------------------------------------------------------------
# the relevant subspace, cached per (teacher, data, rho, seed, layers, code)

def student_ks(cfg: RunConfig, world: World) -> list[int]:
    """K per distilled layer pair: the channel width of the student's layer (D7)."""
    from .hooks import feature_shapes
    from .models import build_student

    shapes = feature_shapes(build_student(cfg.student, world.num_classes), [s for _, s in cfg.layer_pairs],
                            world.input_shape)
    return [shape[0] for shape in shapes.values()]


def relevant_subspaces(cfg: RunConfig, teacher: FrozenTeacher, world: World, ks: list[int],
                       device: torch.device, progress: bool = False):
    from .subspace import fit_relevant_subspaces, load_subspaces, save_subspaces

    layers = [t for t, _ in cfg.layer_pairs]
    key = digest({"teacher": teacher_identity(cfg), "data": cfg.data.__dict__, "seed": cfg.seed,
                   "layers": layers, "ks": ks, "positions": cfg.subspace_positions,
                   "code": CODE_VERSION}, default=str)
    path = cache_dir("subspaces") / f"{key}.pt"
    if path.is_file():
        try:
            return load_subspaces(path), path
        except Exception:  # noqa: BLE001 - a corrupt cache is recomputed
            path.unlink(missing_ok=True)
    batches = (x.to(device) for x, _, _ in world.batches("train_eval", 64))
    subspaces = fit_relevant_subspaces(teacher, layers, batches, ks, seed=cfg.seed,
                                       positions=cfg.subspace_positions, device=device)
    save_subspaces(path, subspaces)
    return subspaces, path


# ---------------------------------------------------------------------------

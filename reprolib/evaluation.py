"""How a run is measured: a model's predictions on a whole split, the split
accuracies (overall, with a digit, where the digit differs from the label, and how
often the digit is predicted), and the teacher's test metrics, cached on disk.

Used by :mod:`reprolib.cohort` (every run's test metrics), the notebooks and the
analyses; it never trains.
"""

from __future__ import annotations

import json

import torch

from . import CODE_VERSION
from .config import RunConfig
from .data import World
from .io import cache_dir, digest, write_json
from .models import EVAL_BATCH, FrozenTeacher, predict_labels
from .teacher import teacher_identity


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

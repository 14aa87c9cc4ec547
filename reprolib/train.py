"""One distillation run: the protocol's recipe (``paper-protocol.md`` §5).

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
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from . import CODE_VERSION
from .config import RunConfig
from .data import World, build_world
from .errors import ReproError
from .hooks import FeatureCapture, feature_shapes
from . import io
from .io import cache_dir, torch_save, write_json
from .models import FrozenTeacher, build_student
from .teacher import build_teacher

REQUIRED_METRICS = ("test_accuracy", "val_accuracy", "best_epoch", "test_accuracy_with_digit",
                    "test_accuracy_digit_differs", "predicts_digit", "teacher_test_accuracy",
                    "nonoracle_val_accuracy", "nonoracle_test_accuracy", "seconds", "config",
                    "config_key", "code_version")


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ReproError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ReproError(f"unknown device {device!r}; choose auto, cpu or cuda")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def teacher_identity(cfg: RunConfig) -> str:
    if cfg.teacher == "mini-teacher":
        from .teacher import recipe

        return f"mini-teacher-{recipe(cfg.teacher_recipe, cfg.data.image_size).key()}"
    return f"{cfg.teacher}:{cfg.teacher_weights or 'torch-cache'}"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# evaluation

@torch.no_grad()
def predict(model: torch.nn.Module, world: World, split: str, device: torch.device,
            batch_size: int = 500) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(predictions, labels, digits) of ``model`` on a whole split, eval mode."""
    was = model.training
    model.eval()
    preds, ys, ds = [], [], []
    for x, y, d in world.batches(split, batch_size):
        x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        preds.append(model(x).argmax(1).cpu())
        ys.append(y)
        ds.append(d)
    model.train(was)
    return torch.cat(preds), torch.cat(ys), torch.cat(ds)


def split_accuracies(pred: torch.Tensor, y: torch.Tensor, digit: torch.Tensor) -> dict[str, float]:
    """Accuracy overall, on images with a digit, on those whose digit differs from
    the label, and the share of digit-bearing images predicted as their digit."""
    has = digit >= 0
    differs = has & (digit != y)

    def mean(mask):
        return float((pred[mask] == y[mask]).float().mean()) if bool(mask.any()) else float("nan")

    return {
        "accuracy": float((pred == y).float().mean()),
        "accuracy_with_digit": mean(has),
        "accuracy_digit_differs": mean(differs),
        "predicts_digit": float((pred[has] == digit[has]).float().mean()) if bool(has.any()) else float("nan"),
        "n": int(len(y)), "n_with_digit": int(has.sum()), "n_digit_differs": int(differs.sum()),
    }


def teacher_test_metrics(teacher: FrozenTeacher, world: World, cfg: RunConfig,
                         device: torch.device) -> dict[str, float]:
    """The teacher's accuracies on the run's test set; cached, since the test set
    depends only on the data config (not on the seed)."""
    data = cfg.data.__dict__ | {"augment": None}
    key = _digest({"teacher": teacher_identity(cfg), "data": data, "code": CODE_VERSION})
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

def relevant_subspaces(cfg: RunConfig, teacher: FrozenTeacher, world: World, ks: list[int],
                       device: torch.device, progress: bool = False):
    from .subspace import fit_relevant_subspaces, load_subspaces, save_subspaces

    layers = [t for t, _ in cfg.layer_pairs]
    key = _digest({"teacher": teacher_identity(cfg), "data": cfg.data.__dict__, "seed": cfg.seed,
                   "layers": layers, "ks": ks, "positions": cfg.subspace_positions,
                   "code": CODE_VERSION})
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

def prepare(cfg: RunConfig, device: torch.device, progress: bool = True, world: World | None = None):
    """World, teacher, student and method of a run, validated before any training."""
    from .methods import build_method

    seed_everything(cfg.seed)
    world = world or build_world(cfg.data, cfg.seed)
    teacher = build_teacher(cfg, progress=progress).to(device)
    t_paths = [t for t, _ in cfg.layer_pairs]
    s_paths = [s for _, s in cfg.layer_pairs]
    student = build_student(cfg.student, world.num_classes).to(device)
    with torch.no_grad():
        out = teacher(torch.zeros(1, *world.input_shape, device=device))
    if out.shape[1] != world.num_classes:
        raise ReproError(f"the teacher gives {out.shape[1]} subtask logits for {world.num_classes} classes")
    t_shapes = list(feature_shapes(teacher.model, t_paths, world.input_shape).values()) if t_paths else []
    s_shapes = list(feature_shapes(student, s_paths, world.input_shape).values()) if s_paths else []
    subspaces, subspace_path = None, None
    if cfg.method == "subdistill":
        subspaces, subspace_path = relevant_subspaces(cfg, teacher, world, [s[0] for s in s_shapes],
                                                      device, progress)
    # §5: re-seed so that inits inside the method do not depend on what ran before.
    seed_everything(cfg.seed)
    student = build_student(cfg.student, world.num_classes).to(device)
    method = build_method(cfg.method, t_shapes, s_shapes, student_norm=cfg.student_norm,
                          vid_variance=cfg.vid_variance, subspaces=subspaces).to(device)
    layers = [{"teacher": t, "student": s, "teacher_shape": list(ts), "student_shape": list(ss)}
              for (t, s), ts, ss in zip(cfg.layer_pairs, t_shapes, s_shapes)]
    # channels_last: about 1.4x faster convolutions on CPU (oneDNN) and GPU alike.
    teacher.to(memory_format=torch.channels_last)
    student.to(memory_format=torch.channels_last)
    return world, teacher, student, method, layers, subspace_path


class Distiller:
    """The parts of one run (world, frozen teacher, student, method, optimiser)
    and its training step; :func:`train_run` drives it, benchmarks time it."""

    def __init__(self, cfg: RunConfig, device: str | torch.device = "cpu", progress: bool = False,
                 world: World | None = None):
        self.cfg = cfg
        self.dev = device if isinstance(device, torch.device) else resolve_device(device)
        (self.world, self.teacher, self.student, self.method,
         self.layers, self.subspace_path) = prepare(cfg, self.dev, progress, world)
        uses = self.method.uses_layers
        self.t_paths = [t for t, _ in cfg.layer_pairs] if uses else []
        self.s_paths = [s for _, s in cfg.layer_pairs] if uses else []
        params = list(self.student.parameters()) + list(self.method.parameters())
        # Weight decay stays 0 (§5): VkD's Householder parametrisation breaks under decay.
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.sched = torch.optim.lr_scheduler.StepLR(self.opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        self.steps_per_epoch = self.world.num_batches("train", cfg.batch_size, drop_last=True)
        if self.steps_per_epoch == 0:
            raise ReproError(f"the training split has fewer images than one batch ({cfg.batch_size}); "
                             "lower --batch-size or raise pool_per_class")
        seed_everything(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.batches = _teacher_batches(cfg, self.world, self.teacher, self.method, self.t_paths,
                                        self.dev, self.gen, self.dev.type == "cuda")
        self.step_count = 0

    def step(self, x, y, t_logits, t_targets) -> dict[str, float]:
        """One optimiser step on a batch; returns the loss terms as floats."""
        from .methods import check_finite, kd_loss, total_loss

        cfg = self.cfg
        with FeatureCapture(self.student, self.s_paths) as scap:
            s_logits = self.student(x)
        kd = kd_loss(s_logits, t_logits, cfg.temperature)
        layer_terms = (self.method.criterion(self.method.student_transform(scap.get()), t_targets)
                       if self.t_paths else [])
        ce = F.cross_entropy(s_logits, y.to(self.dev)) if cfg.lambda_task > 0 else None
        loss, terms = total_loss(kd, layer_terms, cfg.lambda_layer, ce, cfg.lambda_task)
        check_finite(terms, self.step_count)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.step_count += 1
        return terms

    def train_epoch(self) -> dict[str, float]:
        self.student.train()
        self.method.train()
        sums = {"loss": 0.0, "kd": 0.0, "layer": 0.0}
        for batch in self.batches():
            terms = self.step(*batch)
            sums["loss"] += terms["total"]
            sums["kd"] += terms["kd"]
            sums["layer"] += terms.get("layer", 0.0)
        self.sched.step()
        return {k: v / self.steps_per_epoch for k, v in sums.items()}


def train_run(cfg: RunConfig, out_dir: str | os.PathLike, *, device: str = "cpu",
              progress: bool = True, threads: int | None = None,
              world: World | None = None) -> dict[str, Any]:
    """Train one student; write ``student.pt`` then ``metrics.json`` into ``out_dir``."""
    from tqdm import tqdm

    start = time.time()
    io.check_threads(threads)
    out_dir = io.check_output_dir(out_dir)   # before any work (harden)
    if threads:
        torch.set_num_threads(threads)
    run = Distiller(cfg, device, progress, world)
    world, student, dev = run.world, run.student, run.dev
    teacher_metrics = teacher_test_metrics(run.teacher, world, cfg, dev)
    best = {"oracle": (-1.0, -1, None), "nonoracle": (-1.0, -1, None)}
    curves: dict[str, list] = {k: [] for k in ("loss", "kd", "layer", "val_accuracy",
                                               "val_correlated_accuracy", "lr")}
    bar = tqdm(range(cfg.epochs), desc=f"{cfg.method} rho={cfg.data.contamination_rate:g} seed={cfg.seed}",
               disable=not progress, unit="epoch")
    for epoch in bar:
        curves["lr"].append(run.opt.param_groups[0]["lr"])
        for k, v in run.train_epoch().items():
            curves[k].append(v)
        val = _accuracy(student, world, "val", dev)
        val_corr = _accuracy(student, world, "val_correlated", dev)
        curves["val_accuracy"].append(val)
        curves["val_correlated_accuracy"].append(val_corr)
        for rule, acc in (("oracle", val), ("nonoracle", val_corr)):
            if acc > best[rule][0]:
                best[rule] = (acc, epoch, copy.deepcopy(student.state_dict()))
        bar.set_postfix(loss=f"{curves['loss'][-1]:.3f}", val=f"{val:.3f}")
    bar.close()

    # The best-validation epochs, evaluated once on the test set.
    results = {}
    for rule in ("oracle", "nonoracle"):
        if rule == "nonoracle" and best[rule][1] == best["oracle"][1]:
            results[rule] = results["oracle"]   # same epoch, same student: no second pass
            continue
        student.load_state_dict(best[rule][2])
        results[rule] = split_accuracies(*predict(student, world, "test", dev))
    student.load_state_dict(best["oracle"][2])
    test = results["oracle"]
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_accuracy_with_digit": test["accuracy_with_digit"],
        "test_accuracy_digit_differs": test["accuracy_digit_differs"],
        "predicts_digit": test["predicts_digit"],
        "test_counts": {k: test[k] for k in ("n", "n_with_digit", "n_digit_differs")},
        "val_accuracy": best["oracle"][0],
        "best_epoch": best["oracle"][1],
        "nonoracle_val_accuracy": best["nonoracle"][0],
        "nonoracle_best_epoch": best["nonoracle"][1],
        "nonoracle_test_accuracy": results["nonoracle"]["accuracy"],
        "nonoracle_test_accuracy_with_digit": results["nonoracle"]["accuracy_with_digit"],
        "nonoracle_test_accuracy_digit_differs": results["nonoracle"]["accuracy_digit_differs"],
        "nonoracle_predicts_digit": results["nonoracle"]["predicts_digit"],
        "teacher_test_accuracy": teacher_metrics["accuracy"],
        "teacher_test_accuracy_with_digit": teacher_metrics["accuracy_with_digit"],
        "curves": curves,
        "layers": run.layers,
        "subspace_cache": str(run.subspace_path) if run.subspace_path else None,
        "seconds": time.time() - start,
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "config": cfg.to_dict(),
        "config_key": cfg.key(),
        "code_version": CODE_VERSION,
        "torch": torch.__version__,
    }
    metrics["student_sha256"] = torch_save({"student": student.state_dict(), "method": run.method.state_dict(),
                                            "config": cfg.to_dict(), "config_key": cfg.key()}, out_dir / "student.pt")
    write_json(out_dir / "metrics.json", metrics)   # last: marks the run complete
    return io.strict(metrics)   # what metrics.json holds: NaN is null (harden)


def _accuracy(model, world, split, device) -> float:
    pred, y, _ = predict(model, world, split, device)
    return float((pred == y).float().mean())


def _fast(x: torch.Tensor, dev: torch.device) -> torch.Tensor:
    return x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)


def _teacher_batches(cfg, world, teacher, method, t_paths, dev, gen, use_bf16):
    """A callable that yields one epoch of ``(x, y, teacher_logits, teacher_targets)``.

    ``teacher_targets`` are the method's transformed teacher features. Without
    augmentation (mini world) they are computed once for the whole training
    split and indexed per batch, which is exact because the teacher is frozen
    and in eval mode; otherwise the teacher runs on every batch.
    """
    def teacher_out(x):
        with torch.no_grad(), FeatureCapture(teacher.model, t_paths) as cap, \
                torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16):
            logits = teacher(x)
        with torch.no_grad():
            targets = method.teacher_transform([f.float() for f in cap.get()]) if t_paths else []
        return logits.float(), targets

    if not cfg.data.augment and hasattr(world, "tensors"):
        x_all, y_all, _ = world.tensors("train")
        outs = [teacher_out(_fast(x_all[i:i + 256], dev)) for i in range(0, len(x_all), 256)]
        logits_all = torch.cat([o[0] for o in outs])
        targets_all = [torch.cat([o[1][j] for o in outs]) for j in range(len(t_paths))]
        n = len(x_all)

        def epoch():
            order = torch.randperm(n, generator=gen)
            for s in range(n // cfg.batch_size):
                idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                yield (_fast(x_all[idx], dev), y_all[idx], logits_all[idx.to(logits_all.device)],
                       [t[idx.to(t.device)] for t in targets_all])
        return epoch

    def epoch():
        for x, y, _d in world.batches("train", cfg.batch_size, shuffle=True, generator=gen, drop_last=True):
            x = _fast(x, dev)
            logits, targets = teacher_out(x)
            yield x, y, logits, targets
    return epoch


def load_student(run_dir: str | os.PathLike, device: str = "cpu") -> tuple[torch.nn.Module, RunConfig]:
    """The best-validation student of a finished run, in eval mode."""
    run_dir = Path(run_dir)
    ckpt = run_dir / "student.pt"
    if not ckpt.is_file():
        raise ReproError(f"{run_dir} has no student.pt: the run did not finish; rerun it")
    saved = io.load_state_dict_file(ckpt, "student checkpoint", ("student", "config"))   # weights_only
    cfg = RunConfig.from_dict(saved["config"])
    k = len(cfg.data.subtask_classes)
    student = build_student(cfg.student, k)
    try:
        student.load_state_dict(saved["student"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise ReproError(f"{ckpt} does not hold a {cfg.student} student: {str(exc).splitlines()[0]}") from None
    return student.to(device).eval(), cfg

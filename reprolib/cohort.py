"""Cohort training: every student of one (data config, seed) cell in lockstep.

The runs of one cell (every method, every λ) see bitwise the same augmented
batches (a training step never touches the global random stream; the batches
come from one generator seeded with the run's seed) and get bitwise the same
teacher outputs. A :class:`Cohort` therefore draws each batch once, runs the
frozen teacher once (its logits and every hooked layer any member needs; each
distinct teacher transform once), and then takes each student's own optimiser
step. Each member is initialised exactly as a separate run is (re-seeded
before its student and its method are built), so on the CPU, with the same
thread count, every student, curve and metric is bitwise identical to the one
:func:`train_run` gives on its own (``tests/test_cohort.py``).

The step never reads a loss to the host: each member accumulates its loss
terms (in float64, so the per-epoch means equal the former host sums) and the
first step at which each term was NaN/inf on the device; both are read once
per epoch. A member whose loss became non-finite stops with a
:class:`~reprolib.errors.ReproError` naming its method, λ, step and epoch; the
others go on. Hooks are registered once per run. How a cohort computes is one
:class:`~reprolib.devices.Execution`: its device and threads;
``precision="bf16"`` runs teacher and students under bf16 autocast (off by
default: fp32 gives the reference numbers); on CUDA AdamW is fused;
``compile=True`` wraps each student in :func:`torch.compile`; ``stack`` (by default on
CUDA only) runs the students of one architecture as one batched forward
(:class:`StudentStack`), each with its own parameters, optimiser and checkpoint.

The recipe (``book/protocol.md`` §5): AdamW (the config's ``lr``: 10⁻³ as in the
paper, 10⁻² in the mini world; weight decay 0) over the student's and the method's
own parameters; the rate halved every ``lr_step`` epochs; validation every epoch on
both validation sets of D3 (``val``, the config's selection set, and
``val_correlated``, the other one), so each run reports the test accuracy under both
selection rules; the epoch with the best validation accuracy (strict improvement, so
ties go to the earliest) is evaluated once on the test set. The loss is
``T²·KL(teacher ‖ student) + λ_layer · Σ_l L_l`` (+ ``λ_task·CE`` only when a user
asks for it; D6 sets it to 0). The teacher is frozen, runs in eval mode without
gradient, and its outputs are reused wherever that is exact: its test-set accuracy is
cached on disk (:mod:`reprolib.evaluation`), and when the preset has no augmentation
its training features are computed once.

Each member writes its own run folder (``student.pt``, then ``metrics.json``
last, atomically); :func:`train_cohort` skips members whose folder already
holds their finished run, so a killed cohort resumes with only the rest.
"""

from __future__ import annotations

import copy
import os
import random
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import CODE_VERSION
from . import methods as methods_module
from .config import RunConfig
from .data import World
from .devices import Execution, as_execution
from .worlds import build_world
from .errors import ReproError
from .grids import COHORT_FIELDS, cohort_key
from .hooks import FeatureCapture
from .io import check_output_dir, read_json
from .models import EVAL_BATCH, build_student, predict_labels
from .rundirs import check_run, write_run
from .teacher import build_teacher
from .evaluation import split_accuracies, teacher_test_metrics
from .subspace import relevant_subspaces

TEACHER_CHUNK = 256   # the precomputed (no augmentation) path


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's global streams, as every run starts (and every
    cohort member is built)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class CohortError(ReproError):
    """Some members failed; ``errors`` maps a member's index to its message.

    The members that did not fail were trained and written.
    """

    def __init__(self, errors: dict[int, str], total: int):
        self.errors = dict(errors)
        if len(errors) == 1 and total == 1:
            msg = next(iter(errors.values()))
        else:
            msg = (f"{len(errors)} of {total} students failed:\n"
                   + "\n".join(f"  student {i}: {e}" for i, e in sorted(errors.items())))
        super().__init__(msg)


def _capture(model: torch.nn.Module, paths: Sequence[str]) -> FeatureCapture:
    """Forward hooks registered once per run; they store outputs only while armed."""
    return FeatureCapture(model, paths, armed=False).open()


_LOGITS = "__logits__"


def _extractor(model: torch.nn.Module, paths: Sequence[str]) -> torch.nn.Module:
    """``model`` as an FX graph returning ``{path: output, _LOGITS: logits}`` (shared modules)."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    train_nodes, _ = get_graph_node_names(model)
    return_nodes = {p: p for p in paths}
    return_nodes[train_nodes[-1]] = _LOGITS
    return create_feature_extractor(model, return_nodes=return_nodes)


def _fast(x: torch.Tensor, dev: torch.device) -> torch.Tensor:
    return x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)


class _GlobalMean(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1), keepdim=True)


class StudentStack:
    """Students of one architecture run as one batched forward: :func:`torch.func.vmap` over
    :func:`torch.func.functional_call` of an FX feature extractor (the architecture's
    graph with its parameters on the meta device, returning the logits and ``paths``).

    Each step stacks the members' own parameters and buffers (``torch.stack``: the
    gradients flow back to each member's own leaves, so every member keeps its own
    student, optimiser and checkpoint, exactly as when it runs alone) and copies the
    batch-norm buffers the forward updated back into each member. The forward is the
    separate students' arithmetic in another order (batched convolutions), so it equals
    them up to rounding, not bitwise (``tests/test_cohort.py`` bounds the difference).
    """

    def __init__(self, student: torch.nn.Module, paths: Sequence[str]):
        from torch.func import functional_call

        template = copy.deepcopy(student)
        for module in template.modules():
            module._forward_hooks.clear()          # the copy must not feed a member's captures
        # vmap has no batching rule for adaptive average pooling (it falls back to a loop over
        # the members): global pooling becomes the mean it is.
        for name, module in list(template.named_modules()):
            if isinstance(module, torch.nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1)):
                parent = template.get_submodule(name.rpartition(".")[0]) if "." in name else template
                setattr(parent, name.rpartition(".")[2], _GlobalMean())
        self.base = _extractor(template, list(paths)).to("meta")

        def call(params, buffers, x):
            return functional_call(self.base, (params, buffers), (x,))

        self._call = call

    def forward(self, students: Sequence[torch.nn.Module], x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{path: [M, ...], _LOGITS: [M, B, K]}`` of the M ``students`` on one batch ``x``."""
        from torch.func import vmap

        named = [(dict(s.named_parameters()), dict(s.named_buffers())) for s in students]
        params = {n: torch.stack([p[n] for p, _ in named]) for n in named[0][0]}
        buffers = {n: torch.stack([b[n] for _, b in named]) for n in named[0][1]}
        out = vmap(self._call, in_dims=(0, 0, None))(params, buffers, x)
        with torch.no_grad():          # train-mode batch norm updated the stacked running statistics
            for i, (_, b) in enumerate(named):
                for n, t in b.items():
                    t.copy_(buffers[n][i])
        return out


class _EvalSet:
    """A whole evaluation split on the device, in fixed batches (built once per cohort)."""

    def __init__(self, world: World, split: str, dev: torch.device, batch_size: int = EVAL_BATCH):
        x, self.y, self.d = _whole(world, split)
        self.xs = [_fast(x[i:i + batch_size], dev) for i in range(0, len(x), batch_size)]

    def predict(self, model: torch.nn.Module, autocast) -> torch.Tensor:
        return predict_labels(model, self.xs, autocast)

    def accuracy(self, model, autocast) -> float:
        return float((self.predict(model, autocast) == self.y).float().mean())


class _PairedEvalSet:
    """The two validation sets of D3 evaluated together.

    The oracle set (random digits) and the correlated set hold the same pool
    images and differ only where their pasted digits differ (none at ρ = 0, the
    contaminated images whose two digits disagree otherwise). The union is
    evaluated once: every image of the first set, plus only the differing
    images of the second; the second set's predictions on its other images are
    the first set's (the same pixels, a model in eval mode). This saves between
    a third (ρ = 1) and all (ρ = 0) of the second set's forward passes.
    """

    def __init__(self, world: World, first: str, second: str, dev: torch.device,
                 batch_size: int = EVAL_BATCH):
        xa, ya, _ = _whole(world, first)
        xb, yb, _ = _whole(world, second)
        if xa.shape != xb.shape or not torch.equal(ya, yb):
            raise ReproError(f"validation splits {first!r} and {second!r} do not hold the same images")
        self.differs = (xa != xb).flatten(1).any(1)
        extra = xb[self.differs]
        union = torch.cat([xa, extra])
        self.n = len(xa)
        self.xs = [_fast(union[i:i + batch_size], dev) for i in range(0, len(union), batch_size)]
        self.ya, self.yb = ya, yb

    def accuracies(self, model: torch.nn.Module, autocast) -> tuple[float, float]:
        pred = predict_labels(model, self.xs, autocast)
        pa = pred[:self.n]
        pb = pa.clone()
        pb[self.differs] = pred[self.n:]
        return (float((pa == self.ya).float().mean()), float((pb == self.yb).float().mean()))


def _whole(world: World, split: str):
    xs, ys, ds = [], [], []
    for x, y, d in world.batches(split, EVAL_BATCH):
        xs.append(x)
        ys.append(y)
        ds.append(d)
    return torch.cat(xs), torch.cat(ys), torch.cat(ds)


class _Member:
    """One student of the cohort: its model, method, optimiser and bookkeeping."""

    def __init__(self, index: int, cfg: RunConfig, out_dir: Path | None):
        self.index, self.cfg, self.out_dir = index, cfg, out_dir
        self.error: str | None = None
        self.steps = 0
        self.stacked = False        # stepped in a StudentStack (with another member of its architecture)

    @property
    def label(self) -> str:
        lam = "" if self.cfg.method == "kd" else f" (lambda={self.cfg.lambda_layer:g})"
        return f"{self.cfg.method}{lam}"


class Cohort:
    """Every student of one (data config, seed) cell, trained in lockstep.

    ``step(x, y)`` runs the teacher once on a (device) batch and takes one
    optimiser step per member; ``train_epoch()`` runs one epoch and returns
    each member's mean loss terms (``None`` for a failed member).
    """

    def __init__(self, cfgs: Sequence[RunConfig], execution: Execution | None = None, *,
                 progress: bool = False, world: World | None = None,
                 out_dirs: Sequence[Path | None] | None = None):
        cfgs = list(cfgs)
        if not cfgs:
            raise ReproError("a cohort needs at least one config")
        keys = {cohort_key(c) for c in cfgs}
        if len(keys) > 1:
            raise ReproError("the configs of a cohort must share " + ", ".join(COHORT_FIELDS)
                             + "; group them with reprolib.grids.group_cohorts")
        self.cfgs = cfgs
        self.execution = execution = as_execution(execution)
        self.dev = torch.device(execution.device)
        cfg0 = cfgs[0]
        # The shared part, in the order prepare() builds it for a separate run.
        seed_everything(cfg0.seed)
        self.world = world or build_world(cfg0.data, cfg0.seed)
        self.world.device = self.dev   # the paper world pastes digits there; the mini world ignores it
        self.teacher = build_teacher(cfg0, progress=progress).to(self.dev)
        with torch.no_grad():
            out = self.teacher(torch.zeros(1, *self.world.input_shape, device=self.dev))
        if out.shape[1] != self.world.num_classes:
            raise ReproError(f"the teacher gives {out.shape[1]} subtask logits for "
                             f"{self.world.num_classes} classes")
        self.steps_per_epoch = self.world.num_batches("train", cfg0.batch_size, drop_last=True)
        if self.steps_per_epoch == 0:
            raise ReproError(f"the training split has fewer images than one batch "
                             f"({cfg0.batch_size}); lower --batch-size or raise pool_per_class")
        out_dirs = list(out_dirs) if out_dirs is not None else [None] * len(cfgs)
        self.members = [_Member(i, c, None if d is None else Path(d))
                        for i, c, d in zip(range(len(cfgs)), cfgs, out_dirs)]
        for m in self.members:
            try:
                self._build_member(m)
            except ReproError as exc:
                m.error = str(exc)
        # channels_last: about 1.4x faster convolutions on CPU (oneDNN) and GPU alike.
        self.teacher.to(memory_format=torch.channels_last)
        # One teacher capture for the union of the layers the members need.
        t_paths: list[str] = []
        for m in self.active:
            t_paths += [p for p in m.t_paths if p not in t_paths]
        self.t_paths = t_paths
        self.tcap = _capture(self.teacher.model, t_paths)
        for m in self.active:
            m.t_idx = [t_paths.index(p) for p in m.t_paths]
        # One teacher transform per distinct (method, layers, student, positions): those
        # transforms have no learned state, so members that share the key share targets.
        self.transforms: dict[tuple, Any] = {}
        for m in self.active:
            m.tkey = (m.cfg.method, m.cfg.layer_pairs, m.cfg.student, m.cfg.subspace_positions,
                      m.cfg.student_norm) if m.t_paths else None
            if m.tkey is not None:
                self.transforms.setdefault(m.tkey, (m.method, m.t_idx))
        self.stacked = execution.stacks
        self._stacks: dict[str, StudentStack] = {}
        seed_everything(cfg0.seed)
        self.gen = torch.Generator().manual_seed(cfg0.seed)
        self._precomputed = None
        self.epoch = 0
        self._eval: dict[str, _EvalSet] = {}

    # -- setup ---------------------------------------------------------------
    def _build_member(self, m: _Member) -> None:
        """Student, method and optimiser of one member, exactly as prepare() builds them."""
        from .hooks import feature_shapes

        cfg, dev, world = m.cfg, self.dev, self.world
        t_paths = [t for t, _ in cfg.layer_pairs]
        s_paths = [s for _, s in cfg.layer_pairs]
        seed_everything(cfg.seed)
        probe = build_student(cfg.student, world.num_classes).to(dev)
        t_shapes = list(feature_shapes(self.teacher.model, t_paths, world.input_shape).values()) if t_paths else []
        s_shapes = list(feature_shapes(probe, s_paths, world.input_shape).values()) if s_paths else []
        cls = methods_module.METHODS.get(cfg.method)
        subspaces, m.subspace_path = None, None
        if cls is not None and cls.needs_subspaces:
            subspaces, m.subspace_path = relevant_subspaces(cfg, self.teacher, world,
                                                            [s[0] for s in s_shapes], dev)
        # §5: re-seed so that inits inside the method do not depend on what ran before.
        seed_everything(cfg.seed)
        m.student = build_student(cfg.student, world.num_classes).to(dev)
        m.method = methods_module.build_method(
            cfg.method, t_shapes, s_shapes, student_norm=cfg.student_norm,
            vid_variance=cfg.vid_variance, subspaces=subspaces).to(dev)
        m.layers = [{"teacher": t, "student": s, "teacher_shape": list(ts), "student_shape": list(ss)}
                    for (t, s), ts, ss in zip(cfg.layer_pairs, t_shapes, s_shapes)]
        m.student.to(memory_format=torch.channels_last)
        uses = m.method.uses_layers
        m.t_paths = t_paths if uses else []
        m.s_paths = s_paths if uses else []
        if self.execution.compile:
            # Hooks on submodules do not fire inside a compiled graph: compile an FX
            # feature extractor instead (the same modules and parameters, returning
            # the logits and the hooked layers' outputs).
            m.scap = _capture(m.student, [])
            m.forward = torch.compile(_extractor(m.student, m.s_paths))
        else:
            m.scap = _capture(m.student, m.s_paths)
            m.forward = None
        params = list(m.student.parameters()) + list(m.method.parameters())
        fused = {"fused": True} if dev.type == "cuda" else {}
        # Weight decay stays 0 (§5).
        m.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
        m.sched = torch.optim.lr_scheduler.StepLR(m.opt, step_size=cfg.lr_step, gamma=cfg.lr_gamma)
        m.term_names = (["kd", "layer"] + [f"layer_{i}" for i in range(len(m.s_paths))]
                        + (["ce"] if cfg.lambda_task > 0 else []) + ["total"])
        m.sums = torch.zeros(3, dtype=torch.float64, device=dev)           # total, kd, layer
        m.first_bad = torch.full((len(m.term_names),), -1, dtype=torch.long, device=dev)

    @property
    def active(self) -> list[_Member]:
        return [m for m in self.members if m.error is None]

    def autocast(self):
        return torch.autocast(self.dev.type, dtype=torch.bfloat16, enabled=self.execution.precision == "bf16")

    # -- the teacher ---------------------------------------------------------
    @torch.no_grad()
    def teacher_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Logits and each distinct teacher transform's targets for a device batch."""
        self.tcap.armed = True
        try:
            with self.autocast():
                logits = self.teacher(x)
        finally:
            self.tcap.armed = False
        feats = self.tcap.get() if self.t_paths else []
        self.tcap.features = {}
        targets = {}
        for key, (method, idx) in self.transforms.items():
            # Under bf16 the transforms (pooling, projections) run on the bf16 maps and
            # only their (smaller) outputs are cast to float32.
            with self.autocast():
                out = method.teacher_transform([feats[i] for i in idx])
            targets[key] = [t.float() for t in out]
        return logits.float(), targets

    def _batches(self):
        """One epoch of ``(x, y, teacher_logits, targets_by_transform)``.

        Without augmentation (mini world) the teacher's outputs are computed once
        for the whole training split and indexed per batch (exact: the teacher is
        frozen and in eval mode); otherwise the teacher runs on every batch.
        """
        cfg, dev = self.cfgs[0], self.dev
        if not cfg.data.augment and self.world.in_memory:
            if self._precomputed is None:
                x_all, y_all, _ = self.world.tensors("train")
                outs = [self.teacher_outputs(_fast(x_all[i:i + TEACHER_CHUNK], dev))
                        for i in range(0, len(x_all), TEACHER_CHUNK)]
                logits_all = torch.cat([o[0] for o in outs])
                targets_all = {k: [torch.cat([o[1][k][j] for o in outs]) for j in range(len(outs[0][1][k]))]
                               for k in self.transforms}
                self._precomputed = (x_all, y_all, logits_all, targets_all)
            x_all, y_all, logits_all, targets_all = self._precomputed
            n = len(x_all)
            order = torch.randperm(n, generator=self.gen)
            for s in range(n // cfg.batch_size):
                idx = order[s * cfg.batch_size:(s + 1) * cfg.batch_size]
                didx = idx.to(logits_all.device)
                yield (_fast(x_all[idx], dev), y_all[idx], logits_all[didx],
                       {k: [t[didx] for t in v] for k, v in targets_all.items()})
            return
        for x, y, _d in self.world.batches("train", cfg.batch_size, shuffle=True,
                                           generator=self.gen, drop_last=True):
            x = _fast(x, dev)
            yield (x, y, *self.teacher_outputs(x))

    # -- the students --------------------------------------------------------
    def _member_loss(self, m: _Member, s_logits, raw, y, t_logits, targets) -> torch.Tensor:
        """A member's loss from its student's logits and hooked layers, with the bookkeeping
        (loss sums, first bad step) on the device."""
        cfg = m.cfg
        with self.autocast():
            kd = methods_module.kd_loss(s_logits.float(), t_logits, cfg.temperature)
            layer_terms = []
            if m.s_paths:
                layer_terms = m.method([f.float() for f in raw], targets[m.tkey])
            ce = (F.cross_entropy(s_logits.float(), y.to(self.dev)) if cfg.lambda_task > 0 else None)
        loss, terms = methods_module.loss_terms(kd, layer_terms, cfg.lambda_layer, ce, cfg.lambda_task)
        # Bookkeeping on the device, no sync: sums in float64 and the first bad step per term.
        with torch.no_grad():
            vec = torch.stack([terms[k].float() for k in m.term_names])
            bad = ~torch.isfinite(vec)
            m.first_bad = torch.where(bad & (m.first_bad < 0), m.steps, m.first_bad)
            m.sums += torch.stack([terms["total"], terms["kd"], terms["layer"]]).double()
        return loss

    def _member_step(self, m: _Member, x, y, t_logits, targets) -> None:
        if m.forward is not None:       # compiled
            with self.autocast():
                out = m.forward(x)
            s_logits, raw = out[_LOGITS], [out[p] for p in m.s_paths]
        else:
            m.scap.armed = bool(m.s_paths)
            try:
                with self.autocast():
                    s_logits = m.student(x)
            finally:
                m.scap.armed = False
            raw = m.scap.get() if m.s_paths else []
        m.scap.features = {}
        loss = self._member_loss(m, s_logits, raw, y, t_logits, targets)
        m.opt.zero_grad(set_to_none=True)
        loss.backward()
        m.opt.step()
        m.steps += 1

    def _stacked_step(self, members: Sequence[_Member], x, y, t_logits, targets) -> None:
        """One step of ``members`` (one architecture) through their :class:`StudentStack`:
        one batched forward, each member's own loss, one backward of their sum (each
        member's parameters get its own loss's gradient only), each member's own
        optimiser step."""
        student = members[0].cfg.student
        if student not in self._stacks:
            paths = sorted({p for m in self.active if m.cfg.student == student for p in m.s_paths})
            self._stacks[student] = StudentStack(members[0].student, paths)
        with self.autocast():
            out = self._stacks[student].forward([m.student for m in members], x)
        losses = [self._member_loss(m, out[_LOGITS][i], [out[p][i] for p in m.s_paths], y, t_logits, targets)
                  for i, m in enumerate(members)]
        for m in members:
            m.opt.zero_grad(set_to_none=True)
        torch.stack(losses).sum().backward()
        for m in members:
            m.opt.step()
            m.steps += 1

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One teacher forward and one optimiser step per active member (``x`` on the device)."""
        self.step_members(x, y, *self.teacher_outputs(x))

    def step_members(self, x: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor, targets: dict,
                     members: Sequence[_Member] | None = None) -> None:
        """The students' part of :meth:`step`, given the teacher's outputs for ``x``: each
        member's own step, or, when the execution stacks (:attr:`Execution.stacks`), one
        stacked step per architecture shared by several members."""
        members = self.active if members is None else members
        if not self.stacked:
            for m in members:
                self._member_step(m, x, y, t_logits, targets)
            return
        by_student: dict[str, list[_Member]] = {}
        for m in members:
            by_student.setdefault(m.cfg.student, []).append(m)
        for group in by_student.values():
            for m in group:
                m.stacked = m.stacked or len(group) > 1
            if len(group) == 1:
                self._member_step(group[0], x, y, t_logits, targets)
            else:
                self._stacked_step(group, x, y, t_logits, targets)

    def train_epoch(self) -> list[dict[str, float] | None]:
        """One epoch for every active member; its mean loss terms (None: failed)."""
        members = self.active
        for m in members:
            m.student.train()
            m.method.train()
            m.sums.zero_()
        start = [m.steps for m in members]
        for x, y, t_logits, targets in self._batches():
            self.step_members(x, y, t_logits, targets, members)
        for m in members:
            m.sched.step()
        # The one read of the loss terms per epoch.
        host = [(m.sums.cpu().tolist(), m.first_bad.cpu().tolist()) for m in members]
        out: dict[int, dict[str, float]] = {}
        for m, s0, (sums, first_bad) in zip(members, start, host):
            bad = [(step, name) for step, name in zip(first_bad, m.term_names) if step >= 0]
            if bad:
                step = min(s for s, _ in bad)
                name = next(n for s, n in bad if s == step)
                m.error = (f"{m.label}: loss term {name} became NaN/inf at step {step} (epoch "
                           f"{self.epoch}); lower the learning rate or lambda_layer, or check the "
                           "inputs and features for NaN/inf")
                continue
            n = m.steps - s0
            out[m.index] = {"loss": sums[0] / n, "kd": sums[1] / n, "layer": sums[2] / n}
        self.epoch += 1
        return [out.get(m.index) for m in self.members]

    def eval_set(self, split: str) -> _EvalSet:
        if split not in self._eval:
            self._eval[split] = _EvalSet(self.world, split, self.dev)
        return self._eval[split]

    def close(self) -> None:
        self.tcap.close()
        for m in self.members:
            if hasattr(m, "scap"):
                m.scap.close()


def train_cohort(cfgs: Sequence[RunConfig], out_dirs: Sequence[str | os.PathLike], *,
                 execution: Execution | None = None, progress: bool = True,
                 world: World | None = None, resume: bool = True) -> list[dict]:
    """Train the students of one cohort; each writes ``student.pt`` then ``metrics.json``.

    ``execution`` (default: the CPU with torch's thread count, fp32, not compiled)
    says how; its ``threads``, when given, are set with :func:`torch.set_num_threads`.

    Members whose folder already holds their finished run (``resume=True``)
    are not trained again; their metrics are read back. Returns one metrics
    dict per config, in order. If some members fail (a non-finite loss, a bad
    layer name), the others are still trained and written, then a
    :class:`CohortError` lists the failures.
    """
    start = time.time()
    cfgs, out_dirs = list(cfgs), [Path(d) for d in out_dirs]
    if len(cfgs) != len(out_dirs):
        raise ReproError(f"{len(cfgs)} configs but {len(out_dirs)} output folders; give one each")
    execution = as_execution(execution)
    for d in out_dirs:
        check_output_dir(d)   # before any work, not when saving (harden)
    if execution.threads:
        torch.set_num_threads(execution.threads)
    results: list[dict | None] = [None] * len(cfgs)
    todo = []
    for i, (cfg, d) in enumerate(zip(cfgs, out_dirs)):
        if resume and check_run(d, cfg.key()) is None:
            results[i] = read_json(d / "metrics.json")
        else:
            todo.append(i)
    if not todo:
        return results
    cohort = Cohort([cfgs[i] for i in todo], execution, progress=progress, world=world,
                    out_dirs=[out_dirs[i] for i in todo])
    try:
        metrics = _train(cohort, start, progress)
    finally:
        cohort.close()
    errors = {}
    for j, i in enumerate(todo):
        m = cohort.members[j]
        if m.error is not None:
            errors[i] = m.error
        else:
            results[i] = metrics[j]
    if errors:
        raise CohortError(errors, len(cfgs))
    return results


def _train(cohort: Cohort, start: float, progress: bool) -> list[dict | None]:
    from tqdm import tqdm

    cfg0 = cohort.cfgs[0]
    world, dev = cohort.world, cohort.dev
    setup_s = time.time() - start
    members = cohort.active
    if not members:
        return [None] * len(cohort.members)
    teacher_metrics = teacher_test_metrics(cohort.teacher, world, cfg0, dev)
    vals = _PairedEvalSet(world, "val", "val_correlated", dev)
    for m in members:
        m.best = {"oracle": (-1.0, -1, None), "nonoracle": (-1.0, -1, None)}
        m.curves = {k: [] for k in ("loss", "kd", "layer", "val_epoch", "val_accuracy",
                                    "val_correlated_accuracy", "lr")}
    what = cfg0.method if len(cohort.members) == 1 else f"{len(cohort.members)} students"
    bar = tqdm(range(cfg0.epochs), desc=f"{what} rho={cfg0.data.contamination_rate:g} seed={cfg0.seed}",
               disable=not progress, unit="epoch")
    train_s = 0.0
    for epoch in bar:
        members = cohort.active
        if not members:
            break
        for m in members:
            m.curves["lr"].append(m.opt.param_groups[0]["lr"])
        t0 = time.time()
        terms = cohort.train_epoch()
        train_s += time.time() - t0
        for m in cohort.active:
            for k, v in terms[m.index].items():
                m.curves[k].append(v)
        # Validation (and the checkpoint choice) every `val_every` epochs and after the last.
        if (epoch + 1) % cfg0.val_every and epoch + 1 != cfg0.epochs:
            continue
        for m in cohort.active:
            acc, acc_corr = vals.accuracies(m.student, cohort.autocast)
            m.curves["val_epoch"].append(epoch)
            m.curves["val_accuracy"].append(acc)
            m.curves["val_correlated_accuracy"].append(acc_corr)
            for rule, a in (("oracle", acc), ("nonoracle", acc_corr)):
                if a > m.best[rule][0]:
                    m.best[rule] = (a, epoch, copy.deepcopy(m.student.state_dict()))
    bar.close()

    # Each member's best-validation epochs, evaluated once on the test set.
    test_set = cohort.eval_set("test")
    out: list[dict | None] = [None] * len(cohort.members)
    n_active = max(1, len(cohort.active))
    for m in cohort.active:
        results = {}
        for rule in ("oracle", "nonoracle"):
            if rule == "nonoracle" and m.best[rule][1] == m.best["oracle"][1]:
                results[rule] = results["oracle"]   # same epoch, same student: no second pass
                continue
            m.student.load_state_dict(m.best[rule][2])
            results[rule] = split_accuracies(test_set.predict(m.student, cohort.autocast),
                                             test_set.y, test_set.d)
        m.student.load_state_dict(m.best["oracle"][2])
        out[m.index] = _write_member(cohort, m, results, teacher_metrics, start, setup_s,
                                     train_s / n_active)
    return out


def _write_member(cohort: Cohort, m: _Member, results: dict, teacher_metrics: dict, start: float,
                  setup_s: float, train_s: float) -> dict:
    cfg, test = m.cfg, results["oracle"]
    metrics = {
        "test_accuracy": test["accuracy"],
        "test_accuracy_with_digit": test["accuracy_with_digit"],
        "test_accuracy_digit_differs": test["accuracy_digit_differs"],
        "predicts_digit": test["predicts_digit"],
        "predicts_digit_differs": test["predicts_digit_differs"],
        "test_counts": {k: test[k] for k in ("n", "n_with_digit", "n_digit_differs")},
        "val_accuracy": m.best["oracle"][0],
        "best_epoch": m.best["oracle"][1],
        "nonoracle_val_accuracy": m.best["nonoracle"][0],
        "nonoracle_best_epoch": m.best["nonoracle"][1],
        "nonoracle_test_accuracy": results["nonoracle"]["accuracy"],
        "nonoracle_test_accuracy_with_digit": results["nonoracle"]["accuracy_with_digit"],
        "nonoracle_test_accuracy_digit_differs": results["nonoracle"]["accuracy_digit_differs"],
        "nonoracle_predicts_digit": results["nonoracle"]["predicts_digit"],
        "nonoracle_predicts_digit_differs": results["nonoracle"]["predicts_digit_differs"],
        "teacher_test_accuracy": teacher_metrics["accuracy"],
        "teacher_test_accuracy_with_digit": teacher_metrics["accuracy_with_digit"],
        "curves": m.curves,
        "layers": m.layers,
        "subspace_cache": str(m.subspace_path) if m.subspace_path else None,
        "steps_per_epoch": cohort.steps_per_epoch,
        "optimizer_steps": m.steps,
        "precision": cohort.execution.precision,
        "compile": cohort.execution.compile,
        "stacked": m.stacked,
        # Wall time since the cohort started; with several students it is shared.
        "seconds": time.time() - start,
        "cohort_size": len(cohort.members),
        "train_seconds_per_student": train_s,
        "device": str(cohort.dev),
        "threads": torch.get_num_threads(),
        "config": cfg.to_dict(),
        "config_key": cfg.key(),
        "code_version": CODE_VERSION,
        "torch": torch.__version__,
    }
    if m.out_dir is not None:   # student.pt, then metrics.json last (rundirs: the folder's contract)
        metrics = write_run(m.out_dir, {"student": m.student.state_dict(), "method": m.method.state_dict(),
                                        "config": cfg.to_dict(), "config_key": cfg.key()}, metrics)
    return metrics


def train_run(cfg: RunConfig, out_dir: str | os.PathLike, *, execution: Execution | None = None,
              progress: bool = True, world: World | None = None) -> dict[str, Any]:
    """Train one student; write ``student.pt`` then ``metrics.json`` into ``out_dir``.

    A cohort of one (:func:`train_cohort`); always trains, even when ``out_dir``
    already holds a finished run.
    """
    return train_cohort([cfg], [out_dir], execution=execution, progress=progress, world=world,
                        resume=False)[0]

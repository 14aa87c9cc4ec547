"""Cohort training: bitwise the same students as separate runs; resumption; the fast step."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import sys

import pytest
import torch

import reprolib.methods as methods_module
from reprolib import config as config_module
from reprolib.cohort import Cohort, CohortError, train_cohort, train_run
from reprolib.config import make_config
from reprolib.devices import Execution, resolve_device
from reprolib.errors import ReproError
from reprolib.grids import group_cohorts
from reprolib.methods import METHODS
from reprolib.models import build_student

# Metrics that depend on wall time or on the cohort, not on the student.
VOLATILE = {"seconds", "train_seconds_per_student", "cohort_size"}


@pytest.fixture(autouse=True)
def _teacher(smoke_teacher):
    """Every test here needs the mini smoke teacher: train it once, up front."""


def _same(a, b) -> bool:
    """Equal as JSON (NaN equals NaN)."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _cohort_cfgs():
    cfgs = [make_config("mini", "smoke", method="kd", contamination_rate=1.0, lambda_layer=0.0)]
    for method in ("at", "vid", "vkd", "subdistill"):
        for lam in (1.0, 10.0):
            cfgs.append(make_config("mini", "smoke", method=method, contamination_rate=1.0,
                                    lambda_layer=lam))
    return cfgs


def test_registry_is_the_one_list_of_methods():
    assert tuple(METHODS) == config_module.METHODS == ("kd", "at", "vid", "vkd", "subdistill")
    assert all(cls.name == name for name, cls in METHODS.items())


@pytest.mark.numerics
def test_cohort_is_bitwise_identical_to_separate_runs(tmp_path):
    """Bitwise equality holds on any CPU because both sides run the same kernels on the same machine.

    A cohort shares one teacher forward per batch and steps each student with its own eager modules,
    batches and optimiser, exactly as a separate run does: same process, same thread count, same
    dispatch, same shapes, so the same kernels in the same order. No tolerance is needed or allowed;
    the numerics marker reruns it under other dispatches, where it must hold again.
    """
    cfgs = _cohort_cfgs()
    assert len(group_cohorts(cfgs)) == 1
    together = train_cohort(cfgs, [tmp_path / "c" / str(i) for i in range(len(cfgs))],
                            progress=False)
    for i, cfg in enumerate(cfgs):
        alone = train_run(cfg, tmp_path / "s" / str(i), progress=False)
        a, b = dict(together[i]), dict(alone)
        assert a["cohort_size"] == len(cfgs) and b["cohort_size"] == 1
        for k in VOLATILE:
            a.pop(k), b.pop(k)
        assert a == b, (cfg.method, cfg.lambda_layer)     # every metric and curve, exactly
        on_disk = json.loads((tmp_path / "c" / str(i) / "metrics.json").read_text())
        assert on_disk["optimizer_steps"] == cfg.epochs * on_disk["steps_per_epoch"] > 0
        assert on_disk["precision"] == "fp32"
        sa = torch.load(tmp_path / "c" / str(i) / "student.pt", weights_only=True)
        sb = torch.load(tmp_path / "s" / str(i) / "student.pt", weights_only=True)
        for part in ("student", "method"):
            assert sa[part].keys() == sb[part].keys()
            for k in sa[part]:
                assert torch.equal(sa[part][k], sb[part][k]), (cfg.method, part, k)
    # The two λ of a method are different students (the test can fail).
    assert together[1]["curves"]["loss"] != together[2]["curves"]["loss"]


def test_cohort_trains_only_unfinished_members(tmp_path, monkeypatch):
    cfgs = [make_config("mini", "smoke", method=m, contamination_rate=0.0, lambda_layer=1.0)
            for m in ("kd", "at", "vkd")]
    dirs = [tmp_path / m for m in ("kd", "at", "vkd")]
    first = train_cohort(cfgs[:2], dirs[:2], progress=False)
    mtime = (dirs[0] / "metrics.json").stat().st_mtime_ns
    built = []
    real = Cohort._build_member

    def spy(self, m):
        built.append(m.cfg.method)
        return real(self, m)

    monkeypatch.setattr(Cohort, "_build_member", spy)
    again = train_cohort(cfgs, dirs, progress=False)
    assert built == ["vkd"]                                      # only the unfinished one
    assert (dirs[0] / "metrics.json").stat().st_mtime_ns == mtime
    assert _same(again[0], first[0]) and _same(again[1], first[1])
    assert again[2]["config_key"] == cfgs[2].key()
    assert _same(train_cohort(cfgs, dirs, progress=False), again) and built == ["vkd"]


def test_configs_of_different_cells_are_refused():
    a = make_config("mini", "smoke", method="kd", contamination_rate=0.0)
    with pytest.raises(ReproError, match="must share"):
        Cohort([a, a.replace(seed=2)])


@pytest.mark.parametrize("stack", [False, True])
def test_nan_loss_stops_only_that_member_with_a_clear_error(tmp_path, monkeypatch, stack):
    real = methods_module.AttentionTransfer.pair_loss

    def nan_at(self, i, s, t):
        return real(self, i, s, t) * float("nan")

    monkeypatch.setattr(methods_module.AttentionTransfer, "pair_loss", nan_at)
    cfgs = [make_config("mini", "smoke", method=m, contamination_rate=1.0, lambda_layer=10.0)
            for m in ("kd", "at")]
    with pytest.raises(CohortError, match=r"at \(lambda=10\): loss term layer became NaN/inf at "
                                          r"step 0 \(epoch 0\)") as info:
        train_cohort(cfgs, [tmp_path / "kd", tmp_path / "at"], progress=False, execution=Execution(stack=stack))
    assert list(info.value.errors) == [1]
    assert (tmp_path / "kd" / "metrics.json").exists()          # the other member finished
    assert not (tmp_path / "at" / "metrics.json").exists()


def test_huge_learning_rate_is_reported_not_written(tmp_path):
    cfg = make_config("mini", "smoke", method="vid", contamination_rate=1.0, lr=1e30,
                      lambda_layer=1e30)
    with pytest.raises(ReproError, match=r"vid \(lambda=1e\+30\): loss term .* became NaN/inf at step \d+"):
        train_run(cfg, tmp_path, progress=False)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("stack", [False, True])
def test_the_step_reads_nothing_to_the_host(monkeypatch, stack):
    cfgs = [make_config("mini", "smoke", method=m, contamination_rate=1.0, lambda_layer=1.0)
            for m in ("kd", "at", "vid", "vkd", "subdistill")]
    cohort = Cohort(cfgs, Execution(stack=stack))
    batches = cohort._batches()
    x, y, _, _ = next(batches)
    reads = []
    for name in ("item", "tolist", "__float__", "__bool__", "__int__", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)

        def spy(self, *a, _real=real, _name=name, **k):
            caller = sys._getframe(1).f_code.co_filename
            if "reprolib" in caller:        # ours, not torch's own bookkeeping (AdamW's step count)
                reads.append(f"{_name} from {caller}")
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, spy)
    before = [m.steps for m in cohort.members]
    for _ in range(3):
        cohort.step(x, y)
    monkeypatch.undo()
    assert reads == []
    assert [m.steps for m in cohort.members] == [s + 3 for s in before]
    cohort.close()


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("CPU") == "cpu"
    for bad in ("gpu", "cuda:x", "cuda:-1", "cuda1", ""):
        with pytest.raises(ReproError, match="unknown device"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ReproError, match="sees no CUDA device"):
            resolve_device("cuda:0")
        assert resolve_device("auto") == "cpu"
    else:
        assert resolve_device("cuda:0") == "cuda:0"
        with pytest.raises(ReproError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_execution_is_one_checked_frozen_object():
    """Device, threads, precision and compile travel as one Execution: checked once, with
    the bad value and the choices in one line; the numerics record sweep.json stores."""
    import dataclasses
    import pickle

    from reprolib import devices

    e = Execution(device="CPU", threads=2)
    assert (e.device, e.threads, e.precision, e.compile) == ("cpu", 2, "fp32", False)
    assert e.numerics() == {"threads": 2, "device": "cpu", "precision": "fp32"}
    assert pickle.loads(pickle.dumps(e)) == e          # crosses process boundaries
    with pytest.raises(dataclasses.FrozenInstanceError):
        e.threads = 3
    assert devices.PRECISIONS == ("fp32", "bf16")
    for kw, words in ((dict(precision="fp8"), "unknown precision 'fp8'; choose one of fp32, bf16"),
                      (dict(threads=0), "threads=0 must be a positive integer"),
                      (dict(threads=True), "threads=True must be a positive integer"),
                      (dict(compile="yes"), "compile='yes' must be true or false"),
                      (dict(device="tpu"), "unknown device 'tpu'; choose auto, cpu, cuda or cuda:N")):
        with pytest.raises(ReproError, match=re.escape(words)) as info:
            Execution(**kw)
        assert "\n" not in str(info.value)
    cfg = make_config("mini", "smoke", method="kd", contamination_rate=0.0)
    with pytest.raises(ReproError, match="execution='cpu' must be a reprolib.devices.Execution"):
        Cohort([cfg], "cpu")       # the old positional device


def test_bf16_on_a_cpu_without_native_bf16_is_refused(monkeypatch):
    from reprolib import devices

    monkeypatch.setattr(devices, "cpu_flags", lambda *_: {"avx2", "fma"})
    with pytest.raises(ReproError, match=r"--precision bf16 on the CPU: bf16 on this CPU would be emulated, "
                                         r"not native \(it has neither avx512_bf16 nor amx_bf16\)") as info:
        Execution(precision="bf16")
    assert "\n" not in str(info.value)
    assert Execution(precision="fp32").precision == "fp32"
    monkeypatch.setattr(devices, "cpu_flags", lambda *_: {"avx2", "avx512_bf16"})
    assert Execution(precision="bf16").precision == "bf16"


def test_bf16_autocast_runs_on_the_cpu_and_is_recorded(tmp_path, monkeypatch):
    from reprolib import devices

    # The code path, on any CPU: pretend it has native bf16 (where it has not, bf16 is
    # emulated: slow, but the same arithmetic).
    monkeypatch.setattr(devices, "cpu_flags", lambda *_: {"avx512_bf16"})
    cfg = make_config("mini", "smoke", method="subdistill", contamination_rate=1.0, lambda_layer=1.0)
    metrics = train_run(cfg, tmp_path, execution=Execution(precision="bf16"), progress=False)
    assert metrics["precision"] == "bf16" and 0 <= metrics["test_accuracy"] <= 1
    with pytest.raises(ReproError, match="unknown precision 'fp8'; choose one of fp32, bf16"):
        train_run(cfg, tmp_path / "x", execution=Execution(precision="fp8"), progress=False)


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).double()


def _first_step(cfgs, execution, reference=False, state=False):
    """One teacher forward and one optimiser step of a fresh cohort: the teacher's outputs
    and, per member, (loss, the gradients of its student's parameters as one flat vector).
    ``execution``: an :class:`Execution`, or a bool for ``Execution(compile=...)``.
    ``reference=True`` also returns the same first step in float64 (copies of the members'
    initial student and method, the same batch and the same teacher targets), computed
    before the float32 step. ``state=True`` also returns the members' students' state
    dicts after the step."""
    from reprolib.cohort import _LOGITS, _extractor

    if isinstance(execution, bool):
        execution = Execution(compile=execution)
    cohort = Cohort(cfgs, execution)
    x, y, t_logits, targets = next(cohort._batches())
    ref = []
    for m in (cohort.members if reference else []):
        student = copy.deepcopy(m.student).double()
        for module in student.modules():
            module._forward_hooks.clear()           # the copy must not feed the cohort's captures
        method = copy.deepcopy(m.method).double()
        out = _extractor(student, m.s_paths)(x.double())
        kd = methods_module.kd_loss(out[_LOGITS], t_logits.double(), m.cfg.temperature)
        layer_terms = []
        if m.s_paths:
            layer_terms = method.criterion(method.student_transform([out[p] for p in m.s_paths]),
                                           [t.double() for t in targets[m.tkey]])
        loss, _ = methods_module.loss_terms(kd, layer_terms, m.cfg.lambda_layer)
        loss.backward()
        ref.append((float(loss.detach()), _grads(student)))
    cohort.step_members(x, y, t_logits, targets)
    out = [(float(m.sums[0]), _grads(m.student)) for m in cohort.members]
    result = (t_logits, out, ref) if reference else (t_logits, out)
    if state:
        result += ([{k: v.detach().clone() for k, v in m.student.state_dict().items()} for m in cohort.members],)
    cohort.close()
    return result


@pytest.mark.numerics
def test_compiled_students_take_the_eager_first_step():
    """compile=True (an FX feature extractor under torch.compile) computes what eager does.

    Both float32 paths are compared with the same first step in float64 (same initial
    weights, batch and teacher targets), where the arithmetic bounds the difference; a
    multi-epoch trajectory is not compared (rounding differences grow with every step: the
    old two-epoch test at rel 1e-4 failed on an AVX-512 Xeon at 1.7e-4 and on an AMD EPYC
    at 1.3e-4). The bounds:

    * loss, relative 1e-4: the forward's longest float32 reductions are the batch-norm
      statistics over N = 16 x 32 x 32 = 16 384 values; summed in any order their relative
      error is at most about N·u = 1e-3 of the sum of magnitudes (u = 2^-24), typically
      √N·u ≈ 8e-6, and the loss (a mean of positive terms) does not cancel. Measured: at
      most 2.5e-6.
    * gradient, relative L2 error 1e-2: a convolution's weight gradient sums the same
      N = 16 384 products, at most N·u ≈ 1e-3 relative to the sum of their magnitudes in
      any summation order, and behind train-mode batch norm those products cancel (the
      gradient is several times smaller than the sum of magnitudes). Eager oneDNN on one
      thread accumulates in one sequence: measured 0.9e-3 (default dispatch) and 1.0e-3
      (AVX2) on an AMD EPYC (Zen 4, AVX-512); the compiled kernels' blocked reductions
      2e-5. 1e-2 holds for any order with up to 10x cancellation; a graph that dropped or
      changed a term is off by 0.1 to 1.

    Checked under the default dispatch, ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 and
    ONEDNN_MAX_CPU_ISA=AVX512_CORE (`make test` reruns it so). The teacher runs eagerly in
    both cohorts: its outputs are bitwise equal.
    """
    # One member (its loss has the KD term and the aligned layers): each member compiles its
    # own graph, the dearest part of this test, which `make test` runs under three dispatches.
    cfgs = [make_config("mini", "smoke", method="subdistill", contamination_rate=1.0, lambda_layer=1.0, lr=1e-3)]
    t_c, compiled = _first_step(cfgs, True)
    t_e, eager, ref = _first_step(cfgs, False, reference=True)
    assert torch.equal(t_c, t_e)
    for (loss_c, g_c), (loss_e, g_e), (loss_r, g_r) in zip(compiled, eager, ref):
        assert float(g_r.norm()) > 0
        for loss, g in ((loss_c, g_c), (loss_e, g_e)):
            assert loss == pytest.approx(loss_r, rel=1e-4)
            assert float((g - g_r).norm() / g_r.norm()) < 1e-2


STACK_METHODS = ("kd", "at", "vid", "vkd", "subdistill")


@pytest.mark.numerics
def test_stacked_students_take_the_separate_first_step():
    """Execution(stack=True) (one vmapped forward of the members' stacked parameters, each
    member's own loss, optimiser and buffers) computes what the separate eager steps do.

    The stacked forward is the same arithmetic in another order (batched convolutions and
    batch norm over the stacked members), so both float32 paths are compared with the
    first step in float64, under the bounds derived in
    :func:`test_compiled_students_take_the_eager_first_step` (the same model, batch and
    reductions): loss within relative 1e-4, gradients within relative L2 error 1e-2; a step
    that mixed two members' terms, or lost one, is off by 0.1 to 1. The batch-norm buffers
    the stacked forward updated are each member's own: the step count is 1 and the running
    statistics (0.9·initial + 0.1·batch statistic, the batch statistic a mean over N =
    16 384 values) are those of the separate step within N·u ≈ 1e-3 relative to their
    largest magnitude. Measured on an AVX2-only AMD EPYC (default and AVX2 dispatch): loss
    within 4.8e-7 of float64 stacked (1.1e-6 separate), gradients within 4.2e-6 (1.3e-5).
    """
    cfgs = [make_config("mini", "smoke", method=m, contamination_rate=1.0, lambda_layer=1.0, lr=1e-3)
            for m in STACK_METHODS]
    t_s, stacked, ref, s_state = _first_step(cfgs, Execution(stack=True), reference=True, state=True)
    t_e, eager, e_state = _first_step(cfgs, Execution(stack=False), state=True)
    assert torch.equal(t_s, t_e)
    for (loss_s, g_s), (loss_e, g_e), (loss_r, g_r) in zip(stacked, eager, ref):
        assert float(g_r.norm()) > 0
        for loss, g in ((loss_s, g_s), (loss_e, g_e)):
            assert loss == pytest.approx(loss_r, rel=1e-4)
            assert float((g - g_r).norm() / g_r.norm()) < 1e-2
    for a, b in zip(s_state, e_state):
        for name, value in b.items():
            if name.endswith("num_batches_tracked"):
                assert int(a[name]) == int(value) == 1
            elif name.endswith(("running_mean", "running_var")):
                scale = float(value.abs().max())
                assert float((a[name] - value).abs().max()) <= 1e-3 * scale, name


@pytest.mark.numerics
def test_a_stack_of_the_paper_students_computes_their_forwards():
    """The paper world's student (timm's MobileNetV4-small, whose blocks fuse batch norm and
    activation) stacks too: each member's logits and aligned layers are as close to its
    float64 forward as its own float32 forward is. Behind batch norm over few values the
    rounding is amplified by the division by a small deviation, in either order, so the
    bound is relative to the separate forward's own error: at most 10 times it, plus N·u of
    the output's largest magnitude (N = 4 x 32 x 32, the largest batch-norm reduction of a
    64-pixel batch of 4; u = 2^-24). A stack that mixed two members is off by the size of
    the outputs."""
    from reprolib.cohort import _LOGITS, StudentStack, _extractor

    cfg = make_config("paper", "smoke", method="subdistill", contamination_rate=1.0)
    paths = [s for _, s in cfg.layer_pairs]
    torch.manual_seed(0)
    students = [build_student(cfg.student, 5).train() for _ in range(2)]
    with torch.no_grad():                          # two different members
        for p in students[1].parameters():
            p.mul_(1.1)
    x = torch.randn(4, 3, 64, 64)
    before = [copy.deepcopy(s) for s in students]
    with torch.no_grad():                          # forwards only (train-mode batch norm still updates)
        exact = [_extractor(copy.deepcopy(s).double(), paths)(x.double()) for s in students]
        stacked = StudentStack(students[0], paths).forward(students, x)
        alones = [_extractor(student, paths)(x) for student in before]
    nu = 4 * 32 * 32 * 2.0 ** -24
    for i, (student, alone) in enumerate(zip(before, alones)):
        for key in [*paths, _LOGITS]:
            ref = exact[i][key]
            own = float((alone[key].double() - ref).abs().max())
            assert float((stacked[key][i].double() - ref).abs().max()) <= 10 * own + nu * float(ref.abs().max()), (i, key)
        # The stack updated each member's own statistics (running means after batch norm
        # cancel to rounding, so the positive running variances are compared; timm's counter
        # of batches is not in the traced graph, and unused with its fixed momentum).
        compared = 0
        for (name, a), b in zip(students[i].named_buffers(), student.buffers()):
            if name.endswith("running_var"):
                assert float((a - b).abs().max()) <= nu * float(b.abs().max()), name
                assert not torch.equal(b, torch.ones_like(b)), name     # updated at all
                compared += 1
        assert compared > 10


def test_stacked_students_are_refused_where_they_cannot_run():
    assert Execution().stacks is False                      # the CPU's reference: separate steps
    assert Execution(stack=True).stacks is True and Execution(stack=False).stacks is False
    assert Execution(compile=True).stacks is False
    for kw, words in ((dict(stack="yes"), "stack='yes' must be true, false or None"),
                      (dict(stack=True, compile=True), "stacked students are not compiled: choose stack or compile")):
        with pytest.raises(ReproError, match=re.escape(words)):
            Execution(**kw)


def test_stacked_cohorts_train_write_standard_runs_and_say_so(tmp_path):
    """A stacked cohort runs to the end: each member's folder holds its own checkpoint in the
    standard format (loaded as any run's is), and a member of another architecture runs on its
    own beside the stack; each run records whether it was stacked."""
    from reprolib.rundirs import load_student

    cfgs = [make_config("mini", "smoke", method=m, contamination_rate=1.0, lambda_layer=1.0)
            for m in ("kd", "at", "subdistill")]
    cfgs.append(make_config("mini", "smoke", method="kd", contamination_rate=1.0, student="mini-student-wide"))
    dirs = [tmp_path / f"m{i}" for i in range(len(cfgs))]
    runs = train_cohort(cfgs, dirs, execution=Execution(stack=True), progress=False)
    assert [r["stacked"] for r in runs] == [True, True, True, False]    # the wide student ran alone
    for cfg, d, r in zip(cfgs, dirs, runs):
        assert len(r["curves"]["loss"]) == cfg.epochs
        assert all(math.isfinite(v) for v in r["curves"]["loss"])
        student, loaded = load_student(d)
        assert loaded == cfg
        state = student.state_dict()
        # Its own buffers, updated at every step up to its best-validation epoch's checkpoint.
        assert int(state["bn1.num_batches_tracked"]) == r["steps_per_epoch"] * (r["best_epoch"] + 1)
    # The three stacked students started from the same seed but are not one model.
    a, b = (load_student(d)[0].state_dict() for d in dirs[:2])
    assert not torch.equal(a["fc.weight"], b["fc.weight"])


def test_compiled_cohorts_train_and_say_so(tmp_path):
    """train_cohort with Execution(compile=True) runs to the end and records it; its numbers are the
    eager step's up to rounding (above), so no trajectory is compared here."""
    cfgs = [make_config("mini", "smoke", method="subdistill", contamination_rate=1.0, lambda_layer=1.0, lr=1e-3)]
    (c,) = train_cohort(cfgs, [tmp_path / "c0"], execution=Execution(compile=True), progress=False)
    assert c["compile"] is True
    assert len(c["curves"]["loss"]) == cfgs[0].epochs
    assert all(math.isfinite(v) for v in c["curves"]["loss"])


def test_validation_every_n_epochs_and_the_paired_validation_sets(tmp_path):
    """val_every: checkpoints are chosen only at validated epochs (and the last);
    the two validation sets evaluated as one union give exactly the accuracies of
    evaluating each set whole."""
    from reprolib.cohort import _EvalSet, _PairedEvalSet
    from reprolib.worlds import build_world

    cfg = make_config("mini", "smoke", method="kd", contamination_rate=1.0, epochs=5, val_every=2)
    metrics = train_run(cfg, tmp_path / "run", progress=False)
    assert metrics["curves"]["val_epoch"] == [1, 3, 4]
    assert len(metrics["curves"]["val_accuracy"]) == 3 and len(metrics["curves"]["loss"]) == 5
    assert metrics["best_epoch"] in (1, 3, 4) and metrics["nonoracle_best_epoch"] in (1, 3, 4)

    world = build_world(cfg.data, cfg.seed)
    torch.manual_seed(0)
    model = build_student(cfg.student, world.num_classes)
    paired = _PairedEvalSet(world, "val", "val_correlated", torch.device("cpu"))
    assert 0 < int(paired.differs.sum()) < len(paired.differs)   # rho = 1: some digits agree
    no_autocast = contextlib.nullcontext
    whole = [_EvalSet(world, s, torch.device("cpu")).accuracy(model, no_autocast)
             for s in ("val", "val_correlated")]
    assert paired.accuracies(model, no_autocast) == tuple(whole)

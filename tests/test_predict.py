"""One prediction loop: :func:`reprolib.models.predict_labels` gives bitwise the
predictions of the loops it replaced (``evaluation.predict``, the cohort's evaluation
sets, the mini teacher's ten-class and subtask evaluations), copied below as they
were, on a small model with BatchNorm, whatever mode the model was in."""

from __future__ import annotations

import contextlib

import pytest
import torch

from reprolib.config import DataConfig
from reprolib.data import World
from reprolib.models import EVAL_BATCH, FrozenTeacher, mini_student, predict_labels


class _World(World):
    """Eleven images per split; ``val_correlated`` differs from ``val`` on three of them."""

    num_classes, in_channels = 5, 1

    def __init__(self):
        self.cfg = DataConfig()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(11, 1, 32, 32, generator=g)
        y = torch.randint(0, 5, (11,), generator=g)
        d = torch.randint(-1, 5, (11,), generator=g)
        xc = x.clone()
        xc[[1, 4, 9], :, :8, :8] += 1.0
        self.splits = {"test": (x, y, d), "val": (x, y, d), "val_correlated": (xc, y, d)}

    def batches(self, split, batch_size, **kw):
        x, y, d = self.splits[split]
        for s in range(0, len(y), batch_size):
            yield x[s:s + batch_size], y[s:s + batch_size], d[s:s + batch_size]


def _model(training: bool):
    torch.manual_seed(0)
    model = mini_student(5)
    model.train(training)
    return model


# -- the loops as they were ------------------------------------------------

@torch.no_grad()
def _old_train_predict(model, world, split, device, batch_size=500):
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


@torch.no_grad()
def _old_cohort_predict(model, xs, autocast):
    was = model.training
    model.eval()
    with autocast():
        preds = [model(x).argmax(1) for x in xs]
    model.train(was)
    return torch.cat(preds).cpu()


@torch.no_grad()
def _old_evaluate_10class(model, x, y, batch_size=500):
    model.eval()
    preds = [model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)]
    return torch.cat(preds)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("batch_size", [4, EVAL_BATCH])
def test_train_predict_is_the_old_loop(training, batch_size):
    from reprolib.evaluation import predict

    world, model = _World(), _model(training)
    before = _state(model)
    new = predict(model, world, "test", torch.device("cpu"), batch_size)
    assert model.training is training and _same_state(before, model.state_dict())
    old = _old_train_predict(model, world, "test", torch.device("cpu"), batch_size)
    for a, b in zip(new, old):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize("training", [True, False])
def test_the_cohorts_evaluation_sets_are_the_old_loop(training):
    from reprolib.cohort import _EvalSet, _PairedEvalSet

    world, model = _World(), _model(training)
    cpu, no_autocast = torch.device("cpu"), contextlib.nullcontext
    test = _EvalSet(world, "test", cpu, batch_size=4)
    assert torch.equal(test.predict(model, no_autocast), _old_cohort_predict(model, test.xs, no_autocast))
    assert model.training is training
    paired = _PairedEvalSet(world, "val", "val_correlated", cpu, batch_size=4)
    assert int(paired.differs.sum()) == 3
    pred = _old_cohort_predict(model, paired.xs, no_autocast)
    pa, pb = pred[:paired.n], pred[:paired.n].clone()
    pb[paired.differs] = pred[paired.n:]
    assert paired.accuracies(model, no_autocast) == (
        float((pa == paired.ya).float().mean()), float((pb == paired.yb).float().mean()))
    # bf16 autocast, as the cohort runs it on a bf16 CPU or GPU
    bf16 = lambda: torch.autocast("cpu", dtype=torch.bfloat16)   # noqa: E731
    assert torch.equal(test.predict(model, bf16), _old_cohort_predict(model, test.xs, bf16))


def test_the_teachers_evaluations_are_the_old_loop():
    torch.manual_seed(1)
    model = _model(True)
    x = torch.randn(1003, 1, 32, 32)
    old = _old_evaluate_10class(model, x, None)   # leaves the model in eval mode
    model.train()
    new = predict_labels(model, x.split(EVAL_BATCH))
    assert model.training and torch.equal(new, old)
    teacher = FrozenTeacher(model, (0, 2, 4))
    old_sub = torch.cat([teacher(x[i:i + 500]).argmax(1) for i in range(0, len(x), 500)])
    assert torch.equal(predict_labels(teacher, x.split(EVAL_BATCH)), old_sub)


def test_predict_labels_runs_without_gradient():
    model = _model(True)
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    predict_labels(model, [torch.randn(2, 1, 32, 32)])
    assert seen == [False]

"""One distillation run end to end, on the smoke presets (seconds per run, numbers meaningless)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import reprolib.methods as methods_module
from reprolib.config import MOBILENET_LAYER_PAIRS, make_config
from reprolib.worlds import build_world
from reprolib.errors import ReproError
from reprolib.methods import METHODS
from reprolib.models import MINI_STUDENT_WIDTHS, MINI_TEACHER_WIDTHS
from reprolib.cohort import train_run
from reprolib.rundirs import REQUIRED_METRICS, load_student
from reprolib.evaluation import predict
# The default mini student's widths come from models.py (the narrow student may change them).
MINI_LAYERS = [{"teacher": f"layer{i}", "student": f"layer{i}", "teacher_shape": [t, hw, hw],
                "student_shape": [s, hw, hw]}
               for i, t, s, hw in zip(range(1, 5), MINI_TEACHER_WIDTHS, MINI_STUDENT_WIDTHS, (32, 16, 8, 4))]


@pytest.fixture(autouse=True)
def _teacher(smoke_teacher):
    """Every test here may need the mini smoke teacher: train it once, up front."""


def check_run(out, cfg, metrics):
    on_disk = json.loads((out / "metrics.json").read_text())
    assert set(REQUIRED_METRICS) <= set(on_disk)
    assert on_disk["config"] == cfg.to_dict() and on_disk["config_key"] == cfg.key()
    assert on_disk["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    for k in ("test_accuracy", "val_accuracy", "teacher_test_accuracy", "nonoracle_test_accuracy",
              "nonoracle_val_accuracy"):
        assert 0.0 <= on_disk[k] <= 1.0, k
    assert 0 <= on_disk["best_epoch"] < cfg.epochs
    for curve in ("loss", "kd", "layer", "val_accuracy", "val_correlated_accuracy", "lr"):
        assert len(on_disk["curves"][curve]) == cfg.epochs
        assert all(math.isfinite(v) for v in on_disk["curves"][curve])
    # The best-validation epoch is the one reported (strict improvement: the first maximum).
    vals = on_disk["curves"]["val_accuracy"]
    assert on_disk["best_epoch"] == vals.index(max(vals))
    assert on_disk["val_accuracy"] == pytest.approx(max(vals))
    # StepLR(lr_step, 0.5) per epoch, starting at lr.
    assert on_disk["curves"]["lr"] == pytest.approx(
        [cfg.lr * cfg.lr_gamma ** (e // cfg.lr_step) for e in range(cfg.epochs)])
    student, cfg2 = load_student(out)
    assert cfg2 == cfg and not student.training
    return on_disk, student


@pytest.mark.parametrize("method", list(METHODS))
def test_mini_smoke_run_of_every_method(tmp_path, method):
    cfg = make_config("mini", "smoke", method=method, contamination_rate=1.0, lambda_layer=1.0)
    world = build_world(cfg.data, cfg.seed)
    metrics = train_run(cfg, tmp_path, progress=False, world=world)
    on_disk, student = check_run(tmp_path, cfg, metrics)
    assert on_disk["test_counts"] == {"n": 100, "n_with_digit": 100, "n_digit_differs": on_disk["test_counts"]["n_digit_differs"]}
    assert 60 <= on_disk["test_counts"]["n_digit_differs"] <= 95     # ~4/5 of 100 random digits
    # The saved student reproduces the reported test accuracy.
    pred, y, _ = predict(student, world, "test", torch.device("cpu"))
    assert float((pred == y).float().mean()) == pytest.approx(on_disk["test_accuracy"])
    saved = torch.load(tmp_path / "student.pt", weights_only=True)
    assert saved["config_key"] == cfg.key()
    if method == "kd":
        assert on_disk["curves"]["layer"] == [0.0, 0.0]
    else:
        assert on_disk["layers"] == MINI_LAYERS
        assert all(v != 0 for v in on_disk["curves"]["layer"])   # the layer term is in the loss
        assert len(saved["method"]) > 0 or method == "at"
    if method == "subdistill":
        assert on_disk["subspace_cache"] and torch.load(on_disk["subspace_cache"], weights_only=True)


@pytest.mark.parametrize("method", ["vid", "subdistill"])
def test_same_config_and_seed_give_identical_runs(tmp_path, method):
    """Determinism: the same config, seed and thread count give the same numbers, bitwise.

    Both runs execute in this process, on this machine, with the same kernels, so exact equality is the
    contract (the README's determinism standard), not a tolerance. Across machines only the tolerances
    of the numerics-marked tests apply.
    """
    cfg = make_config("mini", "smoke", method=method, contamination_rate=0.5, lambda_layer=10.0)
    a = train_run(cfg, tmp_path / "a", progress=False)
    b = train_run(cfg, tmp_path / "b", progress=False)
    for k in ("test_accuracy", "val_accuracy", "best_epoch", "nonoracle_test_accuracy", "predicts_digit",
              "curves", "teacher_test_accuracy"):
        assert a[k] == b[k], k
    sa = torch.load(tmp_path / "a" / "student.pt", weights_only=True)
    sb = torch.load(tmp_path / "b" / "student.pt", weights_only=True)
    for k in sa["student"]:
        assert torch.equal(sa["student"][k], sb["student"][k]), k
    # Another seed is another run.
    c = train_run(cfg.replace(seed=2), tmp_path / "c", progress=False)
    assert c["curves"]["loss"] != a["curves"]["loss"]


def test_nan_loss_names_the_step_and_term_and_writes_no_metrics(tmp_path, monkeypatch):
    calls = []

    def nan_kd(student_logits, teacher_logits, temperature=4.0):
        calls.append(1)
        loss = (student_logits * 0).sum()
        return loss + (float("nan") if len(calls) == 3 else 0.0)

    monkeypatch.setattr(methods_module, "kd_loss", nan_kd)
    cfg = make_config("mini", "smoke", method="at", contamination_rate=1.0)
    with pytest.raises(ReproError, match=r"loss term kd became NaN/inf at step 2"):
        train_run(cfg, tmp_path, progress=False)
    assert not (tmp_path / "metrics.json").exists()
    assert not (tmp_path / "student.pt").exists()


def test_bad_layer_path_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(methods_module, "kd_loss", lambda *a, **k: pytest.fail("training started"))
    cfg = make_config("mini", "smoke", method="at", layer_pairs=(("layer1", "layer9"),))
    with pytest.raises(ReproError, match="no module named 'layer9'.*Valid names"):
        train_run(cfg, tmp_path, progress=False)
    assert not (tmp_path / "metrics.json").exists()


def test_batch_larger_than_the_training_split(tmp_path):
    cfg = make_config("mini", "smoke", batch_size=64)
    with pytest.raises(ReproError, match="fewer images than one batch"):
        train_run(cfg, tmp_path, progress=False)


# ---------------------------------------------------------------------------
# the paper world on the stand-ins

@pytest.mark.parametrize("method", ["kd", "subdistill"])
def test_paper_world_smoke_run(tmp_path, paper_cfg, method):
    cfg = paper_cfg(method=method, contamination_rate=0.5, lambda_layer=1.0)
    metrics = train_run(cfg, tmp_path, progress=False)
    on_disk, student = check_run(tmp_path, cfg, metrics)
    assert on_disk["test_counts"]["n"] == 20 and on_disk["test_counts"]["n_with_digit"] == 10
    if method == "subdistill":
        assert [ly["teacher_shape"] for ly in on_disk["layers"]] == [[64, 16, 16], [128, 8, 8], [256, 4, 4], [512, 2, 2]]
        assert [ly["student_shape"] for ly in on_disk["layers"]] == [[32, 16, 16], [64, 8, 8], [128, 4, 4], [256, 2, 2]]


def test_paper_world_mobilenetv4_student(tmp_path, paper_cfg):
    pytest.importorskip("timm")
    cfg = paper_cfg(method="at", student="mobilenetv4_conv_small", contamination_rate=1.0)
    assert cfg.layer_pairs == MOBILENET_LAYER_PAIRS
    metrics = train_run(cfg, tmp_path, progress=False)
    on_disk, _ = check_run(tmp_path, cfg, metrics)
    assert [ly["student_shape"] for ly in on_disk["layers"]] == [[64, 8, 8], [96, 4, 4], [128, 2, 2], [128, 2, 2]]


@pytest.mark.slow
def test_paper_world_resnet101_to_mobilenetv4(tmp_path, paper_cfg, fake_resnet101_weights):
    """The authors' pair (D11) with the §2.3 layer map, at test size."""
    pytest.importorskip("timm")
    cfg = paper_cfg(method="subdistill", teacher="resnet101", student="mobilenetv4_conv_small",
                    teacher_weights=str(fake_resnet101_weights), contamination_rate=1.0)
    assert cfg.layer_pairs == MOBILENET_LAYER_PAIRS
    metrics = train_run(cfg, tmp_path, progress=False)
    on_disk, _ = check_run(tmp_path, cfg, metrics)
    assert [ly["teacher_shape"][0] for ly in on_disk["layers"]] == [256, 512, 1024, 2048]
    assert [ly["student_shape"][0] for ly in on_disk["layers"]] == [64, 96, 128, 128]


def test_unmatched_spatial_sizes_fail_before_training(tmp_path, paper_cfg, monkeypatch):
    monkeypatch.setattr(methods_module, "kd_loss", lambda *a, **k: pytest.fail("training started"))
    # At 48 px, resnet18's layer3 is 3×3 and resnet18-s's layer4 is 2×2: no integer pooling.
    cfg = paper_cfg(method="at", image_size=48, layer_pairs=(("layer3", "layer4"),))
    with pytest.raises(ReproError, match="cannot match the spatial sizes of teacher map 3×3 and student map 2×2"):
        train_run(cfg, tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_student_ks_are_the_student_layers_widths():
    """K per pair is the student's channel width there (D7): 16-32-64-128 for the
    default mini student, twice that for the wide one (K/d = 0.25 and 0.5)."""
    from types import SimpleNamespace

    from reprolib.subspace import student_ks

    world = SimpleNamespace(num_classes=5, input_shape=(1, 32, 32))
    cfg = make_config("mini", "smoke", method="subdistill")
    narrow = student_ks(cfg, world)
    wide = student_ks(cfg.replace(student="mini-student-wide"), world)
    assert len(narrow) == len(cfg.layer_pairs)
    assert wide == [2 * k for k in narrow]


def test_a_freshly_trained_teacher_is_the_cached_one(tmp_path, monkeypatch):
    """The teacher trained in this process is returned as a load from the cache gives
    it: the same weights in the same memory format, so its outputs (and what is fitted
    on them, the relevant subspaces) are bitwise the same whether it was cached or not.
    (Both sides run on this machine's kernels: bitwise is the right test.)"""
    from reprolib.teacher import TeacherConfig, train_mini_teacher

    monkeypatch.setenv("REPROLIB_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)
    tcfg = TeacherConfig(train_subset=64, test_subset=64, batch_size=32)
    fresh, first = train_mini_teacher(tcfg, progress=False)
    cached, second = train_mini_teacher(tcfg, progress=False)
    assert first["cached"] is False and second["cached"] is True
    for (name, a), (_, b) in zip(fresh.state_dict().items(), cached.state_dict().items()):
        assert torch.equal(a, b) and a.stride() == b.stride(), name
    x = torch.randn(8, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), cached.eval()(x))

"""Models, feature hooks and the frozen teacher (``book/mini_world.md`` "Models", §2, STYLE)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from reprolib.errors import ReproError
from reprolib.hooks import FeatureCapture, feature_shapes, resolve_modules
from reprolib.methods import kd_loss
from reprolib.models import (BlockResNet, FrozenTeacher, build_student, load_paper_teacher, mini_student,
                             mini_teacher, num_outputs)

LAYERS = ["layer1", "layer2", "layer3", "layer4"]


def _hook_counts(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# ---------------------------------------------------------------------------
# shapes

def test_mini_teacher_and_student_feature_shapes():
    assert feature_shapes(mini_teacher(10), LAYERS, (1, 32, 32)) == {
        "layer1": (32, 32, 32), "layer2": (64, 16, 16), "layer3": (128, 8, 8), "layer4": (256, 4, 4)}
    student = feature_shapes(mini_student(5), LAYERS, (1, 32, 32))
    assert student == {
        "layer1": (8, 32, 32), "layer2": (16, 16, 16), "layer3": (32, 8, 8), "layer4": (64, 4, 4)}
    wide = feature_shapes(build_student("mini-student-wide", 5), LAYERS, (1, 32, 32))
    assert wide == {
        "layer1": (16, 32, 32), "layer2": (32, 16, 16), "layer3": (64, 8, 8), "layer4": (128, 4, 4)}
    # The default pair distils K/d = 0.25 at every layer, the wide one 0.5 (the K/d ablation).
    teacher = feature_shapes(mini_teacher(10), LAYERS, (1, 32, 32))
    assert {student[k][0] / teacher[k][0] for k in LAYERS} == {0.25}
    assert {wide[k][0] / teacher[k][0] for k in LAYERS} == {0.5}


def test_mini_models_outputs_and_names():
    t, s = mini_teacher(10), mini_student(5)
    assert t(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
    assert s(torch.zeros(2, 1, 32, 32)).shape == (2, 5)
    assert (num_outputs(t), num_outputs(s)) == (10, 5)
    # torchvision ResNet's attribute order, which zennit's canonizers expect.
    assert [n for n, _ in t.named_children()] == ["conv1", "bn1", "relu", "maxpool", *LAYERS, "avgpool", "fc"]
    assert all(isinstance(b, torchvision.models.resnet.BasicBlock) for b in t.layer2)


def test_resnet18s_and_paper_resnet18_shapes():
    s = build_student("resnet18-s", 5)
    assert feature_shapes(s, LAYERS, (3, 64, 64)) == {
        "layer1": (32, 16, 16), "layer2": (64, 8, 8), "layer3": (128, 4, 4), "layer4": (256, 2, 2)}
    assert feature_shapes(s, LAYERS, (3, 224, 224))["layer4"] == (256, 7, 7)
    assert sum(len(stage) for stage in (s.layer1, s.layer2, s.layer3, s.layer4)) == 8   # ResNet-18 depth
    t = torchvision.models.resnet18(weights=None)
    assert feature_shapes(t, LAYERS, (3, 224, 224)) == {
        "layer1": (64, 56, 56), "layer2": (128, 28, 28), "layer3": (256, 14, 14), "layer4": (512, 7, 7)}


def test_mobilenetv4_student_shapes_and_size():
    pytest.importorskip("timm")
    s = build_student("mobilenetv4_conv_small", 5)
    # §2.2: 2,499,429 parameters with the 5-class head; §2.3: the four distilled blocks.
    assert sum(p.numel() for p in s.parameters()) == 2_499_429
    assert feature_shapes(s, ["blocks.1.1", "blocks.2.3", "blocks.3.1", "blocks.3.5"], (3, 224, 224)) == {
        "blocks.1.1": (64, 28, 28), "blocks.2.3": (96, 14, 14), "blocks.3.1": (128, 7, 7),
        "blocks.3.5": (128, 7, 7)}


def test_unknown_student_lists_the_valid_ones():
    with pytest.raises(ReproError, match="unknown student 'tiny'; choose one of .*mini-student"):
        build_student("tiny", 5)


def test_block_resnet_rejects_bad_arguments():
    with pytest.raises(ReproError, match="four stage widths"):
        BlockResNet((8, 16, 32), (1, 1, 1))
    with pytest.raises(ReproError, match="unknown stem"):
        BlockResNet((8, 16, 32, 64), (1, 1, 1, 1), stem="big")


# ---------------------------------------------------------------------------
# hooks

def test_capture_gets_module_outputs_attached_to_the_graph():
    torch.manual_seed(0)
    s = mini_student(5)
    x = torch.randn(3, 1, 32, 32)
    with FeatureCapture(s, ["layer2", "layer4"]) as cap:
        logits = s(x)
        assert _hook_counts(s) == 2
    assert cap["layer2"].shape == (3, 16, 16, 16) and cap["layer4"].shape == (3, 64, 4, 4)
    # The captured map is the stage output: recomputing from layer4 gives the logits.
    torch.testing.assert_close(s.fc(torch.flatten(s.avgpool(cap["layer4"]), 1)), logits)
    assert [f.shape[1] for f in cap.get()] == [16, 64]
    cap["layer2"].pow(2).mean().backward()
    assert s.layer1[0].conv1.weight.grad is not None and s.layer4[0].conv1.weight.grad is None


def test_hooks_are_removed_after_the_context_even_on_error():
    s = mini_student(5)
    assert _hook_counts(s) == 0
    with FeatureCapture(s, LAYERS):
        s(torch.zeros(1, 1, 32, 32))
    assert _hook_counts(s) == 0
    assert all(not m._forward_hooks for m in s.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureCapture(s, LAYERS):
            raise RuntimeError("boom")
    assert _hook_counts(s) == 0
    feature_shapes(s, LAYERS, (1, 32, 32))
    assert _hook_counts(s) == 0


def test_feature_shapes_restores_the_training_mode():
    s = mini_student(5).train()
    feature_shapes(s, LAYERS, (1, 32, 32))
    assert s.training
    s.eval()
    feature_shapes(s, LAYERS, (1, 32, 32))
    assert not s.training


def test_invalid_paths_list_valid_names():
    s = mini_student(5)
    with pytest.raises(ReproError) as e:
        FeatureCapture(s, ["layer1", "layr2"])
    msg = str(e.value)
    assert "'layr2'" in msg and "did you mean layer2" in msg
    assert "Valid names:" in msg and "layer1.0.conv1" in msg and "fc" in msg
    assert _hook_counts(s) == 0
    with pytest.raises(ReproError, match="no module named ''"):
        resolve_modules(s, [""])
    with pytest.raises(ReproError, match="blocks.9.9"):
        feature_shapes(s, ["blocks.9.9"], (1, 32, 32))


def test_non_tensor_outputs_are_refused():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()

        def forward(self, x):
            return self.pair(x)[0]

    net = Net()
    with pytest.raises(ReproError, match="returns tuple, not a tensor"):
        with FeatureCapture(net, ["pair"]):
            net(torch.zeros(1))
    unarmed = FeatureCapture(net, ["pair"], armed=False).open()   # stores nothing, checks nothing
    net(torch.zeros(1))
    assert unarmed.features == {}
    unarmed.close()


def test_a_capture_held_for_a_run_stores_only_while_armed():
    """The cohort's way: hooks open for the whole run, armed around the training
    forward passes only; it captures the very tensors the context manager does."""
    torch.manual_seed(0)
    s = mini_student(5)
    x = torch.randn(3, 1, 32, 32)
    cap = FeatureCapture(s, ["layer2", "layer4"], armed=False).open()
    assert _hook_counts(s) == 2
    s(x)                                    # an evaluation pass: nothing kept
    assert cap.features == {}
    cap.armed = True
    logits = s(x)
    cap.armed = False
    first = cap.get()
    with FeatureCapture(s, ["layer2", "layer4"]) as ctx:
        logits2 = s(x)
    assert all(torch.equal(a, b) for a, b in zip(first, ctx.get())) and torch.equal(logits, logits2)
    assert first[1].grad_fn is not None     # attached to the graph, not detached
    s(x)                                    # unarmed again: the features stay those of the armed pass
    assert all(a is b for a, b in zip(first, cap.get()))
    cap.close()
    assert _hook_counts(s) == 0


# ---------------------------------------------------------------------------
# the frozen teacher

def test_frozen_teacher_is_frozen_by_construction():
    torch.manual_seed(0)
    model = mini_teacher(10).train()
    t = FrozenTeacher(model, (0, 2, 3, 4, 6))
    assert all(not p.requires_grad for p in t.parameters())
    assert not t.training and not any(m.training for m in t.modules())
    t.train()
    assert not t.training and not any(m.training for m in t.modules())
    t.train(True)
    assert not model.training
    # train() returns the module, like nn.Module.train.
    assert t.train() is t


def test_frozen_teacher_restricts_the_logits_in_subtask_order():
    torch.manual_seed(0)
    model = mini_teacher(10).eval()
    t = FrozenTeacher(model, (6, 0, 3))
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(t(x), model(x)[:, [6, 0, 3]])


def test_frozen_teacher_bn_uses_running_statistics():
    torch.manual_seed(0)
    model = mini_teacher(10)
    t = FrozenTeacher(model, (0, 1))
    before = model.bn1.running_mean.clone()
    t.train()
    t(torch.randn(8, 1, 32, 32) * 3 + 1)
    torch.testing.assert_close(model.bn1.running_mean, before)


def test_no_gradient_reaches_the_teacher_inside_a_student_loss():
    torch.manual_seed(0)
    t = FrozenTeacher(mini_teacher(10), (0, 2, 3, 4, 6))
    s = mini_student(5)
    x = torch.randn(4, 1, 32, 32)
    # No torch.no_grad here on purpose: freezing must not depend on the caller.
    with FeatureCapture(t.model, ["layer4"]) as tcap, FeatureCapture(s, ["layer4"]) as scap:
        t_logits, s_logits = t(x), s(x)
    layer = F.mse_loss(scap["layer4"].mean(1), tcap["layer4"].mean(1))
    loss = kd_loss(s_logits, t_logits) + layer
    loss.backward()
    assert all(p.grad is None for p in t.parameters())
    assert not t_logits.requires_grad and not tcap["layer4"].requires_grad
    assert all(p.grad is not None for p in s.parameters() if p.requires_grad)


def test_teacher_whose_classes_do_not_fit_the_subtask():
    three = BlockResNet((8, 8, 8, 8), (1, 1, 1, 1), in_channels=1, num_classes=3, stem="small")
    with pytest.raises(ReproError, match=r"the teacher has 3 output classes, but the subtask asks for classes "
                                         r"\[0, 1, 7\]; give subtask classes in 0..2"):
        FrozenTeacher(three, (0, 1, 7))
    with pytest.raises(ReproError, match="3 output classes"):
        FrozenTeacher(three, (-1, 0))


# ---------------------------------------------------------------------------
# the paper teacher's weights

def test_load_paper_teacher_missing_file_names_the_expected_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    missing = tmp_path / "nope.pth"
    with pytest.raises(ReproError) as e:
        load_paper_teacher("resnet18", missing)
    msg = str(e.value)
    assert str(missing) in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in msg
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in msg
    assert "--teacher-weights" in msg


def test_load_paper_teacher_with_a_weights_file(fake_resnet18_weights):
    model = load_paper_teacher("resnet18", fake_resnet18_weights)
    saved = torch.load(fake_resnet18_weights, weights_only=True)
    torch.testing.assert_close(model.conv1.weight, saved["conv1.weight"])
    torch.testing.assert_close(model.fc.bias, saved["fc.bias"])
    t = FrozenTeacher(model, (129, 130, 134, 135, 138))
    assert t(torch.zeros(1, 3, 64, 64)).shape == (1, 5)


def test_load_paper_teacher_from_the_torch_cache(tmp_path, monkeypatch, fake_resnet18_weights):
    ckpt = tmp_path / "torch" / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    # Marked weights (a fresh initialisation, even with seed 0, cannot have fc.bias == 7).
    saved = torch.load(fake_resnet18_weights, weights_only=True)
    saved["fc.bias"] = torch.full_like(saved["fc.bias"], 7.0)
    torch.save(saved, ckpt / "resnet18-f37072fd.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    model = load_paper_teacher("resnet18")
    assert isinstance(model, torchvision.models.ResNet)
    # The weights are those in the cache.
    loaded = model.state_dict()
    assert set(saved) <= set(loaded)
    assert all(torch.equal(loaded[k], v) for k, v in saved.items())


def test_load_paper_teacher_wrong_weights_and_unknown_name(tmp_path, fake_resnet18_weights):
    with pytest.raises(ReproError, match="does not hold resnet101 weights"):
        load_paper_teacher("resnet101", fake_resnet18_weights)
    with pytest.raises(ReproError, match=r"unknown paper teacher 'vgg16'; choose one of \['resnet101', 'resnet18'\]"):
        load_paper_teacher("vgg16")

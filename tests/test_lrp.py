"""LRP sanity (D9, §6.4): canonizer equivalence, restoration, conservation, metrics."""

import math

import pytest
import torch
from torch import nn
from torchvision.models.resnet import Bottleneck, ResNet

from reprolib import lrp
from reprolib.errors import ReproError
from reprolib.models import FrozenTeacher, build_student, mini_student, mini_teacher

torch.set_num_threads(1)

MINI_SUBTASK = (0, 2, 3, 4, 6)
LOW, HIGH = lrp.box_bounds((0.2860,), (0.3530,))


def _randomise_batchnorm(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model


def _zero_biases(model):
    """Merged biases (b − μ)·s + β are zero when conv biases, μ and β are."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.zero_()
            m.bias.data.zero_()
        if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
            m.bias.data.zero_()
    return model


def _snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [(n, m.training) for n, m in model.named_modules()],
            [(n, p.requires_grad) for n, p in model.named_parameters()])


def _assert_restored(model, snap, x, out_before):
    state, modes, grads = snap
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k in state:
        assert torch.equal(after[k], state[k]), k
    assert [(n, m.training) for n, m in model.named_modules()] == modes
    assert [(n, p.requires_grad) for n, p in model.named_parameters()] == grads
    for name, m in model.named_modules():
        assert not m._forward_hooks and not m._forward_pre_hooks, name
        assert not hasattr(m, "canonizer_sum"), name
        if isinstance(m, nn.BatchNorm2d):
            assert m.eps == 1e-5
    was = model.training
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), out_before)
    model.train(was)


CASES = {
    "mini_teacher": (lambda: mini_teacher(), (1, 32, 32)),
    "frozen_mini_teacher": (lambda: FrozenTeacher(mini_teacher(), MINI_SUBTASK), (1, 32, 32)),
    "resnet18-s": (lambda: build_student("resnet18-s", 5), (3, 64, 64)),
    # torchvision's Bottleneck path (the paper's ResNet-101 teacher), one block per stage.
    "frozen_torchvision_bottleneck": (lambda: FrozenTeacher(
        ResNet(Bottleneck, [1, 1, 1, 1], num_classes=20), [1, 5, 7, 11, 19]), (3, 32, 32)),
}


@pytest.mark.numerics
@pytest.mark.parametrize("case", list(CASES))
def test_canonized_model_computes_the_same_function_and_is_restored(case):
    build, shape = CASES[case]
    torch.manual_seed(0)
    model = _randomise_batchnorm(build()).double().eval()
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        out = model(x)
    snap = _snapshot(model)
    low, high = lrp.box_bounds((0.5,) * shape[0], (0.25,) * shape[0])
    composite = lrp.build_composite(model, low, high)
    with composite.context(model), torch.no_grad():
        lrp._check_canonized(model, composite)
        assert any(hasattr(m, "canonizer_sum") for m in model.modules())
        out_canon = model(x)
    torch.testing.assert_close(out_canon, out, rtol=1e-10, atol=1e-10)
    _assert_restored(model, snap, x, out)


@pytest.mark.parametrize("case", ["mini_student", "frozen_mini_teacher"])
def test_relevance_leaves_the_model_exactly_as_it_was(case):
    torch.manual_seed(1)
    if case == "mini_student":
        model = _randomise_batchnorm(mini_student())
        model.train()                       # a student mid-training
        model.layer2.eval()                 # with a mixed mode tree
        model.fc.weight.requires_grad_(False)
    else:
        model = _randomise_batchnorm(FrozenTeacher(mini_teacher(), MINI_SUBTASK))
    x = torch.randn(3, 1, 32, 32)
    y = torch.tensor([0, 4, 2])
    was = model.training
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train(was)
    snap = _snapshot(model)
    h = lrp.logit_gap_relevance(model, x, y, low=LOW, high=HIGH, batch_size=2)
    assert h.shape == (3, 32, 32) and h.dtype == torch.float32
    assert torch.isfinite(h).all() and h.abs().sum() > 0
    _assert_restored(model, snap, x, out)


@pytest.mark.numerics
def test_heatmaps_do_not_depend_on_batching():
    torch.manual_seed(2)
    model = _randomise_batchnorm(mini_student())
    x, y = torch.randn(5, 1, 32, 32), torch.tensor([0, 1, 2, 3, 4])
    a = lrp.logit_gap_relevance(model, x, y, low=LOW, high=HIGH, batch_size=5)
    b = lrp.logit_gap_relevance(model, x, y, low=LOW, high=HIGH, batch_size=2)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.numerics
@pytest.mark.parametrize("case", ["mini_student", "frozen_mini_teacher"])
def test_epsilon_relevance_sums_to_the_logit_gap_without_biases(case):
    torch.manual_seed(3)
    if case == "mini_student":
        model = mini_student()
    else:
        model = FrozenTeacher(mini_teacher(), MINI_SUBTASK)
    model = _zero_biases(_randomise_batchnorm(model))
    x = torch.randn(4, 1, 32, 32)
    y = torch.tensor([1, 0, 3, 4])
    with torch.no_grad():
        gap = lrp.logit_gap(model.eval()(x), y)
    composite = lrp.build_composite(model, rule="epsilon", epsilon=1e-9)
    h = lrp.logit_gap_relevance(model, x, y, composite)
    torch.testing.assert_close(h.sum(dim=(1, 2)), gap, rtol=1e-3, atol=1e-5)
    assert gap.abs().min() > 1e-3      # the check is not trivially 0 == 0


def test_logit_gap_and_seed_on_hand_made_logits():
    z = torch.tensor([[1.0, 3.0, 2.0], [5.0, -1.0, 4.0]])
    y = torch.tensor([1, 2])
    torch.testing.assert_close(lrp.logit_gap(z, y), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(lrp.logit_gap_seed(z, y),
                               torch.tensor([[0.0, 3.0, -2.0], [-5.0, 0.0, 4.0]]))


def test_relevance_correlation_known_answers():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 8, 8, generator=g)
    torch.testing.assert_close(lrp.relevance_correlation(h, h), torch.ones(4))
    torch.testing.assert_close(lrp.relevance_correlation(h, -h), -torch.ones(4))
    torch.testing.assert_close(lrp.relevance_correlation(h, 3 * h + 1), torch.ones(4))
    flat = torch.zeros(1, 8, 8)
    assert math.isnan(lrp.relevance_correlation(flat, h[:1]).item())
    with pytest.raises(ReproError):
        lrp.relevance_correlation(h, h[:, :4])


def test_digit_share_known_answers():
    h = torch.zeros(3, 8, 8)
    h[0, 1, 1] = 2.0                # all positive relevance inside the box
    h[0, 6, 6] = -5.0               # negative relevance outside is ignored
    h[1, 0, 0] = 1.0                # half inside, half outside
    h[1, 7, 7] = 1.0
    h[2] = -1.0                     # no positive relevance at all
    share = lrp.digit_share(h, (0, 0, 4))
    torch.testing.assert_close(share[:2], torch.tensor([1.0, 0.5]))
    assert math.isnan(share[2].item())
    with pytest.raises(ReproError):
        lrp.digit_share(h, (6, 6, 4))


def test_summarize_drops_nans_and_is_seeded():
    v = torch.tensor([1.0, 2.0, 3.0, float("nan"), 4.0])
    s = lrp.summarize(v)
    assert s["n"] == 4 and s["mean"] == 2.5 and s["median"] == 2.5
    assert 1.0 <= s["ci_low"] < 2.5 < s["ci_high"] <= 4.0
    assert lrp.summarize(v) == s
    empty = lrp.summarize([float("nan")])
    assert empty["n"] == 0 and math.isnan(empty["mean"])


class _TimmLikeNet(nn.Module):
    """A MobileNet-shaped module: conv_stem, bn1, blocks, classifier."""

    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.blocks = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU())
        self.classifier = nn.Linear(8, 5)

    def forward(self, x):
        return self.classifier(self.blocks(self.bn1(self.conv_stem(x))).mean((2, 3)))


@pytest.mark.parametrize("model", [
    _TimmLikeNet(),
    nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)),
    FrozenTeacher(_TimmLikeNet(), [0, 1]),
])
def test_models_without_a_verified_canonizer_are_refused(model):
    with pytest.raises(ReproError, match="no verified LRP canonizer"):
        lrp.build_composite(model, LOW, HIGH)
    with pytest.raises(ReproError, match="not explained"):
        lrp.logit_gap_relevance(model, torch.zeros(1, 3, 8, 8), torch.zeros(1), low=LOW, high=HIGH)


def test_timm_mobilenetv4_is_refused():
    pytest.importorskip("timm")
    with pytest.raises(ReproError, match="MobileNetV3|EfficientNet|not explained"):
        lrp.build_composite(build_student("mobilenetv4_conv_small", 5), LOW, HIGH)


def test_bounds_are_required_and_rule_names_checked():
    model = mini_student()
    with pytest.raises(ReproError, match="box_bounds"):
        lrp.build_composite(model)
    with pytest.raises(ReproError, match="unknown LRP rule"):
        lrp.build_composite(model, LOW, HIGH, rule="alpha_beta")


@pytest.mark.numerics
@pytest.mark.parametrize("case", ["frozen_mini_teacher", "resnet18-s"])
def test_fast_gamma_matches_zennit_gamma(case):
    build, shape = CASES[case]
    torch.manual_seed(4)
    model = _randomise_batchnorm(build())
    x = torch.randn(1, *shape)
    y = torch.tensor([3])
    low, high = lrp.box_bounds((0.5,) * shape[0], (0.25,) * shape[0])
    fast = lrp.logit_gap_relevance(model, x, y, lrp.build_composite(model, low, high))
    slow = lrp.logit_gap_relevance(model, x, y, lrp.build_composite(model, low, high, fast_gamma=False))
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5 * slow.abs().max().item())


@pytest.mark.numerics
@pytest.mark.parametrize("sign", ["non-negative", "mixed"])
def test_post_relu_gamma_rule_equals_zennit_gamma_on_one_layer(sign):
    from zennit.composites import LayerMapComposite
    from zennit.rules import Gamma

    torch.manual_seed(5)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    if sign == "non-negative":
        x = x.clamp(min=0)
    seed = torch.randn(2, 6, 5, 5)
    grads = []
    for rule in (lrp.PostReLUGamma(gamma=0.5), Gamma(gamma=0.5)):
        xi = x.clone().requires_grad_()
        with LayerMapComposite([(nn.Conv2d, rule)]).context(conv):
            (g,) = torch.autograd.grad(conv(xi), xi, seed)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)

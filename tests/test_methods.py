"""Distillation losses: golden values, formulas and the properties of §3–4."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reprolib.errors import ReproError
from reprolib.methods import (METHODS, align_spatial, attention_map, build_method, check_finite,
                              kd_loss, total_loss)
from reprolib.subspace import RelevantSubspace
from _scripts import load_script

torch.set_num_threads(1)

HERE = Path(__file__).resolve().parent
make_golden = load_script(HERE / "make_golden.py")

MINI_T = [(32, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4)]
MINI_S = [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4)]


def random_subspace(d, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g))
    return RelevantSubspace(layer="x", basis=q, mean=torch.rand(d, generator=g), alpha=2.0,
                            eigenvalues=torch.linspace(1, 0, d, dtype=torch.float64),
                            variance_share=0.5)


def make(name, t_shapes, s_shapes, **kw):
    subs = [random_subspace(t[0], s[0], i) for i, (t, s) in enumerate(zip(t_shapes, s_shapes))]
    torch.manual_seed(0)
    return build_method(name, t_shapes, s_shapes, subspaces=subs, **kw)


def feats(shapes, batch=2, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, *s, generator=g).requires_grad_(grad) for s in shapes]


# ---------------------------------------------------------------- golden values

GOLDEN = json.loads((HERE / "fixtures" / "golden_losses.json").read_text())


@pytest.fixture(scope="module")
def current():
    return make_golden.compute_golden()


@pytest.mark.numerics
@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_golden_values(current, key):
    assert key in current
    torch.testing.assert_close(torch.tensor(current[key], dtype=torch.float64),
                               torch.tensor(GOLDEN[key], dtype=torch.float64),
                               rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- formulas

def test_kd_loss_matches_definition():
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    p, q = (t / 4).softmax(1), (s / 4).softmax(1)
    expected = 16 * (p * (p.log() - q.log())).sum(1).mean()
    torch.testing.assert_close(kd_loss(s, t), expected)
    assert kd_loss(t, t).abs() < 1e-6


def test_attention_map_is_normalised_channel_mean_of_squares():
    f = torch.randn(2, 3, 4, 4)
    a = attention_map(f)
    assert a.shape == (2, 16)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(2))
    raw = (f ** 2).mean(1).flatten(1)
    torch.testing.assert_close(a, raw / raw.norm(dim=1, keepdim=True))


@pytest.mark.numerics
def test_vid_loss_matches_gaussian_nll():
    m = make("vid", [(6, 4, 4)], [(3, 2, 2)])
    t, s = feats([(6, 4, 4)])[0], feats([(3, 2, 2)], seed=1)[0]
    mu = m.layers[0].regressor(s)
    expected = 0.5 * ((mu - F.adaptive_avg_pool2d(t, 2)) ** 2 / 5.0 + torch.log(torch.tensor(5.0)))
    torch.testing.assert_close(m([s], m.teacher_targets([t]))[0], expected.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.numerics
def test_subdistill_loss_matches_per_position_sum():
    m = make("subdistill", [(6, 4, 4)], [(3, 2, 2)])
    t, s = feats([(6, 4, 4)])[0], feats([(3, 2, 2)], seed=1)[0]
    layer = m.layers[0]
    V, U, mu = layer.rotation.weight, layer.basis, layer.mean
    tp = F.adaptive_avg_pool2d(t, 2)
    s_hat = (s - s.mean((0, 2, 3), keepdim=True)) / (s.var((0, 2, 3), unbiased=False, keepdim=True)
                                                     + 1e-5).sqrt()
    total = 0.0
    for b in range(2):
        for i in range(2):
            for j in range(2):
                diff = V @ s_hat[b, :, i, j] - U.T @ (tp[b, :, i, j] - mu)
                total = total + diff.pow(2).sum() / (4 * layer.alpha)
    torch.testing.assert_close(m([s], m.teacher_targets([t]))[0], total / 2, rtol=1e-5, atol=1e-6)


def test_subdistill_center_mode_only_centres():
    m = make("subdistill", [(6, 2, 2)], [(3, 2, 2)], student_norm="center")
    s = feats([(3, 2, 2)], batch=4)[0] * 7.0
    out = m.layers[0].norm(s)
    torch.testing.assert_close(out, s - s.mean((0, 2, 3), keepdim=True))
    m.eval()  # eval subtracts the running mean (momentum 0.1 from zero)
    torch.testing.assert_close(m.layers[0].norm(s),
                               s - 0.1 * s.mean((0, 2, 3)).view(1, -1, 1, 1))


# ---------------------------------------------------------------- spatial alignment

def test_align_spatial_pools_the_larger_map():
    big = torch.arange(64.0).view(1, 1, 8, 8)
    small = torch.zeros(1, 1, 4, 4)
    t, s = align_spatial(big, small)
    assert t.shape == (1, 1, 4, 4) and s is small
    assert t[0, 0, 0, 0] == (0 + 1 + 8 + 9) / 4
    s2, t2 = align_spatial(small, big)[::-1]
    torch.testing.assert_close(s2, t)
    same = torch.ones(1, 2, 3, 3)
    assert align_spatial(same, same)[0] is same


@pytest.mark.parametrize("t_hw,s_hw", [((8, 4), (4, 8)), ((6, 6), (4, 4))])
def test_align_spatial_rejects_incompatible_shapes(t_hw, s_hw):
    with pytest.raises(ReproError, match=r"teacher map .*student map .*another layer pair"):
        align_spatial(torch.zeros(1, 1, *t_hw), torch.zeros(1, 1, *s_hw))
    with pytest.raises(ReproError):
        build_method("at", [(1, *t_hw)], [(1, *s_hw)])


# ---------------------------------------------------------------- learned parts

def _step(method, t_shapes, s_shapes, weight_decay=0.0):
    # §5: AdamW with weight_decay 0 (see the VkD docstring for why it matters).
    opt = torch.optim.AdamW(method.parameters(), lr=0.1, weight_decay=weight_decay)
    loss = sum(method(feats(s_shapes, seed=1), method.teacher_targets(feats(t_shapes))))
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_vid_learned_variance_is_a_trained_parameter():
    shapes = ([(6, 2, 2)], [(3, 2, 2)])
    m = make("vid", *shapes, vid_variance="learned")
    alpha = m.layers[0].alpha
    assert isinstance(alpha, nn.Parameter)
    assert any(p is alpha for p in m.parameters())
    torch.testing.assert_close(m.layers[0].variance(), torch.full((6,), 5.0))
    before = alpha.detach().clone()
    _step(m, *shapes)
    assert not torch.equal(before, alpha.detach())


def test_vid_fixed_variance_stays_five():
    shapes = ([(6, 2, 2)], [(3, 2, 2)])
    m = make("vid", *shapes, vid_variance="fixed")
    alpha = m.layers[0].alpha
    assert not isinstance(alpha, nn.Parameter)
    assert all(p is not alpha for p in m.parameters())
    assert "layers.0.alpha" in dict(m.named_buffers())
    _step(m, *shapes)
    torch.testing.assert_close(m.layers[0].variance(), torch.full((6,), 5.0))


@pytest.mark.parametrize("c_s,c_t", [(3, 6), (4, 4)])
def test_vkd_projector_keeps_orthonormal_columns(c_s, c_t):
    shapes = ([(c_t, 2, 2)], [(c_s, 2, 2)])
    m = make("vkd", *shapes)
    P = m.projectors[0].weight
    assert P.shape == (c_t, c_s)
    torch.testing.assert_close(P.T @ P, torch.eye(c_s), atol=1e-5, rtol=0)
    before = P.detach().clone()
    _step(m, *shapes, weight_decay=0.01)   # the Cayley map survives weight decay
    P = m.projectors[0].weight
    assert not torch.allclose(before, P)
    torch.testing.assert_close(P.T @ P, torch.eye(c_s), atol=1e-5, rtol=0)


@pytest.mark.parametrize("norm", ["standardize", "center"])
def test_subdistill_rotation_stays_orthogonal(norm):
    shapes = ([(6, 2, 2)], [(4, 2, 2)])
    m = make("subdistill", *shapes, student_norm=norm)
    V = m.layers[0].rotation.weight
    torch.testing.assert_close(V.T @ V, torch.eye(4), atol=1e-5, rtol=0)
    before = V.detach().clone()
    _step(m, *shapes, weight_decay=0.01)  # the exp map is unaffected by decay
    V = m.layers[0].rotation.weight
    assert not torch.allclose(before, V)
    torch.testing.assert_close(V.T @ V, torch.eye(4), atol=1e-5, rtol=0)
    # The subspace constants are buffers (moved by .to()), never parameters nor checkpointed.
    assert "layers.0.basis" in dict(m.named_buffers())
    assert "layers.0.basis" not in m.state_dict()


@pytest.mark.parametrize("name", ["at", "vid", "vkd", "subdistill"])
def test_gradients_reach_student_and_method_never_teacher(name):
    t_shapes, s_shapes = [(8, 4, 4), (6, 2, 2)], [(4, 2, 2), (6, 4, 4)]
    m = make(name, t_shapes, s_shapes)
    s, t = feats(s_shapes, seed=1, grad=True), feats(t_shapes, grad=True)
    sum(m(s, m.teacher_targets(t))).backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in s)
    assert all(f.grad is None for f in t)
    for pname, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", list(METHODS))
@pytest.mark.parametrize("pair", ["mini", "mismatch"])
def test_methods_run_on_mini_and_mismatched_pairs(name, pair):
    if pair == "mini":
        t_shapes, s_shapes = MINI_T, MINI_S
    else:  # 256 -> 64 channels, 56² teacher vs 28² student (paper pair 1, scaled down in batch)
        t_shapes, s_shapes = [(256, 56, 56)], [(64, 28, 28)]
    m = make(name, t_shapes, s_shapes)
    losses = m(feats(s_shapes, seed=1), m.teacher_targets(feats(t_shapes)))
    assert m.uses_layers == (name != "kd")
    assert len(losses) == (len(t_shapes) if m.uses_layers else 0)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses)


def test_teacher_transform_is_deterministic_and_cacheable():
    t_shapes, s_shapes = [(8, 4, 4)], [(4, 2, 2)]
    for name in ["at", "vid", "vkd", "subdistill"]:
        m = make(name, t_shapes, s_shapes)
        t, s = feats(t_shapes), feats(s_shapes, seed=1)
        with torch.no_grad():
            cached = m.teacher_transform(t)
        torch.testing.assert_close(m.teacher_transform(t)[0], cached[0])
        m.eval()  # eval: no batch statistics are updated, so both paths agree exactly
        torch.testing.assert_close(m.criterion(m.student_transform(s), cached)[0],
                                   m(s, m.teacher_targets(t))[0])


# ---------------------------------------------------------------- registry and objective

def test_build_method_errors():
    with pytest.raises(ReproError, match="kd, at, vid, vkd, subdistill"):
        build_method("fitnet", [], [])
    with pytest.raises(ReproError, match="fit_relevant_subspaces"):
        build_method("subdistill", [(8, 2, 2)], [(4, 2, 2)])
    with pytest.raises(ReproError, match="K = 4"):
        build_method("subdistill", [(8, 2, 2)], [(4, 2, 2)], subspaces=[random_subspace(8, 3)])
    with pytest.raises(ReproError, match="8 channels"):
        build_method("subdistill", [(8, 2, 2)], [(4, 2, 2)], subspaces=[random_subspace(6, 4)])
    with pytest.raises(ReproError, match="student_norm"):
        make("subdistill", [(8, 2, 2)], [(4, 2, 2)], student_norm="whiten")
    with pytest.raises(ReproError, match="vid_variance"):
        make("vid", [(8, 2, 2)], [(4, 2, 2)], vid_variance="zero")
    with pytest.raises(ReproError, match="2 teacher layers but 1"):
        build_method("at", [(8, 2, 2)] * 2, [(4, 2, 2)])


def test_total_loss_and_check_finite():
    kd = torch.tensor(1.5, requires_grad=True)
    layers = [torch.tensor(0.5), torch.tensor(0.25)]
    loss, terms = total_loss(kd, layers, lambda_layer=10.0)
    assert loss.item() == pytest.approx(1.5 + 7.5)
    assert terms == {"kd": 1.5, "layer": 0.75, "layer_0": 0.5, "layer_1": 0.25, "total": 9.0}
    loss.backward()
    assert kd.grad == 1.0
    loss, terms = total_loss(kd, [], 10.0, ce_term=torch.tensor(2.0), lambda_task=0.5)
    assert loss.item() == pytest.approx(2.5) and terms["ce"] == 2.0
    with pytest.raises(ReproError, match="ce_term"):
        total_loss(kd, [], 1.0, lambda_task=1.0)
    check_finite(terms, step=3)
    _, bad = total_loss(kd, [torch.tensor(float("nan"))], 1.0)
    with pytest.raises(ReproError, match="loss term layer_0 became NaN/inf at step 17"):
        check_finite({"kd": 1.0, "layer_0": bad["layer_0"]}, step=17)

"""Relevant subspaces (§4): the PRCA-posdef matrix, eigenvectors, fitting, diagnostics."""

import pytest
import torch

from reprolib.errors import ReproError
from reprolib.models import FrozenTeacher, mini_teacher
from reprolib.subspace import (RelevantSubspace, artifact_energy, digit_effect, digit_energy_table,
                               fit_relevant_subspaces, load_subspaces, prca_posdef_matrix, rank_k_accuracy,
                               reconstruct, relevant_subspace, save_subspaces, sorted_eigh, student_pair_table,
                               subspace_table, top2_margin)

torch.set_num_threads(1)

LAYERS = ["layer1", "layer2", "layer3", "layer4"]
STUDENT_WIDTHS = [16, 32, 64, 128]
TEACHER_WIDTHS = [32, 64, 128, 256]


def stats(n=301, d=7, seed=0):
    """Activations and anti-correlated gradients, so that the plain PRCA matrix S is indefinite."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g)
    C = -0.5 * A + torch.randn(n, d, generator=g)
    return A - A.mean(0), C


def test_prca_matrix_is_psd_where_plain_prca_is_not():
    A, C = stats()
    M = prca_posdef_matrix(A, C)
    assert M.dtype == torch.float64
    torch.testing.assert_close(M, M.T)
    ev = torch.linalg.eigvalsh(M)
    assert ev.min() >= -1e-8 * ev.max()
    S = (A.double().T @ C.double() + C.double().T @ A.double()) / len(A)
    assert torch.linalg.eigvalsh(S).min() < 0


def test_prca_matrix_formula():
    A, C = stats(n=50, d=4)
    a, c = A.double(), C.double()
    sa, sc, sac = a.T @ a / 50, c.T @ c / 50, a.T @ c / 50
    gamma = (sc.trace() / sa.trace()).sqrt()
    torch.testing.assert_close(prca_posdef_matrix(A, C),
                               sac + sac.T + 2 * gamma * sa + 2 / gamma * sc)


@pytest.mark.numerics
@pytest.mark.parametrize("a_scale,c_scale", [(3.0, 1.0), (1.0, 0.01), (25.0, 4.0)])
def test_prca_matrix_is_invariant_to_rescaling(a_scale, c_scale):
    A, C = stats()
    M = prca_posdef_matrix(A, C)
    M2 = prca_posdef_matrix(A * a_scale, C * c_scale)
    torch.testing.assert_close(M2 / M2.trace(), M / M.trace(), rtol=1e-5, atol=1e-9)


def test_prca_matrix_rejects_dead_layers():
    A, C = stats(n=10, d=3)
    with pytest.raises(ReproError, match="dead"):
        prca_posdef_matrix(A, torch.zeros_like(C))


def test_sorted_eigh_descending_orthonormal_and_sign_fixed():
    A, C = stats()  # n odd: "more than half" is never a tie
    M = prca_posdef_matrix(A, C)
    evals, U = sorted_eigh(M, A)
    assert evals.dtype == U.dtype == torch.float64
    assert torch.all(evals[:-1] >= evals[1:])
    torch.testing.assert_close(U.T @ U, torch.eye(7, dtype=torch.float64))
    torch.testing.assert_close(M @ U, U * evals)
    positive_share = ((A.double() @ U) > 0).double().mean(0)
    assert torch.all(positive_share > 0.5)
    # The fix is a choice, not a property of eigh: it must also hold for -A's data.
    _, U_neg = sorted_eigh(M, -A)
    torch.testing.assert_close(U_neg, -U)


def test_top2_margin_value_and_constant_indices():
    z = torch.tensor([[1.0, 3.0, 2.0, -1.0, 0.0], [0.5, 0.1, 0.2, 0.9, 0.3]], requires_grad=True)
    f = top2_margin(z)
    torch.testing.assert_close(f, torch.tensor([1.0, 0.4]))
    f.sum().backward()
    torch.testing.assert_close(z.grad, torch.tensor([[0, 1.0, -1, 0, 0], [-1.0, 0, 0, 1, 0]]))


def test_relevant_subspace_alpha_and_share():
    A, C = stats(d=6)
    sub = relevant_subspace("x", A + 5.0, C, 2)
    torch.testing.assert_close(sub.mean, (A + 5.0).mean(0), atol=1e-5, rtol=0)
    Ac = A.double() - A.double().mean(0)
    U = sub.basis.double()
    alpha = (Ac @ U).pow(2).sum() / len(A)
    assert sub.alpha == pytest.approx(alpha.item(), rel=1e-5)
    assert sub.variance_share == pytest.approx(alpha.item() / Ac.pow(2).sum(1).mean().item(), rel=1e-5)
    assert 0 < sub.variance_share <= 1
    with pytest.raises(ReproError, match="K = 7"):
        relevant_subspace("x", A, C, 7)


# ---------------------------------------------------------------- fitting on a mini teacher

def _teacher():
    torch.manual_seed(0)
    return FrozenTeacher(mini_teacher(10), [0, 2, 3, 4, 6])


def _images(n_batches=2, batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 1, 32, 32, generator=g) for _ in range(n_batches)]


@pytest.fixture(scope="module")
def fitted():
    teacher = _teacher()
    subs = fit_relevant_subspaces(teacher, LAYERS, _images(), STUDENT_WIDTHS, seed=0)
    return teacher, subs


def test_fit_returns_orthonormal_bases(fitted):
    teacher, subs = fitted
    for sub, layer, d, k in zip(subs, LAYERS, TEACHER_WIDTHS, STUDENT_WIDTHS):
        assert sub.layer == layer
        assert sub.basis.shape == (d, k) and sub.basis.dtype == torch.float32
        assert sub.mean.shape == (d,) and sub.eigenvalues.shape == (d,)
        assert sub.eigenvalues.dtype == torch.float64
        assert torch.all(sub.eigenvalues[:-1] >= sub.eigenvalues[1:])
        torch.testing.assert_close(sub.basis.T @ sub.basis, torch.eye(k), atol=1e-5, rtol=0)
        assert sub.alpha > 0 and 0 < sub.variance_share <= 1 + 1e-9
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())


def test_fit_is_deterministic_per_seed(fitted):
    _, subs = fitted
    # Positions come from one stream over images and layers: compare the same layer list.
    again = fit_relevant_subspaces(_teacher(), LAYERS, _images(), STUDENT_WIDTHS, seed=0)
    other = fit_relevant_subspaces(_teacher(), LAYERS, _images(), STUDENT_WIDTHS, seed=5)
    for a, b in zip(subs, again):
        assert torch.equal(a.basis, b.basis) and a.alpha == b.alpha
    assert not torch.equal(subs[0].mean, other[0].mean)  # other positions were sampled


def test_fit_keeps_all_positions_of_small_maps():
    # layer4 is 4×4 = 16 positions < 20 requested: all kept, so the mean is the full-map mean.
    teacher, images = _teacher(), _images()
    sub, = fit_relevant_subspaces(teacher, ["layer4"], images, [8], seed=0)
    from reprolib.hooks import FeatureCapture
    with torch.no_grad(), FeatureCapture(teacher.model, ["layer4"]) as cap:
        teacher(torch.cat(images))
        full_mean = cap["layer4"].mean((0, 2, 3))
    torch.testing.assert_close(sub.mean, full_mean, atol=1e-5, rtol=1e-5)


def test_fit_rejects_bad_arguments():
    teacher = _teacher()
    with pytest.raises(ReproError, match="K = 300"):
        fit_relevant_subspaces(teacher, ["layer4"], _images(1, 1), [300], seed=0)
    with pytest.raises(ReproError, match="one K per layer"):
        fit_relevant_subspaces(teacher, LAYERS, _images(1, 1), [8], seed=0)
    with pytest.raises(ReproError, match="no batches"):
        fit_relevant_subspaces(teacher, ["layer4"], [], [8], seed=0)
    with pytest.raises(ReproError, match="no module named"):
        fit_relevant_subspaces(teacher, ["layer9"], _images(1, 1), [8], seed=0)


def _labelled(n=20, seed=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 32, 32, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_rank_k_accuracy_with_full_rank_reproduces_teacher():
    teacher = _teacher()
    full = fit_relevant_subspaces(teacher, ["layer1", "layer4"], _images(), [32, 256], seed=0)
    x, y = _labelled(16)
    with torch.no_grad():
        plain = (teacher(x).argmax(1) == y).sum().item() / len(y)
    # batch_size 6 splits the images into uneven batches: the copies must still line up
    assert rank_k_accuracy(teacher, full, x, y, batch_size=6) == pytest.approx([plain, plain], abs=1e-12)
    for layer in ("layer1", "layer4"):
        assert not dict(teacher.model.get_submodule(layer)._forward_hooks)


def test_rank_k_accuracy_of_all_layers_at_once_equals_one_layer_at_a_time(fitted):
    """The one-pass trick (copy l of the batch has layer l reconstructed) gives what
    replacing each layer alone gives."""
    teacher = _teacher()
    with torch.no_grad():   # an untrained head predicts one class for everything: make the logits spread
        teacher.model.fc.weight.mul_(100)
        teacher.model.fc.bias.zero_()
    subs = fit_relevant_subspaces(teacher, LAYERS, _images(), [1, 1, 1, 1], seed=0)   # rank 1: predictions move
    x, _ = _labelled(40, seed=5)
    with torch.no_grad():
        y = teacher(x).argmax(1)   # the unmodified teacher scores 1.0: every change shows
    together = rank_k_accuracy(teacher, subs, x, y, batch_size=7)
    alone = []
    with torch.no_grad():
        for sub in subs:
            module = teacher.model.get_submodule(sub.layer)
            h = module.register_forward_hook(lambda _m, _i, out, sub=sub: reconstruct(out, sub))
            try:
                alone.append((teacher(x).argmax(1) == y).sum().item() / len(y))
            finally:
                h.remove()
    assert together == pytest.approx(alone, abs=1e-12)
    assert min(together) < 1.0   # some layer at rank K changes a prediction: the test can see a mix-up
    with pytest.raises(ReproError, match="no images"):
        rank_k_accuracy(teacher, subs, x[:0], y[:0])


def test_rank_k_reconstruction_changes_outputs_when_k_small(fitted):
    teacher, subs = fitted
    x = _images(1, 4)[0]
    module = teacher.model.layer2
    with torch.no_grad():
        plain = teacher(x)
        h = module.register_forward_hook(lambda _m, _i, out: reconstruct(out, subs[1]))
        try:
            reduced = teacher(x)
        finally:
            h.remove()
    assert not torch.allclose(plain, reduced)


def _digit_images(seed=3, n=6):
    x, y = _labelled(n, seed)
    x_digit = x.clone()
    x_digit[:, :, :8, :8] = 2.0
    return x_digit, x, y


def test_digit_effect_is_the_feature_difference_of_each_layer(fitted):
    teacher, _ = fitted
    x_digit, x, y = _digit_images()
    out = digit_effect(teacher, ["layer2", "layer4"], x_digit, x, y, batch_size=4)
    assert out["n"] == 6
    with torch.no_grad():
        assert out["accuracy_with"] == (teacher(x_digit).argmax(1) == y).sum().item() / 6
        assert out["accuracy_without"] == (teacher(x).argmax(1) == y).sum().item() / 6
    for layer in ("layer2", "layer4"):
        module = teacher.model.get_submodule(layer)
        feats = []
        h = module.register_forward_hook(lambda _m, _i, o: feats.append(o.double()))
        try:
            with torch.no_grad():
                teacher(x_digit), teacher(x)
        finally:
            h.remove()
        d = feats[0] - feats[1]
        expected = d.permute(0, 2, 3, 1).reshape(-1, d.shape[1])
        assert out["delta"][layer].dtype == torch.float64
        # separate batches vs one concatenated batch: float32 convolutions, so not bitwise
        torch.testing.assert_close(out["delta"][layer], expected, rtol=0, atol=1e-4)
    assert not dict(teacher.model.get_submodule("layer2")._forward_hooks)


def test_artifact_energy(fitted):
    teacher, subs = fitted
    x_digit, x, y = _digit_images()
    delta = digit_effect(teacher, ["layer2"], x_digit, x, y)["delta"]["layer2"]
    out = artifact_energy(delta, subs[1].basis)
    assert set(out) == {"inside", "outside", "inside_share", "random_inside_share"}
    assert out["inside"] >= 0 and out["outside"] >= 0
    assert out["inside"] + out["outside"] == pytest.approx(delta.pow(2).sum().item())
    assert 0 <= out["inside_share"] <= 1 and 0 <= out["random_inside_share"] <= 1
    # Whole space: everything is inside, for U_K and for the "random" subspace alike.
    full = relevant_subspace("layer2", torch.randn(80, 64), torch.randn(80, 64), 64)
    whole = artifact_energy(delta, full.basis)
    assert whole["inside_share"] == pytest.approx(1.0) and whole["random_inside_share"] == pytest.approx(1.0)
    # A direction the effect does not touch holds none of it.
    basis = torch.zeros(2, 1, dtype=torch.float64)
    basis[1, 0] = 1.0
    assert artifact_energy(torch.tensor([[3.0, 0.0], [4.0, 0.0]], dtype=torch.float64), basis)["inside_share"] == 0.0


def test_chapter_two_tables(fitted):
    teacher, subs = fitted
    x_digit, x, y = _digit_images()
    effect = digit_effect(teacher, LAYERS, x_digit, x, y)
    rank_k = rank_k_accuracy(teacher, subs, x_digit, y)
    t = subspace_table(subs, rank_k, effect["accuracy_with"])
    assert list(t["layer"]) == LAYERS and list(t["K"]) == STUDENT_WIDTHS and list(t["d"]) == TEACHER_WIDTHS
    assert list(t["teacher accuracy, rank-K layer"]) == rank_k
    assert (t["teacher accuracy, unmodified"] == effect["accuracy_with"]).all()
    assert t["K/d"].tolist() == pytest.approx([k / d for k, d in zip(STUDENT_WIDTHS, TEACHER_WIDTHS)])
    e = digit_energy_table({1.0: subs, 0.0: subs[:2]}, effect["delta"])
    assert list(e["fitted_on_rho"]) == [0.0, 0.0] + [1.0] * 4   # sorted by ρ
    assert e["digit_energy_in_U_K"].iloc[2] == artifact_energy(effect["delta"]["layer1"], subs[0].basis)["inside_share"]
    p = student_pair_table({"a": subs[:1], "b": subs[1:2]}, effect["delta"])
    assert list(p["student"]) == ["a", "b"] and list(p["layer"]) == ["layer1", "layer2"]
    assert p["digit's effect inside U_K"].iloc[1] == e["digit_energy_in_U_K"].iloc[1]


def test_save_and_load_roundtrip(tmp_path, fitted):
    _, subs = fitted
    path = tmp_path / "sub" / "subspaces.pt"
    save_subspaces(path, subs)
    back = load_subspaces(path)
    assert [s.layer for s in back] == LAYERS
    for a, b in zip(subs, back):
        assert isinstance(b, RelevantSubspace)
        assert torch.equal(a.basis, b.basis) and torch.equal(a.eigenvalues, b.eigenvalues)
        assert a.alpha == b.alpha and a.variance_share == b.variance_share
    with pytest.raises(ReproError, match="no subspace file"):
        load_subspaces(tmp_path / "missing.pt")

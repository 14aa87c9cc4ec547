"""Relevant subspaces (§4): the PRCA-posdef matrix, eigenvectors, fitting, diagnostics."""

import pytest
import torch

from reprolib.errors import ReproError
from reprolib.models import FrozenTeacher, mini_teacher
from reprolib.subspace import (RelevantSubspace, artifact_energy, fit_relevant_subspaces,
                               load_subspaces, prca_posdef_matrix, rank_k_accuracy, reconstruct,
                               relevant_subspace, save_subspaces, sorted_eigh, top2_margin)

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


def test_rank_k_accuracy_with_full_rank_reproduces_teacher():
    teacher = _teacher()
    full = fit_relevant_subspaces(teacher, ["layer1", "layer4"], _images(), [32, 256], seed=0)
    g = torch.Generator().manual_seed(2)
    data = [(torch.randn(8, 1, 32, 32, generator=g), torch.randint(0, 5, (8,), generator=g))
            for _ in range(2)]
    with torch.no_grad():
        plain = sum((teacher(x).argmax(1) == y).sum().item() for x, y in data) / 16
    for layer, sub in zip(["layer1", "layer4"], full):
        assert rank_k_accuracy(teacher, layer, sub, data) == plain
        assert not dict(teacher.model.get_submodule(layer)._forward_hooks)


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


def test_artifact_energy(fitted):
    teacher, subs = fitted
    x = _images(1, 2, seed=3)[0]
    x_digit = x.clone()
    x_digit[:, :, :8, :8] = 2.0
    out = artifact_energy(teacher, "layer2", subs[1], x_digit, x)
    assert set(out) == {"inside", "outside", "inside_share", "random_inside_share"}
    assert out["inside"] >= 0 and out["outside"] >= 0
    assert 0 <= out["inside_share"] <= 1 and 0 <= out["random_inside_share"] <= 1
    # Whole space: everything is inside.
    full = relevant_subspace("layer2", torch.randn(80, 64), torch.randn(80, 64), 64)
    assert artifact_energy(teacher, "layer2", full, x_digit, x)["inside_share"] == pytest.approx(1.0)


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

"""t-SNE and k-NN agreement (D10)."""

import numpy as np
import pytest
import torch
import sklearn.manifold  # noqa: F401 - paid once at collection, not inside a timed test

from reprolib import embedding
from reprolib.errors import ReproError
from reprolib.models import FrozenTeacher, mini_student, mini_teacher

torch.set_num_threads(1)


def _two_clusters(n=40, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, 0.1, size=(n, 5))
    b = rng.normal(10.0, 0.1, size=(n, 5))
    return np.vstack([a, b]), np.repeat([0, 1], n)


def test_knn_agreement_is_one_for_separated_clusters_and_chance_for_random_labels():
    f, y = _two_clusters()
    assert embedding.knn_agreement(f, y, k=10) == 1.0
    rng = np.random.default_rng(1)
    f = rng.normal(size=(400, 8))
    y = rng.integers(0, 5, size=400)
    assert abs(embedding.knn_agreement(f, y, k=10) - 0.2) < 0.05


def test_knn_agreement_excludes_the_point_itself():
    # Two points per label, far apart pairs: with k = 1 each point's neighbour is its twin.
    f = np.array([[0.0], [0.1], [5.0], [5.1]])
    assert embedding.knn_agreement(f, [0, 0, 1, 1], k=1) == 1.0
    # Every point alone in its label: including itself would give 1, excluding gives 0.
    assert embedding.knn_agreement(f, [0, 1, 2, 3], k=1) == 0.0
    with pytest.raises(ReproError):
        embedding.knn_agreement(f, [0, 0, 1, 1], k=4)


def test_tsne_is_finite_and_deterministic():
    f, _ = _two_clusters(n=30)
    a = embedding.tsne(f, seed=0)
    b = embedding.tsne(f, seed=0)
    assert a.shape == (60, 2) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, b)
    tiny = embedding.tsne(f[:6], seed=0)     # perplexity clipped below N
    assert tiny.shape == (6, 2) and np.isfinite(tiny).all()


def test_tsne_uses_the_protocol_settings():
    # D10: perplexity 30, PCA init, fixed random_state; pinned against scikit-learn itself.
    from sklearn.manifold import TSNE

    f = np.random.default_rng(2).normal(size=(100, 6)).astype(np.float32)
    expected = TSNE(n_components=2, perplexity=30.0, init="pca", random_state=3).fit_transform(f)
    np.testing.assert_array_equal(embedding.tsne(f, seed=3), expected)


@pytest.mark.numerics
def test_pooled_features_shape_and_restored_mode():
    torch.manual_seed(0)
    model = mini_student()
    model.train()
    model.layer1.eval()
    modes = [m.training for m in model.modules()]
    x = torch.randn(6, 1, 32, 32)
    batches = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(2))]
    f = embedding.pooled_features(model, "layer4", batches)
    assert f.shape == (6, model.widths[-1]) and f.dtype == np.float32
    assert [m.training for m in model.modules()] == modes
    assert all(not m._forward_hooks for m in model.modules())
    model.eval()
    with torch.no_grad():
        expected = model.layer4(model.layer3(model.layer2(model.layer1(
            model.relu(model.bn1(model.conv1(x))))))).mean((2, 3))
    np.testing.assert_allclose(f, expected.numpy(), rtol=1e-5, atol=1e-6)
    teacher = FrozenTeacher(mini_teacher(), [0, 2, 3, 4, 6])
    assert embedding.pooled_features(teacher, "model.layer3", [x]).shape == (6, 128)
    with pytest.raises(ReproError):
        embedding.pooled_features(model, "layer9", [x])


def test_plot_embedding_draws_one_series_per_label():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    f, y = _two_clusters(n=5)
    fig, ax = plt.subplots()
    embedding.plot_embedding(ax, f[:, :2], y, "clusters", names=["a", "b"])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    plt.close(fig)

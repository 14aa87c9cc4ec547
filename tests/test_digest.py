"""Cache keys and content hashes are bitwise stable.

Every key below was computed by the code *before* the hash idioms (five copies of
``hashlib.sha256(...).hexdigest()[:16]`` in config, teacher, train, explain and
paper_world) were folded into :func:`reprolib.io.digest`: a refactor that changes
one of them would silently orphan every cache and run folder.

The code versions are pinned (monkeypatched) so that a deliberate bump of
``CODE_VERSION`` does not break this test; the keys of the *current* versions are
checked too, as long as the versions are the ones these values were taken with.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pandas as pd
import pytest
import torch

import reprolib
from reprolib import config, evaluation, io, subspace, teacher
from reprolib.config import DataConfig, RunConfig
from reprolib.data import World

GOLDEN_CODE = "golden-code"
GOLDEN_TEACHER_CODE = "golden-teacher-code"


@pytest.fixture
def pinned(monkeypatch):
    """Fixed code versions wherever a key reads one."""
    monkeypatch.setattr(reprolib, "CODE_VERSION", GOLDEN_CODE)
    monkeypatch.setattr(config, "CODE_VERSION", GOLDEN_CODE)
    monkeypatch.setattr(evaluation, "CODE_VERSION", GOLDEN_CODE)
    monkeypatch.setattr(teacher, "TEACHER_CODE_VERSION", GOLDEN_TEACHER_CODE)


# -- the helper itself ---------------------------------------------------

def test_sha256_file_is_the_full_hex_digest(tmp_path):
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    assert io.sha256_file(path) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_torch_save_returns_the_files_sha256(tmp_path):
    sha = io.torch_save({"w": torch.arange(3)}, tmp_path / "w.pt")
    assert sha == hashlib.sha256((tmp_path / "w.pt").read_bytes()).hexdigest()


# -- keys, end to end ----------------------------------------------------

TEACHER_KEYS = {   # recipe name, image size -> TeacherConfig.key()
    ("1-epoch", 32): "c0da00e5d12baeda",
    ("10-epoch", 32): "de4ce89ae506a24f",
    ("smoke", 32): "3e0375f0b5e068d7",
    ("20-epoch", 64): "9f0b95d4f8c43993",
}


def test_teacher_keys(pinned):
    got = {(name, size): teacher.recipe(name, size).key() for name, size in TEACHER_KEYS}
    assert got == TEACHER_KEYS
    assert teacher.TeacherConfig().key() == TEACHER_KEYS[("1-epoch", 32)]
    bf16 = dataclasses.replace(teacher.recipe("1-epoch"), precision="bf16")
    assert bf16.key() == "8597acc6f5cef52a"


def _run_configs():
    return {
        "default": RunConfig(),
        "subdistill-rho": RunConfig(method="subdistill", lambda_layer=0.3,
                                    data=DataConfig(contamination_rate=0.75), seed=3),
        "mnist-center": RunConfig(data=DataConfig(artifact_source="mnist", pool_per_class=None,
                                                  crop_scale=(0.25, 1.0)),
                                  student_norm="center", teacher_recipe="smoke", epochs=3),
        "paper-vkd": RunConfig(data=DataConfig(world="paper", subtask_classes=config.PAPER_SUBTASK,
                                               image_size=224),
                               method="vkd", teacher="resnet101", student="mobilenetv4_conv_small",
                               layer_pairs=config.MOBILENET_LAYER_PAIRS, teacher_weights="/w/r101.pth"),
    }


RUN_KEYS = {"default": "4e7c8e3c196bb61a", "subdistill-rho": "d96b15649bc6c4c5", "mnist-center": "b2cd08e5aa4bdd86", "paper-vkd": "7e473eb43f9aeee1"}


def test_run_config_keys(pinned):
    assert {name: cfg.key() for name, cfg in _run_configs().items()} == RUN_KEYS


def test_current_versions_keys():
    """The keys of the code versions of today (these values name real caches)."""
    if (reprolib.CODE_VERSION, teacher.TEACHER_CODE_VERSION) != ("reprolib-0.2.0", "mini-teacher-3"):
        pytest.skip("code version bumped: every key changed on purpose")
    assert teacher.recipe("10-epoch").key() == "d6e67a7889d1be15"
    assert teacher.recipe("smoke").key() == "4b1e95fbb09abc68"
    assert RunConfig().key() == "f16d92f3ab78633d"


class _FakeWorld(World):
    """Four fixed test images; in memory or not."""

    num_classes, in_channels = 3, 1

    def __init__(self, in_memory: bool):
        self.in_memory = in_memory
        self.cfg = DataConfig()
        g = torch.Generator().manual_seed(0)
        self._test = (torch.randn(4, 1, 4, 4, generator=g), torch.tensor([0, 1, 2, 0]),
                      torch.tensor([-1, 1, 0, -1]))

    def tensors(self, split):
        return self._test

    def batches(self, split, batch_size, **kw):
        x, y, d = self._test
        for s in range(0, len(y), batch_size):
            yield x[s:s + batch_size], y[s:s + batch_size], d[s:s + batch_size]


class _FakeTeacher(torch.nn.Module):
    def forward(self, x):
        return torch.stack([x.mean((1, 2, 3)), x.amax((1, 2, 3)), x.amin((1, 2, 3))], 1)


@pytest.mark.parametrize("in_memory,key", [(True, "da2f8daa343cc825"), (False, "f028de13e6fd218e")])
def test_teacher_eval_key(pinned, tmp_path, monkeypatch, in_memory, key):
    monkeypatch.setenv("REPROLIB_CACHE", str(tmp_path))
    evaluation.teacher_test_metrics(_FakeTeacher(), _FakeWorld(in_memory), RunConfig(), torch.device("cpu"))
    assert [p.name for p in (tmp_path / "teacher_eval").iterdir()] == [f"{key}.json"]


def test_subspace_key(pinned, tmp_path, monkeypatch):
    monkeypatch.setenv("REPROLIB_CACHE", str(tmp_path))
    monkeypatch.setattr(subspace, "fit_relevant_subspaces", lambda *a, **k: [])
    monkeypatch.setattr(subspace, "save_subspaces", lambda path, s: None)
    cfg = RunConfig(seed=7, data=DataConfig(contamination_rate=0.5))
    _, path = subspace.relevant_subspaces(cfg, _FakeTeacher(), _FakeWorld(True), [4, 8, 16, 32],
                                       torch.device("cpu"))
    assert path.name == "0d00bd80b82f21e4.pt"


def test_explain_key():
    from reprolib import explain

    results = pd.DataFrame({"method": ["kd", "subdistill"], "rho": [0.0, 1.0], "seed": [1, 2],
                            "lambda_layer": [None, 0.3], "run_dir": ["runs/a", "runs/b"]})
    settings = {"tsne_images": 600, "lrp_images": 64, "rhos": [0.0, 1.0], "selection": "oracle"}
    assert explain._digest(results, settings) == "b76296b98e1e7ab8"


class _Written(Exception):
    pass


def test_decode_cache_key(pinned, monkeypatch):
    """The paper world's decode cache: its file name holds two keys (the file list's,
    and the files' identity with the code and PIL versions)."""
    import os
    import types

    import PIL

    from reprolib import paper_world

    files = [f"/golden-decode/{i}.JPEG" for i in range(3)]
    stats = {f: types.SimpleNamespace(st_size=1000 + i, st_mtime_ns=10**18 + i) for i, f in enumerate(files)}
    monkeypatch.setattr(PIL, "__version__", "golden-pil")
    monkeypatch.setattr(paper_world, "os", types.SimpleNamespace(stat=stats.__getitem__, environ=os.environ))
    written = []

    def atomic_path(path):
        written.append(path.name)
        raise _Written

    monkeypatch.setattr(paper_world, "atomic_path", atomic_path)
    with pytest.raises(_Written):
        paper_world.decode_cache(files, 32, limit=1 << 30)
    assert written == ["eval32-782f33ae3fe6ebad-e42458bd4dc258c5.npy"]


def test_digest_forms():
    """Bytes, text, byte chunks and JSON: each the sha256 of the same bytes as before."""
    def sha(b):
        return hashlib.sha256(b).hexdigest()

    assert io.digest(b"abc", length=None) == sha(b"abc")
    assert io.digest("abc") == sha(b"abc")[:16]
    assert io.digest(iter([b"a", b"bc"]), length=8) == sha(b"abc")[:8]
    obj = {"b": [1, 2.5, None], "a": "x"}
    assert io.digest(obj) == sha(b'{"a": "x", "b": [1, 2.5, null]}')[:16]
    assert io.digest(obj, separators=(",", ":")) == sha(b'{"a":"x","b":[1,2.5,null]}')[:16]
    with pytest.raises(TypeError):
        io.digest({"p": object()})
    assert io.digest({"p": 1j}, default=str) == sha(b'{"p": "1j"}')[:16]

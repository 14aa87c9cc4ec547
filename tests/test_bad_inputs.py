"""Bad inputs, as a new user makes them (issue 11): one table, every row fails cleanly.

Each row is a command line (run in-process through :func:`reprolib.cli.main`,
a few also as a real subprocess) or a Python API call (what papermill uses).
A row passes when it ends with exit status 2 (``ReproError`` for the API),
exactly one ``error:`` line on stderr that contains the expected words, no
traceback, nothing on stdout, and nothing left behind: no file or folder
appears or disappears in the test's folder and no temporary file in the cache.

Rows fail at validation, before any training; the few that need a finished
thing use a sweep folder made by the fake trainer (``tests/_fake_runner.py``)
in a second, and the smoke teacher of the test cache.
"""

from __future__ import annotations

import gzip
import io as _io
import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _fake_runner import fake_train_run  # noqa: E402
from reprolib.standins import write_idx  # noqa: E402

from reprolib import cli, io  # noqa: E402
from reprolib.devices import Execution  # noqa: E402
from reprolib.errors import ReproError  # noqa: E402

FASHION = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
           "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ---------------------------------------------------------------------------
# Fixtures: things that rows break
class Crafted:
    """A pickle that runs code when loaded without ``weights_only``: it creates
    the folder named by ``marker``."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def crafted_file(path: Path, marker: Path, raw: bool = False) -> Path:
    """A checkpoint-looking file (``torch.save`` format, or a raw pickle) whose
    loading with ``weights_only=False`` would create ``marker``."""
    obj = {"student": Crafted(marker), "config": {}}
    if raw:
        with open(path, "wb") as fh:
            pickle.dump(obj, fh)
    else:
        torch.save(obj, path)
    return path


@pytest.fixture(scope="module")
def fake_sweep(tmp_path_factory) -> Path:
    """A finished smoke-grid sweep folder made by the fake trainer (no torch)."""
    from reprolib.sweep import run_sweep

    out = tmp_path_factory.mktemp("fake") / "sweep"
    run_sweep("smoke", out, execution=Execution(device="cpu", threads=1), run_fn=fake_train_run,
              progress=False)
    return out


def _runs(sweep: Path) -> list[Path]:
    return sorted(p for p in (sweep / "runs").iterdir() if p.is_dir())


def _copy_sweep(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _fashion_folder(base: Path, broken: str) -> Path:
    """A Fashion-MNIST folder whose training images file is broken as named."""
    folder = base / "fmnist"
    folder.mkdir()
    small = np.zeros((3, 28, 28), np.uint8)
    for stem in FASHION[1:]:
        write_idx(folder / f"{stem}.gz", np.zeros(3 if "labels" in stem else (3, 28, 28), np.uint8))
    good = _io.BytesIO()
    with gzip.GzipFile(fileobj=good, mode="wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + (3).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
                 + small.tobytes())
    target = folder / (FASHION[0] + ".gz")
    if broken == "truncated-gz":
        target.write_bytes(good.getvalue()[:-12])
    elif broken == "not-gzip":
        target.write_bytes(b"this is not gzip at all" * 4)
    elif broken == "short-header":
        target.write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00"))
    elif broken == "missing":
        pass
    return folder


# ---------------------------------------------------------------------------
# The table. Each row: (id, kind, args or API call, setup, expected words).
# ``setup(tmp)`` prepares files in the row's folder and returns extra format
# values for the args; "{tmp}" in an arg is the row's folder.
def _file(tmp):
    (tmp / "afile").write_text("not a folder")
    return {}


def _garbage_pt(tmp):
    (tmp / "garbage.pt").write_bytes(b"definitely not a torch checkpoint")
    return {}


def _crafted_pt(tmp):
    crafted_file(tmp / "crafted.pt", tmp / "PWNED")
    return {}


def _crafted_raw_pt(tmp):
    crafted_file(tmp / "crafted.pt", tmp / "PWNED", raw=True)
    return {}


def _truncated_pt(tmp):
    torch.save({"fc.weight": torch.zeros(10, 4)}, tmp / "cut.pt")
    data = (tmp / "cut.pt").read_bytes()
    (tmp / "cut.pt").write_bytes(data[:len(data) // 2])
    return {}


def _fashion(broken):
    def setup(tmp, monkeypatch):
        monkeypatch.setenv("REPROLIB_FASHION_MNIST", str(_fashion_folder(tmp, broken)))
        return {}
    return setup


def _sweep_copy(mutate=None):
    def setup(tmp, fake_sweep):
        sw = _copy_sweep(fake_sweep, tmp / "sw")
        if mutate:
            mutate(sw, tmp)
        return {}
    return setup


def _empty_results(sw, tmp):
    (sw / "results.csv").write_text("")


def _foreign_results(sw, tmp):
    (sw / "results.csv").write_text("name,score\nalice,3\n")


def _truncate_metrics(sw, tmp):
    for run in _runs(sw):
        m = run / "metrics.json"
        m.write_text(m.read_text()[:50])


def _truncate_student(sw, tmp):
    for run in _runs(sw):
        st = run / "student.pt"
        st.write_bytes(st.read_bytes()[:5])


def _wrong_type_metric(sw, tmp):
    for run in _runs(sw):
        m = json.loads((run / "metrics.json").read_text())
        m["test_accuracy"] = "high"
        (run / "metrics.json").write_text(json.dumps(m))


def _crafted_students(sw, tmp):
    for run in _runs(sw):
        crafted_file(run / "student.pt", tmp / "PWNED")
        m = json.loads((run / "metrics.json").read_text())
        m["student_sha256"] = io.sha256_file(run / "student.pt")   # the attacker records it too
        (run / "metrics.json").write_text(json.dumps(m))


def _fake_students(sw, tmp):
    pass   # the fake trainer's student.pt is not a torch file: refused before any work


TRAIN = ["train", "--preset", "smoke", "--device", "cpu", "--quiet"]
OUT = ["--out", "{tmp}/run"]
SWEEP = ["sweep", "--preset", "smoke", "--device", "cpu", "--no-progress", "--workers", "1"]
EXPLAIN = ["explain", "--quiet"]

CLI_ROWS = [
    # train: where the run goes (checked before any work)
    ("train-out-is-a-file", TRAIN + ["--out", "{tmp}/afile"], _file, "exists and is not a folder"),
    ("train-out-under-a-file", TRAIN + ["--out", "{tmp}/afile/run"], _file, "is a file, not a folder"),
    ("train-out-unwritable", TRAIN + ["--out", "/proc/reprolib-nowhere/run"], None, "not writable"),
    ("train-threads-negative", TRAIN + ["--threads", "-1"] + OUT, None, "--threads=-1 must be a positive"),
    ("train-threads-zero", TRAIN + ["--threads", "0"] + OUT, None, "--threads=0 must be a positive"),
    # train: the config
    ("train-rho-2", TRAIN + ["--rho", "2"] + OUT, None, "outside [0, 1]"),
    ("train-rho-nan", TRAIN + ["--rho", "nan"] + OUT, None, "outside [0, 1]"),
    ("train-method", TRAIN + ["--method", "distil"] + OUT, None, "unknown method 'distil'"),
    ("train-lambda-negative", TRAIN + ["--method", "at", "--lambda-layer", "-1"] + OUT, None,
     "lambda_layer=-1.0 must be a finite number"),
    ("train-lambda-inf", TRAIN + ["--method", "at", "--lambda-layer", "inf"] + OUT, None, "finite"),
    ("train-lambda-task-negative", TRAIN + ["--lambda-task", "-0.5"] + OUT, None, "lambda_task"),
    ("train-epochs-zero", TRAIN + ["--epochs", "0"] + OUT, None, "epochs=0 must be a positive integer"),
    ("train-batch-zero", TRAIN + ["--batch-size", "0"] + OUT, None, "batch_size=0"),
    ("train-pool-one", TRAIN + ["--pool-per-class", "1"] + OUT, None, "pool_per_class=1"),
    ("train-test-one", TRAIN + ["--test-per-class", "1"] + OUT, None, "test_per_class=1"),
    ("train-seed-negative", TRAIN + ["--seed", "-1"] + OUT, None, "seed=-1"),
    ("train-student", TRAIN + ["--student", "tiny"] + OUT, None, "unknown student 'tiny'"),
    ("train-student-norm", TRAIN + ["--student-norm", "whiten"] + OUT, None, "student_norm='whiten'"),
    ("train-vid-variance", TRAIN + ["--vid-variance", "frozen"] + OUT, None, "vid_variance='frozen'"),
    ("train-val-digits", TRAIN + ["--val-digits", "oracle"] + OUT, None, "val_digits='oracle'"),
    ("train-corner", TRAIN + ["--artifact-corner", "centre"] + OUT, None, "artifact_corner='centre'"),
    ("train-artifact-zero", TRAIN + ["--artifact-size", "0"] + OUT, None, "artifact_size=0"),
    ("train-one-class", TRAIN + ["--subtask-classes", "0"] + OUT, None, "at least two classes"),
    ("train-teacher-weights-mini", TRAIN + ["--teacher-weights", "x.pth"] + OUT, None,
     "teacher_weights is for the paper world"),
    ("train-device", TRAIN[:-3] + ["--device", "tpu", "--quiet"] + OUT, None, "unknown device 'tpu'"),
    ("train-teacher-unknown", TRAIN + ["--teacher", "resnet9000"] + OUT, None, "unknown teacher"),
    ("train-teacher-not-a-checkpoint", TRAIN + ["--teacher", "{tmp}/garbage.pt"] + OUT, _garbage_pt,
     "not a weights-only torch file"),
    ("train-teacher-crafted", TRAIN + ["--teacher", "{tmp}/crafted.pt"] + OUT, _crafted_pt,
     "pickled Python objects"),
    ("train-teacher-crafted-raw-pickle", TRAIN + ["--teacher", "{tmp}/crafted.pt"] + OUT, _crafted_raw_pt,
     "Python objects are never loaded"),
    ("train-teacher-truncated", TRAIN + ["--teacher", "{tmp}/cut.pt"] + OUT, _truncated_pt,
     "truncated or not a torch file"),
    ("train-teacher-missing-file", TRAIN + ["--teacher", "{tmp}/nothing.pt"] + OUT, None, "does not exist"),
    ("train-batch-larger-than-split", TRAIN + ["--batch-size", "1000"] + OUT, None,
     "fewer images than one batch"),
    # teacher
    ("teacher-epochs-negative", ["teacher", "--recipe", "smoke", "--epochs", "-1", "--quiet"], None,
     "--epochs -1 must be a positive integer"),
    ("teacher-epochs-zero", ["teacher", "--recipe", "smoke", "--epochs", "0", "--quiet"], None,
     "--epochs 0 must be a positive integer"),
    ("teacher-weights-mini", ["teacher", "--recipe", "smoke", "--teacher-weights", "w.pth", "--quiet"], None,
     "--teacher-weights is for the paper world"),
    ("teacher-recipe", ["teacher", "--recipe", "huge", "--quiet"], None, "unknown teacher recipe 'huge'"),
    ("teacher-paper-weights-garbage", ["teacher", "--world", "paper", "--preset", "smoke", "--teacher",
                                       "resnet18", "--teacher-weights", "{tmp}/garbage.pt"], _garbage_pt,
     "not a weights-only torch file"),
    ("teacher-paper-weights-crafted", ["teacher", "--world", "paper", "--preset", "smoke", "--teacher",
                                       "resnet18", "--teacher-weights", "{tmp}/crafted.pt"], _crafted_pt,
     "pickled Python objects"),
    # data
    ("data-summary-world", ["data", "summary", "--world", "imagenet"], None, "unknown world 'imagenet'"),
    ("data-summary-preset", ["data", "summary", "--preset", "huge"], None, "unknown preset 'huge'"),
    ("data-summary-classes-repeat", ["data", "summary", "--preset", "smoke", "--subtask-classes",
                                     "0,0,2,3,4"], None, "repeats a class"),
    ("data-summary-artifact-too-big", ["data", "summary", "--preset", "smoke", "--artifact-size", "33"],
     None, "larger than the image"),
    ("data-summary-paper-no-imagenet", ["data", "summary", "--world", "paper", "--preset", "smoke"], None,
     "REPROLIB_IMAGENET"),
    ("data-check-folder-missing-files", ["data", "check", "--no-download"], _fashion("missing"),
     "lacks ['train-images-idx3-ubyte']"),
    ("data-check-truncated-gz", ["data", "check", "--no-download"], _fashion("truncated-gz"),
     "truncated or corrupt gzip"),
    ("data-check-not-gzip", ["data", "check", "--no-download"], _fashion("not-gzip"), "is not a gzip file"),
    ("data-check-short-header", ["data", "check", "--no-download"], _fashion("short-header"),
     "short header"),
    # sweep
    ("sweep-out-is-a-file", SWEEP + ["--out", "{tmp}/afile"], _file, "exists and is not a folder"),
    ("sweep-out-under-a-file", SWEEP + ["--out", "{tmp}/afile/sw"], _file, "is a file, not a folder"),
    ("sweep-out-unwritable", SWEEP + ["--out", "/proc/reprolib-nowhere/sw"], None, "not writable"),
    ("sweep-workers-zero", SWEEP[:-2] + ["--workers", "0", "--out", "{tmp}/sw"], None,
     "workers=0 must be a positive integer"),
    ("sweep-threads-zero", SWEEP + ["--threads", "0", "--out", "{tmp}/sw"], None,
     "threads=0 must be a positive integer"),
    ("sweep-limit-zero", SWEEP + ["--limit", "0", "--out", "{tmp}/sw"], None, "limit=0"),
    ("sweep-stack-and-compile", SWEEP + ["--stack", "--compile", "--out", "{tmp}/sw"], None,
     "stacked students are not compiled: choose stack or compile, not both"),
    # explain
    ("explain-no-sweep", EXPLAIN + ["--sweep", "{tmp}/nothing", "--out", "{tmp}/ex"], None, "no results.csv"),
    ("explain-out-is-a-file", EXPLAIN + ["--sweep", "{tmp}/sw", "--out", "{tmp}/afile"],
     lambda tmp, fake_sweep: (_file(tmp), _sweep_copy()(tmp, fake_sweep))[0], "exists and is not a folder"),
    ("explain-tsne-images", EXPLAIN + ["--sweep", "{tmp}/sw", "--out", "{tmp}/ex", "--tsne-images", "5"],
     _sweep_copy(), "--tsne-images must be at least 11"),
    ("explain-empty-results", EXPLAIN + ["--sweep", "{tmp}/sw", "--out", "{tmp}/ex"],
     _sweep_copy(_empty_results), "results.csv is not a readable results table"),
    ("explain-foreign-results", EXPLAIN + ["--sweep", "{tmp}/sw", "--out", "{tmp}/ex"],
     _sweep_copy(_foreign_results), "is not a reprolib results table"),
    ("explain-selection", EXPLAIN + ["--sweep", "{tmp}/sw", "--out", "{tmp}/ex", "--selection", "best"],
     _sweep_copy(), "unknown selection 'best'"),
    ("explain-truncated-metrics", EXPLAIN + ["--sweep", "{tmp}/sw", "--out", "{tmp}/ex"],
     _sweep_copy(_truncate_metrics), "metrics.json is truncated"),
    ("explain-truncated-student", EXPLAIN + ["--sweep", "{tmp}/sw", "--out", "{tmp}/ex"],
     _sweep_copy(_truncate_student), "does not match its recorded sha256"),
    ("explain-metric-wrong-type", EXPLAIN + ["--sweep", "{tmp}/sw", "--out", "{tmp}/ex"],
     _sweep_copy(_wrong_type_metric), "test_accuracy='high', not a number"),
    ("explain-crafted-student", EXPLAIN + ["--sweep", "{tmp}/sw", "--out", "{tmp}/ex"],
     _sweep_copy(_crafted_students), "pickled Python objects"),
    ("explain-student-not-torch", EXPLAIN + ["--sweep", "{tmp}/sw", "--out", "{tmp}/ex"],
     _sweep_copy(_fake_students), "student checkpoint"),
]


def _setup(setup, tmp, monkeypatch, fake_sweep):
    if setup is None:
        return
    import inspect

    params = inspect.signature(setup).parameters
    kwargs = {}
    if "monkeypatch" in params:
        kwargs["monkeypatch"] = monkeypatch
    if "fake_sweep" in params:
        kwargs["fake_sweep"] = fake_sweep
    setup(tmp, **kwargs)


def _tree(*roots: Path) -> set[str]:
    out = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                out.add(os.path.join(dirpath, name))
    return out


def _cache_temps() -> set[str]:
    return {str(p) for p in io.cache_root().rglob("*.tmp")}


def _assert_clean_error(code, out, err, message, before, after):
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, (code, err)
    assert len(errors) == 1, err
    assert message in err, err
    assert "Traceback" not in err, err
    assert out == "", out
    assert after == before, (sorted(after - before), sorted(before - after))


@pytest.mark.parametrize("args, setup, message", [r[1:] for r in CLI_ROWS], ids=[r[0] for r in CLI_ROWS])
def test_cli_bad_input(args, setup, message, tmp_path, monkeypatch, capsys, fake_sweep, smoke_teacher):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REPROLIB_IMAGENET", raising=False)
    _setup(setup, tmp_path, monkeypatch, fake_sweep)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    before, temps = _tree(tmp_path), _cache_temps()
    capsys.readouterr()
    code = cli.main(argv)
    out, err = capsys.readouterr()
    _assert_clean_error(code, out, err, message, before, _tree(tmp_path))
    assert _cache_temps() == temps
    assert not (tmp_path / "PWNED").exists(), "a crafted file ran its code"


# ---------------------------------------------------------------------------
# The Python API (what papermill and notebooks call): a ReproError, nothing written.
def _make(**kw):
    from reprolib.config import make_config

    return lambda tmp: make_config("mini", "smoke", **kw)


def _train(out_rel="run", threads=None, **kw):
    def call(tmp):
        from reprolib.config import make_config
        from reprolib.cohort import train_run

        cfg = make_config("mini", "smoke", **kw)
        return train_run(cfg, tmp / out_rel, execution=Execution(device="cpu", threads=threads), progress=False)
    return call


def _sweep_api(out_rel, execution=None, **kw):
    """``execution``: a dict is the keywords of an Execution, made when the row runs."""
    def call(tmp):
        from reprolib.sweep import run_sweep

        ex = Execution(**execution) if isinstance(execution, dict) else execution
        return run_sweep("smoke", tmp / out_rel, execution=ex, run_fn=fake_train_run, progress=False, **kw)
    return call


def _execution(**kw):
    return lambda tmp: Execution(**kw)


def _crafted_run(tmp):
    (tmp / "run").mkdir()
    crafted_file(tmp / "run" / "student.pt", tmp / "PWNED")


def _load_student(tmp):
    from reprolib.rundirs import load_student

    return load_student(tmp / "run")


def _bad_gz(tmp):
    (tmp / "x-idx3-ubyte.gz").write_bytes(b"not gzip")


def _read_idx(tmp):
    from reprolib.sources import read_idx

    return read_idx(tmp / "x-idx3-ubyte.gz")


def _from_dict_bad(tmp):
    from reprolib.config import RunConfig, make_config

    d = make_config("mini", "smoke").to_dict()
    d["epochs"] = "10"
    return RunConfig.from_dict(d)


def _replace_bad(tmp):
    from reprolib.config import make_config

    return make_config("mini", "smoke").replace(lr="fast")


def _explain_api_out_file(tmp):
    from reprolib.explain import explain_sweep

    return explain_sweep(tmp / "nothing", tmp / "afile", progress=False)


def _teacher_file(tmp):
    from reprolib.teacher import load_teacher_file

    return load_teacher_file(str(tmp / "crafted.pt"))


# (id, setup(tmp) or None, call(tmp), expected words)
API_ROWS = [
    ("temperature-string", None, _make(temperature="4"), "temperature='4' must be a number"),
    ("lr-string", None, _make(lr="1e-3"), "lr='1e-3' must be a number"),
    ("seed-float", None, _make(seed=1.5), "seed=1.5 must be an integer"),
    ("seed-bool", None, _make(seed=True), "seed=True must be an integer, not bool"),
    ("weight-decay-string", None, _make(weight_decay="x"), "weight_decay='x' must be a number"),
    ("weight-decay-negative", None, _make(weight_decay=-1.0), "weight_decay=-1.0"),
    ("lr-gamma-negative", None, _make(lr_gamma=-1), "lr_gamma=-1 must be in (0, 1]"),
    ("lr-gamma-above-one", None, _make(lr_gamma=2.0), "lr_gamma=2.0"),
    ("lr-inf", None, _make(lr=float("inf")), "lr=inf must be > 0"),
    ("temperature-nan", None, _make(temperature=float("nan")), "temperature=nan"),
    ("epochs-float", None, _make(epochs=2.0), "epochs=2.0 must be an integer"),
    ("epochs-bool", None, _make(epochs=True), "epochs=True must be an integer"),
    ("rho-bool", None, _make(contamination_rate=True), "contamination_rate=True must be a number"),
    ("rho-string", None, _make(contamination_rate="0.5"), "contamination_rate='0.5' must be a number"),
    ("pool-float", None, _make(pool_per_class=10.0), "pool_per_class=10.0 must be an integer"),
    ("augment-int", None, _make(augment=1), "augment=1 must be true or false"),
    ("classes-floats", None, _make(subtask_classes=(0.0, 2.0)), "subtask_classes=(0.0, 2.0) must be a list"),
    ("layer-pairs-strings", None, _make(method="at", layer_pairs=("layer1",)), "layer_pairs"),
    ("crop-scale-one-number", None, _make(crop_scale=(0.5,)), "crop_scale=(0.5,) must be a pair"),
    ("teacher-weights-mini", None, _make(teacher_weights="w.pth"), "teacher_weights is for the paper world"),
    ("from-dict-epochs-string", None, _from_dict_bad, "epochs='10' must be an integer"),
    ("replace-lr-string", None, _replace_bad, "lr='fast' must be a number"),
    ("train-out-file", _file, _train("afile"), "exists and is not a folder"),
    ("train-out-under-file", _file, _train("afile/run"), "is a file, not a folder"),
    ("train-threads-zero", None, _train(threads=0), "threads=0 must be a positive integer"),
    ("sweep-out-file", _file, _sweep_api("afile"), "exists and is not a folder"),
    ("sweep-threads-bool", None, _sweep_api("sw", execution=dict(threads=True)), "threads=True"),
    ("sweep-execution-string", None, _sweep_api("sw", execution="cpu"), "must be a reprolib.devices.Execution"),
    ("execution-precision", None, _execution(precision="fp16"), "unknown precision 'fp16'; choose one of fp32, bf16"),
    ("execution-compile-string", None, _execution(compile="no"), "compile='no' must be true or false"),
    ("execution-stack-string", None, _execution(stack="on"), "stack='on' must be true, false or None"),
    ("explain-out-file", _file, _explain_api_out_file, "exists and is not a folder"),
    ("load-student-crafted", _crafted_run, _load_student, "pickled Python objects"),
    ("teacher-file-crafted", _crafted_pt, _teacher_file, "pickled Python objects"),
    ("read-idx-not-gzip", _bad_gz, _read_idx, "is not a gzip file"),
]


@pytest.mark.parametrize("setup, call, message", [r[1:] for r in API_ROWS], ids=[r[0] for r in API_ROWS])
def test_api_bad_input(setup, call, message, tmp_path, monkeypatch, smoke_teacher):
    monkeypatch.chdir(tmp_path)
    if setup is not None:
        setup(tmp_path)
    before, temps = _tree(tmp_path), _cache_temps()
    with pytest.raises(ReproError) as e:
        call(tmp_path)
    text = str(e.value)
    assert message in text, text
    assert len(text.strip().splitlines()) == 1, text     # one line after "error: "
    assert not (tmp_path / "PWNED").exists(), "a crafted file ran its code"
    assert _tree(tmp_path) == before
    assert _cache_temps() == temps


def test_the_table_has_at_least_40_rows():
    assert len(CLI_ROWS) + len(API_ROWS) >= 40
    assert len({r[0] for r in CLI_ROWS}) == len(CLI_ROWS)


@pytest.mark.parametrize("args, setup, message", [
    (TRAIN + ["--out", "{tmp}/afile"], _file, "exists and is not a folder"),
    (["teacher", "--recipe", "smoke", "--epochs", "-1", "--quiet"], None, "--epochs -1"),
], ids=["train-out-is-a-file", "teacher-epochs-negative"])
def test_cli_bad_input_in_a_real_process(args, setup, message, tmp_path):
    """The same contract through ``python -m reprolib`` (exit status, stderr, stdout)."""
    if setup:
        setup(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    before = _tree(tmp_path)
    res = subprocess.run([sys.executable, "-m", "reprolib", *argv], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    _assert_clean_error(res.returncode, res.stdout, res.stderr, message, before, _tree(tmp_path))

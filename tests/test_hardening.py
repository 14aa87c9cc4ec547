"""Regression tests for the findings of issue 11 (one or more per finding).

Each of them fails on the code before the fix: code ran from a crafted file,
a traceback instead of an error line, junk data silently accepted, a truncated
checkpoint counted as finished, orphaned workers, stray temporary files, bare
NaN in JSON, Ray on every interface, thread counts mixed in one sweep, files
unreadable by collaborators. The bad-input table is ``tests/test_bad_inputs.py``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _fake_runner import fake_train_run  # noqa: E402
from test_bad_inputs import crafted_file  # noqa: E402

from reprolib import io, procs  # noqa: E402
from reprolib.devices import Execution  # noqa: E402
from reprolib.errors import ReproError  # noqa: E402
from reprolib.grids import expand_grid  # noqa: E402
from reprolib.results import write_results  # noqa: E402
from reprolib.rundirs import check_run  # noqa: E402
from reprolib.sweep import run_sweep  # noqa: E402


def _strict_loads(text: str):
    def refuse(name):
        raise ValueError(f"bare {name} in JSON")
    return json.loads(text, parse_constant=refuse)


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    env.update({k: str(v) for k, v in extra.items()})
    return env


# ---------------------------------------------------------------------------
# 1. No code from a data folder
def test_mnist_bank_cache_never_runs_code(paper_root, tmp_path):
    from reprolib.sources import mnist_bank

    cache = io.cache_dir("data") / "mnist_bank_13.pt"
    crafted_file(cache, tmp_path / "PWNED")
    bank = mnist_bank(13, paper_root.mnist)          # the crafted cache is ignored and rebuilt
    assert not (tmp_path / "PWNED").exists()
    assert tuple(bank.images.shape[1:]) == (13, 13)
    again = mnist_bank(13, paper_root.mnist)          # and the rebuilt cache loads (weights only)
    assert torch.equal(again.images, bank.images)


def test_a_teacher_file_is_a_state_dict(tmp_path):
    from reprolib.models import mini_teacher
    from reprolib.teacher import load_teacher_file

    torch.manual_seed(0)
    model = mini_teacher(10)
    torch.save(model.state_dict(), tmp_path / "mine.pt")
    loaded = load_teacher_file(str(tmp_path / "mine.pt"))
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    torch.save(model, tmp_path / "pickled-module.pt")   # the old format is refused, not run
    with pytest.raises(ReproError, match="pickled Python objects"):
        load_teacher_file(str(tmp_path / "pickled-module.pt"))


# ---------------------------------------------------------------------------
# 3. The decoded Fashion-MNIST cache follows its source files
def _fashion_sources() -> Path:
    from reprolib.sources import fashion_mnist_folder

    return fashion_mnist_folder(download=False)


def test_fashion_cache_is_tied_to_its_sources(tmp_path, monkeypatch):
    import reprolib.sources as data

    src = tmp_path / "src"
    src.mkdir()
    real = _fashion_sources()
    for f in real.iterdir():
        (src / f.name).symlink_to(f)
    monkeypatch.setenv("REPROLIB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPROLIB_FASHION_MNIST", str(src))
    reads = []
    real_read = data.read_idx
    monkeypatch.setattr(data, "read_idx", lambda p: reads.append(Path(p).name) or real_read(p))
    first = data.load_fashion_mnist()
    assert len(reads) == 4
    data.load_fashion_mnist()
    assert len(reads) == 4                          # cached
    # A different source folder with junk in it: an error, not the stale cache.
    junk = tmp_path / "junk"
    junk.mkdir()
    for f in src.iterdir():
        (junk / f.name).write_bytes(b"junk")
    monkeypatch.setenv("REPROLIB_FASHION_MNIST", str(junk))
    with pytest.raises(ReproError, match="junk"):
        data.load_fashion_mnist()
    # Back to the real files: the cache is still good.
    monkeypatch.setenv("REPROLIB_FASHION_MNIST", str(src))
    n = len(reads)
    again = data.load_fashion_mnist()
    assert len(reads) == n and torch.equal(again["test_y"], first["test_y"])


# ---------------------------------------------------------------------------
# 4. A truncated student.pt is not a finished run
def test_equal_checkpoints_have_equal_sha256(tmp_path):
    state = {"student": {"w": torch.arange(10.0)}, "config": {"a": 1}}
    assert io.torch_save(state, tmp_path / "a.pt") == io.torch_save(state, tmp_path / "b" / "c.pt")
    assert io.sha256_file(tmp_path / "a.pt") == io.sha256_file(tmp_path / "b" / "c.pt")


def test_truncated_checkpoint_is_not_finished(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    sha = io.torch_save({"student": {"w": torch.zeros(100)}, "config": {}}, run / "student.pt")
    assert io.verify_checkpoint(run / "student.pt") is None
    assert io.verify_checkpoint(run / "student.pt", sha) is None
    data = (run / "student.pt").read_bytes()
    (run / "student.pt").write_bytes(data[:len(data) // 2])
    assert "does not load" in io.verify_checkpoint(run / "student.pt")
    assert "does not match its recorded sha256" in io.verify_checkpoint(run / "student.pt", sha)

    # In a sweep: the truncated run is redone, and the sweep says why.
    grid = "smoke"
    out = tmp_path / "sw"
    run_sweep(grid, out, execution=Execution(threads=1), run_fn=fake_train_run, progress=False)
    victim = out / "runs" / expand_grid(grid)[0].key()
    (victim / "student.pt").write_bytes((victim / "student.pt").read_bytes()[:5])
    assert "sha256" in check_run(victim)
    capsys.readouterr()
    res = run_sweep(grid, out, execution=Execution(threads=1), run_fn=fake_train_run, progress=False)
    assert f"redoing run {victim.name}" in capsys.readouterr().err
    assert check_run(victim) is None and len(res) == 4


def test_metric_of_the_wrong_type_is_not_finished(tmp_path):
    out = tmp_path / "sw"
    run_sweep("smoke", out, execution=Execution(threads=1), run_fn=fake_train_run, progress=False)
    run = out / "runs" / expand_grid("smoke")[0].key()
    m = json.loads((run / "metrics.json").read_text())
    m["best_epoch"] = "3"
    (run / "metrics.json").write_text(json.dumps(m))
    assert check_run(run) == "metrics.json has best_epoch='3', not an integer"


# ---------------------------------------------------------------------------
# 5. Workers die with their driver; no sweep starts beside an earlier one's processes
def _children(pid: int) -> list[int]:
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
                kids.append(int(d.name))
    return kids


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_two_worker_sweep_leaves_no_process_and_no_temp_file(tmp_path):
    out = tmp_path / "sw"
    log = tmp_path / "started.log"
    code = textwrap.dedent(f"""
        import sys
        from _fake_runner import fake_train_run
        from reprolib.sweep import main
        sys.exit(main(["sweep", "--preset", "smoke", "--out", {str(out)!r}, "--device", "cpu",
                       "--workers", "2", "--threads", "1", "--no-progress"], run_fn=fake_train_run))
    """)
    env = _env(FAKE_RUNNER_LOG=log, FAKE_RUNNER_SLEEP=30)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.1)
    workers = [int(line.split()[1]) for line in log.read_text().splitlines()]
    family = set(_children(proc.pid)) | set(workers)      # pool workers and the resource tracker
    assert len(set(workers)) == 2 and family
    # A second sweep is refused while they run (the driver holds the folder lock).
    with pytest.raises(ReproError, match="another sweep is writing"):
        run_sweep("smoke", out, execution=Execution(threads=1), run_fn=fake_train_run, progress=False)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 5
    while time.time() < deadline and any(procs.is_alive(p) for p in family):
        time.sleep(0.1)
    alive = [p for p in family if procs.is_alive(p) and Path(f"/proc/{p}/stat").exists()
             and Path(f"/proc/{p}/stat").read_text().split()[2] != "Z"]
    assert alive == [], f"still alive 5 s after kill -9 of the driver: {alive}"
    # A temp file a kill left behind is removed by the resumed sweep.
    (out / ".results.csv.abc123.tmp").write_text("half")
    env["FAKE_RUNNER_SLEEP"] = "0"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert list(out.rglob("*.tmp")) == []
    assert len(pd.read_csv(out / "results.csv")) == 4


def test_a_finished_two_worker_sweep_resumes_with_nothing_to_do(tmp_path):
    out = tmp_path / "sw"
    one = Execution(threads=1)
    first = run_sweep("smoke", out, execution=one, run_fn=fake_train_run, progress=False, workers=2)
    again = run_sweep("smoke", out, execution=one, run_fn=fake_train_run, progress=False, workers=2)
    assert again.attrs["sweep"]["reused"] == 4 and len(again) == len(first) == 4


def test_a_sweep_refuses_to_start_while_a_worker_of_an_earlier_one_runs(tmp_path):
    out = tmp_path / "sw"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from reprolib import procs; "
         f"procs.hold_folder({str(out)!r}); print('held', flush=True); time.sleep(60)"],
        cwd=ROOT, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ReproError, match=rf"processes of an earlier sweep still run .*pid {holder.pid}"):
            run_sweep("smoke", out, execution=Execution(threads=1), run_fn=fake_train_run, progress=False)
        assert not (out / "runs").exists()
    finally:
        holder.kill()
        holder.wait()
    run_sweep("smoke", out, execution=Execution(threads=1), run_fn=fake_train_run, progress=False)   # now it may


def test_a_worker_dies_when_its_parent_dies(tmp_path):
    """die_with_parent: the grandchild ends when its parent (not the test) is killed."""
    pidfile = tmp_path / "child.pid"
    parent = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "import os, time; from reprolib import procs; procs.die_with_parent(); "
            "open({str(pidfile)!r}, 'w').write(str(os.getpid())); time.sleep(60)"])
        time.sleep(60)
    """)], cwd=ROOT, env=_env())
    deadline = time.time() + 60
    while time.time() < deadline and not (pidfile.exists() and pidfile.read_text()):
        time.sleep(0.1)
    child = int(pidfile.read_text())
    started = procs.start_time(child)
    parent.kill()
    parent.wait()
    deadline = time.time() + 5
    while time.time() < deadline and procs.is_alive(child, started):
        time.sleep(0.1)
    assert not procs.is_alive(child, started) or \
        Path(f"/proc/{child}/stat").read_text().split()[2] == "Z"


# ---------------------------------------------------------------------------
# 6. Temp files; results.csv and summary.csv together
def test_stale_temp_files_are_removed_at_sweep_start(tmp_path):
    out = tmp_path / "sw"
    run_sweep("smoke", out, execution=Execution(threads=1), run_fn=fake_train_run, progress=False)
    run = next((out / "runs").iterdir())
    for p in (out / ".summary.csv.x1.tmp", out / ".sweep.json.x2.tmp", run / ".student.pt.x3.tmp"):
        p.write_text("left by a kill")
    (run / "notes.tmp").write_text("not ours: kept")
    run_sweep("smoke", out, execution=Execution(threads=1), run_fn=fake_train_run, progress=False)
    assert sorted(p.name for p in out.rglob("*.tmp")) == ["notes.tmp"]


def test_results_and_summary_are_written_together(tmp_path):
    out = tmp_path / "sw"
    res = run_sweep("smoke", out, execution=Execution(threads=1), run_fn=fake_train_run, progress=False)
    before = {n: (out / n).read_text() for n in ("results.csv", "summary.csv")}
    with pytest.raises(ReproError):
        write_results(res.drop(columns=["val_accuracy"]), out)   # the summary cannot be made
    assert {n: (out / n).read_text() for n in before} == before
    # The lower level: a failure while writing the second file publishes neither.
    (out / "afile").write_text("a file, not a folder")
    with pytest.raises(OSError):
        io.write_texts({out / "results.csv": "new", out / "afile" / "summary.csv": "y"})
    assert (out / "results.csv").read_text() == before["results.csv"]
    assert not list(out.glob(".*.tmp"))


# ---------------------------------------------------------------------------
# 7. Strict JSON in files and on stdout; notices on stderr
def test_strict_json_in_files_and_on_stdout(tmp_path, capsys):
    obj = {"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": np.float32("nan"),
           "d": np.array([1.0, np.nan])}
    io.write_json(tmp_path / "x.json", obj)
    assert _strict_loads((tmp_path / "x.json").read_text()) == {
        "a": None, "b": [None, None, 1.5], "c": None, "d": [1.0, None]}
    io.print_json(obj)
    assert _strict_loads(capsys.readouterr().out)["a"] is None


def test_a_rho_0_run_writes_strict_json(tmp_path, capsys, smoke_teacher):
    from reprolib import cli

    out = tmp_path / "run"
    assert cli.main(["train", "--preset", "smoke", "--rho", "0", "--device", "cpu", "--threads", "1",
                     "--epochs", "1", "--out", str(out), "--quiet"]) == 0
    shown = _strict_loads(capsys.readouterr().out)
    metrics = _strict_loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy_with_digit"] is None and shown["predicts_digit"] is None
    assert metrics["student_sha256"] == io.sha256_file(out / "student.pt")
    assert check_run(out, metrics["config_key"]) is None


def test_corrupt_teacher_cache_notice_goes_to_stderr(tmp_path, monkeypatch, capsys):
    from reprolib import teacher

    monkeypatch.setenv("REPROLIB_CACHE", str(tmp_path / "cache"))
    tcfg = teacher.TeacherConfig(train_subset=64, test_subset=64, batch_size=32)
    folder = teacher.teacher_dir(tcfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "teacher.pt").write_bytes(b"corrupt")
    (folder / "manifest.json").write_text("{}")
    teacher.train_mini_teacher(tcfg, progress=False)
    out, err = capsys.readouterr()
    assert out == "" and "is unreadable" in err and "retraining" in err


# ---------------------------------------------------------------------------
# 8. Ray without an address: loopback only, session folder in the project cache
def test_ray_local_instance_is_private_and_on_loopback(monkeypatch):
    import shutil
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    monkeypatch.setenv("REPROLIB_CACHE", str(short))
    kw = procs.ray_local_kwargs(2)
    shutil.rmtree(short)
    assert kw["_node_ip_address"] == "127.0.0.1" and kw["include_dashboard"] is False
    assert kw["address"] == "local" and kw["num_cpus"] == 2
    assert Path(kw["_temp_dir"]) == short / "ray"
    monkeypatch.setenv("REPROLIB_CACHE", str(short))
    kw = procs.ray_local_kwargs(2)
    assert (Path(kw["_temp_dir"]).stat().st_mode & 0o077) == 0     # not world-writable
    env = procs.ray_local_env()
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"         # keeps 127.0.0.1 as node IP
    shutil.rmtree(short)
    monkeypatch.setenv("REPROLIB_CACHE", "/" + "x" * 60)            # too long for Unix sockets
    kw = procs.ray_local_kwargs(1)
    assert len(kw["_temp_dir"]) < 40 and (Path(kw["_temp_dir"]).stat().st_mode & 0o077) == 0


@pytest.mark.slow
def test_ray_sweep_listens_on_loopback_only(tmp_path, monkeypatch):
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("ray")
    import threading

    import shutil

    cache = Path("/tmp") / f"rl-{os.getpid()}"            # short: Ray's socket paths
    monkeypatch.setenv("REPROLIB_CACHE", str(cache))
    monkeypatch.setenv("FAKE_RUNNER_SLEEP", "4")
    seen: list = []
    done = threading.Event()

    def sample():
        me = psutil.Process()
        while not done.is_set():
            kids = {p.pid for p in me.children(recursive=True)}
            for c in psutil.net_connections(kind="inet"):
                if c.status == "LISTEN" and c.pid in kids:
                    seen.append(c.laddr.ip)
            time.sleep(0.5)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        run_sweep("smoke", tmp_path / "ray", execution=Execution(threads=1), backend="ray", workers=1,
                  run_fn=fake_train_run, progress=False, limit=2)
    finally:
        done.set()
        t.join()
        shutil.rmtree(cache, ignore_errors=True)
    assert seen, "no Ray listener was seen"
    assert {ip.replace("::ffff:", "") for ip in seen} == {"127.0.0.1"}, set(seen)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_ray_sweep_leaves_no_ray_process(tmp_path):
    psutil = pytest.importorskip("psutil")
    pytest.importorskip("ray")
    import shutil

    out, log = tmp_path / "sw", tmp_path / "started.log"
    cache = Path("/tmp") / f"rk-{os.getpid()}"            # short: Ray's socket paths
    code = textwrap.dedent(f"""
        import sys
        from _fake_runner import fake_train_run
        from reprolib.sweep import main
        sys.exit(main(["sweep", "--preset", "smoke", "--out", {str(out)!r}, "--device", "cpu",
                       "--backend", "ray", "--workers", "1", "--threads", "1", "--no-progress"],
                      run_fn=fake_train_run))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT,
                            env=_env(FAKE_RUNNER_LOG=log, FAKE_RUNNER_SLEEP=60, REPROLIB_CACHE=cache),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (log.exists() and log.read_text().strip()):
            time.sleep(0.2)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert any("raylet" in p.name() for p in family)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        deadline = time.time() + 5
        alive = family
        while time.time() < deadline and alive:
            alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            time.sleep(0.2)
        assert alive == [], f"Ray processes outlived the driver: {[(p.pid, p.name()) for p in alive]}"
    finally:
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(Exception):
                p.kill()
        shutil.rmtree(cache, ignore_errors=True)


# ---------------------------------------------------------------------------
# 9. A sweep does not mix thread counts (or devices) without being told
def test_sweep_refuses_to_mix_thread_counts(tmp_path, capsys):
    out = tmp_path / "sw"
    run_sweep("smoke", out, execution=Execution(threads=1), run_fn=fake_train_run, progress=False, limit=2)
    recorded = json.loads((out / "sweep.json").read_text())["numerics"]
    assert (recorded["threads"], recorded["device"]) == (1, "cpu")
    assert recorded["precision"] in ("float32", "fp32")
    with pytest.raises(ReproError, match=r"2 with threads=1 on cpu.*--allow-mixed"):
        run_sweep("smoke", out, execution=Execution(threads=2), run_fn=fake_train_run, progress=False)
    assert len(list((out / "runs").iterdir())) == 2            # refused before any work
    res = run_sweep("smoke", out, execution=Execution(threads=2), run_fn=fake_train_run, progress=False,
                    allow_mixed=True)
    assert len(res) == 4
    run_sweep("smoke", out, execution=Execution(threads=3), run_fn=fake_train_run, progress=False)   # nothing to compute


# ---------------------------------------------------------------------------
# 10. Files get the user's umask
@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_published_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        io.write_json(tmp_path / "a.json", {"x": 1})
        io.write_text(tmp_path / "b.txt", "x")
        io.torch_save({"x": torch.zeros(1)}, tmp_path / "c.pt")
    finally:
        os.umask(old)
    for name in ("a.json", "b.txt", "c.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask

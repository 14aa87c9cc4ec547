"""Sweeps: grids, config hashing, resumption, corrupt folders, backends, λ selection.

Most tests use ``tests/_fake_runner.py``, a deterministic stand-in for the
trainer, so that they take seconds; one test runs the real smoke grid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
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

import reprolib.config as config_module
from reprolib import sweep
from reprolib.executors import cpu_count
from reprolib.results import RESULT_COLUMNS
from reprolib.config import DataConfig, RunConfig, make_config
from reprolib.devices import Execution
from reprolib.errors import ReproError
from reprolib.grids import expand_grid, SWEEP_PRESETS, SweepGrid
from reprolib.results import select_lambda
from reprolib.rundirs import check_run
from reprolib.sweep import main, run_sweep

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _fake_runner import fake_train_run  # noqa: E402

# Columns that depend on wall time, not on the config.
TIMING = ["seconds"]


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")])
    env.update({k: str(v) for k, v in extra.items()})
    return env


@pytest.fixture
def fake_env(tmp_path, monkeypatch):
    """The fake runner's log file, and no sleep unless a test asks for one."""
    log = tmp_path / "started.log"
    monkeypatch.setenv("FAKE_RUNNER_LOG", str(log))
    monkeypatch.delenv("FAKE_RUNNER_SLEEP", raising=False)
    monkeypatch.delenv("FAKE_RUNNER_FAIL", raising=False)
    return log


def _started(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def _tiny_grid(**changes) -> SweepGrid:
    base = dict(name="tiny", run_preset="smoke", methods=("kd", "at"), rhos=(0.0, 1.0),
                seeds=(1, 2), lambdas=(1.0, 10.0))
    base.update(changes)
    return SweepGrid(**base)


# ---------------------------------------------------------------------------
# λ selection (D6, D3)
def _hand_table() -> pd.DataFrame:
    rows = []

    def add(method, rho, lam, seed, val, test, nval, ntest, pool=100, **extra):
        rows.append(dict(method=method, rho=rho, seed=seed, lambda_layer=lam, pool_per_class=pool,
                         val_accuracy=val, test_accuracy=test, nonoracle_val_accuracy=nval,
                         nonoracle_test_accuracy=ntest, test_accuracy_with_digit=extra.get("wd", 0.5),
                         test_accuracy_digit_differs=extra.get("dd", 0.5),
                         predicts_digit=extra.get("pd", 0.1)))

    # at, rho 0.5: oracle picks lambda 10 (val means .70 vs .725), non-oracle picks 1.
    add("at", 0.5, 1.0, 1, 0.60, 0.90, 0.90, 0.30)
    add("at", 0.5, 1.0, 2, 0.80, 0.95, 0.90, 0.50)
    add("at", 0.5, 10.0, 1, 0.70, 0.50, 0.10, 0.99, wd=0.2, dd=0.1, pd=0.6)
    add("at", 0.5, 10.0, 2, 0.75, 0.70, 0.10, 0.99, wd=0.4, dd=0.3, pd=0.8)
    # vid, rho 0: lambdas 1 and 10 tie on val (0.5); 0.1 is worse. Tie -> the smaller, 1.
    add("vid", 0.0, 0.1, 1, 0.10, 0.11, 0.10, 0.11)
    add("vid", 0.0, 0.1, 2, 0.10, 0.11, 0.10, 0.11)
    add("vid", 0.0, 1.0, 1, 0.40, 0.61, 0.50, 0.61)
    add("vid", 0.0, 1.0, 2, 0.60, 0.63, 0.50, 0.63)
    add("vid", 0.0, 10.0, 1, 0.50, 0.99, 0.50, 0.99)
    add("vid", 0.0, 10.0, 2, 0.50, 0.99, 0.50, 0.99)
    # kd has no lambda (NaN) and here one seed: std 0.
    add("kd", 1.0, math.nan, 1, 0.30, 0.40, 0.20, 0.25)
    # The same method and rho at another pool size is a group of its own.
    add("at", 0.5, 1.0, 1, 0.10, 0.20, 0.90, 0.30, pool=25)
    add("at", 0.5, 10.0, 1, 0.20, 0.40, 0.10, 0.99, pool=25)
    return pd.DataFrame(rows)


def _row(summary, method, rho, pool=100):
    sel = summary[(summary.method == method) & (summary.rho == rho) & (summary.pool_per_class == pool)]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_select_lambda_oracle():
    table = _hand_table()
    before = table.copy()
    s = select_lambda(table, "oracle")
    pd.testing.assert_frame_equal(table, before)          # pure
    assert (s.selection == "oracle").all()
    assert len(s) == 4
    at = _row(s, "at", 0.5)
    assert at.lambda_layer == 10.0
    assert at.n_seeds == 2 and at.n_lambdas == 2
    assert at.val_accuracy_mean == pytest.approx(0.725)
    assert at.test_accuracy_mean == pytest.approx(0.60)
    assert at.test_accuracy_std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert at.test_accuracy_with_digit_mean == pytest.approx(0.3)
    assert at.test_accuracy_digit_differs_mean == pytest.approx(0.2)
    assert at.predicts_digit_mean == pytest.approx(0.7)
    assert at.predicts_digit_std == pytest.approx(np.std([0.6, 0.8], ddof=1))
    vid = _row(s, "vid", 0.0)
    assert vid.lambda_layer == 1.0                          # tie -> smaller lambda
    assert vid.test_accuracy_mean == pytest.approx(0.62)
    kd = _row(s, "kd", 1.0)
    assert math.isnan(kd.lambda_layer) and kd.n_seeds == 1
    assert kd.test_accuracy_mean == pytest.approx(0.40) and kd.test_accuracy_std == 0.0
    small = _row(s, "at", 0.5, pool=25)
    assert small.lambda_layer == 10.0 and small.test_accuracy_mean == pytest.approx(0.40)


def test_select_lambda_nonoracle():
    s = select_lambda(_hand_table(), "nonoracle")
    at = _row(s, "at", 0.5)
    assert at.selection == "nonoracle"
    assert at.lambda_layer == 1.0
    assert at.val_accuracy_mean == pytest.approx(0.90)
    assert at.test_accuracy_mean == pytest.approx(0.40)    # nonoracle_test_accuracy
    assert at.test_accuracy_std == pytest.approx(np.std([0.3, 0.5], ddof=1))
    # No nonoracle_* split columns: NaN, not the oracle checkpoint's numbers.
    assert math.isnan(at.test_accuracy_with_digit_mean)
    vid = _row(s, "vid", 0.0)
    assert vid.lambda_layer == 1.0                          # 1 and 10 tie at 0.5
    table = _hand_table().assign(nonoracle_predicts_digit=0.25)
    assert _row(select_lambda(table, "nonoracle"), "at", 0.5).predicts_digit_mean == pytest.approx(0.25)


def test_select_lambda_rejects_bad_input():
    with pytest.raises(ReproError, match="selection"):
        select_lambda(_hand_table(), "best")
    with pytest.raises(ReproError, match="nonoracle_val_accuracy"):
        select_lambda(_hand_table().drop(columns=["nonoracle_val_accuracy"]), "nonoracle")


# ---------------------------------------------------------------------------
# Grids
def test_expand_grid_counts_and_kd_has_no_lambda():
    counts = {"smoke": 4, "quick": 3 * 3 * (1 + 4 * 4), "full": 6 * 3 * (1 + 4 * 7),
              "calibration": 2 * 3 * 4 * (1 + 1 * 1), "calibration-full": 2 * 3 * 5 * (1 + 1 * 4),
              "kd-ablation": 2 * 3 * (1 + 1 * 1), "aligned-layers": 3 * 2 * 2 * 3 * 4,
              "biased-teacher": 2 * 3 * 5}
    presets = {"smoke": "smoke", "quick": "quick", "full": "full", "calibration": "quick",
               "calibration-full": "quick", "kd-ablation": "quick", "aligned-layers": "quick",
               "biased-teacher": "quick"}
    for name, n in counts.items():
        cells = expand_grid(name, "mini")
        assert len(cells) == n, name
        assert len({c.key() for c in cells}) == n
        assert {c.preset for c in cells} == {presets[name]}
        assert all(c.lambda_layer == 0.0 for c in cells if c.method == "kd")
    full = SWEEP_PRESETS["full"]
    assert full.lambdas == (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)
    assert full.rhos == (0.0, 0.125, 0.25, 0.5, 0.75, 1.0) and full.seeds == (1, 2, 3)
    calib = expand_grid("calibration")
    assert sorted({c.data.train_fraction for c in calib}) == [0.08, 0.16, 0.32, 0.64]
    assert {c.data.pool_per_class for c in calib} == {250}
    assert sorted({c.data.train_fraction for c in expand_grid("calibration-full")}) == [0.08, 0.16, 0.32, 0.64, 0.8]
    assert {c.student for c in expand_grid("kd-ablation")} == {"mini-student-wide"}
    # Seed-major order: a partial sweep has whole seeds done.
    quick = expand_grid("quick")
    assert [c.seed for c in quick[:27]] == [1] * 27
    with pytest.raises(ReproError, match="unknown sweep preset"):
        expand_grid("huge")
    with pytest.raises(ReproError, match="unknown method"):
        _tiny_grid(methods=("kd", "fitnet"))


# ---------------------------------------------------------------------------
# Config hashing
def test_config_key_stable_across_processes():
    code = ("from reprolib.config import make_config; "
            "print(make_config('mini', 'quick', method='vid', contamination_rate=0.5, seed=2, "
            "lambda_layer=10.0, pool_per_class=50).key())")
    keys = []
    for hash_seed in ("1", "12345"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             cwd=ROOT, env=_env(PYTHONHASHSEED=hash_seed), timeout=120)
        keys.append(out.stdout.strip())
    here = make_config("mini", "quick", method="vid", contamination_rate=0.5, seed=2,
                       lambda_layer=10.0, pool_per_class=50).key()
    assert keys == [here, here]
    assert len(here) == 16 and int(here, 16) >= 0


def _mutate(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value + 0.25
    if isinstance(value, str):
        return value + "-x"
    if value is None:
        return 7
    if isinstance(value, tuple):
        return value[:-1] if len(value) > 1 else value + value
    raise AssertionError(f"no mutation for {value!r}")


def test_config_key_sensitive_to_every_field(monkeypatch):
    base = make_config("mini", "quick", method="subdistill")
    keys = {base.key()}
    n = 0
    for f in dataclasses.fields(RunConfig):
        if f.name == "data":
            continue
        changed = dataclasses.replace(base, **{f.name: _mutate(getattr(base, f.name))})
        assert changed.key() != base.key(), f"RunConfig.{f.name} does not change the key"
        keys.add(changed.key())
        n += 1
    for f in dataclasses.fields(DataConfig):
        data = dataclasses.replace(base.data, **{f.name: _mutate(getattr(base.data, f.name))})
        changed = dataclasses.replace(base, data=data)
        assert changed.key() != base.key(), f"DataConfig.{f.name} does not change the key"
        keys.add(changed.key())
        n += 1
    assert len(keys) == n + 1          # every change gives its own key
    monkeypatch.setattr(config_module, "CODE_VERSION", "another-version")
    assert base.key() not in keys


# ---------------------------------------------------------------------------
# Run folders and resumption
def test_sweep_writes_tables_and_reuses_finished_runs(tmp_path, fake_env, capsys):
    grid = _tiny_grid()
    out = tmp_path / "sw"
    res = run_sweep(grid, out, run_fn=fake_train_run, progress=False)
    cells = expand_grid(grid)
    assert len(cells) == 2 * 2 * (1 + 2) == len(res)
    assert sorted(_started(fake_env)) == sorted(c.key() for c in cells)
    table = pd.read_csv(out / "results.csv")
    assert list(table.columns) == list(RESULT_COLUMNS)
    assert table.loc[table.method == "kd", "lambda_layer"].isna().all()
    assert set(table.loc[table.method == "at", "lambda_layer"]) == {1.0, 10.0}
    for _, row in table.iterrows():
        assert check_run(out / row.run_dir) is None
        metrics = json.loads((out / row.run_dir / "metrics.json").read_text())
        assert row.test_accuracy == pytest.approx(metrics["test_accuracy"])
        assert metrics["threads"] == cpu_count()      # workers=1: all cores
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.selection) == {"oracle", "nonoracle"}
    assert len(summary) == 2 * 2 * 2                        # 2 selections x 2 methods x 2 rho
    pd.testing.assert_frame_equal(
        summary[summary.selection == "oracle"].reset_index(drop=True),
        select_lambda(table, "oracle"), check_dtype=False)

    capsys.readouterr()
    again = run_sweep(grid, out, run_fn=fake_train_run, progress=False)
    err = capsys.readouterr().err
    assert "12 reused" in err and "0 to compute" in err
    assert len(_started(fake_env)) == len(cells)            # nothing trained twice
    pd.testing.assert_frame_equal(again, res)


def test_corrupt_run_folders_are_detected_and_redone(tmp_path, fake_env, capsys):
    grid = _tiny_grid(seeds=(1,))
    out = tmp_path / "sw"
    run_sweep(grid, out, run_fn=fake_train_run, progress=False)
    cells = expand_grid(grid)
    dirs = [out / "runs" / c.key() for c in cells]
    metrics = dirs[0] / "metrics.json"
    metrics.write_text(metrics.read_text()[:40])                       # truncated
    (dirs[1] / "student.pt").unlink()                                  # missing checkpoint
    (dirs[2] / "student.pt").write_bytes(b"")                          # empty checkpoint
    m = json.loads((dirs[3] / "metrics.json").read_text())
    m["config_key"] = "0" * 16                                         # someone else's metrics
    (dirs[3] / "metrics.json").write_text(json.dumps(m))
    m = json.loads((dirs[4] / "metrics.json").read_text())
    del m["nonoracle_test_accuracy"]                                   # incomplete metrics
    (dirs[4] / "metrics.json").write_text(json.dumps(m))
    (dirs[5] / "stale.tmp").write_text("left behind")                  # finished: untouched
    expected = {0: "metrics.json is truncated", 1: "student.pt is missing",
                2: "student.pt is empty", 3: "config key", 4: "lacks nonoracle_test_accuracy"}
    for i, why in expected.items():
        assert why in check_run(dirs[i])
    assert check_run(dirs[5]) is None

    fake_env.unlink()
    capsys.readouterr()
    res = run_sweep(grid, out, run_fn=fake_train_run, progress=False)
    err = capsys.readouterr().err
    for i, why in expected.items():
        assert f"redoing run {cells[i].key()}" in err and why in err
    assert "5 of them redone" in err
    assert sorted(_started(fake_env)) == sorted(c.key() for c in cells[:5])
    assert all(check_run(d) is None for d in dirs)
    assert (dirs[5] / "stale.tmp").exists() and len(res) == len(cells)


def test_plan_reports_runs_of_other_grids_and_code_versions(tmp_path, fake_env, capsys, monkeypatch):
    out = tmp_path / "sw"
    run_sweep(_tiny_grid(seeds=(1,)), out, run_fn=fake_train_run, progress=False)   # 6 runs
    capsys.readouterr()
    run_sweep(_tiny_grid(seeds=(2,)), out, run_fn=fake_train_run, progress=False)
    err = capsys.readouterr().err
    assert f"6 finished runs in {out} belong to another grid or code version; " \
           "they are kept but not used" in err
    monkeypatch.setattr(config_module, "CODE_VERSION", "reprolib-next")
    monkeypatch.setattr("reprolib.CODE_VERSION", "reprolib-next")
    run_sweep(_tiny_grid(seeds=(2,)), out, run_fn=fake_train_run, progress=False)
    err = capsys.readouterr().err
    assert "0 reused" in err and "12 finished runs" in err and "12 made by another code version" in err
    assert len(list((out / "runs").iterdir())) == 18


def test_sigkill_mid_sweep_then_resume(tmp_path):
    out = tmp_path / "sw"
    log = tmp_path / "started.log"
    code = textwrap.dedent(f"""
        import sys
        from _fake_runner import fake_train_run
        from reprolib.sweep import main
        sys.exit(main(["sweep", "--preset", "smoke", "--out", {str(out)!r}, "--device", "cpu", "--workers", "1",
                       "--no-progress"], run_fn=fake_train_run))
    """)
    env = _env(FAKE_RUNNER_LOG=log, FAKE_RUNNER_SLEEP=3.0)
    env.pop("FAKE_RUNNER_FAIL", None)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Kill while the second run is in flight: one finished, one half-written.
    deadline = time.time() + 120
    while time.time() < deadline and len(_started(log)) < 2:
        time.sleep(0.05)
    time.sleep(2.2)              # past half-way (1.5 s): student.pt written, metrics not yet
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    first = _started(log)
    assert len(first) == 2, first
    cells = expand_grid("smoke")
    finished = [c.key() for c in cells if check_run(out / "runs" / c.key()) is None]
    assert finished == [first[0]]
    assert check_run(out / "runs" / first[1]) == "metrics.json is missing"

    env["FAKE_RUNNER_SLEEP"] = "0"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"redoing run {first[1]}" in done.stderr and "metrics.json is missing" in done.stderr
    assert "1 reused (finished earlier), 3 to compute" in done.stderr
    report = json.loads(done.stdout)
    assert report["cells"] == 4 and report["reused"] == 1 and report["computed"] == 3
    started = _started(log)
    # Every cell finished exactly once; only the interrupted run was started twice.
    assert sorted(set(started)) == sorted(c.key() for c in cells)
    assert started.count(first[0]) == 1
    assert started.count(first[1]) == 2
    assert len(started) == len(cells) + 1
    table = pd.read_csv(out / "results.csv")
    assert sorted(table.config_key) == sorted(c.key() for c in cells)
    assert all(check_run(out / d) is None for d in table.run_dir)


def test_failed_runs_are_reported_and_retried(tmp_path, fake_env, monkeypatch, capsys):
    grid = _tiny_grid(seeds=(1,), methods=("at",))
    cells = expand_grid(grid)
    bad = cells[1].key()
    monkeypatch.setenv("FAKE_RUNNER_FAIL", bad)
    out = tmp_path / "sw"
    with pytest.raises(ReproError, match=r"(?s)1 of 4 runs failed.*fake failure"):
        run_sweep(grid, out, run_fn=fake_train_run, progress=False)
    assert len(pd.read_csv(out / "results.csv")) == 3        # the others are kept
    monkeypatch.delenv("FAKE_RUNNER_FAIL")
    fake_env.unlink()
    res = run_sweep(grid, out, run_fn=fake_train_run, progress=False)
    assert _started(fake_env) == [bad] and len(res) == 4
    # Through main(): a ReproError becomes exit code 2 with a message on stderr.
    capsys.readouterr()
    assert main(["--preset", "smoke", "--out", str(out), "--workers", "0"]) == 2
    assert "workers=0 must be a positive integer" in capsys.readouterr().err


def test_limit_runs_the_first_cells(tmp_path, fake_env, capsys):
    res = run_sweep(_tiny_grid(), tmp_path / "sw", run_fn=fake_train_run, progress=False, limit=2)
    assert list(res.config_key) == [c.key() for c in expand_grid(_tiny_grid())[:2]]
    assert "the first 2 of 12 cells" in capsys.readouterr().err
    assert res.attrs["sweep"]["computed"] == 2


def test_one_sweep_per_folder(tmp_path, fake_env):
    out = tmp_path / "sw"
    with sweep._sweep_lock(out):
        with pytest.raises(ReproError, match="another sweep is writing"):
            run_sweep(_tiny_grid(), out, run_fn=fake_train_run, progress=False)


# ---------------------------------------------------------------------------
# Backends
def _comparable(path: Path) -> pd.DataFrame:
    return pd.read_csv(path).drop(columns=TIMING)


def test_process_pool_matches_serial_without_importing_ray(tmp_path, fake_env):
    grid = SWEEP_PRESETS["smoke"]
    run_sweep(grid, tmp_path / "serial", execution=Execution(threads=1), run_fn=fake_train_run, progress=False)
    code = textwrap.dedent(f"""
        import json, sys
        from _fake_runner import fake_train_run
        from reprolib.sweep import run_sweep
        if __name__ == "__main__":
            run_sweep("smoke", {str(tmp_path / "pool")!r}, workers=2, run_fn=fake_train_run,
                      progress=False)
            print(json.dumps({{"ray": "ray" in sys.modules}}))
    """)
    script = tmp_path / "pool_sweep.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"ray": False}
    pd.testing.assert_frame_equal(_comparable(tmp_path / "serial" / "results.csv"),
                                  _comparable(tmp_path / "pool" / "results.csv"))
    pids = {line.split()[1] for line in fake_env.read_text().splitlines()[4:]}
    assert str(os.getpid()) not in pids                     # the runs were in worker processes
    for d in (tmp_path / "pool" / "runs").iterdir():
        assert json.loads((d / "metrics.json").read_text())["threads"] == max(1, cpu_count() // 2)


@pytest.mark.slow
def test_ray_backend_matches_serial(tmp_path, fake_env, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    grid = SWEEP_PRESETS["smoke"]
    serial = run_sweep(grid, tmp_path / "serial", execution=Execution(threads=1), run_fn=fake_train_run, progress=False)
    ray_res = run_sweep(grid, tmp_path / "ray", execution=Execution(threads=1), backend="ray", workers=2,
                        run_fn=fake_train_run, progress=False)
    import ray

    assert not ray.is_initialized()                         # the local instance was shut down
    pd.testing.assert_frame_equal(_comparable(tmp_path / "serial" / "results.csv"),
                                  _comparable(tmp_path / "ray" / "results.csv"))
    pd.testing.assert_frame_equal(serial.drop(columns=TIMING), ray_res.drop(columns=TIMING))
    pids = {line.split()[1] for line in fake_env.read_text().splitlines()[4:]}
    assert str(os.getpid()) not in pids


# ---------------------------------------------------------------------------
# Command line
def test_register_cli_adds_the_sweep_subcommand():
    parser = argparse.ArgumentParser(prog="reprolib")
    sub = parser.add_subparsers(dest="command")
    sweep.register_cli(sub)
    args = parser.parse_args(["sweep", "--world", "mini", "--preset", "calibration", "--out", "D",
                              "--backend", "ray", "--workers", "3", "--ray-address", "host:6379",
                              "--device", "cpu"])
    assert args.func is sweep._cli_sweep
    assert (args.preset, args.out, args.backend, args.workers, args.ray_address, args.device) == \
        ("calibration", "D", "ray", 3, "host:6379", "cpu")
    with pytest.raises(SystemExit):
        parser.parse_args(["sweep", "--preset", "enormous"])


# ---------------------------------------------------------------------------
# The real trainer
def test_real_smoke_grid_with_the_trainer(tmp_path):
    pytest.importorskip("reprolib.cohort")
    import torch

    torch.set_num_threads(1)
    out = tmp_path / "sw"
    res = run_sweep("smoke", out, execution=Execution(device="cpu", threads=1), progress=False)
    assert len(res) == 4
    assert res[["test_accuracy", "val_accuracy", "nonoracle_test_accuracy"]].notna().all().all()
    assert res.test_accuracy.between(0, 1).all()
    for d in res.run_dir:
        assert check_run(out / d) is None
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 2 * 2 * 2
    # Resuming finds everything finished.
    again = run_sweep("smoke", out, execution=Execution(device="cpu", threads=1), progress=False)
    pd.testing.assert_frame_equal(again, res)


@pytest.mark.slow
def test_real_trainer_gives_the_same_results_in_worker_processes(tmp_path):
    """Serial and parallel sweeps agree when each run has the same thread count, also when
    the scheduler splits the cohorts (2 cohorts of 2 on 4 workers: 4 one-student tasks)."""
    pytest.importorskip("reprolib.cohort")
    code = textwrap.dedent(f"""
        from reprolib.devices import Execution
        from reprolib.sweep import run_sweep
        if __name__ == "__main__":
            one = Execution(threads=1)
            run_sweep("smoke", {str(tmp_path / "serial")!r}, execution=one, progress=False)
            res = run_sweep("smoke", {str(tmp_path / "pool")!r}, execution=one, progress=False, workers=4)
            assert res.attrs["sweep"]["tasks"] == 4, res.attrs["sweep"]
    """)
    script = tmp_path / "real_sweeps.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    pd.testing.assert_frame_equal(_comparable(tmp_path / "serial" / "results.csv"),
                                  _comparable(tmp_path / "pool" / "results.csv"))


def test_cohort_and_no_cohort_sweeps_give_the_same_results(tmp_path, capsys):
    """One task per (rho, seed) cohort, or one per run: the same results.csv numbers."""
    pytest.importorskip("reprolib.cohort")
    import torch

    torch.set_num_threads(1)
    grid = SweepGrid(name="smoke-cohort", run_preset="smoke", methods=("kd", "at", "subdistill"),
                     rhos=(1.0,), seeds=(1,), lambdas=(1.0, 10.0))
    together = run_sweep(grid, tmp_path / "cohort", execution=Execution(device="cpu", threads=1), progress=False)
    assert together.attrs["sweep"]["tasks"] == 1 and together.attrs["sweep"]["cohort"]
    alone = run_sweep(grid, tmp_path / "alone", execution=Execution(device="cpu", threads=1), progress=False,
                      cohort=False)
    assert alone.attrs["sweep"]["tasks"] == 5
    pd.testing.assert_frame_equal(_comparable(tmp_path / "cohort" / "results.csv"),
                                  _comparable(tmp_path / "alone" / "results.csv"))
    # The training curves too (smoke accuracies may all sit at chance; the losses do not).
    curves = {}
    for d in together.run_dir:
        a = json.loads((tmp_path / "cohort" / d / "metrics.json").read_text())["curves"]
        b = json.loads((tmp_path / "alone" / d / "metrics.json").read_text())["curves"]
        assert a == b, d
        curves[d] = a["loss"]
    assert len({tuple(c) for c in curves.values()}) == len(curves)     # five different students


def test_no_cohort_flag_and_cohort_tasks_with_a_custom_runner(tmp_path, fake_env, capsys):
    out = tmp_path / "sw"
    assert main(["--preset", "smoke", "--out", str(out), "--workers", "1", "--device", "cpu",
                 "--no-progress", "--no-cohort"], run_fn=fake_train_run) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == 4 and report["cohort"] is False
    res = run_sweep(_tiny_grid(), tmp_path / "tiny", run_fn=fake_train_run, progress=False)
    # kd + at x 2 lambdas per (rho, seed): 4 cohorts of 3 runs, every run started once.
    assert res.attrs["sweep"]["tasks"] == 4 and len(res) == 12
    assert main(["--preset", "smoke", "--out", str(out), "--device", "cuda:x"]) == 2
    assert "unknown device 'cuda:x'" in capsys.readouterr().err


def test_each_grid_writes_its_own_tables_and_the_first_keeps_results_csv(tmp_path, fake_env):
    """A side grid run into the same folder (as chapter 4 runs the calibration there)
    writes results-<grid>.csv and summary-<grid>.csv and leaves the folder's
    results.csv and summary.csv, which belong to the first grid run into it."""
    main = run_sweep(_tiny_grid(), tmp_path, run_fn=fake_train_run, progress=False)
    first = {n: (tmp_path / f"{n}.csv").read_text() for n in ("results", "summary")}
    assert first["results"] == (tmp_path / "results-tiny.csv").read_text()
    assert first["summary"] == (tmp_path / "summary-tiny.csv").read_text()
    side = run_sweep(_tiny_grid(name="side", methods=("kd",), seeds=(3,)), tmp_path, run_fn=fake_train_run,
                     progress=False)
    assert len(side) == 2 and set(side["seed"]) == {3}
    assert pd.read_csv(tmp_path / "results-side.csv")["seed"].tolist() == [3, 3]
    assert {n: (tmp_path / f"{n}.csv").read_text() for n in ("results", "summary")} == first
    assert json.loads((tmp_path / "sweep.json").read_text())["main_grid"] == "tiny"
    # the main grid again (resumed): its tables are rewritten, the same
    again = run_sweep(_tiny_grid(), tmp_path, run_fn=fake_train_run, progress=False)
    assert len(again) == len(main)
    assert (tmp_path / "results.csv").read_text() == first["results"]


def test_prepare_teachers_trains_each_uncached_mini_teacher_once(monkeypatch, capsys):
    """Two workers that each meet an uncached teacher used to train it side by side,
    each on one thread: the sweep trains it once, here, before the runs."""
    import reprolib.teacher as teacher_module

    cells = expand_grid(_tiny_grid())
    biased = [c.replace(teacher_recipe="smoke-biased") for c in cells]
    paper = [c.replace(teacher="resnet18") for c in cells[:1]]   # not a mini teacher: never trained here
    cached = {teacher_module.recipe("smoke").key()}
    trained = []
    monkeypatch.setattr(teacher_module, "teacher_cached", lambda tcfg: tcfg.key() in cached)
    monkeypatch.setattr(teacher_module, "train_mini_teacher",
                        lambda tcfg, progress=True: trained.append((tcfg, progress)))
    assert sweep.prepare_teachers(cells + biased + biased + paper, progress=False) == ["smoke-biased"]
    assert [(t.key(), p) for t, p in trained] == [(teacher_module.recipe("smoke-biased").key(), False)]
    assert "training the mini teacher 'smoke-biased' once" in capsys.readouterr().err
    trained.clear()
    assert sweep.prepare_teachers(cells, progress=False) == [] and trained == []


def test_run_sweep_prepares_teachers_before_dispatch_for_local_workers_only(tmp_path, fake_env, monkeypatch):
    events = []

    class Dispatched(Exception):
        pass

    def dispatch(tasks, *args, **kwargs):
        events.append(("dispatch", len(tasks)))
        raise Dispatched

    monkeypatch.setattr(sweep, "prepare_teachers", lambda todo, progress: events.append(("prepare", len(todo))))
    monkeypatch.setattr(sweep, "run_serial", dispatch)
    monkeypatch.setattr(sweep, "run_ray", dispatch)
    with pytest.raises(Dispatched):
        run_sweep(_tiny_grid(), tmp_path / "a", progress=False, workers=2)
    assert events[0] == ("prepare", len(expand_grid(_tiny_grid()))) and events[1][0] == "dispatch"
    for kwargs in ({"run_fn": fake_train_run}, {"backend": "ray", "ray_address": "auto"}):
        events.clear()
        with pytest.raises(Dispatched):
            run_sweep(_tiny_grid(), tmp_path / "b", progress=False, **kwargs)
        assert [e[0] for e in events] == ["dispatch"]

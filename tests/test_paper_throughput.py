"""``benchmarks/paper_throughput.py`` and ``python -m reprolib.standins`` as a user runs them.

The benchmark's figures are not asserted (timings belong to benchmarks, not
tests); its plumbing and its last line's format are.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAST_LINE = re.compile(r"paper-world speedup (\d+\.\d\d) \(authors (\d+\.\d) img/s, "
                       r"ours (\d+\.\d) img/s per student, device (.+)\)")


def run(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_tiny_benchmark_prints_the_speedup_line_last():
    res = run(["benchmarks/paper_throughput.py", "--tiny", "--device", "cpu", "--students", "5",
               "--steps", "1", "--warmup", "0", "--threads", "1", "--workers", "1"])
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    m = LAST_LINE.fullmatch(lines[-1])
    assert m, lines[-1]
    speedup, authors, ours = (float(v) for v in m.groups()[:3])
    assert authors > 0 and ours > 0 and abs(speedup - ours / authors) < 0.01 + 0.01 * speedup
    assert m.group(4).startswith("cpu")
    assert "cohort of 5 students (fewer than the grid's 17: --students)" in res.stdout
    assert "(b) ours (reprolib.cohort.Cohort)" in res.stdout
    for method in ("kd", "at", "vid", "vkd", "subdistill"):
        assert re.search(rf"^    {method} +\d+\.\d img/s per student$", res.stdout, re.M), method


@pytest.mark.parametrize("args, message", [
    (["--students", "18"], "error: --students 18: give 1 to 17"),
    (["--device", "tpu"], "error: unknown device 'tpu'; choose cpu, cuda or cuda:N"),
    (["--steps", "0"], "error: --steps 0 is too small"),
])
def test_benchmark_refuses_bad_options(args, message):
    res = run(["benchmarks/paper_throughput.py", "--tiny", *args], timeout=120)
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_standins_command_writes_a_usable_tree(tmp_path, monkeypatch):
    res = run(["-m", "reprolib.standins", str(tmp_path / "s"), "--train-per-class", "3",
               "--val-per-class", "2"], timeout=120)
    assert res.returncode == 0, res.stderr
    env = json.loads(res.stdout)
    from reprolib.config import make_config
    from reprolib.worlds import build_world

    monkeypatch.setenv("REPROLIB_IMAGENET", env["REPROLIB_IMAGENET"])
    monkeypatch.setenv("REPROLIB_MNIST", env["REPROLIB_MNIST"])
    cfg = make_config("paper", "smoke", image_size=32, artifact_size=8, contamination_rate=1.0)
    w = build_world(cfg.data, 1, num_workers=0, device="cpu")
    assert w.summary()["test"]["n"] == 10
    x, y, d = next(iter(w.batches("train", 4)))
    assert x.shape[1:] == (3, 32, 32)

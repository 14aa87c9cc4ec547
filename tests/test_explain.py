"""`python -m reprolib explain` on a smoke sweep: files, ranges, reuse, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from reprolib.cli import main
from reprolib.explain import selected_runs
from reprolib.sweep import run_sweep


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    run_sweep("smoke", out, progress=False)
    return out


@pytest.mark.slow
def test_explain_writes_both_analyses_and_reuses_them(smoke_sweep, tmp_path, capsys):
    out = tmp_path / "explain"
    argv = ["explain", "--sweep", str(smoke_sweep), "--out", str(out), "--tsne-images", "30",
            "--lrp-images", "12", "--quiet"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    knn = pd.read_csv(out / "knn.csv")
    lrp = pd.read_csv(out / "lrp.csv")
    # The smoke grid: kd and subdistill at rho 0 and 1, one seed; plus the teacher row.
    assert len(knn) == 5 and set(knn["model"]) == {"teacher", "student"}
    assert knn[["knn_class", "knn_digit"]].apply(lambda c: c.between(0, 1)).all().all()
    assert set(zip(lrp["method"], lrp["rho"])) == {("kd", 0.0), ("kd", 1.0), ("subdistill", 0.0), ("subdistill", 1.0)}
    assert lrp["explained"].all()
    assert lrp["corr_mean"].between(-1, 1).all() and (lrp["n_images"] <= 12).all()
    assert lrp["digit_share_student"].between(0, 1).all()
    assert len(report["lrp_summary"]) == 4
    with np.load(out / "arrays.npz") as z:
        assert z["heat/teacher"].shape == (8, 32, 32) and np.isfinite(z["heat/teacher"]).all()
        assert z["emb/teacher"].shape == (30, 2)
    stamp = (out / "manifest.json").stat().st_mtime_ns
    assert main(argv) == 0                       # same sweep and settings: loaded, not recomputed
    assert (out / "manifest.json").stat().st_mtime_ns == stamp


def test_selected_runs_take_the_chosen_lambda(smoke_sweep):
    runs = selected_runs(smoke_sweep)
    assert len(runs) == 4 and set(runs["method"]) == {"kd", "subdistill"}
    assert runs["run_dir"].map(lambda d: (smoke_sweep / d).exists() or __import__("os").path.exists(d)).all()


def test_explain_bad_input(tmp_path, capsys):
    assert main(["explain", "--sweep", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no results.csv" in capsys.readouterr().err
    assert main(["explain", "--sweep", str(tmp_path), "--out", str(tmp_path / "o"), "--lrp-images", "5"]) == 2
    assert "at least 11" in capsys.readouterr().err

"""`python -m reprolib explain` on a smoke sweep: files, ranges, reuse, bad input."""

from __future__ import annotations

import json
from pathlib import Path

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


@pytest.fixture(scope="module")
def two_lambda_sweep(smoke_sweep, tmp_path_factory):
    """The smoke grid with two λ (1 and 10): the λ = 1 runs are copied from the smoke
    sweep (resumed, not retrained), the λ = 10 runs are trained. The validation
    accuracies in results.csv are then rewritten so that λ = 10 wins at ρ = 0 and
    λ = 1 at ρ = 1: smoke runs' accuracies tie too often to tell a right λ from a wrong one."""
    import shutil

    from reprolib.grids import SweepGrid

    out = tmp_path_factory.mktemp("sweep2")
    shutil.copytree(smoke_sweep / "runs", out / "runs")
    grid = SweepGrid(name="smoke-two-lambdas", run_preset="smoke", methods=("kd", "subdistill"),
                     rhos=(0.0, 1.0), seeds=(1,), lambdas=(1.0, 10.0))
    results = run_sweep(grid, out, progress=False)
    sd = results["method"] == "subdistill"
    assert sorted(results.loc[sd, "lambda_layer"].astype(float).unique()) == [1.0, 10.0]
    wins = np.where(np.isclose(results["rho"], 0.0), 10.0, 1.0)
    results.loc[sd, "val_accuracy"] = np.where(np.isclose(results.loc[sd, "lambda_layer"], wins[sd]), 0.9, 0.1)
    results.to_csv(out / "results.csv", index=False)
    return out


def test_selected_runs_take_the_chosen_lambda(two_lambda_sweep):
    """Each selected SubDistill run has the λ that won its ρ (10 at ρ = 0, 1 at ρ = 1), and its
    folder is the run trained with that λ (the checkpoint's own config says so)."""
    from reprolib.io import load_state_dict_file

    runs = selected_runs(two_lambda_sweep)
    assert len(runs) == 4 and set(runs["method"]) == {"kd", "subdistill"}
    sd = runs[runs["method"] == "subdistill"].sort_values("rho")
    assert sd["rho"].tolist() == [0.0, 1.0]
    assert sd["lambda_layer"].astype(float).tolist() == [10.0, 1.0]
    for _, r in sd.iterrows():
        ckpt = load_state_dict_file(Path(r["run_dir"]) / "student.pt", "student checkpoint", ("student", "config"))
        assert float(ckpt["config"]["lambda_layer"]) == float(r["lambda_layer"])
    kd = runs[runs["method"] == "kd"]
    assert kd["lambda_layer"].isna().all() and sorted(kd["rho"]) == [0.0, 1.0]


def test_explain_bad_input(tmp_path, capsys):
    assert main(["explain", "--sweep", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "no results.csv" in capsys.readouterr().err
    assert main(["explain", "--sweep", str(tmp_path), "--out", str(tmp_path / "o"), "--lrp-images", "5"]) == 2
    assert "at least 11" in capsys.readouterr().err

"""The device follows the machine: ``auto`` is the default of every notebook that
computes with models, and each chapter's footer names the device and precision
its results computed in."""

from __future__ import annotations

import ast
from pathlib import Path

import nbformat
import pytest
import torch

from reprolib import pages

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The chapters that train students: they take a precision as well as a device.
TRAINING = {"03_training", "04_contamination_sweep"}


def parameters(path: Path) -> dict:
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    out = {}
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign):
            out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


def footer_call(path: Path) -> ast.Call:
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code" and "pages.footer(" in c.source:
            for node in ast.walk(ast.parse(c.source)):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "footer":
                    return node
    raise AssertionError(f"{path.name}: no pages.footer call")


def test_device_parameters_default_to_auto():
    with_device = []
    for path in NOTEBOOKS:
        params = parameters(path)
        if "device" in params:
            with_device.append(path.stem)
            assert params["device"] == "auto", f"{path.stem}: device defaults to {params['device']!r}"
        if path.stem in TRAINING:
            assert params.get("precision") == "fp32", f"{path.stem}: no fp32 precision parameter"
    assert {"02_subspace_derivation", *TRAINING} <= set(with_device)


def test_footers_of_computing_chapters_pass_device_and_precision():
    for path in NOTEBOOKS:
        if "device" not in parameters(path):
            continue
        keywords = {k.arg for k in footer_call(path).keywords}
        assert "device" in keywords, f"{path.stem}: the footer does not name the device"
        if path.stem in TRAINING:
            assert "precision" in keywords, f"{path.stem}: the footer does not name the precision"


@pytest.fixture
def said(monkeypatch):
    out = []
    monkeypatch.setattr(pages, "_display", lambda obj: out.append(getattr(obj, "data", str(obj))))
    return out


def test_footer_names_device_and_precision(said, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pages.footer("notebooks/04_contamination_sweep.ipynb", {"device": "auto", "precision": "bf16"}, 12.0,
                 device="auto", precision="bf16")
    text = said[-1]
    assert "computed on **cpu** in **bf16**" in text   # auto resolved on a machine without CUDA
    assert "-p device auto -p precision bf16" in text   # the rerun command keeps "auto"
    pages.footer("notebooks/01_data_construction.ipynb", {}, 3.0)
    assert "computed on **cpu** in **fp32**" in said[-1]


def test_footer_on_a_cuda_machine(said, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Fake GPU")
    pages.footer("notebooks/03_training.ipynb", {}, 3.0, device="auto")
    assert "computed on **cuda** in **fp32**" in said[-1] and "Fake GPU GPU" in said[-1]

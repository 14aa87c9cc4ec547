"""nbval on every notebook of the book, with smoke-size parameters.

Each notebook is parameterised the way papermill does it (an injected cell after
the ``parameters`` cell), written to a temporary folder, and run by nbval in a
fresh kernel (``--nbval-lax``: every cell must run without error; outputs are not
compared). The notebooks share the session's cache, so 05 and 06 explain the
smoke sweep that 04 trained.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = {
    "01_data_construction": {"preset": "smoke"},
    "02_subspace_derivation": {"preset": "smoke", "n_artifact_images": 50},
    "03_training": {"preset": "smoke", "method": "subdistill", "contamination_rate": 1.0},
    "04_contamination_sweep": {"preset": "smoke", "workers": 1},
    "05_tsne": {"preset": "smoke", "tsne_images": 60, "lrp_images": 16},
    "06_lrp_relevance": {"preset": "smoke", "tsne_images": 60, "lrp_images": 16},
}


def test_every_toc_notebook_is_tested():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = {Path(c["file"]).name for c in toc["chapters"] if c["file"].startswith("notebooks/")}
    assert listed == set(NOTEBOOKS)


def test_committed_notebooks_are_clean():
    import nbformat

    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell must be tagged"
        assert all(not c.outputs for c in code), f"{name}: committed with outputs"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NOTEBOOKS))
def test_notebook_runs_with_smoke_parameters(name, tmp_path):
    import nbformat
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = load_notebook_node(str(ROOT / "notebooks" / f"{name}.ipynb"))
    nb = parameterize_notebook(nb, NOTEBOOKS[name], kernel_name="python3", language="python")
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, path)
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
         "--nbval-current-env", str(path)],
        cwd=ROOT / "notebooks", env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

"""nbval on every notebook of the book, with smoke-size parameters.

Each notebook is parameterised the way papermill does it (an injected cell after
the ``parameters`` cell), written to a temporary folder, and run by nbval in a
fresh kernel (``--nbval-lax``: every cell must run without error; outputs are not
compared). The notebooks share the session's cache, so 05, 06 and 07 explain the
smoke sweep that 04 trained (each would train it if it were missing).

When ``REPROLIB_NOTEBOOKS_EXECUTED=1`` (``make test`` has just executed every
notebook for the smoke book), the execution tests are skipped: they would only
repeat that work.
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
    # workers=2, as the book runs it: one thread per run, the numerics of the run notebook 03
    # trained into the same folder (a sweep refuses to mix thread counts).
    "04_contamination_sweep": {"preset": "smoke", "workers": 2},
    "05_tsne": {"preset": "smoke", "tsne_images": 60, "lrp_images": 16},
    "06_lrp_relevance": {"preset": "smoke", "tsne_images": 60, "lrp_images": 16},
    "07_results": {"preset": "smoke", "tsne_images": 60, "lrp_images": 16},
    "08_aligned_layers": {"preset": "smoke", "workers": 2},
    "09_alignment_cost": {"preset": "smoke"},
    "10_biased_teacher": {"preset": "smoke", "workers": 2},
    "11_conditions_map": {"preset": "smoke", "workers": 2},
}
EXECUTED = os.environ.get("REPROLIB_NOTEBOOKS_EXECUTED") == "1"


def toc_files(toc: dict) -> list[str]:
    """Every ``file`` of a Jupyter Book table of contents, flat (``chapters:``) or in
    ``parts:`` (parts → chapters → file, sections nested at any depth)."""
    files: list[str] = []

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                files.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    walk(toc.get("chapters"))
    for part in toc.get("parts") or []:
        walk(part.get("chapters"))
    return files


def test_toc_files_reads_both_layouts():
    flat = {"root": "intro", "chapters": [{"file": "notebooks/01"}, {"file": "book/a", "sections": [{"file": "b"}]}]}
    parts = {"root": "intro", "parts": [{"caption": "x", "chapters": [{"file": "notebooks/01"}]},
                                        {"caption": "y", "chapters": [{"file": "book/a", "sections": [{"file": "b"}]}]}]}
    assert toc_files(flat) == toc_files(parts) == ["notebooks/01", "book/a", "b"]


def test_every_toc_notebook_is_tested():
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    listed = {Path(f).name for f in toc_files(toc) if f.startswith("notebooks/")}
    assert listed == set(NOTEBOOKS)


def test_committed_notebooks_are_clean():
    import nbformat

    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), f"{name}: first code cell must be tagged"
        assert all(not c.outputs for c in code), f"{name}: committed with outputs"


@pytest.mark.slow
@pytest.mark.skipif(EXECUTED, reason="REPROLIB_NOTEBOOKS_EXECUTED=1: make test has executed every notebook already")
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


def test_notebooks_use_the_book_shape():
    """Set-up cells hide their code; every chapter has a smoke note, captions and a rerun footer."""
    import nbformat

    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(set(c.metadata.get("tags", [])) & {"remove-input", "hide-input", "remove-cell"}
                   for c in code), f"{name}: a code cell shows its code"
        text = "\n".join(c.source for c in nb.cells)
        assert "pages.setup(preset)" in text, f"{name}: no smoke note"
        assert "pages.footer(" in text, f"{name}: no rerun command"
        assert "## Our verdict and what it means" in text and "## What's next" in text, name
        assert "plt.subplots" not in text, f"{name}: plotting code belongs in reprolib.figures"


# The notebooks' code budget: under 65 lines per chapter on average (the seven chapters of
# the paper's part were budgeted 450 lines together); the logic lives in reprolib.
NOTEBOOK_CODE_LINES = 65 * len(NOTEBOOKS)


def notebook_code_problems(sources: dict[str, list[str]]) -> list[str]:
    """Why the notebooks' code cells (``{name: [cell source, ...]}``) break the book's
    shape: a function or class defined in a cell (``ast``, at any depth), or more code
    lines in all than :data:`NOTEBOOK_CODE_LINES`."""
    import ast

    problems, lines = [], 0
    for name, cells in sources.items():
        for src in cells:
            lines += len(src.splitlines())
            tree = ast.parse("\n".join(l for l in src.splitlines() if not l.lstrip().startswith(("%", "!"))))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    problems.append(f"{name}: defines {node.name!r} (library code belongs in reprolib)")
    if lines >= NOTEBOOK_CODE_LINES:
        problems.append(f"the notebooks hold {lines} code lines (budget: under {NOTEBOOK_CODE_LINES})")
    return problems


def test_notebooks_hold_no_library_code():
    """No code cell defines a function or class, and the chapters' code stays under budget."""
    import nbformat

    sources = {name: [c.source for c in nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells
                      if c.cell_type == "code"] for name in NOTEBOOKS}
    assert notebook_code_problems(sources) == []
    # the check can fail: a planted helper, nested in a loop, and an over-long chapter
    planted = {"x": ["for i in range(2):\n    def helper():\n        return i\n", "class A:\n    pass\n"]}
    assert [p.split(":")[0] for p in notebook_code_problems(planted)] == ["x", "x"]
    assert "code lines" in notebook_code_problems({"x": ["a = 1\n" * NOTEBOOK_CODE_LINES]})[0]


def pyflakes_messages(source: str) -> list[str]:
    """pyflakes' complaints about ``source`` (undefined names, unused imports, syntax)."""
    import io

    from pyflakes.api import check
    from pyflakes.reporter import Reporter

    out = io.StringIO()
    check(source, "notebook", Reporter(out, out))
    return out.getvalue().splitlines()


def test_notebook_code_is_clean_without_running_it():
    """Each notebook's code cells, in order, pass pyflakes: a cell that uses a name no
    earlier cell defines (or a stray import) fails here in a second, not after minutes of
    executing the chapters (as `make test`'s smoke run would)."""
    import nbformat

    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        source = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        assert pyflakes_messages(source) == [], name
    # the check can fail: a name that only a deleted cell defined
    assert any("undefined name 'Path'" in m for m in pyflakes_messages("x = Path('..')\n"))


def test_captions_are_numbered_in_order():
    """Every figure and table has a numbered caption "**Figure c.k:**", k = 1, 2, ... per chapter."""
    import re

    import nbformat

    for name in NOTEBOOKS:
        chapter = int(name[:2])
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
        for kind in ("Figure", "Table"):
            numbers = [(int(a), int(b)) for a, b in re.findall(rf"\*\*{kind} (\d+)\.(\d+):\*\*", text)]
            assert numbers == [(chapter, k) for k in range(1, len(numbers) + 1)], f"{name}: {kind} {numbers}"
        plots = sum(c.source.count("plt.show()") for c in nb.cells if c.cell_type == "code")
        assert len(re.findall(r"\*\*Figure ", text)) >= min(plots, 1), f"{name}: figures without captions"

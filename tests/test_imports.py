"""The package's import graph has no circle, and callers import a name from the module that owns it.

Read from the code with :mod:`ast`, including imports inside function bodies (a lazy
import that runs back up is still a circle: it only hides it until run time).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "reprolib"


def import_edges(pkg: Path = PKG) -> dict[str, set[tuple[str, int]]]:
    """``{module: {(imported module, line), ...}}`` for the modules of ``pkg``,
    every ``from .x import``, ``from . import x``, ``from reprolib.x import`` and
    ``import reprolib.x`` at any depth."""
    modules = {p.stem for p in pkg.glob("*.py")}
    edges: dict[str, set[tuple[str, int]]] = {}
    for path in pkg.glob("*.py"):
        out: set[tuple[str, int]] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    targets = [node.module.split(".")[0]]
                elif node.level == 1:                                  # from . import x, y
                    targets = [a.name for a in node.names]
                elif node.level == 0 and node.module == pkg.name:      # from reprolib import x
                    targets = [a.name for a in node.names]
                elif node.level == 0 and (node.module or "").startswith(pkg.name + "."):
                    targets = [node.module.split(".")[1]]
            elif isinstance(node, ast.Import):
                targets = [a.name.split(".")[1] for a in node.names if a.name.startswith(pkg.name + ".")]
            out |= {(t, node.lineno) for t in targets if t in modules and t != path.stem}
        edges[path.stem] = out
    return edges


def cycles(edges: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    graph = {m: sorted({t for t, _ in e}) for m, e in edges.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_package_has_no_import_circle():
    edges = import_edges()
    found = cycles(edges)
    where = ["; ".join(f"{a}.py:{line} imports {b}" for a in comp for b, line in sorted(edges[a], key=str)
                       if b in comp) for comp in found]
    assert not found, f"import circles: {where}"


def test_the_cycle_check_finds_a_circle_through_a_lazy_import(tmp_path):
    """The check can fail: a package whose b imports a inside a function, and a imports b."""
    pkg = tmp_path / "reprolib"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import g\n")
    (pkg / "b.py").write_text("def g():\n    from . import a\n    return a\n")
    (pkg / "c.py").write_text("from reprolib.a import g\n")
    edges = import_edges(pkg)
    assert edges["b"] == {("a", 2)}
    assert cycles(edges) == [["a", "b"]]


def _sweep_all() -> set[str]:
    tree = ast.parse((PKG / "sweep.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return set(ast.literal_eval(node.value))
    raise AssertionError("reprolib/sweep.py has no __all__")


def test_sweep_exports_only_what_it_defines():
    tree = ast.parse((PKG / "sweep.py").read_text())
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    assert _sweep_all() <= defined, sorted(_sweep_all() - defined)


def _code_files():
    for folder in ("reprolib", "tests", "benchmarks", "scripts"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path != Path(__file__).resolve():   # this file names the pattern it looks for
                yield path, path.read_text()
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        yield path, "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("path,code", list(_code_files()), ids=lambda v: getattr(v, "name", ""))
def test_callers_import_a_name_from_the_module_that_owns_it(path, code):
    """No ``from reprolib.sweep import X`` and no ``sweep.X`` for an X that sweep
    only imports (``reprolib.grids``, ``.results``, ``.rundirs`` own them)."""
    own = _sweep_all()
    borrowed = set()
    try:
        tree = ast.parse(code)
    except SyntaxError:   # a notebook cell with IPython magic: fall back to the attribute pattern
        tree = None
    if tree is not None:
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module in ("reprolib.sweep", "sweep") or (
                    isinstance(node, ast.ImportFrom) and node.level == 1 and node.module == "sweep"):
                borrowed |= {a.name for a in node.names if a.name not in own}
    borrowed |= {m for m in re.findall(r"(?<![\w.])sweep\.([A-Za-z]\w*)\b", code)
                 if m not in own and m not in ("py", "json", "lock", "workers")}
    assert not borrowed, f"{path.name} takes {sorted(borrowed)} from reprolib.sweep, which does not own them"


def test_the_readme_layout_names_every_module():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout of the package", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`(\w+)`", "\n".join(l for l in section.splitlines() if l.startswith("| `"))))
    modules = {p.stem for p in PKG.glob("*.py")} - {"__init__", "__main__"}
    assert modules <= named, f"README's layout section does not name {sorted(modules - named)}"


def test_no_module_probes_a_world_for_what_it_can_do():
    """The World interface declares what callers use (``in_memory``, ``tensors``,
    ``device``), so nothing asks ``hasattr(world, ...)``."""
    probes = [f"{p.name}:{i}" for p in sorted(PKG.glob("*.py"))
              for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"hasattr\((self\.)?world\b", line)]
    assert not probes, probes


def test_the_protocol_module_is_split_from_its_sources_and_the_paper_world():
    assert len((PKG / "data.py").read_text().splitlines()) < 400
    edges = import_edges()
    assert "paper_world" not in {m for m, _ in edges["data"]}   # data knows no world beyond the mini one
    assert "data" not in {m for m, _ in edges["sources"]}       # sources know no splits

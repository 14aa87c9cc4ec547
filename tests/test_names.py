"""The methods' names and labels are written once, in :mod:`reprolib.config`.

Read from the code with :mod:`ast`: no module of the package (config aside), no
script, benchmark or notebook spells out the list of methods again (a literal
tuple, list or set holding four or more of the method names) or a table of their
labels (a dict from three or more method names to strings). A literal that picks
two or three methods (``methods=("kd", "subdistill")`` in a grid) is a choice, not
the list, and is allowed; so is a dict of per-method data (colours, step costs).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from reprolib import config

ROOT = Path(__file__).resolve().parent.parent


def _strings(nodes) -> list[str]:
    return [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def spelled_out(code: str, methods=config.METHODS) -> list[int]:
    """Lines of ``code`` where a literal lists the methods or labels them."""
    names = set(methods)
    lines = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            if len(names.intersection(_strings(node.elts))) >= 4:
                lines.append(node.lineno)
        elif isinstance(node, ast.Dict):
            keys = names.intersection(_strings(k for k in node.keys if k is not None))
            if len(keys) >= 3 and len(_strings(node.values)) == len(node.values):
                lines.append(node.lineno)
    return lines


def _code_files():
    for folder in ("reprolib", "scripts", "benchmarks"):
        for path in sorted((ROOT / folder).glob("*.py")):
            if path.name != "config.py" or folder != "reprolib":
                yield path, [path.read_text()]
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        yield path, ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]


@pytest.mark.parametrize("path,codes", list(_code_files()), ids=lambda v: getattr(v, "name", ""))
def test_method_names_are_written_once_in_config(path, codes):
    found = []
    for i, code in enumerate(codes):
        try:
            found += [(i, line) for line in spelled_out(code)]
        except SyntaxError:   # a notebook cell with IPython magic
            continue
    assert not found, (f"{path.relative_to(ROOT)} lists the methods again at (cell, line) {found}: "
                       "import METHODS, BASELINES, LAYER_METHODS, METHOD_SHORT or METHOD_LABELS "
                       "from reprolib.config")


def test_the_detector_catches_a_planted_list():
    """The check can fail: planted copies of the list and of the labels are found."""
    planted = '''
from reprolib.config import METHODS

ORDER = ("kd", "at", "vid", "vkd", "subdistill")       # line 4: the list again
BASE = ["kd", "at", "vid", "vkd"]                       # line 5: the baselines again
SHORT = {"kd": "KD", "at": "AT", "subdistill": "SubDistill"}   # line 6: labels again
STYLE = {"kd": dict(color="k"), "at": dict(color="r"), "vid": dict(color="b")}
PAIR = ("kd", "subdistill")
LAYER = tuple(m for m in METHODS if m != "kd")


def f(methods=("kd", "at", "vid")):
    return {"vid", "vkd", "at", "subdistill"}             # line 13: a set of four
'''
    assert spelled_out(planted) == [4, 5, 6, 13]


def test_the_names_agree():
    assert config.METHODS[-1] == config.PROPOSED
    assert config.BASELINES + (config.PROPOSED,) == config.METHODS
    assert config.LAYER_METHODS == tuple(m for m in config.METHODS if m != "kd")
    for table in (config.METHOD_SHORT, config.METHOD_LABELS):
        assert list(table) == [*config.METHODS, "teacher"]

"""The book is self-contained: every specification reference resolves to a book anchor (scripts/spec_refs.py)."""

from __future__ import annotations

import json
from pathlib import Path
from _scripts import load_script

ROOT = Path(__file__).resolve().parent.parent


def _load():
    return load_script("scripts/spec_refs.py", register=True)


spec_refs = _load()

# Names built from pieces, so that this file itself never mentions a file outside the repository.
OLD_PROTOCOL = "paper-" + "protocol.md"
OLD_MINI = "mini-" + "world.md"
OLD_DIR = "../shared/" + "spec/"
UNKNOWN_DECISION = "D" + "42"
UNKNOWN_SECTION = "§" + "9.1"


def test_repository_references_resolve_and_stay_inside():
    missing, outside, n = spec_refs.check(ROOT)
    assert n > 0
    assert not missing, "unresolved: " + ", ".join(f"{r.path}:{r.line} {r.text}" for r in missing)
    assert not outside, "outside references (run scripts/spec_refs.py --fix): " + ", ".join(
        f"{p}:{line} {t}" for p, line, t in outside)


def _tiny_repo(tmp_path: Path) -> Path:
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "decisions.md").write_text("(decision-d6)=\n## D6\n\n(paper-p1)=\n## P1\n")
    (tmp_path / "book" / "protocol.md").write_text("(protocol-4-3)=\n### 4.3\n(protocol-4-4)=\n### 4.4\n")
    (tmp_path / "reprolib").mkdir()
    return tmp_path


def test_checker_names_a_missing_anchor(tmp_path, capsys):
    root = _tiny_repo(tmp_path)
    (root / "reprolib" / "m.py").write_text(
        f'"""Grid of D6 (§4.3–4.4), see P1; {UNKNOWN_DECISION} and {UNKNOWN_SECTION} are not defined."""  # noqa: D401\n')
    assert spec_refs.main(["--root", str(root)]) == 1
    out = capsys.readouterr().out
    assert f"reprolib/m.py:1: {UNKNOWN_DECISION} has no anchor (decision-d42)" in out
    assert f"{UNKNOWN_SECTION} has no anchor (protocol-9-1)" in out
    assert "D401" not in out and "D6 has" not in out and "§4.4 has" not in out


def test_checker_expands_section_ranges(tmp_path):
    root = _tiny_repo(tmp_path)
    (root / "reprolib" / "m.py").write_text("# §4.3–4.5\n")
    missing, _, _ = spec_refs.check(root)
    assert [r.text for r in missing] == ["§4.5"]


def test_fix_rewrites_outside_references(tmp_path, capsys):
    root = _tiny_repo(tmp_path)
    (root / "reprolib" / "m.py").write_text(f'"""Data (``{OLD_PROTOCOL}`` §4.3, ``{OLD_MINI}``)."""\n')
    (root / "README.md").write_text(f"See `{OLD_DIR}{OLD_PROTOCOL}` (decisions D6).\n")
    (root / "notebooks").mkdir()
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["Recipe (paper-" + "protocol §4.3).\n"]},
                    {"cell_type": "code", "metadata": {}, "source": ["# " + OLD_MINI + "\n"], "outputs": [],
                     "execution_count": None}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (root / "notebooks" / "n.ipynb").write_text(json.dumps(nb, indent=1))

    assert spec_refs.main(["--root", str(root)]) == 1
    assert "outside the repository" in capsys.readouterr().out

    assert spec_refs.main(["--root", str(root), "--fix"]) == 0
    assert (root / "reprolib" / "m.py").read_text() == \
        '"""Data (``book/protocol.md`` §4.3, ``book/mini_world.md``)."""\n'
    assert (root / "README.md").read_text() == "See [book/protocol.md](book/protocol.md) (decisions D6).\n"
    cells = json.loads((root / "notebooks" / "n.ipynb").read_text())["cells"]
    assert cells[0]["source"] == ["Recipe ([book/protocol.md](../book/protocol.md) §4.3).\n"]
    assert cells[1]["source"] == ["# book/mini_world.md\n"]


def test_fix_limited_to_paths_leaves_the_rest(tmp_path):
    root = _tiny_repo(tmp_path)
    (root / "reprolib" / "m.py").write_text(f"# {OLD_PROTOCOL}\n")
    (root / "README.md").write_text(f"{OLD_MINI}\n")
    assert spec_refs.main(["--root", str(root), "--fix", "README.md"]) == 1   # reprolib still refers outside
    assert (root / "README.md").read_text() == "[book/mini_world.md](book/mini_world.md)\n"
    assert (root / "reprolib" / "m.py").read_text() == f"# {OLD_PROTOCOL}\n"

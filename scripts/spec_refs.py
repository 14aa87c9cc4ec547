"""Check that every specification reference in the repository resolves to an anchor of the book.

The code, the notebooks, the tests and the book cite the specification by identifier:

* ``D<n>``  a project decision        -> anchor ``(decision-d<n>)=``   in book/decisions.md
* ``A<n>``  an open question          -> anchor ``(ambiguity-a<n>)=``  in book/decisions.md
* ``P1``/``P2`` the two papers        -> anchor ``(paper-p1)=``/``(paper-p2)=`` in book/decisions.md
* ``§x`` / ``§x.y`` a protocol section -> anchor ``(protocol-x)=``/``(protocol-x-y)=`` in book/protocol.md

(ranges such as ``§4.1–4.4`` are checked at every section they span). Anchors are MyST label lines
``(name)=`` of any ``book/*.md`` page. The script also finds references to files that live outside the
repository (the specification's former home); ``--fix`` rewrites them into references to the book pages.

    python scripts/spec_refs.py                 # report; exit 1 if a reference is unresolved
    python scripts/spec_refs.py --fix [PATH...] # rewrite outside references (all, or under PATHs), then report

Exit status: 0 all references resolve and none points outside; 1 otherwise (each problem is listed with its
file and line); 2 bad usage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Where references are looked for (relative to the repository root).
SCAN = ("reprolib", "notebooks", "book", "tests", "benchmarks", "scripts", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".ipynb", ".yml", ".yaml", ".toml", ".txt", ".cfg", ".sh", ".rst", ".cff", ""}
SKIP_DIRS = {"_build", "__pycache__", ".ipynb_checkpoints", ".git", ".venv", "node_modules", ".pytest_cache"}

LABEL = re.compile(r"^\(([A-Za-z0-9_.:-]+)\)=\s*$", re.M)

# Identifiers. The look-arounds keep words such as "D401" (a linter code) or "0xD1" out.
REF_ID = re.compile(r"(?<![\w.-])([DAP])([1-9][0-9]?)(?![\w])")
SECTION = re.compile(r"§\s?([0-9]+(?:\.[0-9]+)?)(?:\s*[–-]\s*§?\s?([0-9]+(?:\.[0-9]+)?))?")
NOQA = re.compile(r"#\s*noqa[^\n]*")

# Mentions of files outside the repository. Spelled with character classes so that this file does not match
# a plain-text search for the names it looks for.
_SPEC_DIR = r"(?:\.\./|/work/)?shared[/]spec/?"
_NAMES = {  # outside name (regex) -> (book page, link text)
    r"paper[-]protocol(?:[.]md)?": ("book/protocol.md", "the protocol"),
    r"mini[-]world[.]md": ("book/mini_world.md", "the mini world"),
    r"paper[-]summary[.]md": ("book/paper.md", "the paper's claims"),
}
OUTSIDE = re.compile(r"shared[/]spec|paper[-]protocol|mini[-]world[.]md|paper[-]summary[.]md")


@dataclass(frozen=True)
class Ref:
    path: str
    line: int
    text: str      # as written, e.g. "D6" or "§4.3"
    anchor: str    # the label it needs, e.g. "decision-d6"


def anchor_for(kind: str, number: str) -> str:
    if kind == "§":
        return "protocol-" + number.replace(".", "-")
    return {"D": "decision-d", "A": "ambiguity-a", "P": "paper-p"}[kind] + number


def iter_files(root: Path, scan=SCAN):
    for entry in scan:
        base = root / entry
        if base.is_file():
            yield base
        elif base.is_dir():
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
                for name in sorted(filenames):
                    path = Path(dirpath) / name
                    if path.suffix in TEXT_SUFFIXES:
                        yield path


def text_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, text) pairs to scan; for a notebook, the cells' sources (numbered across cells)."""
    try:
        raw = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    if path.suffix == ".ipynb":
        try:
            nb = json.loads(raw)
        except json.JSONDecodeError:
            return list(enumerate(raw.splitlines(), 1))
        out, n = [], 0
        for cell in nb.get("cells", []):
            src = cell.get("source", "")
            src = "".join(src) if isinstance(src, list) else src
            for line in src.splitlines():
                n += 1
                out.append((n, line))
        return out
    return list(enumerate(raw.splitlines(), 1))


def section_range(a: str, b: str | None) -> list[str]:
    if b is None:
        return [a]
    pa, pb = a.split("."), b.split(".")
    if len(pa) == 2 and len(pb) == 2 and pa[0] == pb[0] and int(pa[1]) <= int(pb[1]):
        return [f"{pa[0]}.{k}" for k in range(int(pa[1]), int(pb[1]) + 1)]
    if len(pa) == 1 and len(pb) == 1 and int(pa[0]) <= int(pb[0]):
        return [str(k) for k in range(int(pa[0]), int(pb[0]) + 1)]
    return [a, b]


def find_refs(root: Path, scan=SCAN) -> list[Ref]:
    refs = []
    for path in iter_files(root, scan):
        rel = path.relative_to(root).as_posix()
        for n, line in text_lines(path):
            line = NOQA.sub("", line)
            for m in REF_ID.finditer(line):
                kind, num = m.group(1), m.group(2)
                if kind == "P" and num not in ("1", "2"):
                    continue
                refs.append(Ref(rel, n, m.group(0), anchor_for(kind, num)))
            for m in SECTION.finditer(line):
                for sec in section_range(m.group(1), m.group(2)):
                    refs.append(Ref(rel, n, "§" + sec, anchor_for("§", sec)))
    return refs


def book_anchors(root: Path) -> set[str]:
    anchors = set()
    for page in sorted((root / "book").glob("*.md")):
        anchors.update(LABEL.findall(page.read_text(encoding="utf-8")))
    return anchors


def find_outside(root: Path, scan=None) -> list[tuple[str, int, str]]:
    """(file, line, text) of every mention of a file outside the repository, anywhere in it."""
    scan = scan or [p.name for p in sorted(root.iterdir()) if p.name not in SKIP_DIRS and p.name != ".venv"]
    hits = []
    for path in iter_files(root, scan):
        rel = path.relative_to(root).as_posix()
        for n, line in text_lines(path) if path.suffix == ".ipynb" else _raw_lines(path):
            for m in OUTSIDE.finditer(line):
                hits.append((rel, n, m.group(0)))
    return hits


def _raw_lines(path: Path):
    try:
        return list(enumerate(path.read_text(encoding="utf-8").splitlines(), 1))
    except (UnicodeDecodeError, OSError):
        return []


# --------------------------------------------------------------------------------------------------------------
# --fix


def _rewrite(text: str, *, markdown: bool, rel_to_root: str) -> str:
    """Replace outside references in ``text``; in markdown, by links relative to the file's folder."""
    for name, (page, _label) in _NAMES.items():
        # optional code ticks (kept in code, dropped in a markdown link), an optional old folder, the name
        pattern = re.compile(r"(`{0,2})(?:" + _SPEC_DIR + r")?" + name + r"\1")
        if markdown:
            target = rel_to_root + page
            text = pattern.sub(lambda m, p=page, t=target: f"[{p}]({t})", text)
        else:
            text = pattern.sub(lambda m, p=page: f"{m.group(1)}{p}{m.group(1)}", text)
    # Whatever still names the old folder now names the book.
    text = re.sub(_SPEC_DIR, "book/", text)
    return text


def fix_file(path: Path, root: Path) -> bool:
    raw = path.read_text(encoding="utf-8")
    if not OUTSIDE.search(raw):
        return False
    depth = len(path.relative_to(root).parts) - 1
    up = "../" * depth
    if path.suffix == ".ipynb":
        nb = json.loads(raw)
        for cell in nb.get("cells", []):
            src = cell.get("source", "")
            joined = "".join(src) if isinstance(src, list) else src
            new = _rewrite(joined, markdown=cell.get("cell_type") == "markdown", rel_to_root=up)
            if new != joined:
                cell["source"] = new.splitlines(keepends=True) if isinstance(src, list) else new
        out = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
    else:
        out = _rewrite(raw, markdown=path.suffix == ".md", rel_to_root=up)
    if out == raw:
        return False
    tmp = path.with_name(path.name + ".tmp-spec-refs")
    tmp.write_text(out, encoding="utf-8")
    os.replace(tmp, path)
    return True


# --------------------------------------------------------------------------------------------------------------


def check(root: Path) -> tuple[list[Ref], list[tuple[str, int, str]], int]:
    refs = find_refs(root)
    anchors = book_anchors(root)
    missing = [r for r in refs if r.anchor not in anchors]
    return missing, find_outside(root), len(refs)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fix", nargs="*", metavar="PATH", default=None,
                        help="rewrite references to files outside the repository (under PATHs, default: all)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository root (default: this checkout)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    if not (root / "book").is_dir():
        print(f"error: {root} has no book/ folder; give the repository root with --root", file=sys.stderr)
        return 2

    if args.fix is not None:
        targets = args.fix or [p.name for p in sorted(root.iterdir()) if p.name not in SKIP_DIRS]
        for t in targets:
            if not (root / t).exists():
                print(f"error: {t} does not exist under {root}", file=sys.stderr)
                return 2
        changed = [p for p in iter_files(root, targets) if p.name != Path(__file__).name and fix_file(p, root)]
        for p in changed:
            print(f"rewrote {p.relative_to(root).as_posix()}")
        print(f"--fix: {len(changed)} file(s) rewritten")

    missing, outside, n = check(root)
    for r in missing:
        print(f"{r.path}:{r.line}: {r.text} has no anchor ({r.anchor}) in book/*.md")
    for path, line, text in outside:
        print(f"{path}:{line}: '{text}' refers to a file outside the repository (fix: scripts/spec_refs.py --fix)")
    names = sorted({r.text for r in missing})
    print(f"{n} references checked; {len(missing)} unresolved{(' (' + ', '.join(names) + ')') if names else ''}; "
          f"{len(outside)} outside references")
    return 1 if missing or outside else 0


if __name__ == "__main__":
    sys.exit(main())

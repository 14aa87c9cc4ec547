"""scripts/check_book.py on tiny generated sites: it passes a clean one and names each kind of broken page.

These tests drive headless Chromium through Playwright; without either they are skipped with the reason.
"""

from __future__ import annotations

import base64
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from _scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check_book.py"

# A valid 2×2 PNG.
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAAAABJRU5ErkJggg==")


def _browser_or_skip():
    module = load_script(SCRIPT, register=True)
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the browser check needs Playwright: pip install playwright (no browser download needed)")
    if module.find_chromium(None) is None:
        pytest.skip("the browser check needs Chromium: apt-get install chromium (or set CHROMIUM)")


def _mathjax_dir() -> Path | None:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "static" / "mathjax"
    return path if (path / "tex-chtml.js").is_file() else None


def _page(title: str, body: str, mathjax: bool = False) -> str:
    script = '<script defer src="_static/mathjax/tex-chtml.js"></script>' if mathjax else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>{script}</head>"
            f"<body><main><h1 id='top'>{title}</h1>{body}</main></body></html>")


def _site(tmp_path: Path, extra_body: str = "", math: bool = False) -> Path:
    """A two-page site in the shape of a Sphinx build: html/index.html, html/notebooks/07_results.html."""
    html = tmp_path / "_build" / "html"
    (html / "_images").mkdir(parents=True)
    (html / "notebooks").mkdir()
    (html / "_images" / "fig.png").write_bytes(PNG)
    mathjax = False
    body = ""
    if math:
        source = _mathjax_dir()
        if source is None:
            pytest.skip("sphinx-mathjax-offline is not installed (pip install -r requirements.txt)")
        (html / "_static").mkdir()
        (html / "_static" / "mathjax").symlink_to(source, target_is_directory=True)
        mathjax = True
        body = '<p>Energy <span class="math notranslate nohighlight">\\(E = mc^2\\)</span>.</p>'
    (html / "index.html").write_text(_page(
        "Intro", body + '<p><a href="notebooks/07_results.html#verdicts">results</a></p>'
        '<img src="_images/fig.png" alt="a figure">' + extra_body, mathjax=mathjax))
    (html / "notebooks" / "07_results.html").write_text(_page(
        "Results", '<h2 id="verdicts">Verdicts</h2><table><tr><th>method</th><th>accuracy</th></tr>'
        '<tr><td>kd</td><td>0.61</td></tr></table>'
        '<div class="cell_output"><pre>accuracy 0.61 ± 0.02</pre></div><a href="../index.html#top">back</a>'))
    return html


def _run(html: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), str(html), *extra], capture_output=True, text=True,
                          timeout=300)


def test_clean_site_passes_and_writes_the_screenshot(tmp_path):
    _browser_or_skip()
    html = _site(tmp_path, math=True)
    result = _run(html)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   index.html" in result.stdout and "ok   notebooks/07_results.html" in result.stdout
    assert "2 pages checked" in result.stdout
    shot = tmp_path / "_build" / "results_screenshot.png"
    assert f"screenshot of notebooks/07_results.html: {shot}" in result.stdout
    assert shot.is_file() and shot.stat().st_size > 0


@pytest.mark.parametrize("body, expected", [
    ('<img src="_images/missing.png">', "image not loaded or empty"),
    ('<div class="cell_output"><pre>Traceback (most recent call last):\n  File "x.py"\nValueError: bad</pre></div>',
     "a cell output contains a traceback"),
    ('<p>Energy <span class="math notranslate nohighlight">\\(E = mc^2\\)</span>.</p>',
     "but MathJax is not loaded"),
    ('<p>Energy $$E = mc^2$$</p>', "raw maths in the visible text"),
    ('<p>The rate $\\rho$ of images</p>', "raw maths in the visible text"),
    ('<div class="cell_output"><table><tr><td>0.5</td><td>NaN</td></tr></table></div>', "contains a NaN"),
    ('<div class="cell_output"><pre>cached in /root/.cache/reprolib/runs</pre></div>', "contains a machine path"),
    ('<table><tr><td>SubDistill keeps accur…</td></tr></table>', "truncated table cell"),
    ('<div class="cell_output"><pre>   a  b\n0  1  2\n\n[60 rows x 12 columns]</pre></div>', "truncated table cell"),
    ('<a href="notebooks/08_missing.html">x</a>', "broken link: notebooks/08_missing.html"),
    ('<a href="notebooks/07_results.html#nowhere">x</a>', "no #nowhere in notebooks/07_results.html"),
    ('<script>throw new Error("boom")</script>', "uncaught exception"),
])
def test_broken_site_fails_and_names_the_problem(tmp_path, body, expected):
    _browser_or_skip()
    result = _run(_site(tmp_path, extra_body=body))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL index.html" in result.stdout
    assert expected in result.stdout, result.stdout


def test_missing_results_page_fails(tmp_path):
    _browser_or_skip()
    html = _site(tmp_path)
    (html / "notebooks" / "07_results.html").unlink()
    (html / "index.html").write_text(_page("Intro", "<p>no links</p>"))
    result = _run(html)
    assert result.returncode == 1
    assert "the results page is missing from the build" in result.stdout


def test_wide_content_is_noted_not_failed(tmp_path):
    _browser_or_skip()
    html = _site(tmp_path, extra_body="<pre>" + "x" * 400 + " $$ \\frac{a}{b} \\(x\\)</pre>")
    result = _run(html)
    assert result.returncode == 0, result.stdout
    assert "note: 1 element(s) need sideways scrolling at this width (pre)" in result.stdout


def test_not_a_build_is_a_usage_error(tmp_path):
    result = _run(tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error:") and "no index.html" in result.stderr


def test_required_notice_on_notebook_pages(tmp_path):
    _browser_or_skip()
    html = _site(tmp_path)
    result = _run(html, "--require-text", "numbers mean nothing")
    assert result.returncode == 1
    assert "FAIL notebooks/07_results.html" in result.stdout and "ok   index.html" in result.stdout
    page = html / "notebooks" / "07_results.html"
    page.write_text(page.read_text().replace("<h2", "<p>Smoke preset: these numbers mean nothing.</p><h2"))
    assert _run(html, "--require-text", "numbers mean nothing").returncode == 0

"""Check a built book in headless Chromium, as a reader would see it.

    python scripts/check_book.py _build/html [--results-page notebooks/07_results.html] [--screenshot PATH]

Every content page of the HTML build is served from 127.0.0.1 and opened at 1280 px in headless Chromium
(driven by Playwright through the browser's executable path; no browser download). A page passes when:

* it loads without console errors, uncaught exceptions or failed requests, and requests nothing from the
  network (the book must work offline: MathJax is bundled);
* every ``<img>`` has loaded with a non-zero natural size;
* every formula is rendered: MathJax containers are present where Sphinx wrote maths, and no raw ``\\(``,
  ``\\[``, ``$$`` or LaTeX command (``\\frac``, ``\\texttt``…) is left in the prose (code blocks excepted);
* no cell output contains a traceback, an ``...Error``, a ``nan`` or a machine path (``/root/``, ``/home/``,
  ``/tmp/``, ``/work/``, ``/Users/``); no page text contains a traceback or a machine path;
* every internal link resolves to a file of the build, and its ``#fragment`` to an element of that page;
* no table is truncated (pandas' "…" / "..." cells, or cell text cut with "…").

A full-page screenshot of the results page is written (default: ``<build>/../results_screenshot.png``, i.e.
under ``_build/``). The script prints every page checked and the screenshot's path, and exits 1 listing every
failure. When no Chromium or no Playwright is found it prints a SKIPPED line naming what is missing and exits 0
(``--require-browser`` makes that exit 3 instead); bad usage exits 2.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os
import re
import shutil
import sys
import threading
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

SKIP_PAGES = {"search.html", "genindex.html", "py-modindex.html"}
SKIP_DIRS = {"_static", "_sources", "_images", "_downloads", "_sphinx_design_static", "_panels_static"}
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

TRACEBACK = re.compile(r"Traceback \(most recent call last\)")
ERROR_WORD = re.compile(r"\b\w*Error\b")
NAN_WORD = re.compile(r"\bnan\b", re.I)
MACHINE_PATH = re.compile(r"(?<![\w.~])(/root/|/home/|/tmp/|/work/|/Users/|[A-Z]:\\Users\\)")
PANDAS_CUT = re.compile(r"\[\d+ rows x \d+ columns\]")
RAW_LATEX = re.compile(r"\\(?:texttt|textbf|textit|emph|frac|sqrt|mathrm|mathbf|mathcal|operatorname|sum|alpha|beta|"
                       r"gamma|lambda|rho|sigma|Sigma|mu|cite|ref|eqref)(?![A-Za-z])")
RAW_MATH = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$")

# Runs in the page: everything the checks need, in one round trip.
COLLECT_JS = r"""
() => {
  const main = document.querySelector('main') || document.querySelector('article') || document.body;
  const outputs = Array.from(document.querySelectorAll('.cell_output, div.output'))
      .filter(e => !(e.parentElement && e.parentElement.closest('.cell_output, div.output')))
      .map(e => (e.innerText || '') + '\n' + e.textContent);
  const imgs = Array.from(document.images).map(i => ({
      src: i.currentSrc || i.src, complete: i.complete, w: i.naturalWidth, h: i.naturalHeight}));
  const cells = Array.from(document.querySelectorAll('table td, table th'))
      .map(c => c.textContent.trim());
  const links = Array.from(document.querySelectorAll('a[href]')).map(a => ({
      raw: a.getAttribute('href'), abs: a.href}));
  const ids = Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name'));
  const clone = main.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, textarea, mjx-container, mjx-assistive-mml')
       .forEach(e => e.remove());
  return {
    text: main.innerText,
    prose: clone.textContent,
    outputs: outputs,
    imgs: imgs,
    cells: cells,
    links: links,
    ids: ids,
    sphinxMath: document.querySelectorAll('.math').length,
    unrendered: Array.from(document.querySelectorAll('.math'))
      .filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.trim().slice(0, 60)),
    mjx: document.querySelectorAll('mjx-container').length,
    mathjax: typeof window.MathJax !== 'undefined',
    wide: Array.from(main.querySelectorAll('table, pre, .cell_output, div.math'))
      .filter(e => e.scrollWidth > e.clientWidth + 2 ||
                   (e.parentElement && e.parentElement.scrollWidth > e.parentElement.clientWidth + 2 &&
                    getComputedStyle(e.parentElement).overflowX !== 'visible'))
      .map(e => e.tagName.toLowerCase() + (e.className ? '.' + String(e.className).split(' ')[0] : '')),
  };
}
"""

WAIT_JS = r"""
async () => {
  for (const img of Array.from(document.images)) { if (img.loading === 'lazy') img.loading = 'eager'; }
  const deadline = Date.now() + 15000;
  while (Date.now() < deadline && !Array.from(document.images).every(i => i.complete)) {
    await new Promise(r => setTimeout(r, 100));
  }
  if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
    await Promise.race([window.MathJax.startup.promise, new Promise(r => setTimeout(r, 15000))]);
  }
  return true;
}
"""


def find_chromium(explicit: str | None) -> str | None:
    for candidate in (explicit, os.environ.get("CHROMIUM")):
        if candidate:
            return candidate if Path(candidate).is_file() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def content_pages(html: Path) -> list[Path]:
    pages = []
    for path in sorted(html.rglob("*.html")):
        rel = path.relative_to(html)
        if rel.parts[0] in SKIP_DIRS or rel.as_posix() in SKIP_PAGES:
            continue
        pages.append(path)
    return pages


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # noqa: D401 - no access log on stdout
        pass


def serve(html: Path):
    handler = functools.partial(_QuietHandler, directory=str(html))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def _ids_in_file(path: Path, cache: dict) -> set[str]:
    if path not in cache:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            text = ""
        cache[path] = set(re.findall(r"""\b(?:id|name)=["']([^"']+)["']""", text))
    return cache[path]


def check_page(page, url: str, rel: str, html: Path, base: str, ids_cache: dict,
               require_text: re.Pattern | None = None, notes: list | None = None) -> list[str]:
    """Open one page; return its failures as sentences (and append advisory notes to ``notes``)."""
    problems: list[str] = []
    console, errors, failed, external = [], [], [], []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: failed.append(f"{r.url} ({r.failure})")
            if r.url.startswith(base) else None)
    page.on("response", lambda r: failed.append(f"{r.url} (HTTP {r.status})")
            if r.status >= 400 and r.url.startswith(base) else None)

    def route(r):
        if r.request.url.startswith(base) or r.request.url.startswith("data:"):
            return r.continue_()
        external.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    try:
        page.goto(url, wait_until="load", timeout=60000)
        page.evaluate(WAIT_JS)
        info = page.evaluate(COLLECT_JS)
    except Exception as exc:  # a page that does not load is a failure, not a crash of the checker
        return [f"did not load: {exc}"]

    problems += [f"console error: {m}" for m in console]
    problems += [f"uncaught exception: {m}" for m in errors]
    problems += [f"failed request: {m}" for m in failed]
    problems += [f"requests the network (the book must work offline): {u}" for u in external]

    for img in info["imgs"]:
        if not img["complete"] or img["w"] == 0 or img["h"] == 0:
            problems.append(f"image not loaded or empty: {img['src']}")

    if info["sphinxMath"]:
        if not info["mathjax"]:
            problems.append(f"{info['sphinxMath']} formula(s) but MathJax is not loaded")
        elif info["unrendered"]:
            problems.append(f"{len(info['unrendered'])} of {info['sphinxMath']} formula(s) not rendered by MathJax, "
                            f"e.g. {info['unrendered'][0]!r}")
    raw = RAW_MATH.search(info["prose"]) or RAW_LATEX.search(info["prose"])
    if raw:
        problems.append(f"raw maths in the visible text: ...{_around(info['prose'], raw)}...")

    for text in info["outputs"]:
        for pattern, what in ((TRACEBACK, "a traceback"), (ERROR_WORD, "an error"), (NAN_WORD, "a NaN"),
                              (MACHINE_PATH, "a machine path")):
            m = pattern.search(text)
            if m:
                problems.append(f"a cell output contains {what}: ...{_around(text, m)}...")
    for pattern, what in ((TRACEBACK, "a traceback"), (MACHINE_PATH, "a machine path")):
        m = pattern.search(info["text"])
        if m and not any(pattern.search(t) for t in info["outputs"]):
            problems.append(f"the page text contains {what}: ...{_around(info['text'], m)}...")

    nan_cells = [c for c in info["cells"] if NAN_WORD.fullmatch(c)]
    if nan_cells:
        problems.append(f"{len(nan_cells)} table cell(s) contain a NaN")
    if require_text is not None and rel.startswith("notebooks/") and not require_text.search(info["text"]):
        problems.append(f"the page does not say /{require_text.pattern}/ (e.g. that smoke numbers mean nothing)")
    cut = [c for c in info["cells"] if c in ("…", "...") or c.endswith("…")]
    cut += [m.group(0) for t in info["outputs"] for m in [PANDAS_CUT.search(t)] if m]
    if cut:
        problems.append(f"{len(cut)} truncated table cell(s), e.g. {cut[0]!r}")

    if info["wide"] and notes is not None:
        notes.append(f"{len(info['wide'])} element(s) need sideways scrolling at this width "
                     f"({', '.join(sorted(set(info['wide'])))})")

    seen = set()
    for link in info["links"]:
        target = link["abs"]
        if not target.startswith(base) or target in seen:
            continue
        seen.add(target)
        path_part, frag = urldefrag(target)
        local = unquote(urlparse(path_part).path).lstrip("/")
        file = html / local
        if file.is_dir():
            file = file / "index.html"
        if not file.is_file():
            problems.append(f"broken link: {link['raw']} (no {file.relative_to(html).as_posix()})")
            continue
        if frag:
            ids = set(info["ids"]) if file.resolve() == (html / rel).resolve() else _ids_in_file(file, ids_cache)
            if unquote(frag) not in ids:
                problems.append(f"broken link: {link['raw']} (no #{frag} in {file.relative_to(html).as_posix()})")
    return problems


def _redirect_target(path: Path) -> str | None:
    head = path.read_text(encoding="utf-8", errors="replace")[:2000]
    m = re.search(r"""http-equiv=["']?refresh["']?[^>]*content=["'][^"']*url=([^"'>]+)""", head, re.I)
    return m.group(1).strip() if m else None


def _around(text: str, m: re.Match, width: int = 40) -> str:
    return " ".join(text[max(0, m.start() - width): m.end() + width].split())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("build", type=Path, help="the HTML build (e.g. _build/html) or a folder holding html/")
    parser.add_argument("--results-page", default="notebooks/07_results.html",
                        help="page to screenshot, relative to the HTML build (default: %(default)s)")
    parser.add_argument("--screenshot", type=Path, default=None,
                        help="where to write the screenshot (default: <build>/../results_screenshot.png)")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: $CHROMIUM or on PATH)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--require-text", default=None, metavar="REGEX",
                        help="every notebook page (under notebooks/) must show text matching REGEX (case-insensitive), "
                             "e.g. the smoke book's notice that its numbers mean nothing")
    parser.add_argument("--require-browser", action="store_true", help="exit 3 instead of skipping")
    args = parser.parse_args(argv)

    html = args.build
    if (html / "html" / "index.html").is_file():
        html = html / "html"
    if not (html / "index.html").is_file():
        print(f"error: {args.build} is not an HTML build (no index.html); build the book first (make book)",
              file=sys.stderr)
        return 2
    html = html.resolve()
    screenshot = (args.screenshot or html.parent / "results_screenshot.png").resolve()

    chromium = find_chromium(args.chromium)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium is None or sync_playwright is None:
        missing = "Chromium (apt-get install chromium, or set CHROMIUM)" if chromium is None else \
            "Playwright (pip install playwright==1.65.2; no browser download is needed)"
        print(f"check_book: SKIPPED - the browser check needs {missing}")
        return 3 if args.require_browser else 0

    try:
        require_text = re.compile(args.require_text, re.I) if args.require_text else None
    except re.error as exc:
        print(f"error: --require-text is not a valid regular expression ({exc})", file=sys.stderr)
        return 2
    if screenshot.is_file():
        screenshot.unlink()   # never report a screenshot left by an earlier run
    pages = content_pages(html)
    failures: dict[str, list[str]] = {}
    server, base = serve(html)
    ids_cache: dict = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            context = browser.new_context(viewport={"width": args.width, "height": 900})
            for path in pages:
                rel = path.relative_to(html).as_posix()
                redirect = _redirect_target(path)
                if redirect is not None:   # e.g. Jupyter Book's index.html: only its target must exist
                    target = (path.parent / redirect.split("#")[0]).resolve()
                    ok = target.is_file()
                    print(f"{'ok  ' if ok else 'FAIL'} {rel} (redirects to {redirect})", flush=True)
                    if not ok:
                        failures[rel] = [f"redirects to a missing page: {redirect}"]
                    continue
                page = context.new_page()
                page_notes: list[str] = []
                problems = check_page(page, base + rel, rel, html, base, ids_cache, require_text, page_notes)
                if rel == args.results_page and not any(p.startswith("did not load") for p in problems):
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshot), full_page=True)
                page.close()
                print(f"{'ok  ' if not problems else 'FAIL'} {rel}", flush=True)
                for note in page_notes:
                    print(f"     note: {note}", flush=True)
                if problems:
                    failures[rel] = problems
            browser.close()
    finally:
        server.shutdown()

    checked = {p.relative_to(html).as_posix() for p in pages}
    if args.results_page not in checked:
        failures.setdefault(args.results_page, []).append("the results page is missing from the build")
    print(f"{len(pages)} pages checked in {html} with {chromium} at {args.width} px")
    if screenshot.is_file() and args.results_page in checked:
        print(f"screenshot of {args.results_page}: {screenshot}")
    if failures:
        print(f"\n{sum(map(len, failures.values()))} failure(s):")
        for rel, problems in failures.items():
            for p in problems:
                print(f"  {rel}: {p}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

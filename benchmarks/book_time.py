"""Wall time of the whole book build (``make book`` minus the venv), from an empty cache.

Runs ``scripts/run_notebooks.py --preset quick`` and ``jupyter-book build`` with
``REPROLIB_CACHE`` pointing at a fresh folder (so the mini teacher, the quick
sweep, the calibration runs and the analyses are all computed), times each
notebook, and prints one JSON object. Target on a 2-core CPU: <= 30 minutes (not met by the
converged quick preset: see README, "How long things take").

    python benchmarks/book_time.py [--preset quick] [--keep-cache DIR]

With ``--keep-cache DIR`` holding earlier work (a teacher, finished runs), the
times are those of a resumed build: the JSON says so (``fresh_cache``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--keep-cache", default=None, help="use (and keep) this cache folder instead of a temporary one")
    args = p.parse_args(argv)
    cache = Path(args.keep_cache) if args.keep_cache else Path(tempfile.mkdtemp(prefix="reprolib-book-"))
    env = dict(os.environ, REPROLIB_CACHE=str(cache))
    # A kept cache may already hold the teacher and finished runs: then the times are not from scratch.
    reused = sorted(p.name for p in cache.iterdir() if p.name != "data") if cache.is_dir() else []
    # Reuse the decoded Fashion-MNIST (decoding is not what this measures).
    shared = Path(os.environ.get("REPROLIB_CACHE", Path.home() / ".cache" / "reprolib")) / "data"
    if shared.is_dir() and not (cache / "data").exists():
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "data").symlink_to(shared)
    t0 = time.time()
    nb = subprocess.run([sys.executable, "scripts/run_notebooks.py", "--preset", args.preset], cwd=ROOT, env=env,
                        capture_output=True, text=True)
    t1 = time.time()
    if nb.returncode != 0:
        print(nb.stdout[-3000:], nb.stderr[-3000:], file=sys.stderr)
        return nb.returncode
    jb = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", "_build/book_src",
                         "--path-output", ".", "-W", "-n", "--keep-going"], cwd=ROOT, env=env,
                        capture_output=True, text=True)
    t2 = time.time()
    per_notebook = {m.group(1): float(m.group(2)) for m in
                    re.finditer(r"executing notebooks/(\S+)\.ipynb.*?\n\s+done in (\d+) s", nb.stdout, re.S)}
    print(json.dumps({
        "preset": args.preset,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "notebooks_seconds": round(t1 - t0, 1),
        "per_notebook_seconds": per_notebook,
        "jupyter_book_seconds": round(t2 - t1, 1),
        "total_minutes": round((t2 - t0) / 60, 2),
        "book_build_ok": jb.returncode == 0,
        "cache": str(cache),
        "fresh_cache": not reused,
        "reused_from_cache": reused,
    }, indent=2))
    return 0 if jb.returncode == 0 else jb.returncode


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of the whole book build (``make book`` minus the venv), from an empty cache.

Runs ``scripts/run_notebooks.py --preset quick`` and ``jupyter-book build`` with
``REPROLIB_CACHE`` pointing at a fresh folder (so the mini teacher, the quick
sweep, the calibration runs and the analyses are all computed), times each
notebook, and prints one JSON object. Target on a 2-core CPU: <= 30 minutes (not met by the
converged quick preset: see README, "How long things take").

    python benchmarks/book_time.py [--preset quick] [--device auto] [--precision fp32]
                                   [--keep-cache DIR] [--out FILE]

``--device`` and ``--precision`` are given to the chapters that take them (as
``make book DEVICE=... PRECISION=...`` does); the JSON records the device they
resolved to, and a device or precision the machine cannot run stops it at once.

The notebooks' output is echoed to stderr as it comes. With ``--out FILE`` the JSON is
also written there (atomically) after every notebook, with ``"complete": false`` until
the book is built, so a build stopped half-way still leaves the times it measured.

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
sys.path.insert(0, str(ROOT))

from reprolib.devices import cpu_model  # noqa: E402
from reprolib.io import write_json  # noqa: E402


def git_commit() -> str | None:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or None


def follow(lines, per_notebook: dict, save, echo=None, notes: dict | None = None) -> list[str]:
    """Read ``run_notebooks.py``'s output as it comes: every ``done in N s`` line
    records N for the notebook its ``executing notebooks/NAME.ipynb`` line named, and
    calls ``save()``; the runner's ``estimate_seconds=S`` (its estimate, said before any
    notebook ran) goes to ``notes["estimated_training_seconds"]``. Returns the last 200
    lines (for an error report)."""
    tail, current = [], None
    for line in lines:
        if echo is not None:
            echo.write(line)
        tail = (tail + [line])[-200:]
        estimated = re.search(r"estimate_seconds=([0-9.]+)", line)
        if estimated and notes is not None:   # the runner's estimate, said before any notebook ran
            notes["estimated_training_seconds"] = float(estimated.group(1))
        started = re.match(r"executing notebooks/(\S+)\.ipynb", line)
        done = re.match(r"\s+done in (\d+) s", line)
        if started:
            current = started.group(1)
        elif done and current:
            per_notebook[current] = float(done.group(1))
            current = None
            save()
    return tail


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="quick")
    p.add_argument("--keep-cache", default=None, help="use (and keep) this cache folder instead of a temporary one")
    p.add_argument("--out", default=None, help="also write the JSON here, updated after every notebook")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="fp32", help="fp32 (default) or bf16")
    args = p.parse_args(argv)
    from reprolib.devices import Execution
    from reprolib.errors import ReproError

    try:
        execution = Execution(device=args.device, precision=args.precision)
    except ReproError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cache = Path(args.keep_cache) if args.keep_cache else Path(tempfile.mkdtemp(prefix="reprolib-book-"))
    env = dict(os.environ, REPROLIB_CACHE=str(cache))
    # A kept cache may already hold the teacher and finished runs: then the times are not from scratch.
    reused = sorted(p.name for p in cache.iterdir() if p.name != "data") if cache.is_dir() else []
    # Reuse the decoded Fashion-MNIST (decoding is not what this measures).
    shared = Path(os.environ.get("REPROLIB_CACHE", Path.home() / ".cache" / "reprolib")) / "data"
    if shared.is_dir() and not (cache / "data").exists():
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "data").symlink_to(shared)
    record = {
        "preset": args.preset,
        "device": execution.device,
        "precision": execution.precision,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {cpu_model()}",
        "commit": git_commit(),
        "cache": str(cache),
        "fresh_cache": not reused,
        "reused_from_cache": reused,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "per_notebook_seconds": {},
        "complete": False,
    }

    def save():
        if args.out:
            write_json(args.out, record)

    t0 = time.time()
    save()
    proc = subprocess.Popen([sys.executable, "scripts/run_notebooks.py", "--preset", args.preset,
                             "--param", f"device={args.device}", "--param", f"precision={args.precision}"], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail = follow(proc.stdout, record["per_notebook_seconds"], save, echo=sys.stderr, notes=record)
    rc = proc.wait()
    t1 = time.time()
    record["notebooks_seconds"] = round(t1 - t0, 1)
    if rc != 0:
        record["failed"] = "".join(tail[-20:])
        save()
        return rc
    jb = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", "_build/book_src",
                         "--path-output", ".", "-W", "-n", "--keep-going"], cwd=ROOT, env=env,
                        capture_output=True, text=True)
    t2 = time.time()
    record.update(jupyter_book_seconds=round(t2 - t1, 1), total_minutes=round((t2 - t0) / 60, 2),
                  book_build_ok=jb.returncode == 0, complete=True)
    save()
    print(json.dumps(record, indent=2))
    return 0 if jb.returncode == 0 else jb.returncode


if __name__ == "__main__":
    sys.exit(main())

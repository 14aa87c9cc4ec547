"""Execute every notebook listed in _toc.yml with papermill and stage the book.

The notebooks in git carry no outputs. This script copies the book's sources
(_config.yml, _toc.yml, book/) into _build/book_src/ and writes each executed
notebook there, so that ``jupyter-book build _build/book_src`` publishes the
executed copies. A notebook that fails stops the build with its error.

    python scripts/run_notebooks.py [--preset quick] [--only 01_data_construction]
        [--param run_calibration=false ...]

``--param NAME=VALUE`` (repeatable; the value read as YAML) is given to every
executed notebook whose ``parameters`` cell declares NAME, on top of the preset.
``make book DEVICE=cuda PRECISION=bf16`` passes ``device`` and ``precision`` this
way (defaults ``auto`` and ``fp32``); a device or precision this machine cannot run
is refused with one ``error:`` line before any notebook runs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "_build" / "book_src"
if str(ROOT) not in sys.path:          # run from a source checkout
    sys.path.insert(0, str(ROOT))

from reprolib.errors import ReproError  # noqa: E402


def toc_files(toc: dict) -> list[str]:
    files = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk({k: v for k, v in toc.items() if k != "root"})
    return files


def parse_params(items: list[str]) -> dict:
    """``["run_calibration=false", "workers=4"]`` -> ``{"run_calibration": False, "workers": 4}``."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.isidentifier():
            raise ValueError(f"--param {item!r} is not NAME=VALUE; e.g. --param run_calibration=false")
        out[name] = yaml.safe_load(value)
    return out


def check_execution(params: dict) -> None:
    """A ``device`` or ``precision`` parameter the chapters could not run with is refused
    here, before any notebook runs (an unknown device, CUDA where torch sees none, bf16
    on a CPU without native bf16): a :class:`ReproError` naming it and the fix."""
    if "device" not in params and "precision" not in params:
        return
    from reprolib.devices import Execution

    Execution(device=str(params.get("device", "auto")), precision=str(params.get("precision", "fp32")))


SWEEP_CHAPTER = "04_contamination_sweep"


def print_estimate(preset: str, params: dict) -> None:
    """Say, before any notebook runs, how long the book's training should take on this
    machine (:func:`reprolib.estimate.estimate_book`: a few seconds of measured
    calibration); a failure to estimate is said and does not stop the build."""
    try:
        from reprolib.devices import Execution
        from reprolib.estimate import describe, estimate_book
        from reprolib.pages import duration

        execution = Execution(device=str(params.get("device", "auto")),
                              precision=str(params.get("precision", "fp32")))
        workers = params.get("workers", 2)
        est = estimate_book(preset, execution, world=str(params.get("world", "mini")),
                            workers=workers if isinstance(workers, int) and workers > 0 else 2)
    except Exception as e:  # noqa: BLE001 - an estimate is a courtesy, never a reason to stop
        print(f"no time estimate ({type(e).__name__}: {e})", flush=True)
        return
    if est["seconds"] is None:
        print("no time estimate for the book: " + "; ".join(describe(e) for e in est["grids"].values()), flush=True)
        return
    print(f"estimated training still to do for the book ({preset}): {duration(est['seconds'])} "
          f"(the analyses of chapters 2, 5-7 and 9 not included; estimate_seconds={est['seconds']})", flush=True)
    for name, e in est["grids"].items():
        print(f"  {name}: {describe(e)}", flush=True)


def ipc_kernel_manager(folder: Path):
    """A Jupyter kernel manager class whose kernels talk over Unix sockets in
    ``folder``, not over five TCP ports on 127.0.0.1 (ipykernel still binds one
    loopback port of its own, for the output of forked subprocesses)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", str(Path(folder) / "kernel"))
            super().__init__(**kwargs)

    return IPCKernelManager


def main(argv=None) -> int:
    import papermill

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick", help="the preset parameter given to every notebook")
    parser.add_argument("--only", action="append", default=None, help="run only these notebook stems")
    parser.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                        help="a parameter for the notebooks that declare it (value read as YAML)")
    parser.add_argument("--no-estimate", action="store_true",
                        help="do not print the estimated training time before the notebooks run")
    args = parser.parse_args(argv)
    try:
        extra = parse_params(args.param)
        check_execution(extra)
    except (ValueError, ReproError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    if not args.no_estimate and (not args.only or SWEEP_CHAPTER in args.only):
        print_estimate(args.preset, extra)
    STAGE.mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, STAGE / name)
    if (STAGE / "book").exists():
        shutil.rmtree(STAGE / "book")
    shutil.copytree(ROOT / "book", STAGE / "book")
    (STAGE / "notebooks").mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reprolib-kernel-") as sockets:
        run_all(papermill, toc, args, extra, ipc_kernel_manager(Path(sockets)))
    return 0


# The results page reads what every other chapter computed (its "Beyond the paper" section
# the studies of the last part): it is executed last, though the book shows it earlier.
RUN_LAST = ("notebooks/07_results",)


def execution_order(files: list[str]) -> list[str]:
    """The table of contents' files in the order they are executed: as listed, with
    :data:`RUN_LAST` moved to the end."""
    return [f for f in files if f not in RUN_LAST] + [f for f in files if f in RUN_LAST]


def run_all(papermill, toc, args, extra, kernel_manager_class) -> None:
    """Execute the notebooks of the table of contents into the staged book (:func:`execution_order`)."""
    for entry in execution_order(toc_files(toc)):
        src = ROOT / (entry + ".ipynb")
        if not src.is_file():
            continue   # a markdown page, already copied with book/
        if args.only and src.stem not in args.only:
            continue
        dst = STAGE / (entry + ".ipynb")
        start = time.time()
        declared = set(papermill.inspect_notebook(str(src)))
        params = {"preset": args.preset, **{k: v for k, v in extra.items() if k in declared}}
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        print(f"executing {src.relative_to(ROOT)} ({shown}) ...", flush=True)
        papermill.execute_notebook(str(src), str(dst), parameters=params,
                                   cwd=str(src.parent), kernel_name="python3", progress_bar=False,
                                   kernel_manager_class=kernel_manager_class)
        hide_injected_parameters(dst)
        print(f"  done in {time.time() - start:.0f} s -> {dst.relative_to(ROOT)}", flush=True)


def hide_injected_parameters(path: Path) -> None:
    """Tag papermill's injected-parameters cell ``remove-cell``: readers of the book
    see the chapter's own parameters cell and its rerun command, not plumbing."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.setdefault("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            tags.append("remove-cell")
    tmp = path.with_name(f".{path.name}.tmp")
    nbformat.write(nb, tmp)
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())

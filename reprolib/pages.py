"""What every page of the book does around its results: the smoke-preset warning,
tables rendered in full (no truncation, "–" for missing values), generated prose,
quiet library calls (no progress bars or internal paths on the page) and the
closing rerun command with the run time and hardware of the result."""

from __future__ import annotations

import contextlib
import io
import math
import os
import platform
import shlex
from typing import Any, Mapping

SMOKE_NOTE = ("These pages were built with the <b>smoke</b> preset: tiny data, a few training steps and "
              "one seed, only to check that the code runs. <b>Its numbers mean nothing</b>; build the book "
              "with the <code>quick</code> preset for results.")


def setup(preset: str):
    """Book style for figures, no progress bars, pandas shows tables in full; shows the
    smoke note when ``preset == "smoke"``."""
    import pandas as pd

    from .figures import use_book_style

    os.environ["TQDM_DISABLE"] = "1"
    _inline_figures()
    use_book_style()
    for opt, val in (("display.max_rows", None), ("display.max_columns", None),
                     ("display.max_colwidth", None), ("display.width", None)):
        pd.set_option(opt, val)
    smoke_note(preset)


def _inline_figures() -> None:
    """In a Jupyter kernel, show figures inline even when MPLBACKEND says Agg."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is not None and getattr(ip, "kernel", None) is not None:
        ip.run_line_magic("matplotlib", "inline")


def _display(obj) -> None:
    """Show ``obj`` once (helpers return None so that a cell's last line is not shown twice)."""
    try:
        from IPython.display import display
    except ImportError:   # outside IPython: print the text
        print(getattr(obj, "data", obj))
        return
    display(obj)


def html(text: str):
    from IPython.display import HTML

    _display(HTML(text))


def smoke_note(preset: str):
    if preset != "smoke":
        return
    html(f'<div class="admonition warning"><p class="admonition-title">Smoke build: the numbers '
                f'mean nothing</p><p>{SMOKE_NOTE}</p></div>')


def say(text: str):
    """Generated prose as a paragraph of the page (not as printed output)."""
    from IPython.display import Markdown

    _display(Markdown(text))


def fmt(value: Any, digits: int = 3) -> str:
    """One table cell: "–" for missing, floats to ``digits`` places, integers as such."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int,)) and not isinstance(value, bool):
        return str(value)
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(f):
        return "–"
    if f.is_integer() and abs(f) < 1e6 and not isinstance(value, float):
        return str(int(f))
    if round(f, digits) == 0:
        f = 0.0   # no "-0.000"
    return f"{f:.{digits}f}"


def table_html(df, digits: int = 3, index: bool = False, columns: Mapping[str, str] | None = None) -> str:
    """The whole table as HTML (never truncated), missing values as "–"."""
    d = df.reset_index() if index else df.copy()
    if columns:
        d = d.rename(columns=columns)
    for col in d.columns:   # contamination rates read as 0, 0.5, 1
        if str(col) in ("ρ", "rho") or str(col).startswith("ρ "):
            d[col] = d[col].map(lambda v: fmt(v) if isinstance(v, str) or fmt(v) == "–" else f"{float(v):g}")
    d = d.astype(object).map(lambda v: fmt(v, digits)) if hasattr(d, "map") else d.applymap(lambda v: fmt(v, digits))
    return d.to_html(index=False, escape=True, border=0, classes="dataframe table")


def table(df, digits: int = 3, index: bool = False, columns: Mapping[str, str] | None = None):
    """Display :func:`table_html`."""
    html(table_html(df, digits, index, columns))


@contextlib.contextmanager
def quiet():
    """Run library calls without their log lines and progress output on the page."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield buf


def hardware(device: str = "cpu", threads: int | None = None) -> str:
    """Where this page ran, in words (no paths, no host names)."""
    import torch

    text = f"{_cpu_name()}, {os.cpu_count()} cores"
    if str(device).startswith("cuda") and torch.cuda.is_available():
        text = f"{torch.cuda.get_device_name(0)} GPU; " + text
    if threads:
        text += f", {threads} thread(s) per run"
    return text + f", Python {platform.python_version()}, PyTorch {torch.__version__}"


def _cpu_name() -> str:
    from .devices import cpu_model

    return cpu_model() + " CPU"


def duration(seconds: float) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "–"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def papermill_command(notebook: str, params: Mapping[str, Any], out: str = "out.ipynb") -> str:
    """The exact ``papermill`` command that reruns ``notebook`` with ``params``."""
    parts = ["papermill", notebook, out]
    for k, v in params.items():
        if isinstance(v, (list, tuple, dict)):
            import json

            parts += ["-y", shlex.quote(f"{k}: {json.dumps(list(v) if isinstance(v, tuple) else v)}")]
        else:
            parts += ["-p", k, shlex.quote(str(v))]
    return " ".join(parts)


def footer(notebook: str, params: Mapping[str, Any], page_seconds: float, *, device: str = "cpu",
           precision: str = "fp32", compute_seconds: float | None = None, compute_note: str = ""):
    """The closing "Rerun" section: command, run time, hardware, device and precision of the result.

    ``device`` is where the page's models computed (``"auto"`` is resolved: CUDA
    when torch sees one, else the CPU); ``precision`` is ``fp32`` or ``bf16``.
    """
    from .devices import resolve_device

    lines = ["**Rerun this chapter.** From the repository root:", "",
             f"```\n{papermill_command(notebook, params)}\n```", ""]
    dev = resolve_device(str(device))
    timing = (f"This page executed in {duration(page_seconds)} on {hardware(dev)}; its models computed on "
              f"**{dev}** in **{precision}**.")
    if compute_seconds is not None:
        timing += (f" The training behind its results took {duration(compute_seconds)} of compute in total"
                   + (f" ({compute_note})" if compute_note else "") + "; finished runs are reused, not retrained.")
    lines.append(timing)
    say("\n".join(lines))

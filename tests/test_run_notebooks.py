"""scripts/run_notebooks.py: the --param option (parsing and the error before any work)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run_notebooks.py"


def _module():
    spec = importlib.util.spec_from_file_location("run_notebooks", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_params_are_read_as_yaml():
    mod = _module()
    assert mod.parse_params(["run_calibration=false", "workers=4", "out_dir=null", "seed=1", "name=a=b"]) == {
        "run_calibration": False, "workers": 4, "out_dir": None, "seed": 1, "name": "a=b"}
    for bad in ("workers", "=3", "two words=1"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            mod.parse_params([bad])


def test_a_bad_param_stops_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "nothing", "--param", "oops"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --param 'oops' is not NAME=VALUE") and "Traceback" not in proc.stderr

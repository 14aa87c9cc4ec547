"""scripts/run_notebooks.py: the --param option (parsing and the error before any work)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from _scripts import load_script

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "run_notebooks.py"


def _module():
    return load_script(SCRIPT)


def test_params_are_read_as_yaml():
    mod = _module()
    assert mod.parse_params(["run_calibration=false", "workers=4", "out_dir=null", "seed=1", "name=a=b"]) == {
        "run_calibration": False, "workers": 4, "out_dir": None, "seed": 1, "name": "a=b"}
    for bad in ("workers", "=3", "two words=1"):
        with pytest.raises(ValueError, match="NAME=VALUE"):
            mod.parse_params([bad])


def test_the_results_page_is_executed_last():
    """The results page reads every other chapter's results (its "Beyond the paper" section
    those of the last part), so it runs after them, though the book lists it earlier."""
    import yaml

    mod = _module()
    files = mod.toc_files(yaml.safe_load((ROOT / "_toc.yml").read_text()))
    order = mod.execution_order(files)
    assert sorted(order) == sorted(files) and order[-1] == "notebooks/07_results"
    assert files.index("notebooks/07_results") < files.index("notebooks/08_aligned_layers")
    assert [f for f in order if f != "notebooks/07_results"] == [f for f in files if f != "notebooks/07_results"]


def test_a_bad_param_stops_before_any_work(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "nothing", "--param", "oops"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: --param 'oops' is not NAME=VALUE") and "Traceback" not in proc.stderr


@pytest.mark.parametrize("params, words", [
    (["device=tpu"], "error: unknown device 'tpu'; choose auto, cpu, cuda or cuda:N"),
    (["precision=fp16"], "error: unknown precision 'fp16'; choose one of fp32, bf16"),
])
def test_a_device_or_precision_the_chapters_cannot_use_stops_before_any_work(params, words):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--only", "nothing",
                           *[a for p in params for a in ("--param", p)]],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == words and "executing" not in proc.stdout


def test_bf16_on_a_cpu_without_it_is_refused_before_any_notebook(monkeypatch):
    from reprolib import devices
    from reprolib.errors import ReproError

    mod = _module()
    monkeypatch.setattr(devices, "cpu_flags", lambda *_: {"avx2"})
    with pytest.raises(ReproError, match="bf16 on this CPU would be emulated"):
        mod.check_execution({"device": "cpu", "precision": "bf16"})
    mod.check_execution({"device": "auto", "precision": "fp32"})
    mod.check_execution({"preset": "quick"})          # nothing asked: nothing checked
    monkeypatch.setattr(devices, "cpu_flags", lambda *_: {"amx_bf16"})
    mod.check_execution({"device": "cpu", "precision": "bf16"})


def test_notebooks_run_in_a_kernel_on_unix_sockets(tmp_path):
    """The book's kernels talk over Unix sockets in a private folder: their five channels open no TCP port."""
    nbformat = pytest.importorskip("nbformat")
    papermill = pytest.importorskip("papermill")
    mod = _module()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import json, os\n"
        "from ipykernel.kernelapp import IPKernelApp\n"
        "app = IPKernelApp.instance()\n"
        "print(json.dumps({'transport': app.transport, 'ip': app.ip}))")]
    src, dst = tmp_path / "in.ipynb", tmp_path / "out.ipynb"
    nbformat.write(nb, src)
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    papermill.execute_notebook(str(src), str(dst), kernel_name="python3", progress_bar=False,
                               kernel_manager_class=mod.ipc_kernel_manager(sockets))
    import json

    seen = json.loads(nbformat.read(dst, 4).cells[0].outputs[0]["text"])
    assert seen == {"transport": "ipc", "ip": str(sockets / "kernel")}

"""benchmarks/book_time.py reads the notebook runner's output as it comes and
records each notebook's time when it finishes (so a stopped build keeps them)."""

import io
import json

from _scripts import load_script


def test_follow_records_each_notebook_when_it_finishes(tmp_path):
    bt = load_script("benchmarks/book_time.py")
    lines = [
        "executing notebooks/01_data_construction.ipynb (preset=quick) ...\n",
        "some output of the notebook\n",
        "  done in 1534 s -> _build/book_src/notebooks/01_data_construction.ipynb\n",
        "executing notebooks/02_subspace_derivation.ipynb (preset=quick) ...\n",
        "  done in 19 s -> _build/book_src/notebooks/02_subspace_derivation.ipynb\n",
        "executing notebooks/03_training.ipynb (preset=quick) ...\n",
        "Traceback (most recent call last):\n",
    ]
    per_notebook, snapshots = {}, []
    out = tmp_path / "partial.json"
    record = {"per_notebook_seconds": per_notebook, "complete": False}

    def save():
        bt.write_json(out, record)
        snapshots.append(json.loads(out.read_text())["per_notebook_seconds"])

    echo = io.StringIO()
    tail = bt.follow(iter(lines), per_notebook, save, echo=echo)
    # one save per finished notebook, each holding what had finished by then
    assert snapshots == [{"01_data_construction": 1534.0},
                         {"01_data_construction": 1534.0, "02_subspace_derivation": 19.0}]
    # the unfinished notebook has no time, and the error is kept for the report
    assert "03_training" not in per_notebook
    assert tail[-1].startswith("Traceback")
    assert echo.getvalue() == "".join(lines)


def test_a_device_this_machine_cannot_run_stops_at_once(tmp_path, capsys):
    bt = load_script("benchmarks/book_time.py", "book_time_bad_device")
    out = tmp_path / "never.json"
    assert bt.main(["--device", "tpu", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == "error: unknown device 'tpu'; choose auto, cpu, cuda or cuda:N"
    assert not out.exists()    # nothing started, nothing written

"""Notebook hygiene: paired and in sync, no outputs, a kernelspec, one parameters cell whose
defaults are the `small` parameter set, and parameter files that only name declared parameters.
(The notebooks themselves run at `smoke` scale under nbval in `make test`.)"""
import json
from pathlib import Path

import jupytext
import papermill
import pytest
import yaml

NB_DIR = Path(__file__).resolve().parents[1] / "notebooks"
SOURCES = sorted(NB_DIR.glob("[0-9][0-9]_*.py"))


def test_there_are_notebooks():
    assert SOURCES, "no notebooks/NN_*.py found"


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_pair_in_sync_without_outputs(py):
    ipynb = py.with_suffix(".ipynb")
    assert ipynb.is_file(), f"{ipynb.name} missing: run `jupytext --sync {py}`"
    a, b = jupytext.read(py), jupytext.read(ipynb)
    cells = lambda nb: [(c.cell_type, c.source.strip()) for c in nb.cells]  # noqa: E731
    assert cells(a) == cells(b), f"{py.name} and {ipynb.name} differ: run `jupytext --sync {py}`"
    raw = json.loads(ipynb.read_text())
    assert raw["metadata"]["kernelspec"]["name"] == "python3"
    assert not any(c.get("outputs") for c in raw["cells"]), f"{ipynb.name} is committed with outputs"
    assert not any(c.get("execution_count") for c in raw["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("py", SOURCES, ids=lambda p: p.stem)
def test_parameters_cell_defaults_are_the_small_set(py):
    nb = jupytext.read(py)
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    declared = papermill.inspect_notebook(str(py.with_suffix(".ipynb")))
    small = yaml.safe_load((NB_DIR / "params" / "small.yaml").read_text())
    expected = {**small.get("common", {}), **small.get(py.stem, {})}
    expected.pop("interactive", None)  # widgets by default in JupyterLab, static figures in batch runs
    for name, value in expected.items():
        if name in declared:
            assert declared[name]["default"] == repr(value) or yaml.safe_load(declared[name]["default"]) == value, (
                f"{py.name}: default {name} = {declared[name]['default']} but small.yaml says {value!r}")


@pytest.mark.parametrize("scale", ["smoke", "small", "gpu", "full"])
def test_parameter_files_name_declared_parameters(scale):
    params = yaml.safe_load((NB_DIR / "params" / f"{scale}.yaml").read_text())
    for py in SOURCES:
        declared = papermill.inspect_notebook(str(py.with_suffix(".ipynb")))
        unknown = set(params.get(py.stem) or {}) - set(declared)
        assert not unknown, f"{scale}.yaml sets {unknown} for {py.stem}, which does not declare them"
        assert py.stem in params, f"{scale}.yaml has no section for {py.stem}"


def test_manifest_keeps_other_notebooks_and_earlier_runs(tmp_path):
    from stt.runner import _record

    path = tmp_path / "manifest.json"
    _record(path, "small", {"torch": "x"}, "01_a", {"seconds": 100.0, "status": "ok"})
    _record(path, "small", {"torch": "x"}, "02_b", {"seconds": 50.0, "status": "ok"})
    m = _record(path, "small", {"torch": "x"}, "01_a", {"seconds": 3.0, "status": "ok"})  # a resumed run
    assert set(m["notebooks"]) == {"01_a", "02_b"}
    assert m["notebooks"]["01_a"]["seconds"] == 3.0
    assert [h["seconds"] for h in m["notebooks"]["01_a"]["history"]] == [100.0]
    assert json.loads(path.read_text()) == m


def test_publish_puts_each_scale_in_its_own_readme_block(tmp_path):
    from stt.runner import publish

    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- results:t -->\nold\n<!-- /results:t -->\nb\n<!-- results:gpu/t -->\nold\n<!-- /results:gpu/t -->\n"
                      "<!-- results:study/q -->\nold\n<!-- /results:study/q -->\n")
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "q.md").write_text("| queue study |\n")
    for scale in ("small", "gpu"):
        run = tmp_path / scale
        (run / "results").mkdir(parents=True)
        (run / "results" / "t.md").write_text(f"| {scale} |\n")
        (run / "manifest.json").write_text(json.dumps({"scale": scale}))
        publish(run, readme, tmp_path / "figures", studies)
    text = readme.read_text()
    assert "<!-- results:t -->\n| small |\n<!-- /results:t -->" in text
    assert "<!-- results:gpu/t -->\n| gpu |\n<!-- /results:gpu/t -->" in text
    assert "<!-- results:study/q -->\n| queue study |\n<!-- /results:study/q -->" in text

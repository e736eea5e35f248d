"""Run the notebooks in order with papermill at one scale, into one run folder.

``python -m stt.runner --scale small --out runs/small`` executes every ``notebooks/NN_*.ipynb``
with the parameters of ``notebooks/params/<scale>.yaml`` (its ``common`` section plus the
notebook's own section) and writes::

    <out>/NN_topic.ipynb     the executed notebooks
    <out>/figures/*.png      every figure they save
    <out>/...                checkpoints, CSVs and results the notebooks write
    <out>/manifest.json      settings, versions, timings and status of each notebook

``--prepare-only`` injects the parameters without executing (for ``pytest --nbval-lax``).
A notebook whose parameter file names a parameter it does not declare is an error.

``--publish`` (after a ``small``, ``gpu`` or ``full`` run) regenerates what the README shows from
that run: each ``<out>/results/NAME.md`` replaces the README block between
``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` (``results:gpu/NAME`` for a ``gpu``
run, and so on: the scales' tables stand side by side), and a ``small`` run's figures of
:data:`PUBLISHED_FIGURES` are copied to ``figures/``. Nothing in the README's results is typed
by hand.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

from .checkpoint import write_text
from .report import STUDY_RESULTS
from .viz import shrink_png

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SCALES = ("smoke", "small", "gpu", "full")
PUBLISHED_FIGURES = ("06_all_models", "06_qualitative", "06_explorer_affinity", "02_reconstruction_uncertainty",
                     "03_drift", "05_skeletons", "04_protocol_options")


def notebook_paths(only=None) -> list[Path]:
    paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.stem.startswith(o) for o in only)]
    return paths


def load_params(scale: str) -> dict:
    path = NOTEBOOKS / "params" / f"{scale}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"parameter set not found: {path} (expected one of {SCALES})")
    return yaml.safe_load(path.read_text()) or {}


def notebook_parameters(nb: Path, scale: str, run_dir: Path, params: dict) -> dict:
    """The parameters papermill injects into ``nb``: common + its section, checked against its cell."""
    import papermill

    declared = papermill.inspect_notebook(str(nb))
    wanted = {**(params.get("common") or {}), **(params.get(nb.stem) or {})}
    wanted.update(scale=scale, run_dir=str(run_dir.resolve()))
    unknown = sorted(set(params.get(nb.stem) or {}) - set(declared))
    if unknown:
        raise ValueError(f"notebooks/params/{scale}.yaml sets {unknown} for {nb.name}, which declares no such parameter")
    return {k: v for k, v in wanted.items() if k in declared}


def _versions() -> dict:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    return {
        "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
        "processor": platform.processor(), "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_threads": torch.get_num_threads(), "git_commit": commit, "git_dirty": dirty,
    }


def run(scale: str, out: Path, only=None, prepare_only: bool = False, kernel: str = "python3") -> dict:
    import papermill

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    params = load_params(scale)
    manifest_path = out / "manifest.json"
    versions, manifest = _versions(), {}
    for nb in notebook_paths(only):
        p = notebook_parameters(nb, scale, out, params)
        print(f"[stt.runner] {nb.name} ({scale}) -> {out / nb.name}", flush=True)
        t0 = time.time()
        entry = {"parameters": p, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            papermill.execute_notebook(str(nb), str(out / nb.name), parameters=p, kernel_name=kernel,
                                       prepare_only=prepare_only, cwd=str(NOTEBOOKS), progress_bar=False,
                                       log_output=not prepare_only)
            entry["status"] = "prepared" if prepare_only else "ok"
        except Exception:
            entry["status"] = "failed"
            raise
        finally:
            entry["seconds"] = round(time.time() - t0, 1)
            manifest = _record(manifest_path, scale, versions, nb.stem, entry)
    return manifest


def _record(manifest_path: Path, scale: str, versions: dict, name: str, entry: dict) -> dict:
    """Add one notebook's entry to the manifest, re-read just before writing (two runners on one
    folder do not erase each other's entries). Earlier runs of the notebook stay in ``history``:
    a resumed run is short, the first complete one says what the work costs."""
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.update(scale=scale, versions=versions)
    old = manifest.setdefault("notebooks", {}).get(name)
    if old:
        entry["history"] = old.pop("history", []) + [old]
    manifest["notebooks"][name] = entry
    write_text(manifest_path, json.dumps(manifest, indent=2))
    return manifest


def publish(run_dir: Path, readme: Path = REPO / "README.md", figures: Path = REPO / "figures",
            studies: Path = STUDY_RESULTS) -> list[str]:
    """Copy a run's results tables into the README's marked blocks and its figures to figures/;
    with a ``small`` run, also the study tables of ``studies/results`` (blocks ``study/<name>``)."""
    run_dir = Path(run_dir)
    manifest = run_dir / "manifest.json"
    scale = json.loads(manifest.read_text()).get("scale", "small") if manifest.is_file() else "small"
    text = readme.read_text()
    done = []
    tables = [(md.stem if scale == "small" else f"{scale}/{md.stem}", md) for md in sorted((run_dir / "results").glob("*.md"))]
    if scale == "small":
        tables += [(f"study/{md.stem}", md) for md in sorted(Path(studies).glob("*.md"))]
    for name, md in tables:
        pattern = re.compile(rf"(<!-- results:{re.escape(name)} -->\n).*?(<!-- /results:{re.escape(name)} -->)", re.S)
        if pattern.search(text):
            block = md.read_text().strip() + "\n"
            text = pattern.sub(lambda m: m.group(1) + block + m.group(2), text)
            done.append(name)
    readme.write_text(text)
    if scale != "small":
        return done
    figures.mkdir(exist_ok=True)
    for stale in figures.glob("*.png"):
        if stale.stem not in PUBLISHED_FIGURES:
            stale.unlink()
    for name in PUBLISHED_FIGURES:
        src = run_dir / "figures" / f"{name}.png"
        if src.is_file():
            shutil.copy(src, figures / src.name)
            shrink_png(figures / src.name)
            done.append(src.name)
    return done


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", choices=SCALES, default="small")
    ap.add_argument("--out", default=None, help="run folder [runs/<scale>]")
    ap.add_argument("--only", default=None, help="comma-separated notebook prefixes, e.g. 04,05")
    ap.add_argument("--prepare-only", action="store_true", help="inject parameters, do not execute")
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--publish", action="store_true", help="after running, update README results and figures/")
    ap.add_argument("--publish-only", action="store_true", help="only publish an existing run folder")
    a = ap.parse_args(argv)
    out = Path(a.out or REPO / "runs" / a.scale)
    if not a.publish_only:
        logging.basicConfig(format="%(message)s")
        pm_log = logging.getLogger("papermill")
        pm_log.setLevel(logging.INFO)  # cell outputs as they come; not the cell start/end markers
        pm_log.addFilter(lambda r: not str(r.msg).startswith(("Executing Cell", "Ending Cell", "Executing notebook")))
        run(a.scale, out, a.only.split(",") if a.only else None, a.prepare_only, a.kernel)
    if a.publish or a.publish_only:
        print("published:", ", ".join(publish(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

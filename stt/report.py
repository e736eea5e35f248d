"""Results tables: evaluate a set of models, tabulate J&F with intervals and paired differences,
state claims, write ``<run>/results/NAME.md`` (what the README shows, :mod:`stt.runner`) and
read the studies' tables (``studies/results/``). One call per notebook table.

Every J&F interval is a 95 % bootstrap over sequences (:func:`stt.metrics.bootstrap_ci`); every
difference is paired by sequence (:func:`stt.metrics.paired_difference`), so the spread between
easy and hard sequences cancels.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .checkpoint import write_text
from .metrics import bootstrap_ci, paired_difference

REPO = Path(__file__).resolve().parents[1]
STUDY_RESULTS = REPO / "studies" / "results"


def data_description(synthetic: bool, ds, names, short_side) -> str:
    """What a table's rows were measured on, in one cell."""
    where = "synthetic stand-in" if synthetic else f"DAVIS-{ds.year} {ds.split}"
    return f"{where}, {len(names)} sequences, short side {short_side}"


def evaluate_models(davis_root, models: dict, run_dir: Path, names, short_side, device="auto", **kw) -> tuple[dict, dict]:
    """``stt evaluate davis`` for each ``label: (model, folder)``, into ``run_dir/eval/davis/<folder>``
    (shared by the notebooks: a row computed by an earlier one is re-read, not recomputed).
    Returns (global results, per-sequence J&F), both by label."""
    from .evaluate import evaluate_davis, per_sequence_jf

    results, per_seq = {}, {}
    for label, (model, folder) in models.items():
        folder = Path(run_dir) / "eval" / "davis" / folder
        results[label] = evaluate_davis(davis_root, model, folder, short_side=short_side, sequences=names,
                                        device=device, **kw)
        per_seq[label] = per_sequence_jf(folder)
    return results, per_seq


def jf_cell(jf: dict) -> tuple[float, float, float]:
    """Mean J&F (%) over sequences and its 95 % interval."""
    x = [100 * v for v in jf.values()]
    lo, hi = bootstrap_ci(x)
    return float(np.mean(x)), lo, hi


def difference(a: dict, b: dict) -> str:
    """``a`` minus ``b`` (per-sequence J&F, paired), as "+d.d [+lo, +hi]"."""
    return "{:+.1f} [{:+.1f}, {:+.1f}]".format(*paired_difference(a, b)[:3])


def jf_table(results: dict, per_seq: dict, ref: str, training: dict, data: str, paper=()) -> str:
    """Markdown: one row per label (J&F, its interval, ``ref`` minus it, J, F, how it was trained,
    ``data``), then the papers' rows ``(label, J&F, training, data)``."""
    lines = [f"| model | J&F | 95 % CI | {ref.removeprefix('STT step 2: ')} minus this [95 % CI] | J | F | training | data |",
             "|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        _, lo, hi = jf_cell(per_seq[label])
        diff = "" if label == ref else difference(per_seq[ref], per_seq[label])
        lines.append(f"| {label} | {100 * r['J&F-Mean']:.1f} | [{lo:.1f}, {hi:.1f}] | {diff} | {100 * r['J-Mean']:.1f} "
                     f"| {100 * r['F-Mean']:.1f} | {training.get(label, '')} | {data} |")
    lines += [f"| {label} (paper) | {jf} | | | | | {train} | {where} |" for label, jf, train, where in paper]
    return "\n".join(lines)


def claim(text: str, a: dict, b: dict, margin: float = 0.0) -> str:
    """Whether ``a`` beats ``b`` by more than ``margin`` J&F (per-sequence J&F, paired): a line
    with both means, the difference and its interval, and whether the interval is clear of the
    margin (at least 5 sequences)."""
    d, lo, hi, n = paired_difference(a, b)
    mean_a, mean_b = 100 * np.mean(list(a.values())), 100 * np.mean([b[k] for k in a])
    clear = ("too few sequences to tell" if n < 5 else
             "clear" if lo > margin or hi < margin else "within the sequence-to-sequence noise")
    return (f"{text}: {'yes' if d > margin else 'no'} ({mean_a:.1f} vs {mean_b:.1f} J&F; difference {d:+.1f}, "
            f"95 % CI [{lo:+.1f}, {hi:+.1f}] over {n} sequences: {clear}{f' of +{margin:g}' if margin else ''})")


def write_results(run_dir: Path, name: str, text: str | None, data: dict | None = None) -> None:
    """``run_dir/results/NAME.md`` with ``text`` and ``NAME.json`` with ``data`` (each when given),
    atomically."""
    folder = Path(run_dir) / "results"
    folder.mkdir(parents=True, exist_ok=True)
    if text is not None:
        write_text(folder / f"{name}.md", text + "\n")
    if data is not None:
        write_text(folder / f"{name}.json", json.dumps(data, indent=2))


def study_table(name: str) -> str:
    """The markdown table of ``studies/results/<name>.md`` (made by ``python studies/run.py
    <name>``), or a line saying how to make it: the evidence behind the presets."""
    path = STUDY_RESULTS / f"{name}.md"
    if path.is_file():
        return path.read_text()
    return f"*{path.relative_to(REPO)} not found: run `python studies/run.py {name}` from the project's root.*"


def study_results(name: str) -> dict:
    """The per-variant results of ``studies/results/<name>.json`` (settings and per-sequence
    J&F), or ``{}`` when the study has not been run."""
    path = STUDY_RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def study_rows(study: dict, ref: str, variants: dict) -> str:
    """Markdown: each of ``variants`` (name: what differs) that the study ran, its J&F and
    interval, and the study's ``ref`` minus it."""
    lines = [f"| study variant | what differs | J&F | 95 % CI | {ref} minus this [95 % CI] |", "|---|---|---|---|---|"]
    for v, what in variants.items():
        if v in study:
            mean, lo, hi = jf_cell(study[v]["jf"])
            diff = "" if v == ref else difference(study[ref]["jf"], study[v]["jf"])
            lines.append(f"| {v} | {what} | {mean:.1f} | [{lo:.1f}, {hi:.1f}] | {diff} |")
    return "\n".join(lines)

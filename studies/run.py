"""Short training runs scored on DAVIS development sequences: the evidence behind the presets.

Each study is a list of variants (a recipe, its settings, a number of steps); every variant is
trained into ``runs/studies/<study>/<variant>/`` and evaluated by label propagation (the common
protocol, STT defaults) on the first ``--sequences`` DAVIS sequences at short side 240. The
results table (J&F per variant, mean over sequences with a 95 % bootstrap interval, and the
difference to the study's reference variant paired by sequence) is written to
``studies/results/<study>.md`` and ``.json``: committed, so the notebooks can cite them.

    STT_DATA=../shared/data python studies/run.py queue [--sequences 8] [--only a,b] [--table-only]

Everything resumes: a finished variant is only re-scored. DAVIS is only ever evaluated on.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from stt.checkpoint import write_text  # noqa: E402
from stt.datasets import DAVIS, data_path, data_root# noqa: E402
from stt.evaluate import evaluate_davis, per_sequence_jf  # noqa: E402
from stt.metrics import bootstrap_ci, paired_difference  # noqa: E402
from stt.moco import LOCAL_CROP_SCALE, MOCO_CROP_SCALE, train_spatial# noqa: E402
from stt.temporal import train_temporal# noqa: E402
from stt.report import STUDY_RESULTS, study_results  # noqa: E402

RUNS = REPO / "runs" / "studies"
def step1_checkpoint(name: str) -> Path:
    """The step-1 checkpoint a step-2 variant starts from: ``"<study>:<variant>"`` (a spatial
    variant trained by this script, e.g. ``"step1:600"``, the ``small`` preset)."""
    study, variant = name.split(":")
    path = RUNS / study / variant / "checkpoint.pth"
    if not path.is_file():
        raise FileNotFoundError(f"step-1 checkpoint {path} not found: make it first with "
                                f"`python studies/run.py {study} --only {variant}`")
    return path


# study -> (reference variant, {variant: (recipe, settings)}). Settings are overrides of the
# ``small`` preset, written out where a later preset changed them (the MoCo crop, step 2's lr);
# "init"/"teacher" name a step-1 checkpoint (:func:`step1_checkpoint`). Recipe "baseline": a model without
# training (``stt evaluate davis --model ...``), evaluated once for all studies.
BASELINES = {"lab": ("baseline", dict(model="lab")), "random-r18": ("baseline", dict(model="random-r18"))}
PHOTOS_STEP1 = "photos:local-crops"  # the step 1 on photographs the small preset trains
STUDIES = {
    # Issue 13: the MoCo queue against the size of the data (2,657 frames of 51 videos at small).
    # "-x": queue entries of the query's own video are not negatives (exclude_same_instance).
    "queue": ("q4096", {
        "q4096": ("spatial", dict(steps=300, crop_scale=MOCO_CROP_SCALE, queue_size=4096, max_queue_fraction=2.0, exclude_same_instance=False)),
        "f0.25": ("spatial", dict(steps=300, crop_scale=MOCO_CROP_SCALE, max_queue_fraction=0.25, exclude_same_instance=False)),
        "f0.25-x": ("spatial", dict(steps=300, crop_scale=MOCO_CROP_SCALE, max_queue_fraction=0.25)),
        "q4096-x": ("spatial", dict(steps=300, crop_scale=MOCO_CROP_SCALE, queue_size=4096, max_queue_fraction=2.0)),
        "f0.1-x": ("spatial", dict(steps=300, crop_scale=MOCO_CROP_SCALE, max_queue_fraction=0.1)),
        **BASELINES,
    }),
    # Issue 12: what makes the small step 1 learn more per minute (queue from the data, own video excluded).
    "spatial": ("base", {
        "base": ("spatial", dict(steps=300, crop_scale=MOCO_CROP_SCALE)),
        "lr0.03": ("spatial", dict(steps=300, crop_scale=MOCO_CROP_SCALE, lr=0.03)),
        "t0.1": ("spatial", dict(steps=300, crop_scale=MOCO_CROP_SCALE, temperature=0.1)),
        "lr0.03-t0.1": ("spatial", dict(steps=300, crop_scale=MOCO_CROP_SCALE, lr=0.03, temperature=0.1)),
        "steps900": ("spatial", dict(steps=900, crop_scale=MOCO_CROP_SCALE)),  # issue 13: more steps must not make it worse
        **BASELINES,
    }),
    # Issues 12 and 13 on all 15 sequences (the first 8, used above, are the easier half): how
    # long to train step 1, and crops nearer the scale label propagation sees (crop_scale).
    "step1": ("600", {
        "600": ("spatial", dict(steps=600, crop_scale=MOCO_CROP_SCALE)),  # the small preset
        "300": ("spatial", dict(steps=300, crop_scale=MOCO_CROP_SCALE)),
        "900": ("spatial", dict(steps=900, crop_scale=MOCO_CROP_SCALE)),
        "local-crops": ("spatial", dict(steps=600, crop_scale=LOCAL_CROP_SCALE)),
        "smaller-crops": ("spatial", dict(steps=600, crop_scale=(0.03, 0.15))),
        # issue 13, with the local crops (the small preset since this study): more steps must not hurt
        "local-crops-300": ("spatial", dict(steps=300, crop_scale=LOCAL_CROP_SCALE)),
        "local-crops-900": ("spatial", dict(steps=900, crop_scale=LOCAL_CROP_SCALE)),
        "local-crops-128": ("spatial", dict(steps=600, crop_scale=LOCAL_CROP_SCALE, image_size=128)),
        **BASELINES,
    }),
    # Issue 12: what makes the small step 2 learn more per minute (full STT from the small preset's step 1).
    "temporal": ("base", {
        "base": ("temporal", dict(steps=300, lr=1e-4, init="step1:600", teacher="step1:600")),
        "lr4e-4": ("temporal", dict(steps=300, lr=4e-4, init="step1:600", teacher="step1:600")),
        "lr1e-3": ("temporal", dict(steps=300, lr=1e-3, init="step1:600", teacher="step1:600")),
        "lr4e-4-gap2": ("temporal", dict(steps=300, lr=4e-4, gap=2, init="step1:600", teacher="step1:600")),
        "lr4e-4-moving": ("temporal", dict(steps=300, lr=4e-4, drop_static=0.3, init="step1:600", teacher="step1:600")),
        "lr4e-4-900": ("temporal", dict(steps=900, lr=4e-4, init="step1:600", teacher="step1:600")),
        "only-lr4e-4": ("temporal", dict(steps=300, gcd=False, lr=4e-4)),
        # from the step 1 with local crops (the small preset since the step1 study)
        "lc-lr4e-4": ("temporal", dict(steps=300, lr=4e-4, init="step1:local-crops", teacher="step1:local-crops")),
        "lc-lr4e-4-900": ("temporal", dict(steps=900, lr=4e-4, init="step1:local-crops", teacher="step1:local-crops")),
        "lc-lr4e-4-gap2": ("temporal", dict(steps=300, lr=4e-4, gap=2, init="step1:local-crops", teacher="step1:local-crops")),
        "lc-lr4e-4-moving": ("temporal", dict(steps=300, lr=4e-4, drop_static=0.3, init="step1:local-crops",
                                              teacher="step1:local-crops")),
        # issue 12: full STT vs temporal-only, split into its two parts: step 1 as initialisation
        # only (no GCD), against full STT (lc-lr4e-4-900) and temporal-only (the small run's)
        "lc-lr4e-4-900-init-only": ("temporal", dict(steps=900, lr=4e-4, gcd=False, init="step1:local-crops")),
        # GCD weighted 50 is about half the small run's loss and never falls (teacher weaker than
        # its student): the same run with a tenth of the weight
        "lc-lr4e-4-900-wgcd5": ("temporal", dict(steps=900, lr=4e-4, w_gcd=5.0, init="step1:local-crops",
                                                 teacher="step1:local-crops")),
        # and from a longer step 1 (900 steps instead of 600): does a stronger teacher widen the
        # margin of full STT over temporal-only?
        "lc900-lr4e-4-900": ("temporal", dict(steps=900, lr=4e-4, init="step1:local-crops-900",
                                              teacher="step1:local-crops-900")),
        # run-to-run noise: temporal-only as in the small preset (seed 0 is the small run's), and full STT, another seed
        "only-lr4e-4-900-seed1": ("temporal", dict(steps=900, lr=4e-4, gcd=False, seed=1)),
        "lc-lr4e-4-900-seed1": ("temporal", dict(steps=900, lr=4e-4, seed=1, init="step1:local-crops",
                                                 teacher="step1:local-crops")),
        **BASELINES,
    }),
    # Issue 20: step 1 on still photographs ($STT_DATA/ImageNet_sample/train, 5,925 ImageNet
    # images), the paper's design, against step 1 on frames of the training videos (the earlier
    # small preset). "data" is a folder under $STT_DATA; without it, the recipe's default.
    "photos": ("moco-crops", {
        "moco-crops": ("spatial", dict(steps=600, crop_scale=MOCO_CROP_SCALE)),
        "local-crops": ("spatial", dict(steps=600, crop_scale=LOCAL_CROP_SCALE)),
        # larger views at the same compute: 128 px costs (128 / 96)^2 = 1.78x a 96 px step
        "local-crops-128": ("spatial", dict(steps=340, crop_scale=LOCAL_CROP_SCALE, image_size=128)),
        "local-crops-b32": ("spatial", dict(steps=1200, batch_size=32, crop_scale=LOCAL_CROP_SCALE)),  # more steps, same compute
        "video-frames": ("spatial", dict(steps=600, crop_scale=LOCAL_CROP_SCALE, data="videos")),
        "r50": ("spatial", dict(steps=600, crop_scale=LOCAL_CROP_SCALE, arch="resnet50")),  # a stronger teacher?
        **BASELINES,
    }),
    # Issue 20: spatial-then-temporal with the three fixes (step 1 on photographs, the teacher as
    # trained, the official LCD), against temporal-only and step 1 as initialisation only; one
    # row per fix with that fix undone; seeds for the run-to-run noise. Settings are the small
    # preset's (900 steps, lr 4e-4) unless written.
    "stt": ("full", {
        "full": ("temporal", dict(init=PHOTOS_STEP1, teacher=PHOTOS_STEP1)),
        "temporal-only": ("temporal", dict(gcd=False)),
        "init-only": ("temporal", dict(gcd=False, init=PHOTOS_STEP1)),
        "full-seed1": ("temporal", dict(seed=1, init=PHOTOS_STEP1, teacher=PHOTOS_STEP1)),
        "temporal-only-seed1": ("temporal", dict(seed=1, gcd=False)),
        "undo-photos": ("temporal", dict(init="photos:video-frames", teacher="photos:video-frames")),
        "undo-teacher": ("temporal", dict(init=PHOTOS_STEP1, teacher=PHOTOS_STEP1, teacher_variant="train")),
        "undo-lcd": ("temporal", dict(init=PHOTOS_STEP1, teacher=PHOTOS_STEP1, lcd_form="windowed")),
        "r50-teacher": ("temporal", dict(init=PHOTOS_STEP1, teacher="photos:r50")),
        **BASELINES,
    }),
}


def run_variant(study: str, name: str, recipe: str, settings: dict, sequences: list[str], davis) -> dict:
    out = RUNS / study / name
    t0 = time.time()
    kw = dict(settings)
    evals = f"eval-{len(sequences)}"  # one folder per set of sequences: evaluate_davis never mixes them
    if recipe == "baseline":
        out = RUNS / "baselines" / kw["model"]
        evaluate_davis(davis, kw["model"], out / evals, short_side=240, sequences=sequences, progress=False)
        return {"settings": kw, "recipe": recipe, "train_seconds": 0, "final_loss": None,
                "jf": per_sequence_jf(out / evals)}
    data = data_path(kw.pop("data", None))
    if recipe == "spatial":
        ckpt = train_spatial(data, out, "small", progress=False, **kw)
    else:
        init, teacher = kw.pop("init", None), kw.pop("teacher", None)
        ckpt = train_temporal(data, out, "small", init=step1_checkpoint(init) if init else None,
                              teacher=step1_checkpoint(teacher) if teacher else None, progress=False, **kw)
    train_s = time.time() - t0
    evaluate_davis(davis, str(ckpt), out / evals, short_side=240, sequences=sequences, progress=False)
    import torch

    hist = torch.load(ckpt, map_location="cpu", weights_only=True)["history"]
    return {"settings": {k: str(v) for k, v in settings.items()}, "recipe": recipe, "train_seconds": round(train_s),
            "final_loss": hist[-1]["loss"], "jf": per_sequence_jf(out / evals)}


def table(study: str, ref: str, results: dict) -> str:
    lines = [f"Study `{study}`: J&F (%) on {len(next(iter(results.values()))['jf'])} DAVIS-2016 sequences at short side "
             "240, mean and 95 % bootstrap interval over sequences; the difference to "
             f"`{ref}` is paired by sequence. Made by `python studies/run.py {study}`.", "",
             "| variant | settings | final loss | J&F | 95 % CI | vs " + ref + " | 95 % CI |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        x = 100 * np.array(list(r["jf"].values()))
        lo, hi = bootstrap_ci(x)
        d, dlo, dhi, _ = paired_difference(r["jf"], results[ref]["jf"])
        settings = ", ".join(f"{k}={v}" for k, v in r["settings"].items())
        diff = " | " if name == ref else f"{d:+.1f} | [{dlo:+.1f}, {dhi:+.1f}]"
        loss = "" if r["final_loss"] is None else f"{r['final_loss']:.3f}"
        lines.append(f"| {name} | {settings} | {loss} | {x.mean():.1f} | [{lo:.1f}, {hi:.1f}] | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", choices=sorted(STUDIES))
    ap.add_argument("--sequences", type=int, default=0, help="first N DAVIS sequences; 0: all [0]")
    ap.add_argument("--only", default=None, help="comma-separated variants")
    ap.add_argument("--table-only", action="store_true", help="only rewrite the table from the variants already run")
    a = ap.parse_args(argv)
    ref, variants = STUDIES[a.study]
    ds = DAVIS(data_root() / "DAVIS2016" if (data_root() / "DAVIS2016").is_dir() else None)
    sequences = ds.names[: a.sequences] if a.sequences else ds.names
    out_dir = STUDY_RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{a.study}.json"
    results = study_results(a.study)
    for name, (recipe, settings) in variants.items():
        if (a.only and name not in a.only.split(",")) or a.table_only:
            continue
        print(f"[{a.study}] {name}: {recipe} {settings}", flush=True)
        result = run_variant(a.study, name, recipe, settings, sequences, ds.root)
        results = {**study_results(a.study), name: result}  # re-read: another process may have added variants
        write_text(path, json.dumps(results, indent=2))  # whole or absent, for a process reading it meanwhile
        print(f"[{a.study}] {name}: J&F {100 * np.mean(list(results[name]['jf'].values())):.1f}", flush=True)
    if ref in results:
        (out_dir / f"{a.study}.md").write_text(table(a.study, ref, {k: results[k] for k in variants if k in results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

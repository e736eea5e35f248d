"""End-to-end training throughput: the recipes with their real loaders on the real videos.

For each recipe (MoCo v2 step 1, STT step 2 with its teacher, CorrFlow), two settings run side by
side in this one invocation, each in a fresh process:

* **ours**: the project's defaults: bf16 autocast where the device computes it natively, the
  augmentation on the GPU in batch (per sample in the workers on a CPU), channels-last on CUDA;
* **naive**: fp32, augmentation per sample in the loader's workers, contiguous NCHW.

Samples/s is measured over the logged steps after the first ``--warmup`` steps (the loader's
start and cuDNN's tuning excluded); the time to the first logged step, which includes building
the frame cache (first run only) and CorrFlow's k-means, is reported too. CPU: the ``small``
presets (what a laptop run trains); CUDA: the ``full`` presets' shapes, on ``$STT_DATA/videos``.

    python benchmarks/training.py [--steps 20] [--warmup 5] [--devices cpu,cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from propagation import in_fresh_process  # noqa: E402

RECIPES = ("spatial", "temporal", "corrflow")
SETTINGS = {
    "ours": dict(amp="auto", augment="auto", channels_last="auto"),
    "naive": dict(amp="off", augment="workers", channels_last="off"),
}


def worker(recipe: str, device: str, setting: str, steps: int, warmup: int, q) -> None:
    from stt.corrflow import train_corrflow
    from stt.moco import train_spatial
    from stt.temporal import train_temporal

    config = "small" if device == "cpu" else "full"
    workers = {"cpu": 1}.get(device, max(1, min(14, (os.cpu_count() or 2) - 2)))
    kw = dict(steps=steps, log_every=1, ckpt_every=10**9, device=device, num_workers=workers, **SETTINGS[setting])
    if recipe == "corrflow":
        kw.pop("augment")  # CorrFlow's clips are only cropped; its bottleneck runs in the model
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.time()
        if recipe == "spatial":
            ck = train_spatial(None, tmp, config, progress=False, **kw)
        elif recipe == "temporal":
            ck = train_temporal(None, tmp, config, progress=False, gcd=False, **kw)
        else:
            ck = train_corrflow(None, tmp, config, progress=False, **kw)
        total = time.time() - t0
        ckpt = torch.load(ck, map_location="cpu", weights_only=True)
    hist = ckpt["history"]
    timed = hist[warmup:]
    rate = sum(h["samples_per_s"] ** -1 for h in timed) / len(timed)  # mean seconds per sample
    batch = ckpt["config"]["batch_size"]
    first = total - sum(batch / h["samples_per_s"] for h in hist)
    q.put({"recipe": recipe, "device": device, "setting": setting, "config": config, "batch": batch,
           "image_size": ckpt["config"]["extra"]["image_size"], "workers": workers,
           "samples_per_s": 1 / rate, "seconds_to_first_step": first, "amp": ckpt["meta"]["amp"],
           "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None})


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    results = {}
    for device in a.devices.split(","):
        for recipe in a.recipes.split(","):
            row = {}
            for setting in SETTINGS:
                r = in_fresh_process(worker, recipe, device, setting, a.steps, a.warmup)
                row[setting] = r
                print(f"{recipe:>9} @ {device} ({r['config']}, batch {r['batch']} x {r['image_size']} px) {setting:>5}: "
                      f"{r['samples_per_s']:7.1f} samples/s, first step after {r['seconds_to_first_step']:.0f} s",
                      flush=True)
            row["speedup"] = row["ours"]["samples_per_s"] / row["naive"]["samples_per_s"]
            results[f"{recipe} @ {device}"] = row
            print(f"{'':>9}   ours / naive = {row['speedup']:.2f}x", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

"""Training-step throughput and peak memory of the three models, side by side in one run.

Each model runs in a fresh process: one warm-up step, then ``--steps`` timed steps (forward,
backward, optimiser) on random inputs of the recipe's shape, in fp32 and under bf16 autocast
(with channels-last activations on CUDA), as :class:`stt.train.Trainer` runs them. CPU always;
CUDA too when present. Shapes: the ``small`` recipes on CPU (what a laptop run trains), the
papers' per-GPU shapes on CUDA. (The loaders are not in these numbers: benchmarks/training.py
runs the recipes end to end.)

    python benchmarks/train_step.py [--steps 3] [--devices cpu,cuda] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from propagation import PeakRSS, in_fresh_process  # noqa: E402

SHAPES = {  # model: {device: (batch, image size)}
    "spatial (MoCo v2, R18)": {"cpu": (64, 96), "cuda": (256, 224)},
    "temporal (STT step 2, R18 + teacher)": {"cpu": (8, 128), "cuda": (128, 256)},
    "corrflow": {"cpu": (6, 96), "cuda": (6, 256)},
}


def build(name: str, batch: int, size: int, device: str):
    from stt.encoder import ResNetEncoder
    from stt.corrflow import CorrFlow
    from stt.moco import MoCo
    from stt.temporal import STT

    g = torch.Generator().manual_seed(0)
    if name.startswith("spatial"):
        model = MoCo("resnet18", queue_size=4096, bn_splits=4 if device == "cpu" else 1)
        data = (torch.rand(batch, 3, size, size, generator=g), torch.rand(batch, 3, size, size, generator=g))
        opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9, weight_decay=1e-4)
    elif name.startswith("temporal"):
        trunk = ResNetEncoder("resnet18", "train").state_dict()
        model = STT(init=trunk, teacher=trunk)
        data = torch.rand(batch, 2, 3, size, size, generator=g)
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    else:
        model = CorrFlow(torch.randn(16, 2, generator=g) * 30, total_steps=1000)
        data = torch.rand(batch, 3, 3, size, size, generator=g)
        opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    model = model.to(device).train()
    data = tuple(d.to(device) for d in data) if isinstance(data, tuple) else data.to(device)
    return model, data, opt


def worker(name: str, device: str, precision: str, steps: int, q) -> None:
    batch, size = SHAPES[name][device]
    model, data, opt = build(name, batch, size, device)
    amp = precision == "bf16"
    if amp and device == "cuda":
        model = model.to(memory_format=torch.channels_last)

    def step(i):
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = model(data, gen=torch.Generator().manual_seed(i))
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    step(0)  # warm-up (allocations, kernels)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        for i in range(steps):
            step(i + 1)
        dt = (time.perf_counter() - t0) / steps
    res = {"precision": precision, "batch": batch, "size": size, "seconds_per_step": dt, "samples_per_s": batch / dt,
           "peak_rss_mb": mem.peak, "threads": torch.get_num_threads()}
    if device == "cuda":
        res["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        res["gpu"] = torch.cuda.get_device_name(0)
    q.put(res)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--devices", default="cpu,cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    results = {}
    for device in a.devices.split(","):
        for name in SHAPES:
            row = {}
            for precision in ("fp32", "bf16"):
                r = row[precision] = in_fresh_process(worker, name, device, precision, a.steps)
                mem = f"{r['peak_cuda_mb']:.0f} MB GPU" if device == "cuda" else f"{r['peak_rss_mb']:.0f} MB resident"
                print(f"{name:>38} @ {device} {precision}: batch {r['batch']} x {r['size']}px  "
                      f"{r['seconds_per_step']:.2f} s/step  {r['samples_per_s']:.1f} samples/s  peak {mem}", flush=True)
            row["speedup"] = row["bf16"]["samples_per_s"] / row["fp32"]["samples_per_s"]
            results[f"{name} @ {device}"] = row
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()

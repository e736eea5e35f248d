"""Label propagation speed and memory: windowed top-k vs the naive dense formulation.

One propagation step at DAVIS 480p with a ResNet-18 stride-8 feature map (60 x 107 cells,
256 channels), context = frame 0 + 20 previous frames, top-k 10, radius 12, two objects.
Both formulations run side by side in this one invocation, each in a fresh process (so each
peak resident memory is its own), on the same inputs; their outputs are compared.

    python benchmarks/propagation.py [--reps 5] [--dense-reps 2] [--device cpu|cuda]

The features are those of random-r18 on real DAVIS frames when $STT_DATA holds DAVIS (the
content does not change the cost), else seeded random unit vectors.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stt.affinity import dense_topk_reference  # noqa: E402
from stt.propagation import PropagationConfig, normalize_features, propagate_frame  # noqa: E402

H, W, C, N_PREV, N_LABELS = 60, 107, 256, 20, 3


def make_inputs(path: Path) -> str:
    """Features (21 x C x H x W) and soft labels, saved to ``path``; returns their origin."""
    origin = "seeded random unit vectors"
    feats = None
    try:
        from stt.data import DAVIS, resize_short_side, to_tensor
        from stt.encoder import build_feature_model

        ds = DAVIS()
        frames, masks = ds.load(ds.names[0])
        model, _ = build_feature_model("random-r18")
        x = resize_short_side(to_tensor(frames[: N_PREV + 2]), 480, 8)
        with torch.no_grad():
            feats = torch.cat([model(x[i : i + 4]) for i in range(0, len(x), 4)])
        origin = f"random-r18 on DAVIS {ds.names[0]} frames 0-{N_PREV + 1} at 480p"
    except (FileNotFoundError, ValueError, IndexError):
        g = torch.Generator().manual_seed(0)
        feats = torch.randn(N_PREV + 2, C, H, W, generator=g)
    feats = normalize_features(feats[:, :, :H, :W])
    g = torch.Generator().manual_seed(1)
    labels = torch.softmax(torch.randn(N_PREV + 1, N_LABELS, H, W, generator=g) * 3, dim=1)
    torch.save({"feats": feats, "labels": labels}, path)
    return origin


def dense_step(query, first_f, first_l, prev_f, prev_l, cfg):
    """The naive formulation: dense affinity to every context cell, window mask, top-k."""
    feats = torch.cat([first_f[None], prev_f])
    labels = torch.cat([first_l[None], prev_l])
    vals, idx = dense_topk_reference(query, feats, cfg.topk, cfg.radius, cfg.window)
    w = torch.softmax(vals / cfg.temperature, dim=1)
    flat = labels.permute(0, 2, 3, 1).reshape(-1, labels.shape[1])
    return torch.einsum("qk,qkc->qc", w, flat[idx]).t().reshape(labels.shape[1], H, W), (vals, idx)


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 2 ms by a thread."""

    def __enter__(self):
        self.base = self.peak = current_rss_mb()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, current_rss_mb())

    @property
    def mb(self) -> float:
        return self.peak - self.base


def worker(kind: str, path: str, reps: int, device: str, q) -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))
    d = torch.load(path)
    feats, labels = d["feats"].to(device), d["labels"].to(device)
    cfg = PropagationConfig(topk=10, radius=12, context=N_PREV)
    args = (feats[-1], feats[0], labels[0], feats[1:-1], labels[1:])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times = []
    out = None
    with PeakRSS() as mem:
        for _ in range(reps):
            t0 = time.perf_counter()
            with torch.no_grad():
                out = propagate_frame(*args, cfg) if kind == "windowed" else dense_step(*args, cfg)[0]
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    res = {
        "seconds": sorted(times)[len(times) // 2],
        "all_seconds": times,
        "peak_rss_mb": mem.mb,
        "threads": torch.get_num_threads(),
    }
    if device == "cuda":
        res["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    torch.save(out.cpu(), path + f".{kind}.out")
    q.put(res)


def in_fresh_process(worker, *args) -> dict:
    """Run ``worker(*args, queue)`` in a spawned process (so peak memory is its own) and return
    what it puts on the queue. Shared by every benchmark here."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=worker, args=(*args, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dense-reps", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "inputs.pt")
        origin = make_inputs(Path(path))
        win = in_fresh_process(worker, "windowed", path, a.reps, a.device)
        dense = in_fresh_process(worker, "dense", path, a.dense_reps, a.device)
        # Same inputs, both outputs, and the top-k sets themselves compared here.
        d = torch.load(path)
        feats, labels = d["feats"], d["labels"]
        cfg = PropagationConfig(topk=10, radius=12, context=N_PREV)
        from stt.affinity import windowed_topk

        wv, wi = windowed_topk(feats[-1], feats[:-1], cfg.topk, cfg.radius, cfg.window)
        _, (dv, di) = dense_step(feats[-1], feats[0], labels[0], feats[1:-1], labels[1:], cfg)
        out_w, out_d = torch.load(path + ".windowed.out"), torch.load(path + ".dense.out")
    res = {
        "setting": f"{H}x{W} cells x {C} ch, context 1 + {N_PREV}, top-k {cfg.topk}, radius {cfg.radius}, "
                   f"{N_LABELS} labels, device {a.device}, {win['threads']} threads",
        "features": origin,
        "windowed": win,
        "dense": dense,
        "speedup": dense["seconds"] / win["seconds"],
        "memory_ratio": dense["peak_rss_mb"] / max(win["peak_rss_mb"], 1e-9),
        "topk_values_max_abs_diff": (wv - dv).abs().max().item(),
        "topk_indices_identical": (wi == di).float().mean().item(),
        "labels_max_abs_diff": (out_w - out_d).abs().max().item(),
    }
    print(f"setting : {res['setting']}")
    print(f"features: {origin}")
    print(f"windowed: {win['seconds']:.3f} s/frame ({1 / win['seconds']:.2f} frames/s), peak +{win['peak_rss_mb']:.0f} MB resident")
    print(f"dense   : {dense['seconds']:.3f} s/frame ({1 / dense['seconds']:.3f} frames/s), peak +{dense['peak_rss_mb']:.0f} MB resident")
    if a.device == "cuda":
        print(f"cuda peak: windowed {win['peak_cuda_mb']:.0f} MB, dense {dense['peak_cuda_mb']:.0f} MB")
    print(f"speed-up: {res['speedup']:.1f}x   memory: {res['memory_ratio']:.1f}x less")
    print(f"top-k: values max |diff| {res['topk_values_max_abs_diff']:.2e}, indices identical "
          f"{100 * res['topk_indices_identical']:.4f}%; propagated labels max |diff| {res['labels_max_abs_diff']:.2e}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()

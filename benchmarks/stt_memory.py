"""Peak memory and time of one STT step-2 training step: windowed affinities vs the dense form.

Setting (SPEC section 3): ResNet-18 student and frozen teacher, 256 x 256 frame pairs, batch 16,
/4 window R = 12, /8 window R = 6, reconstruction at both levels + LCD + GCD, forward and
backward. Two measurements, each formulation in a fresh process, side by side in one run:

* ``step``: the whole training step (encoder activations included);
* ``losses``: the correlation and loss part alone (features given as leaf tensors), which is
  what the two formulations do differently.

    python benchmarks/stt_memory.py [--batch 16] [--size 256] [--device cpu|cuda]
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

from stt.color import rgb_to_normalized_lab  # noqa: E402
from stt.encoder import ResNetEncoder# noqa: E402
from stt.losses import lab_channel_dropout, stt_losses_dense_reference  # noqa: E402
from stt.temporal import STT# noqa: E402

WEIGHTS = {"rec4": 1.0, "rec8": 1.0, "lcd": 1000.0, "gcd": 50.0}


def dense_step(model: STT, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The same step as ``STT.forward`` with the official code's dense affinities."""
    B = batch.shape[0]
    lab = rgb_to_normalized_lab(batch)
    x, ch = lab_channel_dropout(lab, gen)
    f = model.encoder(x.flatten(0, 1), levels=("layer2", "layer3", "layer4"))
    sp = lambda t: (t.view(B, 2, *t.shape[1:])[:, 0], t.view(B, 2, *t.shape[1:])[:, 1])  # noqa: E731
    (r4, t4), (r8, t8), (s_r, s_t) = sp(f["layer2"]), sp(f["layer3"]), sp(f["layer4"])
    with torch.no_grad():
        t_r, t_t = sp(model.teacher(model.teacher.preprocess(batch.flatten(0, 1)), levels=("layer4",))["layer4"])
    out = stt_losses_dense_reference(r4, t4, r8, t8, lab[:, 0, ch : ch + 1], lab[:, 1, ch : ch + 1],
                                     model.r4, model.r8, model.lcd_keep, s_r, s_t, t_r, t_t)
    return sum(WEIGHTS[k] * v for k, v in out.items())


def worker(kind: str, part: str, batch: int, size: int, device: str, q) -> None:
    torch.manual_seed(0)
    trunk = ResNetEncoder("resnet18", "train").state_dict()
    model = STT(init=trunk, teacher=trunk).to(device).train()
    x = torch.rand(batch, 2, 3, size, size, device=device)
    gen = torch.Generator().manual_seed(0)
    if part == "losses":  # features as leaves: only the correlation + loss part is measured
        with torch.no_grad():
            lab = rgb_to_normalized_lab(x)
            f = model.encoder(lab.flatten(0, 1), levels=("layer2", "layer3", "layer4"))
            t = model.teacher(model.teacher.preprocess(x.flatten(0, 1)), levels=("layer4",))["layer4"]
        sp = lambda z: [v.detach().requires_grad_() for v in z.view(batch, 2, *z.shape[1:]).unbind(1)]  # noqa: E731
        (r4, t4), (r8, t8), (s_r, s_t) = sp(f["layer2"]), sp(f["layer3"]), sp(f["layer4"])
        t_r, t_t = t.view(batch, 2, *t.shape[1:]).unbind(1)
        y_ref, y_tar = lab[:, 0, 1:2], lab[:, 1, 1:2]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    t0 = time.perf_counter()
    with PeakRSS() as mem:
        if part == "step":
            loss = model(x, gen)["loss"] if kind == "windowed" else dense_step(model, x, gen)
        elif kind == "windowed":  # the model's own losses on the same leaves (frames interleaved ref, tar)
            inter = lambda r, t: torch.stack([r, t], 1).flatten(0, 1)  # noqa: E731
            feats = {"layer2": inter(r4, t4), "layer3": inter(r8, t8), "layer4": inter(s_r, s_t)}
            loss = model.losses(feats, lab, 1, batch, size, inter(t_r, t_t))["loss"]
        else:
            out = stt_losses_dense_reference(r4, t4, r8, t8, y_ref, y_tar, 12, 6, 0.7, s_r, s_t, t_r, t_t)
            loss = sum(WEIGHTS[k] * v for k, v in out.items())
        loss.backward()
        if device == "cuda":
            torch.cuda.synchronize()
    res = {"seconds": time.perf_counter() - t0, "peak_rss_mb": mem.mb, "loss": float(loss.detach())}
    if device == "cuda":
        res["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    q.put(res)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--parts", default="losses,step")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    key = "peak_cuda_mb" if a.device == "cuda" else "peak_rss_mb"
    res = {"setting": f"ResNet-18 STT step 2, batch {a.batch}, {a.size}x{a.size}, device {a.device}, "
                      f"{torch.get_num_threads()} threads"}
    print(res["setting"])
    for part in a.parts.split(","):
        w, d = (in_fresh_process(worker, kind, part, a.batch, a.size, a.device) for kind in ("windowed", "dense"))
        res[part] = {"windowed": w, "dense": d, "memory_ratio": d[key] / max(w[key], 1e-9),
                     "time_ratio": d["seconds"] / w["seconds"]}
        print(f"{part:>7}: windowed {w[key]:8.0f} MB {w['seconds']:6.2f} s | dense {d[key]:8.0f} MB "
              f"{d['seconds']:6.2f} s | memory {res[part]['memory_ratio']:.1f}x less, "
              f"time {res[part]['time_ratio']:.2f}x | loss {w['loss']:.5f} vs {d['loss']:.5f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()

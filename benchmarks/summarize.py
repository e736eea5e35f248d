"""Turn the JSON files of ``make bench`` into one markdown table (for ``make publish``).

    python benchmarks/summarize.py runs/bench runs/small/results/bench.md
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def main(src: str, dst: str) -> None:
    src = Path(src)
    lines = [f"Measured by `make bench` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores:", "",
             "| benchmark | windowed / ours | dense / naive | ratio |", "|---|---|---|---|"]
    p = src / "propagation.json"
    if p.is_file():
        r = json.loads(p.read_text())
        w, d = r["windowed"], r["dense"]
        lines.append(f"| propagation step, DAVIS 480p, 21 context frames (time) | {w['seconds']:.2f} s | "
                     f"{d['seconds']:.2f} s | {r['speedup']:.1f}x faster |")
        lines.append(f"| same, peak extra memory | {w['peak_rss_mb']:.0f} MB | {d['peak_rss_mb']:.0f} MB | "
                     f"{r['memory_ratio']:.1f}x less |")
        lines.append(f"| same, top-k indices identical / labels max diff | "
                     f"{100 * r['topk_indices_identical']:.3f} % | {r['labels_max_abs_diff']:.1e} | |")
    p = src / "stt_memory.json"
    if p.is_file():
        r = json.loads(p.read_text())
        key = "peak_cuda_mb" if "cuda" in r["setting"] else "peak_rss_mb"
        for part, label in (("losses", "STT step 2 correlation + losses, batch 16, 256x256"),
                            ("step", "STT step 2 whole training step, batch 16, 256x256")):
            if part in r:
                w, d = r[part]["windowed"], r[part]["dense"]
                lines.append(f"| {label}: peak memory | {w[key]:.0f} MB | {d[key]:.0f} MB | "
                             f"{r[part]['memory_ratio']:.1f}x less |")
                lines.append(f"| {label}: time | {w['seconds']:.2f} s | {d['seconds']:.2f} s | "
                             f"{r[part]['time_ratio']:.2f}x |")
    p = src / "train_step.json"
    if p.is_file():
        for name, r in json.loads(p.read_text()).items():
            mem = f"{r['peak_cuda_mb']:.0f} MB GPU" if "peak_cuda_mb" in r else f"{r['peak_rss_mb']:.0f} MB resident"
            lines.append(f"| training step: {name}, batch {r['batch']} x {r['size']} px | "
                         f"{r['seconds_per_step']:.2f} s ({r['samples_per_s']:.1f} samples/s), {mem} | | |")
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench", sys.argv[2] if len(sys.argv) > 2 else "runs/small/results/bench.md")

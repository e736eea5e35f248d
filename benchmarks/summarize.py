"""Turn the JSON files of ``make bench`` into one markdown table (for ``make publish``): every
row is ours next to the naive form, measured side by side in one run, per device.

    python benchmarks/summarize.py runs/bench runs/small/results/bench.md
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path


def _load(path: Path):
    return json.loads(path.read_text()) if path.is_file() else None


def _mem(r: dict) -> str:
    return f"{r['peak_cuda_mb']:.0f} MB GPU" if "peak_cuda_mb" in r else f"{r['peak_rss_mb']:.0f} MB"


def propagation_rows(r: dict) -> list[str]:
    out = []
    for row in r.get("rows", [r]):
        dev = row.get("device", "cpu")
        if "frames_per_s" in row:  # end to end
            size = f"{row['short_side']}p" if row.get("short_side") else "480p"
            out.append(f"| `evaluate_davis` random-r18, {len(row['sequences'])} DAVIS sequences at {size}, "
                       f"encoder and metrics included | {dev} | {row['frames_per_s']:.2f} frames/s | | |")
            continue
        w, d = row["windowed"], row["dense"]
        loop = f"; per-frame loop {row['loop']['seconds']:.3f} s" if "loop" in row else ""
        out.append(f"| propagation step, {row['name']} (s/frame) | {dev} | {w['seconds']:.3f} s | "
                   f"{d['seconds']:.3f} s{loop} | {row['speedup']:.1f}x faster |")
        out.append(f"| same, peak extra memory | {dev} | {_mem(w)} | {_mem(d)} | {row['memory_ratio']:.1f}x less |")
    return out


def stt_memory_rows(r: dict) -> list[str]:
    out = []
    dev = "cuda" if "cuda" in r["setting"] else "cpu"
    for part, label in (("losses", "STT step 2 correlation + losses, batch 16, 256x256"),
                        ("step", "STT step 2 whole training step, batch 16, 256x256")):
        if part in r:
            w, d = r[part]["windowed"], r[part]["dense"]
            out.append(f"| {label}: peak memory | {dev} | {_mem(w)} | {_mem(d)} | {r[part]['memory_ratio']:.1f}x less |")
            out.append(f"| {label}: time | {dev} | {w['seconds']:.2f} s | {d['seconds']:.2f} s | "
                       f"{r[part]['time_ratio']:.2f}x |")
    return out


def train_step_rows(r: dict) -> list[str]:
    out = []
    for name, row in r.items():
        model, dev = name.rsplit(" @ ", 1)
        b, f = row["bf16"], row["fp32"]
        out.append(f"| model step only, {model}, batch {b['batch']} x {b['size']} px (samples/s): bf16 vs fp32 | "
                   f"{dev} | {b['samples_per_s']:.1f} | {f['samples_per_s']:.1f} | {row['speedup']:.2f}x |")
    return out


def training_rows(r: dict) -> list[str]:
    out = []
    for name, row in r.items():
        recipe, dev = name.rsplit(" @ ", 1)
        o, n = row["ours"], row["naive"]
        out.append(f"| `stt train {recipe} --config {o['config']}` with its loader, batch {o['batch']} x "
                   f"{o['image_size']} px (samples/s; first step after) | {dev} | {o['samples_per_s']:.1f} "
                   f"({o['seconds_to_first_step']:.0f} s) | {n['samples_per_s']:.1f} "
                   f"({n['seconds_to_first_step']:.0f} s) | {row['speedup']:.2f}x |")
    return out


def main(src: str, dst: str) -> None:
    src = Path(src)
    lines = [f"Measured by `make bench` on {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
             "(and the GPU named in each CUDA row's JSON, when there is one). Naive: the dense affinity; fp32; "
             "fp32 with per-sample augmentation in the loader's workers.", "",
             "| benchmark | device | ours | naive | ratio |", "|---|---|---|---|---|"]
    for name, rows in (("propagation.json", propagation_rows), ("stt_memory.json", stt_memory_rows),
                       ("train_step.json", train_step_rows), ("training.json", training_rows)):
        r = _load(src / name)
        if r is not None:
            lines += rows(r)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    Path(dst).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/bench", sys.argv[2] if len(sys.argv) > 2 else "runs/small/results/bench.md")

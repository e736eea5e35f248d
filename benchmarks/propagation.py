"""Label propagation speed and memory: the batched windowed top-k vs the naive dense form and
vs the earlier per-frame loop, plus the whole DAVIS evaluation end to end.

Rows (each on CPU, and on CUDA too when it is available):

* stride 8, DAVIS 480p: one propagation step with a ResNet-18 stride-8 map (60 x 107 cells,
  256 channels), context = frame 0 + 20 previous frames, top-k 10, radius 12, three labels.
* stride 4, DAVIS 240p: the same step for a CorrFlow-like map (64 channels at /4: 60 x 107
  cells) with the radius scaled to 24 cells (49 x 49 windows).
* end to end: ``evaluate_davis`` with random-r18 on a few real DAVIS sequences (frames/s).

Each form of a step runs in a fresh process (so each peak memory is its own) on the same
inputs, and the outputs are compared. "loop" is the implementation this project had before the
batched one (one matmul and top-k per context frame and tile column), kept here only to be
measured against.

    python benchmarks/propagation.py [--reps 5] [--dense-reps 2] [--device cpu,cuda]
        [--e2e-sequences car-shadow,motocross-jump,scooter-black] [--e2e-short-side 480]

The stride-8 features are those of random-r18 on real DAVIS frames when $STT_DATA holds DAVIS
(the content does not change the cost), else seeded random unit vectors; the stride-4 ones are
seeded random unit vectors. The top-level keys of ``--json`` are the stride-8 row on the first
device (what ``benchmarks/summarize.py`` reads); ``rows`` holds every row.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stt.affinity import dense_topk_reference, window_mask, windowed_topk  # noqa: E402
from stt.propagation import PropagationConfig, normalize_features, propagate_frame, weighted_labels  # noqa: E402

N_PREV, N_LABELS = 20, 3
STEPS = {  # name: (channels, H, W, radius)
    "stride 8, DAVIS 480p": (256, 60, 107, 12),
    "stride 4, DAVIS 240p": (64, 60, 107, 24),
}


def make_inputs(path: Path, channels: int, h: int, w: int, davis: bool) -> str:
    """Features (22 x C x h x w: frame 0, 20 previous, the query) and soft labels, saved to
    ``path``; returns their origin."""
    feats, origin = None, "seeded random unit vectors"
    if davis:
        try:
            from stt.datasets import DAVIS, resize_short_side, to_tensor
            from stt.features import build_feature_model

            ds = DAVIS()
            frames, _ = ds.load(ds.names[0])
            model, _ = build_feature_model("random-r18")
            x = resize_short_side(to_tensor(frames[: N_PREV + 2]), 480, 8)
            with torch.no_grad():
                feats = torch.cat([model(x[i : i + 4]) for i in range(0, len(x), 4)])
            origin = f"random-r18 on DAVIS {ds.names[0]} frames 0-{N_PREV + 1} at 480p"
        except (FileNotFoundError, ValueError, IndexError):
            pass
    if feats is None:
        feats = torch.randn(N_PREV + 2, channels, h, w, generator=torch.Generator().manual_seed(0))
    feats = normalize_features(feats[:, :, :h, :w])
    g = torch.Generator().manual_seed(1)
    labels = torch.softmax(torch.randn(N_PREV + 1, N_LABELS, h, w, generator=g) * 3, dim=1)
    torch.save({"feats": feats, "labels": labels}, path)
    return origin


class _LoopTiles:
    """Index bookkeeping for T x T query tiles and their (T + 2R) x (T + 2R) key patches.

    Tiles are ordered column-major (tile column tx, then tile row ty). The keys of one tile
    column form a contiguous "slab" (rows x P x C, channels last); the patch of tile (ty, tx)
    is then the contiguous block ``slab[ty T : ty T + P]``, so all patches of a column are a
    strided view of the slab and one batched matmul reads them without copying.
    """

    def __init__(self, h: int, w: int, radius: float, shape: str, tile: int, device):
        R = int(math.floor(radius))  # integer reach of the window in cells
        T, P = tile, tile + 2 * R
        self.h, self.w, self.R, self.T, self.P = h, w, R, T, P
        self.nty, self.ntx = math.ceil(h / T), math.ceil(w / T)
        # Window inside a patch: query offset (qy, qx) in the tile, key offset (ky, kx) in the patch.
        q = torch.arange(T * T, device=device)
        k = torch.arange(P * P, device=device)
        dy = (k // P)[None, :] - R - (q // T)[:, None]  # T^2 x P^2
        dx = (k % P)[None, :] - R - (q % T)[:, None]
        inside = window_mask(dy, dx, radius, shape)  # T^2 x P^2
        # Key positions of each patch in the full map (invalid outside the map).
        tx = torch.arange(self.ntx, device=device).view(-1, 1, 1)
        ty = torch.arange(self.nty, device=device).view(1, -1, 1)
        gy = ty * T + (k // P).view(1, 1, -1) - R  # ntx x nty x P^2
        gx = tx * T + (k % P).view(1, 1, -1) - R
        valid = (gy >= 0) & (gy < h) & (gx >= 0) & (gx < w)
        mask = inside[None, None] & valid[:, :, None, :]  # ntx x nty x T^2 x P^2
        self.bias = torch.zeros(mask.shape, device=device).masked_fill_(~mask, float("-inf"))

    def query_tiles(self, q: torch.Tensor) -> torch.Tensor:
        """C x H x W -> ntx x nty x T^2 x C."""
        C, T = q.shape[0], self.T
        q = F.pad(q, (0, self.ntx * T - self.w, 0, self.nty * T - self.h))
        q = q.view(C, self.nty, T, self.ntx, T).permute(3, 1, 2, 4, 0)  # ntx x nty x T x T x C
        return q.reshape(self.ntx, self.nty, T * T, C)

    def key_slabs(self, keys: torch.Tensor) -> torch.Tensor:
        """C x H x W -> ntx x (nty T + 2R) x P x C: the keys each tile column can reach."""
        R, T, P = self.R, self.T, self.P
        kp = F.pad(keys, (R, R + self.ntx * T - self.w, R, R + self.nty * T - self.h)).permute(1, 2, 0)
        return torch.stack([kp[:, x0 : x0 + P] for x0 in range(0, self.ntx * T, T)])

    def patches(self, slab: torch.Tensor) -> torch.Tensor:
        """One column's slab -> nty x P^2 x C strided view (no copy)."""
        C, P = slab.shape[-1], self.P
        return slab.as_strided((self.nty, P * P, C), (self.T * P * C, C, 1))

    def global_index(self, tx: int, local: torch.Tensor) -> torch.Tensor:
        """Patch-local key indices of tile column ``tx`` (nty x T^2 x k) -> flat H x W indices.
        Keys outside the map (only ever with value -inf) are clamped to a valid index."""
        ty = torch.arange(self.nty, device=local.device).view(-1, 1, 1)
        gy = (ty * self.T + local // self.P - self.R).clamp(0, self.h - 1)
        gx = (tx * self.T + local % self.P - self.R).clamp(0, self.w - 1)
        return gy * self.w + gx

    def untile(self, x: torch.Tensor) -> torch.Tensor:
        """ntx x nty x T^2 x k -> HW x k (drop the padded queries)."""
        T, k = self.T, x.shape[-1]
        x = x.view(self.ntx, self.nty, T, T, k).permute(1, 2, 0, 3, 4)
        x = x.reshape(self.nty * T, self.ntx * T, k)[: self.h, : self.w]
        return x.reshape(self.h * self.w, k)


def loop_topk(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    radius: float,
    shape: str = "square",
    tile: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The earlier ``stt.affinity.windowed_topk``, kept only to be measured against: for every
    context frame and every column of query tiles, one matmul with the key patches, a window
    bias and a top-k; the per-frame top-ks merged at the end. Same contract as the package's.

    Args:
        query: C x H x W.
        keys: N x C x H x W (context frames on the query's grid).
        k: how many to keep per query (over all N frames jointly).
        radius: window radius in cells; ``shape`` "square" or "circle" (see :func:`window_mask`).
        tile: query tile size T (a speed knob only: the result does not depend on it).

    Returns:
        values (HW x k) and indices (HW x k) into the flattened ``N x H x W`` keys. Entries
        that do not exist (fewer than k positions in a window) have value ``-inf``.
    """
    C, h, w = query.shape
    N = keys.shape[0]
    geo = _LoopTiles(h, w, radius, shape, tile, query.device)
    qt = geo.query_tiles(query).contiguous()  # ntx x nty x T^2 x C
    kk = min(k, geo.P * geo.P)
    vals = query.new_empty(geo.ntx, geo.nty, geo.T**2, N, kk)
    idxs = torch.empty(vals.shape, dtype=torch.long, device=query.device)
    for n in range(N):
        slabs = geo.key_slabs(keys[n])
        for tx in range(geo.ntx):
            corr = torch.baddbmm(geo.bias[tx], qt[tx], geo.patches(slabs[tx]).transpose(1, 2))  # nty x T^2 x P^2
            v, i = corr.topk(kk, dim=-1)
            vals[tx, :, :, n] = v
            idxs[tx, :, :, n] = geo.global_index(tx, i) + n * h * w
    v, j = vals.flatten(-2).topk(min(k, N * kk), dim=-1)
    i = torch.gather(idxs.flatten(-2), -1, j)
    return geo.untile(v), geo.untile(i)


def step(kind: str, query, first_f, first_l, prev_f, prev_l, cfg):
    """One propagation step in form ``kind``: "batched" (the package), "loop" or "dense".
    Returns the labels (K x h x w) and, but for "batched", the top-k (values, indices)."""
    if kind == "batched":
        return propagate_frame(query, first_f, first_l, prev_f, prev_l, cfg), None
    feats = torch.cat([first_f[None], prev_f])
    labels = torch.cat([first_l[None], prev_l])
    topk = loop_topk if kind == "loop" else dense_topk_reference
    vals, idx = topk(query, feats, cfg.topk, cfg.radius, cfg.window)
    return weighted_labels(vals, idx, labels, cfg.temperature), (vals, idx)


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


def _set_threads() -> None:
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", torch.get_num_threads())))


def worker(kind: str, path: str, radius: float, reps: int, device: str, q) -> None:
    """Time ``reps`` propagation steps of form ``kind`` on the inputs at ``path``."""
    _set_threads()
    d = torch.load(path)
    feats, labels = d["feats"].to(device), d["labels"].to(device)
    cfg = PropagationConfig(topk=10, radius=radius, context=N_PREV)
    args = (feats[-1], feats[0], labels[0], feats[1:-1], labels[1:])
    if device == "cuda":
        with torch.no_grad():
            step(kind, *args, cfg)  # warm-up: CUDA context, kernels, allocator
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base_cuda = torch.cuda.memory_allocated()
    times, cpu_times = [], []
    out = None
    with PeakRSS() as mem:
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                out = step(kind, *args, cfg)
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
    res = {
        "seconds": statistics.median(times),
        "all_seconds": times,
        "all_cpu_seconds": cpu_times,
        "peak_rss_mb": mem.mb,
        "threads": torch.get_num_threads(),
    }
    if device == "cuda":
        res["peak_cuda_mb"] = (torch.cuda.max_memory_allocated() - base_cuda) / 2**20
    torch.save({"labels": out[0].cpu(), "topk": None if out[1] is None else [x.cpu() for x in out[1]]},
               path + f".{kind}.out")
    q.put(res)


def e2e_worker(sequences: list[str], short_side: int | None, device: str, q) -> None:
    """``evaluate_davis`` with random-r18 on ``sequences``, in a scratch folder."""
    _set_threads()
    from stt.evaluate import evaluate_davis

    out = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    try:
        t0 = time.perf_counter()
        res = evaluate_davis(None, "random-r18", out, short_side=short_side, sequences=sequences,
                             device=device, progress=False)
        seconds = time.perf_counter() - t0
        run = json.loads((out / "timing.json").read_text())["last_run"]
    finally:
        shutil.rmtree(out, ignore_errors=True)
    q.put({"sequences": sequences, "short_side": short_side, "frames": run["frames"],
           "seconds": seconds, "frames_per_s": run["frames_per_s"], "J&F-Mean": res["J&F-Mean"],
           "threads": torch.get_num_threads()})


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


def step_row(name: str, device: str, reps: int, dense_reps: int) -> dict:
    """One step benchmark: the three forms, each in its own process, and their agreement."""
    C, h, w, radius = STEPS[name]
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "inputs.pt")
        origin = make_inputs(Path(path), C, h, w, davis=C == 256)
        forms = {
            "batched": in_fresh_process(worker, "batched", path, radius, reps, device),
            "loop": in_fresh_process(worker, "loop", path, radius, max(1, reps // 2), device),
            "dense": in_fresh_process(worker, "dense", path, radius, dense_reps, device),
        }
        feats = torch.load(path)["feats"]
        cfg = PropagationConfig(topk=10, radius=radius, context=N_PREV)
        wv, wi = windowed_topk(feats[-1], feats[:-1], cfg.topk, cfg.radius, cfg.window)
        outs = {k: torch.load(path + f".{k}.out") for k in forms}
    dv, di = outs["dense"]["topk"]
    b, lo, de = forms["batched"], forms["loop"], forms["dense"]
    mem = "peak_cuda_mb" if device == "cuda" else "peak_rss_mb"
    return {
        "name": name,
        "device": device,
        "setting": f"{h}x{w} cells x {C} ch, context 1 + {N_PREV}, top-k {cfg.topk}, radius {radius}, "
                   f"{N_LABELS} labels, device {device}, {b['threads']} threads",
        "features": origin,
        "windowed": b,  # the batched form, under the key benchmarks/summarize.py reads
        "loop": lo,
        "dense": de,
        "speedup": de["seconds"] / b["seconds"],
        "speedup_vs_loop": lo["seconds"] / b["seconds"],
        "memory_ratio": de[mem] / max(b[mem], 1e-9),
        "topk_values_max_abs_diff": (wv - dv).abs().max().item(),
        "topk_indices_identical": (wi == di).float().mean().item(),
        "labels_max_abs_diff": max((outs["batched"]["labels"] - outs[k]["labels"]).abs().max().item()
                                   for k in ("loop", "dense")),
    }


def print_step(r: dict) -> None:
    mem = "peak_cuda_mb" if r["device"] == "cuda" else "peak_rss_mb"
    unit = "MB on the GPU" if r["device"] == "cuda" else "MB resident"
    print(f"\n{r['name']} ({r['setting']})\nfeatures: {r['features']}")
    for label, key in (("batched", "windowed"), ("loop", "loop"), ("dense", "dense")):
        x = r[key]
        print(f"  {label:8s}: {x['seconds']:.4f} s/frame ({1 / x['seconds']:.2f} frames/s), peak +{x[mem]:.0f} {unit}"
              f"   [runs: {', '.join(f'{t:.3f}' for t in x['all_seconds'])}]")
    print(f"  batched is {r['speedup']:.1f}x faster than dense ({r['memory_ratio']:.1f}x less memory), "
          f"{r['speedup_vs_loop']:.1f}x faster than the loop")
    print(f"  top-k: values max |diff| {r['topk_values_max_abs_diff']:.2e}, indices identical "
          f"{100 * r['topk_indices_identical']:.4f}%; labels max |diff| vs loop and dense {r['labels_max_abs_diff']:.2e}")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5, help="steps timed for the batched form (half for the loop)")
    ap.add_argument("--dense-reps", type=int, default=2)
    ap.add_argument("--device", default="cpu,cuda" if torch.cuda.is_available() else "cpu",
                    help="comma-separated devices, each gets every row")
    ap.add_argument("--e2e-sequences", default="car-shadow,motocross-jump,scooter-black",
                    help="DAVIS sequences of the end-to-end row (empty: no such row)")
    ap.add_argument("--e2e-short-side", type=int, default=None, help="frame short side (default: native 480p)")
    ap.add_argument("--json", default=None, help="also write the results here")
    a = ap.parse_args(argv)
    rows = []
    for device in a.device.split(","):
        for name in STEPS:
            rows.append(step_row(name, device, a.reps, a.dense_reps))
            print_step(rows[-1])
        if a.e2e_sequences:
            try:
                from stt.datasets import DAVIS

                DAVIS(sequences=a.e2e_sequences.split(","))
            except (FileNotFoundError, ValueError) as exc:
                print(f"\nend to end: skipped ({exc})")
                continue
            r = in_fresh_process(e2e_worker, a.e2e_sequences.split(","), a.e2e_short_side, device)
            rows.append({"name": "end to end, evaluate_davis random-r18", "device": device, **r})
            print(f"\nend to end on {device} ({r['threads']} threads): evaluate_davis random-r18, "
                  f"{len(r['sequences'])} DAVIS sequences at {r['short_side'] or 'native 480'}p: {r['frames']} frames in "
                  f"{r['seconds']:.1f} s, {r['frames_per_s']:.2f} frames/s (J&F {r['J&F-Mean']:.3f})")
    res = {**rows[0], "rows": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()

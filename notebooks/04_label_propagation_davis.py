# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Label propagation on DAVIS: how every model in this field is evaluated
#
# Self-supervised correspondence models (STT, CorrFlow, CRW, VFS, MAST, ...) are never trained
# on masks. They are evaluated by **label propagation**: give the model the object masks of the
# first frame of a video, let it find, for each pixel of a later frame, the pixels it
# corresponds to in earlier frames, and copy their labels. The better the features, the better
# the copied masks. This notebook builds that protocol piece by piece on real DAVIS frames and
# scores three feature-free or untrained baselines with the official DAVIS metrics.
#
# Papers: STT, [Li & Liu, CVPR 2023](https://arxiv.org/abs/2209.07778) (protocol defaults);
# CRW, [Jabri et al., NeurIPS 2020](https://arxiv.org/abs/2006.14613) (the protocol's common
# form); DAVIS, [Pont-Tuset et al., 2017](https://arxiv.org/abs/1704.00675) (metrics).
#
# **What you will learn**
# 1. the affinity between two frames' features, and why it is restricted to a local window;
# 2. top-k + softmax label transfer and the context queue (first frame + n previous frames);
# 3. the DAVIS region (J) and boundary (F) measures, computed exactly as the official code;
# 4. what J&F the trivial baselines reach, and how much the protocol's small options move it.

# %% [markdown]
# ## Setup

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from PIL import Image

from stt import report
from stt.affinity import dense_topk_reference, windowed_topk
from stt.datasets import DAVIS, resize_short_side, to_tensor
from stt.evaluate import davis_or_synthetic, evaluate_davis
from stt.features import build_feature_model
from stt.metrics import boundary_tolerance, dilate_disk, evaluate_davis_sequence, seg2bmap
from stt.propagation import (
    PropagationConfig,
    downsample_labels,
    normalize_features,
    propagate_frame,
)
from stt.viz import overlay, save_figure

torch.manual_seed(0)

# %% tags=["parameters"]
scale = "small"  # smoke | small | gpu | full: which notebooks/params/<scale>.yaml the runner used
run_dir = "../runs/small"  # artefacts, figures and results of this run
data_root = ""  # a DAVIS folder or data root; empty: $STT_DATA, else the synthetic stand-in
short_side = 240  # frames are resized to this short side (DAVIS native: 480)
max_sequences = 0  # evaluate the first N sequences of the split; 0: all
models = "identity,lab,random-r18"  # comma-separated: identity | lab | random-r18 | checkpoint path
protocol_sequences = 5  # sequences for the protocol-option study; 0: skip it
demo_sequence = ""  # sequence used in the figures; empty: the first one
device = "auto"

# %%
run_dir = Path(run_dir)
fig_dir = run_dir / "figures"
davis_root, synthetic = davis_or_synthetic(data_root or None)
ds = DAVIS(davis_root)
names = ds.names[:max_sequences] if max_sequences else ds.names
demo = demo_sequence or names[0]
print(f"DAVIS-{ds.year} {ds.split} at {davis_root} ({'synthetic stand-in' if synthetic else 'real'}):"
      f" {len(names)} of {len(ds)} sequences, short side {short_side}")

# %% [markdown]
# ## 1 · The data
#
# DAVIS gives, for every frame, an id map: 0 is background, 1..K are objects (DAVIS-2016 has
# one object per sequence; DAVIS-2017 up to about ten). Only frame 0's map is given to the
# model; all others are what it must predict.

# %%
frames, gt = ds.load(demo)
T = len(frames)
show = np.linspace(0, T - 1, 5).round().astype(int)
fig, axes = plt.subplots(1, len(show), figsize=(3.2 * len(show), 2.2))
for ax, t in zip(axes, show):
    ax.imshow(overlay(frames[t], gt[t]))
    ax.set_title(f"{demo} frame {t}" + (" (given)" if t == 0 else ""), fontsize=9)
    ax.axis("off")
save_figure(fig, "04_davis_frames", fig_dir)
plt.show()

# %% [markdown]
# ## 2 · Affinity between two frames
#
# A model maps frame $t$ to a feature map $f_t \in \mathbb{R}^{C\times h\times w}$ (stride 8 for
# the STT test-time ResNet: $60\times107$ cells for a $480\times854$ frame). With features
# normalised to unit length, the affinity of a query cell $q$ of frame $t$ to a cell $p$ of a
# context frame $c$ is the cosine similarity over a temperature,
#
# $$A_{t\leftarrow c}[q, p] = \frac{\langle f_t(q),\, f_c(p)\rangle}{\tau}, \qquad \tau = 0.07.$$
#
# Objects move little between nearby frames, so the protocol only looks for $p$ inside a
# window around $q$: $|p_y - q_y| \le r$ and $|p_x - q_x| \le r$ with $r = 12$ cells at stride 8
# (STT; CRW uses a disc). Below, a query cell on the object in frame $t$ and its cosine
# similarity to every cell of frame 0, for raw Lab colour and for a randomly initialised
# ResNet-18: the window is the white square.

# %%
dev = torch.device("cpu")
t_q = min(10, T - 1)
x = resize_short_side(to_tensor(frames[[0, t_q - 1, t_q]]), short_side, 8)
feature_models = {name: build_feature_model(name)[0] for name in ("lab", "random-r18")}
with torch.no_grad():
    feats = {name: normalize_features(m(x)) for name, m in feature_models.items()}
h, w = feats["lab"].shape[-2:]
obj = downsample_labels(torch.from_numpy(gt[t_q]), int(gt.max()) + 1, (h, w))[1:].sum(0)
qy, qx = [int(v) for v in torch.nonzero(obj > 0.5).float().mean(0).round()] if obj.sum() else (h // 2, w // 2)
r = 12
fig, axes = plt.subplots(1, 3, figsize=(13, 3))
axes[0].imshow(x[2].permute(1, 2, 0))
axes[0].scatter([qx * 8 + 4], [qy * 8 + 4], c="red", s=40)
axes[0].set_title(f"query cell in frame {t_q}")
for ax, (name, f) in zip(axes[1:], feats.items()):
    sim = torch.einsum("c,chw->hw", f[2, :, qy, qx], f[0])
    lo, hi = sim.quantile(0.05).item(), sim.max().item()
    ax.imshow(sim, cmap="magma", vmin=lo, vmax=hi)
    ax.add_patch(plt.Rectangle((qx - r - 0.5, qy - r - 0.5), 2 * r + 1, 2 * r + 1, fill=False, ec="white"))
    ax.set_title(f"cosine to frame 0: {name} ({lo:.2f} to {hi:.2f})")
for ax in axes:
    ax.axis("off")
save_figure(fig, "04_affinity_query", fig_dir)
plt.show()

# %% [markdown]
# Raw colour matches every pixel of similar colour, wherever it is; the random network's
# features mix colour with local texture. (Its features come out of ReLUs, so all cosines are
# high; each map is shown from its 5th percentile to its maximum. The temperature
# $\tau = 0.07$ is what turns small cosine differences into decisive weights.) The window removes
# most distant false matches.
#
# **Memory.** Written densely, the affinity of one query frame to 21 context frames at 480p is
# a $6420 \times 134\,820$ matrix (3.5 GB). `stt.affinity.windowed_topk` never builds it: it
# cuts the query map into tiles and correlates each tile only with the key patch its windows
# can reach. Here we check, on this frame pair, that it returns the dense answer.

# %%
f_rnd = feats["random-r18"]
v_win, i_win = windowed_topk(f_rnd[2], f_rnd[:2], k=10, radius=r)
v_dense, i_dense = dense_topk_reference(f_rnd[2], f_rnd[:2], k=10, radius=r)
assert torch.allclose(v_win, v_dense, atol=1e-5)
print(f"windowed top-10 == dense top-10 on a {h}x{w} grid; identical indices: {(i_win == i_dense).float().mean():.4%}")

# %% [markdown]
# ## 3 · Top-k label transfer and the context queue
#
# Labels live on the feature grid as $K$-channel maps $y_c$ (background + one channel per
# object). For query cell $q$ of frame $t$, the context is frame 0 (its ground truth, always)
# plus the $n = 20$ previous frames (their own *predicted*, soft labels). Over all context cells
# in the windows, keep the $k = 10$ largest affinities $\mathcal{N}_k(q)$ and average their labels:
#
# $$\hat y_t(q) = \sum_{(c,p) \in \mathcal{N}_k(q)} \frac{\exp A_{t\leftarrow c}[q,p]}{\sum_{(c',p') \in \mathcal{N}_k(q)} \exp A_{t\leftarrow c'}[q,p']}\; y_c(p).$$
#
# The prediction is upsampled bilinearly to the frame, each channel min-max normalised
# (STT/VFS), and the argmax is the predicted id. Below, the formula written out densely for one
# step (context = frame 0 and frame $t-1$) and checked against the package's
# `propagate_frame`.

# %%
cfg = PropagationConfig()
K = int(gt[0].max()) + 1
y0 = downsample_labels(torch.from_numpy(gt[0]), K, (h, w), cfg.first_label)  # K x h x w, one-hot
y_prev = downsample_labels(torch.from_numpy(gt[t_q - 1]), K, (h, w))  # stand-in for a prediction

# Dense, by the formula: affinity to both context frames, window mask, top-k, softmax, average.
q = f_rnd[2].flatten(1).t()  # hw x C
keys = torch.cat([f_rnd[0].flatten(1), f_rnd[1].flatten(1)], 1)  # C x 2hw
labels = torch.cat([y0.flatten(1), y_prev.flatten(1)], 1).t()  # 2hw x K
ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
ys, xs = ys.flatten(), xs.flatten()
inside = ((ys[:, None] - ys[None]).abs() <= r) & ((xs[:, None] - xs[None]).abs() <= r)  # hw x hw
A = (q @ keys / cfg.temperature).masked_fill(~inside.repeat(1, 2), float("-inf"))  # hw x 2hw
top, idx = A.topk(cfg.topk, dim=1)
y_dense = torch.einsum("qk,qkc->qc", top.softmax(1), labels[idx]).t().reshape(K, h, w)

y_pkg = propagate_frame(f_rnd[2], f_rnd[0], y0, f_rnd[1:2], y_prev[None], cfg)
assert torch.allclose(y_dense, y_pkg, atol=1e-5)
print("dense formula == stt.propagation.propagate_frame")

# %% [markdown]
# ## 4 · Evaluating: identity, Lab pixels, random ResNet-18
#
# `stt.evaluate.evaluate_davis` runs the whole protocol per sequence (features in batches,
# propagation, upsampling, indexed PNGs the official `davis2017-evaluation` accepts, metrics)
# and resumes per sequence if interrupted. The same runs from a shell:
#
# ```bash
# stt evaluate davis --data $STT_DATA --model random-r18 --short-side 240 --out runs/eval/random-r18
# ```
#
# The baselines:
# * **identity** copies frame 0's mask to every frame: the score of doing nothing;
# * **lab** uses the raw Lab colour of each $8\times8$ cell as its "feature";
# * **random-r18** is the STT test-time ResNet-18 (stride 8, Lab input) with random weights.

# %%
results = {}
timings = {}
for m in [s.strip() for s in models.split(",") if s.strip()]:
    out = run_dir / "eval" / "davis" / Path(m).stem
    t0 = time.time()
    results[m] = evaluate_davis(davis_root, m, out, short_side=short_side, sequences=names, device=device)
    timings[m] = time.time() - t0
    print(f"{m:>12}: J&F {results[m]['J&F-Mean']:.3f}  J {results[m]['J-Mean']:.3f}  "
          f"F {results[m]['F-Mean']:.3f}   ({timings[m]:.0f} s; cached sequences are not recomputed)")

# %% [markdown]
# ### What the propagated masks look like
#
# Predictions of the demo sequence, read back from the PNGs the evaluation wrote.

# %%
shown = [m for m in results if m != "identity"] or list(results)
fig, axes = plt.subplots(len(shown) + 1, len(show), figsize=(3.2 * len(show), 2.1 * (len(shown) + 1)))
axes = np.atleast_2d(axes)
for j, t in enumerate(show):
    axes[0, j].imshow(overlay(frames[t], gt[t]))
    axes[0, j].set_title(f"ground truth, frame {t}", fontsize=9)
    for i, m in enumerate(shown, start=1):
        pred = np.array(Image.open(run_dir / "eval" / "davis" / Path(m).stem / "predictions" / demo / f"{t:05d}.png"))
        axes[i, j].imshow(overlay(frames[t], pred))
        axes[i, j].set_title(f"{m}, frame {t}", fontsize=9)
for ax in axes.flat:
    ax.axis("off")
save_figure(fig, "04_propagation_strip", fig_dir)
plt.show()

# %% [markdown]
# ## 5 · The metrics, exactly as `davis2017-evaluation`
#
# For each object and each frame except the first and the last:
#
# * **J** (region similarity) $= |S \cap G| / |S \cup G|$, 1 when both are empty;
# * **F** (boundary accuracy): boundaries are the pixels that differ from their right, lower or
#   lower-right neighbour (`seg2bmap`); a predicted boundary pixel is correct if a true one lies
#   within $\lceil 0.008\,\lVert(H, W)\rVert\rceil$ pixels (8 at 480p), and vice versa; F is
#   the harmonic mean of that precision and recall.
#
# Per object: mean, recall (fraction of frames above 0.5) and decay (first quarter minus last
# quarter). The global numbers average over **objects**, not sequences; J&F is the mean of J
# and F. The figure shows F's ingredients on one predicted frame.

# %%
m_show = shown[-1]
t_b = show[2]
pred_b = np.array(Image.open(run_dir / "eval" / "davis" / Path(m_show).stem / "predictions" / demo / f"{t_b:05d}.png"))
tol = boundary_tolerance(gt[t_b].shape)
gb, pb = seg2bmap(gt[t_b] == 1), seg2bmap(pred_b == 1)
band = dilate_disk(gb, tol)
canvas = np.full(gb.shape + (3,), 255, np.uint8)
canvas[band] = (210, 225, 255)
canvas[gb] = (0, 0, 200)
canvas[pb & band] = (0, 160, 0)
canvas[pb & ~band] = (220, 0, 0)
fig, ax = plt.subplots(figsize=(7, 4))
ax.imshow(canvas)
res_b = evaluate_davis_sequence(gt[[0, t_b, t_b]], np.stack([gt[0], pred_b, pred_b]))
ax.set_title(f"{demo} frame {t_b}, object 1, {m_show}: J = {res_b['J'][0, 0]:.3f}, F = {res_b['F'][0, 0]:.3f}\n"
             f"blue: true boundary, light blue: its {tol}-px tolerance band, green/red: predicted boundary in/out",
             fontsize=9)
ax.axis("off")
save_figure(fig, "04_boundary_measure", fig_dir)
plt.show()

# %% [markdown]
# ## 6 · Results next to the papers
#
# The reference rows are DAVIS-2017 val (30 sequences, up to 10 objects each, 480p) from the
# papers' model zoos (SPEC section 7). The rows measured here are on the data named in the
# table's caption, which is usually easier (DAVIS-2016: one large object per sequence), at the
# short side chosen for this run. Compare rows measured here with each other, and with the
# papers only for the trend.

# %%
paper_rows = [
    ("STT R18 stride 8 (paper)", 70.7), ("STT R18 temporal only (paper)", 69.2),
    ("CRW R18 (paper)", 67.6), ("MAST R18 (paper)", 65.5), ("CorrFlow R18 (paper)", 49.5),
    ("Identity (paper)", 22.9),
]
data_desc = report.data_description(synthetic, ds, names, short_side)
lines = ["| model | J&F | J | F | J-recall | F-recall | data |", "|---|---|---|---|---|---|---|"]
for m, res in results.items():
    lines.append(f"| {m} (measured) | {100 * res['J&F-Mean']:.1f} | {100 * res['J-Mean']:.1f} | {100 * res['F-Mean']:.1f} "
                 f"| {100 * res['J-Recall']:.1f} | {100 * res['F-Recall']:.1f} | {data_desc} |")
for name, jf in paper_rows:
    lines.append(f"| {name} | {jf:.1f} | | | | | DAVIS-2017 val, 480p |")
table = "\n".join(lines)
report.write_results(run_dir, "04_davis_baselines", table)
print(table)

# %%
for m, res in results.items():
    assert 0.0 <= res["J&F-Mean"] <= 1.0, m
if "identity" in results and "lab" in results and not synthetic and len(names) >= 5:
    # Copying colours already beats copying the first mask on real video.
    assert results["lab"]["J&F-Mean"] > results["identity"]["J&F-Mean"]

# %% [markdown]
# ## 7 · How much do the protocol's small options matter?
#
# Papers differ in details that are rarely reported next to their numbers (SPEC section 5).
# Each bar changes one option from the STT default, on the first `protocol_sequences`
# sequences, with the Lab-pixel model (cheap enough to run many times on a CPU).

# %%
variants = {
    "STT default": PropagationConfig(),
    "tau 0.05 (CRW)": PropagationConfig(temperature=0.05),
    "circle window (CRW)": PropagationConfig(window="circle"),
    "no window on frame 0 (CRW)": PropagationConfig(radius_first_frame=False),
    "bilinear frame-0 labels (CRW)": PropagationConfig(first_label="bilinear"),
    "no min-max (CRW)": PropagationConfig(minmax=False),
    "top-k 5": PropagationConfig(topk=5),
    "context 5": PropagationConfig(context=5),
}
protocol = {}
if protocol_sequences:
    sub = names[:protocol_sequences]
    for label, c in variants.items():
        out = run_dir / "eval" / "davis-protocol" / label.split(" (")[0].replace(" ", "_")
        protocol[label] = evaluate_davis(davis_root, "lab", out, short_side=short_side, sequences=sub, cfg=c,
                                         device=device, progress=False)["J&F-Mean"]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    labels_ = list(protocol)
    ax.barh(labels_, [100 * protocol[k] for k in labels_], color=["tab:blue"] + ["tab:gray"] * (len(labels_) - 1))
    ax.invert_yaxis()
    ax.set_xlabel("J&F (%)")
    lo = min(protocol.values()) * 100
    ax.set_xlim(max(0, lo - 5), max(protocol.values()) * 100 + 2)
    ax.set_title(f"lab model, {len(sub)} sequences, short side {short_side}", fontsize=9)
    save_figure(fig, "04_protocol_options", fig_dir)
    plt.show()
    for k, v in protocol.items():
        print(f"{k:>32}: {100 * v:.1f}  ({100 * (v - protocol['STT default']):+.1f})")

# %% [markdown]
# ## Summary
#
# * Label propagation turns any feature map into a video object segmenter: top-k affinities
#   inside a local window, to the first frame and the recent past.
# * The windowed top-k gives the dense answer without the dense matrix (see
#   `benchmarks/propagation.py` for speed and memory).
# * J and F are computed exactly as the official DAVIS code; numbers average over objects.
# * Even features with no learning at all copy masks better than doing nothing; the next
#   notebooks learn features that do much better.
#
# ## Exercises
#
# 1. Set `models = "random-r50"`: does a bigger untrained network help?
# 2. Run the protocol study with `random-r18` instead of `lab`. Which option matters most now?
# 3. Lower `short_side` to 120 and raise it to 480. How do J and F react, and why does F suffer
#    more at low resolution?
# 4. Why does the context hold the *first* frame with its ground truth, and not only the
#    recent past? Try `PropagationConfig(context=0)` and `context=20` on a long sequence.
#
# ## References
#
# * R. Li, D. Liu. Spatial-then-Temporal Self-Supervised Learning for Video Correspondence. CVPR 2023.
# * A. Jabri, A. Owens, A. Efros. Space-Time Correspondence as a Contrastive Random Walk. NeurIPS 2020.
# * J. Pont-Tuset et al. The 2017 DAVIS Challenge on Video Object Segmentation. arXiv:1704.00675.
# * F. Perazzi et al. A Benchmark Dataset and Evaluation Methodology for Video Object Segmentation. CVPR 2016.

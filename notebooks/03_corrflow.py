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
# # 03 · CorrFlow: a colour pointer that learns correspondence flow
#
# CorrFlow ([Lai & Xie, BMVC 2019](https://arxiv.org/abs/1905.00875)) learns correspondence
# from unlabelled video by **copying**: the colour of every pixel of a frame is predicted as a
# pointer into a reference frame, and the pointer is the model's attention. Four ingredients
# keep it from cheating or drifting:
#
# 1. an **information bottleneck** on the input colours (otherwise copying is trivial);
# 2. **restricted attention** in a $13\times13$ window at stride 4 (small motion, little memory);
# 3. **scheduled sampling**: later frames are predicted from the model's own (imperfect)
#    predictions, as at test time;
# 4. **cycle consistency**: colours propagated forward and back must return to the start.
#
# **What you will learn:** colour quantisation by k-means, reconstruction as classification,
# why the bottleneck matters (trained with and without it), how drift builds up over a long
# sequence and what scheduled sampling and cycles do about it, and CorrFlow's DAVIS J&F under
# its own inference protocol and the common one, next to STT.

# %% [markdown]
# ## Setup

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from stt import report
from stt.checkpoint import load_checkpoint
from stt.color import lab_to_rgb, quantize_ab, rgb_to_lab
from stt.corrflow import METHOD, CorrFlowEncoder, train_corrflow
from stt.datasets import DAVIS, cache_dir, data_path
from stt.evaluate import davis_or_synthetic, evaluate_davis
from stt.propagation import propagate_recursive
from stt.recipe import default_video_data
from stt.video import VideoFrames
from stt.viz import save_figure

torch.manual_seed(0)

# %% tags=["parameters"]
scale = "small"  # smoke | small | gpu | full: also the training preset (stt.corrflow.PRESETS)
run_dir = "../runs/small"  # artefacts, figures and results of this run
data_root = ""  # DAVIS for evaluation; empty: $STT_DATA, else the synthetic stand-in
video_root = ""  # training videos, absolute or under $STT_DATA; empty: $STT_DATA/videos
steps = 0  # override the preset's number of steps; 0: keep it
ablation_steps = 150  # steps of each short with/without run (bottleneck; scheduled sampling + cycles)
ablation_image_size = 64  # crop size of the short runs (smaller than the main run's, to keep them short)
eval_short_side = 240  # DAVIS evaluation resolution (short side)
eval_max_sequences = 0  # evaluate the first N DAVIS sequences; 0: all
ablation_sequences = 5  # DAVIS sequences for the ablation comparisons
drift_frames = 60  # length of the drift experiment (frames of the most moving training video)
device = "auto"

# %%
run_dir = Path(run_dir)
fig_dir = run_dir / "figures"
videos_path = data_path(video_root, default_video_data())
settings = METHOD.settings(scale)  # the method's defaults, then the preset
print(f"training data: {videos_path}\npreset {scale!r}: " + ", ".join(f"{k}={v}" for k, v in settings.flat().items()))

# %% [markdown]
# ## 1 · The pointer, and reconstruction as classification
#
# For a target frame $t$ and a reference frame $r$, features $f$ (stride 4, 64-d) give a
# restricted attention over the $13 \times 13$ window around each target cell $q$, by plain dot
# products (no normalisation, no temperature):
#
# $$A[q, p] = \operatorname*{softmax}_{\lVert p-q \rVert_\infty \le 6} \langle f_t(q), f_r(p)\rangle,
# \qquad \hat y_t(q) = \sum_p A[q, p]\, y_r(p).$$
#
# The colours $y$ are not regressed: the $(a, b)$ plane of Lab is quantised into 16 colours
# (k-means on training frames), $y_r$ is the reference's one-hot colour map at stride 4, and
# $\hat y_t$ is a 16-way distribution, upsampled to full size and scored by
# $\mathrm{NLL}(\log(\hat y_t + 10^{-8}), c_t)$ against the target's colour classes $c_t$.
# Classification avoids the grey average that regression predicts when a pixel is ambiguous.

# %%
videos = VideoFrames(videos_path, cache_dir() / "frames" if settings["cache"] else None, settings["fps"],
                     settings["short_side"], settings["max_videos"])
out_main = run_dir / "corrflow"
overrides = {"steps": steps} if steps else {}
ckpt_main = train_corrflow(videos_path, out_main, scale, device=device, **overrides)
ck = load_checkpoint(ckpt_main)
centroids = ck["model"]["centroids"]
rate = np.mean([h["samples_per_s"] for h in ck["history"]])
print(f"{ckpt_main}: step {ck['step']}, loss {ck['history'][-1]['loss']:.3f}, {rate:.1f} clips/s")

# %% [markdown]
# The 16 colours (k-means on frames of the training videos, saved in the checkpoint) and a frame
# quantised to them: enough to tell objects apart, coarse enough to classify.

# %%
frame = torch.from_numpy(videos.frames(len(videos.videos) // 2, [0])[0]).permute(2, 0, 1).float() / 255
lab = rgb_to_lab(frame)
q = quantize_ab(lab, centroids)
quant = torch.cat([lab[:1], centroids[q].permute(2, 0, 1)])  # true lightness, quantised colour
swatch = torch.cat([torch.full((1, 16), 65.0), centroids.t()]).view(3, 1, 16)
fig, axes = plt.subplots(1, 3, figsize=(14, 3.2), gridspec_kw={"width_ratios": [1.4, 2, 2]})
axes[0].imshow(lab_to_rgb(swatch).permute(1, 2, 0), aspect="auto")
axes[0].set_title("the 16 colour classes (a, b at L = 65)")
axes[1].imshow(frame.permute(1, 2, 0))
axes[1].set_title("frame")
axes[2].imshow(lab_to_rgb(quant).permute(1, 2, 0))
axes[2].set_title("quantised (true L, class colour)")
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
save_figure(fig, "03_palette", fig_dir)
plt.show()

# %% [markdown]
# ## 2 · Why the bottleneck: train with and without it
#
# If the target frame enters the encoder in full colour, its features can encode its colour and
# the attention can simply point to any reference pixel *of the same colour*: the loss falls
# without any tracking. The bottleneck removes that shortcut: with probability 0.7 one or two
# RGB channels are zeroed (the same for the whole batch, the rest rescaled by 3/(3-n)), and with
# probability 0.1 a clip's colours are jittered. Short runs with the same budget (and smaller
# crops than the main run, to keep them short): with and without the bottleneck, and (for the
# next section) without scheduled sampling and cycles.

# %%
ablation_runs = {
    "with bottleneck": ("corrflow-short", {}),
    "without bottleneck": ("corrflow-short-no-bottleneck", {"bottleneck": False}),
    "no scheduled sampling, no cycles": ("corrflow-short-no-ss-no-cycles", {"scheduled_sampling": False, "cycles": False}),
}
short = {}
for label, (folder, kw) in ablation_runs.items():
    short[label] = train_corrflow(videos_path, run_dir / folder, scale, centroids=centroids, device=device,
                                  steps=ablation_steps, image_size=ablation_image_size, **kw)
fig, ax = plt.subplots(figsize=(6, 3))
for label in ("with bottleneck", "without bottleneck"):
    h = load_checkpoint(short[label])["history"]
    ax.plot([r["step"] for r in h], [r["forward1"] for r in h], label=label)
ax.set(xlabel="step", ylabel="NLL, frame 1 from frame 0", title="reconstruction loss")
ax.legend()
save_figure(fig, "03_bottleneck_loss", fig_dir)
plt.show()

# %%
davis_root, synthetic = davis_or_synthetic(data_root or None)
ds = DAVIS(davis_root)
names = ds.names[:eval_max_sequences] if eval_max_sequences else ds.names
sub = ds.names[:ablation_sequences]
ablation_jf = {}
for label, path in short.items():
    folder = run_dir / "eval" / "davis-ablation" / Path(path).parent.name
    ablation_jf[label] = evaluate_davis(davis_root, str(path), folder, short_side=eval_short_side, sequences=sub,
                                        protocol="corrflow", device=device, progress=False)["J&F-Mean"]
    print(f"{label:>34}: J&F {100 * ablation_jf[label]:.1f} on {len(sub)} sequences (CorrFlow protocol), "
          f"final training loss {load_checkpoint(path)['history'][-1]['loss']:.3f}")

# %% [markdown]
# What to look for: the shortcut shows as a lower training loss *without* the bottleneck and no
# better propagation (the model learned to match colours, not to track). The cell below says
# what this run shows. At the `small` budget both short runs are barely trained and the
# comparison uses 5 sequences: a difference of a few points is within noise, evidence neither
# way; the `full` preset is where the paper's finding can be checked.

# %%
nll = {k: load_checkpoint(short[k])["history"][-1]["forward1"] for k in ("with bottleneck", "without bottleneck")}
gap = 100 * (ablation_jf["without bottleneck"] - ablation_jf["with bottleneck"])
print(f"final NLL (frame 1 from frame 0): with {nll['with bottleneck']:.3f}, without {nll['without bottleneck']:.3f} "
      f"-> {'lower' if nll['without bottleneck'] < nll['with bottleneck'] else 'not lower'} without the bottleneck")
print(f"propagation without the bottleneck: {'better' if gap > 0 else 'worse or equal'} by {abs(gap):.1f} J&F "
      f"-> the shortcut signature {'is' if gap <= 0 and nll['without bottleneck'] < nll['with bottleneck'] else 'is not'} "
      "visible at this budget")

# %% [markdown]
# ## 3 · Drift, scheduled sampling and cycles
#
# At test time CorrFlow propagates recursively: frame $t$ from frame $t-1$'s *predicted*
# labels. Small errors compound. Scheduled sampling trains on that situation (frame 2 is
# predicted from the model's own soft prediction of frame 1 with probability $1-\epsilon$,
# $\epsilon$: 0.9 → 0.6); the cycles $0\to1\to0$ and $0\to1\to2\to1\to0$ penalise predictions
# that cannot find their way back:
#
# $$\mathcal{L} = \underbrace{\mathcal{L}_{0\to1} + \mathcal{L}_{1\to2} + \mathcal{L}_{0\to1\to0}}_{\mathcal{L}_{\text{short}}}
#   + 0.1\,\underbrace{\mathcal{L}_{0\to1\to2\to1\to0}}_{\mathcal{L}_{\text{long}}}.$$
#
# The figure propagates frame 0's colour classes through a long unlabelled video with hard
# labels and measures, frame by frame, the fraction of pixels whose propagated colour class is
# still right.

# %%
def drift_curve(ckpt_path, frames_u8, radius=6):
    model = CorrFlowEncoder()
    model.load_state_dict(load_checkpoint(ckpt_path)["encoder"])
    model.eval()
    x = torch.from_numpy(frames_u8).permute(0, 3, 1, 2).float() / 255
    x = x[..., : x.shape[-2] // 4 * 4, : x.shape[-1] // 4 * 4]
    labels = quantize_ab(rgb_to_lab(x), centroids)  # T x H x W
    with torch.no_grad():
        feats = [model(x[i : i + 1])[0] for i in range(len(x))]
        y0 = F.one_hot(labels[0, ::4, ::4], 16).permute(2, 0, 1).float()
        acc = [(F.interpolate(y[None], size=x.shape[-2:], mode="bilinear")[0].argmax(0) == labels[t + 1]).float().mean().item()
               for t, y in enumerate(propagate_recursive(feats, y0, radius, hard=True))]
    return np.array(acc)


def motion(v):
    """Mean absolute change between frames 10 apart: a static camera on a still scene shows no drift."""
    ts = range(0, min(videos.length(v), drift_frames), 10)
    f = videos.frames(v, ts).astype(np.float32)
    return np.abs(np.diff(f, axis=0)).mean() if len(f) > 1 else 0.0


longest = max(map(videos.length, range(len(videos.videos))))
moving = max([v for v in range(len(videos.videos)) if videos.length(v) >= min(drift_frames, longest)], key=motion)
n = min(videos.length(moving), drift_frames)
seq = videos.frames(moving, range(n))
fig, ax = plt.subplots(figsize=(7, 3.2))
for label, style in (("with bottleneck", "-"), ("no scheduled sampling, no cycles", "--")):
    ax.plot(np.arange(1, n), 100 * drift_curve(short[label], seq), style, label=f"{label} ({ablation_steps} steps)")
ax.plot(np.arange(1, n), 100 * drift_curve(ckpt_main, seq), ":", label=f"main run ({ck['step']} steps)", c="k")
ax.set(xlabel=f"frame ({settings['fps']:g} fps) of {videos.videos[moving][0]}", ylabel="% pixels with the right colour class",
       title="drift of recursive propagation")
ax.legend(fontsize=8)
save_figure(fig, "03_drift", fig_dir)
plt.show()

# %% [markdown]
# ## 4 · CorrFlow on DAVIS, both protocols, next to STT
#
# * **own protocol** (`stt.propagation.CORRFLOW_PROTOCOL`, as its official test code):
#   recursive from the previous frame only, hard labels, the training attention, frame 0's labels
#   one-hot, and the argmax of the upsampled prediction without the common protocol's per-channel
#   min-max normalisation;
# * **common protocol** (SPEC section 5): first frame + 20 previous frames, top-10, the same
#   window in pixels as the stride-8 models (24 cells at stride 4), $\tau = 0.07$.

# %%
results = {}
for label, protocol in [("CorrFlow (ours), own protocol", "corrflow"), ("CorrFlow (ours), common protocol", "common")]:
    folder = run_dir / "eval" / "davis" / f"corrflow-{protocol}"
    results[label] = evaluate_davis(davis_root, str(ckpt_main), folder, short_side=eval_short_side, sequences=names,
                                    protocol=protocol, device=device)
data_desc = report.data_description(synthetic, ds, names, eval_short_side)
lines = ["| model | J&F | J | F | training | data |", "|---|---|---|---|---|---|"]
for label, r in results.items():
    lines.append(f"| {label} | {100 * r['J&F-Mean']:.1f} | {100 * r['J-Mean']:.1f} | {100 * r['F-Mean']:.1f} "
                 f"| {ck['step']} steps x {settings['batch_size']} clips | {data_desc} |")
earlier = run_dir / "results" / "02_temporal.json"
if earlier.is_file():  # STT rows of notebook 02, same protocol and data
    for label, r in json.loads(earlier.read_text()).items():
        lines.append(f"| {label} (notebook 02) | {100 * r['J&F-Mean']:.1f} | {100 * r['J-Mean']:.1f} | {100 * r['F-Mean']:.1f} | | {data_desc} |")
lines += ["| CorrFlow R18, Kinetics (paper) | 49.5 | 47.7 | 51.3 | Kinetics | DAVIS-2017 val, 480p |",
          "| STT R18 stride 8 (paper) | 70.7 | | | YouTube-VOS | DAVIS-2017 val, 480p |"]
table = "\n".join(lines)
report.write_results(run_dir, "03_corrflow", table, {**results, "ablations_jf": ablation_jf})
print(table)

# %% [markdown]
# ## Summary
#
# * CorrFlow's pointer is label propagation used as a training signal: predict colours by
#   copying them through the attention.
# * The bottleneck removes the colour shortcut; restricted attention encodes small motion;
#   scheduled sampling and cycles train the model on its own errors, against drift.
# * The two inference protocols give different numbers for the same weights: compare models on
#   one protocol (the common one), as the results notebook does.
#
# ## Exercises
#
# 1. Set the bottleneck's `drop_prob` to 1.0 (always drop): does the model learn faster or slower?
# 2. Evaluate the main model with the CorrFlow protocol but soft labels
#    (`propagate_recursive(..., hard=False)`): does drift get better or worse?
# 3. Increase the attention radius to 12 at stride 4: what happens to memory and to J&F?
#
# ## References
#
# * Z. Lai, W. Xie. Self-supervised Learning for Video Correspondence Flow. BMVC 2019.
# * C. Vondrick et al. Tracking Emerges by Colorizing Videos. ECCV 2018.
# * S. Bengio et al. Scheduled Sampling for Sequence Prediction with Recurrent Neural Networks. NeurIPS 2015.

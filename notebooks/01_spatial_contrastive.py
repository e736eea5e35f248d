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
# # 01 · STT step 1: spatial features by contrastive learning on still images
#
# STT ([Li & Liu, CVPR 2023](https://arxiv.org/abs/2209.07778)) learns correspondence in two
# steps. **Step 1**, this notebook, learns *spatial* features from still images alone: features
# that tell one image region from another, so that a pixel's feature is distinctive. **Step 2**
# (notebook 02) then learns *temporal* features from video, while distilling step 1's spatial
# knowledge so it is not forgotten.
#
# The STT authors start from an ImageNet MoCo v2 checkpoint; here we train MoCo v2
# ([He et al., CVPR 2020](https://arxiv.org/abs/1911.05722);
# [Chen et al., 2020](https://arxiv.org/abs/2003.04297)) ourselves, in Lab colour space as the
# official step-1 ResNet-18, on still photographs: `$STT_DATA/ImageNet/train` or, in the
# development data, the 5,925 ImageNet photographs of `$STT_DATA/ImageNet_sample/train` (frames
# of the training videos when neither is there; the notebook says which).
#
# **What you will learn**
# 1. why discriminative spatial features matter for finding correspondences;
# 2. why step 1 learns from photographs, not from the videos step 2 learns from;
# 3. the InfoNCE loss, the queue of negatives and the momentum encoder;
# 4. how to train it reproducibly (seeded data order, exact resume, DDP) with `stt.train`;
# 5. what a small CPU run learns, measured by label propagation on DAVIS.

# %% [markdown]
# ## Setup

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from stt.checkpoint import load_checkpoint
from stt.datasets import DAVIS, cache_dir, data_path, resize_short_side, to_tensor
from stt.evaluate import davis_or_synthetic
from stt import report
from stt.features import build_feature_model
from stt.losses import info_nce
from stt.moco import METHOD, moco_queue_size, train_spatial
from stt.propagation import normalize_features
from stt.recipe import default_image_data
from stt.video import StillImages
from stt.views import TwoViews
from stt.viz import save_figure

torch.manual_seed(0)

# %% tags=["parameters"]
scale = "small"  # smoke | small | gpu | full: also the training preset (stt.moco.PRESETS)
run_dir = "../runs/small"  # artefacts, figures and results of this run
data_root = ""  # DAVIS for evaluation; empty: $STT_DATA, else the synthetic stand-in
image_root = ""  # step 1's still images (or videos), absolute or under $STT_DATA; empty: ImageNet(_sample)/train, else videos
steps = 0  # override the preset's number of steps; 0: keep it
eval_short_side = 240  # DAVIS evaluation resolution (short side)
eval_max_sequences = 0  # evaluate the first N DAVIS sequences; 0: all
device = "auto"

# %%
run_dir = Path(run_dir)
fig_dir = run_dir / "figures"
images_path = data_path(image_root) or default_image_data()
settings = METHOD.settings(scale, steps=steps or None)  # the method's defaults, the preset, this notebook's steps
print(f"training data: {images_path}\npreset {scale!r}: " + ", ".join(f"{k}={v}" for k, v in settings.flat().items()))

# %% [markdown]
# ## 1 · Why spatial discrimination matters for correspondence
#
# Label propagation (notebook 04) copies a label from frame 0 to the pixel of frame $t$ whose
# feature is most similar. That works only if features are *distinctive*: the feature of a
# swan's neck must be closer to the neck in the next frame than to the swan's body, the water
# or another bird. Raw colour is not distinctive (every dark pixel looks alike); a randomly
# initialised network mixes colour with texture but knows nothing of objects. Contrastive
# learning trains exactly the missing property: **a view of an image region must be closer to
# another view of the same region than to anything else.**
#
# ## 2 · The training images: photographs, not the videos
#
# STT is *spatial-then-temporal* because its two steps learn from different data. Step 1 learns
# from still photographs (ImageNet in the paper): a thousand kinds of objects, framed, sharp, at
# many scales and in many settings, which a few hundred video clips do not hold. Step 2 then
# learns time from video, and its global correlation distillation (notebook 02) keeps what step
# 1 learned from the photographs. Were step 1 to train on frames of step 2's own videos, it
# would bring no image step 2 cannot see, and GCD would only tie the student to a weaker
# teacher that knows the same frames (what this project measured before the photographs were
# available: section 8 compares the two).
#
# Here: the photographs of the folder printed above (ImageNet-train layout,
# `<class>/<image>.JPEG`; the class folders are not used). Each training sample is two
# independent MoCo v2 augmentations of one photograph: random resized crop (MoCo's 20-100 % of
# the area, or the `small` preset's own range, section 5), colour jitter, greyscale, blur, flip.
# (Given videos instead, every frame is a still image: resampled to 6 frames per second and a
# short side of 256, cached once.)

# %%
images = StillImages(images_path, cache_dir() / "frames", settings["fps"], settings["short_side"], settings["max_videos"])
pairs = TwoViews(images, settings["image_size"], scale=settings["crop_scale"])
print(f"{len(images)} training images from {sum(len(c.videos) for c in images.caches)} videos"
      f" and {len(images.files)} image files")
g = torch.Generator().manual_seed(0)
picks = torch.randint(0, len(images), (6,), generator=g).tolist()
fig, axes = plt.subplots(3, 6, figsize=(13, 6.6))
for j, i in enumerate(picks):
    v1, v2, _ = pairs[(i, 1000 + j)]
    axes[0, j].imshow(images.get(i))
    axes[1, j].imshow(v1.permute(1, 2, 0))
    axes[2, j].imshow(v2.permute(1, 2, 0))
for ax, title in zip(axes[:, 0], ["image", "view 1 (query)", "view 2 (key)"]):
    ax.set_ylabel(title)
for ax in axes.flat:
    ax.set_xticks([])
    ax.set_yticks([])
save_figure(fig, "01_augmented_pairs", fig_dir)
plt.show()

# %% [markdown]
# ## 3 · InfoNCE, the queue and the momentum encoder
#
# A query encoder $f_q$ (ResNet trunk, global average pool, 2-layer MLP, L2 normalisation)
# embeds view 1 as $q$; a key encoder $f_k$ embeds view 2 as the positive key $k_+$. The
# negatives $\{n_j\}_{j=1}^{K}$ are keys of *earlier* batches, kept in a queue. The loss is a
# $(K{+}1)$-way softmax classification of the positive, with temperature $t = 0.2$:
#
# $$\mathcal{L}_q = -\log \frac{\exp(q\cdot k_+/t)}{\exp(q\cdot k_+/t) + \sum_{j=1}^{K} \exp(q\cdot n_j/t)}.$$
#
# * **Queue.** $K$ can be far larger than the batch, decoupling the number of negatives from
#   memory, but not larger than the data allows: section 4 sizes it.
# * **Momentum encoder.** Keys in the queue must come from a slowly changing encoder, or they
#   would be inconsistent with each other: $\theta_k \leftarrow m\,\theta_k + (1-m)\,\theta_q$,
#   $m = 0.999$; only $f_q$ gets gradients.
# * **Shuffle BN.** If a query and its key shared BatchNorm statistics, the network could match
#   them through the statistics instead of the content; keys are computed on a shuffled batch
#   (across GPUs under DDP; in chunks on one device).
#
# The loss written out for a toy batch, checked against `stt.losses.info_nce`:

# %%
gq = torch.Generator().manual_seed(1)
q = F.normalize(torch.randn(4, 16, generator=gq), dim=1)
k = F.normalize(q + 0.3 * torch.randn(4, 16, generator=gq), dim=1)  # positives: noisy copies
queue = F.normalize(torch.randn(16, 32, generator=gq), dim=0)
pos = (q * k).sum(1) / 0.2
neg = q @ queue / 0.2
by_hand = -(pos - torch.logsumexp(torch.cat([pos[:, None], neg], 1), dim=1)).mean()
loss, logits = info_nce(q, k, queue, 0.2)
assert torch.allclose(loss, by_hand)
print(f"InfoNCE {loss:.4f} (chance level log(1 + K) = {np.log(33):.4f}); positive ranked first for "
      f"{(logits.argmax(1) == 0).float().mean():.0%} of queries")

# %% [markdown]
# ## 4 · How long a queue can the data support?
#
# Every image's key enters the queue once per epoch, so a queue of $K$ keys spans $K/N$ epochs
# of an $N$-image training set. MoCo's 65 536 keys are about 5 % of ImageNet's 1.28 M images: a
# query meets its own image's stale key in the queue with a chance of 5 %, and almost all its
# negatives really are other images. A small set changes this, and frames of videos twice over:
#
# * the set is small (a few thousand photographs here): with $K \ge N$, *every* query finds $K/N$ stale keys of its own image among
#   its "negatives", and the loss asks the network to tell an image from itself;
# * neighbouring frames of one video are near-duplicates: a query also meets about $K/V$ keys of
#   its own video ($V$ videos), which are just as hard to call negative.
#
# So the recipe sizes the queue from the data, at most a fraction $f$ of the training images
# (`max_queue_fraction`, 0.25: a preset's larger queue is clamped, saying so, and a larger one
# asked for by hand is refused), and MoCo leaves the keys of the query's own video out of its
# negatives (`exclude_same_instance`, *ours*; on ImageNet each image is its own instance, so it
# only removes the query's own stale key). The arithmetic for this run's data:

# %%
n_img, n_vid = len(images), images.n_instances
K_auto = moco_queue_size("auto", n_img, settings["max_queue_fraction"])
for label, K in [("the earlier small preset", 4096), ("sized from the data", K_auto)]:
    own = (f"~{K / n_vid:.0f} keys of its own video (of {n_vid})" if n_vid < n_img
           else "no other image of its own instance (each photograph is one)")
    print(f"K = {K:6d} ({label}): spans {K / n_img:.2f} epochs of the {n_img} images; a query meets "
          f"{K / n_img:.2f} stale keys of its own image and {own}")

# %% [markdown]
# What the queue's size did to label propagation was measured by short runs scored on DAVIS
# development sequences (`python studies/run.py queue`; notebook 06, section 7, shows the table).
#
# ## 5 · The scale of a crop
#
# MoCo trains the plain ResNet (a max-pool after the stem: layer1 at 1/4 of the crop), but
# label propagation uses the test-time trunk *without* the max-pool (SPEC section 1: layer1 at
# 1/2, layer3 at 1/8). Same weights, but at test time every filter sees the frame at twice the
# resolution it was trained on. The crop adds to this: a random 20-100 % of an image, shrunk to
# a 96-pixel square, shows objects several times smaller than the evaluated frame does. In
# numbers: how many pixels of a 240p DAVIS frame one layer1 cell covers, during training (a
# crop of area fraction $a$ of a training image of this run's median size, resized to $S$;
# the image's short side taken as the frame's) and at test time:

# %%
H, W = np.median([images.get(i).shape[:2] for i in range(0, len(images), max(1, len(images) // 50))], 0)
S, test_cell = settings["image_size"], 2  # layer1 at /2 of the evaluated frame, no max-pool
print(f"median training image: {W:.0f} x {H:.0f} px")
rows = ["| crop area | resize | one layer1 cell in training (240p px) | at test time | ratio |", "|---|---|---|---|---|"]
for a in (1.0, 0.6, 0.2, 0.08):
    zoom = S / np.sqrt(a * H * W)  # crop pixels per frame pixel
    cell = 4 / (zoom * H / eval_short_side)  # layer1 at /4 of the crop, in pixels of the evaluated frame
    rows.append(f"| {a:.2f} | x{zoom:.2f} | {cell:.1f} | {test_cell} | {cell / test_cell:.1f}x |")
display(Markdown("\n".join(rows)))

# %% [markdown]
# Smaller crops, enlarged more, close part of the gap; too small, and the two views of an image
# share too little for the contrastive task to be learnable (the loss stays near chance). On
# video frames this was worth several points (`studies/results/step1.md`), and the `small`
# preset takes `crop_scale = (0.08, 0.4)` (*ours*: a departure from MoCo v2's 0.2-1.0, which
# the `full` preset keeps for the whole of ImageNet, where the network learns many scales from
# many images). On the photographs, `python studies/run.py photos` compares at equal compute
# MoCo's crops, the local crops, larger views, a ResNet-50 and the local crops on the videos'
# frames instead of photographs (notebook 06, section 7).

# %% [markdown]
# ## 6 · Training
#
# `stt.moco.train_spatial` builds the MoCo model, the data and a `stt.train.Trainer`. The
# trainer is seeded (sample $j$ of step $s$ is a fixed function of the seed), writes an atomic
# checkpoint every few hundred steps and on Ctrl-C, and resumes exactly where it stopped: rerun
# this cell after an interruption and it continues; run it after completion and it only loads.
# The same run from a shell, and on several GPUs:
#
# ```bash
# stt train spatial --config small --out runs/small/spatial
# torchrun --nproc_per_node=8 -m stt.cli train spatial --config full --data $STT_DATA/ImageNet/train --out runs/full/spatial
# ```
#
# The preset keeps MoCo v2's learning-rate scaling rule and temperature: the alternatives tried
# (`python studies/run.py spatial`, notebook 06, section 7) did not move J&F beyond the noise.

# %%
out = run_dir / "spatial"
overrides = {"steps": settings["steps"]} if steps else {}
ckpt_path = train_spatial(images_path, out, scale, device=device, **overrides)
ckpt = load_checkpoint(ckpt_path)
hist = ckpt["history"]
rate = np.mean([h["samples_per_s"] for h in hist])
seen = ckpt["step"] * settings["batch_size"]
print(f"{ckpt_path}: step {ckpt['step']}, last loss {hist[-1]['loss']:.3f}, {rate:.1f} images/s "
      f"({ckpt['meta']['world_size']} process(es)); {seen} samples seen = {100 * seen / (200 * 1281167):.3f} % "
      "of the 200 ImageNet epochs of the paper's step 1")

# %%
steps_, loss_, acc_ = (np.array([h[k] for h in hist]) for k in ("step", "loss", "acc"))
fig, axes = plt.subplots(1, 2, figsize=(10, 3))
axes[0].plot(steps_, loss_)
axes[0].axhline(np.log(ckpt["config"]["extra"]["queue_size"] + 1), ls="--", c="gray", lw=1)
axes[0].set(xlabel="step", ylabel="InfoNCE", title="loss (dashed: chance, log(1+K))")
axes[1].plot(steps_, 100 * acc_)
axes[1].set(xlabel="step", ylabel="%", title="positive key ranked first among 1 + K")
save_figure(fig, "01_training_curves", fig_dir)
plt.show()
assert np.isfinite(loss_).all()

# %% [markdown]
# ## 7 · What did it learn? Nearest neighbours and dense similarity
#
# **Image level.** Embed a few hundred training images with the query encoder (trained vs the
# same network at random initialisation) and show each query frame's nearest neighbours.

# %%
trained, _ = build_feature_model(str(ckpt_path))  # the stride-8 test-time trunk, layer3 pooled below
random_, _ = build_feature_model("random-r18")


def global_embed(model, batch):
    with torch.no_grad():
        return F.normalize(model(batch).mean((2, 3)), dim=1)


idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(2))[:240].tolist()
thumbs = torch.stack([resize_short_side(to_tensor(images.get(i)[None]), 96, 8)[0, :, :96, :96] for i in idx])
fig, axes = plt.subplots(4, 10, figsize=(14, 6))
for row, (name, model) in enumerate([("random", random_), ("trained", trained)]):
    emb = torch.cat([global_embed(model, thumbs[s:s + 60]) for s in range(0, len(thumbs), 60)])
    sim = emb @ emb.t()
    for r, qi in enumerate((0, 1)):
        nn_ = sim[qi].argsort(descending=True)[1:10]
        ax = axes[2 * row + r]
        ax[0].imshow(thumbs[qi].permute(1, 2, 0))
        ax[0].set_title(f"query ({name})", fontsize=8)
        for a, j in zip(ax[1:], nn_.tolist()):
            a.imshow(thumbs[j].permute(1, 2, 0))
            a.set_title(f"{sim[qi, j]:.3f}", fontsize=8)
for a in axes.flat:
    a.axis("off")
save_figure(fig, "01_nearest_neighbours", fig_dir)
plt.show()

# %% [markdown]
# **Pixel level**, which is what correspondence needs: the stride-8 test-time encoder
# (SPEC section 1: same weights, no max-pool, layer3) on two DAVIS frames. For a few query
# points in frame 10, the cosine similarity of every cell of frame 0.

# %%
davis_root, synthetic = davis_or_synthetic(data_root or None)
ds = DAVIS(davis_root)
frames, gt = ds.load(ds.names[0])
x = resize_short_side(to_tensor(frames[[0, min(10, len(frames) - 1)]]), eval_short_side, 8)
fig, axes = plt.subplots(2, 4, figsize=(14, 4.6))
for row, (name, model) in enumerate([("random-r18", random_), ("step 1 (trained)", trained)]):
    with torch.no_grad():
        f = normalize_features(model(x))
    h, w = f.shape[-2:]
    pts = [(h // 2, w // 3), (h // 2, w // 2), (h // 3, 2 * w // 3)]
    axes[row, 0].imshow(x[1].permute(1, 2, 0))
    for (py, px), c in zip(pts, ("red", "lime", "cyan")):
        axes[row, 0].scatter([px * 8 + 4], [py * 8 + 4], c=c, s=30)
    axes[row, 0].set_title(f"{name}: queries in frame 10", fontsize=9)
    for ax, (py, px), c in zip(axes[row, 1:], pts, ("red", "lime", "cyan")):
        sim = torch.einsum("c,chw->hw", f[1, :, py, px], f[0])
        ax.imshow(sim, cmap="magma", vmin=sim.quantile(0.05).item(), vmax=sim.max().item())
        ax.scatter([px], [py], c=c, s=20, marker="x")
        ax.set_title(f"similarity in frame 0 ({c})", fontsize=9)
for ax in axes.flat:
    ax.axis("off")
save_figure(fig, "01_dense_similarity", fig_dir)
plt.show()

# %% [markdown]
# ## 8 · Label propagation on DAVIS
#
# The test of a correspondence feature: the protocol of notebook 04 (STT defaults), the trained
# encoder against the same architecture at random initialisation and against raw Lab pixels (the
# colour-matching baseline a learned feature has to beat). Both baselines are shared with
# notebook 04: whichever notebook runs first computes them, the other resumes from its files.
# The intervals are 95 % bootstrap intervals over sequences; "... minus this" is the mean
# per-sequence difference, paired by sequence, so the spread between easy and hard sequences
# cancels (`stt.metrics.paired_difference`): an interval above 0 means step 1 is clearly better.

# %%
names = ds.names[:eval_max_sequences] if eval_max_sequences else ds.names
ours = "STT step 1 (MoCo v2, ours)"
runs = {"random-r18": ("random-r18", "random-r18"), "Lab pixels": ("lab", "lab"), ours: (str(ckpt_path), "step1")}
results, per_seq = report.evaluate_models(davis_root, runs, run_dir, names, eval_short_side, device)
training = {ours: f"{ckpt['step']} steps x {settings['batch_size']} on {len(images)} images",
            "random-r18": "none", "Lab pixels": "none"}
table = report.jf_table(results, per_seq, ours, training, report.data_description(synthetic, ds, names, eval_short_side))
report.write_results(run_dir, "01_spatial", table, {**results, "checkpoint": str(ckpt_path), "steps": ckpt["step"]})
display(Markdown(table))

# %% [markdown]
# ## Summary
#
# * Step 1 trains an encoder to tell image regions apart, with InfoNCE against a queue of
#   negatives and a momentum key encoder; it never sees video order.
# * Its trunk (not the MLP head) is saved in torchvision layout as the checkpoint's `encoder`:
#   step 2 loads it as its initialisation and as the frozen teacher of the global correlation
#   distillation.
# * It learns from still photographs, not from the videos step 2 learns from: the spatial cues
#   GCD keeps in step 2 are ones the videos do not hold (section 2).
# * Two things the papers' ImageNet scale hides matter on a few thousand images: a queue sized
#   from the data (section 4), and crops at the scale the test-time encoder sees (section 5).
# * Whether it helps label propagation at this scale is measured above, not assumed: a few
#   hundred CPU steps on a few thousand images are a tiny fraction of the paper's 200 ImageNet
#   epochs (printed after training).
#
# ## Exercises
#
# 1. Train without the queue's benefit: set `queue_size` to the batch size (64) in a new output
#    folder. How do the loss and J&F change?
# 2. Remove the colour augmentations (edit `stt.augment.moco_v2_view`): which shortcut does the
#    network then find, and how does the nearest-neighbour figure change?
# 3. Why is the key encoder updated by momentum and not by copying $\theta_q$ every step?
#
# ## References
#
# * K. He, H. Fan, Y. Wu, S. Xie, R. Girshick. Momentum Contrast for Unsupervised Visual Representation Learning. CVPR 2020.
# * X. Chen, H. Fan, R. Girshick, K. He. Improved Baselines with Momentum Contrastive Learning. arXiv:2003.04297.
# * R. Li, D. Liu. Spatial-then-Temporal Self-Supervised Learning for Video Correspondence. CVPR 2023.
# * A. van den Oord, Y. Li, O. Vinyals. Representation Learning with Contrastive Predictive Coding (InfoNCE). arXiv:1807.03748.

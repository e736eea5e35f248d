"""Augmentations, driven by an explicit ``torch.Generator`` so every sample is reproducible.

A training sample's randomness is a function of (seed, step, position in the batch) only
(see :mod:`stt.train`), so an interrupted run resumes bit-exactly and DDP ranks never draw the
same crops.

Each augmentation is split in two: its random **parameters** are drawn per sample (a dict of
scalars; cheap, in the data-loading workers), and **applied** to a whole batch at once on
whatever device the batch is on. Two places apply them:

* on the CPU, per sample, in the loader's workers (:func:`moco_v2_view`, :func:`clip_crop`):
  an antialiased resized crop, then the batched photometric ops with a batch of one;
* on the GPU, per batch (:func:`resize_crops` + :func:`photometric`): the workers only cut the
  uint8 crops out of the frames, the device resizes all of them in one ``roi_align`` (several
  samples per output pixel, averaged: the antialiasing of a downscale) and jitters them in
  batch. The two paths share the parameters and the photometric code; they differ only in the
  resampling filter (tested: mean absolute difference below 0.02 on real frames).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

BLUR_HALF = 6  # largest blur half-width: sigma <= 2 -> ceil(3 sigma) = 6


def uniform(gen: torch.Generator, lo: float = 0.0, hi: float = 1.0) -> float:
    return lo + (hi - lo) * torch.rand((), generator=gen).item()


def to_float(img: np.ndarray) -> torch.Tensor:
    """H x W x 3 (or T x H x W x 3) uint8 -> 3 x H x W (T x 3 x H x W) float in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(img))
    return t.movedim(-1, -3).float().div_(255.0)


def resized_crop_params(H: int, W: int, scale, ratio, gen: torch.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop sampling (area fraction, log-uniform aspect w/h, 10 tries,
    then a centre crop clipped to the ratio range). Returns (top, left, height, width)."""
    area = H * W
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * uniform(gen, *scale)
        aspect = math.exp(uniform(gen, *log_r))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= W and 0 < h <= H:
            top = int(torch.randint(0, H - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, W - w + 1, (1,), generator=gen))
            return top, left, h, w
    in_ratio = W / H
    if in_ratio < ratio[0]:
        w, h = W, int(round(W / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = H, int(round(H * ratio[1]))
    else:
        w, h = W, H
    return (H - h) // 2, (W - w) // 2, h, w


# ---------------------------------------------------------------------------- parameters


def jitter_params(gen: torch.Generator, p: float, b: float, c: float, s: float, h: float) -> dict:
    """ColorJitter(b, c, s, h) applied with probability ``p``: on/off, the random order of the
    four ops (torchvision's), and their factors (neutral when off: 1, 1, 1, 0)."""
    on = uniform(gen) < p
    order = torch.randperm(4, generator=gen)
    f = [uniform(gen, max(0, 1 - b), 1 + b), uniform(gen, max(0, 1 - c), 1 + c),
         uniform(gen, max(0, 1 - s), 1 + s), uniform(gen, -h, h)]
    return {"jitter": on, "order": order, "factors": torch.tensor(f if on else [1.0, 1.0, 1.0, 0.0])}


def moco_v2_params(H: int, W: int, gen: torch.Generator, scale=(0.2, 1.0)) -> dict:
    """The random choices of one MoCo v2 view (SPEC section 2): random resized crop (area
    0.2-1.0, aspect 3/4-4/3), colour jitter (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2,
    Gaussian blur (sigma 0.1-2.0) p = 0.5, horizontal flip p = 0.5. Every value is drawn whether
    used or not, so each view consumes the generator identically."""
    top, left, h, w = resized_crop_params(H, W, scale, (3 / 4, 4 / 3), gen)
    p = {"box": torch.tensor([top, left, h, w]), **jitter_params(gen, 0.8, 0.4, 0.4, 0.4, 0.1)}
    p["gray"] = uniform(gen) < 0.2
    blur, sigma = uniform(gen) < 0.5, uniform(gen, 0.1, 2.0)
    p["sigma"] = sigma if blur else 0.0
    p["flip"] = uniform(gen) < 0.5
    return p


def clip_params(H: int, W: int, gen: torch.Generator, scale=(0.6, 1.0), ratio=(1.5, 2.0), flip: bool = True) -> dict:
    """One resized crop and flip for a whole clip (STT step 2: area 0.6-1.0, aspect 1.5-2.0)."""
    top, left, h, w = resized_crop_params(H, W, scale, ratio, gen)
    return {"box": torch.tensor([top, left, h, w]), "flip": flip and uniform(gen) < 0.5}


def collate_params(params: list[dict]) -> dict:
    """A list of per-sample parameter dicts -> one dict of batched tensors."""
    return {k: torch.stack([torch.as_tensor(p[k]) for p in params]) for k in params[0]}


# ---------------------------------------------------------------------------- photometric ops, batched


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x).view(-1, *([1] * (x.dim() - 1)))


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of B x 3 x H x W RGB, B x 1 x H x W (torchvision's weights)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    f = _per_sample(f, x)
    return (f * x + (1 - f) * other).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of B x 3 x H x W RGB by ``shift`` (B, in turns; torchvision semantics).

    Hue from the channel holding the maximum, then back through the closed form
    ``channel(n) = V - (V - min) * clamp(min(k, 4 - k), 0, 1)``, ``k = (n + 6 H) mod 6``, with
    n = 5, 3, 1 for R, G, B."""
    r, g, b = x.unbind(1)
    v, arg = x.max(1)
    delta = v - x.min(1).values
    d = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(arg == 0, (g - b) / d, torch.where(arg == 1, 2 + (b - r) / d, 4 + (r - g) / d))
    hue = torch.where(delta > 0, hue, torch.zeros_like(hue)) / 6
    hue6 = torch.remainder(hue + _per_sample(shift, hue), 1.0) * 6
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + hue6.unsqueeze(1), 6)
    return (v.unsqueeze(1) - delta.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1)).clamp(0, 1)


JITTER_OPS = (
    lambda x, f: (x * _per_sample(f, x)).clamp(0, 1),  # brightness
    lambda x, f: _blend(x, grayscale(x).mean((1, 2, 3), keepdim=True), f),  # contrast
    lambda x, f: _blend(x, grayscale(x), f),  # saturation
    adjust_hue,  # hue
)


def color_jitter_batch(x: torch.Tensor, on: torch.Tensor, order: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """ColorJitter on B x 3 x H x W with per-sample switch (B), op order (B x 4) and factors
    (B x 4: brightness, contrast, saturation, hue). Each op runs once on the samples that take it
    at each position of their order."""
    x = x.clone()
    on, order, factors = on.to(x.device), order.to(x.device), factors.to(x.device)
    for slot in range(4):
        for op, fn in enumerate(JITTER_OPS):
            idx = torch.nonzero(on & (order[:, slot] == op)).flatten()
            if len(idx):
                x[idx] = fn(x[idx], factors[idx, op])
    return x


def gaussian_blur_batch(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample Gaussian blur of B x 3 x H x W (sigma B; 0 = none) with torchvision's kernel
    (size ``max(3, 2 ceil(3 sigma) + 1)``, reflect padding), as one separable grouped conv over
    the blurred samples: every kernel is zero-padded to ``2 BLUR_HALF + 1`` taps, which changes
    no output value."""
    sel = torch.nonzero(sigma > 0).flatten().to(x.device)
    if len(sel) < len(x):  # blur only the samples that take it
        out = x.clone()
        if len(sel):
            out[sel] = gaussian_blur_batch(x[sel], sigma.to(x.device)[sel])
        return out
    B, C, H, W = x.shape
    sigma = sigma.to(x)
    t = torch.arange(-BLUR_HALF, BLUR_HALF + 1, device=x.device, dtype=x.dtype)
    half = torch.clamp(torch.ceil(3 * sigma), min=1).view(B, 1)
    k = torch.exp(-0.5 * (t / sigma.view(B, 1)) ** 2) * (t.abs() <= half)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)  # B C x taps
    pad = min(BLUR_HALF, H - 1, W - 1)
    y = F.pad(x.reshape(1, B * C, H, W), (pad, pad, pad, pad), mode="reflect")
    k = k[:, BLUR_HALF - pad: BLUR_HALF + pad + 1]
    y = F.conv2d(y, k.view(B * C, 1, -1, 1), groups=B * C)
    y = F.conv2d(y, k.view(B * C, 1, 1, -1), groups=B * C)
    return y.view(B, C, H, W)


def photometric(x: torch.Tensor, p: dict) -> torch.Tensor:
    """Apply batched MoCo v2 parameters (:func:`moco_v2_params`, collated) to resized crops
    B x 3 x S x S in [0, 1]: colour jitter, grayscale, blur, flip (all on ``x``'s device)."""
    x = color_jitter_batch(x, p["jitter"], p["order"], p["factors"])
    x = torch.where(_per_sample(p["gray"], x).bool(), grayscale(x).expand_as(x), x)
    x = gaussian_blur_batch(x, p["sigma"])
    return flip_batch(x, p["flip"])


def flip_batch(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Horizontal flip of the samples (dim 0) whose ``flip`` is set."""
    return torch.where(_per_sample(flip, x).bool(), x.flip(-1), x)


# ---------------------------------------------------------------------------- geometry


def cut(img: np.ndarray, box) -> np.ndarray:
    """The uint8 crop ``box = (top, left, h, w)`` of an ``... x H x W x 3`` array (a view)."""
    top, left, h, w = (int(v) for v in box)
    return img[..., top: top + h, left: left + w, :]


def pad_stack(crops: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 crops (``... x h_i x w_i x 3``, equal leading dims) -> one zero-padded
    ``N x ... x Hmax x Wmax x 3`` uint8 tensor and their sizes (N x 2: h, w)."""
    hs = [c.shape[-3] for c in crops]
    ws = [c.shape[-2] for c in crops]
    out = torch.zeros(len(crops), *crops[0].shape[:-3], max(hs), max(ws), 3, dtype=torch.uint8)
    for i, c in enumerate(crops):
        out[i, ..., : hs[i], : ws[i], :] = torch.from_numpy(np.ascontiguousarray(c))
    return out, torch.tensor([hs, ws]).t()


def resize_crops(crops: torch.Tensor, sizes: torch.Tensor, size: int) -> torch.Tensor:
    """Padded uint8 crops (N x Hmax x Wmax x 3, any device) and their true sizes (N x 2) ->
    N x 3 x size x size float in [0, 1], in one ``roi_align`` (bilinear, ``aligned`` pixel
    centres as ``align_corners=False``; ``ceil(crop / size)`` samples per output pixel and axis,
    averaged, which antialiases a downscale)."""
    from torchvision.ops import roi_align

    x = crops.permute(0, 3, 1, 2).float().div_(255)  # N x 3 x Hmax x Wmax
    s = sizes.to(x)
    boxes = torch.stack([torch.arange(len(x), device=x.device, dtype=x.dtype), torch.zeros_like(s[:, 0]),
                         torch.zeros_like(s[:, 0]), s[:, 1], s[:, 0]], 1)  # (index, x1, y1, x2, y2)
    return roi_align(x, boxes, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True).clamp_(0, 1)


# ---------------------------------------------------------------------------- per-sample (CPU) paths


def color_jitter(x: torch.Tensor, gen: torch.Generator, b=0.4, c=0.4, s=0.4, h=0.1) -> torch.Tensor:
    """ColorJitter (always applied) of one image or clip (... x 3 x H x W): one draw of order and
    factors shared by all its frames."""
    p = jitter_params(gen, 1.0, b, c, s, h)
    flat = x.reshape(-1, *x.shape[-3:])
    n = len(flat)
    out = color_jitter_batch(flat, torch.ones(n, dtype=torch.bool), p["order"].expand(n, 4), p["factors"].expand(n, 4))
    return out.view_as(x)


def moco_v2_view(img: np.ndarray, size: int, gen: torch.Generator, scale=(0.2, 1.0)) -> torch.Tensor:
    """One MoCo v2 view of an H x W x 3 uint8 image (:func:`moco_v2_params`), on the CPU:
    antialiased resized crop, then :func:`photometric`. Returns 3 x size x size RGB in [0, 1]
    (the model converts to Lab)."""
    p = moco_v2_params(*img.shape[:2], gen, scale)
    top, left, h, w = p["box"].tolist()
    x = TF.resized_crop(to_float(img), top, left, h, w, [size, size], antialias=True).clamp(0, 1)
    return photometric(x[None], collate_params([p]))[0]


def clip_crop(clip: np.ndarray, size: int, gen: torch.Generator, scale=(0.6, 1.0), ratio=(1.5, 2.0),
              flip: bool = True) -> torch.Tensor:
    """The same random resized crop (area ``scale``, aspect w/h ``ratio``) and horizontal flip on
    every frame of a clip (T x H x W x 3 uint8) -> T x 3 x size x size in [0, 1]. STT step 2:
    area 0.6-1.0, aspect 1.5-2.0, 256 x 256 (SPEC section 3)."""
    p = clip_params(*clip.shape[1:3], gen, scale, ratio, flip)
    top, left, h, w = p["box"].tolist()
    x = TF.resized_crop(to_float(clip), top, left, h, w, [size, size], antialias=True).clamp(0, 1)
    return x.flip(-1) if p["flip"] else x

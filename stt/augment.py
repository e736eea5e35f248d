"""Augmentations, driven by an explicit ``torch.Generator`` so every sample is reproducible.

A training sample's randomness is a function of (seed, step, position in the batch) only
(see :mod:`stt.train`), so an interrupted run resumes bit-exactly and DDP ranks never draw the
same crops. All functions take uint8 ``H x W x 3`` arrays (or ``T x H x W x 3`` clips) and
return float tensors in [0, 1], channel-first.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torchvision.transforms.functional as TF


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


def color_jitter(x: torch.Tensor, gen: torch.Generator, b=0.4, c=0.4, s=0.4, h=0.1) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter in a random order (torchvision ColorJitter)."""
    ops = [
        lambda t: TF.adjust_brightness(t, uniform(gen, max(0, 1 - b), 1 + b)),
        lambda t: TF.adjust_contrast(t, uniform(gen, max(0, 1 - c), 1 + c)),
        lambda t: TF.adjust_saturation(t, uniform(gen, max(0, 1 - s), 1 + s)),
        lambda t: TF.adjust_hue(t, uniform(gen, -h, h)),
    ]
    for i in torch.randperm(4, generator=gen).tolist():
        x = ops[i](x)
    return x.clamp(0, 1)


def moco_v2_view(img: np.ndarray, size: int, gen: torch.Generator, scale=(0.2, 1.0)) -> torch.Tensor:
    """One MoCo v2 view (SPEC section 2): random resized crop (area 0.2-1.0), colour jitter
    (0.4, 0.4, 0.4, 0.1) with p = 0.8, grayscale p = 0.2, Gaussian blur (sigma 0.1-2.0) p = 0.5,
    horizontal flip p = 0.5. Returns 3 x size x size in [0, 1] (RGB; the model converts to Lab)."""
    H, W = img.shape[:2]
    top, left, h, w = resized_crop_params(H, W, scale, (3 / 4, 4 / 3), gen)
    x = TF.resized_crop(to_float(img), top, left, h, w, [size, size], antialias=True).clamp(0, 1)
    if uniform(gen) < 0.8:
        x = color_jitter(x, gen)
    if uniform(gen) < 0.2:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if uniform(gen) < 0.5:
        sigma = uniform(gen, 0.1, 2.0)
        k = max(3, int(2 * math.ceil(3 * sigma) + 1))
        x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
    if uniform(gen) < 0.5:
        x = TF.hflip(x)
    return x


def clip_crop(clip: np.ndarray, size: int, gen: torch.Generator, scale=(0.6, 1.0), ratio=(1.5, 2.0),
              flip: bool = True) -> torch.Tensor:
    """The same random resized crop (area ``scale``, aspect w/h ``ratio``) and horizontal flip on
    every frame of a clip (T x H x W x 3 uint8) -> T x 3 x size x size in [0, 1]. STT step 2:
    area 0.6-1.0, aspect 1.5-2.0, 256 x 256 (SPEC section 3)."""
    H, W = clip.shape[1:3]
    top, left, h, w = resized_crop_params(H, W, scale, ratio, gen)
    x = TF.resized_crop(to_float(clip), top, left, h, w, [size, size], antialias=True).clamp(0, 1)
    if flip and uniform(gen) < 0.5:
        x = TF.hflip(x)
    return x

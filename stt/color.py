"""Colour spaces (SPEC section 1): exact sRGB (D65) <-> CIE Lab, vectorised in torch.

Both STT encoders read **Lab** normalised by mean (50, 0, 0) and std (50, 127, 127); the
reconstruction targets of STT step 2 are channels of that normalised Lab image. CorrFlow's
colour quantisation (k-means over (a, b)) also lives here.

All functions take channel-first tensors ``... x 3 x H x W`` (any leading dimensions) with
RGB in [0, 1], and work on whatever device the input is on.
"""
from __future__ import annotations

import torch

# sRGB primaries -> CIE XYZ, D65 white (IEC 61966-2-1).
_RGB_TO_XYZ = torch.tensor(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=torch.float64,
)
_XYZ_TO_RGB = torch.linalg.inv(_RGB_TO_XYZ)
_D65_WHITE = torch.tensor([0.95047, 1.0, 1.08883], dtype=torch.float64)

# CIE constants: f(t) = t^(1/3) above (6/29)^3, linear below.
_DELTA = 6.0 / 29.0
_EPSILON = _DELTA**3  # 216 / 24389 = 0.008856...

LAB_MEAN = (50.0, 0.0, 0.0)
LAB_STD = (50.0, 127.0, 127.0)


def _matrix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Apply a 3x3 colour matrix over the channel dimension (-3)."""
    return torch.einsum("ij,...jhw->...ihw", m.to(x), x)


def _channel_view(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x).view(3, 1, 1)


def srgb_to_linear(rgb: torch.Tensor) -> torch.Tensor:
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    return torch.where(
        lin <= 0.0031308, 12.92 * lin, 1.055 * lin.clamp(min=0.0031308) ** (1 / 2.4) - 0.055
    )


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1] (``... x 3 x H x W``) -> Lab with L in [0, 100], a/b roughly [-128, 127]."""
    if rgb.shape[-3] != 3:
        raise ValueError(f"rgb_to_lab expects 3 channels at dim -3, got shape {tuple(rgb.shape)}")
    xyz = _matrix(_RGB_TO_XYZ, srgb_to_linear(rgb)) / _channel_view(_D65_WHITE, rgb)
    f = torch.where(
        xyz > _EPSILON,
        xyz.clamp(min=_EPSILON) ** (1.0 / 3.0),
        xyz / (3 * _DELTA**2) + 4.0 / 29.0,
    )
    fx, fy, fz = f.unbind(-3)
    lab = torch.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], dim=-3)
    return lab


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_lab`; output clipped to [0, 1]."""
    L, a, b = lab.unbind(-3)
    fy = (L + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3)
    xyz = torch.where(f > _DELTA, f**3, 3 * _DELTA**2 * (f - 4.0 / 29.0))
    xyz = xyz * _channel_view(_D65_WHITE, lab)
    return linear_to_srgb(_matrix(_XYZ_TO_RGB, xyz).clamp(min=0.0)).clamp(0.0, 1.0)


def normalize_lab(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> (Lab - (50, 0, 0)) / (50, 127, 127), the encoders' input (SPEC section 1)."""
    mean = torch.tensor(LAB_MEAN).to(lab).view(3, 1, 1)
    std = torch.tensor(LAB_STD).to(lab).view(3, 1, 1)
    return (lab - mean) / std


def denormalize_lab(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(LAB_MEAN).to(x).view(3, 1, 1)
    std = torch.tensor(LAB_STD).to(x).view(3, 1, 1)
    return x * std + mean


def rgb_to_normalized_lab(rgb: torch.Tensor) -> torch.Tensor:
    """The STT encoders' input transform: sRGB [0, 1] -> normalised Lab."""
    return normalize_lab(rgb_to_lab(rgb))


# ---------------------------------------------------------------------------- CorrFlow quantisation


def kmeans(x: torch.Tensor, k: int = 16, iters: int = 50, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding on the rows of ``x`` (N x D); returns k x D centroids.

    CorrFlow quantises the (a, b) plane of Lab into 16 colours computed on training frames
    (SPEC section 4: the project computes them and saves them with the checkpoint)."""
    g = torch.Generator().manual_seed(seed)
    x = x.float()
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k = {k} samples, got {n}")
    centers = [x[torch.randint(0, n, (1,), generator=g)].squeeze(0)]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
        c = x[torch.multinomial(probs, 1, generator=g)].squeeze(0)
        centers.append(c)
        d2 = torch.minimum(d2, ((x - c) ** 2).sum(1))
    c = torch.stack(centers)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()[:, None]
        new = torch.where(counts > 0, new / counts.clamp(min=1), c)  # an empty cluster keeps its centre
        if torch.allclose(new, c, atol=1e-6):
            c = new
            break
        c = new
    return c


def quantize_ab(lab: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid colour index of every pixel: Lab ``... x 3 x H x W`` -> ``... x H x W`` (long)."""
    ab = lab[..., 1:, :, :].movedim(-3, -1)  # ... x H x W x 2
    d = ((ab[..., None, :] - centroids.to(ab)) ** 2).sum(-1)  # ... x H x W x k
    return d.argmin(-1)

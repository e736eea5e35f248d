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
    """Apply a 3x3 colour matrix over the channel dimension (-3), in ``x``'s precision even under
    autocast (colour values and reconstruction targets must not be rounded to bf16)."""
    with torch.autocast(x.device.type, enabled=False):
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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def rgb_to_imagenet(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB [0, 1] -> ``(rgb - mean) / std`` with ImageNet's statistics: the input of torchvision
    and MoCo ImageNet checkpoints (and of the official STT's RGB GCD teacher)."""
    return (rgb - _channel_view(torch.tensor(IMAGENET_MEAN), rgb)) / _channel_view(torch.tensor(IMAGENET_STD), rgb)


# ---------------------------------------------------------------------------- CorrFlow quantisation


def kmeans(x: torch.Tensor, k: int = 16, iters: int = 50, seed: int = 0, max_points: int | None = None,
           device=None, progress: bool = False) -> torch.Tensor:
    """Lloyd's k-means with k-means++ seeding on the rows of ``x`` (N x D); returns k x D centroids
    (float32, on the CPU).

    CorrFlow quantises the (a, b) plane of Lab into 16 colours computed on training frames
    (SPEC section 4: the project computes them and saves them with the checkpoint).

    Args:
        k: number of clusters [16].
        iters: at most this many Lloyd iterations [50]; stops earlier at a fixed point.
        seed: seeds the subsample and the k-means++ draws; the result is a function of
            (x, k, iters, seed, max_points) on a given device.
        max_points: fit on at most this many rows, drawn uniformly without replacement
            (default: all rows). Two-dimensional colours need far fewer than the millions of pixels
            of thousands of frames for 16 centres.
        device: where the assignment step (N x k distances, the only O(N k) part) runs; default
            ``x``'s device. Seeding and centroid updates run on the CPU in a fixed order, so the
            result does not depend on the order of GPU atomics.
        progress: a tqdm bar over the iterations.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    dev = torch.device(device) if device is not None else x.device
    x = x.detach().float().cpu()
    n = x.shape[0]
    if n < k:
        raise ValueError(f"k-means needs at least k = {k} samples, got {n}")
    if max_points is not None and n > max_points:
        x = x[torch.randperm(n, generator=g)[:max_points]]
        n = max_points
    centers = [x[torch.randint(0, n, (1,), generator=g)].squeeze(0)]
    d2 = ((x - centers[0]) ** 2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full((n,), 1.0 / n)
        c = x[torch.multinomial(probs, 1, generator=g)].squeeze(0)
        centers.append(c)
        d2 = torch.minimum(d2, ((x - c) ** 2).sum(1))
    c = torch.stack(centers)
    xd = x.to(dev)  # N x D, for the assignment step
    bar = tqdm(range(iters), desc=f"k-means ({n} points, {dev.type})", unit="iter", disable=not progress)
    for _ in bar:
        assign = torch.cdist(xd, c.to(dev)).argmin(1).cpu()  # N
        new = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).float()[:, None]
        new = torch.where(counts > 0, new / counts.clamp(min=1), c)  # an empty cluster keeps its centre
        shift = float((new - c).abs().max())
        bar.set_postfix(shift=f"{shift:.2g}", refresh=False)
        if torch.allclose(new, c, atol=1e-6):
            c = new
            break
        c = new
    bar.close()
    return c


def load_centroids(path) -> torch.Tensor:
    """CorrFlow's colour centroids from a file written by ``stt color-clusters`` (``torch.save``
    of a float K x 2 tensor of Lab (a, b) values), read with ``weights_only=True``. Checked before
    training starts: anything else is an error naming the file and the expected shape."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"centroids file not found: {path}")
    expected = "a float K x 2 tensor of Lab (a, b) centroids, as `stt color-clusters --out FILE` writes"
    try:
        c = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle of other objects, or not a torch file
        raise ValueError(f"{path}: cannot be read as a tensor ({type(exc).__name__}); expected {expected}") from exc
    if not torch.is_tensor(c):
        raise ValueError(f"{path}: holds a {type(c).__name__}; expected {expected}")
    if not c.is_floating_point() or c.ndim != 2 or c.shape[1] != 2 or len(c) < 2 or not torch.isfinite(c).all():
        raise ValueError(f"{path}: holds a {c.dtype} tensor of shape {tuple(c.shape)}; expected {expected} (K >= 2, finite)")
    return c.float()


class StreamSample:
    """A uniform random sample, without replacement, of at most ``size`` rows of a stream of row
    blocks, seeded, in memory for at most ``2 * size`` rows (k-means colours of thousands of frames).

    Every row of the stream gets a uniform random key and the ``size`` smallest keys stay. A row
    whose key is above the current ``size``-th smallest can never enter, so :meth:`offer` says
    which rows of the next block can, and the caller computes (e.g. converts to Lab) only those
    before :meth:`add`. :meth:`rows` returns the sample sorted by the caller's ``order`` keys: all
    rows in that order when the stream had at most ``size``.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size, self.gen = size, torch.Generator().manual_seed(seed)
        self.threshold = float("inf")  # keys at or above it cannot enter any more
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (rows, keys, order)
        self.held = 0

    def offer(self, order: torch.Tensor) -> torch.Tensor:
        """Draw the keys of the next ``len(order)`` rows (``order``: their int64 sort keys); returns
        the indices of those rows that can enter; pass those rows, in that order, to :meth:`add`."""
        key = torch.rand(len(order), generator=self.gen)
        idx = torch.nonzero(key < self.threshold).squeeze(1)
        self._offered = key[idx], order[idx]
        return idx

    def add(self, rows: torch.Tensor) -> None:
        key, order = self._offered
        if len(rows) != len(key):
            raise ValueError(f"add() got {len(rows)} rows for the {len(key)} that offer() let in")
        self.parts.append((rows, key, order))
        self.held += len(key)
        if self.held > 2 * self.size:
            self._shrink()

    def _shrink(self) -> None:
        rows, key, order = (torch.cat(z) for z in zip(*self.parts))
        if len(key) > self.size:
            sel = key.topk(self.size, largest=False, sorted=False).indices
            rows, key, order = rows[sel], key[sel], order[sel]
            self.threshold = float(key.max())
        self.parts, self.held = [(rows, key, order)], len(key)

    def rows(self) -> torch.Tensor:
        """The sample (at most ``size`` rows), sorted by ``order``."""
        if not self.parts:
            raise ValueError("no rows were added")
        self._shrink()
        rows, _, order = self.parts[0]
        return rows[order.argsort()]


def quantize_ab(lab: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid colour index of every pixel: Lab ``... x 3 x H x W`` -> ``... x H x W`` (long)."""
    ab = lab[..., 1:, :, :].movedim(-3, -1)  # ... x H x W x 2
    d = ((ab[..., None, :] - centroids.to(ab)) ** 2).sum(-1)  # ... x H x W x k
    return d.argmin(-1)

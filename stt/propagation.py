"""Label propagation (SPEC section 5): the inference protocol shared by every model.

For query frame t, with L2-normalised features ``f``::

    context   = {frame 0 with its ground-truth labels} + {frames t-n .. t-1 with predicted soft labels}
    A[q, p]   = <f_t(q), f_c(p)> / tau           for p in the window of q (radius r, per frame)
    keep the top-k of A[q, .] over all context positions jointly
    y_t(q)    = sum_{p in top-k} softmax(A[q, .])_p * y_c(p)

Labels live on the feature grid (K channels: background + objects, or joints, or parts).
Predictions are upsampled bilinearly to the frame size, optionally min-max normalised per
channel [VFS/STT], then argmax'ed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F

from .affinity import WINDOWS, global_topk, local_correlation, merge_topk, windowed_topk


@dataclass
class PropagationConfig:
    """Protocol options; the defaults follow STT's official evaluation on DAVIS.

    Attributes:
        topk: affinities kept per query over the whole context [10].
        context: n, the number of previous frames in the context [20].
        radius: window radius in cells of a stride-8 map [DAVIS: 12; JHMDB 5; VIP 16]; the task
            evaluators scale it to other strides (24 cells at stride 4) so the window covers the
            same pixels.
        temperature: tau [0.07 STT/VFS; CRW uses 0.05 on DAVIS].
        window: "square" (|dy|, |dx| <= r) [STT] or "circle" (dist < r) [CRW].
        radius_first_frame: apply the window to frame 0 too [VFS/STT: yes; CRW: no].
        first_label: "nearest" (nearest-neighbour downsampling then one-hot) [VFS/STT] or
            "bilinear" (antialiased bilinear downsampling of the one-hot map, soft) [CRW].
        minmax: per-channel min-max normalisation of the upsampled prediction [VFS/STT: on].
    """

    topk: int = 10
    context: int = 20
    radius: float = 12
    temperature: float = 0.07
    window: str = "square"
    radius_first_frame: bool = True
    first_label: str = "nearest"
    minmax: bool = True

    def __post_init__(self):
        if self.window not in WINDOWS:
            raise ValueError(f"window must be one of {WINDOWS}, got {self.window!r}")
        if self.first_label not in ("nearest", "bilinear"):
            raise ValueError(f"first_label must be 'nearest' or 'bilinear', got {self.first_label!r}")
        if self.topk < 1 or self.context < 0 or self.temperature <= 0 or self.radius <= 0:
            raise ValueError(f"invalid propagation settings: {self}")

    def as_dict(self) -> dict:
        return asdict(self)


def normalize_features(feats: torch.Tensor) -> torch.Tensor:
    """L2-normalise every pixel's feature vector (channel dim -3)."""
    return F.normalize(feats, dim=-3)


def propagate_frame(
    query: torch.Tensor,
    first_feat: torch.Tensor,
    first_label: torch.Tensor,
    prev_feats: torch.Tensor | None,
    prev_labels: torch.Tensor | None,
    cfg: PropagationConfig,
) -> torch.Tensor:
    """One step of SPEC section 5.

    Args:
        query: C x h x w normalised features of frame t.
        first_feat, first_label: C x h x w and K x h x w (frame 0).
        prev_feats, prev_labels: n x C x h x w and n x K x h x w (frames t-n..t-1), or None.

    Returns:
        K x h x w soft labels of frame t.
    """
    _check_grids(query, first_feat=first_feat, first_label=first_label, prev_feats=prev_feats,
                 prev_labels=prev_labels)
    feats = first_feat[None] if prev_feats is None else torch.cat([first_feat[None], prev_feats])
    labels = first_label[None] if prev_labels is None else torch.cat([first_label[None], prev_labels])
    return propagate_context(query, feats, labels, cfg)


def _check_grids(query: torch.Tensor, **maps: torch.Tensor | None) -> None:
    """Raise a clear error when a feature or label map is not on the query's grid."""
    bad = {k: tuple(v.shape) for k, v in maps.items() if v is not None and v.shape[-2:] != query.shape[-2:]}
    if bad:
        raise ValueError(f"feature/label grids differ from the query's {tuple(query.shape)}: {bad}")


def propagate_context(query: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
                      cfg: PropagationConfig) -> torch.Tensor:
    """:func:`propagate_frame` on a context held in one tensor: frame 0 first, then the
    previous frames in any order (the top-k does not depend on it).

    Args:
        query: C x h x w; feats: N x C x h x w; labels: N x K x h x w.

    Returns:
        K x h x w soft labels of the query frame.
    """
    _check_grids(query, feats=feats, labels=labels)
    h, w = query.shape[-2:]
    kw = dict(k=cfg.topk, radius=cfg.radius, shape=cfg.window)
    if cfg.radius_first_frame:
        vals, idx = windowed_topk(query, feats, **kw)  # HW x k
    else:  # global top-k in frame 0, windowed in the previous frames, merged
        vals, idx = global_topk(query, feats[:1], cfg.topk)
        if len(feats) > 1:
            pv, pi = windowed_topk(query, feats[1:], **kw)
            vals, idx = merge_topk((vals, idx), (pv, pi + h * w), cfg.topk)
    return weighted_labels(vals, idx, labels, cfg.temperature)


def weighted_labels(vals: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """``y(q) = sum_k softmax(vals / tau)_k y_c(idx_k)``: top-k affinities and their indices
    (HW x k, into the flattened N x h x w context) and context labels (N x K x h x w) -> K x h x w."""
    K, h, w = labels.shape[1:]
    weights = torch.softmax(vals / temperature, dim=1)  # HW x k
    flat_labels = labels.permute(0, 2, 3, 1).reshape(-1, K)  # N HW x K
    out = torch.einsum("qk,qkc->qc", weights, flat_labels[idx])  # HW x K
    return out.t().reshape(K, h, w)


def downsample_labels(ids: torch.Tensor, n_labels: int, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    """Integer label map (H x W, values 0..K-1) -> K x h x w label map on the feature grid.

    ``nearest``: nearest-neighbour (pixel-centre) downsampling, then one-hot [VFS/STT].
    ``bilinear``: one-hot at full resolution, then antialiased bilinear resize (soft) [CRW].
    """
    if mode == "nearest":
        small = F.interpolate(ids[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
        return F.one_hot(small, n_labels).permute(2, 0, 1).float()
    onehot = F.one_hot(ids.long(), n_labels).permute(2, 0, 1).float()
    return F.interpolate(onehot[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]


def upsample_predictions(labels: torch.Tensor, size: tuple[int, int], minmax: bool = True) -> torch.Tensor:
    """K x h x w soft labels -> K x H x W (bilinear), min-max normalised per channel if asked."""
    up = F.interpolate(labels[None], size=size, mode="bilinear", align_corners=False)[0]
    if minmax:
        lo = up.flatten(1).min(1).values.view(-1, 1, 1)
        hi = up.flatten(1).max(1).values.view(-1, 1, 1)
        up = (up - lo) / (hi - lo).clamp(min=1e-12)
    return up


def propagate_video(
    features: Iterable[torch.Tensor], first_label: torch.Tensor, cfg: PropagationConfig
) -> Iterator[torch.Tensor]:
    """Propagate ``first_label`` (K x h x w) through a stream of feature maps (C x h x w each).

    Yields the soft labels of frames 1, 2, ... in order. Features are normalised here; only the
    last ``cfg.context`` frames are kept, in a ring of preallocated slots (no per-frame copies
    of the whole context).
    """
    it = iter(features)
    first = normalize_features(next(it))
    n = cfg.context
    # Slot 0: frame 0; slots 1..n: the previous frames, the oldest overwritten first.
    ctx_f = first.new_empty(1 + n, *first.shape)
    ctx_l = first.new_empty(1 + n, *first_label.shape)
    ctx_f[0], ctx_l[0] = first, first_label
    for t, feat in enumerate(it):  # t + 1: the frame index
        feat = normalize_features(feat)
        used = 1 + min(t, n)
        pred = propagate_context(feat, ctx_f[:used], ctx_l[:used], cfg)
        if n:
            ctx_f[1 + t % n], ctx_l[1 + t % n] = feat, pred
        yield pred


# CorrFlow's own inference protocol, as its official test.py runs it: each frame from the previous
# one only (:func:`propagate_recursive`), carrying hard labels; frame 0's labels one-hot on the
# feature grid; the argmax of the bilinearly upsampled prediction, *without* the per-channel
# min-max normalisation of the common protocol. It has no other options. (test.py downsamples the
# id map bilinearly and truncates to an integer, which can put an id between two neighbouring ones
# along their border; ours takes the nearest pixel's id: "nearest".)
CORRFLOW_PROTOCOL = {"hard": True, "first_label": "nearest", "minmax": False}


def propagate_recursive(features: Iterable[torch.Tensor], first_label: torch.Tensor, radius: int = 6,
                        hard: bool = True) -> Iterator[torch.Tensor]:
    """CorrFlow's own inference protocol: frame t from frame t-1 only, through the training-time
    attention (softmax of plain dot products over the (2R+1)^2 window, no normalisation, no
    temperature); with ``hard`` the carried labels are the one-hot argmax of each prediction.
    Yields the soft labels (K x h x w) of frames 1, 2, ..."""
    from .losses import reconstruct

    it = iter(features)
    prev_f, prev_l = next(it), first_label
    K = first_label.shape[0]
    for f in it:
        aff = local_correlation(f[None], prev_f[None], radius).softmax(-1)  # 1 x h x w x (2R+1)^2
        y = reconstruct(aff, prev_l[None], radius)[0]  # K x h x w
        yield y
        prev_l = F.one_hot(y.argmax(0), K).permute(2, 0, 1).float() if hard else y
        prev_f = f


def joints_to_heatmaps(joints: torch.Tensor, frame_size: tuple[int, int], grid: tuple[int, int],
                       sigma: float = 0.5) -> torch.Tensor:
    """JHMDB labels on the feature grid (SPEC section 6): one Gaussian heatmap per joint (sigma in
    grid cells, peak 1) plus a background channel ``max(0, 1 - sum of the joints)``.

    joints: J x 2 (x, y) in 1-based pixels of a frame of ``frame_size`` (H, W); grid (h, w).
    Returns (J + 1) x h x w, background last."""
    H, W = frame_size
    h, w = grid
    gx = (joints[:, 0] - 0.5) * w / W - 0.5  # pixel centre -> cell coordinate (cell centres at integers)
    gy = (joints[:, 1] - 0.5) * h / H - 0.5
    ys = torch.arange(h, dtype=joints.dtype, device=joints.device).view(1, h, 1)
    xs = torch.arange(w, dtype=joints.dtype, device=joints.device).view(1, 1, w)
    heat = torch.exp(-((xs - gx.view(-1, 1, 1)) ** 2 + (ys - gy.view(-1, 1, 1)) ** 2) / (2 * sigma**2))
    bg = (1 - heat.sum(0, keepdim=True)).clamp(min=0)
    return torch.cat([heat, bg]).float()


def heatmaps_to_joints(heat: torch.Tensor, frame_size: tuple[int, int], k: int = 3) -> torch.Tensor:
    """Each joint's position as the value-weighted mean of its ``k`` highest cells, in 1-based
    pixels of a frame of ``frame_size``. heat: J x h x w (joint channels only) -> J x 2 (x, y)."""
    J, h, w = heat.shape
    H, W = frame_size
    v, i = heat.flatten(1).topk(k, dim=1)  # J x k
    wts = v.clamp(min=0)
    wts = torch.where(wts.sum(1, keepdim=True) > 0, wts, torch.ones_like(wts))
    wts = wts / wts.sum(1, keepdim=True)
    gx = ((i % w).float() * wts).sum(1)
    gy = ((i // w).float() * wts).sum(1)
    return torch.stack([(gx + 0.5) * W / w + 0.5, (gy + 0.5) * H / h + 0.5], dim=1)

"""Affinities between feature maps: windows, top-k, and their naive dense references.

Label propagation (SPEC section 5) keeps, for every query position, the top-k affinities over
all context positions inside a spatial window of radius ``r`` feature cells. The naive way
builds the dense ``HW x (N HW)`` affinity and masks it; at DAVIS 480p with a stride-8 map
(60 x 107 cells) and 21 context frames that is 6420 x 134820 floats (3.5 GB) per frame.

:func:`windowed_topk` never builds it. The query map is cut into ``T x T`` tiles; each tile
only needs the keys of a ``P x P`` patch around it (``P = T + 2r``): ``P^2`` instead of ``HW``
keys per query and frame. One batched matmul correlates a column of tiles (a "strip") with its
patches in a whole chunk of context frames at once, and the top-k over all frames jointly is
found in two exact stages: the best score of each patch position over the frames (a max),
window mask, top-k positions; then the top-k of the ``k x frames`` scores at those positions
only. Any of the top-k scores lies at one of the top-k positions (a position outside them is
beaten by k positions, each holding a larger score), so the result is the dense one (tested
in ``tests/test_affinity.py``). Chunks cover as many strips and frames as a memory budget
allows (tens of MB on CPU, about everything at once on a GPU) and are merged the same way:
the top-k of a union is the top-k of the parts' top-ks.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

WINDOWS = ("square", "circle")


def window_mask(dy: torch.Tensor, dx: torch.Tensor, radius: float, shape: str = "square") -> torch.Tensor:
    """Is displacement (dy, dx) inside the window? square: |dy|,|dx| <= r [STT]; circle: dist < r [CRW]."""
    if shape == "square":
        return (dy.abs() <= radius) & (dx.abs() <= radius)
    if shape == "circle":
        return (dy * dy + dx * dx).float() < radius * radius
    raise ValueError(f"unknown window shape {shape!r}: expected one of {WINDOWS}")


def dense_window_mask(h: int, w: int, radius: float | None, shape: str = "square") -> torch.Tensor:
    """HW x HW boolean mask of the window (all True when radius is None). For references only."""
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    if radius is None:
        return torch.ones(h * w, h * w, dtype=torch.bool)
    return window_mask(ys[None, :] - ys[:, None], xs[None, :] - xs[:, None], radius, shape)


def merge_topk(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor],
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the union of two top-k lists (values, indices; ... x k_a and ... x k_b)."""
    v, j = torch.cat([a[0], b[0]], -1).topk(min(k, a[0].shape[-1] + b[0].shape[-1]), dim=-1)
    return v, torch.gather(torch.cat([a[1], b[1]], -1), -1, j)


def default_max_bytes(device: torch.device | str) -> int:
    """Working-memory budget of one :func:`windowed_topk` chunk: 128 MiB on CPU (peak memory stays
    in the order of the context features; a DAVIS 480p step at stride 8 or 4 in about 20
    chunks), 1 GiB on an accelerator (the stride-8 step in two chunks)."""
    return 2**27 if torch.device(device).type == "cpu" else 2**30


class _TileGeometry:
    """Index bookkeeping for T x T query tiles and their P x P key patches (P = T + 2R).

    Tiles come in strips (tile columns tx). For n context frames, the keys strip tx can reach
    are laid out as a slab ``C x Hp x n x P`` (channel, map row, frame, patch column): the
    patch of tile (ty, tx) in all n frames is the block ``slab[:, ty T : ty T + P]``, a
    ``C x (P n P)`` matrix with a constant row stride, so the patches of a whole strip are one
    strided view that one batched matmul reads without copying. Scores come out per query in
    (py, frame, px) order.
    """

    def __init__(self, h: int, w: int, radius: float, shape: str, tile: int, device):
        R = int(math.floor(radius))  # integer reach of the window in cells
        T, P = tile, tile + 2 * R
        self.h, self.w, self.R, self.T, self.P = h, w, R, T, P
        self.nty, self.ntx = math.ceil(h / T), math.ceil(w / T)
        self.Hp = self.nty * T + 2 * R  # slab rows
        # Patch positions p = py P + px; query offsets q = qy T + qx in the tile.
        q = torch.arange(T * T, device=device)
        p = torch.arange(P * P, device=device)
        self.py, self.px = p // P, p % P
        dy = self.py[None, :] - R - (q // T)[:, None]  # T^2 x P^2
        dx = self.px[None, :] - R - (q % T)[:, None]
        inside = window_mask(dy, dx, radius, shape)
        self.window_bias = torch.zeros(inside.shape, device=device).masked_fill_(~inside, float("-inf"))
        # Patch positions outside the map, per tile: ntx x nty x 1 x P^2.
        gy = torch.arange(self.nty, device=device).view(1, -1, 1, 1) * T + self.py - R
        gx = torch.arange(self.ntx, device=device).view(-1, 1, 1, 1) * T + self.px - R
        outside = (gy < 0) | (gy >= h) | (gx < 0) | (gx >= w)
        self.map_bias = torch.zeros(outside.shape, device=device).masked_fill_(outside, float("-inf"))

    def query_tiles(self, q: torch.Tensor) -> torch.Tensor:
        """C x H x W -> ntx x nty x T^2 x C."""
        C, T = q.shape[0], self.T
        q = F.pad(q, (0, self.ntx * T - self.w, 0, self.nty * T - self.h))
        q = q.view(C, self.nty, T, self.ntx, T).permute(3, 1, 2, 4, 0)  # ntx x nty x T x T x C
        return q.reshape(self.ntx, self.nty, T * T, C)

    def fill_slabs(self, slabs: torch.Tensor, wide: torch.Tensor, keys: torch.Tensor, s0: int) -> None:
        """Write the keys (n x C x H x W) that strips s0.. reach into ``slabs`` (S x C x Hp x n x P),
        through ``wide`` (C x H x n x (S T + 2R)), both reused buffers. Their entries off the map are
        left as they are: finite (zeros or earlier keys), and masked by ``map_bias``."""
        R, T, P = self.R, self.T, self.P
        x0 = s0 * T - R  # map column of the first slab column
        lo, hi = max(x0, 0), min(x0 + wide.shape[-1], self.w)
        wide[..., lo - x0 : hi - x0] = keys[..., lo:hi].permute(1, 2, 0, 3)
        slabs[:, :, R : R + self.h] = wide.unfold(3, P, T).permute(3, 0, 1, 2, 4)  # S x C x H x n x P

    def patches(self, slab: torch.Tensor) -> torch.Tensor:
        """One strip's slab -> nty x C x (P n P) strided view (no copy), columns in (py, frame, px) order."""
        C, Hp, n, P = slab.shape
        return slab.as_strided((self.nty, C, P * n * P), (self.T * n * P, Hp * n * P, 1))

    def global_index(self, s0: int, pos: torch.Tensor) -> torch.Tensor:
        """Patch positions (S x nty x T^2 x k) of the tiles of strips s0.. -> flat H x W indices.
        Keys outside the map (only ever with value -inf) are clamped to a valid index."""
        tx = torch.arange(s0, s0 + pos.shape[0], device=pos.device).view(-1, 1, 1, 1)
        ty = torch.arange(self.nty, device=pos.device).view(1, -1, 1, 1)
        gy = (ty * self.T + self.py[pos] - self.R).clamp(0, self.h - 1)
        gx = (tx * self.T + self.px[pos] - self.R).clamp(0, self.w - 1)
        return gy * self.w + gx

    def untile(self, x: torch.Tensor) -> torch.Tensor:
        """ntx x nty x T^2 x k -> HW x k (drop the padded queries)."""
        T, k = self.T, x.shape[-1]
        x = x.view(self.ntx, self.nty, T, T, k).permute(1, 2, 0, 3, 4)
        x = x.reshape(self.nty * T, self.ntx * T, k)[: self.h, : self.w]
        return x.reshape(self.h * self.w, k)

    def chunks(self, n_frames: int, channels: int, itemsize: int, budget: int) -> tuple[int, int]:
        """How many strips and frames one chunk covers so that its buffers stay within ``budget``
        bytes: all frames of as many strips as fit, else as many frames of one strip as fit;
        then evened out (21 frames in two chunks: 11 + 10, not 20 + 1)."""
        scores = self.nty * self.T**2 * self.P**2  # of one strip and frame (and the stage-1 maxima)
        keys = channels * (self.Hp * self.P + self.h * (self.T + 2 * self.R))  # its slab and wide keys
        frames = max(1, min(n_frames, (budget // itemsize - scores) // (scores + keys)))
        strips = max(1, min(self.ntx, budget // itemsize // ((frames + 1) * scores + frames * keys)))
        even = lambda total, size: math.ceil(total / math.ceil(total / size))  # noqa: E731
        return even(self.ntx, strips), even(n_frames, frames)


def _chunk_topk(geo: _TileGeometry, scores: torch.Tensor, s0: int, n: int,
                k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of a chunk's scores (S x nty x T^2 x (P n P): strips s0.., n frames) over the
    frames and window positions, in two exact stages (see the module docstring).

    Returns values and flat ``n x H x W`` indices, S x nty x T^2 x min(k, n k')."""
    S, nty, T2 = scores.shape[:3]
    P = geo.P
    # Stage 1: best score of every patch position over the frames, window, top-k' positions.
    best = scores.view(S, nty, T2, P, n, P).amax(4).view(S, nty, T2, P * P)
    best += geo.window_bias
    best += geo.map_bias[s0 : s0 + S]
    bv, pos = best.topk(min(k, P * P), dim=-1)  # S x nty x T^2 x k'
    # Stage 2: the k' x n scores at those positions (-inf where the position is outside the window).
    frame = torch.arange(n, device=scores.device) * P
    col = (geo.py[pos] * (n * P) + geo.px[pos])[..., None] + frame  # S x nty x T^2 x k' x n
    cand = torch.gather(scores, -1, col.flatten(-2)).view(col.shape)
    cand.masked_fill_(torch.isneginf(bv)[..., None], float("-inf"))
    v, j = cand.flatten(-2).topk(min(k, col.shape[-2] * n), dim=-1)  # S x nty x T^2 x k
    p = torch.gather(pos, -1, j // n)
    return v, (j % n) * (geo.h * geo.w) + geo.global_index(s0, p)


def windowed_topk(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    radius: float,
    shape: str = "square",
    tile: int = 8,
    max_bytes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``<query(q), keys_n(p)>`` over frames n and positions p in the window of q.

    Args:
        query: C x H x W.
        keys: N x C x H x W (context frames on the query's grid).
        k: how many to keep per query (over all N frames jointly).
        radius: window radius in cells; ``shape`` "square" or "circle" (see :func:`window_mask`).
        tile: query tile size T. A matmul computes ``(T + 2R)^2`` scores per query where the
            window holds ``(2R + 1)^2``; small tiles waste less, large tiles make larger matmul
            blocks (and fewer strips). T = 8 (64 queries per block; overhead 1.64 at R 12, 1.31
            at R 24) was among the fastest of T = 4 to 16 on a 2-core CPU (DAVIS 480p /8, 240p /4).
        max_bytes: working-memory budget of one chunk (default :func:`default_max_bytes`).
            ``tile`` and ``max_bytes`` are speed knobs only: the result does not depend on them.

    Returns:
        values (HW x k) and indices (HW x k) into the flattened ``N x H x W`` keys. Entries
        that do not exist (fewer than k positions in a window) have value ``-inf``.
    """
    C, h, w = query.shape
    N = keys.shape[0]
    geo = _TileGeometry(h, w, radius, shape, tile, query.device)
    budget = default_max_bytes(query.device) if max_bytes is None else max_bytes
    strips, frames = geo.chunks(N, C, query.element_size(), budget)
    qt = geo.query_tiles(query).contiguous()  # ntx x nty x T^2 x C
    # Buffers of the largest chunk, reused by every chunk (on a CPU, fresh pages are costly).
    block = geo.nty * geo.T**2 * geo.P**2  # scores of one strip and frame
    scores_buf = query.new_empty(strips * frames * block)
    slabs_buf = query.new_zeros(strips * C * geo.Hp * frames * geo.P)
    wide_buf = query.new_zeros(C * h * frames * (strips * geo.T + 2 * geo.R))
    vals, idxs = [], []
    for s0 in range(0, geo.ntx, strips):
        S = min(strips, geo.ntx - s0)
        top = None
        for n0 in range(0, N, frames):
            n = min(frames, N - n0)
            slabs = slabs_buf[: S * C * geo.Hp * n * geo.P].view(S, C, geo.Hp, n, geo.P)
            wide = wide_buf[: C * h * n * (S * geo.T + 2 * geo.R)].view(C, h, n, -1)
            geo.fill_slabs(slabs, wide, keys[n0 : n0 + n], s0)
            scores = scores_buf[: S * n * block].view(S, geo.nty, geo.T**2, -1)  # S x nty x T^2 x (P n P)
            for s in range(S):
                torch.bmm(qt[s0 + s], geo.patches(slabs[s]), out=scores[s])
            v, i = _chunk_topk(geo, scores, s0, n, k)
            top = (v, i + n0 * h * w) if top is None else merge_topk(top, (v, i + n0 * h * w), k)
        vals.append(top[0])
        idxs.append(top[1])
    return geo.untile(torch.cat(vals)), geo.untile(torch.cat(idxs))


def global_topk(query: torch.Tensor, keys: torch.Tensor, k: int, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``<query(q), keys_n(p)>`` over all positions of all N frames (no window).

    The affinity is built ``chunk`` query rows at a time, so memory stays ``chunk x N HW``.
    """
    C = query.shape[0]
    q = query.reshape(C, -1).t()  # HW x C
    kf = keys.permute(1, 0, 2, 3).reshape(C, -1)  # C x N HW
    vals, idxs = [], []
    for s in range(0, q.shape[0], chunk):
        v, i = (q[s : s + chunk] @ kf).topk(min(k, kf.shape[1]), dim=-1)
        vals.append(v)
        idxs.append(i)
    return torch.cat(vals), torch.cat(idxs)


def dense_topk_reference(
    query: torch.Tensor, keys: torch.Tensor, k: int, radius: float | None, shape: str = "square"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The naive formulation: dense ``HW x N HW`` affinity, window mask, top-k. For tests and benchmarks."""
    C, h, w = query.shape
    N = keys.shape[0]
    aff = query.reshape(C, -1).t() @ keys.permute(1, 0, 2, 3).reshape(C, -1)  # HW x N HW
    mask = dense_window_mask(h, w, radius, shape).to(query.device).repeat(1, N)  # HW x N HW
    aff = aff.masked_fill(~mask, float("-inf"))
    return aff.topk(min(k, aff.shape[1]), dim=-1)


# --------------------------------------------------------------------------------------------
# Training: differentiable local correlation in a square window (STT step 2, CorrFlow).
# --------------------------------------------------------------------------------------------


class _LocalWindow:
    """Tile bookkeeping for a (2R+1)^2 window on a B x C x H x W map (square windows only)."""

    def __init__(self, h: int, w: int, R: int, tile: int, device):
        T, P, D = tile, tile + 2 * R, 2 * R + 1
        self.h, self.w, self.R, self.T, self.P, self.D = h, w, R, T, P, D
        self.nty, self.ntx = math.ceil(h / T), math.ceil(w / T)
        q = torch.arange(T * T, device=device)
        d = torch.arange(D * D, device=device)
        qy, qx, dy, dx = (q // T)[:, None], (q % T)[:, None], (d // D)[None], (d % D)[None]
        self.index = (qy + dy) * P + (qx + dx)  # T^2 x D^2: window entry -> patch entry
        ty = torch.arange(self.nty, device=device).view(1, -1, 1, 1)
        tx = torch.arange(self.ntx, device=device).view(-1, 1, 1, 1)
        gy = ty * T + qy[None, None] + dy[None, None] - R  # ntx x nty x T^2 x D^2
        gx = tx * T + qx[None, None] + dx[None, None] - R
        self.valid = (gy >= 0) & (gy < h) & (gx >= 0) & (gx < w)

    def tiles(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> B x ntx x nty x T^2 x C."""
        B, C, T = x.shape[0], x.shape[1], self.T
        x = F.pad(x, (0, self.ntx * T - self.w, 0, self.nty * T - self.h))
        x = x.view(B, C, self.nty, T, self.ntx, T).permute(0, 4, 2, 3, 5, 1)
        return x.reshape(B, self.ntx, self.nty, T * T, C)

    def untile(self, x: torch.Tensor) -> torch.Tensor:
        """B x ntx x nty x T^2 x K -> B x H x W x K."""
        B, T, K = x.shape[0], self.T, x.shape[-1]
        x = x.view(B, self.ntx, self.nty, T, T, K).permute(0, 2, 3, 1, 4, 5)
        return x.reshape(B, self.nty * T, self.ntx * T, K)[:, : self.h, : self.w]

    def padded_keys(self, x: torch.Tensor) -> torch.Tensor:
        """B x C x H x W -> B x Hp x Wp x C, zero-padded by R (and up to whole tiles)."""
        R, T = self.R, self.T
        return F.pad(x, (R, R + self.ntx * T - self.w, R, R + self.nty * T - self.h)).permute(0, 2, 3, 1)

    def patches(self, keys_p: torch.Tensor, tx: int) -> torch.Tensor:
        """The key patches of tile column ``tx``: B x nty x P^2 x C (a copy)."""
        B, Hp, _, C = keys_p.shape
        P, T = self.P, self.T
        slab = keys_p[:, :, tx * T : tx * T + P].contiguous()  # B x Hp x P x C
        return slab.as_strided((B, self.nty, P * P, C), (Hp * P * C, T * P * C, C, 1))


class _LocalCorrelation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tar, ref, R: int, tile: int):
        B, C, h, w = tar.shape
        geo = _LocalWindow(h, w, R, tile, tar.device)
        qt, kp = geo.tiles(tar), geo.padded_keys(ref)
        out = tar.new_empty(B, geo.ntx, geo.nty, geo.T**2, geo.D**2)
        idx = geo.index.expand(B, geo.nty, -1, -1)
        for tx in range(geo.ntx):
            corr = qt[:, tx] @ geo.patches(kp, tx).transpose(-1, -2)  # B x nty x T^2 x P^2
            out[:, tx] = torch.gather(corr, -1, idx)
        out.masked_fill_(~geo.valid, float("-inf"))
        ctx.save_for_backward(tar, ref)
        ctx.geo = geo
        return geo.untile(out)

    @staticmethod
    def backward(ctx, grad):
        tar, ref = ctx.saved_tensors
        geo = ctx.geo
        B, C = tar.shape[:2]
        T, P = geo.T, geo.P
        g = geo.tiles(grad.permute(0, 3, 1, 2)).masked_fill(~geo.valid, 0.0)  # B x ntx x nty x T^2 x D^2
        qt, kp = geo.tiles(tar), geo.padded_keys(ref)
        dq = torch.empty_like(qt)
        dk = torch.zeros_like(kp)  # B x Hp x Wp x C
        idx = geo.index.expand(B, geo.nty, -1, -1)
        for tx in range(geo.ntx):
            dcorr = g.new_zeros(B, geo.nty, T * T, P * P).scatter_(-1, idx, g[:, tx])
            dq[:, tx] = dcorr @ geo.patches(kp, tx)
            dpatch = (dcorr.transpose(-1, -2) @ qt[:, tx]).view(B, geo.nty, P, P, C)
            for ty in range(geo.nty):
                dk[:, ty * T : ty * T + P, tx * T : tx * T + P] += dpatch[:, ty]
        dtar = geo.untile(dq).permute(0, 3, 1, 2)
        dref = dk[:, geo.R : geo.R + geo.h, geo.R : geo.R + geo.w].permute(0, 3, 1, 2)
        return dtar.contiguous(), dref.contiguous(), None, None


def local_correlation(tar: torch.Tensor, ref: torch.Tensor, radius: int, tile: int = 8) -> torch.Tensor:
    """``<tar(q), ref(q + d)>`` for every displacement ``d`` in the square window ``|d| <= R``.

    Args:
        tar, ref: B x C x H x W.
    Returns:
        B x H x W x (2R+1)^2, displacements in row-major (dy, dx) order from (-R, -R); entries
        whose ``q + d`` falls outside the map are ``-inf``. Differentiable; memory O(B HW R^2),
        never O(B (HW)^2).
    """
    return _LocalCorrelation.apply(tar, ref, int(radius), tile)


def window_values(y: torch.Tensor, radius: int) -> torch.Tensor:
    """``y(q + d)`` for every window displacement: B x K x H x W -> B x H x W x (2R+1)^2 x K (0 outside)."""
    B, K, h, w = y.shape
    D = 2 * radius + 1
    u = F.unfold(y, kernel_size=D, padding=radius)  # B x K D^2 x HW
    return u.view(B, K, D * D, h, w).permute(0, 3, 4, 2, 1)


def dense_local_correlation_reference(tar: torch.Tensor, ref: torch.Tensor, radius: int) -> torch.Tensor:
    """Same as :func:`local_correlation` through the dense B x HW x HW correlation. For tests."""
    B, C, h, w = tar.shape
    dense = torch.einsum("bcq,bcp->bqp", tar.flatten(2), ref.flatten(2))  # B x HW x HW
    D = 2 * radius + 1
    d = torch.arange(D * D, device=tar.device)
    q = torch.arange(h * w, device=tar.device)
    py = (q // w)[:, None] + (d // D)[None] - radius
    px = (q % w)[:, None] + (d % D)[None] - radius
    valid = (py >= 0) & (py < h) & (px >= 0) & (px < w)
    p = (py.clamp(0, h - 1) * w + px.clamp(0, w - 1)).expand(B, -1, -1)
    out = torch.gather(dense, 2, p).masked_fill(~valid, float("-inf"))
    return out.view(B, h, w, D * D)

"""Affinities between feature maps: windows, top-k, and their naive dense references.

Label propagation (SPEC section 5) keeps, for every query position, the top-k affinities over
all context positions inside a spatial window of radius ``r`` feature cells. The naive way
builds the dense ``HW x (N HW)`` affinity and masks it; at DAVIS 480p with a stride-8 map
(60 x 107 cells) and 21 context frames that is 6420 x 134820 floats (3.5 GB) per frame.

:func:`windowed_topk` never builds it. The query map is cut into ``T x T`` tiles; each tile
only needs the keys of a ``(T + 2r) x (T + 2r)`` patch around it, so one batched matmul per
context frame computes every affinity a window can contain (``(T+2r)^2`` instead of ``HW``
keys per query), the window mask is applied inside the patch, and a per-frame top-k is
merged across frames. The top-k of a union equals the top-k of the per-part top-ks, so the
result is the dense one (tested in ``tests/test_affinity.py``).
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


class _TileGeometry:
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


def windowed_topk(
    query: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    radius: float,
    shape: str = "square",
    tile: int = 10,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of ``<query(q), keys_n(p)>`` over frames n and positions p in the window of q.

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
    geo = _TileGeometry(h, w, radius, shape, tile, query.device)
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

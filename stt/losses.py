"""Losses, each equation in one place (SPEC sections 2-4), tested against naive references."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2,
             exclude: torch.Tensor | None = None):
    """InfoNCE of MoCo (SPEC section 2).

    ``L = -log( exp(q.k+ / t) / (exp(q.k+ / t) + sum_j exp(q.n_j / t)) )``, averaged over the batch,
    with q, k (B x D) unit queries and their positive keys and ``queue`` (D x K) the negatives.
    ``exclude`` (B x K, optional): queue entries that are not negatives of a query (other views
    of its own instance, *ours*); they are left out of its sum.
    Returns (loss, logits), logits B x (1 + K) with the positive in column 0 (-inf where excluded).
    """
    l_pos = torch.einsum("nc,nc->n", q, k)[:, None]  # B x 1
    l_neg = torch.einsum("nc,ck->nk", q, queue)  # B x K
    if exclude is not None:
        l_neg = l_neg.masked_fill(exclude, float("-inf"))
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, labels), logits


# ---------------------------------------------------------------------------- STT step 2 (SPEC section 3)


def lab_channel_dropout(lab: torch.Tensor, gen: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """The colour bottleneck: pick one of the a/b channels for the whole batch, zero it in every
    frame's input and scale the input by 3/2. ``lab``: ... x 3 x H x W normalised Lab.
    Returns (input, dropped channel index: 1 = a, 2 = b)."""
    ch = 1 + int(torch.randint(0, 2, (1,), generator=gen))
    x = lab.clone()
    x[..., ch, :, :] = 0
    return x * 1.5, ch


def reconstruct(aff: torch.Tensor, y_ref: torch.Tensor, radius: int) -> torch.Tensor:
    """``y_hat(q) = sum_d A[q, d] y_ref(q + d)``: aff B x h x w x (2R+1)^2 (rows sum to 1 over the
    window), y_ref B x K x h x w -> B x K x h x w."""
    from .affinity import window_values

    return torch.einsum("bhwd,bhwdk->bkhw", aff, window_values(y_ref, radius)).contiguous()


def reconstruction_loss(aff: torch.Tensor, y_ref_full: torch.Tensor, y_tar_full: torch.Tensor, radius: int,
                        stride: int) -> torch.Tensor:
    """``L_rec = SmoothL1(20 y_hat, 20 y_tar)``: the reference channel subsampled to the level by
    striding, reconstructed through ``aff``, upsampled bilinearly to full size (SPEC section 3)."""
    y_hat = reconstruct(aff, y_ref_full[..., ::stride, ::stride], radius)
    up = F.interpolate(y_hat, size=y_tar_full.shape[-2:], mode="bilinear", align_corners=False)
    return F.smooth_l1_loss(20 * up, 20 * y_tar_full)


def global_correlation_distillation(s_tar, s_ref, t_tar, t_ref, teacher_temperature: float = 0.07) -> torch.Tensor:
    """GCD: ``MSE(G_s, G_t)`` with ``G = softmax_p(<f(q), f(p)> / scale)`` over all reference
    positions p, scale sqrt(C) for the student and ``teacher_temperature`` for the frozen teacher
    (no L2 normalisation, as the official configuration). Inputs B x C x h x w (layer4, /32)."""
    C = s_tar.shape[1]
    gs = torch.einsum("bcq,bcp->bqp", s_tar.flatten(2), s_ref.flatten(2)).div(C**0.5).softmax(-1)
    with torch.no_grad():
        gt = torch.einsum("bcq,bcp->bqp", t_tar.flatten(2), t_ref.flatten(2)).div(teacher_temperature).softmax(-1)
    return F.mse_loss(gs, gt)


def pool_fine_affinity(a4: torch.Tensor, r4: int, r8: int) -> torch.Tensor:
    """LCD target: the /4 window affinity (B x 2h x 2w x (2 r4 + 1)^2) 2x2 average-pooled over the
    query grid and over the reference grid, read in the /8 window (B x h x w x (2 r8 + 1)^2).

    ``T[q, d] = 1/16 sum_{a, b in {0,1}^2} A4[2q + a, 2d + b - a]`` (fine entries outside the fine
    window count as 0). As in the official code each row sums to 1/4, not 1.
    """
    if r4 != 2 * r8:
        raise ValueError(f"LCD needs the fine radius to be twice the coarse one, got {r4} and {r8}")
    B, H4, W4, _ = a4.shape
    D4, D8 = 2 * r4 + 1, 2 * r8 + 1
    a = F.pad(a4.view(B, H4, W4, D4, D4), (1, 1, 1, 1))  # fine displacements -r4-1 .. r4+1
    out = 0
    for ay in (0, 1):
        for ax in (0, 1):
            q = a[:, ay::2, ax::2]  # the fine query (2y + ay, 2x + ax) of each coarse query
            for by in (0, 1):
                for bx in (0, 1):
                    sy, sx = by - ay + 1, bx - ax + 1  # padded index of displacement 2 d + b - a
                    out = out + q[..., sy : sy + 2 * D8 - 1 : 2, sx : sx + 2 * D8 - 1 : 2]
    return (out / 16).reshape(B, H4 // 2, W4 // 2, D8 * D8)


def uncertainty(corr: torch.Tensor, zero_padded: bool = True) -> torch.Tensor:
    """``U(q) = sum_d -log(P_d(q) + 1e-12)`` with P the softmax of the raw correlation over the
    (2R+1)^2 window displacements (corr B x h x w x D, -inf where q + d is outside the map).

    ``zero_padded`` (official, mmcv ``Correlation``): a displacement outside the map has
    correlation 0 and takes part in the softmax and the sum. False: only the displacements inside
    the map count (this project's earlier form, kept for the ablation)."""
    if zero_padded:
        p = corr.masked_fill(torch.isneginf(corr), 0.0).softmax(-1)
        return -torch.log(p + 1e-12).sum(-1)
    valid = torch.isfinite(corr)
    return (-torch.log(corr.softmax(-1) + 1e-12) * valid).sum(-1)


LCD_THRESHOLDS = ("flattened", "per-column")


def uncertainty_mask(u: torch.Tensor, keep: float | None, threshold: str = "flattened") -> torch.Tensor:
    """The pixels LCD supervises (u: B x h x w): ``U > value at position int(keep N) - 1 of the
    descending sort``, so keep = 0.7 keeps the ~70 % most uncertain; None keeps all.

    ``threshold``: ``"flattened"`` (intended, the authors' earlier vcl code): the sort runs over
    each sample's whole flattened map, N = h w. ``"per-column"`` (the official release, a bug): the
    map is never flattened, so the sort runs along each row, N = w, and row ``int(keep w) - 1`` of
    the row-sorted map becomes a per-column threshold (pixel (i, j) is kept when U(i, j) exceeds
    the j-th largest value of that row), keeping a varying share of each column."""
    if keep is None:
        return torch.ones_like(u, dtype=torch.bool)
    if threshold == "per-column":
        k = min(max(int(keep * u.shape[-1]) - 1, 0), u.shape[-2] - 1)
        return u > u.sort(dim=-1, descending=True).values[:, k : k + 1]  # B x 1 x w: one threshold per column
    if threshold != "flattened":
        raise ValueError(f"unknown LCD threshold {threshold!r}: expected one of {LCD_THRESHOLDS}")
    flat = u.flatten(1)
    k = max(int(keep * flat.shape[1]) - 1, 0)
    thr = flat.sort(dim=1, descending=True).values[:, k]
    return u > thr.view(-1, *([1] * (u.dim() - 1)))


def local_correlation_distillation(a8: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                                   valid: torch.Tensor | None = None) -> torch.Tensor:
    """LCD, the official loss: ``sum(W (A8 - T)^2) / sum(W)``, both sums over the dense
    B x HW x HW query-by-reference grid of the /8 map, with ``W[q, p] = mask(q)`` for every
    reference p (the query mask repeated over all HW positions): the normaliser is
    (masked queries) x HW. Outside the window A8 and T are both 0, so the numerator needs only
    the window entries: a8, target B x h x w x D (window), mask B x h x w.

    ``valid`` (B x h x w x D, optional): normalise by the masked window entries inside the map
    instead, this project's earlier form (about 2x larger at 128 px, 7.5x at 256), kept for the
    ablation."""
    sq = mask[..., None] * (a8 - target.detach()) ** 2  # B x h x w x D
    if valid is not None:
        return (sq * valid).sum() / (mask[..., None] & valid).sum().clamp(min=1)
    B, h, w, _ = a8.shape
    return sq.sum() / (mask.sum() * (h * w)).clamp(min=1)


def stt_losses_dense_reference(f4r, f4t, f8r, f8t, y_ref, y_tar, r4=12, r8=6, lcd_keep=0.7, s4r=None, s4t=None,
                               t4r=None, t4t=None, teacher_temperature=0.07) -> dict:
    """STT step 2's losses in the dense formulation of the official code, written from SPEC
    section 3 without this module's windowed functions: B x HW x HW affinities with a dense
    window mask, reconstruction by matrix product, the LCD target by average-pooling the dense /4
    affinity over both grids, the uncertainty from the zero-padded correlation, the query mask
    repeated over all HW reference positions. For tests (equality with the windowed form) and the
    memory benchmark; never used for training.

    f4*, f8*: /4 and /8 features of reference and target (B x C x h x w); y_*: B x 1 x S x S.
    s4*/t4*: student/teacher layer4 features for GCD (optional).
    """
    out = {}
    S = y_tar.shape[-1]

    def window(h, w, R, device):  # HW x HW: |p - q|_inf <= R
        y, x = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
        y, x = y.flatten(), x.flatten()
        return ((y[:, None] - y[None]).abs() <= R) & ((x[:, None] - x[None]).abs() <= R)

    def dense_aff(t, r, R):
        B, C, h, w = t.shape
        corr = torch.einsum("bcq,bcp->bqp", t.flatten(2), r.flatten(2))  # B x HW x HW
        mask = window(h, w, R, t.device)
        return corr, (corr / C**0.5).masked_fill(~mask, float("-inf")).softmax(-1)

    def rec(a, t, stride):
        B, _, h, w = t.shape
        y = y_ref[..., ::stride, ::stride].flatten(2).transpose(1, 2)  # B x HW x 1
        y_hat = torch.bmm(a, y).transpose(1, 2).view(B, 1, h, w)
        up = F.interpolate(y_hat, size=(S, S), mode="bilinear", align_corners=False)
        return F.smooth_l1_loss(20 * up, 20 * y_tar)

    _, a4 = dense_aff(f4t, f4r, r4)
    c8, a8 = dense_aff(f8t, f8r, r8)
    out["rec4"] = rec(a4, f4t, S // f4t.shape[-1])
    out["rec8"] = rec(a8, f8t, S // f8t.shape[-1])
    B, _, h4, w4 = f4t.shape
    _, _, h8, w8 = f8t.shape
    pooled = F.avg_pool2d(a4.detach().view(B * h4 * w4, 1, h4, w4), 2).view(B, h4, w4, -1)  # over the reference grid
    pooled = F.avg_pool2d(pooled.permute(0, 3, 1, 2), 2).flatten(2).transpose(1, 2)  # over the query grid
    # Uncertainty: the zero-padded correlation of every displacement d of the (2 r8 + 1)^2 window.
    pad = F.pad(f8r, (r8, r8, r8, r8))
    corr_d = torch.stack([(f8t * pad[..., dy : dy + h8, dx : dx + w8]).sum(1)
                          for dy in range(2 * r8 + 1) for dx in range(2 * r8 + 1)], -1)  # B x h x w x D
    u = -torch.log(corr_d.softmax(-1) + 1e-12).sum(-1).flatten(1)  # B x HW8
    if lcd_keep is None:
        keep = torch.ones_like(u, dtype=torch.bool)
    else:
        k = int(lcd_keep * u.shape[1]) - 1
        keep = u > u.sort(dim=1, descending=True).values[:, k : k + 1]
    W = keep[:, :, None].float().expand(-1, -1, h8 * w8)  # B x HW x HW: the query mask over every reference
    out["lcd"] = (W * (a8 - pooled) ** 2).sum() / W.sum().clamp(min=1)
    if s4t is not None:
        C = s4t.shape[1]
        gs = torch.einsum("bcq,bcp->bqp", s4t.flatten(2), s4r.flatten(2)).div(C**0.5).softmax(-1)
        gt = torch.einsum("bcq,bcp->bqp", t4t.flatten(2), t4r.flatten(2)).div(teacher_temperature).softmax(-1)
        out["gcd"] = ((gs - gt) ** 2).mean()
    return out


# ---------------------------------------------------------------------------- CorrFlow (SPEC section 4)


def corrflow_nll(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Reconstruction as classification: colour-class probabilities p (B x K x h x w, at /4) are
    upsampled bilinearly to the target's size and scored by ``NLL(log(p + 1e-8), class)``."""
    up = F.interpolate(p, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return F.nll_loss(torch.log(up + 1e-8), target.contiguous())

"""STT step 2: every loss term against a naive or dense reference (SPEC section 3)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from stt.affinity import dense_local_correlation_reference, local_correlation, window_values
from stt.encoder import ResNetEncoder
from stt.losses import (
    global_correlation_distillation,
    lab_channel_dropout,
    local_correlation_distillation,
    pool_fine_affinity,
    reconstruct,
    stt_losses_dense_reference,
    uncertainty,
    uncertainty_mask,
)
from stt.models import STT


def _g(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("B,C,h,w,R,tile", [(2, 5, 9, 11, 2, 4), (1, 3, 6, 7, 3, 8), (2, 4, 16, 16, 6, 8), (1, 2, 5, 5, 12, 8)])
def test_local_correlation_values_and_gradients_equal_dense(B, C, h, w, R, tile):
    a = torch.randn(B, C, h, w, dtype=torch.float64, generator=_g(0), requires_grad=True)
    b = torch.randn(B, C, h, w, dtype=torch.float64, generator=_g(1), requires_grad=True)
    ours, ref = local_correlation(a, b, R, tile), dense_local_correlation_reference(a, b, R)
    fin = torch.isfinite(ref)
    assert torch.equal(fin, torch.isfinite(ours))
    assert torch.allclose(ours[fin], ref[fin])
    gw = torch.randn(ours.shape, dtype=torch.float64, generator=_g(2)).masked_fill(~fin, 0)
    g1 = torch.autograd.grad((ours.masked_fill(~fin, 0) * gw).sum(), (a, b))
    g2 = torch.autograd.grad((ref.masked_fill(~fin, 0) * gw).sum(), (a, b))
    for x, y in zip(g1, g2):
        assert torch.allclose(x, y)


def test_local_correlation_gradcheck():
    a = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=_g(3), requires_grad=True)
    b = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=_g(4), requires_grad=True)
    f = lambda x, y: local_correlation(x, y, 2, 4).nan_to_num(neginf=0.0)  # noqa: E731
    assert torch.autograd.gradcheck(f, (a, b))


def test_window_values_and_reconstruct_by_loops():
    y = torch.randn(1, 1, 4, 5, generator=_g(5))
    R, D = 1, 3
    wv = window_values(y, R)
    aff = torch.softmax(torch.randn(1, 4, 5, D * D, generator=_g(6)), -1)
    rec = reconstruct(aff, y, R)
    for qy, qx in itertools.product(range(4), range(5)):
        total = 0.0
        for d, (dy, dx) in enumerate(itertools.product(range(-R, R + 1), repeat=2)):
            py, px = qy + dy, qx + dx
            v = float(y[0, 0, py, px]) if 0 <= py < 4 and 0 <= px < 5 else 0.0
            assert float(wv[0, qy, qx, d, 0]) == pytest.approx(v)
            total += float(aff[0, qy, qx, d]) * v
        assert float(rec[0, 0, qy, qx]) == pytest.approx(total, abs=1e-6)


def test_lab_channel_dropout():
    lab = torch.randn(3, 2, 3, 4, 4, generator=_g(7))
    x, ch = lab_channel_dropout(lab, _g(8))
    assert ch in (1, 2)
    assert (x[:, :, ch] == 0).all()  # the same channel in both frames of every sample
    other = 3 - ch
    assert torch.allclose(x[:, :, 0], 1.5 * lab[:, :, 0]) and torch.allclose(x[:, :, other], 1.5 * lab[:, :, other])
    assert {lab_channel_dropout(lab, _g(s))[1] for s in range(20)} == {1, 2}


def test_gcd_by_loops():
    s_t, s_r, t_t, t_r = (torch.randn(1, 3, 2, 2, generator=_g(9 + i)) for i in range(4))
    ours = global_correlation_distillation(s_t, s_r, t_t, t_r, 0.07)
    q = lambda f: f.flatten(2)[0].t()  # noqa: E731  HW x C
    total = 0.0
    for i in range(4):
        zs = [float(q(s_t)[i] @ q(s_r)[j]) / math.sqrt(3) for j in range(4)]
        zt = [float(q(t_t)[i] @ q(t_r)[j]) / 0.07 for j in range(4)]
        ps = [math.exp(z - max(zs)) for z in zs]
        pt = [math.exp(z - max(zt)) for z in zt]
        total += sum((a / sum(ps) - b / sum(pt)) ** 2 for a, b in zip(ps, pt))
    assert ours.item() == pytest.approx(total / 16, rel=1e-5)


def test_pooled_fine_affinity_equals_dense_pooling():
    B, h8, w8, r8 = 2, 5, 6, 2
    r4, h4, w4 = 2 * r8, 2 * h8, 2 * w8
    corr = dense_local_correlation_reference(torch.randn(B, 4, h4, w4, generator=_g(13)),
                                             torch.randn(B, 4, h4, w4, generator=_g(14)), r4)
    a4 = corr.softmax(-1)
    ours = pool_fine_affinity(a4, r4, r8)
    # Dense: scatter each window row into the full reference grid, average-pool both grids.
    dense = torch.zeros(B, h4 * w4, h4 * w4)
    for qy, qx in itertools.product(range(h4), range(w4)):
        for d, (dy, dx) in enumerate(itertools.product(range(-r4, r4 + 1), repeat=2)):
            py, px = qy + dy, qx + dx
            if 0 <= py < h4 and 0 <= px < w4:
                dense[:, qy * w4 + qx, py * w4 + px] = a4[:, qy, qx, d]
    pooled = F.avg_pool2d(dense.view(-1, 1, h4, w4), 2).view(B, h4, w4, h8 * w8)
    pooled = F.avg_pool2d(pooled.permute(0, 3, 1, 2), 2).permute(0, 2, 3, 1)  # B x h8 x w8 x HW8
    for qy, qx in itertools.product(range(h8), range(w8)):
        for d, (dy, dx) in enumerate(itertools.product(range(-r8, r8 + 1), repeat=2)):
            py, px = qy + dy, qx + dx
            want = pooled[:, qy, qx, py * w8 + px] if 0 <= py < h8 and 0 <= px < w8 else torch.zeros(B)
            assert torch.allclose(ours[:, qy, qx, d], want, atol=1e-7)
    # Interior rows sum to 1/4 (the official code's normalisation).
    assert torch.allclose(ours[:, 2, 3].sum(-1), torch.full((B,), 0.25), atol=1e-6)


def test_uncertainty_and_mask_by_hand():
    corr = torch.tensor([[[[0.0, 0.0, float("-inf")], [10.0, 0.0, 0.0]]]])  # B=1, h=1, w=2, D=3
    u = uncertainty(corr)
    # pixel 0: two valid entries at p = 1/2 -> 2 * log 2; pixel 1: p ~ (1, e^-10, e^-10)
    assert u[0, 0, 0].item() == pytest.approx(2 * math.log(2), rel=1e-5)
    p1 = torch.tensor([10.0, 0.0, 0.0]).softmax(0)
    assert u[0, 0, 1].item() == pytest.approx(float(-torch.log(p1 + 1e-12).sum()), rel=1e-5)
    vals = torch.arange(10.0).view(1, 2, 5)  # 0..9
    m = uncertainty_mask(vals, 0.7)  # descending sort: 9..0; position 7 holds 2; keep > 2
    assert m.sum() == 7 and m.flatten()[3:].all() and not m.flatten()[:3].any()
    assert uncertainty_mask(vals, None).all()
    assert uncertainty_mask(vals, 0.3).sum() == 3
    # Thresholds are per sample over the whole flattened map, not per row.
    two = torch.stack([vals[0], vals[0] + 100])
    assert uncertainty_mask(two, 0.5).sum(dim=(1, 2)).tolist() == [5, 5]


def test_lcd_by_hand():
    a8 = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # B=1, h=1, w=2, D=2
    t = torch.tensor([[[[0.25, 0.0], [0.0, 0.25]]]])
    mask = torch.tensor([[[True, False]]])
    assert local_correlation_distillation(a8, t, mask).item() == pytest.approx((0.0625 + 0.25) / 2)
    valid = torch.tensor([[[[True, False], [True, True]]]])
    assert local_correlation_distillation(a8, t, mask, valid).item() == pytest.approx(0.0625)


def test_windowed_losses_equal_the_dense_formulation():
    """The whole step-2 loss (rec /4, rec /8, LCD, GCD) and its gradients, windowed vs dense."""
    torch.manual_seed(0)
    B, S = 2, 64
    f4r, f4t = (torch.randn(B, 8, 16, 16, dtype=torch.float64, requires_grad=True) for _ in range(2))
    f8r, f8t = (torch.randn(B, 8, 8, 8, dtype=torch.float64, requires_grad=True) for _ in range(2))
    s4r, s4t, t4r, t4t = (torch.randn(B, 8, 2, 2, dtype=torch.float64) for _ in range(4))
    y_ref, y_tar = torch.randn(B, 1, S, S, dtype=torch.float64), torch.randn(B, 1, S, S, dtype=torch.float64)
    dense = stt_losses_dense_reference(f4r, f4t, f8r, f8t, y_ref, y_tar, 12, 6, 0.7, s4r, s4t, t4r, t4t)

    from stt.losses import reconstruction_loss

    c4 = local_correlation(f4t, f4r, 12)
    a4 = (c4 / math.sqrt(8)).softmax(-1)
    c8 = local_correlation(f8t, f8r, 6)
    a8 = (c8 / math.sqrt(8)).softmax(-1)
    ours = {
        "rec4": reconstruction_loss(a4, y_ref, y_tar, 12, 4),
        "rec8": reconstruction_loss(a8, y_ref, y_tar, 6, 8),
        "lcd": local_correlation_distillation(a8, pool_fine_affinity(a4.detach(), 12, 6),
                                              uncertainty_mask(uncertainty(c8.detach()), 0.7), torch.isfinite(c8)),
        "gcd": global_correlation_distillation(s4t, s4r, t4t, t4r),
    }
    for k in dense:
        assert ours[k].item() == pytest.approx(dense[k].item(), rel=1e-9), k
    total = lambda d: d["rec4"] + d["rec8"] + 1000 * d["lcd"] + 50 * d["gcd"]  # noqa: E731
    g1 = torch.autograd.grad(total(ours), (f4r, f4t, f8r, f8t))
    g2 = torch.autograd.grad(total(dense), (f4r, f4t, f8r, f8t))
    for x, y in zip(g1, g2):
        assert torch.allclose(x, y, atol=1e-10)


@pytest.mark.parametrize("flags", [dict(), dict(gcd=False, init=None), dict(pyramid=False, lcd=False, gcd=False),
                                   dict(lcd_keep=None), dict(lcd_keep=0.3)])
def test_stt_model_ablation_switches_run(flags):
    trunk = ResNetEncoder("resnet18", "train").state_dict()
    kw = dict(init=trunk, teacher=trunk)
    kw.update(flags)
    if not kw.get("gcd", True):
        kw.pop("teacher")
    m = STT(**kw)
    out = m(torch.rand(2, 2, 3, 64, 64), _g(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert ("gcd" in out) == kw.get("gcd", True) and ("lcd" in out) == kw.get("lcd", True)
    assert ("rec8" in out) == kw.get("pyramid", True)
    if m.teacher is not None:
        assert not m.teacher.training and m.teacher.conv1.weight.grad is None


def test_gcd_without_teacher_is_a_clear_error():
    with pytest.raises(ValueError, match="teacher"):
        STT(init=None, teacher=None, gcd=True)

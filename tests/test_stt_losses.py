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
from stt.temporal import STT


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


def test_uncertainty_by_hand():
    corr = torch.tensor([[[[0.0, 0.0, float("-inf")], [10.0, 0.0, 0.0]]]])  # B=1, h=1, w=2, D=3
    # official (zero-padded): the displacement outside the map has correlation 0 -> p = 1/3 each
    assert uncertainty(corr)[0, 0, 0].item() == pytest.approx(3 * math.log(3), rel=1e-5)
    # the earlier form: only the two displacements inside the map, p = 1/2 -> 2 log 2
    assert uncertainty(corr, zero_padded=False)[0, 0, 0].item() == pytest.approx(2 * math.log(2), rel=1e-5)
    p1 = torch.tensor([10.0, 0.0, 0.0]).softmax(0)  # inside the map everywhere: both forms agree
    for zp in (True, False):
        assert uncertainty(corr, zp)[0, 0, 1].item() == pytest.approx(float(-torch.log(p1 + 1e-12).sum()), rel=1e-5)


def test_uncertainty_mask_by_hand():
    vals = torch.arange(10.0).view(1, 2, 5)  # 0..9
    m = uncertainty_mask(vals, 0.7)  # descending sort 9..0; position int(0.7 * 10) - 1 = 6 holds 3: keep > 3
    assert m.sum() == 6 and m.flatten()[4:].all() and not m.flatten()[:4].any()
    assert uncertainty_mask(vals, None).all()
    assert uncertainty_mask(vals, 0.3).sum() == 2  # position 2 holds 7: keep 8, 9
    # Thresholds are per sample over the whole flattened map, not per row.
    two = torch.stack([vals[0], vals[0] + 100])
    assert uncertainty_mask(two, 0.5).sum(dim=(1, 2)).tolist() == [4, 4]  # position 4 holds 5 (105)
    # The release's per-column threshold: each row sorted, row int(0.7 w) - 1 of the row-sorted map
    # thresholds column j by its j-th value. 4 x 4 map, rows sorted descending:
    u = torch.tensor([[[5.0, 1.0, 7.0, 3.0],
                       [2.0, 8.0, 0.0, 6.0],
                       [9.0, 4.0, 1.5, 2.5],
                       [0.5, 3.5, 7.5, 6.5]]])
    k = int(0.7 * 4) - 1  # = 1: the second row, sorted descending: 8, 6, 2, 0
    assert k == 1
    thr = torch.tensor([8.0, 6.0, 2.0, 0.0])  # per column
    want = u[0] > thr[None]
    got = uncertainty_mask(u, 0.7, "per-column")[0]
    assert torch.equal(got, want) and want.sum(0).tolist() == [1, 1, 2, 4]  # a varying share per column
    with pytest.raises(ValueError, match="threshold"):
        uncertainty_mask(u, 0.7, "rows")


def test_lcd_by_hand():
    a8 = torch.tensor([[[[0.5, 0.5], [1.0, 0.0]]]])  # B=1, h=1, w=2 (HW = 2), D=2
    t = torch.tensor([[[[0.25, 0.0], [0.0, 0.25]]]])
    mask = torch.tensor([[[True, False]]])
    # official: sum over the masked query's entries / (1 masked query x HW 2)
    assert local_correlation_distillation(a8, t, mask).item() == pytest.approx((0.0625 + 0.25) / 2)
    valid = torch.tensor([[[[True, False], [True, True]]]])  # the earlier form: / masked entries inside the map
    assert local_correlation_distillation(a8, t, mask, valid).item() == pytest.approx(0.0625)


def lcd_by_loops(f4r, f4t, f8r, f8t, r4, r8, keep):
    """LCD written from SPEC section 3 with Python loops over pixels (tiny maps only), sharing no
    code with stt: dense /4 and /8 affinities with square windows, the /4 one averaged over 2 x 2
    query and reference cells, the zero-padded /8 correlation's uncertainty, the flattened
    threshold, the query mask repeated over all HW reference positions."""
    B, C4, h4, w4 = f4t.shape
    C8, h8, w8 = f8t.shape[1:]
    total, weight = 0.0, 0.0
    for b in range(B):
        def affinity(ft, fr, h, w, R, C):
            A = {}
            for qy, qx in itertools.product(range(h), range(w)):
                logits = {(py, px): float(ft[b, :, qy, qx] @ fr[b, :, py, px]) / math.sqrt(C)
                          for py, px in itertools.product(range(h), range(w)) if abs(py - qy) <= R and abs(px - qx) <= R}
                z = max(logits.values())
                e = {p: math.exp(v - z) for p, v in logits.items()}
                for p, v in e.items():
                    A[(qy, qx), p] = v / sum(e.values())
            return A
        A4 = affinity(f4t, f4r, h4, w4, r4, C4)
        A8 = affinity(f8t, f8r, h8, w8, r8, C8)
        U = {}
        for qy, qx in itertools.product(range(h8), range(w8)):
            corr = []
            for dy, dx in itertools.product(range(-r8, r8 + 1), repeat=2):
                py, px = qy + dy, qx + dx
                inside = 0 <= py < h8 and 0 <= px < w8
                corr.append(float(f8t[b, :, qy, qx] @ f8r[b, :, py, px]) if inside else 0.0)
            z = max(corr)
            P = [math.exp(c - z) / sum(math.exp(c2 - z) for c2 in corr) for c in corr]
            U[qy, qx] = sum(-math.log(p + 1e-12) for p in P)
        order = sorted(U.values(), reverse=True)
        thr = order[int(keep * len(order)) - 1]
        for q8 in itertools.product(range(h8), range(w8)):
            if not U[q8] > thr:
                continue
            for p8 in itertools.product(range(h8), range(w8)):
                t = sum(A4.get(((2 * q8[0] + a, 2 * q8[1] + c), (2 * p8[0] + d, 2 * p8[1] + e)), 0.0)
                        for a, c, d, e in itertools.product((0, 1), repeat=4)) / 16
                total += (A8.get((q8, p8), 0.0) - t) ** 2
                weight += 1.0
    return total / weight


def test_lcd_equals_spec_by_loops():
    """The windowed LCD of the model (the official loss) against the loop reference above."""
    g = _g(21)
    r8, r4 = 1, 2
    f4r, f4t = (torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=g) for _ in range(2))
    f8r, f8t = (torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=g) for _ in range(2))
    c4, c8 = local_correlation(f4t, f4r, r4), local_correlation(f8t, f8r, r8)
    a4, a8 = (c4 / math.sqrt(3)).softmax(-1), (c8 / math.sqrt(3)).softmax(-1)
    ours = local_correlation_distillation(a8, pool_fine_affinity(a4, r4, r8), uncertainty_mask(uncertainty(c8), 0.7))
    assert ours.item() == pytest.approx(lcd_by_loops(f4r, f4t, f8r, f8t, r4, r8, 0.7), rel=1e-9)


def _features(B=2, C=8, h4=16, dtype=torch.float64):
    g = _g(30)
    mk = lambda c, h: torch.randn(B, c, h, h, dtype=dtype, generator=g, requires_grad=True)  # noqa: E731
    return mk(C, h4), mk(C, h4), mk(C, h4 // 2), mk(C, h4 // 2)


def test_windowed_losses_equal_the_dense_formulation():
    """The whole step-2 loss (rec /4, rec /8, LCD, GCD) and its gradients, windowed (the model's
    STT.losses) vs the dense formulation of the official code, at the paper's radii."""
    B, S = 2, 64
    f4r, f4t, f8r, f8t = _features(B)
    g = _g(31)
    s4r, s4t = (torch.randn(B, 8, 2, 2, dtype=torch.float64, generator=g) for _ in range(2))
    t4r, t4t = (torch.randn(B, 16, 2, 2, dtype=torch.float64, generator=g) for _ in range(2))
    lab = torch.randn(B, 2, 3, S, S, dtype=torch.float64, generator=g)
    ch = 2
    dense = stt_losses_dense_reference(f4r, f4t, f8r, f8t, lab[:, 0, ch:ch + 1], lab[:, 1, ch:ch + 1], 12, 6, 0.7,
                                       s4r, s4t, t4r, t4t)
    model = STT(gcd=False)
    model.gcd = True  # score GCD on the given teacher features (the teacher network is not needed)
    inter = lambda r, t: torch.stack([r, t], 1).flatten(0, 1)  # noqa: E731  frames interleaved ref, tar
    f = {"layer2": inter(f4r, f4t), "layer3": inter(f8r, f8t), "layer4": inter(s4r, s4t)}
    ours = model.losses(f, lab, ch, B, S, inter(t4r, t4t))
    for k in dense:
        assert ours[k].item() == pytest.approx(dense[k].item(), rel=1e-9), k
    total = lambda d: d["rec4"] + d["rec8"] + 1000 * d["lcd"] + 50 * d["gcd"]  # noqa: E731
    assert ours["loss"].item() == pytest.approx(total(dense).item(), rel=1e-9)
    g1 = torch.autograd.grad(ours["loss"], (f4r, f4t, f8r, f8t))
    g2 = torch.autograd.grad(total(dense), (f4r, f4t, f8r, f8t))
    for x, y in zip(g1, g2):
        assert torch.allclose(x, y, atol=1e-10)


def test_lcd_earlier_form_and_per_column_switches():
    """The ablation switches change exactly their part: the earlier normaliser is the official
    one times HW / (masked entries inside the map) on the same mask; the per-column threshold
    picks another mask."""
    B, S = 2, 64
    f4r, f4t, f8r, f8t = _features(B)
    lab = torch.randn(B, 2, 3, S, S, dtype=torch.float64, generator=_g(32))
    inter = lambda r, t: torch.stack([r, t], 1).flatten(0, 1)  # noqa: E731
    f = {"layer2": inter(f4r, f4t), "layer3": inter(f8r, f8t)}
    out = {form: STT(gcd=False, lcd_form=form).losses(f, lab, 1, B, S, None)["lcd"] for form in ("official", "windowed")}
    c8 = local_correlation(f8t, f8r, 6)
    a8 = (c8 / math.sqrt(8)).softmax(-1)
    mask = uncertainty_mask(uncertainty(c8, zero_padded=False), 0.7)
    target = pool_fine_affinity((local_correlation(f4t, f4r, 12) / math.sqrt(8)).softmax(-1), 12, 6)
    num = (mask[..., None] * (a8 - target) ** 2).sum()
    assert out["windowed"].item() == pytest.approx((num / (mask[..., None] & torch.isfinite(c8)).sum()).item(), rel=1e-9)
    assert out["official"].item() > 0 and out["windowed"].item() != pytest.approx(out["official"].item(), rel=1e-6)
    per_col = STT(gcd=False, lcd_threshold="per-column").losses(f, lab, 1, B, S, None)["lcd"]
    assert per_col.item() != pytest.approx(out["official"].item(), rel=1e-6)


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


def _teacher_features(model, rgb):
    """The teacher features STT.forward hands to its losses."""
    seen = {}
    losses = model.losses

    def spy(f, lab, ch, B, S, teacher):
        seen["teacher"] = teacher
        return losses(f, lab, ch, B, S, teacher)

    model.losses = spy
    model(rgb, _g(0))
    return seen["teacher"]


def test_teacher_runs_as_step1_trained():
    """The GCD teacher is the plain ResNet step 1 trained (stem max-pool, strides 1,2,2,2) on the
    input space step 1 saw (recorded in the checkpoint), the student the step-2 trunk; both /32."""
    from stt.color import rgb_to_imagenet, rgb_to_normalized_lab

    torch.manual_seed(0)
    moco = ResNetEncoder("resnet18", "imagenet", "lab").eval()  # what MoCo trains
    ours = {"encoder": moco.state_dict(), "meta": {"kind": "moco", "arch": "resnet18", "input": "lab"}}
    rgb = torch.rand(2, 2, 3, 64, 64, generator=_g(40))
    m = STT(teacher=ours)
    assert m.teacher.variant == "imagenet" and isinstance(m.teacher.maxpool, torch.nn.MaxPool2d)
    assert m.encoder.variant == "train" and m.teacher.input_space == "lab"
    t = _teacher_features(m, rgb)
    with torch.no_grad():
        want = moco(rgb_to_normalized_lab(rgb.flatten(0, 1)), levels=("layer4",))["layer4"]
    assert t.shape[-2:] == (2, 2) and torch.allclose(t, want, atol=1e-5)
    # a torchvision / MoCo file without our meta: the plain ResNet on ImageNet-normalised RGB
    m = STT(teacher={"state_dict": {f"module.encoder_q.{k}": v for k, v in moco.state_dict().items()}})
    assert m.teacher.input_space == "rgb-imagenet"
    with torch.no_grad():
        want = moco(rgb_to_imagenet(rgb.flatten(0, 1)), levels=("layer4",))["layer4"]
    assert torch.allclose(_teacher_features(m, rgb), want, atol=1e-5)
    # the earlier choice, kept for the ablation: the student's trunk on Lab
    m = STT(teacher=ours, teacher_variant="train")
    assert m.teacher.variant == "train" and isinstance(m.teacher.maxpool, torch.nn.Identity)
    # a stronger teacher: an R50 step 1 distils into the R18 student (its arch from its keys)
    r50 = ResNetEncoder("resnet50", "imagenet", "lab").state_dict()
    m = STT(teacher={"encoder": r50, "meta": {"kind": "moco", "input": "lab"}})
    assert m.teacher.arch == "resnet50" and m.encoder.arch == "resnet18"
    out = m(rgb, _g(1))
    assert torch.isfinite(out["gcd"]) and m.checkpoint_meta()["flags"]["teacher"]["arch"] == "resnet50"

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from stt.propagation import (
    PropagationConfig,
    downsample_labels,
    propagate_frame,
    propagate_video,
    upsample_predictions,
)


def _naive_step(query, first_f, first_l, prev_f, prev_l, cfg):
    """SPEC section 5 with loops: every candidate listed, sorted, top-k, softmax, weighted sum."""
    C, h, w = query.shape
    ctx = [(first_f, first_l, cfg.radius_first_frame)] + [(f, l, True) for f, l in zip(prev_f, prev_l)]
    out = torch.zeros(first_l.shape[0], h, w)
    for y, x in itertools.product(range(h), range(w)):
        cand = []
        for f, l, windowed in ctx:
            for py, px in itertools.product(range(h), range(w)):
                dy, dx = py - y, px - x
                if windowed:
                    if cfg.window == "square" and (abs(dy) > cfg.radius or abs(dx) > cfg.radius):
                        continue
                    if cfg.window == "circle" and dy * dy + dx * dx >= cfg.radius**2:
                        continue
                cand.append((float(query[:, y, x] @ f[:, py, px]), l[:, py, px]))
        cand.sort(key=lambda t: -t[0])
        top = cand[: cfg.topk]
        z = [math.exp(v / cfg.temperature) for v, _ in top]
        for (_, lab), e in zip(top, z):
            out[:, y, x] += e / sum(z) * lab
    return out


def _feats(n, C=8, h=6, w=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, C, h, w, generator=g), dim=1)


@pytest.mark.parametrize(
    "cfg",
    [
        PropagationConfig(topk=5, radius=2, temperature=0.07),
        PropagationConfig(topk=3, radius=2.5, window="circle", temperature=0.05),
        PropagationConfig(topk=7, radius=1, radius_first_frame=False),
        PropagationConfig(topk=1, radius=3),
    ],
)
def test_propagate_frame_equals_naive_loops(cfg):
    f = _feats(4)
    labels = torch.softmax(torch.randn(3, 3, 6, 7, generator=torch.Generator().manual_seed(1)), dim=1)
    ours = propagate_frame(f[3], f[0], labels[0], f[1:3], labels[1:3], cfg)
    ref = _naive_step(f[3], f[0], labels[0], f[1:3], labels[1:3], cfg)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_first_frame_only_context():
    f = _feats(2, seed=2)
    lab = F.one_hot(torch.randint(0, 3, (6, 7), generator=torch.Generator().manual_seed(3)), 3).permute(2, 0, 1).float()
    cfg = PropagationConfig(topk=4, radius=2)
    ours = propagate_frame(f[1], f[0], lab, None, None, cfg)
    assert torch.allclose(ours, _naive_step(f[1], f[0], lab, [], [], cfg), atol=1e-5)


def test_static_video_copies_the_labels():
    """Identical frames with distinct per-pixel features: every pixel's best match is itself."""
    f = _feats(1, C=32, h=8, w=9, seed=4)[0]
    lab = F.one_hot(torch.randint(0, 4, (8, 9), generator=torch.Generator().manual_seed(5)), 4).permute(2, 0, 1).float()
    cfg = PropagationConfig(topk=1, radius=3, context=3)
    preds = list(propagate_video([f] * 6, lab, cfg))
    assert len(preds) == 5
    for p in preds:
        assert torch.equal(p.argmax(0), lab.argmax(0))


def test_context_queue_holds_n_previous_frames():
    """With context n, frame t sees frames 0 and t-n..t-1: compare against explicit calls."""
    f = _feats(6, seed=6)
    lab = torch.softmax(torch.randn(2, 6, 7), 0)
    cfg = PropagationConfig(topk=3, radius=2, context=2)
    preds = list(propagate_video(list(f), lab, cfg))
    p1 = propagate_frame(f[1], f[0], lab, None, None, cfg)
    p2 = propagate_frame(f[2], f[0], lab, f[1:2], p1[None], cfg)
    p3 = propagate_frame(f[3], f[0], lab, f[1:3], torch.stack([p1, p2]), cfg)
    p4 = propagate_frame(f[4], f[0], lab, f[2:4], torch.stack([p2, p3]), cfg)
    for a, b in zip(preds, [p1, p2, p3, p4]):
        assert torch.allclose(a, b, atol=1e-6)


def test_many_objects():
    f = _feats(3, C=16, h=10, w=10, seed=7)
    ids = torch.arange(100).view(10, 10) % 11  # 10 objects + background
    lab = downsample_labels(ids, 11, (10, 10))
    out = list(propagate_video(list(f), lab, PropagationConfig()))
    assert out[0].shape == (11, 10, 10)
    assert torch.allclose(out[0].sum(0), torch.ones(10, 10), atol=1e-5)


def test_downsample_labels_modes():
    ids = torch.zeros(16, 16, dtype=torch.long)
    ids[:, 8:] = 1
    ids[0:2, 0:2] = 2  # a 2x2 object: 1/16 of a 8x8 cell
    near = downsample_labels(ids, 3, (2, 2), "nearest")
    assert torch.equal(near.argmax(0), torch.tensor([[0, 1], [0, 1]]))
    assert set(near.unique().tolist()) == {0.0, 1.0}
    soft = downsample_labels(ids, 3, (2, 2), "bilinear")
    assert torch.allclose(soft.sum(0), torch.ones(2, 2), atol=1e-5)
    assert 0 < soft[2, 0, 0] < 0.5  # the small object survives as a soft fraction


def test_upsample_minmax_is_per_channel():
    lab = torch.tensor([[[0.2, 0.4]], [[0.8, 0.6]]])  # 2 x 1 x 2
    up = upsample_predictions(lab, (1, 2), minmax=True)
    assert torch.allclose(up, torch.tensor([[[0.0, 1.0]], [[1.0, 0.0]]]))
    assert torch.allclose(upsample_predictions(lab, (1, 2), minmax=False), lab)


def test_config_validation():
    with pytest.raises(ValueError):
        PropagationConfig(window="hexagon")
    with pytest.raises(ValueError):
        PropagationConfig(first_label="cubic")
    with pytest.raises(ValueError):
        PropagationConfig(topk=0)


def test_grid_mismatch_is_a_clear_error():
    f = _feats(3)  # 6 x 7 grid
    lab = torch.zeros(2, 5, 7)
    with pytest.raises(ValueError, match="grids differ"):
        propagate_frame(f[2], f[0], lab, f[1:2], lab[None], PropagationConfig())
    with pytest.raises(ValueError, match="grids differ"):
        list(propagate_video(list(f), lab, PropagationConfig()))

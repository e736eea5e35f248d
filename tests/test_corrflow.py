"""CorrFlow pieces against naive references (SPEC section 4)."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from stt.affinity import dense_local_correlation_reference
from stt.color import kmeans, quantize_ab, rgb_to_lab
from stt.losses import corrflow_nll
from stt.corrflow import CorrFlow, CorrFlowEncoder
from stt.propagation import propagate_recursive


def _g(s):
    return torch.Generator().manual_seed(s)


def test_kmeans_recovers_separated_clusters_and_is_a_fixed_point():
    centers = torch.tensor([[-40.0, 10.0], [0.0, 0.0], [30.0, -20.0], [20.0, 50.0]])
    x = torch.cat([c + torch.randn(200, 2, generator=_g(i)) for i, c in enumerate(centers)])
    c = kmeans(x, 4, seed=1)
    matched = torch.cdist(centers, c).min(1).values
    assert (matched < 0.5).all()
    assign = torch.cdist(x, c).argmin(1)
    for j in range(4):  # Lloyd's fixed point: every centroid is the mean of its points
        assert torch.allclose(c[j], x[assign == j].mean(0), atol=1e-4)
    with pytest.raises(ValueError):
        kmeans(x[:3], 4)


def test_quantize_ab_is_nearest_centroid():
    lab = rgb_to_lab(torch.rand(3, 5, 6, generator=_g(2)))
    cents = torch.randn(16, 2, generator=_g(3)) * 30
    q = quantize_ab(lab, cents)
    for y, x in itertools.product(range(5), range(6)):
        d = [float(((lab[1:, y, x] - c) ** 2).sum()) for c in cents]
        assert q[y, x] == min(range(16), key=d.__getitem__)


def test_encoder_shape_stride_and_widths():
    enc = CorrFlowEncoder()
    out = enc(torch.rand(2, 3, 64, 96))
    assert out.shape == (2, 64, 16, 24) and enc.stride == 4
    assert enc.layer3[0].conv1.out_channels == 256 and enc.layer4[0].conv1.out_channels == 256
    assert enc.layer3[0].conv1.stride == (1, 1) and enc.layer2[0].conv1.stride == (2, 2)


def _model(**kw):
    torch.manual_seed(0)
    return CorrFlow(torch.randn(16, 2, generator=_g(4)) * 30, radius=2, total_steps=10, **kw)


def test_attention_is_a_windowed_softmax_of_dot_products():
    m = _model()
    ft, fr = torch.randn(1, 4, 5, 6, generator=_g(5)), torch.randn(1, 4, 5, 6, generator=_g(6))
    y = torch.softmax(torch.randn(1, 16, 5, 6, generator=_g(7)), 1)
    out = m.attend(ft, fr, y)
    for qy, qx in itertools.product(range(5), range(6)):
        cand = [(float(ft[0, :, qy, qx] @ fr[0, :, py, px]), y[0, :, py, px])
                for py, px in itertools.product(range(5), range(6)) if abs(py - qy) <= 2 and abs(px - qx) <= 2]
        z = torch.tensor([c[0] for c in cand]).softmax(0)
        ref = sum(w * c[1] for w, c in zip(z, cand))
        assert torch.allclose(out[0, :, qy, qx], ref, atol=1e-5)


def test_nll_by_hand():
    p = torch.full((1, 4, 2, 2), 0.25)
    p[0, :, 0, 0] = torch.tensor([0.7, 0.1, 0.1, 0.1])
    t = torch.zeros(1, 2, 2, dtype=torch.long)
    expect = -(math.log(0.7 + 1e-8) + 3 * math.log(0.25 + 1e-8)) / 4
    assert corrflow_nll(p, t).item() == pytest.approx(expect, rel=1e-5)


def test_bottleneck_drops_one_or_two_channels_for_the_whole_batch():
    m = _model(drop_prob=1.0, jitter_prob=0.0)
    x = torch.rand(3, 3, 3, 8, 8) + 0.1
    seen = set()
    for s in range(20):
        y = m.bottleneck(x, _g(s))
        zero = [c for c in range(3) if (y[:, :, c] == 0).all()]
        assert len(zero) in (1, 2)
        keep = [c for c in range(3) if c not in zero]
        assert torch.allclose(y[:, :, keep], x[:, :, keep] * 3 / (3 - len(zero)))
        seen.add(len(zero))
    assert seen == {1, 2}
    assert torch.equal(_model(drop_prob=0.0, jitter_prob=0.0).bottleneck(x, _g(0)), x)


def test_scheduled_sampling_epsilon_and_losses():
    m = _model()
    assert m.epsilon() == pytest.approx(0.9)
    m.steps_done.fill_(5)
    assert m.epsilon() == pytest.approx(0.75)
    m.steps_done.fill_(50)
    assert m.epsilon() == pytest.approx(0.6)
    m.steps_done.zero_()
    clip = torch.rand(2, 3, 3, 32, 32, generator=_g(8))
    out = m(clip, _g(9))
    assert int(m.steps_done) == 1
    total = out["forward1"] + out["forward2"] + out["cycle_short"] + 0.1 * out["cycle_long"]
    assert torch.allclose(out["loss"], total)
    out["loss"].backward()
    assert m.encoder.conv1.weight.grad is not None
    no_cycles = _model(cycles=False)(clip, _g(9))
    assert "cycle_long" not in no_cycles and torch.allclose(no_cycles["loss"], no_cycles["forward1"] + no_cycles["forward2"])


def test_frame2_from_ground_truth_when_epsilon_is_one():
    m = _model(scheduled_sampling=False, drop_prob=0.0, jitter_prob=0.0).eval()
    clip = torch.rand(1, 3, 3, 32, 32, generator=_g(10))
    out = m(clip, _g(0))
    labels = quantize_ab(rgb_to_lab(clip), m.centroids)
    f = m.encoder(clip.flatten(0, 1)).view(1, 3, -1, 8, 8)
    y1 = F.one_hot(labels[:, 1, ::4, ::4], 16).permute(0, 3, 1, 2).float()
    p2 = m.attend(f[:, 2], f[:, 1], y1)
    assert out["forward2"].item() == pytest.approx(corrflow_nll(p2, labels[:, 2]).item(), rel=1e-5)


def test_recursive_protocol_carries_hard_labels():
    f = [torch.randn(4, 6, 7, generator=_g(11 + i)) for i in range(3)]
    lab = F.one_hot(torch.randint(0, 3, (6, 7), generator=_g(20)), 3).permute(2, 0, 1).float()
    out = list(propagate_recursive(f, lab, radius=2, hard=True))
    corr = dense_local_correlation_reference(f[1][None], f[0][None], 2).softmax(-1)
    from stt.losses import reconstruct

    y1 = reconstruct(corr, lab[None], 2)[0]
    assert torch.allclose(out[0], y1, atol=1e-5)
    hard = F.one_hot(y1.argmax(0), 3).permute(2, 0, 1).float()
    y2 = reconstruct(dense_local_correlation_reference(f[2][None], f[1][None], 2).softmax(-1), hard[None], 2)[0]
    assert torch.allclose(out[1], y2, atol=1e-5)


def test_corrflow_checkpoint_evaluates_under_both_protocols(tiny_synthetic, tmp_path):
    from stt.features import build_feature_model
    from stt.evaluate import evaluate_davis

    m = _model()
    torch.save({"encoder": m.encoder_state_dict(), "meta": m.checkpoint_meta(), "model": m.state_dict()},
               tmp_path / "cf.pth")
    net, desc = build_feature_model(str(tmp_path / "cf.pth"))
    assert desc["kind"] == "corrflow" and net.stride == 4
    a = evaluate_davis(tiny_synthetic, str(tmp_path / "cf.pth"), tmp_path / "own", protocol="corrflow", progress=False)
    b = evaluate_davis(tiny_synthetic, str(tmp_path / "cf.pth"), tmp_path / "common", progress=False)
    assert 0 <= a["J&F-Mean"] <= 1 and 0 <= b["J&F-Mean"] <= 1
    import json

    settings = json.loads((tmp_path / "common" / "settings.json").read_text())
    assert settings["propagation"]["radius"] == 24  # 12 stride-8 cells = 24 stride-4 cells
    with pytest.raises(ValueError, match="CorrFlow checkpoint"):
        evaluate_davis(tiny_synthetic, "lab", tmp_path / "x", protocol="corrflow", progress=False)


def test_kmeans_with_point_subsampling_is_deterministic_and_recovers_clusters():
    centers = torch.tensor([[-40.0, 10.0], [0.0, 0.0], [30.0, -20.0], [20.0, 50.0]])
    x = torch.cat([c + torch.randn(20_000, 2, generator=_g(i)) for i, c in enumerate(centers)])
    x = x[torch.randperm(len(x), generator=_g(9))]
    a = kmeans(x, 4, seed=3, max_points=2_000)
    assert torch.equal(a, kmeans(x, 4, seed=3, max_points=2_000))  # same seed, same centroids
    assert torch.equal(a, kmeans(x, 4, seed=3, max_points=2_000, device="cpu", progress=True))
    for c in (a, kmeans(x, 4, seed=4, max_points=2_000)):
        assert (torch.cdist(centers, c).min(1).values < 0.2).all()  # 500 points a cluster: mean within ~0.05
    assert torch.equal(kmeans(x[:3000], 4, seed=3), kmeans(x[:3000], 4, seed=3, max_points=3000))  # no-op


def _color_clusters_one_by_one(videos, k, n_frames, seed):
    """The reference: every picked frame read on its own, every 4th pixel, all points clustered."""
    index = videos.frame_index()
    picks = torch.randperm(len(index), generator=_g(seed))[: min(n_frames, len(index))].tolist()
    ab = []
    for i in picks:
        v, t = index[i]
        frame = torch.from_numpy(videos.frames(v, [t])[0]).permute(2, 0, 1).float() / 255
        ab.append(rgb_to_lab(frame[:, ::4, ::4])[1:].flatten(1).t())
    return torch.cat(ab)


@pytest.fixture(scope="module")
def few_videos(tmp_path_factory):
    from test_data import write_mp4

    from stt.video import VideoFrames
    from stt.synthetic import make_synthetic_videos, render_sequence

    root = tmp_path_factory.mktemp("cf-videos")
    make_synthetic_videos(root / "folders", n_videos=2, n_frames=12, size=(48, 64), seed=5)
    write_mp4(root / "clip.mp4", render_sequence(21, 40, (40, 56))[0])
    return VideoFrames(root, None, fps=7.5, short_side=None, progress=False)


def test_color_clusters_reads_grouped_the_frames_read_one_by_one(few_videos, monkeypatch):
    import stt.corrflow

    seen = []
    real = stt.corrflow.kmeans
    monkeypatch.setattr(stt.corrflow, "kmeans", lambda x, k, **kw: seen.append(x) or real(x, k, **kw))
    ref = _color_clusters_one_by_one(few_videos, 4, 20, seed=2)
    c = stt.corrflow.color_clusters(few_videos, 4, 20, seed=2, device="cpu", progress=False, workers=2)
    assert seen[0].shape == ref.shape and torch.allclose(seen[0], ref, atol=1e-4)  # same points, same order
    assert torch.allclose(c, real(ref, 4, seed=2), atol=1e-3)
    # Bounded: a uniform sample of max_points of those points, the same for the same seed.
    c1 = stt.corrflow.color_clusters(few_videos, 4, 20, seed=2, max_points=500, progress=False, workers=1)
    c2 = stt.corrflow.color_clusters(few_videos, 4, 20, seed=2, max_points=500, progress=False, workers=3)
    assert torch.equal(c1, c2) and seen[1].shape == (500, 2) and torch.equal(seen[1], seen[2])
    d = torch.cdist(seen[1], ref, compute_mode="donot_use_mm_for_euclid_dist")
    assert (d.min(1).values < 1e-3).all()  # every kept point is one of the frames' points


def test_stream_sample_is_uniform_without_replacement_and_keeps_order():
    from stt.color import StreamSample

    def run(seed, size, blocks=10, block=100):
        s = StreamSample(size, seed)
        for b in range(blocks):
            order = torch.arange(b * block, (b + 1) * block)
            keep = s.offer(order)
            s.add(order[keep].double()[:, None])  # the rows are their own positions
        return s.rows()[:, 0].long()

    assert torch.equal(run(0, 5000), torch.arange(1000))  # room for all: every row, in order
    hits = torch.zeros(1000)
    for seed in range(400):
        r = run(seed, 50)
        assert len(r) == 50 and len(set(r.tolist())) == 50 and torch.equal(r, r.sort().values)
        hits[r] += 1
    assert torch.equal(run(3, 50), run(3, 50))
    # Each row is kept with probability 50/1000: 20 of 400 runs, sd ~4.4; early and late blocks alike.
    assert abs(hits.mean() - 20) < 1e-9 and hits.std() < 6
    assert abs(hits[:100].mean() - hits[-100:].mean()) < 2

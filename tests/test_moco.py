"""MoCo v2 pieces against naive computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from stt.losses import info_nce
from stt.models import MoCo


def test_info_nce_equals_naive_formula():
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    k = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(8, 7, generator=g), dim=0)
    loss, logits = info_nce(q, k, queue, 0.2)
    naive = 0.0
    for i in range(5):
        pos = math.exp(float(q[i] @ k[i]) / 0.2)
        neg = sum(math.exp(float(q[i] @ queue[:, j]) / 0.2) for j in range(7))
        naive += -math.log(pos / (pos + neg))
    assert loss.item() == pytest.approx(naive / 5, rel=1e-5)
    assert logits.shape == (5, 8)


def _small_moco(**kw):
    torch.manual_seed(0)
    return MoCo("resnet18", dim=8, queue_size=10, **kw)


def test_queue_replaces_oldest_and_wraps():
    m = _small_moco()
    old = m.queue.clone()
    k1 = F.normalize(torch.randn(4, 8), dim=1)
    m.enqueue(k1)
    assert torch.equal(m.queue[:, :4], k1.t()) and torch.equal(m.queue[:, 4:], old[:, 4:])
    m.enqueue(F.normalize(torch.randn(4, 8), dim=1))
    k3 = F.normalize(torch.randn(4, 8), dim=1)
    m.enqueue(k3)  # positions 8, 9, 0, 1
    assert int(m.queue_ptr) == 2
    assert torch.equal(m.queue[:, [8, 9, 0, 1]], k3.t())


def test_momentum_update_formula():
    m = _small_moco(momentum=0.9)
    with torch.no_grad():
        for p in m.encoder_q.parameters():
            p.add_(1.0)
    before_k = [p.clone() for p in m.encoder_k.parameters()]
    q = [p.clone() for p in m.encoder_q.parameters()]
    m.momentum_update()
    for a, b, c in zip(m.encoder_k.parameters(), before_k, q):
        assert torch.allclose(a, 0.9 * b + 0.1 * c)


def test_shuffled_keys_are_unshuffled():
    m = _small_moco(bn_splits=2).eval()  # eval: BN uses running stats, so order must not matter
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        plain = m.embed(m.encoder_k, m.head_k, x)
        shuffled = m.keys(x, torch.Generator().manual_seed(3))
    assert torch.allclose(plain, shuffled, atol=1e-5)


def test_forward_trains_only_the_query_side():
    m = _small_moco(bn_splits=2)
    out = m((torch.rand(4, 3, 32, 32), torch.rand(4, 3, 32, 32)), gen=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and 0 <= out["acc"] <= 1
    assert m.encoder_q.conv1.weight.grad is not None and m.encoder_k.conv1.weight.grad is None
    assert int(m.queue_ptr) == 4

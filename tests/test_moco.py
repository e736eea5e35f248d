"""MoCo v2 pieces against naive computations."""
import math

import pytest
import torch
import torch.nn.functional as F

from stt.losses import info_nce
from stt.moco import MoCo


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


def test_info_nce_leaves_excluded_entries_out():
    """Excluded queue entries (views of the query's own instance) are not negatives."""
    g = torch.Generator().manual_seed(1)
    q = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    k = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    queue = F.normalize(torch.randn(8, 6, generator=g), dim=0)
    exclude = torch.rand(4, 6, generator=g) < 0.5
    exclude[0] = True  # a query with no negative at all: loss 0
    loss, logits = info_nce(q, k, queue, 0.2, exclude)
    naive = 0.0
    for i in range(4):
        pos = math.exp(float(q[i] @ k[i]) / 0.2)
        neg = sum(math.exp(float(q[i] @ queue[:, j]) / 0.2) for j in range(6) if not exclude[i, j])
        naive += -math.log(pos / (pos + neg))
    assert loss.item() == pytest.approx(naive / 4, rel=1e-5)
    assert torch.isinf(logits[:, 1:][exclude]).all()


def test_queue_remembers_instances_and_excludes_them():
    m = _small_moco(bn_splits=2)
    x = torch.rand(4, 3, 32, 32)
    m((x, x, torch.tensor([3, 3, 5, 7])), gen=torch.Generator().manual_seed(0))
    assert m.queue_ids[:4].tolist() == [3, 3, 5, 7] and (m.queue_ids[4:] == -1).all()
    out = m((x, x, torch.tensor([3, 9, 9, 5])), gen=torch.Generator().manual_seed(1))
    # query 0 (instance 3) skips two queue entries, query 3 (instance 5) one, the others none
    assert out["excluded"].item() == pytest.approx(3 / 4)
    m.enqueue(F.normalize(torch.randn(2, 8), dim=1))  # keys of unknown instance
    assert m.queue_ids[8:].tolist() == [-1, -1]
    off = _small_moco(bn_splits=2, exclude_same_instance=False)
    assert "excluded" not in off((x, x, torch.tensor([3, 3, 5, 7])), gen=torch.Generator().manual_seed(0))


def test_queue_is_sized_from_the_data(capsys):
    from stt.moco import moco_queue_size

    assert moco_queue_size("auto", 2657, 0.25) == 664
    assert moco_queue_size("auto", 1_281_167, 0.25) == 65536  # ImageNet: the papers' queue
    assert moco_queue_size(512, 2657, 0.25) == 512
    assert moco_queue_size(65536, 2657, 0.25) == 664  # a preset's value is clamped, saying so
    assert "clamped to 664" in capsys.readouterr().out
    with pytest.raises(ValueError, match="4096 keys > 0.25 x 2657 training images = 664"):
        moco_queue_size(4096, 2657, 0.25, preset=False)  # the user's own value is refused


def test_spatial_recipe_refuses_a_queue_larger_than_its_data(tmp_path, monkeypatch):
    import numpy as np
    from PIL import Image

    from stt.moco import train_spatial

    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    for i in range(12):
        Image.fromarray(np.full((24, 24, 3), 20 * i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    with pytest.raises(ValueError, match="use queue_size <= 3"):
        train_spatial(tmp_path, tmp_path / "run", "smoke", progress=False, queue_size=64)
    ck = train_spatial(tmp_path, tmp_path / "run", "smoke", progress=False, steps=1, image_size=32)
    assert torch.load(ck, weights_only=True)["model"]["queue"].shape == (128, 3)  # 0.25 x 12 images

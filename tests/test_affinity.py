import itertools

import pytest
import torch
import torch.nn.functional as F

from stt.affinity import dense_topk_reference, global_topk, window_mask, windowed_topk


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g), dim=-3)


def _naive_topk(query, keys, k, radius, shape):
    """Loops over every query and every key position: the definition, nothing vectorised."""
    C, h, w = query.shape
    vals, idxs = [], []
    for y, x in itertools.product(range(h), range(w)):
        cand = []
        for n in range(keys.shape[0]):
            for py, px in itertools.product(range(h), range(w)):
                dy, dx = py - y, px - x
                inside = (abs(dy) <= radius and abs(dx) <= radius) if shape == "square" else (dy * dy + dx * dx < radius * radius)
                if radius is None or inside:
                    cand.append((float(query[:, y, x] @ keys[n, :, py, px]), n * h * w + py * w + px))
        cand.sort(key=lambda t: -t[0])
        vals.append([c[0] for c in cand[:k]])
        idxs.append([c[1] for c in cand[:k]])
    return torch.tensor(vals), torch.tensor(idxs)


@pytest.mark.parametrize("shape, radius", [("square", 2), ("circle", 2.5), ("square", 1), ("circle", 1)])
def test_windowed_topk_equals_naive_loops(shape, radius):
    q, keys = _rand(6, 5, 7, seed=1), _rand(3, 6, 5, 7, seed=2)
    k = 4 if radius > 1 or shape == "square" else 1  # circle r=1 holds only the centre
    v, i = windowed_topk(q, keys, k, radius, shape, tile=3)
    nv, ni = _naive_topk(q, keys, k, radius, shape)
    assert torch.allclose(v, nv, atol=1e-6)
    assert torch.equal(i, ni)


@pytest.mark.parametrize(
    "h, w, n, radius, shape, tile, k",
    [
        (13, 17, 3, 3, "square", 4, 10),
        (13, 17, 3, 3.5, "circle", 5, 10),
        (9, 30, 2, 5, "square", 10, 1),
        (5, 5, 2, 12, "square", 3, 10),  # window larger than the map
        (30, 54, 4, 12, "square", 10, 10),  # DAVIS `small` grid (240p at /8)
    ],
)
def test_windowed_topk_equals_dense_reference(h, w, n, radius, shape, tile, k):
    q, keys = _rand(16, h, w, seed=3), _rand(n, 16, h, w, seed=4)
    v, i = windowed_topk(q, keys, k, radius, shape, tile=tile)
    dv, di = dense_topk_reference(q, keys, k, radius, shape)
    assert torch.equal(torch.isfinite(v), torch.isfinite(dv))
    fin = torch.isfinite(dv)
    assert torch.allclose(v[fin], dv[fin], atol=1e-6)
    assert (i[fin] == di[fin]).float().mean() > 0.999  # float ties may swap an index


def test_result_does_not_depend_on_tile_size():
    q, keys = _rand(8, 11, 19, seed=5), _rand(2, 8, 11, 19, seed=6)
    ref = windowed_topk(q, keys, 6, 4, tile=1)
    for tile in (2, 3, 7, 19, 25):
        v, i = windowed_topk(q, keys, 6, 4, tile=tile)
        assert torch.allclose(v, ref[0], atol=1e-6) and torch.equal(i, ref[1])


@pytest.mark.parametrize("shape, radius", [("square", 3), ("circle", 2.5)])
def test_result_does_not_depend_on_chunking(shape, radius):
    """A budget so small that every strip and frame is its own chunk, a middle one, and one
    chunk for everything: identical values and indices."""
    q, keys = _rand(8, 13, 22, seed=9), _rand(5, 8, 13, 22, seed=10)
    one = windowed_topk(q, keys, 7, radius, shape, tile=4, max_bytes=2**40)
    for budget in (1, 60_000):
        v, i = windowed_topk(q, keys, 7, radius, shape, tile=4, max_bytes=budget)
        assert torch.equal(v, one[0]) and torch.equal(i, one[1])


def test_chunk_sizes_follow_the_budget():
    from stt.affinity import _TileGeometry

    geo = _TileGeometry(13, 22, 3, "square", 4, "cpu")  # 6 strips
    assert geo.chunks(5, 8, 4, 1) == (1, 1)
    assert geo.chunks(5, 8, 4, 2**40) == (geo.ntx, 5)
    strips, frames = geo.chunks(5, 8, 4, 60_000)
    assert (strips, frames) == (1, 1) or 1 < strips * frames < geo.ntx * 5


def test_ties_across_frames_keep_the_dense_values():
    """Identical frames: every score appears in every frame; the values are still the dense ones."""
    q = _rand(6, 9, 10, seed=11)
    keys = _rand(1, 6, 9, 10, seed=12).expand(4, -1, -1, -1)
    v, i = windowed_topk(q, keys, 10, 2, tile=3, max_bytes=1)
    dv, _ = dense_topk_reference(q, keys, 10, 2)
    assert torch.allclose(v, dv, atol=1e-6)
    dense = q.flatten(1).t() @ keys.permute(1, 0, 2, 3).reshape(6, -1)  # HW x N HW
    assert torch.allclose(torch.gather(dense, 1, i), v, atol=1e-6)  # the indices point at those values
    assert len(set(i[0].tolist())) == 10


def test_missing_candidates_are_minus_inf():
    q, keys = _rand(4, 3, 3), _rand(1, 4, 3, 3)
    v, _ = windowed_topk(q, keys, 9, 1, "square", tile=2)  # corner windows hold 4 positions
    assert torch.isinf(v[0, 4:]).all() and torch.isfinite(v[4]).all()


def test_global_topk_equals_dense_reference():
    q, keys = _rand(8, 10, 12, seed=7), _rand(2, 8, 10, 12, seed=8)
    v, i = global_topk(q, keys, 5, chunk=7)
    dv, di = dense_topk_reference(q, keys, 5, None)
    assert torch.allclose(v, dv, atol=1e-6) and torch.equal(i, di)


def test_window_mask_shapes():
    d = torch.arange(-3, 4)
    dy, dx = torch.meshgrid(d, d, indexing="ij")
    assert window_mask(dy, dx, 2, "square").sum() == 25
    assert window_mask(dy, dx, 2, "circle").sum() == 9  # dist < 2: centre, 4 at 1, 4 at sqrt 2
    with pytest.raises(ValueError):
        window_mask(dy, dx, 2, "hexagon")

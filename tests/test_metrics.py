"""DAVIS metrics against hand-computed values and an independent loop implementation."""
import csv
import itertools

import numpy as np
import pytest

from stt.metrics import (
    DAVIS_GLOBAL_COLUMNS,
    boundary_tolerance,
    db_statistics,
    dilate_disk,
    disk,
    evaluate_davis_sequence,
    f_measure,
    jaccard,
    seg2bmap,
    summarize_davis,
    write_davis_csvs,
)


def dot(h, w, y, x):
    m = np.zeros((h, w), bool)
    m[y, x] = True
    return m


# ------------------------------------------------------------------ J


def test_jaccard_by_hand():
    g = np.zeros((4, 4), bool)
    g[:2] = True  # 8 pixels
    s = np.zeros((4, 4), bool)
    s[1:3] = True  # 8 pixels, 4 shared
    assert jaccard(g, s) == pytest.approx(4 / 12)
    assert jaccard(g, g) == 1.0
    assert jaccard(g, ~g) == 0.0
    assert jaccard(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0  # both empty
    assert jaccard(np.zeros((3, 3)), np.ones((3, 3))) == 0.0
    np.testing.assert_allclose(jaccard(np.stack([g, g]), np.stack([s, g])), [1 / 3, 1.0])
    with pytest.raises(ValueError):
        jaccard(np.zeros((2, 2)), np.zeros((2, 3)))


# ------------------------------------------------------------------ boundaries


def test_seg2bmap_single_pixel_by_hand():
    b = seg2bmap(dot(3, 3, 1, 1))
    np.testing.assert_array_equal(b, [[1, 1, 0], [1, 1, 0], [0, 0, 0]])


def test_seg2bmap_last_row_and_column_rules():
    seg = np.array([[0, 0, 0], [0, 0, 1], [0, 1, 1]], bool)
    # row 2 (last): compares to the right only -> (2,0) differs from (2,1); (2,1)==(2,2).
    # col 2 (last): compares below only -> (0,2) differs from (1,2); (1,2)==(2,2).
    # (2,2) is never boundary.
    expect = np.array([[0, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
    np.testing.assert_array_equal(seg2bmap(seg), expect)


def test_seg2bmap_square_count():
    seg = np.zeros((100, 100), bool)
    seg[20:60, 20:60] = True
    # Outside column 19 (rows 19..59) and row 19 (cols 20..59), inside column 59 (rows 20..59)
    # and row 59 (cols 20..58): 41 + 40 + 40 + 39.
    assert seg2bmap(seg).sum() == 160


def test_tolerance():
    assert boundary_tolerance((480, 854)) == 8  # ceil(0.008 * 979.6)
    assert boundary_tolerance((240, 427)) == 4
    assert boundary_tolerance((10, 10)) == 1
    assert boundary_tolerance((10, 10), bound_th=3) == 3


def test_disk_footprint():
    assert disk(1).sum() == 5 and disk(2).sum() == 13 and disk(8).shape == (17, 17)


def test_dilate_disk_equals_loops():
    rng = np.random.default_rng(0)
    m = rng.random((2, 15, 17)) > 0.93
    m[1] = False  # an empty frame stays empty
    r = 3
    ref = np.zeros_like(m)
    for t, y, x in itertools.product(range(2), range(15), range(17)):
        for dy, dx in itertools.product(range(-r, r + 1), repeat=2):
            if dy * dy + dx * dx <= r * r and 0 <= y + dy < 15 and 0 <= x + dx < 17 and m[t, y + dy, x + dx]:
                ref[t, y, x] = True
    np.testing.assert_array_equal(dilate_disk(m, r), ref)


# ------------------------------------------------------------------ F


def test_f_by_hand_two_dots():
    gt = dot(10, 10, 5, 5)  # boundary (4,4) (4,5) (5,4) (5,5); tolerance 1
    assert f_measure(gt, dot(10, 10, 5, 6)) == pytest.approx(1.0)  # every boundary pixel within 1
    # Two columns apart: half of each boundary is within 1 pixel -> P = R = 0.5
    assert f_measure(gt, dot(10, 10, 5, 7)) == pytest.approx(0.5)
    assert f_measure(gt, dot(10, 10, 5, 9)) == 0.0


def test_f_edge_cases():
    empty, obj = np.zeros((10, 10), bool), dot(10, 10, 5, 5)
    assert f_measure(empty, empty) == 1.0
    assert f_measure(obj, empty) == 0.0  # nothing predicted: P = 1, R = 0
    assert f_measure(empty, obj) == 0.0  # nothing to find: P = 0, R = 1


def _f_loops(gt, pred, bound_th=0.008):
    """Independent F: boundary pixels matched by explicit distance search."""
    r = int(np.ceil(bound_th * np.hypot(*gt.shape)))
    gb, pb = seg2bmap(gt), seg2bmap(pred)

    def matched(a, b):
        pts = np.argwhere(b)
        return sum(1 for y, x in np.argwhere(a) if len(pts) and (((pts - (y, x)) ** 2).sum(1) <= r * r).any())

    ng, npr = gb.sum(), pb.sum()
    if ng == 0 and npr == 0:
        return 1.0
    P = 1.0 if npr == 0 else matched(pb, gb) / npr
    R = 1.0 if ng == 0 else matched(gb, pb) / ng
    return 0.0 if P + R == 0 else 2 * P * R / (P + R)


def test_f_equals_loops_on_random_shapes():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:60, :80]
    for _ in range(5):
        cy, cx, r = rng.integers(10, 50), rng.integers(10, 70), rng.integers(4, 15)
        gt = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        pred = (yy - cy - rng.integers(-4, 5)) ** 2 + (xx - cx - rng.integers(-4, 5)) ** 2 < (r + rng.integers(-3, 4)) ** 2
        assert f_measure(gt, pred) == pytest.approx(_f_loops(gt, pred))


# ------------------------------------------------------------------ statistics and sequences


def test_db_statistics_by_hand():
    v = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    mean, recall, decay = db_statistics(v)
    assert mean == pytest.approx(0.55)
    assert recall == pytest.approx(0.5)  # 0.5 is not > 0.5
    # bins: round(linspace(1, 10, 5)) - 1 = [0, 2, 5, 7, 9]; first v[0:3], last v[7:10]
    assert decay == pytest.approx(0.9 - 0.2)
    assert db_statistics(np.array([0.7])) == pytest.approx((0.7, 1.0, 0.0))


def test_sequence_excludes_first_and_last_frames():
    gt = np.zeros((5, 8, 8), np.uint8)
    gt[:, 2:6, 2:6] = 1
    pred = gt.copy()
    pred[0] = 0
    pred[-1] = 0  # wrong, but not scored
    res = evaluate_davis_sequence(gt, pred)
    assert res["objects"] == 1 and res["J"].shape == (1, 3)
    np.testing.assert_allclose(res["J"], 1.0)
    np.testing.assert_allclose(res["F"], 1.0)


def test_object_never_predicted_scores_zero_and_extra_ids_raise():
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[:, :4] = 1
    gt[:, 4:, 4:] = 2
    pred = np.where(gt == 2, 0, gt)
    res = evaluate_davis_sequence(gt, pred)
    np.testing.assert_allclose(res["J"][1], 0.0)
    with pytest.raises(ValueError, match="object id 3"):
        evaluate_davis_sequence(gt, np.full_like(gt, 3))


def test_global_average_is_over_objects_not_sequences(tmp_path):
    per_seq = {
        "a": {"J": np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]), "F": np.array([[1.0] * 3, [0.5] * 3]), "objects": 2},
        "b": {"J": np.array([[0.4, 0.4, 0.4]]), "F": np.array([[0.4] * 3]), "objects": 1},
    }
    g, rows = summarize_davis(per_seq)
    assert g["J-Mean"] == pytest.approx((1 + 0 + 0.4) / 3)  # per sequence would be (0.5 + 0.4) / 2
    assert g["F-Mean"] == pytest.approx((1 + 0.5 + 0.4) / 3)
    assert g["J&F-Mean"] == pytest.approx((g["J-Mean"] + g["F-Mean"]) / 2)
    assert g["J-Recall"] == pytest.approx(1 / 3)
    assert [r[0] for r in rows] == ["a_1", "a_2", "b_1"]
    gp, sp = write_davis_csvs(tmp_path, g, rows)
    assert gp.name == "global_results-val.csv" and sp.name == "per-sequence_results-val.csv"
    with open(gp) as f:
        header, values = list(csv.reader(f))
    assert header == DAVIS_GLOBAL_COLUMNS
    assert values[1] == f"{(1 + 0 + 0.4) / 3:.3f}"
    with open(sp) as f:
        assert list(csv.reader(f))[0] == ["Sequence", "J-Mean", "F-Mean"]


def test_bootstrap_interval_of_the_mean():
    from stt.metrics import bootstrap_ci

    assert bootstrap_ci([3.0] * 8) == (3.0, 3.0)
    x = np.random.default_rng(1).normal(10.0, 2.0, 400)
    lo, hi = bootstrap_ci(x)
    half = 1.96 * x.std() / np.sqrt(len(x))  # the normal approximation
    assert lo < x.mean() < hi
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.1)
    assert bootstrap_ci(x) == (lo, hi)  # seeded


def test_paired_difference_uses_common_sequences_only():
    from stt.metrics import bootstrap_ci, paired_difference

    a = {"s1": 0.50, "s2": 0.70, "s3": 0.20, "only-a": 0.9}
    b = {"s1": 0.40, "s2": 0.65, "s3": 0.30, "only-b": 0.1}
    mean, lo, hi, n = paired_difference(a, b)
    assert n == 3
    assert mean == pytest.approx(100 * (0.10 + 0.05 - 0.10) / 3)
    assert (lo, hi) == pytest.approx(bootstrap_ci([10.0, 5.0, -10.0]))  # same sequences, order and seed
    # a constant offset is clear however spread the sequences are: pairing cancels the spread
    c = {k: v + 0.02 for k, v in a.items()}
    mean, lo, hi, _ = paired_difference(c, a)
    assert mean == pytest.approx(2.0) and lo == pytest.approx(2.0) and hi == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no sequence in common"):
        paired_difference({"x": 1.0}, {"y": 1.0})


def test_pooled_runs_average_each_sequence_over_the_runs_that_scored_it():
    from stt.metrics import pooled

    runs = [{"s1": 0.5, "s2": 0.7, "s3": 0.1}, {"s1": 0.3, "s2": 0.9}, {"s1": 0.4, "s2": 0.8, "s4": 1.0}]
    assert pooled(runs) == pytest.approx({"s1": 0.4, "s2": 0.8})
    assert pooled(runs[:1]) == runs[0]


def test_per_sequence_jf_averages_objects(tmp_path):
    from stt.evaluate import per_sequence_jf

    (tmp_path / "per-sequence_results-val.csv").write_text(
        "Sequence,J-Mean,F-Mean\nbike-packing_1,0.5,0.7\nbike-packing_2,0.1,0.3\ncows_1,0.9,0.8\n")
    r = per_sequence_jf(tmp_path)
    assert r == pytest.approx({"bike-packing": 0.4, "cows": 0.85})
    with pytest.raises(FileNotFoundError, match="per-sequence"):
        per_sequence_jf(tmp_path / "none")

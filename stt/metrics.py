"""Metrics (SPEC section 6), equal to the official implementations.

DAVIS (davis2017-evaluation, semi-supervised task): region J (Jaccard), boundary F
(seg2bmap + disk dilation, tolerance ``ceil(0.008 * ||(H, W)||)``), per-object mean / recall /
decay, first and last frame excluded, global numbers averaged over objects. Vectorised over
frames; every function is tested against hand-computed values in ``tests/test_metrics.py``.

Deliberate differences from the official code, none of which changes a number:
- the official ``db_statistics`` casts bin indices to uint8 (wrong beyond 256 frames); we use
  int64, which agrees wherever the official code is correct;
- a predicted object that never appears is scored as an empty mask (as the official code did
  before it started to exit on that case).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy import ndimage

# ---------------------------------------------------------------------------- J: region


def jaccard(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """J = |G & S| / |G | S| per frame (last two dims); 1 when both are empty."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"annotation {gt.shape} and segmentation {pred.shape} shapes differ")
    inter = (gt & pred).sum(axis=(-2, -1))
    union = (gt | pred).sum(axis=(-2, -1))
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


# ---------------------------------------------------------------------------- F: boundary


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """1-pixel boundary map (last two dims): a pixel is boundary if it differs from its right,
    lower or lower-right neighbour; last row compares to the right only, last column to the
    lower only, and the bottom-right pixel is never boundary (as the official code)."""
    seg = np.asarray(seg, bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[..., :, :-1] = seg[..., :, 1:]
    s[..., :-1, :] = seg[..., 1:, :]
    se[..., :-1, :-1] = seg[..., 1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[..., -1, :] = seg[..., -1, :] ^ e[..., -1, :]
    b[..., :, -1] = seg[..., :, -1] ^ s[..., :, -1]
    b[..., -1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """Disk footprint ``x^2 + y^2 <= r^2`` of size (2r+1)^2 (skimage.morphology.disk)."""
    r = int(radius)
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return (x * x + y * y) <= r * r


def dilate_disk(masks: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a stack of masks (... x H x W) by :func:`disk` (radius) with nothing
    outside the image, as ``cv2.dilate(mask, disk(r))``. Computed exactly as "Euclidean
    distance to the nearest set pixel <= r", which is 3x faster than a 2-D convolution."""
    masks = np.asarray(masks, bool)
    flat = masks.reshape(-1, *masks.shape[-2:])
    out = np.zeros_like(flat)
    for i, m in enumerate(flat):
        if m.any():
            out[i] = ndimage.distance_transform_edt(~m) <= radius
    return out.reshape(masks.shape)


def boundary_tolerance(shape: tuple[int, int], bound_th: float = 0.008) -> int:
    """Tolerance in pixels: ``bound_th`` if >= 1, else ``ceil(bound_th * ||(H, W)||)``."""
    return int(bound_th if bound_th >= 1 else math.ceil(bound_th * math.hypot(*shape)))


def f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = 0.008) -> np.ndarray:
    """Boundary F per frame (last two dims), with the official edge cases:
    no predicted and no true boundary -> 1; only one of them empty -> P or R = 0, F = 0."""
    gt, pred = np.asarray(gt, bool), np.asarray(pred, bool)
    if gt.shape != pred.shape:
        raise ValueError(f"annotation {gt.shape} and segmentation {pred.shape} shapes differ")
    r = boundary_tolerance(gt.shape[-2:], bound_th)
    gt_b, pr_b = seg2bmap(gt), seg2bmap(pred)
    gt_match = (gt_b & dilate_disk(pr_b, r)).sum(axis=(-2, -1))
    pr_match = (pr_b & dilate_disk(gt_b, r)).sum(axis=(-2, -1))
    n_gt, n_pr = gt_b.sum(axis=(-2, -1)), pr_b.sum(axis=(-2, -1))
    # Empty boundaries count as perfectly precise / recalled; with only one side empty the
    # other side's ratio is 0 by construction, so F = 0 there and F = 1 when both are empty.
    precision = np.where(n_pr == 0, 1.0, pr_match / np.maximum(n_pr, 1))
    recall = np.where(n_gt == 0, 1.0, gt_match / np.maximum(n_gt, 1))
    denom = precision + recall
    return np.where(denom == 0, 0.0, 2 * precision * recall / np.where(denom == 0, 1, denom))


# ---------------------------------------------------------------------------- statistics


def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall = mean(v > 0.5), decay = mean(first quarter) - mean(last quarter)).

    The quarters are the official bins ``round(linspace(1, n, 5)) - 1`` (inclusive ends).
    """
    v = np.asarray(values, dtype=np.float64)
    mean = float(np.nanmean(v))
    recall = float(np.nanmean(v > 0.5))
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[i] : ids[i + 1] + 1] for i in range(4)]
    decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


def evaluate_davis_sequence(gt: np.ndarray, pred: np.ndarray, n_objects: int | None = None) -> dict:
    """Score one sequence the way davis2017-evaluation does (semi-supervised).

    Args:
        gt, pred: T x H x W integer id maps of the whole sequence (frame 0 included).
        n_objects: objects to score (default: max id of the first ground-truth frame).

    Returns:
        ``{"J": [n_obj x (T-2)], "F": [...], "objects": n}``, frames 1..T-2 only.
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} shapes differ")
    if gt.shape[0] < 3:
        raise ValueError(f"a sequence needs at least 3 frames to be scored, got {gt.shape[0]}")
    n = int(gt[0].max()) if n_objects is None else n_objects
    gt, pred = gt[1:-1], pred[1:-1]
    if pred.max(initial=0) > n:
        raise ValueError(f"prediction has object id {int(pred.max())} but the sequence has {n} objects")
    J = np.stack([jaccard(gt == i, pred == i) for i in range(1, n + 1)]) if n else np.zeros((0, len(gt)))
    Fm = np.stack([f_measure(gt == i, pred == i) for i in range(1, n + 1)]) if n else np.zeros((0, len(gt)))
    return {"J": J, "F": Fm, "objects": n}


DAVIS_GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]


def summarize_davis(per_sequence: dict[str, dict]) -> tuple[dict, list[tuple[str, float, float]]]:
    """Global numbers (averaged over objects, not sequences) and per-object rows."""
    stats = {"J": [], "F": []}
    rows = []
    for seq, res in per_sequence.items():
        for i in range(res["objects"]):
            sj, sf = db_statistics(res["J"][i]), db_statistics(res["F"][i])
            stats["J"].append(sj)
            stats["F"].append(sf)
            rows.append((f"{seq}_{i + 1}", sj[0], sf[0]))
    if not rows:
        raise ValueError(f"no object to score in {len(per_sequence)} sequence(s): every first mask is empty")
    J = np.array(stats["J"]).reshape(-1, 3)
    Fm = np.array(stats["F"]).reshape(-1, 3)
    jm, jr, jd = J.mean(0)
    fm, fr, fd = Fm.mean(0)
    g = dict(zip(DAVIS_GLOBAL_COLUMNS, [(jm + fm) / 2, jm, jr, jd, fm, fr, fd]))
    return {k: float(v) for k, v in g.items()}, rows


def write_davis_csvs(out_dir: str | Path, global_res: dict, rows: list, subset: str = "val") -> tuple[Path, Path]:
    """``global_results-<subset>.csv`` and ``per-sequence_results-<subset>.csv`` (official names,
    %.3f), each written only when its content changes (:func:`stt.checkpoint.write_text`)."""
    import io

    from .checkpoint import write_text

    def table(header, lines) -> str:
        buf = io.StringIO(newline="")
        w = csv.writer(buf)
        w.writerow(header)
        w.writerows(lines)
        return buf.getvalue()

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    g_path = out_dir / f"global_results-{subset}.csv"
    s_path = out_dir / f"per-sequence_results-{subset}.csv"
    write_text(g_path, table(DAVIS_GLOBAL_COLUMNS, [[f"{global_res[c]:.3f}" for c in DAVIS_GLOBAL_COLUMNS]]))
    write_text(s_path, table(["Sequence", "J-Mean", "F-Mean"], [[n, f"{j:.3f}", f"{fm:.3f}"] for n, j, fm in rows]))
    return g_path, s_path


def bootstrap_ci(values, n: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-sequence J&F, or paired
    per-sequence differences between two models): how far the mean could move with another draw
    of sequences of the same kind. Seeded, so a results table is reproducible."""
    x = np.asarray(values, dtype=np.float64)
    means = x[np.random.default_rng(seed).integers(0, len(x), (n, len(x)))].mean(1)
    tail = 100 * (1 - level) / 2
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def paired_difference(a: dict, b: dict, scale: float = 100.0, **kw) -> tuple[float, float, float, int]:
    """Model ``a`` minus model ``b``, paired by sequence: ``a`` and ``b`` map a sequence to its
    score (:func:`stt.evaluate.per_sequence_jf`). Returns the mean difference over the sequences
    both have, its :func:`bootstrap_ci` interval (times ``scale``: percent by default) and the
    number of sequences. Pairing cancels the spread between easy and hard sequences, so a
    difference is *clear* when its interval excludes 0."""
    keys = sorted(set(a) & set(b))
    if not keys:
        raise ValueError(f"no sequence in common between {sorted(a)[:3]}... and {sorted(b)[:3]}...")
    d = scale * np.array([a[k] - b[k] for k in keys], dtype=np.float64)
    lo, hi = bootstrap_ci(d, **kw)
    return float(d.mean()), lo, hi, len(keys)


def pooled(runs: list[dict]) -> dict:
    """Several runs of one recipe (other seeds) as one row: the mean score of each sequence over
    the runs that scored it all (sequence -> score dicts, as :func:`paired_difference` takes).
    Run-to-run noise averages out; the sequences stay the unit of the interval."""
    keys = sorted(set.intersection(*(set(r) for r in runs)))
    return {k: float(np.mean([r[k] for r in runs])) for k in keys}


# ---------------------------------------------------------------------------- JHMDB: PCK


def joints_visible(joints: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A joint (x, y in 1-based pixels) is visible when it lies inside the frame (H, W)."""
    H, W = size
    x, y = joints[..., 0], joints[..., 1]
    return (x >= 1) & (x <= W) & (y >= 1) & (y <= H)


def pck_threshold(gt: np.ndarray, visible: np.ndarray | None = None) -> np.ndarray:
    """0.6 x the diagonal of the bounding box of the *visible* ground-truth joints of each frame
    (gt ... x J x 2, visible ... x J, default all -> ...; 0 where none is visible). As CRW's
    evaluation: a joint outside the frame is not scored, and does not widen the box either."""
    vis = np.ones(gt.shape[:-1], bool)[..., None] if visible is None else np.asarray(visible, bool)[..., None]
    hi = np.where(vis, gt, -np.inf).max(axis=-2)
    lo = np.where(vis, gt, np.inf).min(axis=-2)
    span = np.where(vis.any(axis=-2), hi - lo, 0.0)
    return 0.6 * np.hypot(span[..., 0], span[..., 1])


def pck(pred: np.ndarray, gt: np.ndarray, visible: np.ndarray, alphas=(0.1, 0.2)) -> dict:
    """PCK@alpha (SPEC section 6): a visible joint is correct when its error is at most alpha x
    :func:`pck_threshold`; per joint over all scored frames, then the mean over joints.

    pred, gt: N x J x 2 (frames to score: frame 0 already excluded), visible: N x J. A NaN in
    ``gt`` is an error naming its frame and joint (it would make every comparison false).
    Returns {alpha: {"per_joint": J array (nan for a joint never visible), "mean": float}}.
    """
    nan = np.argwhere(np.isnan(gt).any(-1))
    if len(nan):
        raise ValueError(f"ground-truth joints hold NaN (first: scored frame {nan[0][0]}, joint {nan[0][1]}; "
                         f"{len(nan)} in all)")
    err = np.linalg.norm(pred - gt, axis=-1) / np.maximum(pck_threshold(gt, visible)[:, None], 1e-9)  # N x J
    out = {}
    n_vis = visible.sum(0)
    for a in alphas:
        correct = ((err <= a) & visible).sum(0)
        per_joint = np.where(n_vis > 0, correct / np.maximum(n_vis, 1), np.nan)
        out[a] = {"per_joint": per_joint, "mean": float(np.nanmean(per_joint))}
    return out


# ---------------------------------------------------------------------------- VIP: mIoU


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n_classes: int, ignore: int = 255) -> np.ndarray:
    """n x n counts, rows = ground truth, columns = prediction; ``ignore`` pixels skipped."""
    gt, pred = np.asarray(gt).ravel().astype(np.int64), np.asarray(pred).ravel().astype(np.int64)
    keep = (gt != ignore) & (gt < n_classes)
    return np.bincount(n_classes * gt[keep] + pred[keep], minlength=n_classes**2).reshape(n_classes, n_classes)


def mean_iou(conf: np.ndarray) -> tuple[float, np.ndarray]:
    """IoU_c = diag / (row + col - diag) from one confusion matrix over all frames of all videos;
    mIoU = nanmean over classes (a class absent from both ground truth and prediction is nan)."""
    conf = conf.astype(np.float64)
    diag = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - diag
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, diag / union, np.nan)
    return float(np.nanmean(iou)), iou

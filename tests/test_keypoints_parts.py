"""JHMDB (PCK) and VIP (mIoU): metrics by hand, readers, heatmap round trip, end-to-end runs."""
import numpy as np
import pytest
import torch
from PIL import Image

from stt.metrics import confusion_matrix, joints_visible, mean_iou, pck, pck_threshold
from stt.propagation import heatmaps_to_joints, joints_to_heatmaps


def test_pck_by_hand_with_invisible_joints():
    gt = np.array([[[10.0, 10.0], [40.0, 50.0]]])  # one frame, two joints; bbox 30 x 40 -> diag 50
    assert pck_threshold(gt)[0] == pytest.approx(0.6 * 50)  # 30 px
    pred = np.array([[[12.0, 10.0], [40.0, 57.0]]])  # errors 2 px and 7 px
    vis = np.array([[True, True]])
    res = pck(pred, gt, vis, alphas=(0.1, 0.2))
    # alpha 0.1: threshold 3 px -> joint 0 right, joint 1 wrong; alpha 0.2: 6 px -> same
    assert res[0.1]["per_joint"].tolist() == [1.0, 0.0] and res[0.1]["mean"] == 0.5
    res = pck(pred, gt, vis, alphas=(0.25,))  # 7.5 px: both right
    assert res[0.25]["mean"] == 1.0
    # An invisible joint is not scored (nor does it widen the box); a joint never visible is nan
    # and left out of the mean.
    gt3, pred3 = np.concatenate([gt, [[[900.0, 900.0]]]], 1), np.concatenate([pred, [[[0.0, 0.0]]]], 1)
    res = pck(pred3, gt3, np.array([[True, True, False]]), alphas=(0.1,))
    assert res[0.1]["per_joint"][:2].tolist() == [1.0, 0.0] and np.isnan(res[0.1]["per_joint"][2])
    assert res[0.1]["mean"] == 0.5
    assert joints_visible(np.array([[1.0, 1.0], [0.5, 3.0], [320.0, 240.0], [321.0, 5.0]]), (240, 320)).tolist() == [
        True, False, True, False]


def test_heatmaps_round_trip_within_a_fraction_of_a_cell():
    joints = torch.tensor([[100.5, 60.5], [17.0, 200.0], [300.2, 150.7]], dtype=torch.float64)
    heat = joints_to_heatmaps(joints, (240, 320), (40, 40), sigma=0.5)
    assert heat.shape == (4, 40, 40) and (heat[-1] >= 0).all() and (heat[-1] <= 1).all()
    back = heatmaps_to_joints(heat[:-1], (240, 320))
    assert (back - joints).abs().max() < 0.5 * 8  # half a cell (8 px wide on this grid)


def test_heatmap_peak_at_the_joint_cell():
    # A joint at the centre of cell (2, 3) of a 10 x 10 grid over a 80 x 80 frame.
    j = torch.tensor([[3 * 8 + 4.5, 2 * 8 + 4.5]])
    heat = joints_to_heatmaps(j, (80, 80), (10, 10))
    assert heat[0].flatten().argmax() == 2 * 10 + 3 and heat[0, 2, 3] == pytest.approx(1.0)


def test_miou_by_hand():
    gt = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 0, 1]])
    conf = confusion_matrix(gt, pred, 20)
    assert conf.sum() == 7  # the ignore pixel is skipped
    miou, iou = mean_iou(conf)
    # class 0: tp 1, gt 2, pred 2 -> 1/3; class 1: tp 3, gt 3, pred 4 -> 3/4; class 2: tp 1, gt 2, pred 1 -> 1/2
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(3 / 4) and iou[2] == pytest.approx(1 / 2)
    assert np.isnan(iou[3]) and miou == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)


def test_jhmdb_reader_on_the_real_clip(shared_root):
    from stt.datasets import JHMDB

    ds = JHMDB(shared_root / "JHMDB_sample")
    assert len(ds) == 1
    frames, joints = ds.load(ds.names[0])
    assert frames.shape == (40, 240, 320, 3) and joints.shape == (40, 15, 2)
    assert joints[0, 2, 1] < joints[0, 0, 1] < joints[0, 1, 1]  # face above neck above belly


def test_jhmdb_mismatched_annotation_is_a_clear_error(tmp_path, shared_root):
    import shutil

    from scipy.io import savemat

    from stt.datasets import JHMDB

    root = tmp_path / "JHMDB"
    shutil.copytree(shared_root / "JHMDB_sample" / "Frames", root / "Frames")
    mat = root / "joint_positions/catch/Goal_Keeping_Tips_catch_f_cm_np1_fr_med_2/joint_positions.mat"
    mat.parent.mkdir(parents=True)
    savemat(mat, {"pos_img": np.zeros((2, 15, 39))})
    ds = JHMDB(root)
    with pytest.raises(ValueError, match="joints for 39 frames but .* holds 40"):
        ds.load(ds.names[0])


def test_evaluate_jhmdb_end_to_end_on_the_real_clip(shared_root, tmp_path):
    from stt.evaluate import evaluate_jhmdb

    res = evaluate_jhmdb(shared_root / "JHMDB_sample", "lab", tmp_path / "j", size=160, progress=False)
    assert 0 <= res["PCK@0.1"] <= res["PCK@0.2"] <= 1 and res["frames_scored"] == 39
    assert len(res["PCK@0.1 per joint"]) == 15
    again = evaluate_jhmdb(shared_root / "JHMDB_sample", "lab", tmp_path / "j", size=160, progress=False)
    assert again == res  # resumed from the saved clip


def test_vip_layout_end_to_end(tmp_path):
    from stt.datasets import VIP
    from stt.evaluate import evaluate_vip
    from stt.synthetic import make_synthetic_vip

    root = make_synthetic_vip(tmp_path / "VIP_Fine", n_videos=2, n_frames=6, size=(48, 64), annotate_every=2)
    ds = VIP(tmp_path)
    frames, labels = ds.load(ds.names[0])
    assert labels[1] is None and labels[2] is not None and labels[0].max() <= 19
    res = evaluate_vip(root, "lab", tmp_path / "v", size=64, progress=False)
    assert 0 <= res["mIoU"] <= 1 and res["videos"] == 2
    assert res["IoU per class"][0] is not None  # background is always present


def test_vip_bad_annotation_names_the_file(tmp_path):
    from stt.datasets import VIP
    from stt.synthetic import make_synthetic_vip

    root = make_synthetic_vip(tmp_path / "VIP_Fine", n_videos=1, n_frames=3, size=(48, 64))
    name = VIP(root).names[0]
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "Annotations/Category_ids" / name / f"{1:012d}.png")
    with pytest.raises(ValueError, match=f"{1:012d}.png: expected a 64x48"):
        VIP(root).load(name)


def test_synthetic_jhmdb_is_read_by_the_real_reader_and_scored(tmp_path):
    from scipy.io import loadmat

    from stt.datasets import JHMDB
    from stt.metrics import joints_visible, pck
    from stt.synthetic import make_synthetic_jhmdb

    root = make_synthetic_jhmdb(tmp_path / "JHMDB", n_clips=2, n_frames=8, size=(48, 64), seed=1)
    clip = root / "Frames" / "synthetic" / "synth_001_00"
    assert sorted(p.name for p in clip.iterdir())[0] == "00001.png"  # official layout: 1-based PNG frames
    mat = root / "joint_positions" / "synthetic" / "synth_001_00" / "joint_positions.mat"
    assert loadmat(str(mat))["pos_img"].shape == (2, 15, 8)
    ds = JHMDB(tmp_path)  # found as the JHMDB child of a data root
    assert ds.root == root and ds.names == ["synthetic/synth_001_00", "synthetic/synth_001_01"]
    frames, joints = ds.load(ds.names[0])
    assert frames.shape == (8, 48, 64, 3) and joints.shape == (8, 15, 2)
    assert joints[0, 2, 1] < joints[0, 0, 1] < joints[0, 1, 1]  # face above neck above belly, as in JHMDB
    # The keypoints are fixed on the textured object: the colour under each one stays put.
    x, y = np.rint(joints - 1).astype(int).transpose(2, 0, 1)  # 1-based -> 0-based pixels
    inside = (x >= 0) & (x < 64) & (y >= 0) & (y < 48)
    xc, yc = x.clip(0, 63), y.clip(0, 47)
    under = frames[np.arange(8)[:, None], yc, xc].astype(float)  # T x 15 x 3
    change = np.abs(under - under[:1])[inside & inside[:1]].mean()
    still = frames[np.arange(8)[:, None], yc[:1], xc[:1]].astype(float)  # the frame-0 positions over time
    assert change < 0.5 * np.abs(still - still[:1]).mean()
    # PCK of copying frame 0's joints to every frame is computed and lies in [0, 1].
    copy = np.repeat(joints[:1], 7, axis=0)
    res = pck(copy, joints[1:], joints_visible(joints[1:], (48, 64)))
    assert 0 <= res[0.1]["mean"] <= res[0.2]["mean"] <= 1
    assert make_synthetic_jhmdb(root, n_clips=2, n_frames=8, size=(48, 64), seed=1) == root  # reused

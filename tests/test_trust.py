"""Issue 21: each silent wrong result of the issue, written as its repro, now gives a clear error,
a warning that says what was left out, or the correct result."""
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_davis
from test_data import write_mp4

def _videos_differ(a, b):
    return a.shape != b.shape or np.abs(a.astype(int) - b.astype(int)).mean() > 5


# ---------------------------------------------------------------------------- row 1: frame cache key


def test_frame_cache_tells_same_named_videos_apart_and_sees_a_replaced_file(tmp_path):
    from stt.video import VideoFrames, read_video
    from stt.synthetic import render_sequence

    root, cache = tmp_path / "videos", tmp_path / "cache"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    write_mp4(root / "a" / "clip.mp4", render_sequence(1, 12, (48, 64))[0])
    write_mp4(root / "b" / "clip.mp4", render_sequence(2, 12, (48, 64))[0])
    videos = VideoFrames(root, cache, fps=7.5, short_side=None, progress=False)
    assert [n for n, _, _ in videos.videos] == ["clip", "clip"]
    a, b = videos.frames(0, [0, 1]), videos.frames(1, [0, 1])
    assert _videos_differ(a, b)
    assert np.array_equal(a, read_video(root / "a" / "clip.mp4", 7.5)[0][:2])
    assert np.array_equal(b, read_video(root / "b" / "clip.mp4", 7.5)[0][:2])
    assert len(list((cache / "fps7.5_shortNone").glob("clip-*.npy"))) == 2

    # a/clip.mp4 replaced in place by other content (and a new modification time)
    write_mp4(root / "a" / "clip.mp4", render_sequence(3, 12, (48, 64))[0])
    st = (root / "a" / "clip.mp4").stat()
    os.utime(root / "a" / "clip.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    again = VideoFrames(root, cache, fps=7.5, short_side=None, progress=False)
    new = again.frames(0, [0, 1])
    assert np.array_equal(new, read_video(root / "a" / "clip.mp4", 7.5)[0][:2]) and _videos_differ(new, a)
    assert len(list((cache / "fps7.5_shortNone").glob("clip-*.npy"))) == 2  # the stale version is gone


# ---------------------------------------------------------------------------- row 3: CorrFlow's own protocol


@pytest.fixture(scope="module")
def corrflow_ckpt(tmp_path_factory):
    from stt.corrflow import CorrFlow

    torch.manual_seed(0)
    m = CorrFlow(torch.randn(16, 2) * 30, radius=2, total_steps=10)
    path = tmp_path_factory.mktemp("cf") / "cf.pth"
    torch.save({"encoder": m.encoder_state_dict(), "meta": m.checkpoint_meta(), "model": m.state_dict()}, path)
    return path


def test_corrflow_protocol_is_recorded_and_never_served_from_the_other_protocols_cache(tiny_synthetic, tmp_path,
                                                                                     corrflow_ckpt):
    from stt.evaluate import evaluate_davis
    from stt.propagation import PropagationConfig

    out = tmp_path / "one-folder"
    common = evaluate_davis(tiny_synthetic, str(corrflow_ckpt), out, progress=False)
    with pytest.raises(RuntimeError, match="other settings"):
        evaluate_davis(tiny_synthetic, str(corrflow_ckpt), out, protocol="corrflow", progress=False)
    own = evaluate_davis(tiny_synthetic, str(corrflow_ckpt), out, protocol="corrflow", overwrite=True, progress=False)
    prop = json.loads((out / "settings.json").read_text())["propagation"]
    assert prop == {"protocol": "corrflow", "radius": 2, "hard": True, "first_label": "nearest", "minmax": False}
    assert own != common
    # The common protocol's options do not apply to CorrFlow's own: refused, not silently used.
    with pytest.raises(ValueError, match=r"options \{'minmax': False\} do not apply"):
        evaluate_davis(tiny_synthetic, str(corrflow_ckpt), tmp_path / "x", protocol="corrflow",
                       cfg=PropagationConfig(minmax=False), progress=False)


def test_corrflow_protocol_is_recursive_hard_and_without_minmax(tiny_synthetic, corrflow_ckpt):
    import torch.nn.functional as F

    from stt.datasets import DAVIS
    from stt.evaluate import iter_features, predict_sequence
    from stt.features import build_feature_model
    from stt.propagation import CORRFLOW_PROTOCOL, PropagationConfig, propagate_recursive

    frames, gt = DAVIS(tiny_synthetic).load(DAVIS(tiny_synthetic).names[0])
    net, _ = build_feature_model(str(corrflow_ckpt))
    K = int(gt[0].max()) + 1
    # Whatever the common options say (min-max on, bilinear first labels), the own protocol is fixed.
    got = list(predict_sequence(net, 4, frames, gt[0], K - 1, None, PropagationConfig(first_label="bilinear"), "cpu",
                                own={"radius": 2, **CORRFLOW_PROTOCOL}))
    feats = list(iter_features(net, frames, None, 4, "cpu"))
    small = F.interpolate(torch.from_numpy(gt[0])[None, None].float(), size=feats[0].shape[-2:], mode="nearest-exact")
    first = F.one_hot(small[0, 0].long(), K).permute(2, 0, 1).float()
    with torch.no_grad():
        soft = list(propagate_recursive(feats, first, 2, hard=True))
    want = [F.interpolate(s[None], size=gt.shape[1:], mode="bilinear", align_corners=False)[0].argmax(0).numpy()
            for s in soft]
    assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))


def test_cli_refuses_propagation_flags_with_the_corrflow_protocol(tiny_synthetic, tmp_path, corrflow_ckpt, capsys):
    from stt.cli import main

    code = main(["evaluate", "davis", "--data", str(tiny_synthetic), "--model", str(corrflow_ckpt),
                 "--protocol", "corrflow", "--first-label", "bilinear", "--out", str(tmp_path / "o")])
    assert code == 2 and "'first_label': 'bilinear'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- row 4: results without settings


def test_results_without_settings_json_are_refused_then_discarded(tiny_synthetic, tmp_path):
    from stt.evaluate import evaluate_davis
    from stt.propagation import PropagationConfig

    out = tmp_path / "o"
    evaluate_davis(tiny_synthetic, "lab", out, progress=False)
    (out / "settings.json").unlink()
    with pytest.raises(RuntimeError, match=r"holds results \(predictions/, sequences/\) but no settings.json"):
        evaluate_davis(tiny_synthetic, "lab", out, cfg=PropagationConfig(topk=5), progress=False)
    stamp = (out / "sequences").stat().st_mtime_ns
    res = evaluate_davis(tiny_synthetic, "lab", out, cfg=PropagationConfig(topk=5), overwrite=True, progress=False)
    assert json.loads((out / "settings.json").read_text())["propagation"]["topk"] == 5
    assert (out / "sequences").stat().st_mtime_ns != stamp  # recomputed, not reused
    assert res == evaluate_davis(tiny_synthetic, "lab", tmp_path / "fresh", cfg=PropagationConfig(topk=5),
                                 progress=False)


@pytest.mark.parametrize("task", ["jhmdb", "vip"])
def test_jhmdb_clips_and_vip_videos_without_settings_are_refused(tmp_path, task):
    from stt import evaluate
    from stt.synthetic import make_synthetic_jhmdb, make_synthetic_vip

    if task == "jhmdb":
        root = make_synthetic_jhmdb(tmp_path / "JHMDB", n_clips=1, n_frames=4, size=(32, 48))
        run, sub = (lambda **kw: evaluate.evaluate_jhmdb(root, "lab", tmp_path / "o", size=48, progress=False, **kw),
                    "clips")
    else:
        root = make_synthetic_vip(tmp_path / "VIP_Fine", n_videos=1, n_frames=4, size=(32, 48))
        run, sub = lambda **kw: evaluate.evaluate_vip(root, "lab", tmp_path / "o", size=48, progress=False, **kw), "videos"
    first = run()
    (tmp_path / "o" / "settings.json").unlink()
    with pytest.raises(RuntimeError, match=rf"\({sub}/\) but no settings.json"):
        run()
    assert run(overwrite=True) == first


# ---------------------------------------------------------------------------- row 5: resume with other data or steps


class _Pairs(torch.utils.data.Dataset):
    def __len__(self):
        return 16

    def __getitem__(self, key):
        g = torch.Generator().manual_seed(key[0])
        return torch.randn(3, generator=g), torch.randn(1, generator=g)


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 1)

    def forward(self, batch, gen=None):
        x, y = batch
        return {"loss": ((self.lin(x) - y) ** 2).mean()}


def _trainer(out, steps=4, data="videos-A", dataset=None, **kw):
    from stt.train import TrainConfig, Trainer

    cfg = TrainConfig(steps=steps, batch_size=4, lr=0.1, log_every=1, device="cpu", amp="off", **kw)
    return Trainer(_Linear(), dataset or _Pairs(), cfg, out, meta={"data": data}, progress=False)


def test_resume_refuses_other_data_and_other_steps(tmp_path):
    _trainer(tmp_path / "run", ckpt_every=2).fit()
    ck = tmp_path / "run" / "checkpoint.pth"
    with pytest.raises(RuntimeError, match=rf"{ck} was trained on data 'videos-A', this run asks for 'videos-B'.*--out"):
        _trainer(tmp_path / "run", data="videos-B")
    with pytest.raises(RuntimeError, match=rf"{ck} .*'steps': \(4, 8\).*lr schedule.*--out"):
        _trainer(tmp_path / "run", steps=8)
    assert _trainer(tmp_path / "run").step == 4  # the same settings resume


# ---------------------------------------------------------------------------- row 8: log after a kill


def test_log_has_each_step_once_after_a_kill_between_checkpoints(tmp_path):
    class Dying(_Pairs):  # the process dies (no checkpoint, no cleanup) while step 4 loads its data
        def __getitem__(self, key):
            if self.dying and key in self.fatal:
                raise SystemExit("killed")
            return super().__getitem__(key)

    from stt.train import StepBatches, TrainConfig

    ds = Dying()
    ds.dying, ds.fatal = True, StepBatches(16, TrainConfig(steps=5, batch_size=4)).batch(3)
    with pytest.raises(SystemExit):
        _trainer(tmp_path / "run", steps=5, dataset=ds, ckpt_every=2).fit()
    log = tmp_path / "run" / "train_log.jsonl"
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3]  # checkpoint at step 2
    ds.dying = False
    hist = _trainer(tmp_path / "run", steps=5, dataset=ds, ckpt_every=2).fit()
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [1, 2, 3, 4, 5]
    assert [json.loads(x) for x in log.read_text().splitlines()] == hist
    ref = _trainer(tmp_path / "ref", steps=5, ckpt_every=2).fit()
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in ref])


# ---------------------------------------------------------------------------- row 6: PCK


def test_pck_box_is_formed_from_the_visible_joints_only():
    from stt.metrics import pck, pck_threshold

    # Three joints; the third lies outside the frame. Visible box 30 x 40: diagonal 50, threshold 30 px.
    gt = np.array([[[10.0, 10.0], [40.0, 50.0], [-500.0, -500.0]]])
    vis = np.array([[True, True, False]])
    assert pck_threshold(gt, vis)[0] == pytest.approx(30.0)
    pred = gt + np.array([[[0.0, 2.5], [0.0, 3.5], [0.0, 0.0]]])  # errors 2.5 px and 3.5 px
    res = pck(pred, gt, vis, alphas=(0.1,))  # 3 px: joint 0 right, joint 1 wrong (with all 15: both right)
    assert res[0.1]["per_joint"][:2].tolist() == [1.0, 0.0] and np.isnan(res[0.1]["per_joint"][2])
    assert pck_threshold(gt, np.zeros((1, 3), bool))[0] == 0  # nothing visible: no box


def test_nan_joint_is_an_error_naming_the_frame_and_joint(tmp_path):
    from scipy.io import savemat

    from stt.datasets import JHMDB
    from stt.metrics import pck

    gt = np.array([[[10.0, 10.0], [40.0, 50.0]], [[10.0, 10.0], [np.nan, 50.0]]])
    with pytest.raises(ValueError, match=r"NaN \(first: scored frame 1, joint 1"):
        pck(gt, gt, np.ones((2, 2), bool))

    clip = tmp_path / "JHMDB" / "Frames" / "run" / "clip1"
    clip.mkdir(parents=True)
    for t in range(3):
        Image.fromarray(np.zeros((24, 32, 3), np.uint8)).save(clip / f"{t + 1:05d}.png")
    pos = np.full((2, 15, 3), 5.0)
    pos[1, 4, 2] = np.nan  # joint 5 (left shoulder) in frame 3
    mat = tmp_path / "JHMDB" / "joint_positions" / "run" / "clip1" / "joint_positions.mat"
    mat.parent.mkdir(parents=True)
    savemat(mat, {"pos_img": pos})
    with pytest.raises(ValueError, match=r"clip1/joint_positions.mat: pos_img is NaN for joint 5 \(left shoulder\) "
                                         r"in frame 3 \(00003.png\)"):
        JHMDB(tmp_path / "JHMDB").load("run/clip1")


# ---------------------------------------------------------------------------- row 7: DAVIS masks


def _davis_seq(T=4, H=24, W=32, seed=0, empty=False):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    masks = np.zeros((T, H, W), np.uint8)
    if not empty:
        masks[:, 4:12, 5:15] = 1
    return frames, masks


def test_empty_first_mask_is_left_out_with_a_warning_and_recorded(tmp_path):
    from stt.evaluate import evaluate_davis

    write_davis(tmp_path / "D", {"full": _davis_seq(), "blank": _davis_seq(seed=1, empty=True)})
    with pytest.warns(UserWarning, match=r"blank: its first annotation .*00000.png has no object.*left out of the means"):
        res = evaluate_davis(tmp_path / "D", "identity", tmp_path / "o", progress=False)
    settings = json.loads((tmp_path / "o" / "settings.json").read_text())["dataset"]
    assert settings["sequences"] == ["full"] and settings["left_out"] == ["blank"]
    assert res["J-Mean"] == 1.0 and not (tmp_path / "o" / "predictions" / "blank").exists()


def test_all_first_masks_empty_is_a_clear_error(tmp_path):
    from stt.evaluate import evaluate_davis

    write_davis(tmp_path / "D", {"a": _davis_seq(empty=True), "b": _davis_seq(seed=1, empty=True)})
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=r"first annotation of every sequence \(a, b\)"):
        evaluate_davis(tmp_path / "D", "identity", tmp_path / "o", progress=False)


def test_antialiased_greyscale_mask_is_binary_and_palette_ids_are_kept(tmp_path):
    from stt.datasets import read_mask
    from stt.viz import davis_palette

    ramp = np.zeros((8, 8), np.uint8)
    ramp[:, 4:] = 255
    ramp[:, 3] = 100  # antialiased edge: below 128
    ramp[:, 4] = 200  # above
    Image.fromarray(ramp, mode="L").save(tmp_path / "grey.png")
    with pytest.warns(UserWarning, match=r"grey.png: greyscale mask with values other than 0 and 255"):
        m = read_mask(tmp_path / "grey.png")
    assert m.dtype == np.uint8 and m.max() == 1 and (m[:, 4:] == 1).all() and (m[:, :4] == 0).all()

    ids = np.zeros((8, 8), np.uint8)
    ids[0, :3] = (1, 2, 100)
    im = Image.fromarray(ids, mode="P")
    im.putpalette(davis_palette())
    im.save(tmp_path / "palette.png")
    assert read_mask(tmp_path / "palette.png")[0, :3].tolist() == [1, 2, 100]


# ---------------------------------------------------------------------------- row 9: read-only folders


@pytest.fixture
def deny_writes(monkeypatch):
    """``os.access`` answers "not writable" under the given folders (tests run as root, where chmod
    does not stop writes)."""
    denied = []
    real = os.access

    def access(path, mode, *a, **kw):
        if mode & os.W_OK and any(str(os.path.abspath(path)).startswith(str(d)) for d in denied):
            return False
        return real(path, mode, *a, **kw)

    monkeypatch.setattr(os, "access", access)
    return denied


def test_writability_check_uses_a_real_probe(tmp_path):
    from stt.checkpoint import ensure_writable

    assert ensure_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"  # would be created
    (tmp_path / "file").write_text("x")
    with pytest.raises(RuntimeError, match="is not a folder"):
        ensure_writable(tmp_path / "file" / "out")
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop writes (the monkeypatched tests cover the check)")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(RuntimeError, match=f"{ro} is not writable"):
            ensure_writable(ro)
    finally:
        ro.chmod(0o755)


def test_read_only_out_fails_before_compute_and_a_finished_evaluation_rereads(tiny_synthetic, tmp_path, deny_writes,
                                                                            monkeypatch):
    from stt import evaluate

    def no_compute(*a, **kw):
        raise AssertionError("computed before the writability check")

    (tmp_path / "ro").mkdir()
    deny_writes.append(tmp_path / "ro")
    with monkeypatch.context() as m:
        m.setattr(evaluate, "predict_sequence", no_compute)
        with pytest.raises(RuntimeError, match=rf"output folder {tmp_path / 'ro'} is not writable"):
            evaluate.evaluate_davis(tiny_synthetic, "lab", tmp_path / "ro", progress=False)
    done = tmp_path / "done"
    res = evaluate.evaluate_davis(tiny_synthetic, "lab", done, progress=False)
    stamps = {p: p.stat().st_mtime_ns for p in done.rglob("*")}
    deny_writes.append(done)
    assert evaluate.evaluate_davis(tiny_synthetic, "lab", done, progress=False) == res
    assert {p: p.stat().st_mtime_ns for p in done.rglob("*")} == stamps  # nothing written


def test_read_only_cache_and_training_folder_fail_before_compute(tmp_path, deny_writes, monkeypatch):
    from stt import video
    from stt.synthetic import render_sequence

    (tmp_path / "v").mkdir()
    write_mp4(tmp_path / "v" / "a.mp4", render_sequence(1, 6, (48, 64))[0])
    monkeypatch.setattr(video, "read_video", lambda *a, **kw: pytest.fail("decoded before the writability check"))
    for folder in ("cache", "train"):
        (tmp_path / folder).mkdir()
        deny_writes.append(tmp_path / folder)
    with pytest.raises(RuntimeError, match=rf"frame cache folder {tmp_path / 'cache'}/fps6_short256 .*not writable"):
        video.VideoFrames(tmp_path / "v", tmp_path / "cache", progress=False)
    with pytest.raises(RuntimeError, match=rf"output folder {tmp_path / 'train'} .*not writable"):
        _trainer(tmp_path / "train")
    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    from stt.evaluate import resolve_davis_root

    with pytest.raises(RuntimeError, match=r"cache folder \(\$STT_CACHE\) .*synthetic-davis .*not writable"):
        resolve_davis_root("synthetic")


@pytest.mark.parametrize("recipe", ["spatial", "temporal", "corrflow"])
def test_read_only_training_out_fails_before_any_video_is_decoded(recipe, tmp_path, deny_writes, monkeypatch, capsys):
    from stt import video
    from stt.cli import main
    from stt.synthetic import render_sequence

    (tmp_path / "v").mkdir()
    write_mp4(tmp_path / "v" / "a.mp4", render_sequence(1, 6, (48, 64))[0])
    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(video, "read_video", lambda *a, **kw: pytest.fail("decoded before the writability check"))
    (tmp_path / "ro").mkdir()
    deny_writes.append(tmp_path / "ro")
    flags = ["--temporal-only"] if recipe == "temporal" else []
    code = main(["train", recipe, "--config", "smoke", "--data", str(tmp_path / "v"), "--out", str(tmp_path / "ro"),
                 "--device", "cpu", *flags])
    assert code == 2 and f"training folder {tmp_path / 'ro'} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()  # nothing decoded, nothing cached


def test_color_clusters_checks_its_out_before_kmeans_and_makes_missing_folders(tmp_path, deny_writes, monkeypatch,
                                                                               capsys):
    from stt import corrflow
    from stt.cli import main
    from stt.synthetic import render_sequence

    (tmp_path / "v").mkdir()
    write_mp4(tmp_path / "v" / "a.mp4", render_sequence(1, 6, (48, 64))[0])
    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "ro").mkdir()
    deny_writes.append(tmp_path / "ro")
    with monkeypatch.context() as m:
        m.setattr(corrflow, "color_clusters", lambda *a, **kw: pytest.fail("k-means ran before the check"))
        code = main(["color-clusters", "--data", str(tmp_path / "v"), "--out", str(tmp_path / "ro" / "c.pt"), "--k", "4"])
    assert code == 2 and f"folder for --out {tmp_path / 'ro'} is not writable" in capsys.readouterr().err
    out = tmp_path / "new" / "sub" / "c.pt"
    assert main(["color-clusters", "--data", str(tmp_path / "v"), "--out", str(out), "--k", "4", "--frames", "4"]) == 0
    assert torch.load(out).shape == (4, 2) and not list(out.parent.glob("*.tmp"))


# ---------------------------------------------------------------------------- row 10: --centroids


def test_centroids_file_is_checked_before_training(tmp_path, capsys):
    from stt.cli import main
    from stt.color import load_centroids

    good = tmp_path / "good.pt"
    torch.save(torch.randn(16, 2), good)
    assert load_centroids(good).shape == (16, 2)
    (tmp_path / "pickle.pkl").write_bytes(pickle.dumps({"centroids": np.zeros((16, 2))}))
    torch.save(torch.randn(16, 3), tmp_path / "shape.pt")
    for bad in ("pickle.pkl", "shape.pt"):
        with pytest.raises(ValueError, match=rf"{bad}: .*expected a float K x 2 tensor"):
            load_centroids(tmp_path / bad)
        # through the CLI: the error comes first, before any data is looked at (there is none here)
        code = main(["train", "corrflow", "--config", "smoke", "--data", str(tmp_path / "no-videos"),
                     "--out", str(tmp_path / "o"), "--centroids", str(tmp_path / bad)])
        err = capsys.readouterr().err
        assert code == 2 and f"stt: error: {tmp_path / bad}" in err and "K x 2" in err
        assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------------- row 12: VideoFrames without decord


def test_video_frames_fall_back_to_pyav_with_decords_frames(tmp_path, monkeypatch):
    pytest.importorskip("decord", reason="the reference frames are decord's")
    from stt.video import PyAVReader, VideoFrames
    from stt.synthetic import render_sequence

    write_mp4(tmp_path / "a.mp4", render_sequence(5, 41, (48, 64))[0], gop=8)
    with_decord = VideoFrames(tmp_path, None, fps=7.5, short_side=32, progress=False)
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now fails
    assert isinstance(VideoFrames._reader(tmp_path / "a.mp4"), PyAVReader)
    without = VideoFrames(tmp_path, None, fps=7.5, short_side=32, progress=False)
    assert without.videos == with_decord.videos  # the same frame count
    n = without.length(0)
    ts = [7, 2, 9, 9, 0]  # random access, out of order, repeated
    ref = with_decord.frames(0, ts)
    got = without.frames(0, ts)
    assert got.shape == ref.shape and np.abs(got.astype(int) - ref.astype(int)).max() <= 2
    batched = np.concatenate([f for _, f in without.iter_frames(0, range(n), batch=3)])  # one pass, in order
    assert np.array_equal(batched, without.frames(0, range(n)))
    assert np.abs(batched.astype(int) - with_decord.frames(0, range(n)).astype(int)).max() <= 2


# ---------------------------------------------------------------------------- --stride / --input-space


@pytest.fixture(scope="module")
def stt_ckpt(tmp_path_factory):
    from stt.encoder import ResNetEncoder

    torch.manual_seed(3)
    enc = ResNetEncoder("resnet18", "train")
    path = tmp_path_factory.mktemp("stt") / "stt.pth"
    torch.save({"encoder": enc.state_dict(), "meta": {"kind": "stt", "arch": "resnet18", "input": "lab"}}, path)
    return path, enc


def test_cli_stride_and_input_space_reach_the_encoder_and_the_settings(tiny_synthetic, tmp_path, stt_ckpt):
    from stt.cli import main

    args = ["evaluate", "davis", "--data", str(tiny_synthetic), "--model", str(stt_ckpt[0])]
    assert main(args + ["--out", str(tmp_path / "s8")]) == 0
    assert main(args + ["--out", str(tmp_path / "s4"), "--stride", "4", "--input-space", "rgb-imagenet"]) == 0
    s8 = json.loads((tmp_path / "s8" / "settings.json").read_text())
    s4 = json.loads((tmp_path / "s4" / "settings.json").read_text())
    assert (s8["model"]["variant"], s8["model"]["input"], s8["propagation"]["radius"]) == ("stride8", "lab", 12)
    assert (s4["model"]["variant"], s4["model"]["input"], s4["propagation"]["radius"]) == ("stride4", "rgb-imagenet", 24)
    assert (tmp_path / "s4" / "global_results-val.csv").read_text() != (tmp_path / "s8" / "global_results-val.csv").read_text()


def test_stride_and_input_space_that_do_not_apply_are_errors(tiny_synthetic, tmp_path, corrflow_ckpt, capsys):
    from stt.cli import main

    base = ["evaluate", "davis", "--data", str(tiny_synthetic), "--model", str(corrflow_ckpt), "--out", str(tmp_path / "o")]
    assert main(base + ["--stride", "8"]) == 2
    assert "its features have stride 4; stride 8 does not apply" in capsys.readouterr().err
    assert main(base + ["--input-space", "lab"]) == 2
    assert "CorrFlow's encoder reads RGB" in capsys.readouterr().err


# ---------------------------------------------------------------------------- released checkpoints


def test_released_stt_checkpoint_in_mmcv_layout_loads_its_student_on_lab(tmp_path, stt_ckpt):
    from stt.features import build_feature_model

    _, student = stt_ckpt
    torch.manual_seed(9)
    from stt.encoder import ResNetEncoder

    teacher = ResNetEncoder("resnet18", "imagenet")
    sd = {f"backbone.{k}": v for k, v in student.state_dict().items()}
    sd.update({f"backbone_t.{k}": v for k, v in teacher.state_dict().items()})  # the GCD teacher: not the trunk
    sd["head.conv.weight"] = torch.zeros(1)
    meta = {"mmcv_version": "1.3.9", "time": "Mon Sep 12 10:00:00 2022", "epoch": 800, "iter": 21000}
    torch.save({"meta": meta, "state_dict": sd}, tmp_path / "stt_r18.pth")
    net, desc = build_feature_model(str(tmp_path / "stt_r18.pth"))
    assert desc["input"] == "lab" and net.encoder.input_space == "lab" and net.stride == 8
    for k, v in student.state_dict().items():
        assert torch.equal(net.encoder.state_dict()[k], v), k

    # A torchvision file (no meta) is fed ImageNet-normalised RGB; --input-space overrides either.
    torch.save(teacher.state_dict(), tmp_path / "tv.pth")
    assert build_feature_model(str(tmp_path / "tv.pth"))[1]["input"] == "rgb-imagenet"
    assert build_feature_model(str(tmp_path / "stt_r18.pth"), input_space="rgb")[1]["input"] == "rgb"


def _official_corrflow_names(sd: dict) -> dict:
    """Our CorrFlowEncoder keys renamed by hand into CorrFlow's release (models/submodule.py
    ResidualBlock: left = conv, bn, relu, conv, bn; shortcut = conv, bn), under nn.DataParallel."""
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        if parts[0] == "head":
            name = "post_convolution." + ".".join(parts[1:])
        elif parts[0] in ("conv1", "bn1"):
            name = f"feature_extraction.conv1.{0 if parts[0] == 'conv1' else 1}.{parts[1]}"
        else:
            layer, block, mod, rest = parts[0], parts[1], parts[2], parts[3:]
            if mod == "downsample":
                mod, rest = f"shortcut.{rest[0]}", rest[1:]
            else:
                mod = {"conv1": "left.0", "bn1": "left.1", "conv2": "left.3", "bn2": "left.4"}[mod]
            name = f"feature_extraction.{layer}.{block}.{mod}.{'.'.join(rest)}"
        out["module." + name] = v
    return out


def test_released_corrflow_checkpoint_loads_and_evaluates(tiny_synthetic, tmp_path):
    from stt.features import build_feature_model
    from stt.evaluate import evaluate_davis
    from stt.corrflow import CorrFlowEncoder

    torch.manual_seed(4)
    ours = CorrFlowEncoder().eval()
    sd = _official_corrflow_names(ours.state_dict())
    assert "module.feature_extraction.layer3.0.shortcut.1.running_mean" in sd and "module.post_convolution.bias" in sd
    torch.save({"epoch": 9, "state_dict": sd, "optimizer": {}}, tmp_path / "corrflow.pth")
    net, desc = build_feature_model(str(tmp_path / "corrflow.pth"))
    assert desc["kind"] == "corrflow" and net.stride == 4
    x = torch.rand(1, 3, 32, 48)
    with torch.no_grad():
        assert torch.equal(net(x), ours(x))
    res = evaluate_davis(tiny_synthetic, str(tmp_path / "corrflow.pth"), tmp_path / "o", protocol="corrflow",
                         progress=False)
    assert 0 <= res["J&F-Mean"] <= 1

    sd["module.colorizer.extra.weight"] = torch.zeros(1)  # not CorrFlow's released architecture
    torch.save({"state_dict": sd}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"other.pth: not the encoder of CorrFlow's release.*module.colorizer.extra"):
        build_feature_model(str(tmp_path / "other.pth"))

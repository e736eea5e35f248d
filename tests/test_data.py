import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_davis
from stt.datasets import DAVIS, find_davis, read_mask, resize_short_side


def _seq(T=3, H=24, W=32, n_obj=2, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 255, (T, H, W, 3), dtype=np.uint8)
    masks = np.zeros((T, H, W), np.uint8)
    for i in range(1, n_obj + 1):
        masks[:, 4 * i : 4 * i + 4, 5 * i : 5 * i + 6] = i
    return frames, masks


def test_real_davis2016_layout(davis2016_root):
    ds = DAVIS(davis2016_root)
    assert ds.year == "2016" and len(ds) == 15 and ds.names[0] == "blackswan"
    frames, masks = ds.load("car-shadow")
    assert frames.shape == (40, 480, 854, 3) and masks.shape == (40, 480, 854)
    assert set(np.unique(masks)) == {0, 1}  # 0/255 greyscale -> one object with id 1
    assert sum(len(ds.sequence(n).frames) for n in ds) == 1038


def test_davis2017_palette_with_void(tmp_path):
    frames, masks = _seq()
    masks[0, 0, 0] = 255  # void
    write_davis(tmp_path, {"seq": (frames, masks)})
    ds = DAVIS(tmp_path)
    assert ds.year == "2017"
    f, m = ds.load("seq")
    assert m[0, 0, 0] == 0 and m.max() == 2 and f.shape == (3, 24, 32, 3)


def test_davis2016_binary_written_by_us(tmp_path):
    frames, masks = _seq(n_obj=1)
    write_davis(tmp_path, {"seq": (frames, masks)}, year="2016", binary=True)
    _, m = DAVIS(tmp_path).load("seq")
    assert set(np.unique(m)) == {0, 1}


def test_find_davis_looks_in_children_and_explains(tmp_path):
    frames, masks = _seq()
    write_davis(tmp_path / "DAVIS", {"s": (frames, masks)})
    assert find_davis(tmp_path) == tmp_path / "DAVIS"
    with pytest.raises(FileNotFoundError, match="no DAVIS dataset under"):
        find_davis(tmp_path / "elsewhere")


def test_sequence_subset_and_unknown_name(tmp_path):
    frames, masks = _seq()
    write_davis(tmp_path, {"a": (frames, masks), "b": (frames, masks)})
    assert DAVIS(tmp_path, sequences=["b"]).names == ["b"]
    with pytest.raises(ValueError, match=r"\['zzz'\]"):
        DAVIS(tmp_path, sequences=["zzz"])


def test_frame_without_mask_names_the_file(tmp_path):
    frames, masks = _seq()
    write_davis(tmp_path, {"s": (frames, masks)})
    (tmp_path / "Annotations/480p/s/00001.png").unlink()
    with pytest.raises(FileNotFoundError, match="00001.png"):
        DAVIS(tmp_path).load("s")


def test_size_mismatch_names_the_file(tmp_path):
    frames, masks = _seq()
    write_davis(tmp_path, {"s": (frames, masks)})
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="P").save(tmp_path / "Annotations/480p/s/00002.png")
    with pytest.raises(ValueError, match=r"00002.png: mask is 10x10 but its frame .*00002.jpg is 32x24"):
        DAVIS(tmp_path).load("s")


def test_unreadable_image_names_the_file(tmp_path):
    frames, masks = _seq()
    write_davis(tmp_path, {"s": (frames, masks)})
    (tmp_path / "JPEGImages/480p/s/00001.jpg").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="00001.jpg: unreadable image"):
        DAVIS(tmp_path).load("s")


def test_missing_sequence_list(tmp_path):
    frames, masks = _seq()
    write_davis(tmp_path, {"s": (frames, masks)})
    with pytest.raises(FileNotFoundError, match="train.txt"):
        DAVIS(tmp_path, split="train")


def test_rgb_mask_is_rejected(tmp_path):
    p = tmp_path / "m.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p)
    with pytest.raises(ValueError, match="single-channel"):
        read_mask(p)


def test_resize_short_side_multiples_of_stride():
    x = torch.rand(2, 3, 480, 854)
    y = resize_short_side(x, 240, 8)
    assert y.shape == (2, 3, 240, 424)  # 427 -> nearest multiple of 8
    assert resize_short_side(x, None, 2) is x
    assert resize_short_side(torch.rand(1, 3, 854, 480), 240, 8).shape[-2:] == (424, 240)


def test_synthetic_dataset_is_seeded_and_has_exact_masks(tmp_path):
    from stt.synthetic import make_synthetic_davis, render_sequence

    f1, m1 = render_sequence(7, n_frames=4, size=(48, 64))
    f2, m2 = render_sequence(7, n_frames=4, size=(48, 64))
    assert np.array_equal(f1, f2) and np.array_equal(m1, m2)
    assert m1.max() >= 1 and (m1 > 0).mean() < 0.9
    root = make_synthetic_davis(tmp_path, n_sequences=2, n_frames=4, size=(48, 64), seed=1)
    ds = DAVIS(root)
    f, m = ds.load(ds.names[0])
    assert f.shape == (4, 48, 64, 3) and m.max() >= 1


def write_mp4(path, frames: np.ndarray, fps: int = 30, gop: int = 8):
    """Encode T x H x W x 3 uint8 frames as H.264 (a keyframe every ``gop`` frames, so reads seek
    across groups of pictures)."""
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"g": str(gop), "bf": "0"}
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


@pytest.fixture(scope="module")
def small_videos(tmp_path_factory):
    """Two H.264 files (30 fps, 41 and 30 frames, two sizes) and one frame folder."""
    from stt.synthetic import make_synthetic_videos, render_sequence

    root = tmp_path_factory.mktemp("videos")
    write_mp4(root / "a.mp4", render_sequence(11, 41, (48, 64))[0])
    write_mp4(root / "b.mp4", render_sequence(12, 30, (96, 64))[0])
    make_synthetic_videos(root / "folders", n_videos=1, n_frames=9, size=(48, 64), seed=2)
    return root


def _grouped(videos, v, ts, batch):
    got, frames = [], []
    for chunk, f in videos.iter_frames(v, ts, batch=batch):
        got += chunk
        frames.append(f)
    assert got == list(ts)
    return np.concatenate(frames)


@pytest.mark.parametrize("cached,short_side", [(False, None), (True, None), (False, 32), (True, 32)])
def test_iter_frames_equals_reading_frames_one_by_one(small_videos, tmp_path, cached, short_side):
    from stt.video import VideoFrames

    videos = VideoFrames(small_videos, tmp_path / "cache" if cached else None, fps=7.5, short_side=short_side,
                         progress=False)
    assert [n for n, _, _ in videos.videos] == ["a", "b", "synthetic-video-00"]
    assert [videos.length(v) for v in range(3)] == [11, 8, 9]  # ceil(41 / 4), ceil(30 / 4); a folder as it is
    for v in range(3):
        ts = [t for t in range(videos.length(v)) if t % 3 != 1]  # gaps, and batches across keyframes
        one_by_one = np.stack([videos.frames(v, [t])[0] for t in ts])
        assert np.array_equal(_grouped(videos, v, ts, batch=3), one_by_one)
        assert np.array_equal(videos.frames(v, ts), one_by_one)


def test_iter_frames_on_real_videos(shared_root):
    from stt.video import VideoFrames

    if not (shared_root / "videos").is_dir():
        pytest.skip("no real videos under the data root")
    videos = VideoFrames(shared_root / "videos", None, fps=7.5, short_side=None, max_videos=2, progress=False)
    for v in range(2):
        ts = list(range(0, videos.length(v), 3))
        one_by_one = np.stack([videos.frames(v, [t])[0] for t in ts])
        assert np.array_equal(_grouped(videos, v, ts, batch=8), one_by_one)


def test_uncached_counts_in_parallel_match_serial_and_skip_unreadable(small_videos, tmp_path):
    import shutil

    from stt.video import VideoFrames

    root = tmp_path / "v"
    shutil.copytree(small_videos, root)
    (root / "broken.mp4").write_bytes(b"not a video")
    with pytest.warns(UserWarning, match="broken.mp4"):
        par = VideoFrames(root, None, fps=7.5, short_side=None, progress=False, workers=4)
    with pytest.warns(UserWarning, match="broken.mp4"):
        ser = VideoFrames(root, None, fps=7.5, short_side=None, progress=False, workers=1)
    assert par.videos == ser.videos and [n for n, _, _ in par.videos] == ["a", "b", "synthetic-video-00"]
    assert par.skipped == [str(root / "broken.mp4")]
    with pytest.warns(UserWarning, match="broken.mp4"):
        cached = VideoFrames(root, tmp_path / "cache", fps=7.5, short_side=None, progress=False)
    assert [n for _, _, n in cached.videos] == [n for _, _, n in par.videos]  # decoded lengths = counted lengths


def test_frame_clips_can_leave_out_the_most_static_pairs(tmp_path):
    from stt.video import VideoFrames
    from stt.views import FrameClips

    rng = np.random.default_rng(0)
    still = np.repeat(rng.integers(0, 255, (1, 32, 32, 3), dtype=np.uint8), 6, axis=0)
    moving = rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8)
    for name, frames in (("still", still), ("moving", moving)):
        (tmp_path / name).mkdir()
        for t, f in enumerate(frames):
            Image.fromarray(f).save(tmp_path / name / f"{t:05d}.png")
    videos = VideoFrames(tmp_path, None, short_side=None, progress=False)
    all_clips = FrameClips(videos, 2, size=16)
    motion = all_clips.motion()
    assert len(all_clips) == 10 and motion.shape == (10,)
    still_v = [i for i, (name, _, _) in enumerate(videos.videos) if name == "still"][0]
    assert all(m == 0 for (v, _), m in zip(all_clips.index, motion) if v == still_v)
    kept = FrameClips(videos, 2, size=16, drop_static=0.5)
    assert len(kept) == 5 and all(v != still_v for v, _ in kept.index)

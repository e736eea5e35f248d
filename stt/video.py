"""Unlabelled training data: video decoding (decord, or PyAV), the decoded-frame cache, and
:class:`StillImages`, the still images of MoCo's step 1 (an image folder, or video frames)."""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import atomic_save_npy, ensure_writable
from .datasets import IMAGE_EXTENSIONS, read_image

# ---------------------------------------------------------------------------- videos

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")


def _resize_uint8(frames: np.ndarray, short_side: int | None) -> np.ndarray:
    """T x H x W x 3 uint8 -> short side ``short_side`` (antialiased), uint8."""
    if short_side is None or min(frames.shape[1:3]) == short_side:
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    H, W = x.shape[-2:]
    s = short_side / min(H, W)
    x = F.interpolate(x, size=(max(1, round(H * s)), max(1, round(W * s))), mode="bilinear",
                      align_corners=False, antialias=True)
    return x.round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def read_video(path: str | Path, fps: float | None = None, short_side: int | None = None,
               max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video to T x H x W x 3 uint8, optionally resampled to ``fps`` and resized.

    Uses decord when installed, PyAV otherwise. Returns (frames, the fps of the returned frames).
    Raises ``ValueError`` naming the file when it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        try:
            import decord

            vr = decord.VideoReader(str(path), num_threads=1)
            n, native = len(vr), float(vr.get_avg_fps()) or 30.0
            step = max(1.0, native / fps) if fps else 1.0
            idx = np.arange(0, n, step).round().astype(int)
            idx = idx[idx < n][:max_frames]
            frames = vr.get_batch(list(idx)).asnumpy()
        except ImportError:
            import av

            with av.open(str(path)) as c:
                stream = c.streams.video[0]
                native = float(stream.average_rate or 30.0)
                step = max(1.0, native / fps) if fps else 1.0
                frames, nxt = [], 0.0
                for i, frame in enumerate(c.decode(stream)):
                    if i >= round(nxt):
                        frames.append(frame.to_ndarray(format="rgb24"))
                        nxt += step
                        if max_frames and len(frames) >= max_frames:
                            break
                frames = np.stack(frames)
    except (FileNotFoundError, MemoryError):
        raise
    except Exception as exc:  # decord/av raise their own error types on corrupt data
        raise ValueError(f"{path}: cannot decode video ({type(exc).__name__}: {exc})") from exc
    if len(frames) == 0:
        raise ValueError(f"{path}: no frames decoded")
    return _resize_uint8(frames, short_side), native / step


def list_media(root: str | Path, extensions) -> list[Path]:
    """Files under ``root`` (recursively) with one of ``extensions``, sorted."""
    root = Path(root)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in extensions and p.is_file())


def frame_cache_name(path: Path) -> str:
    """The frame-cache file of a video: ``<stem>-<where>-<version>.npy``, the stem to be read by
    people, ``where`` a short hash of the resolved path (``a/clip.mp4`` and ``b/clip.mp4`` differ)
    and ``version`` one of the size and modification time (a file replaced in place is new)."""
    st = path.stat()
    where = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]
    version = hashlib.sha1(f"{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:8]
    return f"{path.stem}-{where}-{version}.npy"


def _stale_caches(npy: Path) -> list[Path]:
    """Cache files of other versions of the video ``npy`` caches (same stem and path hash)."""
    import glob

    prefix = npy.name.rsplit("-", 1)[0]
    return [p for p in npy.parent.glob(glob.escape(prefix) + "-*.npy")
            if p != npy and not p.name.endswith(".tmp.npy") and p.name.rsplit("-", 1)[0] == prefix]


class PyAVReader:
    """What :class:`VideoFrames` uses of ``decord.VideoReader`` (``len``, ``get_avg_fps``,
    ``get_batch``), on PyAV, for machines without decord. ``get_batch`` returns the frames as a
    T x H x W x 3 uint8 array. PyAV cannot seek to a frame number exactly, so frames are decoded
    forward from the start, or from where the previous read stopped when the next read starts
    later (:meth:`VideoFrames.iter_frames` reads in order: one pass per video)."""

    def __init__(self, path):
        import av

        self.path = Path(path)
        with av.open(str(self.path)) as c:
            stream = c.streams.video[0]
            self.fps = float(stream.average_rate or 30.0)
            self.n = stream.frames or sum(1 for packet in c.demux(stream) if packet.size)
        self._decoder, self._next = None, 0  # the open decode pass and the number of its next frame

    def __len__(self) -> int:
        return self.n

    def get_avg_fps(self) -> float:
        return self.fps

    def get_batch(self, idx) -> np.ndarray:
        import av

        idx = [int(i) for i in idx]
        if self._decoder is None or min(idx) < self._next:
            container = av.open(str(self.path))
            self._decoder, self._next = container.decode(container.streams.video[0]), 0
        wanted, got = set(idx), {}
        for frame in self._decoder:
            if self._next in wanted:
                got[self._next] = frame.to_ndarray(format="rgb24")
            self._next += 1
            if self._next > max(idx):
                break
        if len(got) < len(wanted):
            raise ValueError(f"{self.path}: frame {max(wanted - set(got))} cannot be decoded "
                             f"({self._next} frames decoded, {self.n} listed)")
        return np.stack([got[i] for i in idx])


class VideoFrames:
    """A collection of videos as frame sequences at ~``fps`` with short side ``short_side``.

    ``root`` holds video files (decoded with decord, PyAV as fallback) and/or frame folders
    (``<root>/<video>/*.jpg``, the YouTube-VOS layout, read as they are: their stored frame rate
    is the rate). STT samples frames two *stored* YouTube-VOS frames apart, about 5 raw frames at
    30 fps, so the default resamples video files to 6 fps.

    With ``cache_dir``, each video file is decoded once into a ``.npy`` array (memory-mapped on
    use): fast random access for small corpora. The array is named by :func:`frame_cache_name`
    (the video's stem, its resolved path, size and modification time), so videos named alike in
    two folders do not share one, and a video replaced in place is decoded again. Without a
    cache, frames are decoded on demand (large corpora such as Kinetics) and only the frame
    counts are read up front, ``workers`` files at a time (decord works outside the GIL; the
    counts are the same as one by one). Unreadable videos are skipped with a warning that names
    them. Without decord, PyAV decodes (:class:`PyAVReader`: the same frames, slower seeks).
    """

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None, fps: float = 6.0,
                 short_side: int | None = 256, max_videos: int | None = None, min_frames: int = 2,
                 progress: bool = True, workers: int | None = None):
        from tqdm.auto import tqdm

        root = Path(root)
        files = list_media(root, VIDEO_EXTENSIONS)
        dirs = sorted({p.parent for p in list_media(root, IMAGE_EXTENSIONS)}) if root.is_dir() else []
        items = [(p.stem, p) for p in files] + [(d.name, d) for d in dirs]
        if max_videos:
            items = items[:max_videos]
        if not items:
            raise FileNotFoundError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) or frame folders under {root}")
        self.fps, self.short_side = fps, short_side
        cache = Path(cache_dir) / f"fps{fps:g}_short{short_side}" if cache_dir else None
        npys = {src: cache / frame_cache_name(src) for _, src in items if not src.is_dir()} if cache else {}
        if any(not npy.is_file() for npy in npys.values()):
            ensure_writable(cache, "frame cache folder")  # before decoding anything
            cache.mkdir(parents=True, exist_ok=True)
        self.videos: list[tuple[str, object, int]] = []  # (name, source, number of frames)
        self.skipped: list[str] = []
        counts = self._counts([src for _, src in items if not cache and not src.is_dir()],
                              workers or min(8, os.cpu_count() or 1))
        for name, src in tqdm(items, desc="indexing videos", disable=not progress, unit="video"):
            try:
                if src.is_dir():
                    source = list_media(src, IMAGE_EXTENSIONS)
                    n = len(source)
                elif cache:
                    npy = npys[src]
                    if not npy.is_file():
                        frames, _ = read_video(src, fps, short_side)
                        atomic_save_npy(npy, frames)  # whole or absent, whoever else decodes it meanwhile
                        for stale in _stale_caches(npy):  # earlier versions of the same file
                            stale.unlink(missing_ok=True)
                    source = np.load(npy, mmap_mode="r")
                    n = len(source)
                else:
                    source, n = src, next(counts)
                    if isinstance(n, Exception):
                        raise n
            except (ValueError, FileNotFoundError) as exc:
                warnings.warn(f"skipping {src}: {exc}", stacklevel=2)
                self.skipped.append(str(src))
                continue
            if n >= min_frames:
                self.videos.append((name, source, n))
        if not self.videos:
            raise ValueError(f"none of the {len(items)} videos under {root} could be read")

    def _count(self, path: Path) -> int:
        try:
            vr = self._reader(path)
            return int(np.ceil(len(vr) / max(1.0, float(vr.get_avg_fps()) / self.fps)))
        except Exception as exc:
            raise ValueError(f"{path}: cannot decode video ({exc})") from exc

    def _counts(self, paths: list, workers: int):
        """:meth:`_count` of each path in order (an unreadable file's ValueError in its place, for
        the indexing loop to skip it), ``workers`` at a time, at most ``4 * workers`` ahead."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        def count(path):
            try:
                return self._count(path)
            except ValueError as exc:
                return exc

        with ThreadPoolExecutor(workers) as pool:
            pending = deque()
            for path in paths:
                pending.append(pool.submit(count, path))
                if len(pending) > 4 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    def __len__(self) -> int:
        return sum(n for _, _, n in self.videos)

    def length(self, v: int) -> int:
        return self.videos[v][2]

    def frames(self, v: int, ts) -> np.ndarray:
        """Frames ``ts`` of video ``v`` as len(ts) x H x W x 3 uint8 (a writable copy)."""
        return self._read(self.videos[v][1], list(ts))

    def iter_frames(self, v: int, ts, batch: int = 32):
        """Frames ``ts`` of video ``v``, ``batch`` at a time: yields (those ts, len x H x W x 3
        uint8), the same frames as :meth:`frames`, but a video file is opened once and each batch
        is one decode (reading many frames of one video, e.g. for the k-means colours)."""
        src, ts = self.videos[v][1], list(ts)
        reader = None if isinstance(src, (np.ndarray, list)) else self._reader(src)
        for s in range(0, len(ts), batch):
            yield ts[s : s + batch], self._read(src, ts[s : s + batch], reader)

    @staticmethod
    def _reader(path):
        """decord's VideoReader (frame-exact seeks, decodes outside the GIL), or a
        :class:`PyAVReader` where decord is not installed."""
        try:
            import decord
        except ImportError:
            return PyAVReader(path)
        return decord.VideoReader(str(path), num_threads=1)

    def _read(self, src, ts: list, reader=None) -> np.ndarray:
        if isinstance(src, np.ndarray):
            return np.array(src[ts])
        if isinstance(src, list):
            return _resize_uint8(np.stack([read_image(src[t]) for t in ts]), self.short_side)
        vr = reader or self._reader(src)
        step = max(1.0, float(vr.get_avg_fps()) / self.fps)
        idx = [min(len(vr) - 1, int(round(t * step))) for t in ts]
        frames = vr.get_batch(idx)
        return _resize_uint8(frames if isinstance(frames, np.ndarray) else frames.asnumpy(), self.short_side)

    def frame_index(self) -> list[tuple[int, int]]:
        """(video, frame) pairs of every frame."""
        return [(v, t) for v, (_, _, n) in enumerate(self.videos) for t in range(n)]


# ---------------------------------------------------------------------------- training datasets


class StillImages:
    """Still images for STT step 1: every frame of the video files under the sources (see
    :class:`VideoFrames`), and every image file (an ImageNet-style ``<root>/<class>/*.JPEG``
    folder works as it is; so do frame folders).

    Corrupt image files are skipped with a warning naming them (the next image is used), never a
    crash mid-epoch; unreadable videos are skipped when the frame cache is built.
    """

    def __init__(self, sources, cache_dir, fps: float = 6.0, short_side: int = 256, max_videos=None,
                 progress: bool = True):
        self.caches, self.files = [], []
        for src in [Path(s) for s in ([sources] if isinstance(sources, (str, Path)) else sources)]:
            if not src.exists():
                raise FileNotFoundError(f"training data not found: {src}")
            has_videos = src.suffix.lower() in VIDEO_EXTENSIONS or bool(list_media(src, VIDEO_EXTENSIONS))
            if has_videos:
                self.caches.append(VideoFrames(src, cache_dir, fps, short_side, max_videos, progress=progress))
            elif src.is_dir():
                self.files += list_media(src, IMAGE_EXTENSIONS)
        self.index = [(c, v, t) for c, cache in enumerate(self.caches) for v, t in cache.frame_index()]
        if not self.index and not self.files:
            raise FileNotFoundError(f"no videos or images under {sources}")
        self.short_side = short_side
        sizes = [len(c.videos) for c in self.caches]
        self._video_offset = [sum(sizes[:c]) for c in range(len(sizes))]
        self.n_videos = sum(sizes)

    def __len__(self) -> int:
        return len(self.index) + len(self.files)

    def get(self, i: int) -> np.ndarray:
        """Image ``i`` as H x W x 3 uint8."""
        return self.load(i)[0]

    def load(self, i: int) -> tuple[np.ndarray, int]:
        """Image ``i`` (H x W x 3 uint8) and its instance: the video it comes from (frames of one
        video are near-duplicates of each other), or the image file itself."""
        for attempt in range(len(self)):
            j = (i + attempt) % len(self)
            if j < len(self.index):
                c, v, t = self.index[j]
                return self.caches[c].frames(v, [t])[0], self._video_offset[c] + v
            try:
                return read_image(self.files[j - len(self.index)]), self.n_videos + j - len(self.index)
            except (ValueError, FileNotFoundError) as exc:
                warnings.warn(f"skipping unreadable image: {exc}", stacklevel=2)
        raise ValueError("no readable image in the dataset")

    @property
    def n_instances(self) -> int:
        """Distinct instances: videos plus image files."""
        return self.n_videos + len(self.files)

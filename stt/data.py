"""Dataset readers. Official layouts are read unchanged; every user error names its file.

Data root: the ``STT_DATA`` environment variable, default ``~/stt-data``. Under it the readers
look for their dataset folders (``DAVIS``, ``DAVIS2017``, ``DAVIS2016``, ``JHMDB``, ...), or you
pass the dataset folder itself.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_DATA_ROOT = "~/stt-data"


def data_root() -> Path:
    """``$STT_DATA`` or ``~/stt-data``."""
    return Path(os.environ.get("STT_DATA", DEFAULT_DATA_ROOT)).expanduser()


def cache_dir() -> Path:
    """``$STT_CACHE`` or ``~/.cache/stt``: decoded frame caches and generated (synthetic) data."""
    return Path(os.environ.get("STT_CACHE", "~/.cache/stt")).expanduser()


def ensure_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Raise a ``RuntimeError`` naming ``folder`` unless files can be created in it (or, when it
    does not exist yet, in its nearest existing parent, where it will be made). Called before any
    compute, so that a read-only ``--out`` or ``$STT_CACHE`` fails at once, not after an hour.
    Checked with the process's own permissions (``os.access``), then by creating and dropping an
    unnamed temporary file there (read-only mounts, ACLs)."""
    import tempfile

    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RuntimeError(f"{what} {folder}: {probe} is not a folder")
    writable = os.access(probe, os.W_OK | os.X_OK)
    if writable:
        try:
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError:
            writable = False
    if not writable:
        where = "" if probe == folder else f" (it would be created in {probe}, which is not writable)"
        raise RuntimeError(f"{what} {folder} is not writable{where}; choose another folder or change its permissions")
    return folder


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically (a temporary file, then rename); a file that already holds it is
    left untouched, so re-reading finished results needs no write access."""
    path, data = Path(path), text.encode()
    if path.is_file() and path.read_bytes() == data:
        return
    ensure_writable(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def data_path(path, default=None):
    """A user-given dataset path: absolute as it is, relative under ``$STT_DATA``, empty -> ``default``."""
    if not path:
        return default
    path = Path(path).expanduser()
    return path if path.is_absolute() else data_root() / path


# ---------------------------------------------------------------------------- images


def read_image(path: str | Path) -> np.ndarray:
    """RGB image as H x W x 3 uint8; a clear error for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from exc


def read_mask(path: str | Path) -> np.ndarray:
    """Object-id map (H x W, uint8) from a DAVIS annotation PNG.

    DAVIS-2017 indexed-palette PNGs (mode "P"): ids 1..K, 255 = void, which is scored as
    background (as davis2017-evaluation does). DAVIS-2016 greyscale PNGs with values {0, 255}:
    one object, id 1. A greyscale mask with other values (antialiased edges, a resized mask) is
    read as binary too, foreground where >= 128, with a warning naming the file: greyscale
    values are intensities, not object ids (ids live in palette PNGs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation not found: {path}")
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im)
    except Exception as exc:
        raise ValueError(f"{path}: unreadable annotation ({exc})") from exc
    if arr.ndim != 2:
        raise ValueError(f"{path}: expected a single-channel (palette or greyscale) mask, got shape {arr.shape}")
    if mode in ("L", "1", "I", "I;16") and set(np.unique(arr).tolist()) <= {0, 1, 255}:
        return (arr > 0).astype(np.uint8)  # DAVIS-2016 binary
    if mode == "L":
        warnings.warn(f"{path}: greyscale mask with values other than 0 and 255 (e.g. antialiased edges); "
                      "read as one object where the value is >= 128 (DAVIS-2016 binary). Object ids need a "
                      "palette (mode P) PNG", stacklevel=2)
        return (arr >= 128).astype(np.uint8)
    arr = arr.astype(np.uint8)
    arr[arr == 255] = 0
    return arr


def to_tensor(frames: np.ndarray, device=None) -> torch.Tensor:
    """T x H x W x 3 uint8 -> T x 3 x H x W float in [0, 1], on ``device`` (the uint8 frames
    travel, a quarter of the bytes, and the conversion runs there)."""
    x = torch.from_numpy(np.ascontiguousarray(frames))
    return x.to(device).permute(0, 3, 1, 2).float().div_(255.0)


def resize_short_side(frames: torch.Tensor, short_side: int | None, multiple: int = 8) -> torch.Tensor:
    """Resize ``T x 3 x H x W`` so the short side is ``short_side`` and both sides are multiples
    of ``multiple`` (the encoder stride), so the feature map tiles the frame exactly.
    The aspect ratio changes by at most ``multiple / 2`` pixels on the long side."""
    H, W = frames.shape[-2:]
    if short_side is None:
        short_side = min(H, W)
    scale = short_side / min(H, W)
    h = max(multiple, int(round(H * scale / multiple)) * multiple)
    w = max(multiple, int(round(W * scale / multiple)) * multiple)
    if (h, w) == (H, W):
        return frames
    return F.interpolate(frames, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


# ---------------------------------------------------------------------------- DAVIS


@dataclass
class DavisSequence:
    name: str
    frames: list[Path]
    masks: list[Path]


def find_davis(root: str | Path | None = None) -> Path:
    """Locate a DAVIS folder: ``root`` itself if it holds ``JPEGImages``, else its ``DAVIS``,
    ``DAVIS2017``, ``DAVIS-2017``, ``DAVIS2016`` or ``synthetic`` child (in that order)."""
    root = Path(root).expanduser() if root is not None else data_root()
    candidates = [root] + [root / n for n in ("DAVIS", "DAVIS2017", "DAVIS-2017", "DAVIS2016", "synthetic")]
    for c in candidates:
        if (c / "JPEGImages").is_dir():
            return c
    raise FileNotFoundError(
        f"no DAVIS dataset under {root}: expected {root}/JPEGImages or one of "
        f"{', '.join(str(root / n) for n in ('DAVIS', 'DAVIS2017', 'DAVIS2016'))} "
        "(run `stt download davis2017`, or set STT_DATA / --data to your copy)"
    )


class DAVIS:
    """DAVIS-2016 / DAVIS-2017 in the official layout::

        <root>/JPEGImages/<res>/<seq>/%05d.jpg
        <root>/Annotations/<res>/<seq>/%05d.png
        <root>/ImageSets/<year>/<split>.txt

    Args:
        root: the DAVIS folder, or a data root holding one (see :func:`find_davis`).
        year: "2016" or "2017"; default: 2017 if ``ImageSets/2017`` exists, else 2016.
        split: "val" (default) or "train".
        resolution: "480p" (default) or "Full-Resolution".
        sequences: optional subset of sequence names (order kept).
    """

    def __init__(self, root=None, year=None, split="val", resolution="480p", sequences=None):
        self.root = find_davis(root)
        sets = self.root / "ImageSets"
        if year is None:
            years = sorted(p.name for p in sets.iterdir() if p.is_dir()) if sets.is_dir() else []
            year = "2017" if "2017" in years else (years[-1] if years else None)
        if year is None:
            raise FileNotFoundError(f"{sets}: no ImageSets/<year>/ folder (expected ImageSets/2017 or ImageSets/2016)")
        self.year, self.split, self.resolution = str(year), split, resolution
        list_file = sets / self.year / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"sequence list not found: {list_file}")
        names = [line.strip() for line in list_file.read_text().splitlines() if line.strip()]
        if sequences:
            unknown = [s for s in sequences if s not in names]
            if unknown:
                raise ValueError(f"sequences {unknown} are not in {list_file}")
            names = list(sequences)
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self):
        return iter(self.names)

    def sequence(self, name: str) -> DavisSequence:
        img_dir = self.root / "JPEGImages" / self.resolution / name
        ann_dir = self.root / "Annotations" / self.resolution / name
        frames = sorted(img_dir.glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(f"no frames (*.jpg) in {img_dir}")
        if not ann_dir.is_dir():
            raise FileNotFoundError(f"annotation folder not found: {ann_dir}")
        masks = [ann_dir / (f.stem + ".png") for f in frames]
        missing = [m for m in masks if not m.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{name}: {len(missing)} frame(s) have no annotation, first: {missing[0]} "
                f"(the semi-supervised protocol scores every frame)"
            )
        return DavisSequence(name, frames, masks)

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """All frames (T x H x W x 3 uint8) and id maps (T x H x W uint8) of a sequence."""
        seq = self.sequence(name)
        frames = [read_image(p) for p in seq.frames]
        masks = [read_mask(p) for p in seq.masks]
        for fp, mp, f, m in zip(seq.frames, seq.masks, frames, masks):
            if f.shape != frames[0].shape:
                raise ValueError(f"{fp}: frame is {f.shape[1]}x{f.shape[0]} but {seq.frames[0].name} "
                                 f"is {frames[0].shape[1]}x{frames[0].shape[0]}")
            if m.shape != f.shape[:2]:
                raise ValueError(f"{mp}: mask is {m.shape[1]}x{m.shape[0]} but its frame {fp} is "
                                 f"{f.shape[1]}x{f.shape[0]}")
        return np.stack(frames), np.stack(masks)


# ---------------------------------------------------------------------------- videos

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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
                        tmp = npy.with_name(f"{npy.stem}.{os.getpid()}.tmp.npy")  # two processes never share one
                        np.save(tmp, frames)
                        tmp.replace(npy)
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


class TwoViews(torch.utils.data.Dataset):
    """MoCo training pairs: two independent MoCo v2 augmentations of one still image, and the
    image's instance (:meth:`StillImages.load`).

    ``on_device=False``: the loader's workers build the views (CPU, per sample); items are
    ``(view 1, view 2, instance)``. ``on_device=True``: the workers only draw the parameters and
    cut the uint8 crops; :meth:`collate` pads them into one uint8 batch and :meth:`to_device`
    resizes and jitters the whole batch on the training device (:mod:`stt.augment`).

    ``scale``: the area range of the random resized crop, as a fraction of the image [MoCo v2:
    0.2-1.0]."""

    def __init__(self, images: StillImages, size: int = 224, on_device: bool = False, scale=(0.2, 1.0)):
        self.images, self.size, self.on_device, self.scale = images, size, on_device, tuple(scale)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key):
        from .augment import cut, moco_v2_params, moco_v2_view

        idx, seed = key
        gen = torch.Generator().manual_seed(seed)
        img, instance = self.images.load(idx)
        if not self.on_device:
            return moco_v2_view(img, self.size, gen, self.scale), moco_v2_view(img, self.size, gen, self.scale), instance
        p1, p2 = moco_v2_params(*img.shape[:2], gen, self.scale), moco_v2_params(*img.shape[:2], gen, self.scale)
        return cut(img, p1["box"]), cut(img, p2["box"]), p1, p2, instance

    def collate(self, items):
        if not self.on_device:
            return torch.utils.data.default_collate(items)
        from .augment import collate_params, pad_stack

        q, k, p1, p2, inst = zip(*items)
        return {"q": pad_stack(q), "k": pad_stack(k), "p1": collate_params(p1), "p2": collate_params(p2),
                "instance": torch.tensor(inst)}

    def to_device(self, batch, device):
        """A collated batch -> ``(im_q, im_k, instance)`` on ``device``, B x 3 x S x S each."""
        if not self.on_device:
            return move_to(batch, device)
        from .augment import photometric, resize_crops

        b = move_to(batch, device)
        views = [photometric(resize_crops(*b[v], self.size), b[p]) for v, p in (("q", "p1"), ("k", "p2"))]
        return views[0], views[1], b["instance"]


class FrameClips(torch.utils.data.Dataset):
    """Clips of ``n_frames`` frames, ``gap`` stored frames apart, with one random resized crop and
    flip shared by the whole clip (:func:`stt.augment.clip_crop`): STT step 2 pairs
    (``n_frames=2, gap=1``, area 0.6-1.0, aspect 1.5-2.0, 256 x 256) and CorrFlow clips.
    Items are ``n_frames x 3 x size x size`` RGB in [0, 1]; with ``on_device`` the crop is cut
    in the worker and resized on the training device, as :class:`TwoViews`.

    ``drop_static`` (*ours*, default 0): leave out this fraction of the clips, those whose first
    and last frames differ least (:meth:`motion`): a pair of identical frames teaches
    reconstruction nothing about correspondence."""

    def __init__(self, videos: VideoFrames, n_frames: int = 2, gap: int = 1, size: int = 256,
                 scale=(0.6, 1.0), ratio=(1.5, 2.0), on_device: bool = False, drop_static: float = 0.0):
        self.videos, self.n, self.gap, self.size, self.scale, self.ratio = videos, n_frames, gap, size, scale, ratio
        self.on_device = on_device
        span = (n_frames - 1) * gap
        self.index = [(v, t) for v, t in videos.frame_index() if t + span < videos.length(v)]
        if not self.index:
            raise ValueError(f"no video has the {span + 1} frames a clip needs")
        if drop_static > 0:
            keep = np.argsort(-self.motion(), kind="stable")[: max(1, round(len(self.index) * (1 - drop_static)))]
            self.index = [self.index[i] for i in sorted(keep)]

    def motion(self) -> np.ndarray:
        """Per clip of :attr:`index`: the mean absolute grey-level difference (0-255) between its
        first and last frames, on frames subsampled 8x (one read of every video)."""
        span = (self.n - 1) * self.gap
        grey = {}
        for v in sorted({v for v, _ in self.index}):
            ts = range(self.videos.length(v))
            grey[v] = np.concatenate([f[:, ::8, ::8].mean(-1) for _, f in self.videos.iter_frames(v, ts)])
        return np.array([np.abs(grey[v][t + span] - grey[v][t]).mean() for v, t in self.index])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        from .augment import clip_crop, clip_params, cut

        idx, seed = key
        v, t = self.index[idx]
        frames = self.videos.frames(v, range(t, t + self.n * self.gap, self.gap))
        gen = torch.Generator().manual_seed(seed)
        if not self.on_device:
            return clip_crop(frames, self.size, gen, self.scale, self.ratio)
        p = clip_params(*frames.shape[1:3], gen, self.scale, self.ratio)
        return cut(frames, p["box"]), p["flip"]

    def collate(self, items):
        if not self.on_device:
            return torch.utils.data.default_collate(items)
        from .augment import pad_stack

        crops, flips = zip(*items)
        return {"crops": pad_stack(crops), "flip": torch.tensor(flips)}

    def to_device(self, batch, device):
        """A collated batch -> B x T x 3 x S x S clips on ``device``."""
        if not self.on_device:
            return move_to(batch, device)
        from .augment import flip_batch, resize_crops

        b = move_to(batch, device)
        crops, sizes = b["crops"]  # B x T x Hmax x Wmax x 3 uint8, B x 2
        B, T = crops.shape[:2]
        x = resize_crops(crops.flatten(0, 1), sizes.repeat_interleave(T, 0), self.size)
        return flip_batch(x.view(B, T, 3, self.size, self.size), b["flip"])


def move_to(x, device):
    """Tensors (in nested tuples, lists, dicts) to ``device``, asynchronously from pinned memory."""
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(move_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: move_to(v, device) for k, v in x.items()}
    return x


# ---------------------------------------------------------------------------- JHMDB and VIP

JHMDB_JOINTS = ("neck", "belly", "face", "right shoulder", "left shoulder", "right hip", "left hip", "right elbow",
                "left elbow", "right knee", "left knee", "right wrist", "left wrist", "right ankle", "left ankle")
JHMDB_BONES = ((0, 2), (0, 1), (0, 3), (0, 4), (3, 7), (7, 11), (4, 8), (8, 12), (1, 5), (1, 6), (5, 9), (9, 13),
               (6, 10), (10, 14))


def _find_dataset(root, names, required) -> Path:
    root = Path(root).expanduser() if root is not None else data_root()
    for c in [root] + [root / n for n in names]:
        if all((c / r).exists() for r in required):
            return c
    raise FileNotFoundError(f"no dataset under {root}: expected {', '.join(required)} in it or in one of "
                            f"{', '.join(str(root / n) for n in names)}")


class JHMDB:
    """JHMDB in the official layout::

        <root>/Frames/<action>/<clip>/%05d.png           (1-based frame numbers)
        <root>/joint_positions/<action>/<clip>/joint_positions.mat   (pos_img: 2 x 15 x T, 1-based pixels)
        <root>/splits/<action>_test_split<k>.txt        (optional: "<clip>.avi 1|2", 2 = test)

    Without split files every clip that has both frames and joints is used.
    """

    def __init__(self, root=None, split: int = 1):
        self.root = _find_dataset(root, ("JHMDB", "JHMDB_sample", "jhmdb"), ("Frames", "joint_positions"))
        splits = sorted((self.root / "splits").glob(f"*_test_split{split}.txt")) if (self.root / "splits").is_dir() else []
        names = []
        if splits:
            for f in splits:
                action = f.name[: -len(f"_test_split{split}.txt")]
                for line in f.read_text().split("\n"):
                    parts = line.split()
                    if len(parts) == 2 and parts[1] == "2":
                        names.append(f"{action}/{Path(parts[0]).stem}")
        else:
            for mat in sorted((self.root / "joint_positions").glob("*/*/joint_positions.mat")):
                name = f"{mat.parent.parent.name}/{mat.parent.name}"
                if (self.root / "Frames" / name).is_dir():
                    names.append(name)
        if not names:
            raise FileNotFoundError(f"no JHMDB clips with frames and joints under {self.root}")
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def load(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Frames (T x H x W x 3 uint8) and joints (T x 15 x 2, (x, y), 1-based pixels). A NaN
        joint position is an error naming the file, the frame and the joint."""
        from scipy.io import loadmat

        frame_dir = self.root / "Frames" / name
        frames = sorted(p for p in frame_dir.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not frames:
            raise FileNotFoundError(f"no frames in {frame_dir}")
        mat = self.root / "joint_positions" / name / "joint_positions.mat"
        if not mat.is_file():
            raise FileNotFoundError(f"joint annotations not found: {mat}")
        try:
            pos = np.asarray(loadmat(str(mat))["pos_img"], dtype=np.float64)
        except Exception as exc:
            raise ValueError(f"{mat}: cannot read 'pos_img' ({exc})") from exc
        if pos.ndim != 3 or pos.shape[:2] != (2, 15):
            raise ValueError(f"{mat}: pos_img has shape {pos.shape}, expected 2 x 15 x T")
        if pos.shape[2] != len(frames):
            raise ValueError(f"{mat}: joints for {pos.shape[2]} frames but {frame_dir} holds {len(frames)} frames")
        nan = np.argwhere(np.isnan(pos).any(0).T)  # (frame, joint) pairs, earliest frame first
        if len(nan):
            t, j = nan[0]
            raise ValueError(f"{mat}: pos_img is NaN for joint {j + 1} ({JHMDB_JOINTS[j]}) in frame {t + 1} "
                             f"({frames[t].name}){f', and {len(nan) - 1} more' if len(nan) > 1 else ''}; "
                             "every joint needs a position (an invisible joint lies outside the frame)")
        return np.stack([read_image(p) for p in frames]), pos.transpose(2, 1, 0).copy()


VIP_CLASSES = 20


class VIP:
    """VIP (Video Instance-level Parsing) ``VIP_Fine`` in the official layout::

        <root>/Images/<video>/<frame>.jpg
        <root>/Annotations/Category_ids/<video>/<frame>.png    (class ids 0..19, 255 = ignore)
        <root>/lists/val_videos.txt                            (optional: one video a line)
    """

    def __init__(self, root=None, split: str = "val"):
        self.root = _find_dataset(root, ("VIP_Fine", "VIP", "vip/VIP_Fine"), ("Images", "Annotations/Category_ids"))
        lst = self.root / "lists" / f"{split}_videos.txt"
        ann = self.root / "Annotations" / "Category_ids"
        self.names = ([v.strip() for v in lst.read_text().split("\n") if v.strip()] if lst.is_file()
                      else sorted(p.name for p in ann.iterdir() if p.is_dir()))
        if not self.names:
            raise FileNotFoundError(f"no VIP videos in {lst if lst.is_file() else ann}")

    def __len__(self) -> int:
        return len(self.names)

    def load(self, name: str) -> tuple[np.ndarray, list[np.ndarray | None]]:
        """Frames (T x H x W x 3) and, per frame, its class-id map or None when not annotated."""
        img_dir = self.root / "Images" / name
        frames = sorted(p for p in img_dir.glob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not frames:
            raise FileNotFoundError(f"no frames in {img_dir}")
        ann_dir = self.root / "Annotations" / "Category_ids" / name
        first = ann_dir / (frames[0].stem + ".png")
        if not first.is_file():
            raise FileNotFoundError(f"{name}: the first frame has no annotation ({first}); propagation starts from it")
        imgs = np.stack([read_image(p) for p in frames])
        labels = []
        for p in frames:
            a = ann_dir / (p.stem + ".png")
            if not a.is_file():
                labels.append(None)
                continue
            with Image.open(a) as im:
                lab = np.array(im)
            if lab.ndim != 2 or lab.shape != imgs.shape[1:3]:
                raise ValueError(f"{a}: expected a {imgs.shape[2]}x{imgs.shape[1]} single-channel class map, "
                                 f"got shape {lab.shape}")
            labels.append(lab.astype(np.uint8))
        return imgs, labels

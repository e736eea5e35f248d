"""Dataset readers: the data root, images and annotations, DAVIS, JHMDB and VIP. Official layouts
are read unchanged; every user error names its file.

Data root: the ``STT_DATA`` environment variable, default ``~/stt-data``. Under it the readers
look for their dataset folders (``DAVIS``, ``DAVIS2017``, ``DAVIS2016``, ``JHMDB``, ...), or you
pass the dataset folder itself.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

DEFAULT_DATA_ROOT = "~/stt-data"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def data_root() -> Path:
    """``$STT_DATA`` or ``~/stt-data``."""
    return Path(os.environ.get("STT_DATA", DEFAULT_DATA_ROOT)).expanduser()


def cache_dir() -> Path:
    """``$STT_CACHE`` or ``~/.cache/stt``: decoded frame caches and generated (synthetic) data."""
    return Path(os.environ.get("STT_CACHE", "~/.cache/stt")).expanduser()



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

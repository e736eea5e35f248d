"""Dataset readers. Official layouts are read unchanged; every user error names its file.

Data root: the ``STT_DATA`` environment variable, default ``~/stt-data``. Under it the readers
look for their dataset folders (``DAVIS``, ``DAVIS2017``, ``DAVIS2016``, ``JHMDB``, ...), or you
pass the dataset folder itself.
"""
from __future__ import annotations

import os
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


# ---------------------------------------------------------------------------- images


def read_image(path: str | Path) -> np.ndarray:
    """RGB image as H x W x 3 uint8; a clear error for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise ValueError(f"{path}: unreadable image ({exc})") from exc


def read_mask(path: str | Path) -> np.ndarray:
    """Object-id map (H x W, uint8) from a DAVIS annotation PNG.

    DAVIS-2017 indexed-palette PNGs: ids 1..K, 255 = void, which is scored as background (as
    davis2017-evaluation does). DAVIS-2016 greyscale PNGs with values {0, 255}: one object, id 1.
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
    arr = arr.astype(np.uint8)
    arr[arr == 255] = 0
    return arr


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """T x H x W x 3 uint8 -> T x 3 x H x W float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float().div_(255.0)


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


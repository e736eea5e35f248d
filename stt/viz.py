"""Figures: the DAVIS palette, mask overlays, and one helper that saves every figure."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def davis_palette(n: int = 256) -> list[int]:
    """The PASCAL-VOC / DAVIS colour map (id 1 = dark red, 2 = green, ...), flat RGB list."""
    pal = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal.reshape(-1).tolist()


def colorize(ids: np.ndarray) -> np.ndarray:
    """Id map (H x W) -> H x W x 3 uint8 in the DAVIS palette."""
    pal = np.array(davis_palette(), dtype=np.uint8).reshape(-1, 3)
    return pal[np.asarray(ids, dtype=np.int64) % 256]


def overlay(frame: np.ndarray, ids: np.ndarray, alpha: float = 0.5, contour: bool = True) -> np.ndarray:
    """Blend an id map over an RGB frame (both H x W), objects only; white contours."""
    frame = np.asarray(frame, dtype=np.float32)
    col = colorize(ids).astype(np.float32)
    fg = (np.asarray(ids) > 0)[..., None]
    out = np.where(fg, (1 - alpha) * frame + alpha * col, frame)
    if contour:
        from .metrics import seg2bmap

        edge = np.zeros(ids.shape, bool)
        for i in np.unique(ids):
            if i > 0:
                edge |= seg2bmap(ids == i)
        out[edge] = 255
    return out.clip(0, 255).astype(np.uint8)


def figure_dir() -> Path:
    """Where :func:`save_figure` writes: ``$STT_FIGURES`` or ``./figures-out``."""
    return Path(os.environ.get("STT_FIGURES", "figures-out"))


def save_figure(fig, name: str, out_dir: str | Path | None = None, dpi: int = 110, max_kb: int = 300) -> Path:
    """Save a matplotlib figure as ``<out_dir>/<name>.png`` (the one place figures are written).

    Figures over ``max_kb`` (photographs) are re-saved with a 256-colour palette to stay small."""
    out = Path(out_dir) if out_dir is not None else figure_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return shrink_png(path, max_kb)


def shrink_png(path: str | Path, max_kb: int = 300) -> Path:
    """Re-save a PNG over ``max_kb`` with a 256-colour palette (photographs stay readable)."""
    from PIL import Image

    path = Path(path)
    if path.stat().st_size > max_kb * 1024:
        with Image.open(path) as im:
            small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
        small.save(path, optimize=True)
    return path

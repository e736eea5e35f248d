"""A procedural, seeded stand-in for DAVIS when no real dataset is reachable.

Textured objects (random star-shaped outlines, their own textures) move, rotate and scale
over a textured background seen by a panning camera; masks are exact because they come from
the same rendering. :func:`make_synthetic_davis` writes the result in the DAVIS-2017 layout
(JPEG frames, indexed-palette PNG masks, ``ImageSets/2017/val.txt``), so everything downstream
reads it with the same :class:`stt.datasets.DAVIS` reader as the real thing. The same rendering
gives stand-ins for VIP (:func:`make_synthetic_vip`: objects cut into parts), JHMDB
(:func:`make_synthetic_jhmdb`: a stick figure of 15 keypoints fixed on an object) and unlabelled
training video (:func:`make_synthetic_videos`).

It is a smoke-test dataset: numbers on it say that the pipeline runs, not how good a model is.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .viz import davis_palette


def _texture(gen: torch.Generator, h: int, w: int, octaves: int = 4) -> torch.Tensor:
    """3 x h x w band-limited coloured noise in [0, 1]."""
    out = torch.zeros(3, h, w)
    for o in range(octaves):
        gh, gw = max(2, h >> (octaves - o + 1)), max(2, w >> (octaves - o + 1))
        noise = torch.rand(1, 3, gh, gw, generator=gen)
        out += F.interpolate(noise, size=(h, w), mode="bicubic", align_corners=False)[0] / (1.6**o)
    out -= out.amin(dim=(1, 2), keepdim=True)
    out /= out.amax(dim=(1, 2), keepdim=True).clamp(min=1e-6)
    # Tint with a random palette so objects and background differ in colour statistics.
    tint = torch.rand(3, 1, 1, generator=gen) * 0.7 + 0.3
    base = torch.rand(3, 1, 1, generator=gen) * 0.3
    stripes = 0.15 * torch.sin(torch.linspace(0, 6 * math.pi * torch.rand(1, generator=gen).item() + 2, w))
    return (base + tint * out + stripes.view(1, 1, w)).clamp(0, 1)


def render_sequence(seed: int, n_frames: int = 24, size=(240, 432), n_objects: int | None = None, points=None):
    """Render one sequence. Returns frames (T x H x W x 3 uint8) and masks (T x H x W uint8).

    ``points`` (N x 2, (u, v) with u to the right and v down, in units of the radius that fits
    inside its outline): points fixed on the last (topmost) object, whose outline harmonics are
    halved so that a disc of that radius lies inside it. Then also returns their tracks, T x N x 2
    (x, y) in 0-based pixels: exact keypoints that move, turn and scale with the object's texture.
    """
    gen = torch.Generator().manual_seed(seed)
    H, W = size
    rnd = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    n_obj = n_objects or int(torch.randint(1, 4, (1,), generator=gen))
    margin = max(H, W) // 4
    bg = _texture(gen, H + 2 * margin, W + 2 * margin)
    pan = (rnd(2) - 0.5) * 2 * margin / max(n_frames - 1, 1)  # pixels per frame (y, x)
    objs = []
    for _ in range(n_obj):
        objs.append(dict(
            tex=_texture(gen, 128, 128),
            radius=float(min(H, W) * (0.12 + 0.12 * rnd(1))),
            harm=(rnd(4) - 0.5) * 0.5,  # outline harmonics
            phase=rnd(4) * 2 * math.pi,
            start=torch.stack([H * (0.25 + 0.5 * rnd(1)), W * (0.2 + 0.6 * rnd(1))]).view(2),
            vel=(rnd(2) - 0.5) * torch.tensor([H, W]) * 0.5 / max(n_frames, 1),
            spin=float((rnd(1) - 0.5) * 0.08),
            wobble=float(rnd(1) * 0.15),
        ))
    if points is not None:
        points = torch.as_tensor(points, dtype=torch.float32).view(-1, 2)
        body = objs[-1]
        body["harm"] = body["harm"] * 0.5  # no random draws: the other objects and the background are unchanged
        theta = torch.linspace(0, 2 * math.pi, 721)
        outline = 1 + sum(body["harm"][k] * torch.cos((k + 2) * theta + body["phase"][k]) for k in range(4))
        fit = 0.85 * body["radius"] * float(outline.min())  # >= 0.42 radius: the harmonics sum to <= 0.5
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    frames, masks, tracks = [], [], []
    for t in range(n_frames):
        oy = int(round(margin + float(pan[0]) * t))
        ox = int(round(margin + float(pan[1]) * t))
        img = bg[:, oy : oy + H, ox : ox + W].clone()
        mask = torch.zeros(H, W, dtype=torch.uint8)
        for i, o in enumerate(objs, start=1):
            c = o["start"] + o["vel"] * t
            c = torch.stack([c[0].clamp(0, H - 1), c[1].clamp(0, W - 1)])
            ang = o["spin"] * t
            scale = 1.0 + o["wobble"] * math.sin(0.3 * t)
            # Only the box that can hold the object is rendered.
            reach = o["radius"] * (1 + float(o["harm"].abs().sum())) * scale + 2
            y0, y1 = max(0, int(c[0] - reach)), min(H, int(c[0] + reach) + 1)
            x0, x1 = max(0, int(c[1] - reach)), min(W, int(c[1] + reach) + 1)
            dy, dx = ys[y0:y1, x0:x1] - c[0], xs[y0:y1, x0:x1] - c[1]
            # Object coordinates: rotate back and scale.
            u = (math.cos(ang) * dx + math.sin(ang) * dy) / scale
            v = (-math.sin(ang) * dx + math.cos(ang) * dy) / scale
            theta = torch.atan2(v, u)
            rad = o["radius"] * (1 + sum(o["harm"][k] * torch.cos((k + 2) * theta + o["phase"][k]) for k in range(4)))
            inside = (u * u + v * v).sqrt() <= rad
            grid = torch.stack([u / (2 * o["radius"]), v / (2 * o["radius"])], -1)[None]
            tex = F.grid_sample(o["tex"][None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
            img[:, y0:y1, x0:x1] = torch.where(inside[None], tex, img[:, y0:y1, x0:x1])
            mask[y0:y1, x0:x1][inside] = i
            if points is not None and i == len(objs):  # object -> image coordinates, the inverse of (u, v) above
                u, v = points[:, 0] * fit * scale, points[:, 1] * fit * scale
                dx, dy = math.cos(ang) * u - math.sin(ang) * v, math.sin(ang) * u + math.cos(ang) * v
                tracks.append(torch.stack([c[1] + dx, c[0] + dy], -1).numpy())
        frames.append((img.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
        masks.append(mask.numpy())
    if points is not None:
        return np.stack(frames), np.stack(masks), np.stack(tracks).astype(np.float64)
    return np.stack(frames), np.stack(masks)


def make_synthetic_davis(
    root: str | Path, n_sequences: int = 4, n_frames: int = 24, size=(240, 432), seed: int = 0
) -> Path:
    """Write (or reuse) a synthetic DAVIS-2017-layout dataset under ``root``; returns ``root``.

    Reuses what is there when the same settings were written before (``SETTINGS`` file).
    """
    root = Path(root)
    settings = f"n_sequences={n_sequences} n_frames={n_frames} size={tuple(size)} seed={seed}\n"
    stamp = root / "SETTINGS"
    if stamp.is_file() and stamp.read_text() == settings:
        return root
    names = [f"synth-{seed:03d}-{i:02d}" for i in range(n_sequences)]
    palette = davis_palette()
    for i, name in enumerate(names):
        frames, masks = render_sequence(seed * 1000 + i, n_frames, size)
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / "480p" / name).mkdir(parents=True, exist_ok=True)
        for t, (f, m) in enumerate(zip(frames, masks)):
            Image.fromarray(f).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", quality=95)
            im = Image.fromarray(m, mode="P")
            im.putpalette(palette)
            im.save(root / "Annotations" / "480p" / name / f"{t:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    stamp.write_text(settings)
    return root


def make_synthetic_vip(root: str | Path, n_videos: int = 2, n_frames: int = 12, size=(120, 160), seed: int = 0,
                       annotate_every: int = 1) -> Path:
    """A synthetic stand-in in the official ``VIP_Fine`` layout (no real VIP data is reachable
    here): each rendered object is cut into an upper and a lower "part" with their own class ids
    (1..19; 0 = background). Frames without annotation (``annotate_every`` > 1) test that
    propagation runs through unannotated frames."""
    root = Path(root)
    settings = f"vip n_videos={n_videos} n_frames={n_frames} size={tuple(size)} seed={seed} every={annotate_every}\n"
    stamp = root / "SETTINGS"
    if stamp.is_file() and stamp.read_text() == settings:
        return root
    names = [f"videos{seed:03d}{i:02d}" for i in range(n_videos)]
    for i, name in enumerate(names):
        frames, masks = render_sequence(seed * 1000 + 500 + i, n_frames, size)
        (root / "Images" / name).mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / "Category_ids" / name).mkdir(parents=True, exist_ok=True)
        for t, (f, m) in enumerate(zip(frames, masks)):
            Image.fromarray(f).save(root / "Images" / name / f"{t:012d}.jpg", quality=95)
            if t % annotate_every:
                continue
            classes = np.zeros_like(m)
            for obj in np.unique(m[m > 0]):
                ys = np.nonzero(m == obj)[0]
                mid = (ys.min() + ys.max()) / 2
                rows = np.arange(m.shape[0])[:, None]
                classes[(m == obj) & (rows < mid)] = (2 * obj - 1) % 19 + 1
                classes[(m == obj) & (rows >= mid)] = (2 * obj) % 19 + 1
            Image.fromarray(classes.astype(np.uint8), mode="L").save(
                root / "Annotations" / "Category_ids" / name / f"{t:012d}.png")
    (root / "lists").mkdir(parents=True, exist_ok=True)
    (root / "lists" / "val_videos.txt").write_text("\n".join(names) + "\n")
    stamp.write_text(settings)
    return root


def make_synthetic_videos(root: str | Path, n_videos: int = 8, n_frames: int = 30, size=(240, 320),
                          seed: int = 0) -> Path:
    """Unlabelled stand-in training videos as frame folders (``<root>/<video>/%05d.jpg``), for a
    machine without any real video: the notebooks and ``stt train`` still run end to end."""
    root = Path(root)
    settings = f"videos n_videos={n_videos} n_frames={n_frames} size={tuple(size)} seed={seed}\n"
    stamp = root / "SETTINGS"
    if stamp.is_file() and stamp.read_text() == settings:
        return root
    for i in range(n_videos):
        frames, _ = render_sequence(seed * 1000 + 900 + i, n_frames, size)
        d = root / f"synthetic-video-{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for t, f in enumerate(frames):
            Image.fromarray(f).save(d / f"{t:05d}.jpg", quality=95)
    stamp.write_text(settings)
    return root


# A stick figure in the JHMDB joint order (stt.datasets.JHMDB_JOINTS), (u, v) in units of the radius
# that fits inside the body object: u to the image's right (the person's left), v down.
_FIGURE = ((0.0, -0.55), (0.0, 0.05), (0.0, -0.85), (-0.3, -0.5), (0.3, -0.5), (-0.2, 0.25), (0.2, 0.25),
           (-0.5, -0.2), (0.5, -0.2), (-0.25, 0.55), (0.25, 0.55), (-0.6, 0.1), (0.6, 0.1), (-0.3, 0.9), (0.3, 0.9))


def make_synthetic_jhmdb(root: str | Path, n_clips: int = 1, n_frames: int = 40, size=(240, 320),
                         seed: int = 0) -> Path:
    """A synthetic stand-in in the official JHMDB layout, for a machine without JHMDB::

        <root>/Frames/synthetic/<clip>/%05d.png                          (1-based)
        <root>/joint_positions/synthetic/<clip>/joint_positions.mat      (pos_img: 2 x 15 x T, 1-based)

    The 15 "joints" are a stick figure fixed on a textured object (:func:`render_sequence` with
    ``points``): exact tracks, so PCK runs on it; it says nothing about human pose."""
    from scipy.io import savemat

    root = Path(root)
    settings = f"jhmdb n_clips={n_clips} n_frames={n_frames} size={tuple(size)} seed={seed}\n"
    stamp = root / "SETTINGS"
    if stamp.is_file() and stamp.read_text() == settings:
        return root
    for i in range(n_clips):
        frames, _, tracks = render_sequence(seed * 1000 + 700 + i, n_frames, size, points=_FIGURE)
        clip = Path("synthetic") / f"synth_{seed:03d}_{i:02d}"
        (root / "Frames" / clip).mkdir(parents=True, exist_ok=True)
        (root / "joint_positions" / clip).mkdir(parents=True, exist_ok=True)
        for t, f in enumerate(frames, start=1):
            Image.fromarray(f).save(root / "Frames" / clip / f"{t:05d}.png")
        pos_img = (tracks + 1.0).transpose(2, 1, 0)  # T x 15 x (x, y) 0-based -> 2 x 15 x T 1-based
        savemat(root / "joint_positions" / clip / "joint_positions.mat", {"pos_img": pos_img})
    stamp.write_text(settings)
    return root

"""Training views: what each method's training step sees of its data (:mod:`stt.augment` makes
the augmentations). :class:`TwoViews`: MoCo's two views of one still image; :class:`FrameClips`:
crops of consecutive frames for the reconstruction methods (STT step 2, CorrFlow)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from .device import move_to
from .video import StillImages, VideoFrames

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


@dataclass
class ClipSettings:
    """What the clips of the reconstruction methods are made of (:class:`FrameClips` of
    :class:`stt.video.VideoFrames`): their settings in a method's ``data`` group."""

    image_size: int = 256  # side of the square crop
    fps: float = 6.0  # frames per second kept from each video
    short_side: int | None = 256  # frames resized to this short side when decoded; None: native
    max_videos: int | None = None  # use only the first N videos
    cache: bool | Literal["auto"] = "auto"  # keep decoded frames on disk (stt.recipe.frame_cache)
    augment: Literal["auto", "device", "workers"] = "auto"  # where the crops are resized
    gap: int = 1  # stored frames between the frames of a clip

"""MoCo v2, STT step 1 (SPEC section 2): spatial features by contrastive learning on still images.

The model (:class:`MoCo`), the settings of its training views (:class:`StillViewSettings`), its
presets and :func:`train_spatial`; :data:`METHOD` is its entry in :mod:`stt.methods`.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .checkpoint import ensure_writable
from .datasets import cache_dir
from .device import dist_world, full_precision, gather_all
from .encoder import ResNetEncoder
from .losses import info_nce
from .recipe import Method, constructor_settings, default_image_data, device_augment, seed_model_init
from .train import TrainConfig, distributed_env
from .video import StillImages
from .views import TwoViews


class MoCo(nn.Module):
    """MoCo v2 (He et al., CVPR 2020; Chen et al., arXiv 2003.04297): STT step 1, SPEC section 2.

    A query encoder (ResNet trunk + 2-layer MLP head) is trained with InfoNCE to pick its
    positive key (another augmentation of the same image, from a momentum encoder) among a queue
    of negatives from earlier batches.

    Args:
        arch: trunk, ``resnet18`` or ``resnet50``; the ``imagenet`` stride variant (the trunk is
            what STT step 2 loads; strides carry no weights).
        dim: embedding size [128].
        queue_size: negatives kept [65536 on ImageNet; scale it to the data].
        momentum: key-encoder momentum m [0.999].
        temperature: InfoNCE temperature [0.2 for v2].
        input_space: ``lab`` (the official STT step-1 R18 checkpoint is a Lab MoCo) or ``rgb``.
        exclude_same_instance: leave queue entries of the query's own instance (its video: every
            frame of a clip is a near-duplicate of its neighbours) out of its negatives [on;
            *ours*: on ImageNet each image is its own instance and this only removes the query's
            own stale key]. Needs batches ``(im_q, im_k, instance ids)``.
        bn_splits: BatchNorm groups per process. MoCo computes BN per GPU and shuffles keys across
            GPUs so that a query and its key never share batch statistics ("shuffle BN"). On one
            device this is emulated by running the batch in ``bn_splits`` chunks with the keys
            shuffled first; under DDP the shuffle is across processes as in the paper.
    """

    def __init__(self, arch: Literal["resnet18", "resnet50"] = "resnet18", dim: int = 128, queue_size: int = 65536,
                 momentum: float = 0.999, temperature: float = 0.2,
                 input_space: Literal["lab", "rgb-imagenet", "rgb"] = "lab", bn_splits: int = 1,
                 exclude_same_instance: bool = True):
        super().__init__()
        self.m, self.t, self.bn_splits = momentum, temperature, bn_splits
        self.exclude_same_instance = exclude_same_instance
        self.encoder_q = ResNetEncoder(arch, "imagenet", input_space)
        c = self.encoder_q.channels["layer4"]
        self.head_q = nn.Sequential(nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, dim))
        self.encoder_k = copy.deepcopy(self.encoder_q)
        self.head_k = copy.deepcopy(self.head_q)
        for p in list(self.encoder_k.parameters()) + list(self.head_k.parameters()):
            p.requires_grad = False
        g = torch.Generator().manual_seed(1234)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size, generator=g), dim=0))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_ids", torch.full((queue_size,), -1, dtype=torch.long))  # -1: no instance

    def embed(self, encoder: ResNetEncoder, head: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """RGB images -> unit-length embeddings, BatchNorm statistics per chunk of the batch."""
        outs = []
        for chunk in x.chunk(self.bn_splits):
            f = encoder(encoder.preprocess(chunk), levels=("layer4",))["layer4"]  # b x C x h x w
            outs.append(head(f.mean((2, 3))))
        return F.normalize(torch.cat(outs).float(), dim=1)  # fp32 even under autocast: InfoNCE and the queue

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m theta_k + (1 - m) theta_q (parameters only, as MoCo)."""
        for q, k in zip(list(self.encoder_q.parameters()) + list(self.head_q.parameters()),
                        list(self.encoder_k.parameters()) + list(self.head_k.parameters())):
            k.mul_(self.m).add_(q.detach(), alpha=1 - self.m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Replace the oldest entries of the queue by ``keys`` (B x dim) and their instance ``ids``
        (B, or None: unknown), wrapping around."""
        keys = gather_all(keys)
        ids = gather_all(ids) if ids is not None else torch.full((keys.shape[0],), -1, device=keys.device)
        K = self.queue.shape[1]
        n = min(keys.shape[0], K)
        idx = (self.queue_ptr + torch.arange(n, device=keys.device)) % K
        self.queue[:, idx] = keys[:n].t()
        self.queue_ids[idx] = ids[:n].to(self.queue_ids)
        self.queue_ptr.copy_((self.queue_ptr + n) % K)

    @torch.no_grad()
    def keys(self, im_k: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Key embeddings with shuffled BatchNorm (see the class docstring)."""
        world = dist_world()
        if world == 1:
            perm = torch.randperm(im_k.shape[0], generator=gen).to(im_k.device)
            k = self.embed(self.encoder_k, self.head_k, im_k[perm])
            return k[torch.argsort(perm)]
        # Across processes: gather, shuffle with a permutation shared by all ranks, take our slice.
        allx = gather_all(im_k)
        perm = torch.randperm(allx.shape[0], generator=gen).to(im_k.device)  # same seed on every rank
        b, r = im_k.shape[0], dist.get_rank()
        k_local = self.embed(self.encoder_k, self.head_k, allx[perm[r * b:(r + 1) * b]])
        k_all = gather_all(k_local)
        return k_all[torch.argsort(perm)][r * b:(r + 1) * b]

    def forward(self, batch, gen: torch.Generator | None = None) -> dict:
        """batch: ``(im_q, im_k)`` or ``(im_q, im_k, instance ids)``, views B x 3 x S x S RGB."""
        im_q, im_k = batch[:2]
        ids = batch[2] if len(batch) > 2 else None
        q = self.embed(self.encoder_q, self.head_q, im_q)  # B x dim
        self.momentum_update()
        k = self.keys(im_k, gen)  # B x dim
        exclude = None
        if self.exclude_same_instance and ids is not None:
            exclude = ids.view(-1, 1) == self.queue_ids.view(1, -1)  # B x K
        with full_precision(q):
            loss, logits = info_nce(q, k, self.queue.clone().detach(), self.t, exclude)
        self.enqueue(k, ids)
        out = {"loss": loss, "acc": (logits.argmax(1) == 0).float().mean()}
        if exclude is not None:
            out["excluded"] = exclude.float().sum(1).mean()  # queue entries per query left out
        return out

    def encoder_state_dict(self) -> dict:
        """The query trunk in torchvision layout: what STT step 2 and evaluation load."""
        return self.encoder_q.state_dict()

    def checkpoint_meta(self) -> dict:
        return {"kind": "moco", "arch": self.encoder_q.arch, "input": self.encoder_q.input_space,
                "variant": self.encoder_q.variant}


MoCoSettings = constructor_settings(MoCo)

MOCO_CROP_SCALE = (0.2, 1.0)  # area range of MoCo v2's random resized crop
# *ours*, small and gpu presets: smaller crops, enlarged more, nearer the scale at which the
# test-time encoder (no max-pool) sees a frame: +4.1 J&F at small (studies/results/step1.md)
LOCAL_CROP_SCALE = (0.08, 0.4)


@dataclass
class StillViewSettings:
    """What MoCo's training views are made of (:class:`stt.views.TwoViews` of
    :class:`stt.video.StillImages`)."""

    image_size: int = 224  # side of each view
    crop_scale: tuple[float, float] = MOCO_CROP_SCALE  # area range of the random resized crop
    fps: float = 6.0  # frames per second kept when the images are the frames of videos
    short_side: int = 256  # images (frames) resized to this short side when read
    max_videos: int | None = None  # use only the first N videos
    max_queue_fraction: float = 0.25  # the queue holds at most this fraction of the images (moco_queue_size)
    augment: Literal["auto", "device", "workers"] = "auto"  # where the views are resized and jittered


# SPEC section 2: SGD, lr = 0.03 x batch / 256 (unless set), momentum 0.9, weight decay 1e-4.
# queue_size "auto": sized from the data (moco_queue_size); the papers' 65,536 is 5 % of
# ImageNet's 1.28 M images. bn_splits "auto": shuffle BN over 8 groups in one process; under DDP
# each process is a group.
TRAIN = TrainConfig(optimizer="sgd", weight_decay=1e-4, sgd_momentum=0.9)
PRESETS = {
    "smoke": dict(steps=4, batch_size=8, image_size=64, queue_size="auto", bn_splits=2, max_videos=2,
                  warmup_steps=1, log_every=1, ckpt_every=2),
    "small": dict(steps=600, batch_size=64, image_size=96, queue_size="auto", bn_splits=4,
                  warmup_steps=30, log_every=10, ckpt_every=100, num_workers=1, crop_scale=LOCAL_CROP_SCALE),
    "gpu": dict(steps=2000, batch_size=256, image_size=160, queue_size="auto", bn_splits=8,
                warmup_steps=100, log_every=20, ckpt_every=500, num_workers=12, crop_scale=LOCAL_CROP_SCALE),
    "full": dict(steps=1_000_000, batch_size=256, image_size=224, queue_size=65536, bn_splits="auto",
                 warmup_steps=0, log_every=100, ckpt_every=5000, num_workers=8),
}


def moco_queue_size(requested, n_images: int, fraction: float, preset: bool = True) -> int:
    """MoCo's queue sized from the data: at most ``fraction`` of the distinct training images.

    A queue longer than the data holds several stale keys of every image, so most "negatives"
    of a query are other views of its own image (and, in video, of its near-duplicate
    neighbouring frames): the task asks the network to tell an image from itself. ``requested``
    ``"auto"`` takes the limit (capped at the papers' 65,536); a preset's larger value is
    clamped with a message; a larger value the user asked for is refused."""
    limit = max(1, min(65536, int(fraction * n_images)))
    if requested == "auto":
        return limit
    if int(requested) > limit:
        msg = (f"MoCo queue of {requested} keys > {fraction:g} x {n_images} training images = {limit}: most "
               "negatives would be other views of the query's own images")
        if not preset:
            raise ValueError(f"{msg}; use queue_size <= {limit} (or raise max_queue_fraction)")
        print(f"{msg}; clamped to {limit}")
        return limit
    return int(requested)


def train_spatial(data=None, out="runs/spatial", config: str = "small", progress: bool = True, **overrides) -> Path:
    """STT step 1: MoCo v2 on still images: an image folder (ImageNet layout), or the frames of
    unlabelled videos. ``data`` None: :func:`stt.recipe.default_image_data`. ``overrides``: any
    setting of :data:`METHOD` (None: the preset's).

    Returns the checkpoint path; its ``"encoder"`` entry is the trunk STT step 2 loads.
    """
    s = METHOD.settings(config, **overrides)
    v = s.data
    ensure_writable(out, "training folder")  # before any image is read or cached
    data = Path(data) if data else default_image_data()
    images = StillImages(data, cache_dir() / "frames", v.fps, v.short_side, v.max_videos, progress=progress)
    queue = moco_queue_size(s.model.queue_size, len(images), v.max_queue_fraction, preset="queue_size" not in s.overridden)
    if progress:
        print(f"{len(images)} training images of {images.n_instances} instances: MoCo queue of {queue} keys")
    bn_splits = (8 if distributed_env()[1] == 1 else 1) if s.model.bn_splits == "auto" else s.model.bn_splits
    s.model = replace(s.model, queue_size=queue, bn_splits=bn_splits)
    if "lr" not in s.overridden:
        s.train = replace(s.train, lr=0.03 * s.train.batch_size / 256)
    seed_model_init(s.train)
    model = MoCo(**asdict(s.model))
    meta = {"recipe": "spatial", "config": config, "data": str(data), "images": len(images),
            "instances": images.n_instances}
    views = TwoViews(images, v.image_size, on_device=device_augment(v.augment, s.train.device), scale=v.crop_scale)
    return s.fit(model, views, out, meta, progress)


METHOD = Method("spatial", "moco", "MoCo v2", "STT step 1: MoCo v2 on still images", MoCoSettings, StillViewSettings, TRAIN,
                PRESETS, train_spatial, auto=("queue_size", "bn_splits"))

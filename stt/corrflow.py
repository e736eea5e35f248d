"""CorrFlow (SPEC section 4): a pointer that reconstructs a frame by copying quantised colours
from a reference frame, with an information bottleneck, restricted attention, scheduled sampling
and cycle consistency.

Its encoder (:class:`CorrFlowEncoder`, and the released checkpoint's names for it), the model
(:class:`CorrFlow`), the k-means colour clusters, the settings of its clips, its presets and
:func:`train_corrflow`; :data:`METHOD` is its entry in :mod:`stt.methods`, with its own
label-propagation protocol.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from .affinity import local_correlation
from .augment import color_jitter
from .checkpoint import ensure_writable, load_checkpoint
from .color import kmeans, load_centroids, quantize_ab, rgb_to_lab
from .device import full_precision, resolve_device
from .encoder import checkpoint_format, load_encoder_state, state_dict_of
from .losses import corrflow_nll, reconstruct
from .propagation import CORRFLOW_PROTOCOL
from .recipe import Method, constructor_settings, default_video_data, device_augment, frame_cache, seed_model_init
from .train import TrainConfig
from .video import VideoFrames
from .views import ClipSettings, FrameClips


class CorrFlowEncoder(nn.Module):
    """CorrFlow's encoder (SPEC section 1): ResNet-18-like, no max-pool, only layer2 strided,
    layer3 and layer4 at 256 channels and stride 1 (output stride 4), then a 3x3 conv to 64-d
    features. Input: RGB in [0, 1] (B x 3 x H x W)."""

    stride = 4

    def __init__(self, dim: int = 64):
        super().__init__()
        base = torchvision.models.resnet18(weights=None)
        self.conv1, self.bn1, self.relu = base.conv1, base.bn1, base.relu
        self.layer1, self.layer2 = base.layer1, base.layer2
        base.inplanes = 128
        block = torchvision.models.resnet.BasicBlock
        self.layer3 = base._make_layer(block, 256, 2, stride=1)
        self.layer4 = base._make_layer(block, 256, 2, stride=1)
        self.head = nn.Conv2d(256, dim, 3, padding=1)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(rgb)))  # /2
        x = self.layer2(self.layer1(x))  # /4
        return self.head(self.layer4(self.layer3(x)))  # B x 64 x H/4 x W/4


# CorrFlow's release (zlai0/CorrFlow models/corrflow.py, submodule.py; saved from nn.DataParallel,
# hence "module."): ``feature_extraction`` is a ResNet-18 whose blocks hold ``left`` (conv, bn, relu,
# conv, bn) and ``shortcut`` (conv, bn), ``post_convolution`` the 3x3 conv to 64-d: the network of
# :class:`CorrFlowEncoder`, under other names.
_CORRFLOW_KEYS = (
    (r"feature_extraction\.conv1\.0\.", "conv1."),
    (r"feature_extraction\.conv1\.1\.", "bn1."),
    (r"feature_extraction\.(layer\d\.\d+)\.left\.0\.", r"\1.conv1."),
    (r"feature_extraction\.(layer\d\.\d+)\.left\.1\.", r"\1.bn1."),
    (r"feature_extraction\.(layer\d\.\d+)\.left\.3\.", r"\1.conv2."),
    (r"feature_extraction\.(layer\d\.\d+)\.left\.4\.", r"\1.bn2."),
    (r"feature_extraction\.(layer\d\.\d+)\.shortcut\.0\.", r"\1.downsample.0."),
    (r"feature_extraction\.(layer\d\.\d+)\.shortcut\.1\.", r"\1.downsample.1."),
    (r"post_convolution\.", "head."),
)


def corrflow_release_state(obj: dict, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A released CorrFlow checkpoint's encoder with :class:`CorrFlowEncoder`'s key
    names (:data:`_CORRFLOW_KEYS`). A key that no rule renames is an error naming the file and the
    first such keys: that file is not the released architecture."""
    import re

    out, unmatched = {}, []
    for key, v in state_dict_of(obj, source).items():
        k = key.removeprefix("module.")
        for pattern, repl in _CORRFLOW_KEYS:
            new, n = re.subn("^" + pattern, repl, k)
            if n:
                out[new] = v
                break
        else:
            unmatched.append(key)
    if unmatched:
        raise ValueError(f"{source}: not the encoder of CorrFlow's release (feature_extraction = its ResNet18, "
                         f"post_convolution); {len(unmatched)} keys have no counterpart, first: {unmatched[:5]}")
    return out


class CorrFlow(nn.Module):
    """CorrFlow (Lai & Xie, BMVC 2019), SPEC section 4: a pointer that reconstructs a frame by
    copying quantised colours from a reference frame through a restricted attention.

    Per 3-frame clip (frames 0, 1, 2): the colour bottleneck on the inputs; 16-way colour classes
    (k-means ``centroids`` over Lab (a, b)); attention = softmax of plain dot products over the
    13 x 13 window at /4 (``radius`` 6); reference one-hot colours at /4 copied through it;
    probabilities upsampled to full size; ``NLL(log(p + 1e-8))``.

    * forward: 0 -> 1, then 1 -> 2 from frame 1's ground truth with probability ``eps`` (scheduled
      sampling, decaying linearly 0.9 -> 0.6 over ``total_steps``) or from the model's own soft
      prediction of frame 1;
    * cycles: 0 -> 1 -> 0 and 0 -> 1 -> 2 -> 1 -> 0 with soft predictions, scored on frame 0.

    ``L = L_short + 0.1 L_long`` with (our reading of the paper) L_short = forward losses + short
    cycle and L_long = long cycle.

    Ablation switches: ``scheduled_sampling=False`` (always frame 1's ground truth: eps 1),
    ``bottleneck=False`` (no channel dropout, no jitter), ``cycles=False``.
    """

    def __init__(self, centroids: torch.Tensor, radius: int = 6, total_steps: int = 1000, eps_start: float = 0.9,
                 eps_end: float = 0.6, scheduled_sampling: bool = True, long_weight: float = 0.1,
                 drop_prob: float = 0.7, jitter_prob: float = 0.1, bottleneck: bool = True, cycles: bool = True):
        super().__init__()
        if not scheduled_sampling:  # ablation: always frame 1's ground truth
            eps_start = eps_end = 1.0
        if not bottleneck:  # ablation: no channel dropout, no jitter
            drop_prob = jitter_prob = 0.0
        eps = (eps_start, eps_end)
        self.cycles = cycles
        self.encoder = CorrFlowEncoder()
        self.register_buffer("centroids", centroids.float().clone())
        self.register_buffer("steps_done", torch.zeros((), dtype=torch.long))
        self.radius, self.total_steps, self.eps = radius, total_steps, eps
        self.long_weight, self.drop_prob, self.jitter_prob = long_weight, drop_prob, jitter_prob

    @property
    def n_colors(self) -> int:
        return self.centroids.shape[0]

    def epsilon(self) -> float:
        """Scheduled-sampling probability of using the ground truth: linear eps[0] -> eps[1]."""
        t = min(1.0, float(self.steps_done) / max(1, self.total_steps))
        return self.eps[0] + (self.eps[1] - self.eps[0]) * t

    def bottleneck(self, rgb: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """With p = 0.7 zero 1 or 2 RGB channels (the same for the whole batch), scaled by 3/(3-n);
        with p = 0.1 per clip, colour jitter (0.1, 0.1, 0.1, 0.1) on all its frames."""
        x = rgb.clone()  # B x T x 3 x H x W
        for i in range(x.shape[0]):
            if torch.rand((), generator=gen) < self.jitter_prob:
                x[i] = color_jitter(x[i], gen, 0.1, 0.1, 0.1, 0.1)
        if torch.rand((), generator=gen) < self.drop_prob:
            n = 1 + int(torch.randint(0, 2, (1,), generator=gen))
            drop = torch.randperm(3, generator=gen)[:n].tolist()
            x[:, :, drop] = 0
            x = x * (3 / (3 - n))
        return x

    def attend(self, f_tar: torch.Tensor, f_ref: torch.Tensor, y_ref: torch.Tensor) -> torch.Tensor:
        """Copy ``y_ref`` (B x K x h x w) to the target through the restricted attention."""
        aff = local_correlation(f_tar, f_ref, self.radius).softmax(-1)  # B x h x w x 169
        return reconstruct(aff, y_ref, self.radius)

    def forward(self, batch: torch.Tensor, gen: torch.Generator | None = None) -> dict:
        """batch: B x 3 x 3 x S x S RGB clips in [0, 1]."""
        B, T = batch.shape[:2]
        S = batch.shape[-1]
        labels = quantize_ab(rgb_to_lab(batch), self.centroids)  # B x 3 x S x S, the colour classes
        x = self.bottleneck(batch, gen)
        f = self.encoder(x.flatten(0, 1)).view(B, T, -1, S // 4, S // 4)
        with full_precision(x):
            return self.losses(f.float(), labels, gen)

    def losses(self, f: torch.Tensor, labels: torch.Tensor, gen: torch.Generator | None) -> dict:
        """Forward, scheduled-sampling and cycle losses from features f (B x 3 x C x h x w)."""
        B = f.shape[0]
        onehot = lambda t: F.one_hot(labels[:, t, ::4, ::4], self.n_colors).permute(0, 3, 1, 2).float()  # noqa: E731
        nll = lambda p, t: corrflow_nll(p, labels[:, t])  # noqa: E731
        p1 = self.attend(f[:, 1], f[:, 0], onehot(0))
        use_gt = (torch.rand(B, generator=gen) < self.epsilon()).to(f.device).view(B, 1, 1, 1)
        p2 = self.attend(f[:, 2], f[:, 1], torch.where(use_gt, onehot(1), p1))
        out = {"forward1": nll(p1, 1), "forward2": nll(p2, 2)}
        out["loss"] = out["forward1"] + out["forward2"]
        if self.cycles:
            p0_short = self.attend(f[:, 0], f[:, 1], p1)
            p1_back = self.attend(f[:, 1], f[:, 2], self.attend(f[:, 2], f[:, 1], p1))
            p0_long = self.attend(f[:, 0], f[:, 1], p1_back)
            out["cycle_short"], out["cycle_long"] = nll(p0_short, 0), nll(p0_long, 0)
            out["loss"] = out["loss"] + out["cycle_short"] + self.long_weight * out["cycle_long"]
        out["eps"] = torch.tensor(self.epsilon())
        if self.training:
            self.steps_done += 1
        return out

    def encoder_state_dict(self) -> dict:
        return self.encoder.state_dict()

    def checkpoint_meta(self) -> dict:
        return {"kind": "corrflow", "arch": "corrflow-r18", "input": "rgb", "centroids": self.centroids.tolist(),
                "radius": self.radius}


CorrFlowSettings = constructor_settings(CorrFlow, skip=("centroids", "total_steps"))


@dataclass
class CorrFlowClipSettings(ClipSettings):
    """CorrFlow's 3-frame clips, and the frames its colour clusters come from."""

    fps: float = 7.5  # interval 4 at 30 fps
    n_colors: int = 16  # k of the k-means colour clusters
    kmeans_frames: int = 5000  # frames whose colours are clustered


# SPEC section 4: Adam lr 2e-4, batch 6, lr halved at 400k / 600k / 800k / 1M samples, 3-frame
# clips, interval 4 (4 raw frames at 30 fps: 7.5 stored frames per second), 256 x 256.
TRAIN = TrainConfig(optimizer="adam", lr=2e-4, weight_decay=0.0)
PRESETS = {
    "smoke": dict(steps=3, batch_size=2, image_size=64, max_videos=2, kmeans_frames=20, log_every=1, ckpt_every=2),
    "small": dict(steps=200, batch_size=6, image_size=96, kmeans_frames=300, log_every=10, ckpt_every=50,
                  num_workers=1),
    "gpu": dict(steps=2000, batch_size=24, image_size=256, kmeans_frames=2000, log_every=20, ckpt_every=500,
                num_workers=12),
    "full": dict(steps=1_200_000 // 6, batch_size=6, image_size=256, kmeans_frames=5000, log_every=100,
                 ckpt_every=5000, num_workers=6, short_side=None,
                 lr_milestones=(400_000 // 6, 600_000 // 6, 800_000 // 6, 1_000_000 // 6)),
}


def color_clusters(videos: VideoFrames, k: int = 16, n_frames: int = 300, seed: int = 0,
                   max_points: int = 3_000_000, device=None, progress: bool = True, workers: int | None = None,
                   ) -> torch.Tensor:
    """k-means centroids (k x 2, CPU) of the (a, b) colours of ``n_frames`` random frames of the
    videos, every 4th pixel in both directions (CorrFlow compares at /4).

    The frames are read grouped by video (one reader per video, batched decodes, ``workers``
    videos at a time). A uniform seeded sample of at most ``max_points`` of their pixels
    (:class:`stt.color.StreamSample`: bounded memory for any ``n_frames``; only pixels that can
    enter the sample are converted to Lab) is clustered by :func:`stt.color.kmeans` on ``device``
    (default: the GPU when there is one). With at most ``max_points`` pixels, these are all the
    pixels, in the order of reading the picked frames one by one: the default 3 M keeps every
    pixel of the ``small`` preset (300 frames at short side 256, about 2 M) and bounds ``full``
    (5000 frames at full resolution, 57 M on the 51 development videos)."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    from tqdm.auto import tqdm

    from .color import StreamSample

    index = videos.frame_index()
    g = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(index), generator=g)[: min(n_frames, len(index))].tolist()
    by_video: dict[int, list[tuple[int, int]]] = {}  # video -> [(frame, rank of its pick)]
    for rank, i in enumerate(picks):
        v, t = index[i]
        by_video.setdefault(v, []).append((t, rank))

    def pixels(v):  # every 4th pixel of the picked frames of video v: P x 3 uint8 and their (pick, pixel) order
        todo = sorted(by_video[v])
        rank_of = dict(todo)
        px, order = [], []
        for ts, frames in videos.iter_frames(v, [t for t, _ in todo]):
            for t, f in zip(ts, frames):
                px.append(torch.from_numpy(np.ascontiguousarray(f[::4, ::4])).view(-1, 3))
                order.append(rank_of[t] * 2**32 + torch.arange(len(px[-1])))
        return torch.cat(px), torch.cat(order), len(todo)

    sample = StreamSample(max_points, seed + 1)
    n_workers = workers or min(8, os.cpu_count() or 1)
    vids = sorted(by_video)
    bar = tqdm(total=len(picks), desc="k-means frames", unit="frame", disable=not progress)
    with ThreadPoolExecutor(n_workers) as pool:  # decord decodes outside the GIL
        for s in range(0, len(vids), 2 * n_workers):  # a bounded window of videos in flight
            for px, order, n in pool.map(pixels, vids[s : s + 2 * n_workers]):  # in video order: the same keys
                keep = sample.offer(order)
                rgb = px[keep].t().float().div_(255)[:, None]  # 3 x 1 x P'
                sample.add(rgb_to_lab(rgb)[1:, 0].t())  # P' x 2 (a, b)
                bar.update(n)
    bar.close()
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return kmeans(sample.rows(), k, seed=seed, device=device, progress=progress)


def train_corrflow(data=None, out="runs/corrflow", config: str = "small", centroids=None, progress: bool = True,
                   **overrides) -> Path:
    """CorrFlow on 3-frame clips of unlabelled video. ``centroids``: a k x 2 tensor or a file saved
    by ``stt color-clusters``; by default computed by k-means on the training frames (or read
    back from the checkpoint being resumed). ``overrides``: any setting of :data:`METHOD`."""
    s = METHOD.settings(config, **overrides)
    if isinstance(centroids, (str, Path)):
        centroids = load_centroids(centroids)  # checked before anything is read or computed
    ensure_writable(out, "training folder")  # before any video is decoded into the frame cache
    v = s.data
    data = Path(data) if data else default_video_data()
    videos = VideoFrames(data, frame_cache(v.cache, data), v.fps, v.short_side, v.max_videos, progress=progress)
    clips = FrameClips(videos, n_frames=3, gap=v.gap, size=v.image_size, on_device=device_augment(v.augment, s.train.device))
    ck = Path(out) / "checkpoint.pth"
    if centroids is None and ck.is_file():
        centroids = load_checkpoint(ck)["model"]["centroids"]
    if centroids is None:
        centroids = color_clusters(videos, v.n_colors, v.kmeans_frames, s.train.seed,
                                   device=resolve_device(s.train.device), progress=progress)
    seed_model_init(s.train)
    model = CorrFlow(centroids, total_steps=s.train.steps, **asdict(s.model))
    meta = {"recipe": "corrflow", "config": config, "data": str(data), "clips": len(clips)}
    return s.fit(model, clips, out, meta, progress)


def corrflow_features(ckpt: dict, source: str, input_space: str | None = None) -> tuple[nn.Module, dict]:
    """The test-time features of a CorrFlow checkpoint (this project's or the release): its own
    encoder (stride 4, 64-d), which reads RGB only."""
    if input_space not in (None, "rgb"):
        raise ValueError(f"{source}: CorrFlow's encoder reads RGB in [0, 1]; input space {input_space!r} does not apply")
    enc = CorrFlowEncoder()
    sd = ckpt["encoder"] if checkpoint_format(ckpt) == "project" else corrflow_release_state(ckpt, source)
    load_encoder_state(enc, sd, source=source)
    return enc.eval(), {"kind": "corrflow"}


def own_protocol(ckpt: dict) -> dict:
    """CorrFlow's own label propagation (:data:`~stt.propagation.CORRFLOW_PROTOCOL`: previous
    frame only, hard labels, no min-max) with the attention radius the checkpoint trained with."""
    return {"radius": int(ckpt.get("meta", {}).get("radius", 6)), **CORRFLOW_PROTOCOL}


METHOD = Method(
    "corrflow", "corrflow", "CorrFlow", "CorrFlow: colour pointer with bottleneck, scheduled sampling, cycles", CorrFlowSettings,
    CorrFlowClipSettings, TRAIN, PRESETS, train_corrflow,
    cli_args=((("--centroids",), dict(default=None, help="colour centroids from `stt color-clusters` (a K x 2 "
                                                          "tensor file, checked first) [computed]")),),
    cli_kwargs=lambda a: {"centroids": a.centroids},
    features=corrflow_features, formats=("corrflow",), protocol="corrflow", protocol_settings=own_protocol,
)

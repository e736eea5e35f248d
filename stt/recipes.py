"""Training recipes: a model + its data + a :class:`~stt.train.TrainConfig`, at four scales.

``smoke`` (CI: seconds), ``small`` (a laptop CPU: real data, minutes to tens of minutes),
``gpu`` (the small pipeline's data on one GPU, each training sized to minutes on an H100: larger
batches and crops, several times more steps) and ``full`` (the papers' settings on GPUs). The command line (``stt train ...``) and the
notebooks both call these functions, so a notebook run and a shell run are the same run.
"""
from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import torch

from .checkpoint import ensure_writable, load_checkpoint
from .color import kmeans, load_centroids, rgb_to_lab
from .datasets import cache_dir, data_root
from .device import resolve_device
from .encoder import extract_encoder_state
from .models import STT, CorrFlow, MoCo
from .train import TrainConfig, Trainer, distributed_env
from .video import StillImages, VideoFrames
from .views import FrameClips, TwoViews

# STT step 1 = MoCo v2 (SPEC section 2). lr = 0.03 x batch / 256. queue_size "auto": sized from
# the data (:func:`moco_queue_size`); the papers' 65,536 is 5 % of ImageNet's 1.28 M images.
MOCO_CROP_SCALE = (0.2, 1.0)  # area range of MoCo v2's random resized crop
# *ours*, small and gpu presets: smaller crops, enlarged more, nearer the scale at which the
# test-time encoder (no max-pool) sees a frame: +4.1 J&F at small (studies/results/step1.md)
LOCAL_CROP_SCALE = (0.08, 0.4)
SPATIAL = {
    "smoke": dict(steps=4, batch_size=8, image_size=64, queue_size="auto", bn_splits=2, max_videos=2,
                  warmup_steps=1, log_every=1, ckpt_every=2),
    "small": dict(steps=600, batch_size=64, image_size=96, queue_size="auto", bn_splits=4, max_videos=None,
                  warmup_steps=30, log_every=10, ckpt_every=100, num_workers=1, crop_scale=LOCAL_CROP_SCALE),
    "gpu": dict(steps=2000, batch_size=256, image_size=160, queue_size="auto", bn_splits=8, max_videos=None,
                warmup_steps=100, log_every=20, ckpt_every=500, num_workers=12, crop_scale=LOCAL_CROP_SCALE),
    # bn_splits "auto": shuffle BN over 8 groups in one process; under DDP each process is a group
    "full": dict(steps=1_000_000, batch_size=256, image_size=224, queue_size=65536, bn_splits="auto", max_videos=None,
                 warmup_steps=0, log_every=100, ckpt_every=5000, num_workers=8),
}
SPATIAL_COMMON = dict(arch="resnet18", dim=128, momentum=0.999, temperature=0.2, input_space="lab",
                      optimizer="sgd", weight_decay=1e-4, sgd_momentum=0.9, fps=6.0, short_side=256,
                      max_queue_fraction=0.25, exclude_same_instance=True, augment="auto", crop_scale=MOCO_CROP_SCALE)


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


CACHE_MAX_VIDEOS = 2000


def frame_cache(setting, data: Path) -> Path | None:
    """Where decoded frames of video files are kept (uint8 ``.npy``, memory-mapped, so loader
    workers share one copy in the page cache), or None to decode on demand. ``"auto"``: cache
    corpora of at most :data:`CACHE_MAX_VIDEOS` video files (decoding a clip per sample is what
    starves a GPU); larger ones (Kinetics) are decoded on demand."""
    if setting == "auto":
        from .video import VIDEO_EXTENSIONS, list_media

        setting = len(list_media(data, VIDEO_EXTENSIONS)) <= CACHE_MAX_VIDEOS
    return cache_dir() / "frames" if setting else None


def device_augment(setting: str, device: str) -> bool:
    """Augment on the training device (uint8 crops from the workers, batched resize and jitter
    on the GPU) or per sample in the workers: ``"auto"`` picks the device when it is a GPU."""
    if setting not in ("auto", "device", "workers"):
        raise ValueError(f"augment must be auto, device or workers, got {setting!r}")
    return setting == "device" or (setting == "auto" and resolve_device(device).type == "cuda")


def default_video_data() -> Path:
    """Where unlabelled training video is looked for: ``$STT_DATA/videos``; when that folder does
    not exist, procedural synthetic videos are generated (and the fallback is announced)."""
    real = data_root() / "videos"
    if real.is_dir():
        return real
    from .synthetic import make_synthetic_videos

    print(f"no training videos at {real}: using procedural synthetic videos instead "
          "(the pipeline runs end to end; what it learns says nothing about real video)")
    return make_synthetic_videos(cache_dir() / "synthetic-videos")


def default_image_data() -> Path:
    """Still images for STT step 1, the first that exists: ``$STT_DATA/ImageNet/train``,
    ``$STT_DATA/ImageNet_sample/train`` (both the ImageNet-train layout), else the frames of the
    training videos (:func:`default_video_data`). Says which."""
    for sub in ("ImageNet/train", "ImageNet_sample/train"):
        folder = data_root() / sub
        if folder.is_dir():
            print(f"step 1 trains on the still photographs of {folder}")
            return folder
    videos = default_video_data()
    print(f"no still-image folder at {data_root() / 'ImageNet/train'} or {data_root() / 'ImageNet_sample/train'}: "
          f"step 1 trains on the frames of the videos in {videos} (the paper's step 1 sees ImageNet photographs)")
    return videos


def seed_model_init(s: dict) -> None:
    """Seed the global generator from the run's seed before a model is built, so that ``seed``
    fixes the initial weights too (not only the data order and augmentations)."""
    torch.manual_seed(s.get("seed", TrainConfig.seed))


def _settings(presets: dict, common: dict, config: str, overrides: dict) -> dict:
    if config not in presets:
        raise ValueError(f"unknown config {config!r}: expected one of {sorted(presets)}")
    s = {**common, **presets[config]}
    unknown = set(overrides) - set(s) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}")
    s.update({k: v for k, v in overrides.items() if v is not None})
    return s


def _train_config(s: dict, lr: float, extra_keys) -> TrainConfig:
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in s.items() if k in names}
    kw.setdefault("lr", lr)
    if "sgd_momentum" in s:
        kw["momentum"] = s["sgd_momentum"]
    kw["extra"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in s.items() if k in extra_keys}
    return TrainConfig(**kw)


def train_spatial(data=None, out="runs/spatial", config: str = "small", progress: bool = True, **overrides) -> Path:
    """STT step 1: MoCo v2 on still images: an image folder (ImageNet layout), or the frames of
    unlabelled videos. ``data`` None: :func:`default_image_data`.

    Returns the checkpoint path; its ``"encoder"`` entry is the trunk STT step 2 loads.
    """
    s = _settings(SPATIAL, SPATIAL_COMMON, config, overrides)
    ensure_writable(out, "training folder")  # before any image is read or cached
    data = Path(data) if data else default_image_data()
    images = StillImages(data, cache_dir() / "frames", s["fps"], s["short_side"], s["max_videos"], progress=progress)
    s["queue_size"] = moco_queue_size(s["queue_size"], len(images), s["max_queue_fraction"],
                                      preset=overrides.get("queue_size") is None)
    if progress:
        print(f"{len(images)} training images of {images.n_instances} instances: MoCo queue of {s['queue_size']} keys")
    if s["bn_splits"] == "auto":
        s["bn_splits"] = 8 if distributed_env()[1] == 1 else 1
    seed_model_init(s)
    model = MoCo(s["arch"], s["dim"], s["queue_size"], s["momentum"], s["temperature"], s["input_space"], s["bn_splits"],
                 s["exclude_same_instance"])
    extra = set(SPATIAL_COMMON) | {"image_size", "queue_size", "bn_splits", "max_videos"}
    if tuple(s["crop_scale"]) == MOCO_CROP_SCALE:  # recorded only when changed: earlier checkpoints resume
        extra.discard("crop_scale")
    cfg = _train_config(s, 0.03 * s["batch_size"] / 256, extra_keys=extra)
    meta = {"recipe": "spatial", "config": config, "data": str(data), "images": len(images),
            "instances": images.n_instances}
    views = TwoViews(images, s["image_size"], on_device=device_augment(s["augment"], cfg.device), scale=s["crop_scale"])
    trainer = Trainer(model, views, cfg, out, meta=meta, progress=progress)
    trainer.fit()
    return Path(out) / "checkpoint.pth"


# STT step 2 (SPEC section 3): Adam, lr 1e-4 for R18 [5e-5 for R50], cosine to 0.001 x lr with
# linear warm-up, batch 128 [R18], SyncBN under DDP, 800 epochs of YouTube-VOS (3471 videos).
TEMPORAL = {
    "smoke": dict(steps=3, batch_size=2, image_size=64, max_videos=2, warmup_steps=1, log_every=1, ckpt_every=2),
    # small: 4x the paper's lr and 900 steps, each measured in studies/results/temporal.md
    "small": dict(steps=900, batch_size=8, image_size=128, max_videos=None, warmup_steps=15, log_every=10,
                  ckpt_every=50, num_workers=1, lr=4e-4),
    "gpu": dict(steps=1500, batch_size=64, image_size=256, max_videos=None, warmup_steps=100, log_every=20,
                ckpt_every=500, num_workers=12),
    "full": dict(steps=800 * 3471 // 128, batch_size=128, image_size=256, max_videos=None, warmup_steps=1000,
                 log_every=50, ckpt_every=1000, num_workers=8, sync_bn=True, short_side=None),
}
# The paper's R50 recipe: half the R18 learning rate (5e-5), and batch 64 instead of 128 at full scale.
R50_TEMPORAL = dict(lr_scale=0.5, full_batch_size=64)
TEMPORAL_COMMON = dict(arch="resnet18", optimizer="adam", lr=1e-4, weight_decay=0.0, min_lr_ratio=0.001,
                       fps=6.0, short_side=256, cache="auto", augment="auto", gap=1, drop_static=0.0,
                       pyramid=True, lcd=True, gcd=True, lcd_keep=0.7,
                       radius4=12, radius8=6, teacher_temperature=0.07, w_lcd=1000.0, w_gcd=50.0,
                       # the GCD teacher runs as its checkpoint was trained ("checkpoint"), or as
                       # the named variant / on the named input space (see stt.models.STT)
                       teacher_variant="checkpoint", teacher_input="checkpoint",
                       lcd_form="official", lcd_threshold="flattened")


def trunk_from_checkpoint(path) -> dict:
    """The torchvision-layout trunk of a checkpoint (ours, torchvision's or MoCo's)."""
    return extract_encoder_state(load_checkpoint(path), source=str(path))


def train_temporal(data=None, out="runs/temporal", config: str = "small", init=None, teacher=None,
                   progress: bool = True, **overrides) -> Path:
    """STT step 2: reconstruction with GCD and LCD on pairs of video frames.

    ``init`` and ``teacher`` are step-1 checkpoints (paths); temporal-only is ``init=None,
    gcd=False``. The ablation switches (``pyramid``, ``lcd``, ``gcd``, ``lcd_keep``) are settings.
    """
    s = _settings(TEMPORAL, TEMPORAL_COMMON, config, overrides)
    if s["arch"] == "resnet50":  # the presets are R18's; the paper's R50 recipe unless set by hand
        if overrides.get("lr") is None:
            s["lr"] *= R50_TEMPORAL["lr_scale"]
        if config == "full" and overrides.get("batch_size") is None:
            s["batch_size"] = R50_TEMPORAL["full_batch_size"]
    if s["gcd"] and teacher is None:
        raise ValueError("GCD needs the step-1 teacher checkpoint (teacher=...), or gcd=False")
    ensure_writable(out, "training folder")  # before any video is decoded into the frame cache
    data = Path(data) if data else default_video_data()
    videos = VideoFrames(data, frame_cache(s["cache"], data), s["fps"], s["short_side"], s["max_videos"],
                         progress=progress)
    clips = FrameClips(videos, n_frames=2, gap=s["gap"], size=s["image_size"],
                       on_device=device_augment(s["augment"], s.get("device", "auto")), drop_static=s["drop_static"])
    seed_model_init(s)
    as_trained = lambda v: None if v == "checkpoint" else v  # noqa: E731
    model = STT(s["arch"], trunk_from_checkpoint(init) if init else None,
                load_checkpoint(teacher) if s["gcd"] else None, s["pyramid"], s["lcd"], s["gcd"],
                s["lcd_keep"], (s["radius4"], s["radius8"]), s["teacher_temperature"], s["w_lcd"], s["w_gcd"],
                as_trained(s["teacher_variant"]), as_trained(s["teacher_input"]), s["lcd_form"], s["lcd_threshold"])
    extra = set(TEMPORAL_COMMON) | {"image_size", "max_videos"}
    cfg = _train_config(s, s["lr"], extra_keys=extra)
    cfg.extra.update(init=str(init) if init else None, teacher=str(teacher) if s["gcd"] else None)
    meta = {"recipe": "temporal", "config": config, "data": str(data), "pairs": len(clips)}
    Trainer(model, clips, cfg, out, meta=meta, progress=progress).fit()
    return Path(out) / "checkpoint.pth"


# CorrFlow (SPEC section 4): Adam lr 2e-4, batch 6, lr halved at 400k / 600k / 800k / 1M samples,
# 3-frame clips, interval 4 (4 raw frames at 30 fps: 7.5 stored frames per second), 256 x 256.
CORRFLOW = {
    "smoke": dict(steps=3, batch_size=2, image_size=64, max_videos=2, kmeans_frames=20, log_every=1, ckpt_every=2),
    "small": dict(steps=200, batch_size=6, image_size=96, max_videos=None, kmeans_frames=300, log_every=10,
                  ckpt_every=50, num_workers=1),
    "gpu": dict(steps=2000, batch_size=24, image_size=256, max_videos=None, kmeans_frames=2000, log_every=20,
                ckpt_every=500, num_workers=12),
    "full": dict(steps=1_200_000 // 6, batch_size=6, image_size=256, max_videos=None, kmeans_frames=5000,
                 log_every=100, ckpt_every=5000, num_workers=6, short_side=None,
                 lr_milestones=(400_000 // 6, 600_000 // 6, 800_000 // 6, 1_000_000 // 6)),
}
CORRFLOW_COMMON = dict(optimizer="adam", lr=2e-4, weight_decay=0.0, fps=7.5, short_side=256, cache="auto",
                       augment="auto", gap=1,
                       n_colors=16, radius=6, eps_start=0.9, eps_end=0.6, long_weight=0.1, drop_prob=0.7,
                       jitter_prob=0.1, bottleneck=True, scheduled_sampling=True, cycles=True)


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
    back from the checkpoint being resumed)."""
    s = _settings(CORRFLOW, CORRFLOW_COMMON, config, overrides)
    if isinstance(centroids, (str, Path)):
        centroids = load_centroids(centroids)  # checked before anything is read or computed
    ensure_writable(out, "training folder")  # before any video is decoded into the frame cache
    data = Path(data) if data else default_video_data()
    videos = VideoFrames(data, frame_cache(s["cache"], data), s["fps"], s["short_side"], s["max_videos"],
                         progress=progress)
    device = s.get("device", "auto")
    clips = FrameClips(videos, n_frames=3, gap=s["gap"], size=s["image_size"],
                       on_device=device_augment(s["augment"], device))
    ck = Path(out) / "checkpoint.pth"
    if centroids is None and ck.is_file():
        centroids = load_checkpoint(ck)["model"]["centroids"]
    if centroids is None:
        centroids = color_clusters(videos, s["n_colors"], s["kmeans_frames"], s.get("seed", 0),
                                   device=resolve_device(device), progress=progress)
    eps = (s["eps_start"], s["eps_end"]) if s["scheduled_sampling"] else (1.0, 1.0)  # off: always frame 1's truth
    seed_model_init(s)
    model = CorrFlow(centroids, s["radius"], s["steps"], eps, s["long_weight"],
                     s["drop_prob"] if s["bottleneck"] else 0.0, s["jitter_prob"] if s["bottleneck"] else 0.0,
                     s["cycles"])
    cfg = _train_config(s, s["lr"], extra_keys=set(CORRFLOW_COMMON) | {"image_size", "max_videos", "kmeans_frames"})
    meta = {"recipe": "corrflow", "config": config, "data": str(data), "clips": len(clips)}
    Trainer(model, clips, cfg, out, meta=meta, progress=progress).fit()
    return ck

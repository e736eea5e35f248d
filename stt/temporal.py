"""STT step 2 (SPEC section 3): temporal features by reconstruction, with global and local
correlation distillation from the step-1 teacher.

The model (:class:`STT`), the settings of its frame pairs (:class:`PairSettings`), its presets
and :func:`train_temporal`; :data:`METHOD` is its entry in :mod:`stt.methods`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .affinity import local_correlation
from .checkpoint import ensure_writable, load_checkpoint
from .color import rgb_to_normalized_lab
from .device import full_precision
from .encoder import LEVELS, ResNetEncoder, extract_encoder_state, load_encoder_state, trunk_encoder
from .losses import (
    LCD_THRESHOLDS,
    global_correlation_distillation,
    lab_channel_dropout,
    local_correlation_distillation,
    pool_fine_affinity,
    reconstruction_loss,
    uncertainty,
    uncertainty_mask,
)
from .recipe import Method, constructor_settings, default_video_data, device_augment, frame_cache, seed_model_init
from .train import TrainConfig
from .video import VideoFrames
from .views import ClipSettings, FrameClips


class STT(nn.Module):
    """STT step 2 (Li & Liu, CVPR 2023): temporal features by reconstruction, with global and
    local correlation distillation (SPEC section 3).

    A pair (reference, target) of frames goes through the colour bottleneck (one of a/b zeroed);
    the target's dropped channel is reconstructed from the reference through local affinities at
    /4 (R = 12) and /8 (R = 6)::

        L = L_rec/4 + w_rec8 L_rec/8 + w_lcd L_lcd + w_gcd L_gcd

    Args:
        arch: ``resnet18`` / ``resnet50``; the student uses the ``train`` stride variant.
        init: trunk state_dict to start from (step 1), or None (random init: temporal-only).
        teacher: the frozen GCD teacher (required if ``gcd``): a checkpoint (this project's,
            torchvision's or MoCo's, :func:`stt.encoder.trunk_encoder`) or a trunk state_dict;
            its architecture comes from its keys (an R50 teacher can distil into an R18 student).
        teacher_variant, teacher_input: how the teacher runs; ``"checkpoint"`` (default): as its
            checkpoint was trained (step 1: the plain ResNet, stem max-pool and strides 1,2,2,2, on the
            input space step 1 saw), as the official code runs its teacher. ``"train"`` /
            ``"lab"``: this project's earlier choice (the student's step-2 trunk on Lab), kept for
            the ablation. Both give a /32 layer4 (8 x 8 cells at 256 px).
        pyramid: add the /8 reconstruction [on]. lcd: local correlation distillation [on].
        gcd: global correlation distillation [on]. lcd_keep: uncertainty threshold T [0.7; None
            keeps all pixels]. radius4, radius8: the windows' radii R at /4 and /8 [12, 6].
            teacher_temperature [0.07].
        w_rec8, w_lcd, w_gcd: loss weights [1 (the paper's plain sum), 1000, 50].
        lcd_form: ``"official"`` (normalised by masked queries x HW, zero-padded uncertainty,
            SPEC section 3) or ``"windowed"`` (this project's earlier form: normalised by the
            window entries inside the map, uncertainty over them; for the ablation).
        lcd_threshold: ``"flattened"`` (intended) or ``"per-column"`` (the official release's
            bug), see :func:`stt.losses.uncertainty_mask`.

    Decision (as the official code): the teacher sees the full-colour frames (the bottleneck is
    the student's pretext task, not the teacher's).

    Stages deeper than the losses use (layer4 without GCD; layer3 too without the /8 level) get
    no gradient: they are frozen, so DDP does not wait for their gradients (the evaluation uses
    layer3).
    """

    def __init__(self, arch: Literal["resnet18", "resnet50"] = "resnet18", init: dict | None = None,
                 teacher: dict | None = None, pyramid: bool = True, lcd: bool = True, gcd: bool = True,
                 lcd_keep: float | None = 0.7, radius4: int = 12, radius8: int = 6, teacher_temperature: float = 0.07,
                 w_rec8: float = 1.0, w_lcd: float = 1000.0, w_gcd: float = 50.0,
                 teacher_variant: Literal["checkpoint", "imagenet", "train"] = "checkpoint",
                 teacher_input: Literal["checkpoint", "lab", "rgb-imagenet", "rgb"] = "checkpoint",
                 lcd_form: Literal["official", "windowed"] = "official",
                 lcd_threshold: Literal["flattened", "per-column"] = "flattened"):
        super().__init__()
        if lcd_form not in ("official", "windowed"):
            raise ValueError(f"unknown lcd_form {lcd_form!r}: expected official or windowed")
        if lcd_threshold not in LCD_THRESHOLDS:
            raise ValueError(f"unknown lcd_threshold {lcd_threshold!r}: expected one of {LCD_THRESHOLDS}")
        self.encoder = ResNetEncoder(arch, "train", "lab")
        if init is not None:
            load_encoder_state(self.encoder, init, "step-1 initialisation")
        self.pyramid, self.lcd, self.gcd, self.lcd_keep = pyramid, lcd, gcd, lcd_keep
        self.lcd_form, self.lcd_threshold = lcd_form, lcd_threshold
        self.r4, self.r8 = radius4, radius8
        self.tt, self.w_rec8, self.w_lcd, self.w_gcd = teacher_temperature, w_rec8, w_lcd, w_gcd
        self.levels = ("layer2",) + (("layer3",) if pyramid or lcd else ()) + (("layer4",) if gcd else ())
        for name in LEVELS[LEVELS.index(self.levels[-1]) + 1:]:
            getattr(self.encoder, name).requires_grad_(False)
        self.teacher = None
        if gcd:
            if teacher is None:
                raise ValueError("GCD needs the step-1 teacher (teacher=checkpoint), or gcd=False")
            as_trained = lambda v: None if v == "checkpoint" else v  # noqa: E731
            self.teacher = trunk_encoder(teacher, "step-1 teacher", as_trained(teacher_variant), as_trained(teacher_input))
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad = False

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BatchNorm statistics never move
        return self

    def affinities(self, f_tar: torch.Tensor, f_ref: torch.Tensor, radius: int):
        """Raw window correlation and softmax affinity ``softmax_p(<f_tar(q), f_ref(p)> / sqrt(C))``."""
        corr = local_correlation(f_tar, f_ref, radius)  # B x h x w x (2R+1)^2
        return corr, (corr / f_tar.shape[1] ** 0.5).softmax(-1)

    def forward(self, batch: torch.Tensor, gen: torch.Generator | None = None) -> dict:
        """batch: B x 2 x 3 x S x S RGB in [0, 1] (reference, target)."""
        B = batch.shape[0]
        lab = rgb_to_normalized_lab(batch)  # B x 2 x 3 x S x S
        x, ch = lab_channel_dropout(lab, gen)
        f = self.encoder(x.flatten(0, 1), levels=self.levels)  # frames interleaved: ref, tar, ref, ...
        if self.gcd:  # in fp32: GCD's teacher temperature (0.07) magnifies bf16 rounding of its features
            with torch.no_grad(), full_precision(lab):
                rgb = batch.flatten(0, 1).float()
                teacher = self.teacher(self.teacher.preprocess(rgb), levels=("layer4",))["layer4"]
        with full_precision(x):
            f = {k: v.float().contiguous() for k, v in f.items()}
            return self.losses(f, lab, ch, B, batch.shape[-1], teacher.float() if self.gcd else None)

    def losses(self, f: dict, lab: torch.Tensor, ch: int, B: int, S: int, teacher: torch.Tensor | None) -> dict:
        """The losses from the student's features ``f`` (frames interleaved) and the teacher's."""
        split = lambda t: (t.view(B, 2, *t.shape[1:])[:, 0], t.view(B, 2, *t.shape[1:])[:, 1])  # noqa: E731
        r4, t4 = split(f["layer2"])
        y_ref, y_tar = lab[:, 0, ch : ch + 1], lab[:, 1, ch : ch + 1]  # the dropped channel, undropped
        out = {}
        _, a4 = self.affinities(t4, r4, self.r4)
        out["rec4"] = reconstruction_loss(a4, y_ref, y_tar, self.r4, S // r4.shape[-1])
        loss = out["rec4"]
        if self.pyramid or self.lcd:
            r8, t8 = split(f["layer3"])
            c8, a8 = self.affinities(t8, r8, self.r8)
        if self.pyramid:
            out["rec8"] = reconstruction_loss(a8, y_ref, y_tar, self.r8, S // r8.shape[-1])
            loss = loss + self.w_rec8 * out["rec8"]
        if self.lcd:
            official = self.lcd_form == "official"
            target = pool_fine_affinity(a4.detach(), self.r4, self.r8)
            mask = uncertainty_mask(uncertainty(c8.detach(), zero_padded=official), self.lcd_keep, self.lcd_threshold)
            out["lcd"] = local_correlation_distillation(a8, target, mask, None if official else torch.isfinite(c8))
            loss = loss + self.w_lcd * out["lcd"]
        if self.gcd:
            s_ref, s_tar = split(f["layer4"])
            t_ref, t_tar = split(teacher)
            out["gcd"] = global_correlation_distillation(s_tar, s_ref, t_tar, t_ref, self.tt)
            loss = loss + self.w_gcd * out["gcd"]
        out["loss"] = loss
        return out

    def encoder_state_dict(self) -> dict:
        return self.encoder.state_dict()

    def checkpoint_meta(self) -> dict:
        teacher = None if self.teacher is None else {"arch": self.teacher.arch, "variant": self.teacher.variant,
                                                        "input": self.teacher.input_space}
        return {"kind": "stt", "arch": self.encoder.arch, "input": "lab", "variant": "train",
                "flags": {"pyramid": self.pyramid, "lcd": self.lcd, "gcd": self.gcd, "lcd_keep": self.lcd_keep,
                          "lcd_form": self.lcd_form, "lcd_threshold": self.lcd_threshold, "teacher": teacher}}


STTSettings = constructor_settings(STT, skip=("init", "teacher"))


@dataclass
class PairSettings(ClipSettings):
    """STT's training pairs: two frames ``gap`` apart (:class:`stt.views.FrameClips`)."""

    drop_static: float = 0.0  # *ours*: leave out this fraction of the pairs, those that move least


# SPEC section 3: Adam, lr 1e-4 for R18 [5e-5 for R50], cosine to 0.001 x lr with linear warm-up,
# batch 128 [R18], SyncBN under DDP, 800 epochs of YouTube-VOS (3471 videos).
TRAIN = TrainConfig(optimizer="adam", lr=1e-4, weight_decay=0.0, min_lr_ratio=0.001)
PRESETS = {
    "smoke": dict(steps=3, batch_size=2, image_size=64, max_videos=2, warmup_steps=1, log_every=1, ckpt_every=2),
    # small: 4x the paper's lr and 900 steps, each measured in studies/results/temporal.md
    "small": dict(steps=900, batch_size=8, image_size=128, warmup_steps=15, log_every=10, ckpt_every=50,
                  num_workers=1, lr=4e-4),
    "gpu": dict(steps=1500, batch_size=64, image_size=256, warmup_steps=100, log_every=20, ckpt_every=500,
                num_workers=12),
    "full": dict(steps=800 * 3471 // 128, batch_size=128, image_size=256, warmup_steps=1000, log_every=50,
                 ckpt_every=1000, num_workers=8, sync_bn=True, short_side=None),
}
# The paper's R50 recipe: half the R18 learning rate (5e-5), and batch 64 instead of 128 at full scale.
R50_TEMPORAL = dict(lr_scale=0.5, full_batch_size=64)


def trunk_from_checkpoint(path) -> dict:
    """The torchvision-layout trunk of a checkpoint (ours, torchvision's or MoCo's)."""
    return extract_encoder_state(load_checkpoint(path), source=str(path))


def train_temporal(data=None, out="runs/temporal", config: str = "small", init=None, teacher=None,
                   progress: bool = True, **overrides) -> Path:
    """STT step 2: reconstruction with GCD and LCD on pairs of video frames.

    ``init`` and ``teacher`` are step-1 checkpoints (paths); temporal-only is ``init=None,
    gcd=False``. ``overrides``: any setting of :data:`METHOD` (None: the preset's), the ablation
    switches (``pyramid``, ``lcd``, ``gcd``, ``lcd_keep``, ...) among them.
    """
    s = METHOD.settings(config, **overrides)
    if s.model.arch == "resnet50":  # the presets are R18's; the paper's R50 recipe unless set by hand
        if "lr" not in s.overridden:
            s.train = replace(s.train, lr=s.train.lr * R50_TEMPORAL["lr_scale"])
        if config == "full" and "batch_size" not in s.overridden:
            s.train = replace(s.train, batch_size=R50_TEMPORAL["full_batch_size"])
    if s.model.gcd and teacher is None:
        raise ValueError("GCD needs the step-1 teacher checkpoint (teacher=...), or gcd=False")
    ensure_writable(out, "training folder")  # before any video is decoded into the frame cache
    v = s.data
    data = Path(data) if data else default_video_data()
    videos = VideoFrames(data, frame_cache(v.cache, data), v.fps, v.short_side, v.max_videos, progress=progress)
    clips = FrameClips(videos, n_frames=2, gap=v.gap, size=v.image_size,
                       on_device=device_augment(v.augment, s.train.device), drop_static=v.drop_static)
    seed_model_init(s.train)
    model = STT(init=trunk_from_checkpoint(init) if init else None,
                teacher=load_checkpoint(teacher) if s.model.gcd else None, **asdict(s.model))
    meta = {"recipe": "temporal", "config": config, "data": str(data), "pairs": len(clips)}
    return s.fit(model, clips, out, meta, progress, init=str(init) if init else None,
                 teacher=str(teacher) if s.model.gcd else None)


def _cli_kwargs(a) -> dict:
    kw = {"init": None if a.temporal_only else a.init, "teacher": a.teacher}
    return {**kw, "gcd": False} if a.temporal_only else kw


METHOD = Method(
    "temporal", "stt", "STT step 2", "STT step 2: reconstruction + GCD + LCD on video frame pairs", STTSettings, PairSettings,
    TRAIN, PRESETS, train_temporal,
    cli_args=(
        (("--init",), dict(default=None, help="step-1 checkpoint to start from (omit: random init)")),
        (("--teacher",), dict(default=None, help="step-1 checkpoint, the frozen GCD teacher")),
        (("--temporal-only",), dict(action="store_true", help="ablation: no step-1 init, no GCD")),
    ),
    cli_kwargs=_cli_kwargs,
)

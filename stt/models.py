"""Trainable models: MoCo v2 (STT step 1), the STT step-2 student, CorrFlow.

Each ``forward(batch, gen)`` returns ``{"loss": ..., <scalars to log>}`` for :class:`stt.train.Trainer`.
"""
from __future__ import annotations

import copy

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .affinity import local_correlation
from .augment import color_jitter
from .color import quantize_ab, rgb_to_lab, rgb_to_normalized_lab
from .encoder import LEVELS, CorrFlowEncoder, ResNetEncoder, load_encoder_state, trunk_encoder
from .losses import (
    LCD_THRESHOLDS,
    corrflow_nll,
    global_correlation_distillation,
    info_nce,
    lab_channel_dropout,
    local_correlation_distillation,
    pool_fine_affinity,
    reconstruct,
    reconstruction_loss,
    uncertainty,
    uncertainty_mask,
)


def _dist_world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def full_precision(x: torch.Tensor):
    """A region where autocast is off: correlations, softmaxes and losses stay in fp32 while the
    encoders run in bf16 (:class:`stt.train.Trainer` ``amp``)."""
    return torch.autocast(x.device.type, enabled=False)


@torch.no_grad()
def gather_all(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process (no gradient); ``x`` itself when not distributed."""
    if _dist_world() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(_dist_world())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


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

    def __init__(self, arch: str = "resnet18", dim: int = 128, queue_size: int = 4096, momentum: float = 0.999,
                 temperature: float = 0.2, input_space: str = "lab", bn_splits: int = 1,
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
        world = _dist_world()
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


class STT(nn.Module):
    """STT step 2 (Li & Liu, CVPR 2023): temporal features by reconstruction, with global and
    local correlation distillation (SPEC section 3).

    A pair (reference, target) of frames goes through the colour bottleneck (one of a/b zeroed);
    the target's dropped channel is reconstructed from the reference through local affinities at
    /4 (R = 12) and /8 (R = 6)::

        L = L_rec/4 + L_rec/8 + w_lcd L_lcd + w_gcd L_gcd

    Args:
        arch: ``resnet18`` / ``resnet50``; the student uses the ``train`` stride variant.
        init: trunk state_dict to start from (step 1), or None (random init: temporal-only).
        teacher: the frozen GCD teacher (required if ``gcd``): a checkpoint (this project's,
            torchvision's or MoCo's, :func:`stt.encoder.trunk_encoder`) or a trunk state_dict;
            its architecture comes from its keys (an R50 teacher can distil into an R18 student).
        teacher_variant, teacher_input: how the teacher runs; None (default): as its checkpoint
            was trained (step 1: the plain ResNet, stem max-pool and strides 1,2,2,2, on the
            input space step 1 saw), as the official code runs its teacher. ``"train"`` /
            ``"lab"``: this project's earlier choice (the student's step-2 trunk on Lab), kept for
            the ablation. Both give a /32 layer4 (8 x 8 cells at 256 px).
        pyramid: add the /8 reconstruction [on]. lcd: local correlation distillation [on].
        gcd: global correlation distillation [on]. lcd_keep: uncertainty threshold T [0.7; None
            keeps all pixels]. radii: (R/4, R/8) [(12, 6)]. teacher_temperature [0.07].
        w_lcd, w_gcd: loss weights [1000, 50].
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

    def __init__(self, arch: str = "resnet18", init: dict | None = None, teacher: dict | None = None,
                 pyramid: bool = True, lcd: bool = True, gcd: bool = True, lcd_keep: float | None = 0.7,
                 radii=(12, 6), teacher_temperature: float = 0.07, w_lcd: float = 1000.0, w_gcd: float = 50.0,
                 teacher_variant: str | None = None, teacher_input: str | None = None, lcd_form: str = "official",
                 lcd_threshold: str = "flattened"):
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
        self.r4, self.r8 = radii
        self.tt, self.w_lcd, self.w_gcd = teacher_temperature, w_lcd, w_gcd
        self.levels = ("layer2",) + (("layer3",) if pyramid or lcd else ()) + (("layer4",) if gcd else ())
        for name in LEVELS[LEVELS.index(self.levels[-1]) + 1:]:
            getattr(self.encoder, name).requires_grad_(False)
        self.teacher = None
        if gcd:
            if teacher is None:
                raise ValueError("GCD needs the step-1 teacher (teacher=checkpoint), or gcd=False")
            self.teacher = trunk_encoder(teacher, "step-1 teacher", teacher_variant, teacher_input)
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
            loss = loss + out["rec8"]
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
    """

    def __init__(self, centroids: torch.Tensor, radius: int = 6, total_steps: int = 1000, eps=(0.9, 0.6),
                 long_weight: float = 0.1, drop_prob: float = 0.7, jitter_prob: float = 0.1, cycles: bool = True):
        super().__init__()
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

"""Encoders (SPEC section 1): torchvision-layout ResNets returning feature maps by level.

The state_dict keys are exactly torchvision's (minus ``fc``), so a user's torchvision or MoCo
checkpoint loads unchanged. Only strides and the stem pool differ between the variants:

=============  ==============  =========  ==================================================
variant        layer strides   stem pool  use
=============  ==============  =========  ==================================================
``train``      (1, 2, 2, 4)    none       STT student: layer2 /4, layer3 /8, layer4 /32
``stride8``    (1, 2, 2, 1)    none       STT test time: layer3 at /8
``stride4``    (1, 1, 1, 1)    avg 3x3/2  STT test time "stride 4": layer3 at /4
``imagenet``   (1, 2, 2, 2)    max 3x3/2  plain torchvision (layer4 at /32)
=============  ==============  =========  ==================================================

The same weights serve every variant: strides carry no parameters.
"""
from __future__ import annotations

import torch
import torchvision
from torch import nn

from .color import rgb_to_imagenet, rgb_to_normalized_lab

VARIANTS = {
    "train": dict(strides=(1, 2, 2, 4), stem_pool=None),
    "stride8": dict(strides=(1, 2, 2, 1), stem_pool=None),
    "stride4": dict(strides=(1, 1, 1, 1), stem_pool="avg"),
    "imagenet": dict(strides=(1, 2, 2, 2), stem_pool="max"),
}
LEVELS = ("layer1", "layer2", "layer3", "layer4")
# What an encoder's input is, computed from RGB in [0, 1] by :meth:`ResNetEncoder.preprocess`.
INPUT_SPACES = {
    "lab": rgb_to_normalized_lab,  # STT: Lab normalised by (50, 0, 0) / (50, 127, 127)
    "rgb-imagenet": rgb_to_imagenet,  # torchvision / MoCo ImageNet checkpoints
    "rgb": lambda rgb: rgb,  # RGB in [0, 1] (CorrFlow)
}


def _set_stage_stride(stage: nn.Sequential, stride: int) -> None:
    """Set the stride of a torchvision ResNet stage (first block's strided conv + shortcut)."""
    block = stage[0]
    conv = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
    conv.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)
    elif stride != 1:
        raise ValueError("a stage without a shortcut projection cannot be strided")


class ResNetEncoder(nn.Module):
    """A torchvision ResNet-18/50 trunk with configurable strides, returning ``{level: map}``.

    Args:
        arch: ``"resnet18"`` or ``"resnet50"`` (paper: both).
        variant: one of :data:`VARIANTS` (default ``"stride8"``, the STT test-time encoder).
        input_space: one of :data:`INPUT_SPACES`: ``"lab"`` (STT: normalised Lab, SPEC section
            1), ``"rgb-imagenet"`` (torchvision / MoCo ImageNet models) or ``"rgb"`` (RGB in
            [0, 1]); used by :meth:`preprocess`.
    """

    def __init__(self, arch: str = "resnet18", variant: str = "stride8", input_space: str = "lab"):
        super().__init__()
        if arch not in ("resnet18", "resnet50"):
            raise ValueError(f"unknown arch {arch!r}: expected resnet18 or resnet50")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}: expected one of {sorted(VARIANTS)}")
        if input_space not in INPUT_SPACES:
            raise ValueError(f"unknown input space {input_space!r}: expected one of {sorted(INPUT_SPACES)}")
        base = getattr(torchvision.models, arch)(weights=None)
        self.arch, self.variant, self.input_space = arch, variant, input_space
        self.conv1, self.bn1, self.relu = base.conv1, base.bn1, base.relu
        pool = VARIANTS[variant]["stem_pool"]
        self.maxpool = {
            None: nn.Identity(),
            "max": nn.MaxPool2d(3, 2, 1),
            "avg": nn.AvgPool2d(3, 2, 1),
        }[pool]
        self.layer1, self.layer2, self.layer3, self.layer4 = (
            base.layer1, base.layer2, base.layer3, base.layer4,
        )
        for stage, stride in zip(self.stages(), VARIANTS[variant]["strides"]):
            _set_stage_stride(stage, stride)
        self.channels = {
            name: (stage[-1].bn3 if hasattr(stage[-1], "bn3") else stage[-1].bn2).num_features
            for name, stage in zip(LEVELS, self.stages())
        }

    def stages(self):
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def strides(self) -> dict[str, int]:
        """Output stride of each level for this variant."""
        s = 2 * (1 if isinstance(self.maxpool, nn.Identity) else 2)
        out = {}
        for name, stride in zip(LEVELS, VARIANTS[self.variant]["strides"]):
            s *= stride
            out[name] = s
        return out

    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB in [0, 1] (B x 3 x H x W) -> the encoder's input space."""
        return INPUT_SPACES[self.input_space](rgb)

    def forward(self, x: torch.Tensor, levels=("layer3",)) -> dict[str, torch.Tensor]:
        """Run the trunk on preprocessed input, stopping after the deepest requested level."""
        last = max(LEVELS.index(level) for level in levels)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # B x 64 x H/2 x W/2 (no pool)
        out = {}
        for i, (name, stage) in enumerate(zip(LEVELS, self.stages())):
            x = stage(x)
            if name in levels:
                out[name] = x
            if i == last:
                break
        return out


# --------------------------------------------------------------------------------------------
# Checkpoints: ours, torchvision's, MoCo's, and the released STT (mmcv) and CorrFlow files.
# --------------------------------------------------------------------------------------------

# Where a trunk's keys may sit, tried in this order. The keys under the first prefix that holds a
# ``conv1.weight`` are the trunk; the rest of the file (MoCo's momentum encoder ``encoder_k``, an
# mmcv file's teacher ``backbone_t`` and heads) is not.
_PREFIXES = ("", "module.encoder_q.", "encoder_q.", "module.encoder.", "module.", "encoder.", "backbone.")
_HEADS = ("fc.", "head.")  # classifier / projection heads: not part of the trunk


def state_dict_of(obj, source: str) -> dict:
    """The state_dict inside a loaded checkpoint: its ``encoder`` (this project), ``state_dict``
    (MoCo, mmcv, CorrFlow) or ``model`` entry, else the object itself."""
    if not isinstance(obj, dict):
        raise ValueError(f"{source}: expected a dict (state_dict or checkpoint), got {type(obj).__name__}")
    for key in ("encoder", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _trunk_prefix(sd: dict) -> str | None:
    return next((p for p in _PREFIXES if f"{p}conv1.weight" in sd), None)


def checkpoint_format(ckpt) -> str:
    """What a loaded checkpoint is: ``"project"`` (this project's; its ``meta`` has a "kind"),
    ``"corrflow"`` (CorrFlow's release: ``feature_extraction.*`` and ``post_convolution.*``),
    ``"mmcv"`` (STT's release: the trunk under ``backbone.``; mmcv's own ``meta`` is not ours) or
    ``"torchvision"`` (torchvision, MoCo, any other torchvision-layout trunk)."""
    if not isinstance(ckpt, dict):
        return "torchvision"  # not a checkpoint at all: extract_encoder_state says so, naming the file
    meta = ckpt.get("meta")
    if isinstance(meta, dict) and "kind" in meta:
        return "project"
    sd = state_dict_of(ckpt, "checkpoint")
    keys = {k.removeprefix("module.").split(".")[0] for k in sd}
    if {"feature_extraction", "post_convolution"} <= keys:
        return "corrflow"
    return "mmcv" if _trunk_prefix(sd) == "backbone." else "torchvision"


def extract_encoder_state(obj: dict, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find a torchvision-layout trunk state_dict inside ``obj``.

    Accepted: ``{"encoder": sd, ...}`` (this project), ``{"state_dict": {"module.encoder_q.*"}}``
    (MoCo v1/v2), ``{"state_dict": {"backbone.*", ...}}`` (mmcv: the released STT checkpoints),
    a plain torchvision state_dict. The trunk is what lies under the first of :data:`_PREFIXES`
    that holds a ``conv1.weight``, with the prefix stripped and the heads (``fc.*``, ``head.*``)
    dropped; nothing else in the file is taken (MoCo's ``encoder_k``, STT's teacher ``backbone_t``).
    """
    sd = state_dict_of(obj, source)
    prefix = _trunk_prefix(sd)
    if prefix is None:
        raise ValueError(
            f"{source}: no ResNet trunk found (expected keys like 'conv1.weight', "
            f"'module.encoder_q.conv1.weight', 'backbone.conv1.weight' or 'encoder' -> {{...}}); "
            f"first keys: {list(sd)[:5]}"
        )
    return {k[len(prefix):]: v for k, v in sd.items()
            if k.startswith(prefix) and torch.is_tensor(v) and not k[len(prefix):].startswith(_HEADS)}


def load_encoder_state(encoder: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a trunk state_dict strictly, with an error that names the file and the mismatch."""
    own = encoder.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [(k, tuple(sd[k].shape), tuple(own[k].shape)) for k in own if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        lines = [f"{source}: checkpoint does not fit {getattr(encoder, 'arch', type(encoder).__name__)}"]
        if wrong:
            lines += [f"  {k}: checkpoint has {a}, model expects {b}" for k, a, b in wrong[:5]]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {missing[:5]}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {unexpected[:5]}")
        raise ValueError("\n".join(lines))
    encoder.load_state_dict(sd)


def infer_arch(sd: dict[str, torch.Tensor]) -> str:
    return "resnet50" if "layer1.0.conv3.weight" in sd else "resnet18"


# The stride variant each kind of checkpoint was trained as (SPEC sections 1-3): MoCo and
# torchvision train the plain ResNet, the STT student the step-2 trunk.
TRAINED_VARIANT = {"moco": "imagenet", "stt": "train", "trunk": "imagenet"}


def trained_as(ckpt: dict) -> tuple[str, str]:
    """(variant, input space) a checkpoint's trunk was trained with: recorded in this project's
    ``meta``; a released STT file (mmcv layout) is the step-2 trunk on Lab (SPEC section 2); any
    other file (torchvision, MoCo) is a plain ResNet on ImageNet-normalised RGB."""
    fmt = checkpoint_format(ckpt)
    if fmt == "project":
        meta = ckpt["meta"]
        return meta.get("variant", TRAINED_VARIANT.get(meta.get("kind"), "imagenet")), meta.get("input", "lab")
    return ("train", "lab") if fmt == "mmcv" else ("imagenet", "rgb-imagenet")


def trunk_encoder(ckpt: dict, source: str = "checkpoint", variant: str | None = None,
                  input_space: str | None = None) -> ResNetEncoder:
    """The ResNet trunk of a loaded checkpoint, run as ``variant`` on ``input_space`` (each by
    default as the checkpoint was trained: :func:`trained_as`). Arch from our meta or the keys."""
    trained_variant, trained_input = trained_as(ckpt)
    sd = extract_encoder_state(ckpt, source=source)
    meta = ckpt["meta"] if checkpoint_format(ckpt) == "project" else {}
    enc = ResNetEncoder(meta.get("arch", infer_arch(sd)), variant or trained_variant, input_space or trained_input)
    load_encoder_state(enc, sd, source=source)
    return enc

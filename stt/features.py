"""Test-time feature models for label propagation: frames in, L2-normalisable feature maps out.

:func:`build_feature_model` makes one from a name (``lab``, ``random-r18``, ...) or a checkpoint:
a ResNet trunk run at its test-time variant, or the encoder of a method that has its own
(:mod:`stt.methods`).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import file_digest, load_checkpoint
from .color import rgb_to_normalized_lab
from .encoder import ResNetEncoder, checkpoint_format, trunk_encoder
from .methods import method_of


class LabPixels(nn.Module):
    """Baseline: raw normalised Lab pixels, average-pooled like a stride-``stride`` map."""

    def __init__(self, stride: int = 8):
        super().__init__()
        self.stride = stride

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(rgb_to_normalized_lab(rgb), self.stride, self.stride, ceil_mode=True)


class TrunkFeatures(nn.Module):
    """A ResNet trunk used at test time: RGB in, one level's feature map out."""

    def __init__(self, encoder: ResNetEncoder, level: str = "layer3"):
        super().__init__()
        self.encoder, self.level = encoder, level
        self.stride = encoder.strides()[level]

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.encoder.preprocess(rgb), levels=(self.level,))[self.level]


def build_feature_model(spec: str, variant: str = "stride8", seed: int = 0,
                        input_space: str | None = None) -> tuple[nn.Module, dict]:
    """Build a test-time feature model from a name or a checkpoint path.

    ``spec`` is ``"lab"``, ``"random-r18"`` / ``"random-r50"`` (seeded torchvision init) or a
    checkpoint path (:func:`stt.encoder.checkpoint_format`: this project's, torchvision's, MoCo's, a released
    STT or CorrFlow file), fed ``input_space`` (default: the one it was trained on,
    :func:`stt.encoder.trained_as`; a method with its own encoder, :mod:`stt.methods`, says what it reads). Returns the model (eval mode) and a
    description dict: "name" for display, the rest (the file's digest for checkpoints)
    identifies the weights and keys cached results.
    """
    stride = {"stride8": 8, "stride4": 4}.get(variant)
    if spec == "lab":
        if input_space not in (None, "lab"):
            raise ValueError(f"the lab baseline is the Lab pixels themselves; input space {input_space!r} does not apply")
        return LabPixels(stride or 8).eval(), {"name": "lab", "stride": stride or 8}
    if spec in ("random-r18", "random-r50"):
        torch.manual_seed(seed)
        enc = ResNetEncoder("resnet18" if spec.endswith("18") else "resnet50", variant, input_space or "lab")
        desc = {"name": spec, "variant": variant, "seed": seed}
        if enc.input_space != "lab":  # recorded when not the default, so earlier results folders still match
            desc["input"] = enc.input_space
        return TrunkFeatures(enc).eval(), desc
    ckpt = load_checkpoint(spec)
    fmt = checkpoint_format(ckpt)
    name = "/".join(Path(spec).resolve().parts[-2:])  # e.g. spatial/checkpoint.pth
    method = method_of(ckpt)
    if method is not None and method.features is not None:  # a method with an encoder of its own
        net, desc = method.features(ckpt, str(spec), input_space)
        return net, {"name": name, **desc, "file": file_digest(spec)}
    enc = trunk_encoder(ckpt, str(spec), variant, input_space)
    kind = ckpt["meta"]["kind"] if fmt == "project" else "trunk"
    return TrunkFeatures(enc).eval(), {"name": name, "kind": kind, "variant": variant, "input": enc.input_space,
                                       "file": file_digest(spec)}

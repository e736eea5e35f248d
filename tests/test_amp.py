"""Mixed precision: each trainer's loss on a fixed batch under bf16 autocast (and channels-last)
equals the fp32 loss within the stated tolerance.

Tolerance: the total loss within 1 % of fp32, every logged term within 5 % (the encoders run in
bf16; colour conversion, correlations, softmaxes and losses stay in fp32, and STT's GCD teacher
runs in fp32, see stt.device.full_precision). Measured on this project's CPU: total loss 0.03-0.35 % off,
the worst term CorrFlow's long cycle at 2-3 %.
"""
import copy

import pytest
import torch

from stt.encoder import ResNetEncoder
from stt.corrflow import CorrFlow
from stt.moco import MoCo
from stt.temporal import STT

TOTAL, TERM = 0.01, 0.05


def _cases():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    teacher = ResNetEncoder("resnet18", "train", "lab").state_dict()
    return {
        "moco": (MoCo("resnet18", 128, 256, bn_splits=2),
                 (torch.rand(16, 3, 64, 64, generator=g), torch.rand(16, 3, 64, 64, generator=g), torch.arange(16))),
        "stt": (STT("resnet18", teacher, teacher), torch.rand(4, 2, 3, 64, 64, generator=g)),
        "corrflow": (CorrFlow(torch.randn(16, 2, generator=g) * 30, 6, 100), torch.rand(2, 3, 3, 64, 64, generator=g)),
    }


@pytest.mark.parametrize("name", ["moco", "stt", "corrflow"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_loss_equals_fp32_within_tolerance(name, channels_last):
    model, batch = _cases()[name]
    m = copy.deepcopy(model)  # before the forward pass: MoCo's enqueues keys, CorrFlow counts steps
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref = model(copy.deepcopy(batch), gen=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = m(copy.deepcopy(batch), gen=torch.Generator().manual_seed(0))
    assert out["loss"].dtype == torch.float32
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=TOTAL)
    for k in ref:
        assert out[k].item() == pytest.approx(ref[k].item(), rel=TERM, abs=1e-6), k

"""Which device a run computes on (the one place that reads ``--device``), and getting batches there."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: this process's GPU (``cuda:<local_rank>`` under torchrun) when CUDA is
    available, else the CPU; anything else as named (``cpu``, ``cuda``, ``cuda:1``)."""
    if str(device) == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def move_to(x, device):
    """Tensors (in nested tuples, lists, dicts) to ``device``, asynchronously from pinned memory."""
    if torch.is_tensor(x):
        return x.to(device, non_blocking=True)
    if isinstance(x, (list, tuple)):
        return type(x)(move_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: move_to(v, device) for k, v in x.items()}
    return x

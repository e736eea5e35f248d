"""Where a run computes: the device (the one place that reads ``--device``), batches moved there,
the fp32 regions under autocast, and the processes of a torchrun job."""
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


def dist_world() -> int:
    """Processes in the torchrun job (1 when not distributed)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def full_precision(x: torch.Tensor):
    """A region where autocast is off: correlations, softmaxes and losses stay in fp32 while the
    encoders run in bf16 (:class:`stt.train.Trainer` ``amp``)."""
    return torch.autocast(x.device.type, enabled=False)


@torch.no_grad()
def gather_all(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from every process (no gradient); ``x`` itself when not distributed."""
    import torch.distributed as dist

    if dist_world() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist_world())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)

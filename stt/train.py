"""The training loop every model shares: seeded data order, schedules, atomic checkpoints,
exact resume, progress and logs, and multi-GPU through torchrun / DDP (one code path).

A model is any ``nn.Module`` whose ``forward(batch, gen)`` returns a dict with a scalar
``"loss"`` (and any other scalars to log); ``gen`` is a ``torch.Generator`` seeded by
(seed, step) for the model's own randomness (channel dropout, scheduled sampling, ...).
A model may define ``encoder_state_dict()`` (saved as ``"encoder"`` for downstream use) and
``checkpoint_meta()`` (architecture and input space, saved as ``"meta"``).

Reproducibility: sample ``j`` of step ``s`` is dataset item ``perm_e[p mod N]`` with
``p = s B + j`` and ``perm_e`` the permutation of epoch ``e = p div N`` drawn from the seed,
and its augmentation generator is seeded by (seed, s, j). Nothing depends on worker count,
rank or wall clock, so a resumed run computes exactly the steps an uninterrupted run would.

Speed: batches come from pinned memory with several batches prefetched per worker; a dataset
may define ``collate`` and ``to_device`` to move uint8 crops and finish its augmentation on the
device in batch (:class:`stt.views.TwoViews`). The forward pass runs under bf16 autocast where
the device computes bf16 natively (``amp``; the losses themselves stay in fp32, see
:func:`stt.device.full_precision`), with channels-last activations on CUDA; logged scalars are summed on the
device, so the host never waits for the GPU between log steps.

Distributed: under ``torchrun`` (``WORLD_SIZE`` > 1) each rank takes its slice of every global
batch, the model is wrapped in ``DistributedDataParallel`` (``sync_bn`` converts BatchNorm to
SyncBatchNorm), rank 0 alone logs and writes checkpoints.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from .checkpoint import atomic_save, ensure_writable, load_checkpoint, write_text
from .device import move_to, resolve_device

CHECKPOINT = "checkpoint.pth"
LOG = "train_log.jsonl"


@dataclass
class TrainConfig:
    """Optimisation settings. ``batch_size`` is global (split across DDP ranks)."""

    steps: int = 1000
    batch_size: int = 64
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.03
    weight_decay: float = 1e-4
    sgd_momentum: float = 0.9  # sgd
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine decays lr to lr * min_lr_ratio
    lr_milestones: tuple[int, ...] = ()  # if given: step decay instead of cosine, lr *= lr_gamma at each
    lr_gamma: float = 0.5
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    num_workers: int = 0
    device: str = "auto"  # cpu | cuda | cuda:N | auto
    amp: Literal["auto", "bf16", "off"] = "auto"  # bf16 autocast: "auto" (where the device computes bf16 natively)
    channels_last: Literal["auto", "on", "off"] = "auto"  # NHWC activations: "auto" (CUDA)
    sync_bn: bool = False
    extra: dict = field(default_factory=dict)  # recipe settings recorded with the run


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up from 0 over ``warmup_steps``, then cosine to ``lr * min_lr_ratio`` (or, with
    ``lr_milestones``, ``lr * lr_gamma^(milestones passed)``)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_milestones:
        return cfg.lr * cfg.lr_gamma ** sum(step >= m for m in cfg.lr_milestones)
    span = max(1, cfg.steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _mix(*xs: int) -> int:
    """A deterministic 63-bit hash of integers (seeds for generators)."""
    h = 0x9E3779B97F4A7C15
    for x in xs:
        h = (h ^ (x & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class StepBatches(Sampler):
    """Yields, for steps ``start .. steps-1``, this rank's list of ``(dataset index, sample seed)``."""

    def __init__(self, n: int, cfg: TrainConfig, start: int = 0, rank: int = 0, world: int = 1):
        if cfg.batch_size % world:
            raise ValueError(f"batch size {cfg.batch_size} is not divisible by the {world} processes")
        self.n, self.cfg, self.start, self.rank, self.world = n, cfg, start, rank, world
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=torch.Generator().manual_seed(_mix(self.cfg.seed, epoch)))
        return self._perms[epoch]

    def batch(self, step: int) -> list[tuple[int, int]]:
        B = self.cfg.batch_size
        per = B // self.world
        out = []
        for j in range(self.rank * per, (self.rank + 1) * per):
            p = step * B + j
            out.append((int(self._perm(p // self.n)[p % self.n]), _mix(self.cfg.seed, step, j, 1)))
        return out

    def __iter__(self):
        for s in range(self.start, self.cfg.steps):
            yield self.batch(s)

    def __len__(self) -> int:
        return max(0, self.cfg.steps - self.start)


def bf16_native(device: torch.device) -> bool:
    """Does ``device`` compute bf16 natively (CUDA with bf16, a CPU with AVX-512 BF16 or AMX)?
    Elsewhere bf16 is emulated and slower than fp32, so ``amp="auto"`` leaves it off."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def use_amp(cfg: "TrainConfig", device: torch.device) -> bool:
    if cfg.amp not in ("auto", "bf16", "off"):
        raise ValueError(f"amp must be auto, bf16 or off, got {cfg.amp!r}")
    return cfg.amp == "bf16" or (cfg.amp == "auto" and bf16_native(device))


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


MACHINE = ("log_every", "ckpt_every", "num_workers", "device", "amp", "channels_last")  # where, not what


def computation_settings(config: dict) -> dict:
    """A checkpoint's ``config`` as the flat settings that change what is computed: the training
    settings but :data:`MACHINE`, with the recipe's settings (``extra``) beside them, tuples as
    lists. Checkpoints of earlier versions named the SGD momentum ``momentum``."""
    config = dict(config)
    extra = config.pop("extra", {})
    if "momentum" in config:
        config["sgd_momentum"] = config.pop("momentum")
    flat = {k: v for k, v in {**config, **extra}.items() if k not in MACHINE}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in flat.items()}


class Trainer:
    """Train ``model`` on ``dataset`` (items indexed by ``(index, seed)`` pairs) into ``out_dir``.

    If ``out_dir`` holds a checkpoint of the same configuration, training resumes from it: from
    its step, with its history, and ``train_log.jsonl`` cut back to that history (a run killed
    between checkpoints logged steps that the resumed run computes again). A checkpoint of another
    configuration (:func:`computation_settings`; a setting it does not record counts as its value
    in ``defaults``), another number of steps (the lr schedule depends on it) or another data
    source (``meta["data"]``) is an error naming the settings that differ (use another folder). The output folder is checked for write
    access before anything is computed.
    """

    def __init__(self, model: nn.Module, dataset, cfg: TrainConfig, out_dir, meta: dict | None = None,
                 progress: bool = True, collate_fn=None, defaults: dict | None = None):
        self.cfg, self.dataset, self.out = cfg, dataset, Path(out_dir)
        self.defaults = defaults or {}
        self.rank, self.world, local = distributed_env()
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            # torn down before the interpreter exits: a process group left to the C++ destructors
            # at exit can abort a finished rank ("terminate called without an active exception")
            atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
        self.device = resolve_device(cfg.device, local)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
        self.amp = use_amp(cfg, self.device)
        self.channels_last = cfg.channels_last == "on" or (cfg.channels_last == "auto" and self.device.type == "cuda")
        torch.manual_seed(cfg.seed)
        self.module = model.to(self.device)
        if self.channels_last:
            self.module = self.module.to(memory_format=torch.channels_last)
        if cfg.sync_bn and self.world > 1:
            self.module = nn.SyncBatchNorm.convert_sync_batchnorm(self.module)
        self.net = self.module
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        params = [p for p in self.module.parameters() if p.requires_grad]
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.weight_decay)
        elif cfg.optimizer in ("adam", "adamw"):
            cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
            self.opt = cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        else:
            raise ValueError(f"unknown optimizer {cfg.optimizer!r}: expected sgd, adam or adamw")
        self.meta = {**(meta or {}), "amp": "bf16" if self.amp else "off", "channels_last": self.channels_last}
        self.progress = progress and self.rank == 0
        self.collate_fn = collate_fn
        self.step, self.history = 0, []
        ensure_writable(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        if (self.out / CHECKPOINT).is_file():
            self._resume(self.out / CHECKPOINT)

    # -------------------------------------------------------------------- checkpoints

    def _config_dict(self) -> dict:
        d = asdict(self.cfg)
        d["betas"], d["lr_milestones"] = list(d["betas"]), list(d["lr_milestones"])
        return d

    def _resume(self, path: Path) -> None:
        ck = load_checkpoint(path)
        saved, mine = computation_settings(ck["config"]), computation_settings(self._config_dict())
        # A setting an older checkpoint does not record ran at its default (``defaults``); one it
        # records that this code no longer has changes nothing now.
        defaults = computation_settings({"extra": self.defaults})
        ran = {k: saved.get(k, defaults.get(k, "not recorded")) for k in mine}
        diff = {k: (ran[k], v) for k, v in mine.items() if ran[k] != v}
        if diff:
            why = " (the number of steps sets the lr schedule)" if "steps" in diff else ""
            raise RuntimeError(f"{path} was trained with other settings {diff} (saved, requested){why}; "
                               "resuming would mix two runs: use another output folder (--out)")
        data, saved_data = self.meta.get("data"), ck.get("meta", {}).get("data")
        if data is not None and saved_data is not None and os.path.realpath(data) != os.path.realpath(saved_data):
            raise RuntimeError(f"{path} was trained on data {saved_data!r}, this run asks for {data!r}; resuming "
                               "would mix two data sets: use another output folder (--out), or the same data")
        try:
            self.module.load_state_dict(ck["model"])
        except RuntimeError as exc:
            raise ValueError(f"{path}: model state does not fit this model ({exc})") from exc
        self.opt.load_state_dict(ck["optimizer"])
        self.step, self.history = int(ck["step"]), list(ck["history"])
        if self.rank == 0:  # the log holds what the checkpoint holds: each step once
            write_text(self.out / LOG, "".join(json.dumps(rec) + "\n" for rec in self.history))
        if self.progress:
            print(f"resuming {path} at step {self.step}/{self.cfg.steps}")

    def save(self) -> Path | None:
        if self.rank != 0:
            return None
        ck = {
            "model": self.module.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": self.step,
            "config": self._config_dict(),
            "meta": {**self.meta, **(self.module.checkpoint_meta() if hasattr(self.module, "checkpoint_meta") else {}),
                     "world_size": self.world},
            "history": self.history,
        }
        if hasattr(self.module, "encoder_state_dict"):
            ck["encoder"] = self.module.encoder_state_dict()
        atomic_save(ck, self.out / CHECKPOINT)
        return self.out / CHECKPOINT

    # -------------------------------------------------------------------- loop

    def _log(self, rec: dict) -> None:
        self.history.append(rec)
        if self.rank == 0:
            with open(self.out / LOG, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def fit(self) -> list[dict]:
        cfg = self.cfg
        if self.step >= cfg.steps:
            return self.history
        sampler = StepBatches(len(self.dataset), cfg, self.step, self.rank, self.world)
        workers = dict(persistent_workers=True, prefetch_factor=4) if cfg.num_workers > 0 else {}
        loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                            collate_fn=self.collate_fn or getattr(self.dataset, "collate", None),
                            pin_memory=self.device.type == "cuda", **workers)
        to_device = getattr(self.dataset, "to_device", lambda b, d: move_to(b, d))
        self.net.train()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.progress, unit="step", desc=self.out.name)
        sums, n_acc, t0 = {}, 0, time.time()
        # Ctrl-C finishes the current step, saves, then stops: the checkpoint is always a step boundary.
        interrupted = []
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
        try:
            for batch in loader:
                lr = lr_at(self.step, cfg)
                for g in self.opt.param_groups:
                    g["lr"] = lr
                gen = torch.Generator().manual_seed(_mix(cfg.seed, self.step, 2))
                batch = to_device(batch, self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
                    out = self.net(batch, gen=gen)
                self.opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                self.opt.step()
                for k, v in out.items():  # summed on the device: no host sync until a log step
                    sums[k] = sums.get(k, 0.0) + v.detach().float()
                n_acc += 1
                self.step += 1
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    means = torch.stack([(sums[k] / n_acc).to(self.device) for k in sorted(sums)])
                    if self.world > 1:
                        dist.all_reduce(means)
                        means /= self.world
                    dt = time.time() - t0
                    rec = {"step": self.step, "lr": lr, **dict(zip(sorted(sums), means.tolist())),
                           "samples_per_s": n_acc * cfg.batch_size / max(dt, 1e-9)}
                    self._log(rec)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{lr:.2e}", sps=f"{rec['samples_per_s']:.1f}")
                    sums, n_acc, t0 = {}, 0, time.time()
                if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps or interrupted:
                    self.save()
                bar.update(1)
                if interrupted:
                    raise KeyboardInterrupt(f"interrupted at step {self.step}; checkpoint saved in {self.out}")
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if self.world > 1:
            dist.barrier()
        return self.history

"""Files this project writes and reads back: checkpoints, results, their hashes.

Every write is atomic (a temporary file, then a rename), so a file is whole or absent however a
run ends; every output folder is checked for write access before any compute; every file that
cannot be read is an error naming it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch


def ensure_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Raise a ``RuntimeError`` naming ``folder`` unless files can be created in it (or, when it
    does not exist yet, in its nearest existing parent, where it will be made). Called before any
    compute, so that a read-only ``--out`` or ``$STT_CACHE`` fails at once, not after an hour.
    Checked with the process's own permissions (``os.access``), then by creating and dropping an
    unnamed temporary file there (read-only mounts, ACLs)."""
    import tempfile

    folder = Path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RuntimeError(f"{what} {folder}: {probe} is not a folder")
    writable = os.access(probe, os.W_OK | os.X_OK)
    if writable:
        try:
            with tempfile.TemporaryFile(dir=probe):
                pass
        except OSError:
            writable = False
    if not writable:
        where = "" if probe == folder else f" (it would be created in {probe}, which is not writable)"
        raise RuntimeError(f"{what} {folder} is not writable{where}; choose another folder or change its permissions")
    return folder


def _replace_with(path: Path, write, tmp_suffix: str = ".tmp") -> None:
    """``write(tmp)`` a temporary file beside ``path`` (its name, this process's id and
    ``tmp_suffix``: two processes never share one), then rename it onto ``path``."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}{tmp_suffix}")
    write(tmp)
    os.replace(tmp, path)


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` atomically; a file that already holds it is left untouched, so re-reading
    finished results needs no write access."""
    path, data = Path(path), text.encode()
    if path.is_file() and path.read_bytes() == data:
        return
    ensure_writable(path.parent)
    _replace_with(path, lambda tmp: tmp.write_bytes(data))


def atomic_save(obj, path: str | Path) -> None:
    """``torch.save`` atomically: a checkpoint is whole or absent."""
    _replace_with(Path(path), lambda tmp: torch.save(obj, tmp))


def atomic_save_npz(path: str | Path, **arrays) -> None:
    """``np.savez`` atomically (the per-sequence resume points of the evaluations)."""
    _replace_with(Path(path), lambda tmp: np.savez(tmp, **arrays), ".tmp.npz")  # savez wants .npz


def atomic_save_npy(path: str | Path, array) -> None:
    """``np.save`` atomically (the decoded-frame cache, :class:`stt.video.VideoFrames`)."""
    _replace_with(Path(path), lambda tmp: np.save(tmp, array), ".tmp.npy")  # save wants .npy


def load_checkpoint(path: str | Path) -> dict:
    """``torch.load(weights_only=True)`` on the CPU, with an error that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or not a torch file
        raise ValueError(f"{path}: cannot be read as a PyTorch checkpoint ({exc})") from exc


def file_digest(path: str | Path, n: int = 16) -> str:
    """The first ``n`` hex digits of the file's SHA-256: what identifies a checkpoint's weights
    in cached results (its path may move)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:n]

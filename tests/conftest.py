"""Shared fixtures: the real data beside the project (skipped when absent) and small data
the tests make themselves."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path | None:
    """``$STT_DATA`` if set, else ``../shared/data`` beside the project, if it exists."""
    for cand in (os.environ.get("STT_DATA"), REPO.parent / "shared" / "data"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def davis2016_root() -> Path:
    root = shared_data()
    if root is None or not (root / "DAVIS2016" / "JPEGImages").is_dir():
        pytest.skip("real DAVIS-2016 data not found (set STT_DATA or place ../shared/data)")
    return root / "DAVIS2016"


@pytest.fixture(scope="session")
def shared_root() -> Path:
    root = shared_data()
    if root is None:
        pytest.skip("real data not found (set STT_DATA or place ../shared/data)")
    return root


def write_davis(root: Path, sequences: dict, year: str = "2017", binary: bool = False) -> Path:
    """Write a tiny DAVIS-layout dataset. ``sequences``: name -> (frames T x H x W x 3, masks T x H x W)."""
    from stt.viz import davis_palette

    for name, (frames, masks) in sequences.items():
        (root / "JPEGImages" / "480p" / name).mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / "480p" / name).mkdir(parents=True, exist_ok=True)
        for t, (f, m) in enumerate(zip(frames, masks)):
            Image.fromarray(f).save(root / "JPEGImages" / "480p" / name / f"{t:05d}.jpg", quality=95)
            if binary:
                Image.fromarray((m > 0).astype(np.uint8) * 255, mode="L").save(
                    root / "Annotations" / "480p" / name / f"{t:05d}.png")
            else:
                im = Image.fromarray(m.astype(np.uint8), mode="P")
                im.putpalette(davis_palette())
                im.save(root / "Annotations" / "480p" / name / f"{t:05d}.png")
    (root / "ImageSets" / year).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / year / "val.txt").write_text("\n".join(sequences) + "\n")
    return root


@pytest.fixture(scope="session")
def tiny_synthetic(tmp_path_factory) -> Path:
    """Two short synthetic sequences (one to three objects) in the DAVIS-2017 layout."""
    from stt.synthetic import make_synthetic_davis

    return make_synthetic_davis(tmp_path_factory.mktemp("synth"), n_sequences=2, n_frames=6, size=(64, 96), seed=3)

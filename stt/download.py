"""Dataset downloads for users with internet: resumable, verified, extracted in place.

``stt download davis2017`` fetches the official DAVIS-2017 train+val 480p archive. The DAVIS
site publishes no checksum, so integrity is checked three ways: the size the server announces,
every member's CRC inside the zip, and the expected layout after extraction. The SHA-256 of
the archive is printed and stored beside it (``<archive>.sha256``) so later runs, and other
machines, can compare against it (``expected_sha256=``).
"""
from __future__ import annotations

import hashlib
import shutil
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .datasets import data_root


@dataclass(frozen=True)
class Archive:
    url: str
    filename: str
    folder: str  # what the archive extracts to
    layout: tuple[str, ...]  # paths that must exist after extraction
    sha256: str | None = None  # None: the publisher gives none (see module docstring)


ARCHIVES = {
    "davis2017": Archive(
        url="https://data.vision.ee.ethz.ch/csergi/share/davis/DAVIS-2017-trainval-480p.zip",
        filename="DAVIS-2017-trainval-480p.zip",
        folder="DAVIS",
        layout=("JPEGImages/480p", "Annotations/480p", "ImageSets/2017/val.txt"),
    ),
}


def sha256sum(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: Path, chunk: int = 1 << 20, progress: bool = True) -> Path:
    """Download ``url`` to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request.

    The file appears under its final name only once complete and of the announced size.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    with urllib.request.urlopen(req) as resp:
        status = getattr(resp, "status", 200)
        if have and status != 206:  # server ignored the range: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        mode = "ab" if have else "wb"
        with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                        desc=dest.name, disable=not progress) as bar:
            while True:
                buf = resp.read(chunk)
                if not buf:
                    break
                f.write(buf)
                bar.update(len(buf))
    size = part.stat().st_size
    if total is not None and size != total:
        raise IOError(f"{part}: got {size} bytes, the server announced {total}; run again to resume")
    part.replace(dest)
    return dest


def verify_archive(path: Path, expected_sha256: str | None = None) -> str:
    """Check a zip archive: optional SHA-256, then every member's CRC. Returns the SHA-256."""
    path = Path(path)
    digest = sha256sum(path)
    if expected_sha256 and digest != expected_sha256:
        raise ValueError(f"{path}: SHA-256 is {digest}, expected {expected_sha256}; delete it and download again")
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path}: not a valid zip archive ({exc}); delete it and download again") from exc
    if bad is not None:
        raise ValueError(f"{path}: member {bad!r} fails its CRC check; delete the archive and download again")
    return digest


def extract_archive(path: Path, root: Path, archive: Archive) -> Path:
    """Extract into ``root`` (via a temporary folder, so a failure leaves nothing half-made) and
    check the expected layout. Returns ``root / archive.folder``."""
    root = Path(root)
    target = root / archive.folder
    tmp = root / (archive.folder + ".extracting")
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(path) as z:
        for member in z.namelist():  # refuse paths that escape the folder
            if member.startswith("/") or ".." in Path(member).parts:
                raise ValueError(f"{path}: unsafe member path {member!r}")
        z.extractall(tmp)
    inner = tmp / archive.folder if (tmp / archive.folder).is_dir() else tmp
    missing = [p for p in archive.layout if not (inner / p).exists()]
    if missing:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ValueError(f"{path}: extracted archive lacks {missing} (expected layout under {archive.folder}/)")
    if target.exists():
        shutil.rmtree(target)
    inner.replace(target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target


def download_dataset(name: str, root: str | Path | None = None, expected_sha256: str | None = None,
                     url: str | None = None) -> Path:
    """Download (resuming), verify and extract dataset ``name`` under ``root`` (default ``$STT_DATA``)."""
    if name not in ARCHIVES:
        raise ValueError(f"unknown dataset {name!r}: expected one of {sorted(ARCHIVES)}")
    a = ARCHIVES[name]
    root = Path(root).expanduser() if root else data_root()
    target = root / a.folder
    if all((target / p).exists() for p in a.layout):
        return target
    archive = root / a.filename
    if not archive.is_file():
        fetch(url or a.url, archive)
    digest = verify_archive(archive, expected_sha256 or a.sha256)
    (root / (a.filename + ".sha256")).write_text(f"{digest}  {a.filename}\n")
    print(f"{archive}: sha256 {digest}")
    return extract_archive(archive, root, a)

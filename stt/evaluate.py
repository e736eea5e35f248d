"""Task pipelines: frames -> features -> propagated labels -> metrics, resumable per sequence.

``evaluate_davis`` is what ``stt evaluate davis`` runs. Its output folder holds::

    settings.json                        everything that determines the numbers
    predictions/<seq>/%05d.png           indexed PNGs (davis2017-evaluation reads this folder)
    sequences/<seq>.npz                  per-frame J and F of each object (the resume points)
    global_results-val.csv               official names and columns
    per-sequence_results-val.csv
    timing.json                          seconds and frames per sequence; "last_run": frames/s

A run that is interrupted resumes at the first sequence without a ``sequences/*.npz``; a run
with different settings refuses to touch the folder, and so does one that finds results but no
``settings.json`` (their settings are unknown); ``overwrite=True`` starts it afresh. The output
folder is checked for write access before any compute; a finished evaluation is re-read without
writing anything (unchanged files are not rewritten), so it can live in a read-only folder.
A sequence whose first mask has no object is left out of the means with a warning, and listed
in ``settings.json`` under ``dataset.left_out``.

The accelerator never waits for the host: the next sequence's frames are decoded in a thread
while this one propagates, features come in large batches, predictions reach the host one
frame late (asynchronous copies), and PNG writing and metrics run in a thread pool.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .checkpoint import atomic_save_npz, ensure_writable, load_checkpoint, write_text
from .datasets import DAVIS, cache_dir, data_path, find_davis, read_mask, resize_short_side, to_tensor
from .device import resolve_device
from .features import build_feature_model
from .metrics import evaluate_davis_sequence, summarize_davis, write_davis_csvs
from .methods import own_protocols
from .propagation import (
    PropagationConfig,
    downsample_labels,
    propagate_recursive,
    propagate_video,
    upsample_predictions,
)
from .viz import davis_palette

def resolve_davis_root(data: str | Path | None) -> tuple[Path, bool]:
    """``"synthetic"`` -> the generated stand-in (made on first use); else a real DAVIS folder.

    Returns (folder, is_synthetic)."""
    if str(data) == "synthetic":
        from .synthetic import make_synthetic_davis

        root = cache_dir() / "synthetic-davis"
        if not (root / "SETTINGS").is_file():  # not generated yet
            ensure_writable(root, "cache folder ($STT_CACHE)")
        return make_synthetic_davis(root), True
    return find_davis(data), False


def davis_or_synthetic(data: str | Path | None = None) -> tuple[Path, bool]:
    """A real DAVIS folder if one is found under ``data`` (relative paths are under ``$STT_DATA``;
    empty: ``$STT_DATA`` itself), else the synthetic stand-in, saying so. Returns (folder, is_synthetic)."""
    if str(data) == "synthetic":
        return resolve_davis_root("synthetic")
    try:
        return find_davis(data_path(data)), False
    except FileNotFoundError as exc:
        print(f"{exc}\n-> using the procedural synthetic DAVIS stand-in instead "
              "(numbers on it only show that the pipeline runs)")
        return resolve_davis_root("synthetic")


@torch.no_grad()
def iter_features(model, frames: np.ndarray, short_side: int | None, stride: int, device,
                  batch: int | None = None, square: int | None = None) -> Iterator[torch.Tensor]:
    """Yield the C x h x w feature map of each frame (T x H x W x 3 uint8), ``batch`` at a time
    (default 4 on CPU, to bound memory; 32 on an accelerator). Frames are resized on ``device``
    to ``short_side`` (DAVIS), or to ``square`` x ``square`` (JHMDB, VIP)."""
    batch = batch or (4 if torch.device(device).type == "cpu" else 32)
    for s in range(0, len(frames), batch):
        x = to_tensor(frames[s : s + batch], device)
        if square:
            x = torch.nn.functional.interpolate(x, size=(square, square), mode="bilinear", align_corners=False,
                                                antialias=True).clamp_(0, 1)
        else:
            x = resize_short_side(x, short_side, stride)
        yield from model(x)


def model_identity(desc: dict) -> dict:
    """What identifies a model's weights in cached results: the file digest of a checkpoint (not its
    path, so a moved checkpoint is still recognised), else its name and settings."""
    return {k: v for k, v in desc.items() if k != "name" or "file" not in desc}


def _write_png(path: Path, ids: np.ndarray, palette) -> None:
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette(palette)
    im.save(path)


def _check_settings(out: Path, settings: dict, overwrite: bool, subdirs=("predictions", "sequences")) -> None:
    """Make ``out`` a folder of results computed with ``settings``. Results of other settings are
    refused, and so are results without a ``settings.json`` (unknown settings); ``overwrite``
    discards them. Nothing is written when ``out`` already holds these settings."""
    path = out / "settings.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    if old == settings:
        return
    if not overwrite:
        if old is not None:
            diff = {k: (old.get(k), settings.get(k)) for k in set(old) | set(settings) if old.get(k) != settings.get(k)}
            raise RuntimeError(
                f"{out} holds results computed with other settings {diff} (old, new); "
                "use another --out, or --overwrite to discard them"
            )
        found = [f"{sub}/" for sub in subdirs if (out / sub).is_dir() and any((out / sub).iterdir())]
        if found:
            raise RuntimeError(
                f"{out} holds results ({', '.join(found)}) but no settings.json: the settings they were "
                "computed with are unknown, so they are not reused; use another --out, or --overwrite to discard them"
            )
    ensure_writable(out)
    for sub in subdirs:
        shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(settings, indent=2, sort_keys=True))


def _feature_model(model: str, stride: int | None, input_space: str | None, device) -> tuple:
    """The evaluators' :func:`~stt.encoder.build_feature_model`: ``stride`` 8 (default) or 4 (the
    ``stride4`` trunk variant, STT's "stride 4" rows), ``input_space`` None for the one the
    checkpoint was trained on. Returns (model on ``device``, description)."""
    if stride not in (None, 8, 4):
        raise ValueError(f"stride must be 8 or 4, got {stride}")
    net, desc = build_feature_model(model, "stride4" if stride == 4 else "stride8", input_space=input_space)
    if stride is not None and net.stride != stride:
        raise ValueError(f"{model}: its features have stride {net.stride}; stride {stride} does not apply to it")
    return net.to(device), desc


def _to_host_lagged(maps: Iterator[torch.Tensor]) -> Iterator[np.ndarray]:
    """Device tensors -> numpy arrays, in order. On CUDA each copy starts asynchronously and is
    waited for only once the next tensor has been queued, so the GPU does not idle while the
    host takes a result; elsewhere each array is yielded at once."""
    pending = None
    for m in maps:
        if m.device.type != "cuda":
            yield m.cpu().numpy()
            continue
        host = m.to("cpu", non_blocking=True)  # pinned memory, copied in stream order
        done = torch.cuda.Event()
        done.record()
        if pending is not None:
            pending[1].synchronize()
            yield pending[0].numpy()
        pending = (host, done)
    if pending is not None:
        pending[1].synchronize()
        yield pending[0].numpy()


def scaled_config(cfg: PropagationConfig, stride: int) -> PropagationConfig:
    """The protocol's radius is given in stride-8 cells; keep its extent in pixels at other strides."""
    return cfg if stride == 8 else dataclasses.replace(cfg, radius=cfg.radius * 8 / stride)


def predict_sequence(model, stride: int, frames: np.ndarray, first_ids: np.ndarray, n_objects: int,
                     short_side: int | None, cfg: PropagationConfig, device, own: dict | None = None,
                     square: int | None = None) -> Iterator[np.ndarray]:
    """Propagate the first frame's id map through ``frames``; yields id maps of frames 1..T-1.

    By the common protocol (SPEC section 5, ``cfg``), or, with ``own``, a method's own protocol
    of fixed settings (``radius``, ``hard``, ``first_label``, ``minmax``; CorrFlow's:
    :data:`~stt.propagation.CORRFLOW_PROTOCOL`): previous frame only, the model's own attention
    over ``radius``; ``cfg`` is not used."""
    first_mode = own["first_label"] if own else cfg.first_label
    minmax = own["minmax"] if own else cfg.minmax
    size = first_ids.shape
    feats = iter_features(model, frames, short_side, stride, device, square=square)
    first = next(feats)
    first_label = downsample_labels(torch.from_numpy(first_ids).to(device), n_objects + 1,
                                    first.shape[-2:], first_mode)

    def stream():
        yield first
        yield from feats

    with torch.no_grad():
        if own:
            preds = propagate_recursive(stream(), first_label, own["radius"], hard=own["hard"])
        else:
            preds = propagate_video(stream(), first_label, scaled_config(cfg, stride))
        # argmax over a channels-last copy: 7x faster than reducing over the strided dim 0
        yield from _to_host_lagged(upsample_predictions(soft, size, minmax).permute(1, 2, 0).contiguous()
                                   .argmax(-1).to(torch.uint8) for soft in preds)


def _result_file(out: Path, subdir: str, name: str) -> Path:
    return out / subdir / f"{name.replace('/', '__')}.npz"


def pending(out: Path, names, subdir: str) -> list[str]:
    """The names (sequences, clips, videos) without a resume point ``out/subdir/<name>.npz`` yet;
    when there are any, ``out/subdir`` is made (after checking it can be written)."""
    todo = [n for n in names if not _result_file(out, subdir, n).is_file()]
    if todo:
        ensure_writable(out)
        (out / subdir).mkdir(exist_ok=True)
    return todo


def run_resumable(out: Path, todo: list[str], subdir: str, load, process, done=None, window: int = 1) -> None:
    """The evaluation loop DAVIS, JHMDB and VIP share: for each name of ``todo``, ``load(name)``
    (in a thread, one name ahead: the next video decodes while this one propagates), then
    ``process(name, loaded)``, which returns the arrays to keep, or a ``Future`` of them (work
    finishing in a pool: at most ``window`` such names wait). The arrays are saved atomically as
    the name's resume point, then ``done(name)`` runs. An interrupted run loses no finished name."""
    waiting: list[tuple[str, Future]] = []

    def save(name, result):
        atomic_save_npz(_result_file(out, subdir, name), **(result.result() if isinstance(result, Future) else result))
        if done is not None:
            done(name)

    with ThreadPoolExecutor(1) as loader:
        loading = loader.submit(load, todo[0]) if todo else None
        for i, name in enumerate(todo):
            loaded = loading.result()
            if i + 1 < len(todo):
                loading = loader.submit(load, todo[i + 1])
            # errors surface here; at most `window` names wait for their results (bounded memory)
            while waiting and (waiting[0][1].done() or len(waiting) >= window):
                save(*waiting.pop(0))
            result = process(name, loaded)
            if isinstance(result, Future):
                waiting.append((name, result))
            else:
                save(name, result)
        for item in waiting:
            save(*item)


def load_results(out: Path, names, subdir: str) -> dict:
    """Every name's saved arrays (``np.load`` of its resume point)."""
    return {n: np.load(_result_file(out, subdir, n)) for n in names}


def evaluate_davis(
    data=None,
    model: str = "random-r18",
    out: str | Path = "runs/eval",
    short_side: int | None = None,
    sequences=None,
    year=None,
    cfg: PropagationConfig | None = None,
    device: str = "auto",
    overwrite: bool = False,
    progress: bool = True,
    protocol: str = "common",
    stride: int | None = None,
    input_space: str | None = None,
) -> dict:
    """Label propagation on DAVIS and the official metrics; see the module docstring.

    Args:
        data: DAVIS folder or data root (default ``$STT_DATA``), or ``"synthetic"``.
        model: ``identity``, ``lab``, ``random-r18``, ``random-r50`` or a checkpoint path (this
            project's, torchvision's, MoCo's, a released STT or CorrFlow file).
        short_side: resize frames to this short side (default: native, 480 on DAVIS 480p).
        sequences: subset of sequence names (default: the whole split).
        protocol: "common" (SPEC section 5, every model, ``cfg``) or a method's own protocol
            (:func:`stt.methods.own_protocols`; "corrflow": CorrFlow checkpoints,
            :data:`~stt.propagation.CORRFLOW_PROTOCOL`), which has no options: a ``cfg`` other
            than the default is refused rather than ignored.
        stride: 8 (default) or 4, the trunk's test-time variant (STT's "stride 4" rows); the
            radius, given in stride-8 cells, is rescaled.
        input_space: what the encoder is fed (``lab``, ``rgb-imagenet``, ``rgb``); default: the
            space the checkpoint was trained on (:func:`stt.encoder.trained_as`).
    Returns:
        the global results (``J&F-Mean``, ``J-Mean``, ...).
    """
    cfg = cfg or PropagationConfig()
    own_method = None
    if protocol != "common":
        own_method = own_protocols().get(protocol)
        if own_method is None:
            raise ValueError(f"unknown protocol {protocol!r}: expected one of {('common', *own_protocols())}")
        if cfg != PropagationConfig():
            default = PropagationConfig().as_dict()
            changed = {k: v for k, v in cfg.as_dict().items() if v != default[k]}
            raise ValueError(f"the {protocol} protocol has fixed settings (its method's); the common protocol's "
                             f"options {changed} do not apply to it: drop them, or use the common protocol")
    root, synthetic = resolve_davis_root(data)
    ds = DAVIS(root, year=year, sequences=sequences)
    dev = resolve_device(device)
    if model == "identity":
        net, desc, stride = None, {"name": "identity"}, 8
    else:
        net, desc = _feature_model(model, stride, input_space, dev)
        stride = net.stride
    own = None
    if own_method is not None:
        if desc.get("kind") != own_method.kind:
            raise ValueError(f"the {protocol} protocol needs a {own_method.title} checkpoint, got {model}")
        own = own_method.protocol_settings(load_checkpoint(model))
    if net is None:
        prop = None
    elif own is not None:
        prop = {"protocol": protocol, **own}
    else:
        prop = scaled_config(cfg, stride).as_dict()
    first_masks = {n: ds.sequence(n).masks[0] for n in ds.names}
    left_out = [n for n, mask in first_masks.items() if not read_mask(mask).any()]
    for name in left_out:
        warnings.warn(f"{name}: its first annotation {first_masks[name]} has no object, so there is nothing to "
                      "propagate; the sequence is left out of the means", stacklevel=2)
    names = [n for n in ds.names if n not in left_out]
    if not names:
        raise ValueError(f"the first annotation of every sequence ({', '.join(ds.names)}) under {ds.root} is "
                         "empty: no object to propagate or score")
    dataset = {"root": str(Path(root).resolve()), "year": ds.year, "split": ds.split, "sequences": names,
               "synthetic": synthetic}
    if left_out:  # recorded only when there are any, so folders written before this key still match
        dataset["left_out"] = sorted(left_out)
    settings = {
        "dataset": dataset,
        "model": model_identity(desc),
        "short_side": short_side,
        "propagation": prop,
    }
    out = Path(out)
    _check_settings(out, settings, overwrite)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one frame size per dataset: let cuDNN pick its fastest kernels
    timing_path = out / "timing.json"
    timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    timing_lock = threading.Lock()
    palette = davis_palette()
    todo = pending(out, names, "sequences")
    n_frames = {n: len(ds.sequence(n).frames) for n in todo}
    bar = tqdm(total=sum(n_frames.values()), unit="frame", disable=not progress,
               desc=f"{desc['name']} on DAVIS-{ds.year}")
    started: dict[str, float] = {}

    def metrics(gt, preds, pngs, n_obj):
        """After the sequence's PNGs: its metrics (what its resume point keeps)."""
        for png in pngs:
            png.result()
        res = evaluate_davis_sequence(gt, np.stack(preds), n_obj)
        return {"J": res["J"], "F": res["F"], "objects": res["objects"]}

    def timed(name):
        with timing_lock:
            timing[name] = {"seconds": round(time.time() - started[name], 3), "frames": n_frames[name]}
            write_text(timing_path, json.dumps(timing, indent=2))

    workers = max(1, min(4, (os.cpu_count() or 2) // 2))
    t_run = time.time()
    with ThreadPoolExecutor(workers) as writer:

        def process(name, loaded):
            frames, gt = loaded
            started[name] = time.time()
            bar.set_postfix_str(name)
            n_obj = int(gt[0].max())
            pred_dir = out / "predictions" / name
            pred_dir.mkdir(parents=True, exist_ok=True)
            stems = [p.stem for p in ds.sequence(name).frames]
            pngs = [writer.submit(_write_png, pred_dir / f"{stems[0]}.png", gt[0], palette)]
            bar.update(1)
            preds = [gt[0]]
            if net is None:
                it = (gt[0] for _ in range(len(frames) - 1))
            else:
                it = predict_sequence(net, stride, frames, gt[0], n_obj, short_side, cfg, dev, own)
            for stem, ids in zip(stems[1:], it):
                pngs.append(writer.submit(_write_png, pred_dir / f"{stem}.png", ids, palette))
                preds.append(ids)
                bar.update(1)
            return writer.submit(metrics, gt, preds, pngs, n_obj)

        run_resumable(out, todo, "sequences", ds.load, process, done=timed, window=workers + 1)
    bar.close()
    if todo:
        seconds, frames_done = time.time() - t_run, sum(n_frames.values())
        timing["last_run"] = {"seconds": round(seconds, 3), "frames": frames_done,
                              "frames_per_s": round(frames_done / seconds, 3)}
        write_text(timing_path, json.dumps(timing, indent=2))
        if progress:
            print(f"{frames_done} frames in {seconds:.1f} s: {frames_done / seconds:.2f} frames/s")
    per_seq = {n: {"J": z["J"], "F": z["F"], "objects": int(z["objects"])}
               for n, z in load_results(out, names, "sequences").items()}
    global_res, rows = summarize_davis(per_seq)
    write_davis_csvs(out, global_res, rows, ds.split)
    return global_res


def per_sequence_jf(folder: str | Path) -> dict[str, float]:
    """J&F of each sequence (the mean over its objects of (J + F) / 2) from an evaluation folder's
    ``per-sequence_results-val.csv``: the unit over which confidence intervals are drawn."""
    import csv

    path = Path(folder) / "per-sequence_results-val.csv"
    if not path.is_file():
        raise FileNotFoundError(f"no per-sequence results in {folder} (expected {path.name})")
    by_seq: dict[str, list[float]] = {}
    with open(path) as f:
        for r in csv.DictReader(f):
            by_seq.setdefault(r["Sequence"].rsplit("_", 1)[0], []).append((float(r["J-Mean"]) + float(r["F-Mean"])) / 2)
    return {s: float(np.mean(v)) for s, v in by_seq.items()}


# ---------------------------------------------------------------------------- JHMDB and VIP


def _square_task(ds, subdir: str, model, stride, input_space, device, cfg, out, overwrite, progress, dataset: dict,
                 **settings):
    """What JHMDB and VIP share before their loop: the feature model, the settings check of
    ``out`` (``dataset`` and ``settings`` beside the model's identity and the propagation), the
    names still to do and a progress bar over them. Returns (out, device, model, todo, bar)."""
    dev = resolve_device(device)
    net, desc = _feature_model(model, stride, input_space, dev)
    out = Path(out)
    _check_settings(out, {"dataset": {"root": str(ds.root.resolve()), **dataset}, **settings,
                          "model": model_identity(desc), "propagation": scaled_config(cfg, net.stride).as_dict()},
                    overwrite, subdirs=(subdir,))
    todo = pending(out, ds.names, subdir)
    bar = tqdm(total=len(todo), desc=f"{desc['name']} on {type(ds).__name__}", unit=subdir[:-1], disable=not progress)
    return out, dev, net, todo, bar


def evaluate_jhmdb(data=None, model: str = "random-r18", out: str | Path = "runs/eval/jhmdb", size: int = 320,
                   cfg: PropagationConfig | None = None, split: int = 1, sigma: float = 0.5, device: str = "auto",
                   overwrite: bool = False, progress: bool = True, stride: int | None = None,
                   input_space: str | None = None) -> dict:
    """Keypoint propagation on JHMDB and PCK (SPEC sections 5-6): frames resized to size x size,
    joints as Gaussian heatmaps on the feature grid + background, the common protocol (radius 5
    stride-8 cells by default), each joint read back as the weighted mean of its top-3 cells.
    ``stride`` and ``input_space`` as in :func:`evaluate_davis`.
    Writes ``clips/<action>__<clip>.npz`` (predicted joints; the resume points) and ``pck.json``."""
    from .datasets import JHMDB
    from .metrics import joints_visible, pck
    from .propagation import heatmaps_to_joints, joints_to_heatmaps

    cfg = cfg or PropagationConfig(radius=5)
    ds = JHMDB(data, split)
    out, dev, net, todo, bar = _square_task(ds, "clips", model, stride, input_space, device, cfg, out, overwrite,
                                            progress, {"split": split, "clips": ds.names}, size=size, sigma=sigma)

    def process(name, loaded):
        frames, joints = loaded
        size_hw = frames.shape[1:3]
        feats = iter_features(net, frames, None, net.stride, dev, square=size)
        first = next(feats)
        heat0 = joints_to_heatmaps(torch.from_numpy(joints[0]), size_hw, first.shape[-2:], sigma).to(dev)

        def stream():
            yield first
            yield from feats

        pred = [joints[0]]
        with torch.no_grad():
            for soft in propagate_video(stream(), heat0, scaled_config(cfg, net.stride)):
                pred.append(heatmaps_to_joints(soft[:-1].cpu(), size_hw).double().numpy())
        bar.update(1)
        return {"pred": np.stack(pred), "gt": joints, "size": np.array(size_hw)}

    run_resumable(out, todo, "clips", ds.load, process)
    bar.close()
    preds, gts, vis = [], [], []
    for z in load_results(out, ds.names, "clips").values():
        preds.append(z["pred"][1:])  # frame 0 is given, not scored
        gts.append(z["gt"][1:])
        vis.append(joints_visible(z["gt"][1:], tuple(z["size"])))
    res = pck(np.concatenate(preds), np.concatenate(gts), np.concatenate(vis))
    summary = {f"PCK@{a}": r["mean"] for a, r in res.items()}
    summary.update({f"PCK@{a} per joint": [None if np.isnan(v) else float(v) for v in r["per_joint"]]
                    for a, r in res.items()})
    summary["clips"], summary["frames_scored"] = len(ds.names), int(sum(len(p) for p in preds))
    write_text(out / "pck.json", json.dumps(summary, indent=2))
    return summary


def evaluate_vip(data=None, model: str = "random-r18", out: str | Path = "runs/eval/vip", size: int = 560,
                 cfg: PropagationConfig | None = None, split: str = "val", device: str = "auto",
                 overwrite: bool = False, progress: bool = True, stride: int | None = None,
                 input_space: str | None = None) -> dict:
    """Part propagation on VIP and mIoU (SPEC sections 5-6): frames resized to size x size, the
    first frame's 20-class map as one-hot labels, the common protocol (radius 16 stride-8 cells by
    default), predictions upsampled to the original size; one 20 x 20 confusion matrix over every
    annotated frame after the first of every video. ``stride`` and ``input_space`` as in
    :func:`evaluate_davis`. Writes ``videos/<v>.npz`` (confusion matrix; the resume points) and
    ``miou.json``."""
    from .datasets import VIP, VIP_CLASSES
    from .metrics import confusion_matrix, mean_iou

    cfg = cfg or PropagationConfig(radius=16)
    ds = VIP(data, split)
    out, dev, net, todo, bar = _square_task(ds, "videos", model, stride, input_space, device, cfg, out, overwrite,
                                            progress, {"split": split, "videos": ds.names}, size=size)

    def process(name, loaded):
        frames, labels = loaded
        first_ids = labels[0].astype(np.int64)
        first_ids[first_ids >= VIP_CLASSES] = 0  # ignore pixels start as background
        conf = np.zeros((VIP_CLASSES, VIP_CLASSES), np.int64)
        for lab, ids in zip(labels[1:], predict_sequence(net, net.stride, frames, first_ids, VIP_CLASSES - 1, None,
                                                          cfg, dev, square=size)):
            if lab is not None:
                conf += confusion_matrix(lab, ids, VIP_CLASSES)
        bar.update(1)
        return {"confusion": conf}

    run_resumable(out, todo, "videos", ds.load, process)
    bar.close()
    total = sum(z["confusion"] for z in load_results(out, ds.names, "videos").values())
    miou, per_class = mean_iou(total)
    summary = {"mIoU": miou, "IoU per class": [None if np.isnan(v) else float(v) for v in per_class],
               "videos": len(ds.names)}
    write_text(out / "miou.json", json.dumps(summary, indent=2))
    return summary

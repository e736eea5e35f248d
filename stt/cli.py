"""The ``stt`` command line: ``stt evaluate ...``, ``stt train <method> ...`` (its flags generated
from the method's settings, :mod:`stt.recipe`), ``stt color-clusters``, ``stt download ...``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .propagation import PropagationConfig


def _add_propagation_args(p: argparse.ArgumentParser, defaults: PropagationConfig) -> None:
    g = p.add_argument_group("label propagation (SPEC section 5)")
    g.add_argument("--topk", type=int, default=defaults.topk, help=f"affinities kept per query [{defaults.topk}]")
    g.add_argument("--radius", type=float, default=defaults.radius, help=f"window radius in feature cells [{defaults.radius}]")
    g.add_argument("--context", type=int, default=defaults.context, help=f"previous frames in the context [{defaults.context}]")
    g.add_argument("--temperature", type=float, default=defaults.temperature, help=f"softmax temperature [{defaults.temperature}]")
    g.add_argument("--window", choices=("square", "circle"), default=defaults.window, help="window shape [square: STT; circle: CRW]")
    g.add_argument("--no-radius-first-frame", action="store_true", help="no window on frame 0 (CRW) [windowed: STT]")
    g.add_argument("--first-label", choices=("nearest", "bilinear"), default=defaults.first_label,
                   help="frame-0 label downsampling [nearest: STT/VFS; bilinear: CRW]")
    g.add_argument("--no-minmax", action="store_true", help="skip per-channel min-max normalisation before argmax (CRW)")


def _add_encoder_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("encoder")
    g.add_argument("--stride", type=int, choices=(8, 4), default=None,
                   help="test-time trunk variant: 8, or 4 (STT's 'stride 4' rows; the radius is rescaled) [8]")
    g.add_argument("--input-space", choices=("lab", "rgb-imagenet", "rgb"), default=None,
                   help="what the encoder is fed [the checkpoint's: ours and released STT lab, "
                        "torchvision/MoCo rgb-imagenet, CorrFlow rgb]")


def _propagation_config(a) -> PropagationConfig:
    return PropagationConfig(
        topk=a.topk, radius=a.radius, context=a.context, temperature=a.temperature, window=a.window,
        radius_first_frame=not a.no_radius_first_frame, first_label=a.first_label, minmax=not a.no_minmax,
    )


def _print_table(res: dict, keys) -> None:
    print("  ".join(f"{k:>10}" for k in keys))
    print("  ".join(f"{res[k]:>10.3f}" for k in keys))


def cmd_evaluate_davis(a) -> int:
    from .evaluate import evaluate_davis

    res = evaluate_davis(
        data=a.data, model=a.model, out=a.out, short_side=a.short_side,
        sequences=a.sequences.split(",") if a.sequences else None, year=a.year,
        cfg=_propagation_config(a), device=a.device, overwrite=a.overwrite, protocol=a.protocol,
        stride=a.stride, input_space=a.input_space,
    )
    _print_table(res, ["J&F-Mean", "J-Mean", "F-Mean"])
    print(f"results: {a.out}/global_results-val.csv, {a.out}/per-sequence_results-val.csv")
    return 0


def cmd_train(a) -> int:
    from .methods import METHODS
    from .recipe import setting_overrides

    method = METHODS[a.recipe]
    ck = method.run(a.data, a.out, a.config, **method.cli_kwargs(a), **setting_overrides(a, method))
    print(f"checkpoint: {ck}")
    return 0


def cmd_color_clusters(a) -> int:
    from .checkpoint import atomic_save, ensure_writable
    from .corrflow import color_clusters
    from .datasets import cache_dir, data_root
    from .video import VideoFrames

    out = Path(a.out)
    ensure_writable(out.parent, "folder for --out")  # before decoding and k-means
    videos = VideoFrames(a.data or data_root() / "videos", cache_dir() / "frames", a.fps, 256, a.max_videos)
    c = color_clusters(videos, a.k, a.frames, a.seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(c, out)
    print(f"{a.k} (a, b) centroids from {a.frames} frames -> {a.out}")
    for i, (ca, cb) in enumerate(c.tolist()):
        print(f"  {i:2d}: a {ca:7.2f}  b {cb:7.2f}")
    return 0


def cmd_evaluate_jhmdb(a) -> int:
    from .evaluate import evaluate_jhmdb

    res = evaluate_jhmdb(a.data, a.model, a.out, a.size, _propagation_config(a), a.split, device=a.device,
                         overwrite=a.overwrite, stride=a.stride, input_space=a.input_space)
    print(f"PCK@0.1 {res['PCK@0.1']:.3f}   PCK@0.2 {res['PCK@0.2']:.3f}   ({res['clips']} clips, "
          f"{res['frames_scored']} frames)\nresults: {a.out}/pck.json")
    return 0


def cmd_evaluate_vip(a) -> int:
    from .evaluate import evaluate_vip

    res = evaluate_vip(a.data, a.model, a.out, a.size, _propagation_config(a), a.split, device=a.device,
                       overwrite=a.overwrite, stride=a.stride, input_space=a.input_space)
    print(f"mIoU {res['mIoU']:.3f}   ({res['videos']} videos)\nresults: {a.out}/miou.json")
    return 0


def cmd_download(a) -> int:
    from .download import download_dataset

    path = download_dataset(a.dataset, a.root)
    print(f"{a.dataset} ready at {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .methods import METHODS, own_protocols
    from .recipe import PRESETS, add_setting_flags

    p = argparse.ArgumentParser(prog="stt", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("evaluate", help="label propagation + official metrics")
    evs = ev.add_subparsers(dest="task", required=True)
    d = evs.add_parser("davis", help="DAVIS-2016/2017 semi-supervised J&F")
    d.add_argument("--data", default=None, help="DAVIS folder or data root [$STT_DATA], or 'synthetic'")
    d.add_argument("--model", default="random-r18",
                   help="identity | lab | random-r18 | random-r50 | a checkpoint: ours, torchvision, MoCo, "
                        "released STT (mmcv) or CorrFlow [random-r18]")
    d.add_argument("--out", required=True, help="output folder (predictions, CSVs; resumable)")
    d.add_argument("--short-side", type=int, default=None, help="resize frames to this short side [native]")
    d.add_argument("--sequences", default=None, help="comma-separated subset of sequences")
    d.add_argument("--year", default=None, choices=("2016", "2017"), help="ImageSets year [detected]")
    d.add_argument("--device", default="auto", help="cpu | cuda | auto [auto]")
    d.add_argument("--overwrite", action="store_true", help="discard results in --out computed with other settings")
    d.add_argument("--protocol", choices=("common", *own_protocols()), default="common",
                   help="common: SPEC section 5 for every model; corrflow: CorrFlow's own (previous frame, hard "
                        "labels, no min-max; the propagation options below do not apply)")
    _add_encoder_args(d)
    _add_propagation_args(d, PropagationConfig())
    d.set_defaults(func=cmd_evaluate_davis)

    for task, help_, folder, size, split, radius, func in (
            ("jhmdb", "JHMDB keypoint propagation, PCK@0.1 / @0.2", "JHMDB", 320, 1, 5, cmd_evaluate_jhmdb),
            ("vip", "VIP part propagation, mIoU over 20 classes", "VIP_Fine", 560, "val", 16, cmd_evaluate_vip)):
        t = evs.add_parser(task, help=help_)
        t.add_argument("--data", default=None, help=f"{folder} folder or data root [$STT_DATA]")
        t.add_argument("--model", default="random-r18", help="lab | random-r18 | random-r50 | checkpoint path")
        t.add_argument("--out", required=True)
        t.add_argument("--size", type=int, default=size, help=f"frames resized to size x size [{size}]")
        t.add_argument("--split", type=type(split), default=split, help=f"official split when split files exist [{split}]")
        t.add_argument("--device", default="auto")
        t.add_argument("--overwrite", action="store_true")
        _add_encoder_args(t)
        _add_propagation_args(t, PropagationConfig(radius=radius))
        t.set_defaults(func=func)

    tr = sub.add_parser("train", help="train a model (single process, or under torchrun for DDP)")
    trs = tr.add_subparsers(dest="recipe", required=True)
    for method in METHODS.values():
        t = trs.add_parser(method.name, help=method.summary, description=f"{method.summary}. Every setting has a "
                           "flag; a flag left out keeps the preset's value (stt/recipe.py).")
        t.add_argument("--data", default=None, help="videos / frame folders / image folder [$STT_DATA/videos]")
        t.add_argument("--out", required=True, help="output folder (checkpoint.pth, train_log.jsonl; resumes)")
        t.add_argument("--config", default="small", choices=PRESETS, help="preset [small]")
        for flags, kw in method.cli_args:
            t.add_argument(*flags, **kw)
        add_setting_flags(t, method)
        t.set_defaults(func=cmd_train)

    cc = sub.add_parser("color-clusters", help="k-means colour centroids (Lab a, b) of training frames")
    cc.add_argument("--data", default=None, help="videos [$STT_DATA/videos]")
    cc.add_argument("--out", required=True, help="output tensor file (k x 2)")
    cc.add_argument("--k", type=int, default=16)
    cc.add_argument("--frames", type=int, default=300)
    cc.add_argument("--fps", type=float, default=7.5)
    cc.add_argument("--max-videos", type=int, default=None)
    cc.add_argument("--seed", type=int, default=0)
    cc.set_defaults(func=cmd_color_clusters)

    dl = sub.add_parser("download", help="download and extract a dataset (needs internet)")
    dl.add_argument("dataset", choices=("davis2017",))
    dl.add_argument("--root", default=None, help="where to put it [$STT_DATA]")
    dl.set_defaults(func=cmd_download)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"stt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stt: interrupted; finished sequences are kept and the next run resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

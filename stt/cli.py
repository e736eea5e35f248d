"""The ``stt`` command line: ``stt evaluate ...``, ``stt download ...`` (and, later, ``stt train ...``)."""
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


def cmd_train_spatial(a) -> int:
    from .recipes import train_spatial

    ck = train_spatial(a.data, a.out, a.config, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                       image_size=a.image_size, queue_size=a.queue_size, arch=a.arch, device=a.device,
                       num_workers=a.workers, seed=a.seed, max_videos=a.max_videos, sync_bn=a.sync_bn or None)
    print(f"checkpoint: {ck}")
    return 0


def cmd_train_temporal(a) -> int:
    from .recipes import train_temporal

    keep = None if a.lcd_threshold == "none" else (float(a.lcd_threshold) if a.lcd_threshold else None)
    kw = dict(steps=a.steps, batch_size=a.batch_size, lr=a.lr, image_size=a.image_size, arch=a.arch, device=a.device,
              num_workers=a.workers, seed=a.seed, max_videos=a.max_videos, sync_bn=a.sync_bn or None)
    if a.temporal_only:
        kw.update(gcd=False)
    if a.no_pyramid:
        kw.update(pyramid=False)
    if a.no_lcd:
        kw.update(lcd=False)
    if a.no_gcd:
        kw.update(gcd=False)
    if a.lcd_threshold:
        kw["lcd_keep"] = keep
    for name in ("teacher_variant", "teacher_input", "lcd_form", "lcd_sort"):
        if getattr(a, name):
            kw["lcd_threshold" if name == "lcd_sort" else name] = getattr(a, name)
    init = None if a.temporal_only else a.init
    ck = train_temporal(a.data, a.out, a.config, init=init, teacher=a.teacher, **kw)
    print(f"checkpoint: {ck}")
    return 0


def cmd_train_corrflow(a) -> int:
    from .recipes import train_corrflow

    kw = dict(steps=a.steps, batch_size=a.batch_size, lr=a.lr, image_size=a.image_size, device=a.device,
              num_workers=a.workers, seed=a.seed, max_videos=a.max_videos, sync_bn=a.sync_bn or None)
    if a.no_bottleneck:
        kw["bottleneck"] = False
    if a.no_scheduled_sampling:
        kw["scheduled_sampling"] = False
    if a.no_cycles:
        kw["cycles"] = False
    ck = train_corrflow(a.data, a.out, a.config, centroids=a.centroids, **kw)
    print(f"checkpoint: {ck}")
    return 0


def cmd_color_clusters(a) -> int:
    from .checkpoint import ensure_writable
    from .datasets import cache_dir, data_root
    from .video import VideoFrames
    from .recipes import color_clusters
    from .train import atomic_save

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


def _add_train_args(t: argparse.ArgumentParser) -> None:
    t.add_argument("--data", default=None, help="videos / frame folders / image folder [$STT_DATA/videos]")
    t.add_argument("--out", required=True, help="output folder (checkpoint.pth, train_log.jsonl; resumes)")
    t.add_argument("--config", default="small", choices=("smoke", "small", "gpu", "full"), help="preset [small]")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None, help="global batch (split across torchrun processes)")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--arch", default=None, choices=("resnet18", "resnet50"))
    t.add_argument("--device", default=None, help="cpu | cuda | auto")
    t.add_argument("--workers", type=int, default=None, help="data-loading processes")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--max-videos", type=int, default=None, help="use only the first N videos")
    t.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under torchrun")


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
    d.add_argument("--protocol", choices=("common", "corrflow"), default="common",
                   help="common: SPEC section 5 for every model; corrflow: CorrFlow's own (previous frame, hard "
                        "labels, no min-max; the propagation options below do not apply)")
    _add_encoder_args(d)
    _add_propagation_args(d, PropagationConfig())
    d.set_defaults(func=cmd_evaluate_davis)

    j = evs.add_parser("jhmdb", help="JHMDB keypoint propagation, PCK@0.1 / @0.2")
    j.add_argument("--data", default=None, help="JHMDB folder or data root [$STT_DATA]")
    j.add_argument("--model", default="random-r18", help="lab | random-r18 | random-r50 | checkpoint path")
    j.add_argument("--out", required=True)
    j.add_argument("--size", type=int, default=320, help="frames resized to size x size [320]")
    j.add_argument("--split", type=int, default=1, help="official split number when split files exist [1]")
    j.add_argument("--device", default="auto")
    j.add_argument("--overwrite", action="store_true")
    _add_encoder_args(j)
    _add_propagation_args(j, PropagationConfig(radius=5))
    j.set_defaults(func=cmd_evaluate_jhmdb)

    v = evs.add_parser("vip", help="VIP part propagation, mIoU over 20 classes")
    v.add_argument("--data", default=None, help="VIP_Fine folder or data root [$STT_DATA]")
    v.add_argument("--model", default="random-r18", help="lab | random-r18 | random-r50 | checkpoint path")
    v.add_argument("--out", required=True)
    v.add_argument("--size", type=int, default=560, help="frames resized to size x size [560]")
    v.add_argument("--split", default="val")
    v.add_argument("--device", default="auto")
    v.add_argument("--overwrite", action="store_true")
    _add_encoder_args(v)
    _add_propagation_args(v, PropagationConfig(radius=16))
    v.set_defaults(func=cmd_evaluate_vip)

    tr = sub.add_parser("train", help="train a model (single process, or under torchrun for DDP)")
    trs = tr.add_subparsers(dest="recipe", required=True)
    sp = trs.add_parser("spatial", help="STT step 1: MoCo v2 on still images")
    _add_train_args(sp)
    sp.add_argument("--image-size", type=int, default=None)
    sp.add_argument("--queue-size", type=int, default=None)
    sp.set_defaults(func=cmd_train_spatial)

    tp = trs.add_parser("temporal", help="STT step 2: reconstruction + GCD + LCD on video frame pairs")
    _add_train_args(tp)
    tp.add_argument("--init", default=None, help="step-1 checkpoint to start from (omit: random init)")
    tp.add_argument("--teacher", default=None, help="step-1 checkpoint, the frozen GCD teacher")
    tp.add_argument("--image-size", type=int, default=None)
    tp.add_argument("--temporal-only", action="store_true", help="ablation: no step-1 init, no GCD")
    tp.add_argument("--no-pyramid", action="store_true", help="ablation: reconstruct at /4 only")
    tp.add_argument("--no-lcd", action="store_true", help="ablation: no local correlation distillation")
    tp.add_argument("--no-gcd", action="store_true", help="ablation: no global correlation distillation")
    tp.add_argument("--lcd-threshold", default=None, choices=("0.3", "0.5", "0.7", "none"),
                    help="LCD uncertainty threshold T [0.7]")
    tp.add_argument("--teacher-variant", default=None, choices=("checkpoint", "imagenet", "train"),
                    help="how the GCD teacher runs [checkpoint: as step 1 trained it; train: the student's trunk]")
    tp.add_argument("--teacher-input", default=None, choices=("checkpoint", "lab", "rgb-imagenet", "rgb"),
                    help="the GCD teacher's input space [checkpoint: the one it was trained on]")
    tp.add_argument("--lcd-form", default=None, choices=("official", "windowed"),
                    help="LCD normaliser and uncertainty [official; windowed: this project's earlier form]")
    tp.add_argument("--lcd-sort", default=None, choices=("flattened", "per-column"),
                    help="LCD threshold over the flattened map [flattened] or the release's per-column bug")
    tp.set_defaults(func=cmd_train_temporal)

    cf = trs.add_parser("corrflow", help="CorrFlow: colour pointer with bottleneck, scheduled sampling, cycles")
    _add_train_args(cf)
    cf.add_argument("--image-size", type=int, default=None)
    cf.add_argument("--centroids", default=None,
                    help="colour centroids from `stt color-clusters` (a K x 2 tensor file, checked first) [computed]")
    cf.add_argument("--no-bottleneck", action="store_true", help="ablation: no channel dropout / jitter")
    cf.add_argument("--no-scheduled-sampling", action="store_true", help="ablation: always frame 1's ground truth")
    cf.add_argument("--no-cycles", action="store_true", help="ablation: no forward-backward cycles")
    cf.set_defaults(func=cmd_train_corrflow)

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

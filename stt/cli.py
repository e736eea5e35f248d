"""The ``stt`` command line: ``stt evaluate ...``, ``stt download ...`` (and, later, ``stt train ...``)."""
from __future__ import annotations

import argparse
import sys

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
        cfg=_propagation_config(a), device=a.device, overwrite=a.overwrite,
    )
    _print_table(res, ["J&F-Mean", "J-Mean", "F-Mean"])
    print(f"results: {a.out}/global_results-val.csv, {a.out}/per-sequence_results-val.csv")
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
                   help="identity | lab | random-r18 | random-r50 | path to a checkpoint [random-r18]")
    d.add_argument("--out", required=True, help="output folder (predictions, CSVs; resumable)")
    d.add_argument("--short-side", type=int, default=None, help="resize frames to this short side [native]")
    d.add_argument("--sequences", default=None, help="comma-separated subset of sequences")
    d.add_argument("--year", default=None, choices=("2016", "2017"), help="ImageSets year [detected]")
    d.add_argument("--device", default="auto", help="cpu | cuda | auto [auto]")
    d.add_argument("--overwrite", action="store_true", help="discard results in --out computed with other settings")
    _add_propagation_args(d, PropagationConfig())
    d.set_defaults(func=cmd_evaluate_davis)

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

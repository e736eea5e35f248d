"""How a method is trained: its settings, its presets, its data. Shared by every method.

A *method* (MoCo v2 = STT step 1, STT step 2, CorrFlow) is one module (:mod:`stt.moco`,
:mod:`stt.temporal`, :mod:`stt.corrflow`) holding its model, its :class:`Method` and the function
that trains it; :mod:`stt.methods` lists them. A method's settings are three dataclasses, each
setting written in one place:

* ``model``: made from the model's constructor by :func:`constructor_settings`: its fields are
  the constructor's keywords with their defaults, so ``Model(**asdict(settings.model))`` builds it;
* ``data``: what the training views are made of (sizes, crops, frame rate, ...);
* ``train``: :class:`stt.train.TrainConfig` (optimiser, schedule, steps, ...), from the method's
  own training defaults.

A preset (``smoke``: CI seconds; ``small``: a laptop CPU; ``gpu``: one GPU, minutes; ``full``: the
papers) overrides fields of any of the three by name, and a run's own overrides come last
(:meth:`Method.settings`). ``stt train <method>`` has one flag per field, generated with its
type (:func:`add_setting_flags`). The command line and the notebooks call the same training
functions, so a notebook run and a shell run are the same run.
"""
from __future__ import annotations

import argparse
import inspect
import types
import typing
from dataclasses import asdict, dataclass, field, fields, make_dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from .datasets import cache_dir, data_root
from .device import resolve_device
from .train import CHECKPOINT, TrainConfig, Trainer

PRESETS = ("smoke", "small", "gpu", "full")


def constructor_settings(cls: type, skip=()) -> type:
    """A dataclass of ``cls``'s constructor keywords (all but ``skip``, which are not settings:
    weights, tensors), with the constructor's defaults and annotations: the settings of a model
    written once, in its signature."""
    hints = typing.get_type_hints(cls.__init__)
    specs = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.name in skip:
            continue
        if p.default is inspect.Parameter.empty:
            raise TypeError(f"{cls.__name__}({p.name}) has no default: a setting needs one (or list it in skip)")
        specs.append((p.name, hints.get(p.name, type(p.default)), field(default=p.default)))
    return make_dataclass(f"{cls.__name__}Settings", specs)


def _check_type(name: str, value, hint) -> None:
    """Raise a ``ValueError`` naming the setting unless ``value`` fits its annotation (plain
    types, ``X | None``, ``Literal``, tuples of numbers)."""
    if _fits(value, hint):
        return
    raise ValueError(f"setting {name}={value!r} ({type(value).__name__}) does not fit its type {_type_name(hint)}")


def _fits(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is tuple or hint is tuple:
        return isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint) if isinstance(hint, type) else True


def _type_name(hint) -> str:
    if typing.get_origin(hint) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(hint))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint))
    return "None" if hint is type(None) else getattr(hint, "__name__", str(hint))


@dataclass
class Settings:
    """The resolved settings of one training run: ``model``, ``data``, ``train`` (see the module
    docstring), ``overridden``, the fields the caller set (a preset's values are not in it), and
    ``defaults``, every setting's value before any preset (what a checkpoint that does not record
    a setting ran with)."""

    model: Any
    data: Any
    train: TrainConfig
    overridden: frozenset = frozenset()
    defaults: dict = field(default_factory=dict)

    def flat(self) -> dict:
        """Every setting by name (the three groups' field names never collide)."""
        return {**{k: v for k, v in asdict(self.train).items() if k != "extra"}, **asdict(self.data),
                **asdict(self.model)}

    def __getitem__(self, name: str):
        return self.flat()[name]

    def train_config(self, **recorded) -> TrainConfig:
        """The :class:`TrainConfig` of the run, its ``extra`` the model and data settings (and
        ``recorded``, e.g. the step-1 checkpoints): what the checkpoint keeps and resume compares."""
        extra = {k: (str(v) if isinstance(v, Path) else v) for k, v in {**asdict(self.data), **asdict(self.model)}.items()}
        return replace(self.train, extra={**extra, **recorded})

    def fit(self, model, dataset, out, meta: dict, progress: bool = True, **recorded) -> Path:
        """Train ``model`` on ``dataset`` into ``out`` with these settings (:class:`stt.train.Trainer`:
        resumes a run of the same settings, refuses another); returns the checkpoint path."""
        Trainer(model, dataset, self.train_config(**recorded), out, meta=meta, progress=progress,
                defaults=self.defaults).fit()
        return Path(out) / CHECKPOINT


@dataclass(frozen=True)
class Method:
    """One self-supervised method: its settings, presets, training function and what evaluation
    needs of its checkpoints.

    Args:
        name: ``stt train <name>`` and ``meta["recipe"]`` of its checkpoints.
        kind: ``meta["kind"]`` of its checkpoints (written by the model's ``checkpoint_meta``).
        title: what people call it ("CorrFlow"); summary: one line for ``--help``.
        model, data: the settings dataclasses (fields: the model's constructor keywords; the data's).
        train: the method's training defaults, before any preset.
        presets: ``{preset: {field: value}}``, overrides of the three groups.
        run: the training function, ``run(data, out, config, progress=..., **overrides) -> checkpoint``.
        auto: fields a preset may set to ``"auto"`` (resolved from the data by ``run``).
        cli_args: extra ``stt train <name>`` arguments as ``(flags, add_argument keywords)``;
            ``cli_kwargs(args)`` turns them into keyword arguments of ``run``.
        features: ``features(checkpoint, source, input_space) -> (feature model, description)`` for
            label propagation; None: the checkpoint's ResNet trunk (:func:`stt.features.build_feature_model`).
        formats: released checkpoint formats (:func:`stt.encoder.checkpoint_format`) that are this method's.
        protocol: the name of the method's own label-propagation protocol, if it has one;
            ``protocol_settings(checkpoint)`` gives its fixed settings.
    """

    name: str
    kind: str
    title: str
    summary: str
    model: type
    data: type
    train: TrainConfig
    presets: dict
    run: Callable
    auto: tuple = ()
    cli_args: tuple = ()
    cli_kwargs: Callable = lambda args: {}  # noqa: E731
    features: Callable | None = None
    formats: tuple = ()
    protocol: str | None = None
    protocol_settings: Callable | None = None

    def __post_init__(self):
        groups = [{f.name for f in fields(cls)} for cls in (self.model, self.data, TrainConfig)]
        clash = (groups[0] & groups[1]) | (groups[0] & groups[2]) | (groups[1] & groups[2])
        if clash:
            raise TypeError(f"method {self.name}: settings {sorted(clash)} are in two groups; a name must say one thing")
        if set(self.presets) != set(PRESETS):
            raise TypeError(f"method {self.name}: presets {sorted(self.presets)}; a method has the presets {PRESETS}")

    def hints(self) -> dict:
        """Field name -> annotation, over the three groups."""
        out = {}
        for cls in (TrainConfig, self.data, self.model):
            h = typing.get_type_hints(cls)
            out.update({f.name: h[f.name] for f in fields(cls) if f.name != "extra"})
        return out

    def defaults(self) -> Settings:
        """The method's settings before any preset."""
        return Settings(self.model(), self.data(), self.train)

    def settings(self, config: str = "small", **overrides) -> Settings:
        """The settings of a run: the defaults, then preset ``config``, then ``overrides`` (None
        keeps the preset's value unless the setting can be None). An unknown name or a value of
        the wrong type is an error naming it."""
        if config not in self.presets:
            raise ValueError(f"unknown config {config!r}: expected one of {sorted(self.presets)}")
        hints = self.hints()
        unknown = (set(self.presets[config]) | set(overrides)) - set(hints)
        if unknown:
            raise ValueError(f"unknown {self.name} settings {sorted(unknown)}; known: {sorted(hints)}")
        # None keeps the preset's value, except for a setting that can be None (lcd_keep=None: keep all pixels)
        given = {k: v for k, v in overrides.items() if v is not None or _fits(None, hints[k])}
        values = {**self.presets[config], **given}
        for k, v in values.items():
            if not (k in self.auto and v == "auto"):
                _check_type(k, v, hints[k])
        base = self.defaults()
        pick = lambda obj: {k: values[k] for k in (f.name for f in fields(obj)) if k in values}  # noqa: E731
        return Settings(replace(base.model, **pick(base.model)), replace(base.data, **pick(base.data)),
                        replace(base.train, **pick(base.train)), frozenset(given), base.flat())


# ------------------------------------------------------------------------------- command line


def _parse(hint, name: str):
    """An argparse ``type`` for a field annotation: numbers, strings, ``none`` for None, ``auto``
    where allowed, ``true``/``false`` inside unions."""
    args = typing.get_args(hint)

    def parse(text: str):
        if typing.get_origin(hint) is Literal:
            return text
        options = args if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
        for t in options:
            if t is type(None) and text.lower() == "none":
                return None
            if typing.get_origin(t) is Literal and text in typing.get_args(t):
                return text
            if t is bool and text.lower() in ("true", "false"):
                return text.lower() == "true"
            if t in (int, float, str):
                try:
                    return t(text)
                except ValueError:
                    continue
        raise argparse.ArgumentTypeError(f"{text!r} is not {_type_name(hint)}")

    parse.__name__ = _type_name(hint)  # argparse names it in its error message
    return parse


ALIASES = {"num_workers": ("--workers",)}  # flags kept from earlier versions of the command line


def add_setting_flags(parser: argparse.ArgumentParser, method: Method) -> None:
    """One ``--flag`` per setting of ``method`` (``--no-flag`` for booleans), absent unless given
    (the preset's value), its type and the method's default in the help, grouped as the settings."""
    hints, base = method.hints(), method.defaults()
    for title, obj in (("model", base.model), ("data", base.data), ("training", base.train)):
        g = parser.add_argument_group(f"{method.name} {title} settings (default: the preset's; [method default])")
        for f in fields(obj):
            if f.name == "extra":
                continue
            hint, default = hints[f.name], getattr(obj, f.name)
            flags = [f"--{f.name.replace('_', '-')}", *ALIASES.get(f.name, ())]
            help_ = f"[{default}]"
            if hint is bool:
                g.add_argument(*flags, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
            elif typing.get_origin(hint) is tuple or hint is tuple:
                item = float if any(a is float for a in typing.get_args(hint)) else int
                g.add_argument(*flags, type=item, nargs="+", default=argparse.SUPPRESS, help=help_)
            elif typing.get_origin(hint) is Literal:
                g.add_argument(*flags, choices=typing.get_args(hint), default=argparse.SUPPRESS, help=help_)
            else:
                extra = " or auto" if f.name in method.auto else ""
                t = _parse(hint | Literal["auto"] if extra else hint, f.name)
                g.add_argument(*flags, type=t, default=argparse.SUPPRESS, metavar=_type_name(hint).replace("'", "").upper() + extra.upper(),
                               help=help_)


def setting_overrides(args: argparse.Namespace, method: Method) -> dict:
    """The settings given on the command line (a flag left out keeps the preset's value)."""
    given = vars(args)
    return {k: tuple(given[k]) if isinstance(given[k], list) else given[k] for k in method.hints() if k in given}


# ------------------------------------------------------------------------------- shared steps


CACHE_MAX_VIDEOS = 2000


def frame_cache(setting, data: Path) -> Path | None:
    """Where decoded frames of video files are kept (uint8 ``.npy``, memory-mapped, so loader
    workers share one copy in the page cache), or None to decode on demand. ``"auto"``: cache
    corpora of at most :data:`CACHE_MAX_VIDEOS` video files (decoding a clip per sample is what
    starves a GPU); larger ones (Kinetics) are decoded on demand."""
    if setting == "auto":
        from .video import VIDEO_EXTENSIONS, list_media

        setting = len(list_media(data, VIDEO_EXTENSIONS)) <= CACHE_MAX_VIDEOS
    return cache_dir() / "frames" if setting else None


def device_augment(setting: str, device: str) -> bool:
    """Augment on the training device (uint8 crops from the workers, batched resize and jitter
    on the GPU) or per sample in the workers: ``"auto"`` picks the device when it is a GPU."""
    if setting not in ("auto", "device", "workers"):
        raise ValueError(f"augment must be auto, device or workers, got {setting!r}")
    return setting == "device" or (setting == "auto" and resolve_device(device).type == "cuda")


def default_video_data() -> Path:
    """Where unlabelled training video is looked for: ``$STT_DATA/videos``; when that folder does
    not exist, procedural synthetic videos are generated (and the fallback is announced)."""
    real = data_root() / "videos"
    if real.is_dir():
        return real
    from .synthetic import make_synthetic_videos

    print(f"no training videos at {real}: using procedural synthetic videos instead "
          "(the pipeline runs end to end; what it learns says nothing about real video)")
    return make_synthetic_videos(cache_dir() / "synthetic-videos")


def default_image_data() -> Path:
    """Still images for STT step 1, the first that exists: ``$STT_DATA/ImageNet/train``,
    ``$STT_DATA/ImageNet_sample/train`` (both the ImageNet-train layout), else the frames of the
    training videos (:func:`default_video_data`). Says which."""
    for sub in ("ImageNet/train", "ImageNet_sample/train"):
        folder = data_root() / sub
        if folder.is_dir():
            print(f"step 1 trains on the still photographs of {folder}")
            return folder
    videos = default_video_data()
    print(f"no still-image folder at {data_root() / 'ImageNet/train'} or {data_root() / 'ImageNet_sample/train'}: "
          f"step 1 trains on the frames of the videos in {videos} (the paper's step 1 sees ImageNet photographs)")
    return videos


def seed_model_init(train: TrainConfig) -> None:
    """Seed the global generator from the run's seed before a model is built, so that ``seed``
    fixes the initial weights too (not only the data order and augmentations)."""
    torch.manual_seed(train.seed)

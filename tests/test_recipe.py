"""Settings that flow without hand copies: each method's settings are its constructor's keywords,
its presets override them by name, and the command line has a flag for each, type-checked."""
import inspect
from dataclasses import asdict, fields

import pytest
import torch

from stt.cli import build_parser
from stt.methods import METHODS, method_of, own_protocols
from stt.recipe import PRESETS, setting_overrides

SKIPPED = {"spatial": set(), "temporal": {"init", "teacher"}, "corrflow": {"centroids", "total_steps"}}


@pytest.mark.parametrize("name", sorted(METHODS))
def test_model_settings_are_the_constructor_keywords(name):
    method = METHODS[name]
    cls = {"spatial": "MoCo", "temporal": "STT", "corrflow": "CorrFlow"}[name]
    ctor = getattr(__import__(f"stt.{method.run.__module__.split('.')[-1]}", fromlist=[cls]), cls)
    params = {p.name: p.default for p in list(inspect.signature(ctor.__init__).parameters.values())[1:]}
    got = {f.name: f.default for f in fields(method.model)}
    assert got == {k: v for k, v in params.items() if k not in SKIPPED[name]}


@pytest.mark.parametrize("name", sorted(METHODS))
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_resolves_and_builds_its_model_from_the_settings(name, preset):
    method = METHODS[name]
    s = method.settings(preset)
    assert s.train.steps == method.presets[preset]["steps"] and not s.overridden
    for k, v in method.presets[preset].items():
        assert s[k] == v  # the preset's value reached its group
    if name == "temporal":  # built as Model(**settings): no positional copy of any setting
        from stt.temporal import STT

        model = STT(**{**asdict(s.model), "gcd": False})
        assert (model.r4, model.r8, model.lcd_keep) == (s.model.radius4, s.model.radius8, s.model.lcd_keep)


def test_unknown_settings_and_wrong_types_are_errors_naming_them():
    method = METHODS["temporal"]
    with pytest.raises(ValueError, match=r"unknown temporal settings \['radii'\]"):
        method.settings("smoke", radii=(12, 6))
    with pytest.raises(ValueError, match=r"setting steps='10' \(str\) does not fit its type int"):
        method.settings("smoke", steps="10")
    with pytest.raises(ValueError, match=r"setting lcd_form='dense'"):
        method.settings("smoke", lcd_form="dense")
    with pytest.raises(ValueError, match="unknown config"):
        method.settings("tiny")


def test_none_keeps_the_preset_unless_the_setting_can_be_none():
    """``lcd_keep=None`` (keep every pixel, the paper's "T none" row) is a value: before the
    settings carried types it was dropped as "not given" and the row trained at T = 0.7."""
    method = METHODS["temporal"]
    assert method.settings("smoke", lcd_keep=None).model.lcd_keep is None
    assert method.settings("smoke", steps=None).train.steps == method.presets["smoke"]["steps"]
    assert method.settings("smoke", max_videos=None).data.max_videos is None  # all videos: a value too


def test_every_setting_has_a_typed_flag_and_flags_left_out_keep_the_preset(capsys):
    parser = build_parser()
    for name, method in METHODS.items():
        a = parser.parse_args(["train", name, "--out", "x"])
        assert setting_overrides(a, method) == {}  # nothing given: the preset decides
        help_text = parser._subparsers._group_actions[0].choices["train"]._subparsers._group_actions[0] \
            .choices[name].format_help()
        for f in method.hints():
            assert f"--{f.replace('_', '-')}" in help_text, f
    a = parser.parse_args(["train", "temporal", "--out", "x", "--lcd-keep", "none", "--no-pyramid", "--steps", "7",
                           "--lcd-threshold", "per-column", "--workers", "2", "--cache", "false"])
    assert setting_overrides(a, METHODS["temporal"]) == dict(lcd_keep=None, pyramid=False, steps=7,
                                                             lcd_threshold="per-column", num_workers=2, cache=False)
    a = parser.parse_args(["train", "spatial", "--out", "x", "--queue-size", "auto", "--crop-scale", "0.1", "0.5"])
    assert setting_overrides(a, METHODS["spatial"]) == dict(queue_size="auto", crop_scale=(0.1, 0.5))
    for bad in (["--steps", "many"], ["--lcd-form", "dense"], ["--lcd-keep", "high"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["train", "temporal", "--out", "x", *bad])
        assert f"error: argument {bad[0]}" in capsys.readouterr().err


def test_temporal_only_flag_drops_init_and_gcd():
    a = build_parser().parse_args(["train", "temporal", "--out", "x", "--temporal-only", "--init", "a.pth"])
    assert METHODS["temporal"].cli_kwargs(a) == {"init": None, "teacher": None, "gcd": False}


def test_registry_knows_each_methods_checkpoints_and_protocols():
    for method in METHODS.values():
        assert method_of({"meta": {"kind": method.kind}, "encoder": {}}) is method
    assert method_of({"state_dict": {"conv1.weight": torch.zeros(1)}}) is None  # a plain trunk
    released = {"module.feature_extraction.conv1.0.weight": torch.zeros(1), "module.post_convolution.weight": torch.zeros(1)}
    assert method_of(released) is METHODS["corrflow"]
    assert list(own_protocols()) == ["corrflow"]


def test_lcd_keep_none_reaches_the_trained_model(tmp_path, monkeypatch):
    from stt.synthetic import make_synthetic_videos
    from stt.temporal import train_temporal

    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    videos = make_synthetic_videos(tmp_path / "videos", n_videos=2, n_frames=6, size=(48, 64))
    ck = train_temporal(videos, tmp_path / "t", "smoke", progress=False, gcd=False, lcd_keep=None, steps=1,
                        image_size=32, num_workers=0, device="cpu")
    saved = torch.load(ck, weights_only=True)
    assert saved["config"]["extra"]["lcd_keep"] is None and saved["meta"]["flags"]["lcd_keep"] is None


def test_a_new_switch_reaches_settings_flag_checkpoint_and_loss():
    """``w_rec8`` (weight of the /8 reconstruction) was added as one constructor keyword: it is a
    setting and a typed flag and weighs the loss (checkpoints that predate it resume at its
    default, by the mechanism test_train's resume test checks)."""
    from stt.temporal import STT

    method = METHODS["temporal"]
    assert method.settings("small", w_rec8=0.5).model.w_rec8 == 0.5 and method.defaults().model.w_rec8 == 1.0
    a = build_parser().parse_args(["train", "temporal", "--out", "x", "--w-rec8", "0.5"])
    assert setting_overrides(a, method) == {"w_rec8": 0.5}
    g = torch.Generator().manual_seed(0)
    batch = torch.rand(2, 2, 3, 32, 32, generator=g)
    out = {w: STT(gcd=False, lcd=False, w_rec8=w)(batch, torch.Generator().manual_seed(1)) for w in (1.0, 0.0)}
    assert torch.allclose(out[1.0]["loss"], out[1.0]["rec4"] + out[1.0]["rec8"])
    assert torch.allclose(out[0.0]["loss"], out[0.0]["rec4"])

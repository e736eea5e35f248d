import json

import numpy as np
import pytest
import torch
from PIL import Image

from stt.datasets import DAVIS
from stt.evaluate import evaluate_davis
from stt.metrics import evaluate_davis_sequence, summarize_davis
from stt.propagation import PropagationConfig


def test_lab_model_end_to_end_and_resume(tiny_synthetic, tmp_path):
    out = tmp_path / "lab"
    res = evaluate_davis(tiny_synthetic, "lab", out, progress=False)
    assert 0.0 <= res["J&F-Mean"] <= 1.0
    seq = DAVIS(tiny_synthetic).names[0]
    png = out / "predictions" / seq / "00003.png"
    with Image.open(png) as im:
        assert im.mode == "P" and im.size == (96, 64)
    # The CSV agrees with a recomputation from the written PNGs.
    frames, gt = DAVIS(tiny_synthetic).load(seq)
    pred = np.stack([np.array(Image.open(out / "predictions" / seq / f"{t:05d}.png")) for t in range(len(gt))])
    again = evaluate_davis_sequence(gt, pred)
    z = np.load(out / "sequences" / f"{seq}.npz")
    np.testing.assert_allclose(z["J"], again["J"])
    # timing.json: seconds and frames of every sequence, and the run's frames/s.
    names = DAVIS(tiny_synthetic).names
    timing = json.loads((out / "timing.json").read_text())
    assert [timing[n]["frames"] for n in names] == [len(DAVIS(tiny_synthetic).sequence(n).frames) for n in names]
    assert timing["last_run"]["frames"] == sum(timing[n]["frames"] for n in names)
    assert timing["last_run"]["frames_per_s"] > 0
    # Resume: finished sequences are not recomputed.
    stamp = (out / "sequences" / f"{seq}.npz").stat().st_mtime_ns
    (out / "sequences" / f"{names[1]}.npz").unlink()
    res2 = evaluate_davis(tiny_synthetic, "lab", out, progress=False)
    assert (out / "sequences" / f"{seq}.npz").stat().st_mtime_ns == stamp
    assert res2 == pytest.approx(res)
    assert json.loads((out / "timing.json").read_text())["last_run"]["frames"] == timing[names[1]]["frames"]


def test_features_do_not_depend_on_the_batch(tiny_synthetic):
    from stt.features import build_feature_model
    from stt.evaluate import iter_features

    frames, _ = DAVIS(tiny_synthetic).load(DAVIS(tiny_synthetic).names[0])
    net, _ = build_feature_model("random-r18")
    one = torch.stack(list(iter_features(net, frames, None, 8, "cpu", batch=1)))
    default = torch.stack(list(iter_features(net, frames, None, 8, "cpu")))
    assert torch.allclose(one, default, atol=1e-5)


def test_other_settings_are_refused_then_overwritten(tiny_synthetic, tmp_path):
    out = tmp_path / "o"
    evaluate_davis(tiny_synthetic, "lab", out, progress=False)
    with pytest.raises(RuntimeError, match="other settings"):
        evaluate_davis(tiny_synthetic, "lab", out, cfg=PropagationConfig(topk=3), progress=False)
    evaluate_davis(tiny_synthetic, "lab", out, cfg=PropagationConfig(topk=3), overwrite=True, progress=False)
    assert json.loads((out / "settings.json").read_text())["propagation"]["topk"] == 3


def test_identity_on_real_davis_equals_direct_metrics(davis2016_root, tmp_path):
    res = evaluate_davis(davis2016_root, "identity", tmp_path / "id", sequences=["car-shadow"], progress=False)
    _, gt = DAVIS(davis2016_root).load("car-shadow")
    direct, _ = summarize_davis({"car-shadow": evaluate_davis_sequence(gt, np.repeat(gt[:1], len(gt), 0))})
    assert res == pytest.approx(direct)
    assert 0.2 < res["J-Mean"] < 0.9


@pytest.mark.slow
def test_random_r18_on_real_davis_subsampled(davis2016_root, tmp_path):
    res = evaluate_davis(davis2016_root, "random-r18", tmp_path / "r", sequences=["car-shadow"],
                         short_side=120, progress=False)
    assert 0.0 < res["J&F-Mean"] < 1.0

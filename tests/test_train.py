"""Training machinery: schedules, data order, checkpoints, exact resume, DDP (gloo, 2 processes)."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stt.video import StillImages
from stt.views import TwoViews
from stt.moco import MoCo
from stt.checkpoint import load_checkpoint
from stt.train import StepBatches, TrainConfig, Trainer, lr_at

REPO = Path(__file__).resolve().parents[1]


def test_lr_schedule():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.001)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(60, cfg) == pytest.approx(0.001 + 0.999 * 0.5)
    assert lr_at(110, cfg) == pytest.approx(0.001)


def test_step_batches_cover_epochs_and_shard_across_ranks():
    cfg = TrainConfig(steps=5, batch_size=4, seed=3)
    single = StepBatches(10, cfg)
    batches = [single.batch(s) for s in range(5)]  # 20 samples = 2 epochs of 10
    idx = [i for b in batches for i, _ in b]
    assert sorted(idx[:10]) == list(range(10)) and sorted(idx[10:]) == list(range(10))
    r0, r1 = StepBatches(10, cfg, rank=0, world=2), StepBatches(10, cfg, rank=1, world=2)
    for s in range(5):
        assert r0.batch(s) + r1.batch(s) == batches[s]
    assert StepBatches(10, cfg).batch(2) == batches[2]  # deterministic
    assert len(list(StepBatches(10, cfg, start=3))) == 2
    with pytest.raises(ValueError, match="divisible"):
        StepBatches(10, TrainConfig(batch_size=3), world=2)


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i in range(12):
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(root / f"c{i % 2}" / f"{i:03d}.png")
    return root


def _moco_trainer(images_root, out, steps, **kw):
    torch.manual_seed(0)
    images = StillImages(images_root, out.parent / "cache", progress=False)
    model = MoCo("resnet18", dim=16, queue_size=16, bn_splits=2)
    cfg = TrainConfig(steps=steps, batch_size=4, lr=0.05, warmup_steps=1, log_every=1, ckpt_every=100, seed=5, **kw)
    return Trainer(model, TwoViews(images, 32), cfg, out, meta={"test": True}, progress=False)


def test_interrupted_run_resumes_exactly(image_folder, tmp_path):
    ref = _moco_trainer(image_folder, tmp_path / "ref", 5).fit()

    class Interrupting(TwoViews):
        def __getitem__(self, key):
            if key == self.trigger:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C while step 2 loads its data
            return super().__getitem__(key)

    t = _moco_trainer(image_folder, tmp_path / "int", 5)
    ds = Interrupting(t.dataset.images, 32)
    ds.trigger = StepBatches(len(ds), t.cfg).batch(2)[0]
    t.dataset = ds
    with pytest.raises(KeyboardInterrupt, match="step 3"):
        t.fit()
    assert load_checkpoint(tmp_path / "int" / "checkpoint.pth")["step"] == 3
    resumed = _moco_trainer(image_folder, tmp_path / "int", 5)
    assert resumed.step == 3
    hist = resumed.fit()
    assert [h["step"] for h in hist] == [1, 2, 3, 4, 5]
    for a, b in zip(hist, ref):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6), (a, b)
    log = [json.loads(line) for line in (tmp_path / "int" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]


def test_checkpoint_contents_and_other_settings_refused(image_folder, tmp_path):
    _moco_trainer(image_folder, tmp_path / "a", 2).fit()
    ck = torch.load(tmp_path / "a" / "checkpoint.pth", weights_only=True)
    assert ck["meta"]["kind"] == "moco" and ck["meta"]["input"] == "lab" and ck["meta"]["test"]
    assert "conv1.weight" in ck["encoder"] and not any(k.startswith("fc.") for k in ck["encoder"])
    assert not list((tmp_path / "a").glob("*.tmp"))
    from stt.features import build_feature_model

    model, _ = build_feature_model(str(tmp_path / "a" / "checkpoint.pth"))
    assert torch.equal(model.encoder.conv1.weight, ck["encoder"]["conv1.weight"])
    with pytest.raises(RuntimeError, match="other settings"):
        _moco_trainer(image_folder, tmp_path / "a", 2, weight_decay=0.5)


def test_corrupt_image_is_skipped_with_a_warning(image_folder, tmp_path):
    import shutil

    root = tmp_path / "imgs"
    shutil.copytree(image_folder, root)
    (root / "c0" / "000.png").write_bytes(b"broken")
    images = StillImages(root, tmp_path / "cache", progress=False)
    with pytest.warns(UserWarning, match="000.png"):
        img = images.get(0)
    assert img.shape == (40, 56, 3)


def test_unreadable_video_is_skipped(tmp_path, shared_root):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"\x00" * 1000)
    os.symlink(shared_root / "videos" / "intel_asl_yes.mp4", videos / "good.mp4")
    with pytest.warns(UserWarning, match="broken.mp4"):
        images = StillImages(videos, tmp_path / "cache", fps=6, short_side=64, progress=False)
    assert len(images) > 5 and images.get(0).shape[0] == 64


LINEAR_SCRIPT = """
import sys, torch
from torch import nn
from stt.train import TrainConfig, Trainer

class Data(torch.utils.data.Dataset):
    def __len__(self): return 16
    def __getitem__(self, key):
        i, _ = key
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, generator=g), torch.randn(1, generator=g)

class Lin(nn.Module):
    def __init__(self):
        super().__init__(); torch.manual_seed(0); self.l = nn.Linear(3, 1)
    def forward(self, batch, gen=None):
        x, y = batch
        return {"loss": ((self.l(x) - y) ** 2).mean()}

cfg = TrainConfig(steps=6, batch_size=8, lr=0.1, optimizer="sgd", sgd_momentum=0.0, weight_decay=0.0, log_every=1, device="cpu",
                  amp="off")  # the equality below is exact in fp32
Trainer(Lin(), Data(), cfg, sys.argv[1], progress=False).fit()
"""


def _torchrun(args, extra_env=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **(extra_env or {})}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, **kw)


def test_ddp_two_processes_equal_one_process(tmp_path):
    """Gradient averaging over 2 gloo ranks with half batches == one process with the full batch."""
    script = tmp_path / "lin.py"
    script.write_text(LINEAR_SCRIPT)
    r = _torchrun([str(script), str(tmp_path / "ddp")])
    assert r.returncode == 0, r.stderr[-3000:]
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    a = torch.load(tmp_path / "ddp" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "one" / "checkpoint.pth", weights_only=True)
    assert a["meta"]["world_size"] == 2 and b["meta"]["world_size"] == 1
    for k in b["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert [h["loss"] for h in a["history"]] == pytest.approx([h["loss"] for h in b["history"]], rel=1e-5)


@pytest.mark.slow
def test_ddp_moco_smoke_through_the_cli(image_folder, tmp_path):
    r = _torchrun(["-m", "stt.cli", "train", "spatial", "--config", "smoke", "--data", str(image_folder),
                   "--out", str(tmp_path / "moco"), "--device", "cpu"], cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(tmp_path / "moco" / "checkpoint.pth", weights_only=True)
    assert ck["step"] == 4 and ck["meta"]["world_size"] == 2
    assert all(np.isfinite(h["loss"]) for h in ck["history"])


def test_training_falls_back_to_synthetic_videos(tmp_path, monkeypatch, capsys):
    from stt.moco import train_spatial
    from stt.recipe import default_video_data

    monkeypatch.setenv("STT_DATA", str(tmp_path / "empty"))
    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    videos = default_video_data()
    assert "synthetic" in capsys.readouterr().out and len(list(videos.glob("*/*.jpg"))) == 8 * 30
    ck = train_spatial(None, tmp_path / "out", "smoke", progress=False, steps=1)
    assert torch.load(ck, weights_only=True)["step"] == 1


@pytest.mark.slow
def test_gpu_presets_run_a_few_steps_on_cpu(tmp_path, monkeypatch):
    """The `gpu` presets (sized for one GPU) start and train on a CPU: 2 steps each, with batch,
    crop and workers shrunk so the test stays short; everything else is the preset's."""
    from stt.corrflow import train_corrflow
    from stt.moco import train_spatial
    from stt.synthetic import make_synthetic_videos
    from stt.temporal import train_temporal

    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    videos = make_synthetic_videos(tmp_path / "videos", n_videos=2, n_frames=8, size=(64, 80))
    small = dict(steps=2, image_size=32, num_workers=0, device="cpu", log_every=1)
    ck = train_spatial(videos, tmp_path / "s", "gpu", progress=False, batch_size=16, **{**small, "image_size": 64})
    assert load_checkpoint(ck)["step"] == 2 and load_checkpoint(ck)["config"]["lr"] == pytest.approx(0.03 * 16 / 256)
    ck = train_temporal(videos, tmp_path / "t", "gpu", init=ck, teacher=ck, progress=False, batch_size=2, **small)
    assert load_checkpoint(ck)["meta"]["config"] == "gpu"
    ck = train_corrflow(videos, tmp_path / "c", "gpu", progress=False, batch_size=2, kmeans_frames=4, **small)
    assert len(load_checkpoint(ck)["history"]) == 2


def test_resume_names_the_settings_that_differ_and_reads_older_checkpoints(tmp_path, monkeypatch):
    """Every setting is recorded and a resume with another value is refused, naming it; a setting
    an older checkpoint does not record ran at the method's default (the SGD momentum's earlier
    name included), so older checkpoints resume."""
    from stt import moco
    from stt.synthetic import make_synthetic_videos

    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    videos = make_synthetic_videos(tmp_path / "videos", n_videos=2, n_frames=6, size=(48, 64))
    kw = dict(steps=1, batch_size=4, image_size=32, num_workers=0, device="cpu", log_every=1, progress=False)
    ck = moco.train_spatial(videos, tmp_path / "local", "smoke", crop_scale=moco.LOCAL_CROP_SCALE, **kw)
    saved = load_checkpoint(ck)
    assert tuple(saved["config"]["extra"]["crop_scale"]) == moco.LOCAL_CROP_SCALE
    assert moco.PRESETS["small"]["crop_scale"] == moco.LOCAL_CROP_SCALE
    with pytest.raises(RuntimeError, match=r"other settings \{'crop_scale': \(\[0.08, 0.4\], \[0.2, 1.0\]\)\}"):
        moco.train_spatial(videos, tmp_path / "local", "smoke", **kw)  # the preset's (MoCo's) crops
    ck = moco.train_spatial(videos, tmp_path / "old", "smoke", **kw)
    old = load_checkpoint(ck)  # as written before crop_scale was recorded, with "momentum" for SGD's
    del old["config"]["extra"]["crop_scale"]
    old["config"]["momentum"] = old["config"].pop("sgd_momentum")
    torch.save(old, ck)
    assert moco.train_spatial(videos, tmp_path / "old", "smoke", **kw) == ck  # resumes (finished)
    with pytest.raises(RuntimeError, match=r"\{'crop_scale': \(\[0.2, 1.0\], \[0.08, 0.4\]\)\}"):
        moco.train_spatial(videos, tmp_path / "old", "smoke", crop_scale=moco.LOCAL_CROP_SCALE, **kw)
    with pytest.raises(RuntimeError, match=r"\{'sgd_momentum': \(0.9, 0.5\)\}"):
        moco.train_spatial(videos, tmp_path / "old", "smoke", sgd_momentum=0.5, **kw)


@pytest.fixture(scope="module")
def tiny_videos(tmp_path_factory):
    from stt.synthetic import make_synthetic_videos

    return make_synthetic_videos(tmp_path_factory.mktemp("videos"), n_videos=2, n_frames=8, size=(64, 80))


@pytest.fixture(scope="module")
def tiny_step1(tiny_videos, tmp_path_factory):
    """A one-step MoCo step 1 (the plain ResNet on Lab, as the recipe records it)."""
    from stt.moco import train_spatial

    out = tmp_path_factory.mktemp("step1")
    return train_spatial(tiny_videos, out / "moco", "smoke", progress=False, steps=1, device="cpu")


@pytest.mark.slow
@pytest.mark.parametrize("recipe,flags", [
    ("temporal", ["--init", "STEP1", "--teacher", "STEP1"]),  # full STT
    ("temporal", ["--temporal-only"]),
    ("temporal", ["--init", "STEP1", "--no-gcd"]),
    ("corrflow", []),
])
def test_ddp_every_recipe_trains_under_torchrun(recipe, flags, tiny_videos, tiny_step1, tmp_path):
    """Two gloo processes: every step-2 variant and CorrFlow start, train and checkpoint (the
    stages a variant does not use get no gradient and are frozen, so DDP does not wait for them)."""
    flags = [str(tiny_step1) if f == "STEP1" else f for f in flags]
    env_cache = {"STT_CACHE": str(tmp_path / "cache")}
    r = _torchrun(["-m", "stt.cli", "train", recipe, "--config", "smoke", "--data", str(tiny_videos),
                   "--out", str(tmp_path / "run"), "--device", "cpu", *flags], cwd=REPO, extra_env=env_cache)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert ck["meta"]["world_size"] == 2 and ck["step"] == ck["config"]["steps"]
    assert all(np.isfinite(h["loss"]) for h in ck["history"])


def test_same_seed_same_initial_weights_and_losses(tiny_videos, tmp_path):
    """--seed fixes the initial weights: the same command twice gives the same losses, whatever
    the global generator's state before it; another seed gives other weights."""
    from stt.temporal import train_temporal

    runs = {}
    for name, seed, noise in (("a", 0, 1), ("b", 0, 2), ("c", 1, 1)):
        torch.manual_seed(noise)  # a different global state before each run
        torch.rand(noise)
        ck = train_temporal(tiny_videos, tmp_path / name, "smoke", progress=False, gcd=False, seed=seed, steps=1,
                            device="cpu", amp="off")
        runs[name] = load_checkpoint(ck)
    assert runs["a"]["history"][0]["loss"] == runs["b"]["history"][0]["loss"]
    assert torch.equal(runs["a"]["encoder"]["conv1.weight"], runs["b"]["encoder"]["conv1.weight"])
    assert not torch.equal(runs["a"]["encoder"]["conv1.weight"], runs["c"]["encoder"]["conv1.weight"])


def test_full_moco_shuffles_bn_in_one_process(tiny_videos, tmp_path, monkeypatch):
    """`full` trains MoCo with shuffle BN in one process (8 groups) and per process under DDP."""
    from stt.moco import train_spatial

    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    ck = train_spatial(tiny_videos, tmp_path / "moco", "full", progress=False, steps=1, batch_size=16, image_size=64,
                       num_workers=0, device="cpu", log_every=1)
    assert load_checkpoint(ck)["config"]["extra"]["bn_splits"] == 8


def test_resnet50_step2_takes_the_papers_r50_learning_rate(tiny_videos, tmp_path, monkeypatch):
    from stt.temporal import TRAIN
    from stt.temporal import train_temporal

    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    kw = dict(progress=False, steps=1, gcd=False, device="cpu", image_size=64)
    ck = train_temporal(tiny_videos, tmp_path / "r50", "smoke", arch="resnet50", **kw)
    assert load_checkpoint(ck)["config"]["lr"] == pytest.approx(0.5 * TRAIN.lr)  # 5e-5, SPEC section 3
    ck = train_temporal(tiny_videos, tmp_path / "r50-lr", "smoke", arch="resnet50", lr=3e-4, **kw)
    assert load_checkpoint(ck)["config"]["lr"] == pytest.approx(3e-4)  # set by hand: kept


def test_step1_trains_on_photographs_when_there_are_some(tmp_path, monkeypatch, capsys):
    """Step 1's default data: $STT_DATA/ImageNet/train, else ImageNet_sample/train, else the
    videos' frames, saying which."""
    from stt.recipe import default_image_data

    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    monkeypatch.setenv("STT_DATA", str(root))
    assert default_image_data() == root / "videos"
    assert "frames of the videos" in capsys.readouterr().out
    (root / "ImageNet_sample" / "train" / "n01").mkdir(parents=True)
    assert default_image_data() == root / "ImageNet_sample" / "train"
    assert "photographs" in capsys.readouterr().out
    (root / "ImageNet" / "train").mkdir(parents=True)
    assert default_image_data() == root / "ImageNet" / "train"


def test_step1_on_an_imagenet_folder_counts_each_photograph_as_an_instance(image_folder, tmp_path, monkeypatch):
    from stt.moco import train_spatial

    monkeypatch.setenv("STT_CACHE", str(tmp_path / "cache"))
    ck = load_checkpoint(train_spatial(image_folder, tmp_path / "moco", "smoke", progress=False, steps=1,
                                       batch_size=4, image_size=32, device="cpu"))
    assert ck["meta"]["images"] == ck["meta"]["instances"] == 12 and ck["meta"]["variant"] == "imagenet"
    assert ck["config"]["extra"]["queue_size"] == 3  # a quarter of the 12 photographs

"""Augmentations: the batched ops against torchvision's per-image functions, and the two data
paths (per sample in the workers, per batch on the device) against each other."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from stt.augment import (
    adjust_hue,
    clip_crop,
    color_jitter_batch,
    gaussian_blur_batch,
    grayscale,
    moco_v2_params,
    moco_v2_view,
    pad_stack,
    photometric,
    collate_params,
    resize_crops,
)


def _images(n=6, h=40, w=52, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_hue_equals_torchvision():
    x = _images()
    x[0] = x[0, :1].expand(3, -1, -1)  # grey: no hue
    x[1, 0] = x[1, 1]  # ties between channels
    shifts = torch.tensor([0.1, -0.1, 0.5, -0.5, 0.03, 0.0])
    ref = torch.stack([TF.adjust_hue(xi, float(s)) for xi, s in zip(x, shifts)])
    assert torch.allclose(adjust_hue(x, shifts), ref, atol=1e-5)


def test_jitter_in_per_sample_order_equals_torchvision():
    x = _images()
    g = torch.Generator().manual_seed(1)
    order = torch.stack([torch.randperm(4, generator=g) for _ in range(len(x))])
    factors = torch.stack([torch.tensor([0.7, 1.3, 0.6, -0.08]), torch.tensor([1.4, 0.6, 1.2, 0.1])]).repeat(3, 1)
    on = torch.tensor([True, True, False, True, True, True])
    ops = [TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue]
    ref = []
    for xi, o, f, use in zip(x, order, factors, on):
        for i in o.tolist() if use else []:
            xi = ops[i](xi, float(f[i]))
        ref.append(xi)
    assert torch.allclose(color_jitter_batch(x, on, order, factors), torch.stack(ref), atol=1e-5)
    assert torch.equal(color_jitter_batch(x, on, order, factors)[2], x[2])  # off: untouched


def test_grayscale_and_blur_equal_torchvision():
    x = _images(h=33, w=29)
    assert torch.allclose(grayscale(x), TF.rgb_to_grayscale(x), atol=1e-6)
    sigma = torch.tensor([0.0, 0.1, 0.5, 1.0, 1.7, 2.0])
    out = gaussian_blur_batch(x, sigma)
    assert torch.equal(out[0], x[0])
    for i in range(1, len(x)):
        k = max(3, int(2 * np.ceil(3 * float(sigma[i])) + 1))
        ref = TF.gaussian_blur(x[i], [k, k], [float(sigma[i])] * 2)
        assert torch.allclose(out[i], ref, atol=1e-5), float(sigma[i])


def test_roi_align_resize_is_close_to_antialiased_resize(shared_root):
    """The device path's resampling (roi_align, averaged samples) against torchvision's
    antialiased bilinear resize on real frames: down- and upscaling crops."""
    from stt.datasets import read_image

    img = read_image(sorted((shared_root / "DAVIS2016" / "JPEGImages" / "480p" / "blackswan").glob("*.jpg"))[0])
    boxes = [(0, 0, 480, 854), (100, 200, 300, 300), (40, 500, 60, 90), (10, 10, 200, 150)]
    crops = [img[t:t + h, l:l + w] for t, l, h, w in boxes]
    batch, sizes = pad_stack(crops)
    for size in (96, 128):
        out = resize_crops(batch, sizes, size)
        for (t, l, h, w), o in zip(boxes, out):
            ref = TF.resized_crop(torch.from_numpy(img).permute(2, 0, 1).float() / 255, t, l, h, w, [size, size],
                                  antialias=True).clamp(0, 1)
            assert (o - ref).abs().mean() < 0.02, (t, l, h, w, size)


def test_worker_and_device_paths_draw_the_same_views(shared_root, tmp_path):
    from stt.video import StillImages, VideoFrames
    from stt.views import FrameClips, TwoViews

    videos = shared_root / "videos"
    images = StillImages(videos, tmp_path, fps=2, short_side=96, max_videos=2, progress=False)
    keys = [(i, 100 + i) for i in range(0, len(images), max(1, len(images) // 8))][:8]
    cpu, dev = TwoViews(images, 48), TwoViews(images, 48, on_device=True)
    q, k, inst = cpu.collate([cpu[key] for key in keys])
    q2, k2, inst2 = dev.to_device(dev.collate([dev[key] for key in keys]), "cpu")
    assert torch.equal(inst, inst2) and q2.shape == q.shape
    assert (q - q2).abs().mean() < 0.02 and (k - k2).abs().mean() < 0.02
    assert (q - k).abs().mean() > 0.05  # two different views

    frames = VideoFrames(videos, tmp_path, fps=2, short_side=96, max_videos=2, progress=False)
    a, b = FrameClips(frames, 2, size=40), FrameClips(frames, 2, size=40, on_device=True)
    clips = a.collate([a[key] for key in keys])
    clips2 = b.to_device(b.collate([b[key] for key in keys]), "cpu")
    assert clips2.shape == clips.shape == (len(keys), 2, 3, 40, 40)
    assert (clips - clips2).abs().mean() < 0.02


def test_views_are_seeded():
    img = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    v1 = moco_v2_view(img, 32, torch.Generator().manual_seed(3))
    v2 = moco_v2_view(img, 32, torch.Generator().manual_seed(3))
    assert torch.equal(v1, v2) and v1.shape == (3, 32, 32) and 0 <= v1.min() and v1.max() <= 1
    p = moco_v2_params(50, 70, torch.Generator().manual_seed(3))
    assert p["box"].tolist() == moco_v2_params(50, 70, torch.Generator().manual_seed(3))["box"].tolist()
    clip = np.stack([img, img[::-1].copy()])
    c = clip_crop(clip, 24, torch.Generator().manual_seed(0))
    assert c.shape == (2, 3, 24, 24)


def test_photometric_identity_parameters_change_nothing():
    x = _images()
    n = len(x)
    p = collate_params([{"jitter": False, "order": torch.arange(4), "factors": torch.tensor([1.0, 1.0, 1.0, 0.0]),
                         "gray": False, "sigma": 0.0, "flip": False}] * n)
    assert torch.equal(photometric(x, p), x)
    p["flip"] = torch.ones(n, dtype=torch.bool)
    assert torch.equal(photometric(x, p), x.flip(-1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_device_path_runs_on_cuda():
    x = (torch.rand(4, 30, 40, 3) * 255).to(torch.uint8)
    out = resize_crops(x.cuda(), torch.tensor([[30, 40]] * 4).cuda(), 16)
    p = collate_params([moco_v2_params(30, 40, torch.Generator().manual_seed(i)) for i in range(4)])
    y = photometric(out, {k: v.cuda() for k, v in p.items()})
    ref = photometric(resize_crops(x, torch.tensor([[30, 40]] * 4), 16), p)
    assert torch.allclose(y.cpu(), ref, atol=1e-4)


def test_two_views_crop_area_follows_the_scale_setting():
    from stt.views import TwoViews

    class Still:  # the StillImages interface: len and load -> (H x W x 3 uint8, instance)
        def __len__(self):
            return 3

        def load(self, i):
            return np.zeros((100, 120, 3), np.uint8), i

    for scale in [(0.02, 0.05), (0.5, 1.0)]:
        views = TwoViews(Still(), 16, on_device=True, scale=scale)
        for seed in range(20):
            *_, p1, p2, _ = views[(seed % 3, seed)]
            for p in (p1, p2):
                h, w = p["box"].tolist()[2:]
                assert scale[0] * 0.9 <= h * w / (100 * 120) <= scale[1] * 1.1  # integer rounding of h, w

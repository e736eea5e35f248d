import numpy as np
import pytest
import torch
from skimage import color as skcolor

from stt.color import LAB_MEAN, LAB_STD, lab_to_rgb, normalize_lab, rgb_to_lab, rgb_to_normalized_lab


def test_rgb_to_lab_matches_scikit_image_on_random_colours():
    rgb = np.random.default_rng(0).random((17, 23, 3))
    ours = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    ref = skcolor.rgb2lab(rgb, illuminant="D65")
    assert np.abs(ours - ref).max() < 2e-3  # L in [0, 100], a/b in about [-128, 127]


def test_rgb_to_lab_on_real_frame_and_batch(davis2016_root):
    from stt.datasets import read_image

    img = read_image(davis2016_root / "JPEGImages/480p/blackswan/00000.jpg")[::4, ::4] / 255.0
    x = torch.from_numpy(np.stack([img, img[::-1]])).permute(0, 3, 1, 2)  # B x 3 x H x W
    ours = rgb_to_lab(x)[1].permute(1, 2, 0).numpy()
    assert np.abs(ours - skcolor.rgb2lab(img[::-1])).max() < 2e-3


def test_known_values():
    white = rgb_to_lab(torch.ones(3, 1, 1)).flatten()
    black = rgb_to_lab(torch.zeros(3, 1, 1)).flatten()
    # The sRGB matrix rows sum to the D65 white only to 5 digits, so white's a/b are ~0.005 off
    # zero (scikit-image gives the same).
    assert torch.allclose(white, torch.tensor([100.0, 0.0, 0.0]), atol=1e-2)
    assert torch.allclose(black, torch.zeros(3), atol=1e-4)


def test_round_trip_and_gradients():
    rgb = torch.rand(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    back = lab_to_rgb(rgb_to_lab(rgb))
    assert torch.allclose(back, rgb, atol=1e-6)
    rgb_to_lab(rgb).sum().backward()
    assert torch.isfinite(rgb.grad).all()


def test_normalisation_constants():
    lab = torch.tensor([50.0, 127.0, -127.0]).view(3, 1, 1)
    assert torch.allclose(normalize_lab(lab).flatten(), torch.tensor([0.0, 1.0, -1.0]))
    assert LAB_MEAN == (50.0, 0.0, 0.0) and LAB_STD == (50.0, 127.0, 127.0)
    white = rgb_to_normalized_lab(torch.ones(1, 3, 2, 2))
    assert torch.allclose(white[0, :, 0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4)


def test_rejects_wrong_channel_count():
    with pytest.raises(ValueError, match="3 channels"):
        rgb_to_lab(torch.rand(4, 5, 5))

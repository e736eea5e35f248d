import pytest
import torch
import torchvision

from stt.encoder import ResNetEncoder, extract_encoder_state, load_encoder_state
from stt.features import LabPixels, build_feature_model


@pytest.mark.parametrize(
    "variant, expect",
    [
        ("train", {"layer1": 128, "layer2": 64, "layer3": 32, "layer4": 8}),
        ("stride8", {"layer1": 128, "layer2": 64, "layer3": 32, "layer4": 32}),
        ("stride4", {"layer1": 64, "layer2": 64, "layer3": 64, "layer4": 64}),
        ("imagenet", {"layer1": 64, "layer2": 32, "layer3": 16, "layer4": 8}),
    ],
)
def test_feature_map_sizes_for_256_input(variant, expect):
    enc = ResNetEncoder("resnet18", variant).eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 256, 256), levels=tuple(expect))
    assert {k: v.shape[-1] for k, v in out.items()} == expect
    assert {k: 256 // s for k, s in enc.strides().items()} == expect
    assert out["layer3"].shape[1] == 256 and out["layer4"].shape[1] == 512


def test_resnet50_channels_and_strides():
    enc = ResNetEncoder("resnet50", "train").eval()
    with torch.no_grad():
        out = enc(torch.randn(1, 3, 64, 64), levels=("layer2", "layer3", "layer4"))
    assert [out[k].shape[1] for k in ("layer2", "layer3", "layer4")] == [512, 1024, 2048]
    assert [out[k].shape[-1] for k in ("layer2", "layer3", "layer4")] == [16, 8, 2]


def test_state_dict_keys_are_torchvision_keys():
    tv = torchvision.models.resnet18(weights=None).state_dict()
    ours = ResNetEncoder("resnet18", "stride8").state_dict()
    assert set(ours) == {k for k in tv if not k.startswith("fc.")}
    # The same weights compute the same imagenet-variant features as torchvision's trunk.
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    enc = ResNetEncoder("resnet18", "imagenet").eval()
    load_encoder_state(enc, extract_encoder_state(ref.state_dict()))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        y_ref = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.maxpool(ref.relu(ref.bn1(ref.conv1(x))))))))
        assert torch.allclose(enc(x, levels=("layer4",))["layer4"], y_ref, atol=1e-5)


def test_moco_checkpoint_loads(tmp_path):
    torch.manual_seed(1)
    src = torchvision.models.resnet18(weights=None)
    sd = {f"module.encoder_q.{k}": v for k, v in src.state_dict().items()}
    sd.update({f"module.encoder_k.{k}": torch.zeros_like(v) for k, v in src.state_dict().items()})
    sd["module.encoder_q.fc.0.weight"] = torch.randn(512, 512)  # MoCo v2 MLP head
    path = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": sd}, path)
    model, desc = build_feature_model(str(path))
    assert torch.equal(model.encoder.conv1.weight, src.conv1.weight)
    assert desc["file"] and model.stride == 8


def test_torchvision_checkpoint_loads_and_infers_arch(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    model, _ = build_feature_model(str(path))
    assert model.encoder.arch == "resnet50"


def test_wrong_shape_checkpoint_names_file_and_key(tmp_path):
    sd = ResNetEncoder("resnet18").state_dict()
    sd["conv1.weight"] = torch.zeros(64, 1, 7, 7)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"bad\.pth.*\n.*conv1\.weight.*\(64, 1, 7, 7\)"):
        build_feature_model(str(path))


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="junk.pth"):
        build_feature_model(str(path))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_feature_model(str(tmp_path / "nope.pth"))
    torch.save({"something": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="no ResNet trunk"):
        build_feature_model(str(tmp_path / "other.pth"))


def test_lab_pixels_is_a_pooled_normalised_lab_map():
    x = torch.rand(2, 3, 32, 48)
    f = LabPixels(8)(x)
    assert f.shape == (2, 3, 4, 6)
    from stt.color import rgb_to_normalized_lab

    assert torch.allclose(f[0, :, 1, 2], rgb_to_normalized_lab(x)[0, :, 8:16, 16:24].mean((1, 2)), atol=1e-5)


def test_random_model_is_seeded():
    a, _ = build_feature_model("random-r18")
    b, _ = build_feature_model("random-r18")
    assert torch.equal(a.encoder.layer3[0].conv1.weight, b.encoder.layer3[0].conv1.weight)

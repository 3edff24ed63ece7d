"""FaceNet encoders: facenet-pytorch's published file layout, the input conversion, freezing, errors."""

import pytest
import torch
from facenet_pytorch import InceptionResnetV1
from facenet_pytorch.models.mtcnn import fixed_image_standardization

from ifadit import registry
from ifadit.nets.facenet import FaceNetCASIAEncoder, FaceNetVGGFace2Encoder
from ifadit.weights import WeightsError

# Facts about the published files (facenet-pytorch's load_weights loads them strictly into
# InceptionResnetV1 built with a `logits` layer): a plain state dict of the whole classifier, whose
# `logits.weight` has 8631 rows (VGGFace2) or 10575 rows (CASIA-WebFace).
VGGFACE2_CLASSES = 8631
CASIA_CLASSES = 10575


@pytest.fixture(autouse=True)
def _empty_weights_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("IFADIT_WEIGHTS", str(tmp_path / "weights"))


def _published_like_network(num_classes: int) -> InceptionResnetV1:
    """A classifier in the published layout with non-trivial batch-norm statistics."""
    net = InceptionResnetV1(pretrained=None, classify=True, num_classes=num_classes).eval()
    generator = torch.Generator().manual_seed(3)
    for module in net.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(module.running_var.shape, generator=generator))
    return net


def test_published_vggface2_layout_loads_by_name_and_matches_facenet_pytorch(tmp_path) -> None:
    reference = _published_like_network(VGGFACE2_CLASSES)
    state = reference.state_dict()
    assert state["logits.weight"].shape == (VGGFACE2_CLASSES, 512)
    path = tmp_path / "20180402-114759-vggface2.pt"
    torch.save(state, path)

    encoder = FaceNetVGGFace2Encoder(checkpoint=path)
    assert not any(k.startswith("net.logits") for k in encoder.state_dict())

    pixels = torch.randint(0, 256, (2, 3, 160, 160)).float()
    reference.classify = False  # the embedding, as facenet-pytorch computes it from its own preprocessing
    with torch.no_grad():
        expected = reference(fixed_image_standardization(pixels))
        ours = encoder(pixels / 127.5 - 1.0)  # our [-1, 1] convention
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(2))


def test_casia_file_without_batchnorm_counters_loads_from_the_weights_folder(tmp_path, monkeypatch) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    monkeypatch.setenv("IFADIT_WEIGHTS", str(folder))
    source = InceptionResnetV1(pretrained=None, classify=False).eval()
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    state["logits.weight"] = torch.zeros(CASIA_CLASSES, 512)
    state["logits.bias"] = torch.zeros(CASIA_CLASSES)
    torch.save(state, folder / "20180408-102900-casia-webface.pt")

    encoder = FaceNetCASIAEncoder()
    assert encoder.checkpoint_path == str(folder / "20180408-102900-casia-webface.pt")
    images = torch.rand(1, 3, 160, 160) * 2 - 1
    with torch.no_grad():
        expected = source(images * 127.5 / 128)
        torch.testing.assert_close(encoder(images), expected, atol=1e-5, rtol=1e-4)


def test_the_other_variants_file_is_refused_by_name(tmp_path) -> None:
    path = tmp_path / "casia.pt"
    torch.save({"logits.weight": torch.zeros(CASIA_CLASSES, 512)}, path)
    with pytest.raises(WeightsError, match=r"10575 classes \(that is the 'facenet-casia' file\).*8631"):
        FaceNetVGGFace2Encoder(checkpoint=path)


def test_missing_weights_name_the_file_and_folder(tmp_path) -> None:
    with pytest.raises(WeightsError) as info:
        FaceNetVGGFace2Encoder()
    message = str(info.value)
    assert "20180402-114759-vggface2.pt" in message
    assert str(tmp_path / "weights") in message
    assert "facenet-pytorch" in message


def test_explicit_missing_checkpoint_is_an_error_even_with_random_init_allowed(tmp_path) -> None:
    with pytest.raises(WeightsError, match=r"nowhere\.pt"):
        FaceNetVGGFace2Encoder(checkpoint=tmp_path / "nowhere.pt", allow_random_init=True)


def test_random_init_encoder_is_frozen_unit_norm_and_passes_gradients_to_images() -> None:
    with pytest.warns(UserWarning, match="RANDOM"):
        encoder = FaceNetCASIAEncoder(allow_random_init=True)
    assert encoder.checkpoint_path is None
    assert encoder.embedding_dim == 512
    assert not any(p.requires_grad for p in encoder.parameters())
    encoder.train()
    assert not encoder.training and not encoder.net.training

    images = (torch.rand(2, 3, 96, 120) * 2 - 1).requires_grad_(True)  # any size: resized to 160
    embeddings = encoder(images)
    assert embeddings.shape == (2, 512)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
    embeddings[:, 0].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_rejects_non_rgb_input() -> None:
    with pytest.warns(UserWarning):
        encoder = FaceNetVGGFace2Encoder(allow_random_init=True)
    with pytest.raises(ValueError, match="RGB"):
        encoder(torch.zeros(1, 1, 160, 160))


def test_registered_under_their_entry_point_names() -> None:
    assert registry.get("identity_encoders", "facenet_vggface2") is FaceNetVGGFace2Encoder
    assert registry.get("identity_encoders", "facenet_casia") is FaceNetCASIAEncoder

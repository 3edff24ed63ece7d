"""timm-based encoders and the ArcFace margin head (tiny CPU configurations)."""

import math

import pytest
import torch
import torch.nn.functional as F

from ifadit import registry
from ifadit.nets.base import AttributeEncoder, IdentityEncoder
from ifadit.nets.timm_encoders import ArcFaceHead, TimmAttributeEncoder, TimmIdentityEncoder

TINY = "resnet10t"


def _assert_every_parameter_gets_a_gradient(module: torch.nn.Module) -> None:
    # timm zero-initialises the last BN scale of each residual branch, so those branches' convs get an
    # exactly zero gradient at step 0; they must still be in the graph, and the head must get a signal.
    assert [n for n, p in module.named_parameters() if p.grad is None] == []
    nonzero = [n for n, p in module.named_parameters() if p.grad.abs().sum() > 0]
    assert len(nonzero) > len(list(module.parameters())) // 2
    assert all(p.grad.abs().sum() > 0 for n, p in module.named_parameters() if not n.startswith("backbone."))


def test_identity_encoder_gives_unit_norm_embeddings_at_any_input_size() -> None:
    encoder = TimmIdentityEncoder(backbone=TINY, embedding_dim=32, in_size=32)
    assert isinstance(encoder, IdentityEncoder) and encoder.embedding_dim == 32
    for size in (32, 48):
        embeddings = encoder(torch.rand(3, 3, size, size) * 2 - 1)
        assert embeddings.shape == (3, 32)
        torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(3))


def test_identity_encoder_trains_end_to_end_with_the_arcface_head() -> None:
    encoder = TimmIdentityEncoder(backbone=TINY, embedding_dim=16, in_size=32)
    head = ArcFaceHead(embedding_dim=16, num_classes=5, scale=16.0, margin=0.3)
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    labels = torch.tensor([0, 1, 2, 1])
    loss = F.cross_entropy(head(encoder(images), labels), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    _assert_every_parameter_gets_a_gradient(encoder)


def test_frozen_identity_encoder_stays_in_eval_and_has_no_trainable_parameters() -> None:
    encoder = TimmIdentityEncoder(backbone=TINY, embedding_dim=16, in_size=32, frozen=True)
    encoder.train()
    assert not encoder.training and not encoder.head.training
    assert not any(p.requires_grad for p in encoder.parameters())
    images = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_(True)  # batch 1 works in eval mode
    encoder(images).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_identity_encoder_checkpoint_round_trip_with_data_parallel_prefix(tmp_path) -> None:
    encoder = TimmIdentityEncoder(backbone=TINY, embedding_dim=16, in_size=32).eval()
    path = tmp_path / "id.pt"
    torch.save({"module." + k: v for k, v in encoder.state_dict().items()}, path)
    torch.manual_seed(123)
    restored = TimmIdentityEncoder(backbone=TINY, embedding_dim=16, in_size=32, checkpoint=path).eval()
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(restored(images), encoder(images))


def test_attribute_encoder_shapes_and_gradients() -> None:
    encoder = TimmAttributeEncoder(backbone=TINY, n_styles=6, style_dim=24, in_size=32)
    assert isinstance(encoder, AttributeEncoder)
    images = (torch.rand(2, 3, 40, 40) * 2 - 1).requires_grad_(True)
    codes = encoder(images)
    assert codes.shape == (2, 6, 24)
    codes.square().mean().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    _assert_every_parameter_gets_a_gradient(encoder)


def test_attribute_encoder_codes_depend_on_the_image_and_on_the_style_slot() -> None:
    encoder = TimmAttributeEncoder(backbone="mobilenetv3_small_050", n_styles=4, style_dim=8).eval()
    with torch.no_grad():
        codes = encoder(torch.rand(2, 3, 32, 32) * 2 - 1)
    assert not torch.allclose(codes[0], codes[1])
    assert not torch.allclose(codes[:, 0], codes[:, 1])


def test_attribute_encoder_uses_the_chosen_feature_levels() -> None:
    encoder = TimmAttributeEncoder(backbone=TINY, n_styles=2, style_dim=4, out_indices=(3, 4)).eval()
    assert encoder.to_styles.in_features == 256 + 512  # resnet10t channels at strides 16 and 32
    assert encoder(torch.rand(1, 3, 32, 32) * 2 - 1).shape == (1, 2, 4)


@pytest.mark.parametrize("kind", ["identity", "attribute"])
def test_encoders_run_channels_last_and_compute_what_the_contiguous_layout_does(kind: str, tmp_path) -> None:
    """channels-last is a speed choice (benchmarks/training_speed.py): same function, same checkpoints."""
    build = {
        "identity": lambda: TimmIdentityEncoder(backbone=TINY, embedding_dim=16, in_size=32),
        "attribute": lambda: TimmAttributeEncoder(backbone=TINY, n_styles=3, style_dim=8, pool_grid=2),
    }[kind]
    encoder = build().eval()
    convs = [m.weight for m in encoder.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    assert encoder.adapter(images).is_contiguous(memory_format=torch.channels_last)
    path = tmp_path / "encoder.pt"
    torch.save(encoder.state_dict(), path)
    contiguous = build().eval()
    contiguous.load_state_dict(torch.load(path, weights_only=True))
    contiguous.backbone.to(memory_format=torch.contiguous_format)
    contiguous_input = contiguous.adapter(images).contiguous()
    with torch.no_grad():
        if kind == "identity":
            expected = F.normalize(contiguous.head(contiguous.backbone(contiguous_input)), dim=1)
        else:
            maps = contiguous.backbone(contiguous_input)
            assert all(m.is_contiguous() for m in maps)
            pooled = torch.cat([F.adaptive_avg_pool2d(m, 2).flatten(1) for m in maps], dim=1)
            expected = contiguous.to_styles(contiguous.norm(pooled)).view(2, 3, 8)
        torch.testing.assert_close(encoder(images), expected, rtol=1e-4, atol=1e-5)


def test_rejects_images_with_the_wrong_channel_count() -> None:
    encoder = TimmAttributeEncoder(backbone=TINY, n_styles=2, style_dim=4)
    with pytest.raises(ValueError, match="expected images"):
        encoder(torch.zeros(1, 1, 32, 32))


def _unit(angle_degrees: float) -> list[float]:
    radians = math.radians(angle_degrees)
    return [math.cos(radians), math.sin(radians)]


def test_arcface_margin_matches_hand_computed_logits() -> None:
    head = ArcFaceHead(embedding_dim=2, num_classes=3, scale=64.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([_unit(0), _unit(90), _unit(180)]) * 3.0)  # norms do not matter
    embeddings = torch.tensor([_unit(30), _unit(170)]) * 2.0
    labels = torch.tensor([0, 2])
    logits = head(embeddings, labels)

    # Sample 0: class 0 at 30 deg is the target, theta + m = 30 deg + 0.5 rad < pi -> cos(theta + m).
    expected_0 = [
        64 * math.cos(math.radians(30) + 0.5),
        64 * math.cos(math.radians(60)),
        64 * math.cos(math.radians(150)),
    ]
    # Sample 1: class 2 at 10 deg is the target: cos(10 deg + 0.5 rad); the others have no margin.
    expected_1 = [
        64 * math.cos(math.radians(170)),
        64 * math.cos(math.radians(80)),
        64 * math.cos(math.radians(10) + 0.5),
    ]
    torch.testing.assert_close(logits, torch.tensor([expected_0, expected_1]), atol=1e-4, rtol=1e-5)
    assert logits[0, 0].item() == pytest.approx(33.2989, abs=1e-3)  # 64 * cos(1.0236 rad)

    # Without labels: plain scaled cosines.
    torch.testing.assert_close(head(embeddings), 64 * head.cosine(embeddings))


def test_arcface_past_pi_uses_the_monotonic_fallback() -> None:
    head = ArcFaceHead(embedding_dim=2, num_classes=2, scale=10.0, margin=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([_unit(0), _unit(90)]))
    # theta = 170 deg to class 0: theta + m = 198.6 deg > 180 deg, so cos(theta) - m * sin(m) instead.
    logits = head(torch.tensor([_unit(170)]), torch.tensor([0]))
    expected = 10 * (math.cos(math.radians(170)) - 0.5 * math.sin(0.5))
    assert logits[0, 0].item() == pytest.approx(expected, abs=1e-4)
    assert logits[0, 0].item() == pytest.approx(-12.2452, abs=1e-3)
    assert logits[0, 1].item() == pytest.approx(10 * math.cos(math.radians(80)), abs=1e-4)


def test_arcface_margin_lowers_only_the_target_logit_and_has_finite_gradients_at_the_centre() -> None:
    head = ArcFaceHead(embedding_dim=8, num_classes=4)
    embeddings = F.normalize(head.weight.detach()[[1, 3]].clone(), dim=1).requires_grad_(True)
    labels = torch.tensor([1, 3])
    with_margin = head(embeddings, labels)
    plain = head(embeddings)
    mask = F.one_hot(labels, 4).bool()
    assert torch.all(with_margin[mask] < plain[mask])
    torch.testing.assert_close(with_margin[~mask], plain[~mask])
    with_margin.sum().backward()  # cos = 1 exactly: sqrt(1 - cos^2) must not give NaN gradients
    assert torch.isfinite(embeddings.grad).all()


def test_arcface_rejects_a_margin_that_breaks_monotonicity() -> None:
    with pytest.raises(ValueError, match="margin"):
        ArcFaceHead(4, 2, margin=2.0)


def test_registered_under_the_timm_entry_points() -> None:
    assert registry.get("identity_encoders", "timm") is TimmIdentityEncoder
    assert registry.get("attribute_encoders", "timm") is TimmAttributeEncoder


def test_arcface_cosines_stay_float32_under_bf16_autocast() -> None:
    head = ArcFaceHead(embedding_dim=16, num_classes=7, scale=32.0, margin=0.3)
    embeddings = F.normalize(torch.randn(5, 16), dim=1)
    labels = torch.tensor([0, 1, 2, 3, 4])
    expected = head(embeddings, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(embeddings.bfloat16(), labels)
    assert logits.dtype == torch.float32
    # only the bf16 rounding of the embeddings themselves remains (about 3 digits), not a bf16 matmul's
    torch.testing.assert_close(logits, expected, rtol=0, atol=32 * 2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert head.cosine(embeddings).dtype == torch.float32
    torch.testing.assert_close(head.cosine(embeddings), embeddings @ F.normalize(head.weight, dim=1).t())


def test_frozen_batch_norms_stay_in_eval_mode_and_keep_their_statistics_while_the_encoder_trains():
    from ifadit.nets.timm_encoders import TimmAttributeEncoder

    encoder = TimmAttributeEncoder("resnet10t", n_styles=2, style_dim=8, freeze_batchnorm=True).train()
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(m.training for m in norms) and encoder.training and encoder.to_styles.training
    before = [m.running_mean.clone() for m in norms]
    encoder(torch.rand(4, 3, 32, 32) * 2 - 1).sum().backward()
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, norms, strict=True))
    assert all(m.weight.grad is not None for m in norms)  # their affine parameters still learn
    trained = TimmAttributeEncoder("resnet10t", n_styles=2, style_dim=8).train()
    assert all(m.training for m in trained.modules())

"""The recognizer contract as plain checks: what ifadit's metrics assume of every identity judge.

A recognizer is checked as built (recognizers load weights, so there is no factory here), on images in
ifadit's convention (float NCHW RGB in [-1, 1]). Random images are used unless you pass your own: give
real faces (and a face-free image) to a recognizer with a detector, so the "face found" rows get checked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ifadit.recognizers.base import InputConvention, Recognition, Recognizer, Verification
from ifadit.testing._common import CannotBuild, ContractReport, run_checks, seeded


@dataclass(frozen=True)
class RecognizerContract:
    """Sizes and tolerances of the recognizer checks."""

    batch: int = 3
    image_size: int | None = None  # default: the recognizer's declared input size, else 64
    # Unit-norm embeddings: None expects them when the rule is cosine (ifadit's encoders normalise).
    unit_norm: bool | None = None
    atol: float = 1e-4  # repeat calls and single-image vs batched calls must agree this closely
    seed: int = 0


def _label(recognizer: Recognizer) -> str:
    return type(recognizer).__name__


def _images(recognizer: Recognizer, images: Tensor | None, contract: RecognizerContract) -> Tensor:
    if images is not None:
        return images
    size = contract.image_size or recognizer.convention.size or 64
    with seeded(contract.seed):
        return torch.rand(contract.batch, 3, size, size) * 2 - 1


def check_declarations(
    recognizer: Recognizer, images: Tensor | None = None, contract: RecognizerContract | None = None
) -> None:
    """``embedding_dim``, ``convention`` and ``verification`` are declared with the right types, ``rule``
    says how to get a missing threshold, and ``describe()`` reports them."""
    name = _label(recognizer)
    assert isinstance(recognizer, Recognizer), f"{name} is not an ifadit.recognizers.Recognizer"
    dim = getattr(recognizer, "embedding_dim", None)
    assert isinstance(dim, int) and dim > 0, f"{name}: embedding_dim must be a positive int, got {dim!r}"
    assert isinstance(getattr(recognizer, "convention", None), InputConvention), (
        f"{name}: convention must be an ifadit.recognizers.InputConvention"
    )
    rule = recognizer.verification
    assert rule is None or isinstance(rule, Verification), (
        f"{name}: verification must be a Verification or None"
    )
    if rule is None:
        try:
            _ = recognizer.rule
        except ValueError as exc:
            assert "calibrate_threshold" in str(exc), (
                f"{name}: a missing threshold's error does not say how to set one"
            )
        else:
            raise AssertionError(f"{name}: .rule without a verification threshold must raise ValueError")
    else:
        assert recognizer.rule is rule, f"{name}: .rule is not the declared verification"
    described = recognizer.describe()
    expected = {"embedding_dim": dim, "verification": None if rule is None else rule.describe()}
    for key, value in expected.items():
        assert described.get(key) == value, (
            f"{name}: describe()[{key!r}] is {described.get(key)!r}, not {value!r}"
        )


def _recognize(recognizer: Recognizer, images: Tensor) -> Recognition:
    with torch.no_grad():
        result = recognizer(images)
    assert isinstance(result, Recognition), (
        f"{_label(recognizer)} returned a {type(result).__name__}, not a Recognition"
    )
    return result


def check_embeddings(
    recognizer: Recognizer, images: Tensor | None = None, contract: RecognizerContract | None = None
) -> None:
    """A batch gives (B, embedding_dim) finite float embeddings and a (B,) bool ``found``; rows without a
    face are zero; unit norm where the contract expects it."""
    c = contract or RecognizerContract()
    name, images = _label(recognizer), _images(recognizer, images, c)
    result = _recognize(recognizer, images)
    emb, found = result.embeddings, result.found
    batch = images.shape[0]
    assert emb.shape == (batch, recognizer.embedding_dim), (
        f"{name}: embeddings have shape {tuple(emb.shape)}, expected ({batch}, {recognizer.embedding_dim})"
    )
    assert emb.is_floating_point() and torch.isfinite(emb).all(), f"{name}: embeddings are not finite floats"
    assert found.dtype == torch.bool and found.shape == (batch,), (
        f"{name}: found must be a ({batch},) bool tensor, got {found.dtype} {tuple(found.shape)}"
    )
    assert torch.count_nonzero(emb[~found]) == 0, f"{name}: a row without a face has a non-zero embedding"
    unit = c.unit_norm
    if unit is None:
        unit = recognizer.verification is not None and recognizer.verification.measure == "cosine"
    if unit and found.any():
        norms = emb[found].double().norm(dim=1)
        worst = (norms - 1).abs().max().item()
        assert worst <= 1e-4, f"{name}: embeddings are not unit vectors (norm off by up to {worst:.3g})"


def check_deterministic(
    recognizer: Recognizer, images: Tensor | None = None, contract: RecognizerContract | None = None
) -> None:
    """A repeated call and each image on its own give the batch's embeddings and verdicts: a judge's
    score may not depend on what else is in the batch."""
    c = contract or RecognizerContract()
    name, images = _label(recognizer), _images(recognizer, images, c)
    first, again = _recognize(recognizer, images), _recognize(recognizer, images)
    assert torch.equal(first.found, again.found), f"{name}: a repeated call finds faces in other images"
    gap = (first.embeddings - again.embeddings).abs().max().item()
    assert gap <= c.atol, f"{name}: a repeated call moves the embeddings by {gap:.3g} (> {c.atol:g})"
    for i in range(images.shape[0]):
        alone = _recognize(recognizer, images[i : i + 1])
        assert bool(alone.found[0]) == bool(first.found[i]), (
            f"{name}: image {i} alone gets another face verdict"
        )
        gap = (alone.embeddings[0] - first.embeddings[i]).abs().max().item()
        assert gap <= c.atol, f"{name}: image {i} alone embeds {gap:.3g} away from its batched embedding"


def check_verification(
    recognizer: Recognizer, images: Tensor | None = None, contract: RecognizerContract | None = None
) -> None:
    """A face matches itself, scores are symmetric, and ``same`` is exactly "score >= threshold" under the
    declared measure (cosine, or Euclidean distance <= threshold)."""
    c = contract or RecognizerContract()
    rule = recognizer.verification
    if rule is None:
        raise CannotBuild("no verification threshold declared")
    name, images = _label(recognizer), _images(recognizer, images, c)
    result = _recognize(recognizer, images)
    emb = result.embeddings[result.found]
    if emb.shape[0] == 0:
        raise CannotBuild("no face found in the images; pass images with faces")
    assert rule.same(emb, emb).all(), f"{name}: a face does not match itself under {rule.describe()}"
    scores = rule.score_matrix(emb, emb)
    assert torch.allclose(scores, scores.T), f"{name}: similarity scores are not symmetric"
    for i in range(emb.shape[0]):
        for j in range(emb.shape[0]):
            a, b = emb[i].double(), emb[j].double()
            if rule.measure == "cosine":
                expected = torch.nn.functional.cosine_similarity(a, b, dim=0).item() >= rule.threshold
            else:
                expected = (a - b).norm().item() <= rule.threshold
            assert bool(rule.same(emb[i], emb[j])) == expected, (
                f"{name}: same() disagrees with {rule.describe()} for faces {i} and {j}"
            )


def check_rejects_bad_input(
    recognizer: Recognizer, images: Tensor | None = None, contract: RecognizerContract | None = None
) -> None:
    """Anything but a (B, 3, H, W) batch is a ValueError, not a wrong answer."""
    c = contract or RecognizerContract()
    name, images = _label(recognizer), _images(recognizer, images, c)
    for bad, what in ((images[0], "one image without a batch axis"), (images[:, :1], "a one-channel batch")):
        try:
            recognizer(bad)
        except ValueError:
            continue
        raise AssertionError(f"{name}: {what} {tuple(bad.shape)} was accepted; expected a ValueError")


def check_gradients(
    recognizer: Recognizer, images: Tensor | None = None, contract: RecognizerContract | None = None
) -> None:
    """A recognizer that declares itself differentiable passes finite, non-zero gradients to the images."""
    c = contract or RecognizerContract()
    if not recognizer.convention.differentiable:
        raise CannotBuild("declared not differentiable")
    name = _label(recognizer)
    images = _images(recognizer, images, c).clone().requires_grad_(True)
    embeddings = recognizer(images).embeddings
    with seeded(c.seed):
        direction = torch.randn_like(embeddings)
    (embeddings * direction).sum().backward()
    grad = images.grad
    assert grad is not None and torch.isfinite(grad).all(), f"{name}: no finite gradient reached the images"
    assert grad.abs().sum() > 0, f"{name}: declares itself differentiable but the images' gradient is zero"


RecognizerCheck = Callable[[Recognizer, Tensor | None, RecognizerContract | None], None]

#: Every recognizer check by name, in the order :func:`check_recognizer` runs them.
RECOGNIZER_CHECKS: dict[str, RecognizerCheck] = {
    "declarations": check_declarations,
    "embeddings": check_embeddings,
    "deterministic": check_deterministic,
    "verification": check_verification,
    "rejects_bad_input": check_rejects_bad_input,
    "gradients": check_gradients,
}


def check_recognizer(
    recognizer: Recognizer,
    images: Tensor | None = None,
    contract: RecognizerContract | None = None,
    *,
    include: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> ContractReport:
    """Run the recognizer contract on ``images`` (random ones by default); AssertionError at the first
    violated property. The recognizer is put in eval mode first, as the metrics use it."""
    contract = contract or RecognizerContract()
    recognizer.eval()
    checks = {
        name: (lambda check=check: check(recognizer, images, contract))
        for name, check in RECOGNIZER_CHECKS.items()
    }
    return run_checks(checks, include, exclude)

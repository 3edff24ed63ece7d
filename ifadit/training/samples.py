"""The columns of the sample grids the task logs while it trains, per phase."""

from __future__ import annotations

import hashlib

from torch import Tensor, nn

from ifadit.anonymizer import IFADIT
from ifadit.keys import SecretKey

# Public, fixed validation keys: validation numbers stay comparable across epochs and runs. They are not
# secrets (anyone can derive them from this source), and no user key is ever used in training or logged.
VALIDATION_KEYS = tuple(
    SecretKey(hashlib.sha256(f"ifadit/validation-key/{i}".encode()).digest()) for i in range(2)
)


def sample_columns(
    phase: str,
    model: IFADIT | None,
    images: Tensor,
    parameters: Tensor | None = None,
    renderer: tuple[nn.Module, nn.Module] | None = None,
) -> dict[str, Tensor] | None:
    """Columns by label: original | render (of the images' ``parameters`` by the (parameter mapper,
    generator) ``renderer``) in the render phase; original | reconstruction in phase 1; original | key A |
    key B | recovered | wrong key (B's recovery of A's face) with a flow. None where there is nothing to
    draw (the recognizer phase)."""
    if phase == "render":
        if renderer is None or parameters is None:
            return None
        parameter_mapper, generator = renderer
        return {"original": images, "render": generator(parameter_mapper(parameters[: images.shape[0]]))}
    if model is None:
        return None
    if phase == "disentangle":
        return {"original": images, "reconstruction": model.reconstruct(images)}
    n = images.shape[0]
    cond_a = model.key_scheme(VALIDATION_KEYS[0], batch_size=n).to(images.device)
    cond_b = model.key_scheme(VALIDATION_KEYS[1], batch_size=n).to(images.device)
    anon_a, recovered = model.anonymize_and_recover(images, cond_a)
    return {
        "original": images,
        "key A": anon_a.image,
        "key B": model.anonymize(images, cond_b).image,
        "recovered": recovered.image,
        "wrong key": model.recover(anon_a.image, cond_b).image,
    }

"""ifadit's own recognizers (group ``recognizers``): the shipped SynthFaces judge, a SynthFaces recognizer
trained here, ArcFace, FaceNet.

They wrap the identity encoders of :mod:`ifadit.nets`; none downloads anything. All three assume aligned
face crops and have no detector of their own, so every image counts as holding a face (``found`` all
True): for "no face" verdicts use a detecting recognizer such as the ``dlib`` plugin.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ifadit import registry
from ifadit.nets import IdentityEncoder
from ifadit.nets.arcface import DEFAULT_CROP, ArcFaceEncoder
from ifadit.nets.facenet import FACENET_INPUT_SIZE, FaceNetCASIAEncoder, FaceNetVGGFace2Encoder
from ifadit.recognizers.base import EncoderRecognizer
from ifadit.weights import WeightsError, load_checkpoint, load_state_dict_by_name

# Where an identity encoder's tensors live in the checkpoints ifadit's task writes: ``recognizer.`` in the
# recognizer phase, ``model.identity_encoder.`` in the others (the containers
# ifadit.training.checkpoint.canonical strips).
TASK_CHECKPOINT_PREFIXES = ("recognizer.", "model.identity_encoder.", "identity_encoder.")

# TreB1eN's face_verify.py accepts a pair when the squared L2 distance of the unit embeddings is below
# 1.54; for unit vectors ||a - b||^2 = 2 - 2 cos, so that is cos >= 1 - 1.54 / 2 = 0.23.
ARCFACE_COSINE_THRESHOLD = 1.0 - 1.54 / 2.0


def identity_encoder_spec_from_recipe(recipe: str | os.PathLike[str]) -> Any:
    """The ``model.identity_encoder`` entry of a LightningCLI recipe (short names allowed)."""
    path = Path(recipe)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"cannot parse recipe {path}: {str(exc).splitlines()[0]}") from exc
    spec = (config or {}).get("model", {}).get("identity_encoder") if isinstance(config, dict) else None
    if spec is None:
        raise ValueError(f"recipe {path} has no model.identity_encoder to build the recognizer from")
    return spec


def identity_encoder_state(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The identity encoder's tensors of an ifadit task checkpoint, without their container prefix."""
    raw = load_checkpoint(checkpoint, weights_only=True)
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise WeightsError(f"{checkpoint} holds no state dict")
    for prefix in TASK_CHECKPOINT_PREFIXES:
        found = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if found:
            return found
    raise WeightsError(
        f"{checkpoint} has no identity encoder (no key starts with {' / '.join(TASK_CHECKPOINT_PREFIXES)})"
    )


class SynthFacesRecognizer(EncoderRecognizer):
    """An identity encoder ifadit trained (``phase: recognizer``, e.g. the quickstart judge), read from the
    task checkpoint. The checkpoint holds only tensors, so the network is built from the recipe it was
    trained with (``config``) or from an ``identity_encoder`` spec / module.

    No threshold is published for a recognizer trained here: give ``threshold`` or calibrate it
    (:func:`ifadit.recognizers.calibrate_threshold`, which ``ifadit evaluate`` runs on the validation split).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike[str],
        config: str | os.PathLike[str] | None = None,
        identity_encoder: Mapping[str, Any] | str | IdentityEncoder | None = None,
        threshold: float | None = None,
    ) -> None:
        if (config is None) == (identity_encoder is None):
            raise ValueError(
                "give the recipe the checkpoint was trained with (config=RECIPE.yaml) or an identity_encoder "
                "spec, exactly one of them"
            )
        spec = identity_encoder_spec_from_recipe(config) if config is not None else identity_encoder
        encoder = registry.instantiate("identity_encoders", spec)
        if not isinstance(encoder, IdentityEncoder):
            raise ValueError(
                f"the identity_encoder spec built a {type(encoder).__name__}, not an IdentityEncoder"
            )
        load_state_dict_by_name(encoder, identity_encoder_state(checkpoint), what=str(checkpoint))
        adapter = getattr(encoder, "adapter", None)
        super().__init__(encoder, threshold=threshold, input_size=getattr(adapter, "in_size", None))
        self.checkpoint_path = str(checkpoint)
        self.requires_grad_(False)
        self.eval()


#: The shipped judge: its manifest name and its network, as ``recipes/foundations/judge.yaml`` trains it (a
#: test keeps the two equal; the recipe is not part of an installed package, so the network is written here).
SHIPPED_JUDGE = "synthfaces64-judge"
SHIPPED_JUDGE_ENCODER = {"backbone": "resnet10t", "embedding_dim": 128, "in_size": 64}


class ShippedJudge(EncoderRecognizer):
    """The SynthFaces judge shipped with ifadit (``ifadit/foundations/synthfaces64-judge.safetensors``,
    sha256 checked on load): a ResNet-10t trained apart from every anonymizer's identity encoder, on other
    identities, that scores anonymizers of 64 px SynthFaces and never trains one. No published threshold: give
    one or calibrate it (``ifadit evaluate`` does, on the validation split)."""

    def __init__(self, threshold: float | None = None) -> None:
        encoder = registry.create(
            "identity_encoders", "timm", checkpoint=SHIPPED_JUDGE, **SHIPPED_JUDGE_ENCODER
        )
        super().__init__(encoder, threshold=threshold, input_size=SHIPPED_JUDGE_ENCODER["in_size"])
        self.requires_grad_(False)


class ArcFaceRecognizer(EncoderRecognizer):
    """ArcFace IR-SE50 (TreB1eN weights) on FFHQ-aligned faces; threshold cos >= 0.23 (TreB1eN's 1.54
    squared-L2 verification default)."""

    def __init__(
        self,
        checkpoint: str | None = None,
        threshold: float = ARCFACE_COSINE_THRESHOLD,
        input_size: int = 256,
        crop: tuple[int, int, int, int] | None = DEFAULT_CROP,
        allow_random_init: bool = False,
    ) -> None:
        encoder = ArcFaceEncoder(
            checkpoint=checkpoint, input_size=input_size, crop=crop, allow_random_init=allow_random_init
        )
        super().__init__(encoder, threshold=threshold, input_size=input_size)


class _FaceNetRecognizer(EncoderRecognizer):
    encoder_class: type = FaceNetVGGFace2Encoder

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        threshold: float | None = None,
        input_size: int = FACENET_INPUT_SIZE,
        allow_random_init: bool = False,
    ) -> None:
        encoder = self.encoder_class(
            checkpoint=checkpoint, input_size=input_size, allow_random_init=allow_random_init
        )
        super().__init__(encoder, threshold=threshold, input_size=input_size)


class FaceNetVGGFace2Recognizer(_FaceNetRecognizer):
    """FaceNet (InceptionResnetV1) trained on VGGFace2, on MTCNN-style face crops. facenet-pytorch
    publishes no verification threshold: give one or calibrate it."""

    encoder_class = FaceNetVGGFace2Encoder


class FaceNetCASIARecognizer(_FaceNetRecognizer):
    """FaceNet (InceptionResnetV1) trained on CASIA-WebFace; no published threshold (give or calibrate)."""

    encoder_class = FaceNetCASIAEncoder

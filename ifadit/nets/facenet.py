"""FaceNet (InceptionResnetV1 from facenet-pytorch) identity encoders, loaded from local files only.

facenet-pytorch's ``InceptionResnetV1(pretrained='vggface2')`` downloads its weights; here the network is
always built with ``pretrained=None`` and the published file is read from disk through the weights
manifest. The published files (``20180402-114759-vggface2.pt``, ``20180408-102900-casia-webface.pt``) are
plain state dicts of the whole classifier: the embedding network's keys plus ``logits.weight`` /
``logits.bias`` (8631 VGGFace2 identities, 10575 CASIA-WebFace identities). The logits are dropped: an
encoder only needs the 512-d embedding.

Input range: facenet-pytorch feeds the network ``(pixel - 127.5) / 128`` (its
``fixed_image_standardization``). Our images are ``x = pixel / 127.5 - 1 = (pixel - 127.5) / 127.5``, so
the network input is ``x * 127.5 / 128``.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from torch import Tensor

from ifadit.nets.base import IdentityEncoder
from ifadit.nets.image import resize_square
from ifadit.nets.irse import complete_batchnorm_counters, strip_data_parallel
from ifadit.weights import (
    WeightsError,
    WeightSpec,
    load_checkpoint,
    load_state_dict_by_name,
    register_weights,
    resolve,
)

RELEASE_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
FACENET_INPUT_SIZE = 160  # the crop size facenet-pytorch's MTCNN produces and the models were trained on
PIXEL_SCALE = 127.5 / 128.0  # [-1, 1] -> facenet's (pixel - 127.5) / 128

FACENET_VGGFACE2 = register_weights(
    WeightSpec(
        name="facenet-vggface2",
        filename="20180402-114759-vggface2.pt",
        layout="facenet-pytorch",
        source=RELEASE_URL + "20180402-114759-vggface2.pt (facenet-pytorch v2.2.9 release asset)",
        description="FaceNet InceptionResnetV1 trained on VGGFace2, facenet-pytorch state dict (8631 logits)",
    )
)
FACENET_CASIA = register_weights(
    WeightSpec(
        name="facenet-casia",
        filename="20180408-102900-casia-webface.pt",
        layout="facenet-pytorch",
        source=RELEASE_URL + "20180408-102900-casia-webface.pt (facenet-pytorch v2.2.9 release asset)",
        description="FaceNet InceptionResnetV1 on CASIA-WebFace, facenet-pytorch state dict (10575 logits)",
    )
)

_CLASSES_OF = {FACENET_VGGFACE2.name: 8631, FACENET_CASIA.name: 10575}


def facenet_embedding_state(state: Any, weights_name: str, source: str) -> dict[str, Tensor]:
    """The embedding-network part of a facenet-pytorch file, after checking it is the expected variant."""
    if not isinstance(state, dict):
        raise WeightsError(f"{source}: expected a facenet-pytorch state dict, got a {type(state).__name__}")
    logits = state.get("logits.weight")
    expected = _CLASSES_OF[weights_name]
    if logits is not None and logits.shape[0] != expected:
        other = next((name for name, n in _CLASSES_OF.items() if n == logits.shape[0]), None)
        guess = f" (that is the {other!r} file)" if other else ""
        raise WeightsError(
            f"{source}: its classifier has {logits.shape[0]} classes{guess}, "
            f"but {weights_name!r} has {expected}"
        )
    return {k: v for k, v in state.items() if not k.startswith("logits.")}


class FaceNetEncoder(IdentityEncoder):
    """Frozen FaceNet embedding of a face crop; subclasses pick the training set (the weights entry).

    Expects roughly aligned face crops (facenet-pytorch's MTCNN crops a face with a small margin); any
    size is resized to ``input_size``. Gradients flow to the images, never into the network.
    """

    weights_name: str = ""
    embedding_dim = 512

    def __init__(
        self,
        checkpoint: str | os.PathLike[str] | None = None,
        input_size: int = FACENET_INPUT_SIZE,
        allow_random_init: bool = False,
    ) -> None:
        super().__init__()
        # Imported here: facenet-pytorch pulls in torchvision, which the weights report does not need.
        from facenet_pytorch import InceptionResnetV1

        self.input_size = input_size
        self.net = InceptionResnetV1(pretrained=None, classify=False)
        self.checkpoint_path = self._load(checkpoint, allow_random_init)
        self.net.requires_grad_(False)
        self.train(False)

    def _load(self, checkpoint: str | os.PathLike[str] | None, allow_random_init: bool) -> str | None:
        try:
            path = resolve(self.weights_name, checkpoint)
        except WeightsError:
            if checkpoint is not None or not allow_random_init:
                raise
            warnings.warn(
                f"{type(self).__name__}: no {self.weights_name!r} weights found, using a RANDOM network "
                "(allow_random_init=True; only meaningful for tests)",
                stacklevel=3,
            )
            return None
        state = facenet_embedding_state(load_checkpoint(path), self.weights_name, str(path))
        # Files written before PyTorch 0.4.1 have no BN counters; torch tolerates that, the strict check not.
        state = complete_batchnorm_counters(self.net, strip_data_parallel(state))
        load_state_dict_by_name(self.net, state, what=f"{self.weights_name} checkpoint {path}")
        return str(path)

    def train(self, mode: bool = True) -> FaceNetEncoder:
        # Always in eval mode: batch-norm statistics and dropout are part of the frozen model.
        return super().train(False)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected RGB images (batch, 3, H, W), got {tuple(images.shape)}")
        images = resize_square(images, self.input_size)
        # InceptionResnetV1 built with classify=False already L2-normalises its output.
        return self.net(images * PIXEL_SCALE)


class FaceNetVGGFace2Encoder(FaceNetEncoder):
    """FaceNet trained on VGGFace2 (``facenet-vggface2`` weights)."""

    weights_name = FACENET_VGGFACE2.name


class FaceNetCASIAEncoder(FaceNetEncoder):
    """FaceNet trained on CASIA-WebFace (``facenet-casia`` weights)."""

    weights_name = FACENET_CASIA.name

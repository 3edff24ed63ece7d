"""Loaders for the official iFADIT release files (github lixionga/ProFace, ``FacePrivacy/iFADIT``).

What the official code shows about the files (``test/test.py`` and ``utils/utils.py``): each one is read
with ``torch.load(path)`` and handed to ``loading_pretrianed(pretrained_dict, net)``, which walks
``pretrained_dict.items()`` and calls ``.size()`` on every value — so every file is a flat mapping of
tensors (a plain state dict, no ``{'state_dict': ...}`` container). That function copies tensors **by
position** (the i-th tensor whose shape fits), so the key names inside the files are not visible in the
public code. The modules the files were saved from are:

* ``mlp_best.pth``: ``LatentMapper`` -> ``model.0.{weight,bias}`` (512x1024, 512), ``model.2.{weight,bias}``
  (512x512, 512); the same MLP for all 14 styles.
* ``fuse_mlp_*.pth``: ``FusionMapper10`` -> ``model.{0,2,4,6}.{weight,bias}`` (512->1024->2048->1024->512).
* ``G_net_*.pth``: FrEIA ``SequenceINN(512)`` of 4 conditional ``AllInOneBlock`` s ->
  ``module_list.<i>.{global_scale, global_offset, w_perm, w_perm_inv, subnet.{0,2,4,6,8}.{weight,bias}}``.
* ``attr_best.pth``: the pSp module (``encoder.*`` GradualStyleEncoder and ``decoder.*`` StyleGAN2).

Here they load **by name** after removing what a training script typically wraps around a state dict (a
``state_dict``/``net``/``model`` container, ``nn.DataParallel``'s ``module.`` prefix, or any one common
prefix in front of exactly the module's own keys). If a real file turns out to use other names, the
error says whether its tensors line up in order and shape with the module; ``match="position"`` then
reproduces the official positional loading, but only when every tensor lines up exactly.

The attribute encoder is a component of its own, registered as ``psp-official``
(:class:`OfficialAttributeEncoder`): it converts our [-1, 1] images to the [0, 1] the file was trained on, so
recipes and the ``ifadit-ffhq256-official`` preset name ``attr_best.pth`` like any other checkpoint.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ifadit.flows.allinone import AllInOneFlow
from ifadit.nets.base import AttributeEncoder
from ifadit.nets.irse import complete_batchnorm_counters, strip_data_parallel
from ifadit.nets.mappers import CompensationMLP, LatentMapper
from ifadit.nets.psp import PSPEncoder, n_styles_for, output_size_for
from ifadit.weights import (
    MANIFEST,
    WeightsError,
    WeightSpec,
    load_checkpoint,
    load_state_dict_by_name,
    register_weights,
    resolve,
    strip_prefix,
)

OFFICIAL_SOURCE = (
    "the Google Drive folder linked under 'Checkpoints' in the iFADIT README of github.com/lixionga/ProFace "
    "(folder FacePrivacy/iFADIT): drive.google.com/drive/folders/1XIE9_3LXKiIJNdtroyZvwCKaKnu-x12O"
)

IFADIT_ATTR_ENCODER = register_weights(
    WeightSpec(
        name="ifadit-attr-encoder",
        filename="attr_best.pth",
        layout="ifadit-official",
        source=OFFICIAL_SOURCE,
        description="official iFADIT pSp attribute encoder (pSp state dict: encoder.* + decoder.*)",
    )
)
IFADIT_MAPPER = register_weights(
    WeightSpec(
        name="ifadit-mapper",
        filename="mlp_best.pth",
        layout="ifadit-official",
        source=OFFICIAL_SOURCE,
        description="official iFADIT LatentMapper state dict (1024 -> 512 -> 512, shared over 14 styles)",
    )
)
IFADIT_FLOW = register_weights(
    WeightSpec(
        name="ifadit-flow",
        filename="G_net_ffhq15INN607_20_202528.pth",
        layout="ifadit-official",
        source=OFFICIAL_SOURCE,
        description="official iFADIT identity flow, FrEIA SequenceINN(512) of 4 conditional AllInOneBlocks",
    )
)
IFADIT_COMPENSATOR = register_weights(
    WeightSpec(
        name="ifadit-compensator",
        filename="fuse_mlp_ffhq15INN607_20_202528.pth",
        layout="ifadit-official",
        source=OFFICIAL_SOURCE,
        description="official iFADIT compensation MLP (FusionMapper10, 512->1024->2048->1024->512)",
    )
)

Match = Literal["name", "position"]
_STYLE_KEY = re.compile(r"^styles\.(\d+)\.")
_CONTAINER_KEYS = ("state_dict", "net", "model", "model_state_dict", "params")
PathLike = str | os.PathLike[str]


def read_official_state_dict(path: PathLike, what: str = "checkpoint") -> dict[str, Tensor]:
    """The flat tensor mapping inside an official file, with containers and ``module.`` prefixes removed."""
    obj: Any = load_checkpoint(path)
    source = f"{what} {path}"
    while isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        inner = next((k for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            keys = ", ".join(repr(k) for k in list(obj)[:6])
            raise WeightsError(
                f"{source}: not a state dict and no known container key; top-level keys: {keys}"
            )
        obj = obj[inner]
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError(f"{source}: expected a state dict (mapping of tensors), got {type(obj).__name__}")
    state = dict(obj)
    while state and all(k.startswith("module.") for k in state):  # DataParallel, possibly nested
        state = strip_data_parallel(state)
    return state


def _align_prefix(state: dict[str, Tensor], own_keys: list[str]) -> dict[str, Tensor]:
    """Drop one common prefix (``mlp.``, ``G_net.``...) if, without it, the keys are exactly the module's."""
    if not own_keys or set(state) == set(own_keys):
        return state
    first = own_keys[0]
    for key in state:
        if key.endswith("." + first):
            prefix = key[: -len(first)]
            if all(k.startswith(prefix) for k in state):
                stripped = {k[len(prefix) :]: v for k, v in state.items()}
                if set(stripped) == set(own_keys):
                    return stripped
    return state


def _shapes_line_up(module: nn.Module, state: Mapping[str, Tensor]) -> bool:
    own = list(module.state_dict().values())
    theirs = list(state.values())
    return len(own) == len(theirs) and all(a.shape == b.shape for a, b in zip(own, theirs, strict=True))


def load_state_into(
    module: nn.Module, state: Mapping[str, Tensor], source: str, match: Match = "name"
) -> None:
    """Load ``state`` into ``module`` strictly: by name (after prefix alignment) or by exact position."""
    own_keys = list(module.state_dict())
    state = dict(state)
    if match == "position":
        if not _shapes_line_up(module, state):
            raise WeightsError(
                f"{source}: match='position' needs the file's {len(state)} tensors to match the "
                f"shapes of the {type(module).__name__}'s {len(own_keys)} tensors in order; they do not"
            )
        state = dict(zip(own_keys, state.values(), strict=True))
    elif match != "name":
        raise ValueError(f"match must be 'name' or 'position', got {match!r}")
    state = _align_prefix(state, own_keys)
    try:
        load_state_dict_by_name(module, state, what=source)
    except WeightsError as exc:
        if match == "name" and _shapes_line_up(module, state):
            raise WeightsError(
                f"{exc}; its tensors do line up in order and shape with the module (the way the official "
                "loader matches them), so match='position' would load it"
            ) from exc
        raise


def load_official_into(module: nn.Module, path: PathLike, what: str, match: Match = "name") -> nn.Module:
    """Load an official file into ``module`` (see :func:`load_state_into`); returns it in eval mode."""
    load_state_into(module, read_official_state_dict(path, what), f"{what} {path}", match)
    return module.eval()


def load_official_mapper(
    path: PathLike | None = None, n_styles: int = 14, match: Match = "name"
) -> LatentMapper:
    """``mlp_best.pth`` -> :class:`LatentMapper` (identity 512 + attributes 512 -> W 512)."""
    mapper = LatentMapper(id_dim=512, style_dim=512, n_styles=n_styles, hidden=512)
    return load_official_into(mapper, resolve(IFADIT_MAPPER.name, path), "iFADIT mapper", match)


def load_official_compensator(path: PathLike | None = None, match: Match = "name") -> CompensationMLP:
    """``fuse_mlp_*.pth`` -> :class:`CompensationMLP` (512 -> 1024 -> 2048 -> 1024 -> 512)."""
    compensator = CompensationMLP(dim=512, hidden=(1024, 2048, 1024))
    return load_official_into(
        compensator, resolve(IFADIT_COMPENSATOR.name, path), "iFADIT compensator", match
    )


def _flow_shape(state: Mapping[str, Tensor]) -> tuple[int, int, int, tuple[int, ...]]:
    """(dim, cond_dim, num_blocks, hidden) read off a SequenceINN-of-AllInOneBlocks state dict."""
    blocks = {
        int(k.split(".")[1]) for k in state if k.startswith("module_list.") and k.split(".")[1].isdigit()
    }
    if not blocks or "module_list.0.global_scale" not in state:
        return 512, 512, 4, (256, 128, 128, 256)  # the official shape; the strict load reports what differs
    dim = state["module_list.0.global_scale"].shape[-1]
    linear = sorted(
        (int(k.split(".")[3]), v)
        for k, v in state.items()
        if k.startswith("module_list.0.subnet.") and k.endswith(".weight")
    )
    cond_dim = linear[0][1].shape[1] - (dim - dim // 2)
    hidden = tuple(w.shape[0] for _, w in linear[:-1])
    return dim, cond_dim, max(blocks) + 1, hidden


def load_official_flow(path: PathLike | None = None, match: Match = "name") -> AllInOneFlow:
    """``G_net_*.pth`` -> :class:`AllInOneFlow`; dims, block count and subnet widths come from the file
    (the official one is dim 512, key 512, 4 blocks, subnet 768->256->128->128->256->512)."""
    path = resolve(IFADIT_FLOW.name, path)
    state = read_official_state_dict(path, "iFADIT flow")
    dim, cond_dim, num_blocks, hidden = _flow_shape(state)
    flow = AllInOneFlow(dim=dim, cond_dim=cond_dim, num_blocks=num_blocks, hidden=hidden)
    load_state_into(flow, state, f"iFADIT flow {path}", match)
    return flow.eval()


class OfficialAttributeEncoder(AttributeEncoder):
    """An attribute encoder that reads images in [0, 1], behind the [-1, 1] convention of everything else.

    The official pipeline hands pSp the dataset images as they are, in [0, 1] (only the identity encoder
    gets ``2x - 1``), so ``attr_best.pth`` only gives its codes on [0, 1] images. This wrapper is the one
    place that converts; registered as ``psp-official``, it lets a recipe or a preset start from the file.

    ``checkpoint``: ``attr_best.pth`` (the manifest name ``ifadit-attr-encoder`` or a path), a pSp
    GradualStyleEncoder whose style count is read off the file. ``encoder``: instead, any attribute encoder
    trained on [0, 1] images, wrapped as it is. Neither: a fresh pSp encoder for ``output_size`` (the shape
    an ifadit checkpoint's weights are loaded into). ``match``: see :func:`load_state_into`.
    """

    def __init__(
        self,
        checkpoint: str | None = None,
        encoder: AttributeEncoder | None = None,
        output_size: int | None = 256,
        input_size: int = 256,
        frozen: bool = False,
        match: Match = "name",
    ) -> None:
        super().__init__()
        if checkpoint is not None and encoder is not None:
            raise ValueError("give checkpoint (attr_best.pth) or encoder (a module to wrap), not both")
        if encoder is None:
            encoder = (
                PSPEncoder(output_size=output_size, input_size=input_size, frozen=frozen)
                if checkpoint is None
                else _official_psp(checkpoint, output_size, input_size, frozen, match)
            )
        self.encoder = encoder
        self.n_styles = encoder.n_styles
        self.style_dim = encoder.style_dim
        self.frozen = frozen
        if frozen:
            self.requires_grad_(False)
            self.eval()

    def train(self, mode: bool = True) -> OfficialAttributeEncoder:
        return super().train(False if self.frozen else mode)

    def forward(self, images: Tensor) -> Tensor:
        return self.encoder((images + 1) / 2)


def _official_psp(
    checkpoint: PathLike, output_size: int | None, input_size: int, frozen: bool, match: Match
) -> PSPEncoder:
    """The pSp encoder half of ``attr_best.pth`` (the pSp module's flat state dict, ``encoder.*`` +
    ``decoder.*``; an encoder-only file is accepted too): GradualStyleEncoder IR-SE50, no latent_avg (the
    official opts set ``start_from_latent_avg=False``). The generator half is not used."""
    name = str(checkpoint)
    path = resolve(name) if name in MANIFEST else resolve(IFADIT_ATTR_ENCODER.name, checkpoint)
    state = read_official_state_dict(path, "iFADIT attribute encoder")
    encoder_state = strip_prefix(state, "encoder.") or state
    style_ids = {int(m.group(1)) for k in encoder_state if (m := _STYLE_KEY.match(k))}
    if not style_ids:
        raise WeightsError(
            f"iFADIT attribute encoder {path}: no 'encoder.styles.<i>.*' entries — not a pSp state dict"
        )
    n_styles = max(style_ids) + 1
    if output_size is not None and n_styles_for(output_size) != n_styles:
        raise WeightsError(
            f"iFADIT attribute encoder {path} has {n_styles} styles, but output_size={output_size} needs "
            f"{n_styles_for(output_size)}"
        )
    # Built on the meta device: the strict load below replaces every tensor, so random init is wasted.
    with torch.device("meta"):
        model = PSPEncoder(output_size=output_size_for(n_styles), input_size=input_size, frozen=frozen)
    model.to_empty(device="cpu")
    if match == "name":  # appending counters would break the order a positional match relies on
        encoder_state = complete_batchnorm_counters(model.encoder, encoder_state)
    load_state_into(model.encoder, encoder_state, f"iFADIT attribute encoder {path} (encoder.*)", match)
    return model.eval() if frozen else model


def load_official_attribute_encoder(
    path: PathLike | None = None, input_size: int = 256, frozen: bool = True, match: Match = "name"
) -> OfficialAttributeEncoder:
    """``attr_best.pth`` -> :class:`OfficialAttributeEncoder` (14 styles at 256 px), frozen by default."""
    return OfficialAttributeEncoder(
        checkpoint=str(resolve(IFADIT_ATTR_ENCODER.name, path)),
        output_size=None,
        input_size=input_size,
        frozen=frozen,
        match=match,
    ).eval()


__all__ = [
    "IFADIT_ATTR_ENCODER",
    "IFADIT_COMPENSATOR",
    "IFADIT_FLOW",
    "IFADIT_MAPPER",
    "OfficialAttributeEncoder",
    "load_official_attribute_encoder",
    "load_official_compensator",
    "load_official_flow",
    "load_official_into",
    "load_official_mapper",
    "load_state_into",
    "read_official_state_dict",
]

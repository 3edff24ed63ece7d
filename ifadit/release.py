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
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ifadit.flows.allinone import AllInOneFlow
from ifadit.nets.irse import complete_batchnorm_counters, strip_data_parallel
from ifadit.nets.mappers import CompensationMLP, LatentMapper
from ifadit.nets.psp import PSPEncoder, output_size_for
from ifadit.weights import (
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


class OfficialAttributeEncoder(PSPEncoder):
    """The official pSp attribute encoder: it was trained on images in [0, 1] (the official pipeline hands
    pSp the dataset images as they are and only the identity encoder ``2x - 1``), so our [-1, 1] images
    are converted at this edge."""

    def forward(self, images: Tensor) -> Tensor:
        return super().forward((images + 1) / 2)


def load_official_attribute_encoder(
    path: PathLike | None = None, input_size: int = 256, frozen: bool = True, match: Match = "name"
) -> OfficialAttributeEncoder:
    """``attr_best.pth`` (the pSp module's flat state dict: ``encoder.*`` + ``decoder.*``) ->
    :class:`OfficialAttributeEncoder` (GradualStyleEncoder IR-SE50, 14 styles at 256 px, no latent_avg:
    the official opts set ``start_from_latent_avg=False``). The generator half of the file is not used."""
    path = resolve(IFADIT_ATTR_ENCODER.name, path)
    state = read_official_state_dict(path, "iFADIT attribute encoder")
    encoder_state = strip_prefix(state, "encoder.") or state  # an encoder-only file is accepted too
    style_ids = {int(m.group(1)) for k in encoder_state if (m := _STYLE_KEY.match(k))}
    if not style_ids:
        raise WeightsError(
            f"iFADIT attribute encoder {path}: no 'encoder.styles.<i>.*' entries — not a pSp state dict"
        )
    n_styles = max(style_ids) + 1
    # Built on the meta device: the strict load below replaces every tensor, so random init is wasted.
    with torch.device("meta"):
        model = OfficialAttributeEncoder(
            output_size=output_size_for(n_styles), input_size=input_size, frozen=frozen
        )
    model.to_empty(device="cpu")
    if match == "name":  # appending counters would break the order a positional match relies on
        encoder_state = complete_batchnorm_counters(model.encoder, encoder_state)
    load_state_into(model.encoder, encoder_state, f"iFADIT attribute encoder {path} (encoder.*)", match)
    return model.eval()


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

"""rosinality's StyleGAN2 checkpoint files: the manifest entries, reading a file, and its architecture.

The pretrained generators the method relies on (FFHQ 256 px ``550000.pt``, the converted 1024 px config-f,
the ``decoder.*`` part of pSp/e4e checkpoints) are published in rosinality's layout; the generator and the
discriminator both read them through these functions.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ifadit.weights import MANIFEST, WeightsError, WeightSpec, load_checkpoint, register_weights, resolve

_ROSINALITY = "https://github.com/rosinality/stylegan2-pytorch"

register_weights(
    WeightSpec(
        name="stylegan2-ffhq-256",
        filename="stylegan2-ffhq-256.pt",
        layout="rosinality",
        source=(
            f"{_ROSINALITY} README, 'Pretrained Checkpoints' (FFHQ 256 px, 550k iterations, file 550000.pt; "
            "rename it) — the generator iFADIT and RiDDLE use"
        ),
        sha256=None,
        description="rosinality StyleGAN2 FFHQ 256 px, Generator(256, 512, 8, channel_multiplier=2)",
    )
)
register_weights(
    WeightSpec(
        name="stylegan2-ffhq-config-f",
        filename="stylegan2-ffhq-config-f.pt",
        layout="rosinality",
        source=(
            f"NVlabs stylegan2-ffhq-config-f.pkl converted with {_ROSINALITY} convert_weight.py "
            "(the file pSp/e4e also distribute)"
        ),
        sha256=None,
        description="StyleGAN2 FFHQ 1024 px config-f, Generator(1024, 512, 8, channel_multiplier=2)",
    )
)

# Constructor settings of the manifest entries (rosinality's Generator(size, 512, 8, cm)).
PRETRAINED_CONFIGS: dict[str, dict[str, int]] = {
    "stylegan2-ffhq-256": {"size": 256, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2},
    "stylegan2-ffhq-config-f": {"size": 1024, "style_dim": 512, "n_mlp": 8, "channel_multiplier": 2},
}


def rosinality_channels(
    size: int, channel_multiplier: int = 2, max_channels: int | None = None
) -> dict[int, int]:
    """Feature width per resolution: 512 up to 32 px, then ``2**(14 - log2 res) * channel_multiplier``."""
    table = {4: 512, 8: 512, 16: 512, 32: 512}
    for res in (64, 128, 256, 512, 1024):
        table[res] = (16384 // res) * channel_multiplier
    table = {res: ch for res, ch in table.items() if res <= size}
    if max_channels is not None:
        table = {res: min(ch, max_channels) for res, ch in table.items()}
    return table


def resolve_checkpoint(checkpoint: str | os.PathLike[str]) -> Path:
    """A manifest name (``stylegan2-ffhq-256``) or a path, as the file to read; shared with the
    discriminator, which reads the same rosinality files."""
    name = str(checkpoint)
    if name in MANIFEST:
        return resolve(name)
    return resolve(name, path=checkpoint)


def read_rosinality_checkpoint(
    path: str | os.PathLike[str], key: str | None = "g_ema"
) -> tuple[dict[str, Tensor], Tensor | None]:
    """The generator state dict under ``key`` (``None``: the file is a bare state dict) and ``latent_avg``.

    Training checkpoints also pickle their ``argparse.Namespace`` as ``args``; that one class is
    allowed so ``weights_only=True`` still loads them.
    """
    if Path(path).suffix == ".safetensors":  # ifadit's own shipped generators: a bare state dict
        state = dict(load_checkpoint(path))
        return state, state.pop("latent_avg", None)
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = load_checkpoint(path, weights_only=True)
    if not isinstance(ckpt, Mapping):
        raise WeightsError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if key is None:
        return dict(ckpt), None
    if key not in ckpt:
        raise WeightsError(
            f"{path}: no {key!r} entry in the checkpoint (top-level keys: {sorted(map(str, ckpt))[:10]}) "
            "— is it a rosinality StyleGAN2 checkpoint? Pass key=None for a bare state dict."
        )
    latent_avg = ckpt.get("latent_avg")
    if latent_avg is not None and not isinstance(latent_avg, Tensor):
        raise WeightsError(f"{path}: 'latent_avg' is a {type(latent_avg).__name__}, expected a tensor")
    return dict(ckpt[key]), latent_avg


def infer_config(state_dict: Mapping[str, Tensor]) -> dict[str, Any]:
    """size, style_dim, n_mlp and the channel table of a rosinality generator, read off its shapes."""
    try:
        style_dim = int(state_dict["conv1.conv.modulation.weight"].shape[1])
        n_levels = sum(1 for k in state_dict if re.fullmatch(r"to_rgbs\.\d+\.bias", k))
        n_mlp = sum(1 for k in state_dict if re.fullmatch(r"style\.\d+\.weight", k))
        channels = {4: int(state_dict["input.input"].shape[1])}
        for level in range(n_levels):
            channels[2 ** (level + 3)] = int(state_dict[f"convs.{2 * level}.conv.weight"].shape[1])
    except KeyError as exc:
        raise WeightsError(
            f"not a rosinality StyleGAN2 generator state dict: key {exc.args[0]!r} is missing"
        ) from None
    return {"size": 2 ** (n_levels + 2), "style_dim": style_dim, "n_mlp": n_mlp, "channels": channels}

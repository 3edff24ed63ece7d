"""A fake official iFADIT release and fake public weights: random tensors written in the real files' layouts.

* release folder: ``attr_best.pth`` (the pSp module's flat state dict, ``encoder.*`` + ``decoder.*``),
  ``mlp_best.pth`` and ``fuse_mlp_*.pth`` (plain state dicts, official_layouts.py), ``G_net_*.pth``
  (FrEIA ``SequenceINN`` names, saved from ``nn.DataParallel``);
* weights folder: ``model_ir_se50.pth`` (TreB1eN plain state dict) and ``stylegan2-ffhq-256.pt``
  (rosinality: ``g_ema`` + ``latent_avg``).

Every network has its official shape (about 1.1 GB on disk), so it takes a few seconds to write.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from official_layouts import FUSE_MLP, MLP_BEST, random_flow_state, random_state

from ifadit.nets.irse import IRBackbone
from ifadit.nets.psp import GradualStyleEncoder
from ifadit.nets.stylegan2 import StyleGAN2Generator

RELEASE_FILES = {
    "attr": "attr_best.pth",
    "mapper": "mlp_best.pth",
    "flow": "G_net_ffhq15INN607_20_202528.pth",
    "compensator": "fuse_mlp_ffhq15INN607_20_202528.pth",
}
PUBLIC_FILES = {"arcface": "model_ir_se50.pth", "stylegan2": "stylegan2-ffhq-256.pt"}


@dataclass(frozen=True)
class FakeWeights:
    release: Path  # the official release files only
    public: Path  # the public FFHQ weights only
    weights: Path  # a weights folder with both (release files linked in): what the preset reads

    def release_file(self, key: str) -> Path:
        return self.release / RELEASE_FILES[key]

    def public_file(self, key: str) -> Path:
        return self.public / PUBLIC_FILES[key]


def write_fake_weights(root: Path, seed: int = 0) -> FakeWeights:
    """Write the three folders under ``root``; networks keep their default (random) initialisation."""
    torch.manual_seed(seed)
    release, public, weights = root / "release", root / "public", root / "weights"
    for folder in (release, public, weights):
        folder.mkdir(parents=True, exist_ok=True)

    generator = StyleGAN2Generator(size=256, channel_multiplier=2, n_mlp=8).eval()
    g_state = generator.state_dict()
    torch.save({"g_ema": g_state, "latent_avg": torch.randn(512)}, public / PUBLIC_FILES["stylegan2"])
    arcface = IRBackbone(50, "ir_se", input_size=112).eval()
    torch.save(arcface.state_dict(), public / PUBLIC_FILES["arcface"])
    del arcface

    encoder = GradualStyleEncoder(14).eval()
    attr = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    attr.update({f"decoder.{k}": v for k, v in g_state.items()})  # pSp saves its generator too
    torch.save(attr, release / RELEASE_FILES["attr"])
    del encoder, attr
    torch.save(random_state(MLP_BEST, seed=seed + 1), release / RELEASE_FILES["mapper"])
    torch.save(random_state(FUSE_MLP, seed=seed + 2), release / RELEASE_FILES["compensator"])
    flow = random_flow_state(seed=seed + 3)
    torch.save({f"module.{k}": v for k, v in flow.items()}, release / RELEASE_FILES["flow"])

    for folder in (release, public):
        for path in folder.iterdir():
            link = weights / path.name
            if not link.exists():
                os.symlink(path, link)
    return FakeWeights(release, public, weights)

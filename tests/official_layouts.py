"""State-dict names and shapes of the official iFADIT release files, stated as facts for the tests.

Read in github.com/lixionga/ProFace, FacePrivacy/iFADIT: models/mlp/LatentMapper.py (one nn.Sequential
named ``model``, Linear layers at even indices) and models/id_transformer/inn.py. Shared by
tests/nets/test_mappers.py, test_release.py and the preset tests, with random files in these layouts.
"""

import math

import torch

MLP_BEST = {  # models/mlp/LatentMapper.py: LatentMapper
    "model.0.weight": (512, 1024),
    "model.0.bias": (512,),
    "model.2.weight": (512, 512),
    "model.2.bias": (512,),
}
FUSE_MLP = {  # models/mlp/LatentMapper.py: FusionMapper10
    "model.0.weight": (1024, 512),
    "model.0.bias": (1024,),
    "model.2.weight": (2048, 1024),
    "model.2.bias": (2048,),
    "model.4.weight": (1024, 2048),
    "model.4.bias": (1024,),
    "model.6.weight": (512, 1024),
    "model.6.bias": (512,),
}

# models/id_transformer/inn.py: FrEIA SequenceINN(512) + 4 x AllInOneBlock(cond=0, cond_shape=(512,)),
# subnet Linear(768,256) LReLU Linear(256,128) LReLU Linear(128,128) LReLU Linear(128,256) LReLU
# Linear(256,512).
G_NET_BLOCK = {
    "global_scale": (1, 512),
    "global_offset": (1, 512),
    "w_perm": (512, 512),
    "w_perm_inv": (512, 512),
    "subnet.0.weight": (256, 768),
    "subnet.0.bias": (256,),
    "subnet.2.weight": (128, 256),
    "subnet.2.bias": (128,),
    "subnet.4.weight": (128, 128),
    "subnet.4.bias": (128,),
    "subnet.6.weight": (256, 128),
    "subnet.6.bias": (256,),
    "subnet.8.weight": (512, 256),
    "subnet.8.bias": (512,),
}


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Small random tensors of the given names and shapes (an MLP file of the release)."""
    generator = torch.Generator().manual_seed(seed)
    return {k: 0.05 * torch.randn(shape, generator=generator) for k, shape in shapes.items()}


def random_permutation_matrix(dim: int, generator: torch.Generator) -> torch.Tensor:
    matrix = torch.zeros(dim, dim)
    matrix[torch.arange(dim), torch.randperm(dim, generator=generator)] = 1.0
    return matrix


def random_flow_state(seed: int = 4, blocks: int = 4) -> dict[str, torch.Tensor]:
    """A well-conditioned random ``G_net_*.pth`` state dict (FrEIA ``SequenceINN`` names, no prefix)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for block in range(blocks):
        block_state = random_state(G_NET_BLOCK, seed=10 * seed + block)
        # FrEIA's global scale is 0.1 * softplus(a, beta=0.5); near its init (scale 1) the flow is well
        # conditioned, as a trained one is.
        block_state["global_scale"] += 2 * math.log(math.expm1(5.0))
        w_perm = random_permutation_matrix(512, generator)
        block_state["w_perm"], block_state["w_perm_inv"] = w_perm, w_perm.T.contiguous()
        state.update({f"module_list.{block}.{k}": v for k, v in block_state.items()})
    return state

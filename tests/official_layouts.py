"""State-dict names and shapes of the official iFADIT release files, stated as facts for the tests.

Read in github.com/lixionga/ProFace, FacePrivacy/iFADIT: models/mlp/LatentMapper.py (one nn.Sequential
named ``model``, Linear layers at even indices). Shared by tests/nets/test_mappers.py and test_release.py.
"""

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

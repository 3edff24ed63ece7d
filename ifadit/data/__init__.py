"""Face data: the rendered SynthFaces set and a Lightning data module over it or over image folders."""

from ifadit.data.datamodule import FaceDataModule, FaceFolder
from ifadit.data.synthfaces import (
    IDENTITY_NAMES,
    NUISANCE_NAMES,
    IdentityParams,
    SynthFaces,
    render_faces,
    render_identity,
)

__all__ = [
    "IDENTITY_NAMES",
    "NUISANCE_NAMES",
    "FaceDataModule",
    "FaceFolder",
    "IdentityParams",
    "SynthFaces",
    "render_faces",
    "render_identity",
]

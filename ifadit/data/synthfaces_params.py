"""SynthFaces parameters: what an identity and an image of it are, drawn from seeded streams.

An *identity* is a fixed draw of 53 continuous shape and colour parameters (face outline and jaw, eye
spacing, size, tilt and iris, brows, nose, lips, skin tone, ears, moles, freckles, facial hair…); every
*image* of it adds its own nuisance draw (pose, expression, gaze, lighting, background, hair, glasses,
framing), so identity and appearance differ.

Randomness comes straight from numpy's ``PCG64`` bit generator seeded by a ``SeedSequence`` of
``[seed, stream tag, identity(, …)]``: numpy guarantees the raw output of both to stay the same across
versions (the ``Generator`` distribution methods carry no such promise), and all parameters are derived from
raw 53-bit uniforms here. Image ``j`` of an identity is row ``j`` of that identity's stream, so it does not
change when ``images_per_identity`` grows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

import numpy as np

_STREAM_IDENTITY = 1
_STREAM_NUISANCE = 2
_STREAM_SPLIT = 3


@dataclass(frozen=True)
class IdentityParams:
    """The fixed look of one identity, in face units (the canvas spans [-1, 1]; values are physical)."""

    face_width: float  # half-width of the head
    face_height: float  # half-height of the head
    jaw_taper: float  # how much the lower face narrows towards the chin
    skin_tone: float  # 0 dark … 1 light
    skin_warmth: float  # -1 pink … 1 yellow
    eye_spacing: float  # eye centre as a fraction of the half-width
    eye_height: float  # eye line, fraction of the half-height (negative = above centre)
    eye_size: float  # horizontal eye radius
    eye_aspect: float  # vertical / horizontal eye radius
    iris_colour: float  # position on a brown-hazel-green-blue-grey palette
    brow_thickness: float
    brow_slope: float  # inner end lower (+) or higher (-)
    brow_arch: float
    brow_gap: float  # brow above the eye centre
    brow_length: float  # half-length
    brow_darkness: float
    nose_length: float  # eye line to nose tip
    nose_width: float  # half-width of the tip
    mouth_width: float  # half-width
    lip_thickness: float
    mouth_gap: float  # nose tip to mouth
    lip_redness: float
    ear_size: float
    ear_height: float
    chin_length: float  # extra drop of the chin
    cheek_blush: float
    facial_hair: float  # < 0.6 none, then a moustache, above 0.8 also a beard
    mole_present: float  # > 0.5: a mole is drawn
    mole_u: float  # position on the face, fractions of the half-width / half-height
    mole_v: float
    # Finer detail, so that many independent directions tell identities apart.
    eye_tilt: float  # outer eye corners up (+) or down (-)
    iris_size: float  # iris radius, fraction of the eye's half-width
    iris_ring: float  # darkness of the iris rim
    lash_darkness: float  # weight of the upper lid line
    under_eye: float  # shadow under the eyes
    eye_asymmetry: float  # right eye higher (+) or lower (-)
    nose_bridge: float  # bridge width, fraction of the tip
    nose_tip: float  # tip size, fraction of the nose width
    nostril_size: float
    upper_lip: float  # upper lip thickness, fraction of the lower
    mouth_corners: float  # resting corners up (+) or down (-)
    jaw_square: float  # 0 round … 1 square lower face
    cheekbones: float  # shadow under the cheekbones
    nasolabial: float  # depth of the folds from nose to mouth corners
    chin_cleft: float  # > 0.6: a cleft chin
    ear_protrusion: float
    brow_taper: float  # how much the brows thin towards their ends
    freckles: float  # < 0.5 none, then denser
    freckle_pattern: float  # where the freckles sit
    mole_size: float
    second_mole: float  # > 0.6: a second mole
    second_mole_u: float
    second_mole_v: float

    @classmethod
    def sample(cls, seed: int, index: int) -> IdentityParams:
        """The parameters of identity ``index`` under ``seed`` (stable across numpy versions)."""
        return cls(*identity_param_array(seed, [index])[0].tolist())

    def as_array(self) -> np.ndarray:
        return np.asarray(astuple(self), dtype=np.float64)


# (low, high) of each identity field; a raw uniform u maps to low + u * (high - low).
_IDENTITY_RANGES: dict[str, tuple[float, float]] = {
    "face_width": (0.42, 0.60),
    "face_height": (0.56, 0.72),
    "jaw_taper": (0.15, 0.55),
    "skin_tone": (0.0, 1.0),
    "skin_warmth": (-1.0, 1.0),
    "eye_spacing": (0.28, 0.48),
    "eye_height": (-0.16, 0.02),
    "eye_size": (0.065, 0.14),
    "eye_aspect": (0.45, 0.78),
    "iris_colour": (0.0, 1.0),
    "brow_thickness": (0.015, 0.075),
    "brow_slope": (-0.5, 0.5),
    "brow_arch": (0.0, 0.10),
    "brow_gap": (0.075, 0.16),
    "brow_length": (0.07, 0.18),
    "brow_darkness": (0.0, 1.0),
    "nose_length": (0.16, 0.30),
    "nose_width": (0.04, 0.15),
    "mouth_width": (0.10, 0.30),
    "lip_thickness": (0.01, 0.06),
    "mouth_gap": (0.09, 0.17),
    "lip_redness": (0.0, 1.0),
    "ear_size": (0.09, 0.21),
    "ear_height": (-0.12, 0.08),
    "chin_length": (0.0, 0.10),
    "cheek_blush": (0.0, 1.0),
    "facial_hair": (0.0, 1.0),
    "mole_present": (0.0, 1.0),
    "mole_u": (-0.65, 0.65),
    "mole_v": (-0.05, 0.60),
    "eye_tilt": (-1.0, 1.0),
    "iris_size": (0.40, 0.85),
    "iris_ring": (0.0, 1.0),
    "lash_darkness": (0.0, 1.0),
    "under_eye": (0.0, 1.0),
    "eye_asymmetry": (-1.0, 1.0),
    "nose_bridge": (0.25, 0.75),
    "nose_tip": (0.40, 0.75),
    "nostril_size": (0.15, 0.38),
    "upper_lip": (0.45, 1.30),
    "mouth_corners": (-1.0, 1.0),
    "jaw_square": (0.0, 1.0),
    "cheekbones": (0.0, 1.0),
    "nasolabial": (0.0, 1.0),
    "chin_cleft": (0.0, 1.0),
    "ear_protrusion": (0.0, 1.0),
    "brow_taper": (0.0, 0.9),
    "freckles": (0.0, 1.0),
    "freckle_pattern": (0.0, 1.0),
    "mole_size": (0.02, 0.045),
    "second_mole": (0.0, 1.0),
    "second_mole_u": (-0.65, 0.65),
    "second_mole_v": (-0.30, 0.60),
}
IDENTITY_NAMES: tuple[str, ...] = tuple(f.name for f in fields(IdentityParams))
assert tuple(_IDENTITY_RANGES) == IDENTITY_NAMES, "IdentityParams fields and ranges out of sync"
_LOWS = np.array([lo for lo, _ in _IDENTITY_RANGES.values()])
_HIGHS = np.array([hi for _, hi in _IDENTITY_RANGES.values()])

# Per-image nuisance attributes: name → (canonical value, how a raw uniform u maps to the full value).
# Kinds: "signed" 2u-1 in [-1, 1]; "unit" u in [0, 1]; "mouth" closed in 37 % of images, else open up to 1;
# "eyes" mostly open (1), sometimes squinting or shut; "flag" 0/1 at a rate. A ``strength`` in [0, 1] blends
# each value from the canonical one (0: every image of an identity is the same frontal, neutral, evenly lit
# picture on a grey background) to the full random one (1); for flags it scales the rate.
_NUISANCE_SPEC: dict[str, tuple[float, str]] = {
    "yaw": (0.0, "signed"),  # → ±0.6 rad
    "pitch": (0.0, "signed"),  # → ±0.2 rad
    "roll": (0.0, "signed"),  # → ±0.15 rad
    "scale": (0.0, "signed"),  # → 1 ± 0.08
    "shift_x": (0.0, "signed"),  # → ±0.07
    "shift_y": (0.0, "signed"),
    "smile": (0.2, "signed"),  # frown … smile
    "mouth_open": (0.0, "mouth"),
    "eye_open": (1.0, "eyes"),
    "brow_raise": (0.0, "signed"),
    "gaze_x": (0.0, "signed"),
    "gaze_y": (0.0, "signed"),
    "light_azimuth": (0.0, "signed"),  # → ±π
    "light_elevation": (0.6, "unit"),
    "light_strength": (0.3, "unit"),
    "brightness": (0.0, "signed"),
    "warmth": (0.0, "signed"),  # colour temperature
    "bg_r": (0.78, "unit"),
    "bg_g": (0.78, "unit"),
    "bg_b": (0.78, "unit"),
    "bg_gradient": (0.0, "signed"),
    "bg_angle": (0.0, "signed"),  # → ±π
    "shirt_r": (0.35, "unit"),
    "shirt_g": (0.42, "unit"),
    "shirt_b": (0.55, "unit"),
    "hair_colour": (0.2, "unit"),  # black-brown-auburn-blonde-grey palette
    "hair_volume": (0.5, "unit"),
    "hair_length": (0.3, "unit"),
    "hairline": (0.5, "unit"),  # high … low
    "hair_part": (0.0, "signed"),
    "bald": (0.0, "flag"),
    "glasses": (0.0, "flag"),
    "glasses_tint": (0.0, "unit"),
}
NUISANCE_NAMES: tuple[str, ...] = tuple(_NUISANCE_SPEC)
PARAMETER_NAMES: tuple[str, ...] = IDENTITY_NAMES + NUISANCE_NAMES
_FLAG_RATES = {"bald": 0.08, "glasses": 0.25}


def _raw_uniforms(entropy: Sequence[int], count: int) -> np.ndarray:
    """``count`` uniforms in [0, 1) from PCG64 raw output: the same for given entropy on any numpy version."""
    bits = np.random.PCG64(np.random.SeedSequence(list(entropy))).random_raw(count)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def identity_param_array(seed: int, identities: Sequence[int] | np.ndarray) -> np.ndarray:
    """(N, len(IDENTITY_NAMES)) physical identity parameters for the given identity indices."""
    uniforms = np.stack(
        [_raw_uniforms([seed, _STREAM_IDENTITY, int(i)], len(_LOWS)) for i in identities]
    ).reshape(-1, len(_LOWS))
    return _LOWS + uniforms * (_HIGHS - _LOWS)


def nuisance_param_array(seed: int, identity: int, num_images: int, strength: float = 1.0) -> np.ndarray:
    """(num_images, len(NUISANCE_NAMES)) nuisance values for images 0..num_images-1 of ``identity``."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"nuisance strength must lie in [0, 1], got {strength}")
    count = len(NUISANCE_NAMES)
    u = _raw_uniforms([seed, _STREAM_NUISANCE, int(identity)], num_images * count).reshape(num_images, count)
    values = np.empty_like(u)
    for j, (name, (canonical, kind)) in enumerate(_NUISANCE_SPEC.items()):
        if kind == "flag":
            values[:, j] = (u[:, j] < _FLAG_RATES[name] * strength).astype(np.float64)
            continue
        if kind == "signed":
            full = 2.0 * u[:, j] - 1.0
        elif kind == "mouth":
            full = np.clip(1.6 * u[:, j] - 0.6, 0.0, 1.0)
        elif kind == "eyes":
            full = 1.0 - 0.85 * u[:, j] ** 4
        else:
            full = u[:, j]
        values[:, j] = canonical + strength * (full - canonical)
    return values


def identity_ranges() -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of every identity parameter, in the order of :data:`IDENTITY_NAMES` (copies)."""
    return _LOWS.copy(), _HIGHS.copy()


def normalized_parameters(identity: np.ndarray, nuisance: np.ndarray) -> np.ndarray:
    """Identity (N, Ki) and nuisance (N, Kn) physical values → (N, Ki + Kn) float32 in [-1, 1], in the
    order of :data:`PARAMETER_NAMES`: the input of a renderer trained on SynthFaces (parameters → image)."""
    ident = (np.asarray(identity) - _LOWS) / (_HIGHS - _LOWS) * 2.0 - 1.0
    signed = np.array([kind == "signed" for _, kind in _NUISANCE_SPEC.values()])
    nuis = np.where(signed, nuisance, np.asarray(nuisance) * 2.0 - 1.0)
    return np.concatenate([ident, nuis], axis=1).astype(np.float32)


def split_identities(num_identities: int, seed: int, fractions: Sequence[float]) -> dict[str, np.ndarray]:
    """Disjoint, sorted identity sets per split, from a seeded permutation."""
    if len(fractions) != 3 or min(fractions) < 0 or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split_fractions must be three non-negative numbers summing to 1, got {fractions}")
    keys = _raw_uniforms([seed, _STREAM_SPLIT, num_identities], num_identities)
    order = np.argsort(keys, kind="stable")
    n_train = round(fractions[0] * num_identities)
    n_val = min(round(fractions[1] * num_identities), num_identities - n_train)
    bounds = {
        "train": (0, n_train),
        "val": (n_train, n_train + n_val),
        "test": (n_train + n_val, num_identities),
    }
    return {split: np.sort(order[a:b]) for split, (a, b) in bounds.items()}

"""The Python API for real photos: ``ifadit.Anonymizer``.

::

    from PIL import Image
    from ifadit import Anonymizer
    from ifadit.keys import SecretKey

    anonymizer = Anonymizer.from_checkpoint("last.ckpt")          # a checkpoint written by 'ifadit fit'
    # or Anonymizer.from_preset("ifadit-ffhq256-official"): the paper's model from the weights folder
    secret = SecretKey.load("my.key")
    anonymized = anonymizer.anonymize(Image.open("photo.png"), secret)
    original = anonymizer.recover(anonymized, secret)             # the faces are found from its metadata

Every face is detected (MTCNN, 5 landmarks), aligned as FFHQ aligns faces at the model's resolution,
anonymized (or recovered) by :class:`ifadit.anonymizer.IFADIT` with the key, warped back and pasted under its
face mask (a landmark ellipse, or a face-parsing mask from ``mask_fn``), eroded and blurred as the paper's
pipeline does (:mod:`ifadit.photos.blend`). Pixels outside the mask are
returned unchanged. The command line (``ifadit anonymize`` / ``ifadit recover``) drives this class.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ifadit.anonymizer import IFADIT
from ifadit.keys import SecretKey
from ifadit.model_files import build_preset, load_checkpoint_model, load_model, recipe_model_section
from ifadit.nets.image import uint8_levels
from ifadit.photos.align import (
    MaskFn,
    alignment_matrices,
    apply_affine,
    crop_faces,
    paste_faces,
)
from ifadit.photos.batch import default_batch_size
from ifadit.photos.blend import blur_regions, box_quads, paste_masks
from ifadit.photos.detect import Face, FaceDetector
from ifadit.photos.integrity import face_boxes
from ifadit.photos.io import METADATA_KEY, PhotoError, pil_to_rgb, upright_srgb
from ifadit.photos.metadata import build_metadata, open_metadata, seal_metadata
from ifadit.presets import load_preset

OPERATIONS = ("anonymize", "recover")
ImageT = TypeVar("ImageT", Image.Image, np.ndarray, Tensor)


class StageTimer:
    """Wall time per pipeline stage, summed over calls (``Anonymizer.timer``; the benchmark reads it)."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start


@dataclass
class Prepared:
    """One photo ready for the model: its faces, their image -> crop maps, aligned crops and paste masks."""

    photo: Tensor  # (3, H, W) in [-1, 1]
    faces: list[Face]
    tiny: list[Face]
    matrices: Tensor  # (F, 2, 3)
    crops: Tensor  # (F, 3, S, S)
    masks: Tensor  # (F, 1, S, S)
    blur: list[Face] = field(default_factory=list)  # regions to blur when anonymizing (tiny, unsure)
    owned: bool = False  # ``photo`` was made by prepare(): the paste may write into it


@dataclass
class PhotoResult:
    """A processed photo and what was done to it."""

    image: Tensor  # (3, H, W) in [-1, 1]
    faces: list[Face]
    paste_mask: Tensor  # (H, W) in [0, 1]: 0 where the input is returned unchanged
    metadata: dict[str, Any]
    tiny: list[Face] = field(default_factory=list)  # faces too small to process (left as they were)
    crops: Tensor | None = None  # the aligned input crops (F, 3, S, S)
    generated: Tensor | None = None  # what the model made of them (F, 3, S, S)
    blurred: list[Face] = field(default_factory=list)  # regions blurred instead (tiny or unsure faces)


def to_tensor(pixels: np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """RGB uint8 (H, W, 3) -> float (3, H, W) in [-1, 1] (scaled in place: one float copy of a large
    photo, not three)."""
    tensor = torch.from_numpy(np.ascontiguousarray(pixels)).to(device).permute(2, 0, 1).float()
    return tensor.div_(127.5).sub_(1)


def to_uint8(image: Tensor) -> np.ndarray:
    """Float (3, H, W) in [-1, 1] -> RGB uint8 (H, W, 3)."""
    return uint8_levels(image.detach()).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def compose_uint8(original: np.ndarray, result: PhotoResult) -> np.ndarray:
    """The result as uint8, taking the original's bytes wherever the paste mask is 0 (bit-exact). Only the
    rectangle around the changed pixels is converted: a 108-megapixel photo costs no full float copy."""
    out = original.copy()
    changed = result.paste_mask > 0
    rows, cols = changed.any(dim=1).nonzero(), changed.any(dim=0).nonzero()
    if rows.numel() == 0:
        return out
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    inside = changed[y0:y1, x0:x1].cpu().numpy()
    out[y0:y1, x0:x1][inside] = to_uint8(result.image[:, y0:y1, x0:x1])[inside]
    return out


_recipe_model_section = recipe_model_section  # the older name (benchmarks/photos.py)


class Anonymizer:
    """Anonymize and recover every face of real photos with a secret key.

    ``model``: a keyed :class:`IFADIT` (a flow-phase or joint checkpoint). ``detector``: an
    MTCNN :class:`FaceDetector` (made on first use). ``mask_fn``: optional face-parsing hook, aligned crops
    (B, 3, S, S) in [-1, 1] -> masks (B, 1, S, S) in [0, 1]; without it a landmark ellipse joined with the
    face box widened to the forehead and jaw is used. Either is eroded and blurred before the paste.
    ``blur_tiny``: blur faces below the detector's ``min_face_size`` instead of refusing the photo
    (``skip_tiny`` is its older name); regions the detector is unsure about are always blurred.
    ``batch_size``: faces per model call (None: the measured default of the device,
    :func:`ifadit.photos.batch.default_batch_size`).
    """

    def __init__(
        self,
        model: IFADIT,
        detector: FaceDetector | None = None,
        mask_fn: MaskFn | None = None,
        device: str | torch.device = "cpu",
        model_sha256: str | None = None,
        batch_size: int | None = None,
        blur_tiny: bool = False,
        skip_tiny: bool | None = None,
    ) -> None:
        if not model.keyed:
            raise ValueError(
                "this model has no flow (a phase-1 model): anonymizing needs a flow-phase checkpoint"
            )
        self.device = torch.device(device)
        batch_size = default_batch_size(self.device) if batch_size is None else batch_size
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model = model.to(self.device).eval()
        self._detector = detector
        self.mask_fn = mask_fn
        self.model_sha256 = model_sha256
        self.batch_size = batch_size
        self.blur_tiny = blur_tiny if skip_tiny is None else skip_tiny
        self.timer: StageTimer | None = None

    # -- construction ---
    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        config: str | Path | Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> Anonymizer:
        """The model of a checkpoint written by ``ifadit fit`` (which stores its ``model`` config) or of a
        model file written by ``ifadit convert`` (``.safetensors``). For an older checkpoint without a
        stored config, ``config`` gives the recipe (path or mapping) it was trained with."""
        loaded = load_checkpoint_model(checkpoint, config)
        return cls(loaded.model, device=device, model_sha256=loaded.fingerprint, **kwargs)

    @classmethod
    def from_preset(cls, name: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> Anonymizer:
        """A preset's model (``ifadit models`` lists them; a preset ``.yaml`` path works too), built from the
        weights folder: ``Anonymizer.from_preset("ifadit-ffhq256-official")``."""
        loaded = build_preset(load_preset(name))
        return cls(loaded.model, device=device, model_sha256=loaded.fingerprint, **kwargs)

    @classmethod
    def from_model(
        cls,
        model: str | Path,
        config: str | Path | Mapping[str, Any] | None = None,
        device: str | torch.device = "cpu",
        **kwargs: Any,
    ) -> Anonymizer:
        """``model``: a preset name or any file :meth:`from_preset` / :meth:`from_checkpoint` takes, as
        ``ifadit anonymize --model NAME|PATH`` does."""
        loaded = load_model(model, config)
        return cls(loaded.model, device=device, model_sha256=loaded.fingerprint, **kwargs)

    @property
    def resolution(self) -> int:
        """The side of the aligned face crops: the generator's output size."""
        return int(self.model.generator.size)

    @property
    def detector(self) -> FaceDetector:
        if self._detector is None:
            self._detector = FaceDetector(device=self.device)
        return self._detector

    def _stage(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self.timer.stage(name) if self.timer is not None else contextlib.nullcontext()

    # -- the pipeline, step by step ---
    def prepare(
        self, pixels: np.ndarray, faces: Sequence[Face] | None = None, photo: Tensor | None = None
    ) -> Prepared:
        """Detect (unless ``faces`` are given), align and mask every face of an RGB uint8 photo.

        Raises :class:`PhotoError` when there is no face, or when a face is too small and ``blur_tiny`` is
        off (refusing is the safe choice: a tiny face would otherwise stay recognisable)."""
        tiny: list[Face] = []
        blur: list[Face] = []
        if faces is None:
            with self._stage("detection"):
                detection = self.detector.detect(pixels)
            faces, tiny = detection.faces, detection.tiny
            if tiny and not self.blur_tiny:
                smallest = min(f.size for f in tiny)
                raise PhotoError(
                    f"{len(tiny)} face(s) smaller than {self.detector.min_face_size} px (smallest "
                    f"{smallest:.0f} px) cannot be processed reliably; nothing written "
                    "(--blur_tiny blurs them instead)"
                )
            if not faces and not tiny:
                raise PhotoError(
                    f"no face found (faces under {self.detector.search_min_size} px or turned far from the "
                    "camera are not detected)"
                )
            blur = [*tiny, *detection.unsure]
        faces = list(faces)
        if not faces and not blur:
            raise PhotoError("no face to process")
        with self._stage("alignment"):
            owned = photo is None
            if photo is None:
                photo = to_tensor(pixels, self.device)
            size = self.resolution
            landmarks = torch.tensor([f.landmarks for f in faces], dtype=torch.float32, device=self.device)
            landmarks = landmarks.view(-1, 5, 2)
            boxes = torch.tensor([f.box for f in faces], dtype=torch.float32, device=self.device).view(-1, 4)
            matrices = alignment_matrices(landmarks, size)
            crops = crop_faces(photo, matrices, size)
            quads = apply_affine(matrices, box_quads(boxes))  # the face box, to the forehead and jaw
            masks = paste_masks(crops, apply_affine(matrices, landmarks), self.mask_fn, quads)
        return Prepared(photo, faces, tiny, matrices, crops, masks, blur, owned)

    @torch.no_grad()
    def run_model(self, operation: str, crops: Tensor, secret: SecretKey) -> Tensor:
        """Anonymize or recover aligned crops (N, 3, S, S) with the key, ``batch_size`` at a time."""
        if operation not in OPERATIONS:
            raise ValueError(f"operation must be one of {OPERATIONS}")
        if crops.shape[0] == 0:  # a photo with only faces to blur
            return crops.clone()
        outputs = []
        for chunk in crops.split(self.batch_size):
            cond = self.model.key_scheme(secret, batch_size=chunk.shape[0]).to(self.device)
            if operation == "anonymize":
                outputs.append(self.model.anonymize(chunk, cond).image)
            else:
                outputs.append(self.model.recover(chunk, cond).image)
        return torch.cat(outputs).clamp(-1, 1)

    def finish(self, operation: str, prepared: Prepared, generated: Tensor) -> PhotoResult:
        """Paste the generated crops back into the photo under their masks. ``metadata`` is the record
        (faces, model, the face regions) that :func:`ifadit.photos.metadata.seal_metadata` seals into the
        output; it holds nothing about the key."""
        with self._stage("paste-back"):
            # a photo prepare() made is pasted into (once: a second finish would paste over the first)
            image, union = paste_faces(
                prepared.photo, generated, prepared.masks, prepared.matrices, in_place=prepared.owned
            )
            prepared.owned = False
            blurred = prepared.blur if operation == "anonymize" else []
            if blurred:  # in place: ``image`` and ``union`` are this call's own
                blur_regions(image, torch.tensor([f.box for f in blurred]), union)
        size = (int(prepared.photo.shape[-1]), int(prepared.photo.shape[-2]))
        regions = face_boxes(prepared.masks, prepared.matrices, *size)
        metadata = build_metadata(
            operation, prepared.faces, self.model_sha256, self.resolution, size, regions
        )
        result = PhotoResult(
            image, prepared.faces, union[0], metadata, prepared.tiny, prepared.crops, generated
        )
        result.blurred = list(blurred)
        return result

    def process(self, operation: str, prepared: Sequence[Prepared], secret: SecretKey) -> list[PhotoResult]:
        """Run the model once over the faces of several prepared photos (batched), then paste each back."""
        if not prepared:
            return []
        with self._stage("model"):
            generated = self.run_model(operation, torch.cat([p.crops for p in prepared]), secret)
        results = []
        for item, faces in zip(prepared, generated.split([len(p.faces) for p in prepared]), strict=True):
            results.append(self.finish(operation, item, faces))
        return results

    def process_photo(
        self,
        operation: str,
        pixels: np.ndarray,
        secret: SecretKey,
        faces: Sequence[Face] | None = None,
        photo: Tensor | None = None,
    ) -> PhotoResult:
        return self.process(operation, [self.prepare(pixels, faces, photo)], secret)[0]

    # -- convenience on images ---
    def anonymize_photo(
        self, pixels: np.ndarray, secret: SecretKey, faces: Sequence[Face] | None = None
    ) -> PhotoResult:
        """Every face of an RGB uint8 photo (H, W, 3) anonymized; faces detected unless given."""
        return self.process_photo("anonymize", pixels, secret, faces)

    def recover_photo(
        self, pixels: np.ndarray, secret: SecretKey, faces: Sequence[Face] | None = None
    ) -> PhotoResult:
        """The faces of an anonymized photo recovered; pass the faces recorded at anonymization
        (``PhotoResult.faces`` or the file's metadata), else they are detected again."""
        return self.process_photo("recover", pixels, secret, faces)

    def anonymize(self, image: ImageT, secret: SecretKey, faces: Sequence[Face] | None = None) -> ImageT:
        """Anonymize every face of a PIL image, an RGB array (H, W, 3; uint8, or float in [0, 1]) or a
        tensor (3, H, W) / (B, 3, H, W) in [-1, 1]; returns the same kind. A PIL result carries its metadata,
        sealed under the key, in ``info["ifadit"]``, so :meth:`recover` finds the faces without detection."""
        return self._apply("anonymize", image, secret, faces)

    def recover(self, image: ImageT, secret: SecretKey, faces: Sequence[Face] | None = None) -> ImageT:
        """Undo :meth:`anonymize` with the same key. Faces: ``faces``, else the PIL image's ifadit metadata,
        else detected again."""
        return self._apply("recover", image, secret, faces)

    def _apply(
        self, operation: str, image: ImageT, secret: SecretKey, faces: Sequence[Face] | None
    ) -> ImageT:
        if not isinstance(secret, SecretKey):
            raise TypeError("secret must be an ifadit.keys.SecretKey")
        if isinstance(image, Image.Image):
            return self._apply_pil(operation, image, secret, faces)  # type: ignore[return-value]
        if isinstance(image, np.ndarray):
            return self._apply_array(operation, image, secret, faces)  # type: ignore[return-value]
        if isinstance(image, Tensor):
            return self._apply_tensor(operation, image, secret, faces)  # type: ignore[return-value]
        raise TypeError(f"expected a PIL image, a numpy array or a torch tensor, got {type(image).__name__}")

    def _apply_pil(
        self, operation: str, image: Image.Image, secret: SecretKey, faces: Sequence[Face] | None
    ) -> Image.Image:
        if faces is None and isinstance(image.info.get(METADATA_KEY), str):
            try:
                recorded = json.loads(image.info[METADATA_KEY])
            except json.JSONDecodeError:
                raise PhotoError("the image's ifadit metadata is not JSON") from None
            faces = open_metadata(recorded, secret).faces  # WrongKeyError: another key made it
        image = upright_srgb(image, [])  # EXIF orientation and ICC profile, as the command line reads files
        pixels, alpha, grayscale = pil_to_rgb(image, [])
        result = self.process_photo(operation, pixels, secret, faces)
        out = Image.fromarray(compose_uint8(pixels, result), "RGB")
        if grayscale:
            out = out.convert("L")
        if alpha is not None:
            out = out.convert("LA" if grayscale else "RGBA")
            out.putalpha(Image.fromarray(alpha, "L"))
        written = pil_to_rgb(out, [])[0]  # what a reader of this image sees: the tamper record's pixels
        out.info[METADATA_KEY] = json.dumps(seal_metadata(result.metadata, secret, written))
        return out

    def _apply_array(
        self, operation: str, image: np.ndarray, secret: SecretKey, faces: Sequence[Face] | None
    ) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB array (H, W, 3), got shape {image.shape}")
        if image.dtype == np.uint8:
            return compose_uint8(image, self.process_photo(operation, image, secret, faces))
        if not np.issubdtype(image.dtype, np.floating):
            raise ValueError(f"expected uint8 or float pixels, got {image.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1) * 2 - 1
        result = self._process_tensor(operation, tensor, secret, faces)
        generated = ((result.image.permute(1, 2, 0).cpu().numpy() + 1) / 2).astype(image.dtype)
        changed = (result.paste_mask > 0).cpu().numpy()[..., None]
        return np.where(changed, generated, image)  # the input's own values outside the mask

    def _apply_tensor(
        self, operation: str, image: Tensor, secret: SecretKey, faces: Sequence[Face] | None
    ) -> Tensor:
        if image.dim() == 4 and image.shape[0] > 1:  # the faces of every image in shared model calls
            if faces is not None:
                raise ValueError("faces= applies to one image; call once per image of a batch")
            if image.shape[1] != 3 or not image.is_floating_point():
                raise ValueError(f"expected a float tensor (B, 3, H, W) in [-1, 1], got {tuple(image.shape)}")
            photos = image.detach().to(self.device, torch.float32)
            prepared = [self.prepare(to_uint8(photo), None, photo=photo) for photo in photos]
            results = self.process(operation, prepared, secret)
            kept = torch.stack([(r.paste_mask > 0).unsqueeze(0) for r in results]).to(image.device)
            merged = torch.stack([r.image for r in results]).to(image.device, image.dtype)
            return torch.where(kept, merged, image)
        if image.dim() == 4:
            return self._apply_tensor(operation, image[0], secret, faces).unsqueeze(0)
        if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(
                f"expected a float tensor (3, H, W) or (B, 3, H, W) in [-1, 1], got {tuple(image.shape)}"
            )
        result = self._process_tensor(operation, image, secret, faces)
        kept = (result.paste_mask > 0).unsqueeze(0).to(image.device)
        return torch.where(kept, result.image.to(image.device, image.dtype), image)

    def _process_tensor(
        self, operation: str, image: Tensor, secret: SecretKey, faces: Sequence[Face] | None
    ) -> PhotoResult:
        photo = image.detach().to(self.device, torch.float32)
        pixels = to_uint8(photo)  # detection only; crops and paste-back use the float pixels
        return self.process_photo(operation, pixels, secret, faces, photo=photo)


__all__ = ["Anonymizer", "PhotoResult", "Prepared", "StageTimer", "compose_uint8", "to_tensor", "to_uint8"]

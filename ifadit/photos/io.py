"""Photo files: reading (EXIF orientation applied, every colour mode made RGB), atomic writing (temporary file
in the target folder, then a rename; never over an input), and the ifadit metadata each output carries.

Each failure is a :class:`PhotoError` with a one-line message; the batch runner reports it and goes on.
Outputs carry no EXIF, XMP or IPTC from the input (camera, serial, GPS and time data, and the embedded
thumbnail of the original are dropped) unless the caller asks for ``KEPT_EXIF_TAGS``, the exposure settings,
back; the pixels are written already rotated upright, so no orientation tag is needed. A photo with an ICC
profile is converted to sRGB (what the output is written as, without a profile), 16-bit images to 8 bits.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".webp": "WEBP"}
# image files found in folders that ifadit does not read: reported, not passed over in silence
UNSUPPORTED = frozenset({".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".bmp", ".dng", ".jxl"})
MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS  # Pillow's own refusal: 179 MP (a 12000 x 9000 photo is 108 MP)
EXIF_IFD = 0x8769
# EXIF tags that describe the exposure, not the camera, the place, the time or the person: what
# --keep-metadata writes back (camera make, model and serial, GPS, dates and the thumbnail never are)
KEPT_EXIF_TAGS = {
    0x829A: "ExposureTime",
    0x829D: "FNumber",
    0x8822: "ExposureProgram",
    0x8827: "ISOSpeedRatings",
    0x9204: "ExposureBiasValue",
    0x9207: "MeteringMode",
    0x9209: "Flash",
    0x920A: "FocalLength",
    0xA402: "ExposureMode",
    0xA403: "WhiteBalance",
    0xA405: "FocalLengthIn35mmFilm",
}
SUFFIX_OF = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}
LOSSY = frozenset({"JPEG"})  # WebP outputs are written lossless
METADATA_KEY = "ifadit"  # PNG text chunk keyword
EXIF_DESCRIPTION = 0x010E  # ImageDescription: holds "ifadit:<json>" in JPEG and WebP outputs
EXIF_PREFIX = "ifadit:"
SIDECAR_SUFFIX = ".ifadit.json"
JPEG_QUALITY = 95


class PhotoError(ValueError):
    """A photo that cannot be read, processed or written; the message is one line."""


@dataclass
class Photo:
    """A decoded photo: RGB pixels plus what is needed to write the result back in the input's form."""

    pixels: np.ndarray  # (H, W, 3) uint8 RGB, upright
    format: str  # PNG / JPEG / WEBP
    mode: str  # the file's colour mode ("RGB", "L", "RGBA", "CMYK", ...)
    alpha: np.ndarray | None = None  # (H, W) uint8, written back unchanged
    grayscale: bool = False  # written back as grayscale
    notes: list[str] = field(default_factory=list)
    metadata: dict[str, Any] | None = None  # ifadit metadata found in the file
    kept_exif: dict[int, Any] = field(default_factory=dict)  # its KEPT_EXIF_TAGS, for --keep-metadata


def pixels_sha256(pixels: np.ndarray) -> str:
    """The hash of decoded RGB pixels (shape included): tells whether a file was re-encoded or edited."""
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _metadata_in(image: Image.Image) -> dict[str, Any] | None:
    text = None
    if image.format == "PNG":
        text = image.info.get(METADATA_KEY)
    else:
        description = image.getexif().get(EXIF_DESCRIPTION)
        if isinstance(description, str) and description.startswith(EXIF_PREFIX):
            text = description[len(EXIF_PREFIX) :]
    if not text:
        return None
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _to_srgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """An image with an embedded ICC profile converted to sRGB (Pillow's ImageCms, perceptual intent): the
    output is written without a profile, so its pixels must already be sRGB (a Display P3 photo would
    otherwise change colour)."""
    from PIL import ImageCms

    icc = image.info.get("icc_profile")
    if not icc:
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        name = ImageCms.getProfileDescription(source).strip() or "embedded"
    except (OSError, ImageCms.PyCMSError):
        notes.append("unreadable ICC profile ignored: colours taken as sRGB")
        return image
    if "srgb" in name.lower().replace(" ", "") or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image  # already sRGB, or a grayscale profile: the grey levels are kept as they are
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    try:
        converted = ImageCms.profileToProfile(
            image.convert("RGB") if alpha is not None else image,
            source,
            ImageCms.createProfile("sRGB"),
            outputMode="RGB",
        )
    except ImageCms.PyCMSError as exc:
        raise PhotoError(f"cannot convert its ICC profile ({name}) to sRGB: {_first_line(exc)}") from None
    if alpha is not None:
        converted.putalpha(alpha)
    notes.append(f"colours converted from its ICC profile ({name}) to sRGB")
    return converted


def _to_8bit(image: Image.Image, notes: list[str]) -> Image.Image:
    """16-bit (and 32-bit) grayscale or RGB(A) made 8-bit, with a note: the model works in 8 bits."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or values.max() > 255 else 255.0
        pixels = np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8)
        notes.append(f"{mode} image converted to 8 bits: written as 8-bit grayscale")
        return Image.fromarray(pixels, "L")
    if mode == "F":
        pixels = np.clip(np.round(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        notes.append("floating-point image converted to 8 bits: written as 8-bit grayscale")
        return Image.fromarray(pixels, "L")
    return image


def pil_to_rgb(image: Image.Image, notes: list[str]) -> tuple[np.ndarray, np.ndarray | None, bool]:
    """RGB pixels, the alpha channel (or None) and whether the photo is grayscale."""
    image = _to_8bit(image, notes)
    mode = image.mode
    alpha = None
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        notes.append("palette image: written as " + image.mode)
        mode = image.mode
    if mode == "1":
        image, mode = image.convert("L"), "L"
    if mode in ("RGBA", "LA", "PA"):
        alpha = np.asarray(image.getchannel("A"), dtype=np.uint8).copy()
        notes.append("alpha channel kept unchanged")
    if mode in ("L", "LA"):
        notes.append("grayscale: faces generated in colour, written back as grayscale")
        return np.asarray(image.convert("L").convert("RGB"), dtype=np.uint8).copy(), alpha, True
    if mode == "RGB":  # one copy of a large photo, not three
        return np.array(image, dtype=np.uint8), alpha, False
    if mode == "CMYK":
        notes.append("CMYK converted to RGB: written as RGB")
    elif mode not in ("RGB", "RGBA"):
        raise PhotoError(f"unsupported colour mode {mode} (8-bit RGB, RGBA, grayscale, palette or CMYK only)")
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy(), alpha, False


def upright_srgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """The image as it is meant to be seen: its EXIF orientation applied and its ICC profile converted to
    sRGB (``read_photo`` and the Python API on PIL images alike)."""
    orientation = image.getexif().get(0x0112)
    if orientation not in (None, 1):
        try:
            image = ImageOps.exif_transpose(image)
        except Exception as exc:  # a malformed EXIF block must not take the photo down with it
            raise PhotoError(f"cannot apply its EXIF orientation {orientation}: {_first_line(exc)}") from None
        notes.append(f"EXIF orientation {orientation} applied")
    return _to_srgb(image, notes)


def read_photo(path: str | os.PathLike[str]) -> Photo:
    """Decode a JPEG / PNG / WebP file upright (EXIF orientation applied) as RGB."""
    path = Path(path)
    if not path.is_file():
        raise PhotoError("file not found" if not path.exists() else "not a regular file")
    try:
        with warnings.catch_warnings():
            # photos up to MAX_PIXELS are read (Pillow warns from 89 MP and refuses above 179 MP itself)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
            if image.width * image.height > MAX_PIXELS:
                raise PhotoError(
                    f"image too large to decode safely ({image.width}x{image.height}; at most "
                    f"{MAX_PIXELS // 1_000_000} megapixels)"
                )
            # 16 bits per channel (PNG): Pillow decodes RGB to 8 bits, which the note says
            deep = any(str(tile.args[0]).endswith(";16B") for tile in image.tile if tile.args)
            image.load()
    except PhotoError:
        raise
    except Image.DecompressionBombError as exc:
        raise PhotoError(f"image too large to decode safely ({_first_line(exc)})") from None
    except UnidentifiedImageError:
        raise PhotoError("not an image, or not a format ifadit reads (JPEG, PNG, WebP)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise PhotoError(f"corrupt or truncated image: {_first_line(exc)}") from None
    if image.format not in SUFFIX_OF:
        raise PhotoError(f"unsupported image format {image.format} (JPEG, PNG or WebP only)")
    if getattr(image, "n_frames", 1) > 1:
        raise PhotoError("animated images are not supported")
    notes: list[str] = []
    metadata = _metadata_in(image)
    exif = image.getexif()
    try:
        exposure = exif.get_ifd(EXIF_IFD)
    except Exception:  # a malformed EXIF block: nothing to keep
        exposure = {}
    kept = {tag: exposure[tag] for tag in KEPT_EXIF_TAGS if tag in exposure}
    if deep:
        notes.append("16-bit image converted to 8 bits per channel")
    file_format, file_mode = image.format, image.mode
    image = upright_srgb(image, notes)
    pixels, alpha, grayscale = pil_to_rgb(image, notes)
    return Photo(pixels, file_format, file_mode, alpha, grayscale, notes, metadata, kept)


def read_sidecar(path: str | os.PathLike[str]) -> dict[str, Any]:
    """An ifadit metadata sidecar (JSON)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PhotoError(f"metadata file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PhotoError(f"unreadable metadata file {path}: {_first_line(exc)}") from None
    if not isinstance(data, dict):
        raise PhotoError(f"metadata file {path} does not hold an object")
    return data


def sidecar_path(photo_path: str | os.PathLike[str]) -> Path:
    path = Path(photo_path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _pil_image(photo_pixels: np.ndarray, alpha: np.ndarray | None, grayscale: bool) -> Image.Image:
    image = Image.fromarray(photo_pixels, "RGB")
    if grayscale:
        image = image.convert("L")
    if alpha is not None:
        image = image.convert("LA" if grayscale else "RGBA")
        image.putalpha(Image.fromarray(alpha, "L"))
    return image


def _encode(
    image: Image.Image,
    file_format: str,
    metadata_text: str | None,
    quality: int,
    kept_exif: Mapping[int, Any] | None = None,
) -> bytes:
    buffer = io.BytesIO()
    if file_format == "PNG":
        info = PngImagePlugin.PngInfo()
        if metadata_text is not None:
            info.add_itxt(METADATA_KEY, metadata_text)
        png_options: dict[str, Any] = {}
        if kept_exif:
            png_options["exif"] = _exif(None, kept_exif).tobytes()
        image.save(buffer, "PNG", pnginfo=info, **png_options)
    else:
        if file_format == "JPEG" and image.mode in ("RGBA", "LA"):
            raise PhotoError("JPEG cannot hold an alpha channel: write PNG or WebP (--format png)")
        exif = _exif(metadata_text, kept_exif)
        options: dict[str, Any] = {"exif": exif.tobytes()}
        if file_format == "JPEG":
            options.update(quality=quality, subsampling=0)
        else:
            options.update(lossless=True, quality=100, method=4)
        image.save(buffer, file_format, **options)
    return buffer.getvalue()


def _exif(metadata_text: str | None, kept_exif: Mapping[int, Any] | None) -> Image.Exif:
    """A fresh EXIF block: the ifadit metadata and only the ``KEPT_EXIF_TAGS`` asked for."""
    exif = Image.Exif()
    if metadata_text is not None:
        exif[EXIF_DESCRIPTION] = EXIF_PREFIX + metadata_text
    if kept_exif:
        exposure = exif.get_ifd(EXIF_IFD)
        for tag, value in kept_exif.items():
            if tag in KEPT_EXIF_TAGS:
                exposure[tag] = value
    return exif


def encode_photo(
    pixels: np.ndarray,
    file_format: str,
    metadata: Mapping[str, Any] | Callable[[np.ndarray], Mapping[str, Any]] | None = None,
    alpha: np.ndarray | None = None,
    grayscale: bool = False,
    quality: int = JPEG_QUALITY,
    kept_exif: Mapping[int, Any] | None = None,
) -> tuple[bytes, str]:
    """The file bytes for RGB ``pixels`` in ``file_format`` with ``metadata`` embedded, and the sha256 of
    the pixels a reader will decode from them. A mapping is embedded with that digest added as
    ``pixels_sha256``; a callable gets the pixels a reader will decode (RGB uint8) and returns what to
    embed as it is (the sealed metadata, whose tamper record is taken over exactly those pixels)."""
    if file_format not in SUFFIX_OF:
        raise PhotoError(f"cannot write format {file_format} (JPEG, PNG or WebP only)")
    image = _pil_image(pixels, alpha, grayscale)
    if file_format in LOSSY:  # what a reader decodes differs from ``pixels``: decode once to hash it
        with warnings.catch_warnings():  # our own output: as large as the photo that was read
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            decoded = Image.open(io.BytesIO(_encode(image, file_format, None, quality)))
        written = pil_to_rgb(decoded, [])[0]
    else:
        written = pil_to_rgb(image, [])[0]
    digest = pixels_sha256(written)
    text = None
    if callable(metadata):
        text = json.dumps(dict(metadata(written)), separators=(",", ":"), ensure_ascii=True)
    elif metadata is not None:
        text = json.dumps({**metadata, "pixels_sha256": digest}, separators=(",", ":"), ensure_ascii=True)
    return _encode(image, file_format, text, quality, kept_exif), digest


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes,
    overwrite: bool = False,
    protected: Iterable[Path] = (),
    mode: int = 0o644,
) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so a reader
    never sees half a file and a failure leaves nothing behind. Never writes over a ``protected`` path (the
    inputs) and, unless ``overwrite``, over any existing file. ``mode``: the file's permissions (0o600 for
    private files such as recovered photos: the temporary file has them from its creation)."""
    path = Path(path)
    target = path.resolve()
    if any(target == Path(p).resolve() for p in protected):
        raise PhotoError(f"refusing to write over an input: {path}")
    if path.exists() and not overwrite:
        raise PhotoError(f"refusing to overwrite existing {path} (--overwrite allows it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:  # link() fails if the target appeared meanwhile: no clobbering, still atomic
                os.link(tmp, path)
            except FileExistsError:
                raise PhotoError(f"refusing to overwrite existing {path} (--overwrite allows it)") from None
            except OSError:  # file systems without hard links
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def collect_inputs(
    inputs: Iterable[str | os.PathLike[str]], unsupported: list[Path] | None = None
) -> list[tuple[Path, Path]]:
    """Every image file named or found (recursively) in a named folder, as (file, path relative to the
    output folder). Files named directly keep their name; files in folders keep their sub-path. A named
    path that does not exist is returned as is, and fails when it is read. Image files in folders that
    ifadit does not read (GIF, TIFF, HEIC, ...) are appended to ``unsupported`` for the caller to report."""
    found: list[tuple[Path, Path]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(p for p in path.rglob("*") if p.is_file()):
                if child.name.startswith("."):
                    continue
                if child.suffix.lower() in FORMATS:
                    found.append((child, child.relative_to(path)))
                elif child.suffix.lower() in UNSUPPORTED and unsupported is not None:
                    unsupported.append(child)
        else:
            found.append((path, Path(path.name)))
    return found


__all__ = [
    "FORMATS",
    "KEPT_EXIF_TAGS",
    "LOSSY",
    "MAX_PIXELS",
    "SIDECAR_SUFFIX",
    "SUFFIX_OF",
    "UNSUPPORTED",
    "Photo",
    "PhotoError",
    "collect_inputs",
    "encode_photo",
    "pil_to_rgb",
    "pixels_sha256",
    "read_photo",
    "read_sidecar",
    "sidecar_path",
    "upright_srgb",
    "write_atomic",
]

"""Camera metadata for the file tests: an EXIF block as a camera writes it (camera make and model, a body
serial number, GPS coordinates, exposure settings and an embedded JPEG thumbnail of the original in IFD1;
Pillow reads all of these but writes no IFD1 thumbnail, so the TIFF structure is laid out here by hand), and
a Display P3 colour profile."""

from __future__ import annotations

import struct

SERIAL = "SN-SECRET-424242"
MAKE, MODEL = "SpyCam", "X1000"


def _ifd(entries: list[tuple[int, int, int, bytes]], base: int) -> tuple[bytes, bytes]:
    """An IFD at offset ``base`` (its entries, then its next-IFD pointer is left to the caller) and the
    data area of its values longer than four bytes, which follows the pointer."""
    entries = sorted(entries)
    data_at = base + 2 + 12 * len(entries) + 4
    body, data = struct.pack("<H", len(entries)), b""
    for tag, kind, count, payload in entries:
        if len(payload) <= 4:
            body += struct.pack("<HHI", tag, kind, count) + payload.ljust(4, b"\0")
        else:
            body += struct.pack("<HHII", tag, kind, count, data_at + len(data))
            data += payload + (b"\0" if len(payload) % 2 else b"")
    return body, data


def _ascii(tag: int, text: str) -> tuple[int, int, int, bytes]:
    raw = text.encode() + b"\0"
    return (tag, 2, len(raw), raw)


def _rational(tag: int, *pairs: tuple[int, int]) -> tuple[int, int, int, bytes]:
    return (tag, 5, len(pairs), b"".join(struct.pack("<II", a, b) for a, b in pairs))


def _long(tag: int, value: int) -> tuple[int, int, int, bytes]:
    return (tag, 4, 1, struct.pack("<I", value))


def camera_exif(thumbnail: bytes) -> bytes:
    """``Exif\\0\\0`` + a little-endian TIFF block: IFD0 (make, model) -> Exif IFD (exposure time 1/250,
    f/2.8, the serial), GPS IFD (48°51'29.64"N 2°17'40.2"E) and IFD1 holding ``thumbnail`` (a JPEG)."""
    exif_entries = [_rational(0x829A, (1, 250)), _rational(0x829D, (28, 10)), _ascii(0xA431, SERIAL)]
    gps_entries = [
        _ascii(1, "N"),
        _rational(2, (48, 1), (51, 1), (2964, 100)),
        _ascii(3, "E"),
        _rational(4, (2, 1), (17, 1), (4020, 100)),
    ]

    def blocks(exif_at: int, gps_at: int, ifd1_at: int, thumb_at: int) -> list[bytes]:
        ifd0 = [_ascii(0x10F, MAKE), _ascii(0x110, MODEL), _long(0x8769, exif_at), _long(0x8825, gps_at)]
        out = []
        for entries, base, following in (
            (ifd0, 8, ifd1_at),
            (exif_entries, exif_at, 0),
            (gps_entries, gps_at, 0),
            (
                [(0x103, 3, 1, struct.pack("<H", 6)), _long(0x201, thumb_at), _long(0x202, len(thumbnail))],
                ifd1_at,
                0,
            ),
        ):
            body, data = _ifd(entries, base)
            out.append(body + struct.pack("<I", following) + data)
        return out

    offsets = (0, 0, 0, 0)
    for _ in range(2):  # the block sizes do not depend on the offsets: the second pass has them right
        sizes = [len(b) for b in blocks(*offsets)]
        exif_at = 8 + sizes[0]
        offsets = (exif_at, exif_at + sizes[1], exif_at + sizes[1] + sizes[2], exif_at + sum(sizes[1:]))
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + b"".join(blocks(*offsets)) + thumbnail


def display_p3_profile() -> bytes:
    """An ICC profile with Display P3's primaries (D50-adapted, as Apple's profile holds them): Pillow's sRGB
    profile with its colorant tags rewritten and its name changed. Pillow builds no P3 profile itself."""
    from PIL import ImageCms

    data = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    tags = {}
    for i in range(struct.unpack(">I", data[128:132])[0]):
        sig, offset, size = struct.unpack(">4sII", data[132 + 12 * i : 144 + 12 * i])
        tags[sig] = (offset, size)
    colorants = {
        b"rXYZ": (0.5151, 0.2412, -0.0011),
        b"gXYZ": (0.2920, 0.6922, 0.0419),
        b"bXYZ": (0.1571, 0.0666, 0.7841),
    }
    for sig, xyz in colorants.items():
        offset = tags[sig][0]
        data[offset + 8 : offset + 20] = b"".join(struct.pack(">i", round(v * 65536)) for v in xyz)
    offset, size = tags[b"desc"]
    name = bytes(data[offset : offset + size]).replace("sRGB".encode("utf-16-be"), "P3 D".encode("utf-16-be"))
    data[offset : offset + size] = name
    return bytes(data)

"""Image validation: decode a file once with Pillow, reject bad files, normalise to 8-bit RGB.

`load_rgb(path)` is the one way the pipeline reads an image (ingest and prediction alike):
- named pipes, devices and other files that are not regular files (links are followed) and files
  over MAX_FILE_BYTES are rejected (SPECIAL_FILE, OVERSIZED_FILE) without being read;
- zero-byte, non-image, truncated and corrupt files raise `ImageRejected(reason)`; a PNG whose
  chunk CRCs do not match is corrupt (libpng, TensorFlow's decoder, refuses it; Pillow does not);
- images over `MAX_PIXELS` (or that Pillow flags as decompression bombs) are rejected, and so are
  images whose shorter side is below `min_side` or whose sides differ more than
  `max_aspect_ratio` times (checked from the header, before the pixels are decoded);
- a format Pillow identifies but that is not in SUPPORTED_FORMATS (EPS and WMF need external
  tools; FITS, HDF5, MPEG, ... are not photographs), or whose decoder this Pillow lacks, is
  UNSUPPORTED_FORMAT, naming the format (never an internal library error);
- EXIF orientation is applied;
- every colour mode becomes 8-bit RGB: greyscale and CMYK are converted, 16-bit values are
  scaled (v >> 8), transparency (RGBA, LA, palette or RGB with a transparent colour) is
  composited onto white; 32-bit integer (mode I with 32 bits per sample) and 32-bit float
  images have no agreed 0..255 scale and are UNSUPPORTED_MODE.

`validate(path)` adds what ingest needs: the content key (sha256 of the decoded pixels), the
per-channel sums for normalisation statistics, and the bytes to pack into shards. Those bytes are
always the validated pixels re-encoded as lossless PNG by Pillow, never the original file, so
every accepted image decodes in training (`tf.io.decode_image`) to exactly the validated pixels:
- Pillow accepts PNG files that libpng refuses (no IEND, a zlib stream without its checksum, an
  unknown critical chunk), so keeping original PNG bytes let damaged files reach training;
- `tf.io.decode_image` decodes JPEG with libjpeg's fast integer IDCT, which differs from Pillow's
  accurate IDCT by up to ~10 levels per pixel, so keeping JPEG bytes would make training pixels
  differ from the pixels prediction sees through `load_rgb`.
The cost is one PNG encode per image that was an 8-bit RGB PNG (everything else was re-encoded
already): about +1 ms of CPU per 64x64 image (0.53 -> 1.54 ms) and +6% shard bytes, measured on
400 EuroSAT images saved as PNG; EuroSAT's own JPEGs cost the same as before (1.11 ms).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# Largest accepted image in pixels (width x height); larger ones are decompression-bomb suspects.
MAX_PIXELS = 40_000_000
# Largest file read, like an archive member (ingest.limits.MAX_MEMBER_BYTES); read at call time.
MAX_FILE_BYTES = 512 * 1024**2
PNG_COMPRESS_LEVEL = 1  # fast; re-encoded 64 px images are ~2x the JPEG size

# Rejection reasons (the `reason` column of rejected.csv).
EMPTY = "empty_file"
NOT_AN_IMAGE = "not_an_image"
TRUNCATED = "truncated"
CORRUPT = "corrupt"
TOO_MANY_PIXELS = "too_many_pixels"
UNSUPPORTED_MODE = "unsupported_mode"
UNSUPPORTED_FORMAT = "unsupported_format"
UNREADABLE = "unreadable"
TOO_SMALL = "too_small"
EXTREME_ASPECT_RATIO = "extreme_aspect_ratio"
# Same words as the archive extraction's (ingest.extract.SPECIAL_FILE, ingest.extract.OVERSIZED_MEMBER).
SPECIAL_FILE = "special_file"
OVERSIZED_FILE = "oversized_file"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_EXIF_ORIENTATION = 0x0112
_LEVELS = np.arange(256, dtype=np.int64)
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}  # "I" only when its samples have 16 bits
# Formats that hold at most 16 bits per sample: Pillow widens their 16-bit greyscale to mode "I".
_AT_MOST_16_BITS = {"PNG", "PPM"}
# Raster formats Pillow decodes by itself, as Pillow names them (Image.format). Any other format Pillow
# identifies (EPS and WMF need external tools; FITS, HDF5, GRIB, MPEG, ... are not photographs) is
# rejected as UNSUPPORTED_FORMAT, naming the format.
SUPPORTED_FORMATS = frozenset(
    {
        "PNG",
        "JPEG",
        "MPO",  # JPEG with extra frames, as cameras write it
        "GIF",
        "BMP",
        "DIB",
        "TIFF",
        "WEBP",
        "PPM",  # PBM, PGM, PPM
        "TGA",
        "ICO",
        "JPEG2000",
        "AVIF",
        "QOI",
        "PCX",
        "SGI",
        "PSD",
        "DDS",
        "ICNS",
        "SUN",
        "XBM",
        "XPM",
    }
)
CONVERT_HINT = "convert it to PNG or JPEG"
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}


class ImageRejected(ValueError):
    """A file that cannot be used as an image; `reason` is one of the constants above."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass
class Decoded:
    """An image decoded to 8-bit RGB, with what it was before conversion."""

    image: Image.Image  # mode "RGB", orientation applied
    original_mode: str
    original_format: str
    rotated: bool  # EXIF orientation changed the pixels


@dataclass
class ValidatedImage:
    """Everything ingest records about one accepted image."""

    key: str  # sha256 of the decoded pixels (with their size)
    width: int
    height: int
    original_mode: str
    original_format: str
    encoded: bytes  # PNG bytes written by Pillow that decode to exactly these pixels
    reencoded: bool  # the shard bytes differ from the file's (always, unless the file was Pillow's own PNG)
    channel_sum: tuple[int, int, int]
    channel_sumsq: tuple[int, int, int]


def load_rgb(
    path: str | Path, max_pixels: int = MAX_PIXELS, *, min_side: int = 1, max_aspect_ratio: float | None = None
) -> Image.Image:
    """Decode `path` once and return an 8-bit RGB image; raise ImageRejected for bad files."""
    return decode_bytes(_read(path), max_pixels, min_side=min_side, max_aspect_ratio=max_aspect_ratio).image


def validate(
    path: str | Path, max_pixels: int = MAX_PIXELS, *, min_side: int = 1, max_aspect_ratio: float | None = None
) -> ValidatedImage:
    """Decode and check one file; return its key, statistics and shard bytes (re-encoded PNG)."""
    data = _read(path)
    decoded = decode_bytes(data, max_pixels, min_side=min_side, max_aspect_ratio=max_aspect_ratio)
    pixels = np.asarray(decoded.image, dtype=np.uint8)
    height, width = pixels.shape[:2]
    encoded = encode_png(decoded.image)
    histogram = np.asarray(decoded.image.histogram(), dtype=np.int64).reshape(3, 256)  # fast, exact sums
    return ValidatedImage(
        key=pixel_key(pixels),
        width=int(width),
        height=int(height),
        original_mode=decoded.original_mode,
        original_format=decoded.original_format,
        encoded=encoded,
        reencoded=encoded != data,
        channel_sum=tuple(int(v) for v in histogram @ _LEVELS),
        channel_sumsq=tuple(int(v) for v in histogram @ _LEVELS**2),
    )


def pixel_key(pixels: np.ndarray) -> str:
    """Content id of an RGB array: identical pixels (whatever the file format) share a key."""
    height, width = pixels.shape[:2]
    digest = hashlib.sha256(f"{width}x{height}:".encode())
    digest.update(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _read(path: str | Path) -> bytes:
    """The file's bytes. Links are followed; whatever is not a regular file (a named pipe would block
    forever, /dev/zero never ends) is SPECIAL_FILE and a file over MAX_FILE_BYTES is OVERSIZED_FILE,
    both judged without reading it. Opened non-blocking and checked again on the open file, so a
    file swapped for a pipe in between cannot block either."""
    try:
        _check_file(os.stat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as src:
            _check_file(os.fstat(fd))
            os.set_blocking(fd, True)
            data = src.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ImageRejected(UNREADABLE, f"cannot read the file: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:  # it grew after the check
        raise ImageRejected(OVERSIZED_FILE, f"over the {MAX_FILE_BYTES}-byte limit per file (MAX_FILE_BYTES)")
    return data


def _check_file(info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise ImageRejected(SPECIAL_FILE, f"{_file_kind(info.st_mode)}: not a regular file, not read")
    if info.st_size > MAX_FILE_BYTES:
        raise ImageRejected(
            OVERSIZED_FILE,
            f"{info.st_size} bytes, over the {MAX_FILE_BYTES}-byte limit per file (MAX_FILE_BYTES): not read",
        )


def _file_kind(mode: int) -> str:
    kinds = [
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


def check_png_chunks(data: bytes) -> None:
    """Reject a PNG file that does not start with IHDR or ends before its pixel data (IDAT), or
    one whose chunk fails its CRC check.

    A CRC mismatch means the bytes were damaged. libpng (what `tf.io.decode_image` uses) refuses a
    PNG whose IHDR, IDAT or IEND fails its CRC, but Pillow ignores the CRCs of the pixel data, so
    without this check such a file passed validation and failed in training. Every chunk is
    checked, up to IEND (trailing bytes are ignored, as decoders do); a file cut short after its
    first IDAT chunk is left to the decoder, which reads what it can or calls it truncated.
    """
    pos, has_pixels = len(PNG_SIGNATURE), False
    if len(data) >= pos + 8 and data[pos + 4 : pos + 8] != b"IHDR":
        raise ImageRejected(CORRUPT, "the file starts like a PNG image but its first chunk is not the IHDR header")
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        (stored,) = struct.unpack(">I", data[end : end + 4])
        if zlib.crc32(data[pos + 4 : end]) != stored:
            name = kind.decode("latin-1") if kind.isalpha() else repr(kind)
            raise ImageRejected(CORRUPT, f"PNG chunk {name} at byte {pos} fails its CRC check: the file is damaged")
        if kind == b"IEND":
            return
        has_pixels = has_pixels or kind == b"IDAT"
        pos = end + 4
    if not has_pixels:
        raise ImageRejected(TRUNCATED, f"the file ends at byte {len(data)}, before its pixel data (PNG chunk IDAT)")


def check_shape(width: int, height: int, min_side: int = 1, max_aspect_ratio: float | None = None) -> None:
    """Raise ImageRejected for an image too small (TOO_SMALL) or too elongated (EXTREME_ASPECT_RATIO)."""
    short, long = min(width, height), max(width, height)
    if short < min_side:
        raise ImageRejected(TOO_SMALL, f"the shorter side is {short} px, below min_image_side={min_side}")
    if max_aspect_ratio is not None and long > max_aspect_ratio * short:
        raise ImageRejected(
            EXTREME_ASPECT_RATIO,
            f"{width}x{height} has aspect ratio {_number(long / short)}, "
            f"above max_aspect_ratio={_number(max_aspect_ratio)}",
        )


def _number(value: float) -> str:
    return f"{round(value, 2):g}"  # 500.0 -> "500", 33.333 -> "33.33"


def decode_bytes(
    data: bytes, max_pixels: int = MAX_PIXELS, *, min_side: int = 1, max_aspect_ratio: float | None = None
) -> Decoded:
    """Decode encoded image bytes to RGB (see the module docstring for the rules)."""
    if not data:
        raise ImageRejected(EMPTY, "the file has 0 bytes")
    if data.startswith(PNG_SIGNATURE):
        check_png_chunks(data)
    with warnings.catch_warnings():
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that: make it a rejection too.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            kind = _signature(data)
            if kind:  # the file says what it is, but its header cannot be read
                raise ImageRejected(CORRUPT, f"the file starts like a {kind} image but its header is invalid") from None
            raise ImageRejected(NOT_AN_IMAGE, "Pillow does not recognise this file as an image") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageRejected(TOO_MANY_PIXELS, str(exc)) from None
        except Exception as exc:  # a header so broken (or cut so short) that even identification fails
            raise _decode_error(exc) from None
        if image.format not in SUPPORTED_FORMATS:
            raise ImageRejected(
                UNSUPPORTED_FORMAT,
                f"the file holds {format_name(image)}, which is not a supported image format: {CONVERT_HINT}",
            )
        width, height = image.size
        if width * height > max_pixels:
            raise ImageRejected(
                TOO_MANY_PIXELS, f"{width}x{height} = {width * height} pixels is over the limit of {max_pixels}"
            )
        check_shape(width, height, min_side, max_aspect_ratio)
        original_mode, original_format = image.mode, image.format or "unknown"
        try:
            image.load()
        except Exception as exc:
            raise _decode_error(exc, image) from None
    orientation = _orientation(image)
    rgb = to_rgb(image)
    if orientation in range(2, 9):
        rgb = _apply_orientation(rgb, orientation)
    return Decoded(rgb, original_mode, original_format, rotated=orientation in range(2, 9))


_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


def _signature(data: bytes) -> str | None:
    """The format a file's magic number announces (PNG, JPEG, GIF, TIFF, WebP), if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((kind for magic, kind in _SIGNATURES.items() if data.startswith(magic)), None)


def format_name(image: Image.Image) -> str:
    """The format Pillow identified, as a person reads it: 'EPS (Encapsulated Postscript)'."""
    name = image.format or "an unknown format"
    description = getattr(image, "format_description", None)
    return f"{name} ({description})" if description and description.casefold() != name.casefold() else name


# What Pillow says when decoding needs a library or program it does not have.
_MISSING_TOOL = ("ghostscript", "not available", "cannot find loader", "no handler", "not supported on this platform")


def _decode_error(exc: Exception, image: Image.Image | None = None) -> ImageRejected:
    """The rejection for an error Pillow raised while reading a header or the pixels (of `image`)."""
    if image is not None and isinstance(exc, OSError) and any(w in str(exc).lower() for w in _MISSING_TOOL):
        return ImageRejected(
            UNSUPPORTED_FORMAT,
            f"the file holds {format_name(image)}, which cannot be decoded here ({exc}): {CONVERT_HINT}",
        )
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return ImageRejected(TRUNCATED, f"the file ends before the image does ({type(exc).__name__}: {exc})")
    if isinstance(exc, ValueError) and "MAX_TEXT_CHUNK" in str(exc):
        return ImageRejected(
            CORRUPT,
            "a compressed metadata chunk (text or colour profile) expands beyond "
            "Pillow's safety limit (PngImagePlugin.MAX_TEXT_CHUNK): refused as a "
            "possible decompression bomb",
        )
    return ImageRejected(CORRUPT, f"{type(exc).__name__}: {exc}")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # unreadable EXIF is not a reason to reject the pixels
        return 1


_TRANSPOSES = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _apply_orientation(image: Image.Image, orientation: int) -> Image.Image:
    """Apply an EXIF orientation (2..8) the way ImageOps.exif_transpose does."""
    return image.transpose(_TRANSPOSES[orientation])


def _sample_bits(image: Image.Image) -> int:
    """Bits per sample of a mode "I" image (Pillow's 32-bit integer mode, which also holds 16-bit data):
    TIFF says (BitsPerSample), PNG and PGM hold at most 16, anything else is taken as 32."""
    if image.format == "TIFF":
        bits = getattr(image, "tag_v2", {}).get(258)
        bits = max(bits) if isinstance(bits, tuple) and bits else bits
        return int(bits) if isinstance(bits, int) else 32
    return 16 if image.format in _AT_MOST_16_BITS else 32


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (transparency composited onto white)."""
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode == "I" and _sample_bits(image) > 16:
        raise ImageRejected(
            UNSUPPORTED_MODE,
            f"32-bit integer images (mode I, {_sample_bits(image)} bits per sample) have no agreed 0..255 scale: "
            "save it with 8 or 16 bits per sample (e.g. as a 16-bit PNG)",
        )
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image, dtype=np.int64)
        grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if mode == "F":
        raise ImageRejected(
            UNSUPPORTED_MODE,
            "32-bit float images (mode F) have no agreed 0..255 scale: save it with 8 or 16 bits per sample "
            "(e.g. as a 16-bit PNG)",
        )
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageRejected(UNSUPPORTED_MODE, f"cannot convert mode {mode} to RGB: {exc}") from None

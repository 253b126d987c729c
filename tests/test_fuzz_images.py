"""Fuzz corpus, images: crafted image files, each dropped into a small class-folder dataset of
valid images and run through the download stage (`tests.fuzzing.ingest`). Each case asserts
exactly what a user sees: the reason and the words of its rejected.csv row, or that it was
accepted (with the mode and format the manifest records) and packed as bytes that training's
decoder (`tf.io.decode_image`) reads back as exactly the validated pixels. Every case also checks
that the valid images beside it were kept, and (through the harness) that nothing was written
outside the input, store and cache.

All inputs are generated here and tiny: bombs declare huge sizes in a few bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_tasks import images, shards
from tests.fuzzing import assert_kept, ingest
from tests.helpers import (
    break_crc,
    encoded,
    exif_rotated,
    png_chunk,
    png_raw,
    png_rgb16,
    png_with_text,
    png_without_adler,
)
from tests.imagegen import class_image

CLASSES = ("cats", "dogs")


# ================================================================== crafting
def noise(height: int = 16, width: int = 16, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png(pixels: np.ndarray | None = None) -> bytes:
    return encoded(Image.fromarray(noise() if pixels is None else pixels), "PNG")


def jpeg(pixels: np.ndarray | None = None, **kwargs) -> bytes:
    return encoded(Image.fromarray(noise(32, 32) if pixels is None else pixels), "JPEG", **kwargs)


def jpeg_bad_huffman() -> bytes:
    """A JPEG whose entropy-coded scan is overwritten with invalid codes after its header."""
    data = bytearray(jpeg(noise(64, 64), quality=90))
    scan = data.index(b"\xff\xda")
    for i in range(scan + 20, scan + 400, 7):
        data[i] = 0xFF if data[i] != 0xFF else 0
    return bytes(data)


def jpeg_declaring(width: int, height: int) -> bytes:
    """A tiny JPEG whose frame header (SOF0) declares `width` x `height`."""
    data = bytearray(jpeg(noise(8, 8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.fromarray(noise(seed=s)).convert("P") for s in (1, 2, 3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def metadata_bomb() -> bytes:
    """A PNG with a zTXt chunk that inflates ~8 kB into 8 MiB of text."""
    plain = png()
    bomb = png_chunk(b"zTXt", b"Comment\0\0" + zlib.compress(b"a" * (8 << 20)))
    return plain[:33] + bomb + plain[33:]  # right after the 25-byte IHDR chunk


def header_only_png(width: int, height: int) -> bytes:
    return png_raw(width, height, 8, 2, None)  # a valid header, next to no pixel data


def float_tiff() -> bytes:
    return encoded(Image.fromarray(np.random.default_rng(0).random((8, 8)).astype(np.float32), "F"), "TIFF")


def int32_tiff() -> bytes:
    """A 32-bit integer TIFF (Pillow mode I) whose values reach far past 16 bits."""
    values = np.random.default_rng(0).integers(0, 2**31 - 1, (16, 16), dtype=np.int32)
    return encoded(Image.fromarray(values, "I"), "TIFF")


def postscript() -> bytes:
    """An EPS file, as Pillow writes one (reading it back would need Ghostscript)."""
    return encoded(Image.fromarray(noise()), "EPS")


def fits() -> bytes:
    """A FITS image (astronomy): Pillow decodes it, but it is not a supported image format."""
    cards = [("SIMPLE", "T"), ("BITPIX", "8"), ("NAXIS", "2"), ("NAXIS1", "16"), ("NAXIS2", "16")]
    header = b"".join(f"{k:<8}= {v:>20}".ljust(80).encode() for k, v in cards) + b"END".ljust(80)
    return header.ljust(2880, b" ") + noise()[..., 0].tobytes().ljust(2880, b"\0")


def pgm16() -> bytes:
    """A 16-bit PGM (maxval 65535), which Pillow reads as mode I."""
    return b"P5\n16 16\n65535\n" + (noise()[..., 0].astype(">u2") * 257).tobytes()


# ================================================================== expected outcomes
@dataclass(frozen=True)
class Rejected:
    reason: str
    words: str  # the rejected.csv detail must contain these words


@dataclass(frozen=True)
class Accepted:
    mode: str  # the original mode the manifest records
    format: str
    size: tuple[int, int] | None = None  # (width, height) after EXIF orientation, when it matters


CRC_DAMAGED = "fails its CRC check: the file is damaged"

# file name -> (bytes, what the user sees)
CASES = {
    # Damaged PNG files: TensorFlow's decoder refuses them, so ingest must too.
    "crc_idat.png": (
        lambda: break_crc(png(), b"IDAT")[0],
        Rejected(images.CORRUPT, f"PNG chunk IDAT at byte 33 {CRC_DAMAGED}"),
    ),
    "crc_ihdr.png": (
        lambda: break_crc(png(), b"IHDR")[0],
        Rejected(images.CORRUPT, f"PNG chunk IHDR at byte 8 {CRC_DAMAGED}"),
    ),
    "crc_ancillary.png": (
        lambda: break_crc(png_with_text(noise()), b"tEXt")[0],
        Rejected(images.CORRUPT, f"PNG chunk tEXt at byte 33 {CRC_DAMAGED}"),
    ),
    "crc_iend.png": (lambda: break_crc(png(), b"IEND")[0], Rejected(images.CORRUPT, "PNG chunk IEND at byte")),
    "truncated.png": (
        lambda: png()[:400],
        Rejected(images.TRUNCATED, "the file ends at byte 400, before its pixel data (PNG chunk IDAT)"),
    ),
    "cut_in_pixels.png": (
        lambda: png(noise(160, 160))[:70_000],
        Rejected(images.TRUNCATED, "the file ends before the image does"),
    ),
    "garbage_after_signature.png": (
        lambda: b"\x89PNG\r\n\x1a\n" + b"\0garbage" * 20,
        Rejected(images.CORRUPT, "its first chunk is not the IHDR header"),
    ),
    "truncated.jpg": (lambda: jpeg()[:300], Rejected(images.TRUNCATED, "the file ends before the image does")),
    "bad_huffman.jpg": (jpeg_bad_huffman, Rejected(images.CORRUPT, "broken data stream")),
    "zero_width.png": (
        lambda: header_only_png(0, 16),
        Rejected(images.CORRUPT, "starts like a PNG image but its header is invalid"),
    ),
    # Not images at all.
    "empty.jpg": (lambda: b"", Rejected(images.EMPTY, "the file has 0 bytes")),
    "text_named.jpg": (lambda: b"Photo taken at the beach\n", Rejected(images.NOT_AN_IMAGE, "does not recognise")),
    "drawing.svg": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        Rejected(images.NOT_AN_IMAGE, "does not recognise"),
    ),
    # Bombs: huge declared sizes or expanding metadata in a few bytes.
    "bomb.png": (lambda: header_only_png(50_000, 50_000), Rejected(images.TOO_MANY_PIXELS, "decompression bomb")),
    "bomb_over_limit.png": (
        lambda: header_only_png(8_000, 6_000),
        Rejected(images.TOO_MANY_PIXELS, "8000x6000 = 48000000 pixels is over the limit of 40000000"),
    ),
    "bomb.jpg": (lambda: jpeg_declaring(60_000, 60_000), Rejected(images.TOO_MANY_PIXELS, "decompression bomb")),
    "ztxt_bomb.png": (metadata_bomb, Rejected(images.CORRUPT, "refused as a possible decompression bomb")),
    # Shapes the config limits refuse (min_image_side=8, max_aspect_ratio=10 by default).
    "dot.png": (
        lambda: png(noise(1, 1)),
        Rejected(images.TOO_SMALL, "the shorter side is 1 px, below min_image_side=8"),
    ),
    "strip.png": (
        lambda: header_only_png(10_000, 20),
        Rejected(images.EXTREME_ASPECT_RATIO, "10000x20 has aspect ratio 500, above max_aspect_ratio=10"),
    ),
    "thin.jpg": (
        lambda: jpeg(noise(100, 9)),
        Rejected(images.EXTREME_ASPECT_RATIO, "9x100 has aspect ratio 11.11, above max_aspect_ratio=10"),
    ),
    "float.tif": (float_tiff, Rejected(images.UNSUPPORTED_MODE, "32-bit float")),
    "int32.tif": (
        int32_tiff,
        Rejected(
            images.UNSUPPORTED_MODE,
            "32-bit integer images (mode I, 32 bits per sample) have no agreed 0..255 scale: save it with 8 or "
            "16 bits per sample (e.g. as a 16-bit PNG)",
        ),
    ),
    # Formats Pillow identifies but that are not supported: named, with what to do.
    "postscript_named.jpg": (
        postscript,
        Rejected(
            images.UNSUPPORTED_FORMAT,
            "the file holds EPS (Encapsulated Postscript), which is not a supported image format: convert it to "
            "PNG or JPEG",
        ),
    ),
    "telescope.png": (
        fits,
        Rejected(images.UNSUPPORTED_FORMAT, "the file holds FITS, which is not a supported image format"),
    ),
    # Odd but valid: accepted, converted to 8-bit RGB, packed as PNG that training decodes.
    "garbage_after_iend.png": (lambda: png() + b"\0garbage" * 16, Accepted("RGB", "PNG")),
    "no_iend.png": (lambda: png()[:-12], Accepted("RGB", "PNG")),
    "no_adler32.png": (lambda: png_without_adler(noise(12, 20)), Accepted("RGB", "PNG")),
    "text_after_pixels.png": (lambda: png_with_text(noise(), after_pixels=True), Accepted("RGB", "PNG")),
    "animated.gif": (animated_gif, Accepted("P", "GIF")),
    "lossless.webp": (lambda: encoded(Image.fromarray(noise()), "WEBP", lossless=True), Accepted("RGB", "WEBP")),
    "plain.bmp": (lambda: encoded(Image.fromarray(noise()), "BMP"), Accepted("RGB", "BMP")),
    "grey16.tif": (
        lambda: encoded(Image.fromarray(noise()[..., 0].astype(np.uint16) * 257), "TIFF"),
        Accepted("I;16", "TIFF"),
    ),
    "grey16_big_endian.tif": (
        lambda: encoded(Image.frombytes("I;16B", (16, 16), (noise()[..., 0].astype(">u2") * 257).tobytes()), "TIFF"),
        Accepted("I;16B", "TIFF"),
    ),
    "grey16.pgm": (pgm16, Accepted("I", "PPM")),  # mode I holding 16-bit samples: scaled, not refused
    "rgb16.png": (lambda: png_rgb16(noise().astype(np.uint16) * 256), Accepted("RGB", "PNG")),
    "cmyk.jpg": (lambda: encoded(Image.new("CMYK", (16, 16), (10, 200, 30, 40)), "JPEG"), Accepted("CMYK", "JPEG")),
    "palette_transparent.png": (
        lambda: encoded(Image.fromarray(noise()).convert("P"), "PNG", transparency=0),
        Accepted("P", "PNG"),
    ),
    "png_named.jpg": (lambda: png(noise(seed=9)), Accepted("RGB", "PNG")),
    "rotated.jpg": (lambda: exif_rotated("JPEG", noise(8, 24, seed=5)), Accepted("RGB", "JPEG", (8, 24))),
    "edge_ratio.png": (lambda: png(noise(8, 80, seed=4)), Accepted("RGB", "PNG", (80, 8))),
}


# ================================================================== running a case
def dataset_with(tmp_path: Path, name: str, data: bytes) -> tuple[Path, list[str]]:
    """input/ds/{cats,dogs}/ with two valid PNGs per class, plus `name` in cats/; (root, valid sources)."""
    root = tmp_path / "input" / "ds"
    valid = []
    for c, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            class_image(c, np.random.default_rng(100 + 10 * c + i), size=12).save(root / cls / f"valid_{i}.png")
            valid.append(f"{cls}/valid_{i}.png")
    (root / "cats" / name).write_bytes(data)
    return root, valid


def packed_bytes(tmp_path: Path, row: dict) -> bytes:
    """The encoded image the clean shards hold for one manifest row (what training decodes)."""
    path = tmp_path / "store" / row["shard"]
    return next(image for image, _, key in shards.iter_records([path]) if key == row["key"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_crafted_image(tmp_path, monkeypatch, name):
    make, expected = CASES[name]
    data = make()
    root, valid = dataset_with(tmp_path, name, data)
    outcome = ingest(tmp_path, root, monkeypatch)
    assert_kept(outcome, valid)
    source = f"cats/{name}"
    if isinstance(expected, Rejected):
        assert source not in outcome.manifest
        row = outcome.rejected[source]
        assert (row["class"], row["reason"]) == ("cats", expected.reason), row
        assert expected.words in row["detail"], row["detail"]
        assert outcome.ingest["rejected_by_reason"] == {expected.reason: 1}
    else:
        import tensorflow as tf

        assert source not in outcome.rejected, outcome.rejected[source]
        row = outcome.manifest[source]
        assert (row["mode"], row["format"]) == (expected.mode, expected.format)
        pixels = np.asarray(images.load_rgb(root / "cats" / name))
        if expected.size:
            assert (int(row["width"]), int(row["height"])) == expected.size == pixels.shape[1::-1]
        assert row["key"] == images.pixel_key(pixels)
        decoded = tf.io.decode_image(packed_bytes(tmp_path, row), channels=3, expand_animations=False).numpy()
        assert np.array_equal(decoded, pixels)  # training reads exactly the validated pixels


def test_the_corpus_covers_every_rejection_reason_of_an_image():
    reasons = {e.reason for _, e in CASES.values() if isinstance(e, Rejected)}
    assert reasons == {
        images.CORRUPT,
        images.TRUNCATED,
        images.EMPTY,
        images.NOT_AN_IMAGE,
        images.TOO_MANY_PIXELS,
        images.TOO_SMALL,
        images.EXTREME_ASPECT_RATIO,
        images.UNSUPPORTED_MODE,
        images.UNSUPPORTED_FORMAT,
    }
    assert len(CASES) >= 30


def test_size_limits_follow_the_config(tmp_path, monkeypatch):
    # Looser limits accept what the defaults refuse; tighter ones refuse what the defaults accept.
    root, valid = dataset_with(tmp_path, "strip.png", png(noise(8, 120)))  # aspect ratio 15
    (root / "dogs" / "small.png").write_bytes(png(noise(10, 10, seed=3)))
    default = ingest(tmp_path / "default", root, monkeypatch)
    assert default.reasons() == {"cats/strip.png": images.EXTREME_ASPECT_RATIO}
    loose = ingest(tmp_path / "loose", root, monkeypatch, max_aspect_ratio=20)
    assert_kept(loose, valid + ["cats/strip.png", "dogs/small.png"])
    tight = ingest(tmp_path / "tight", root, monkeypatch, min_image_side=12, max_aspect_ratio=20)
    assert_kept(tight, valid)  # the valid images are 12 x 12
    assert {s: r["detail"] for s, r in tight.rejected.items()} == {
        "cats/strip.png": "the shorter side is 8 px, below min_image_side=12",
        "dogs/small.png": "the shorter side is 10 px, below min_image_side=12",
    }


def test_a_named_pipe_and_a_link_to_a_device_in_a_class_folder_are_listed_not_read(tmp_path, monkeypatch):
    import os

    root, valid = dataset_with(tmp_path, "valid_extra.png", png(noise(seed=11)))
    os.mkfifo(root / "cats" / "pipe.png")  # reading it would wait forever for a writer
    (root / "dogs" / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    outcome = ingest(tmp_path, root, monkeypatch)
    assert_kept(outcome, valid + ["cats/valid_extra.png"])
    assert {s: (r["class"], r["reason"], r["detail"]) for s, r in outcome.rejected.items()} == {
        "cats/pipe.png": ("cats", images.SPECIAL_FILE, "a named pipe (FIFO): not a regular file, not read"),
        "dogs/zero.png": ("dogs", images.SPECIAL_FILE, "a character device: not a regular file, not read"),
    }

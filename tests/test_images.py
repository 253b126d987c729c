"""images.load_rgb / validate: one test per bad input and per colour-mode conversion."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_tasks import images
from tests.helpers import (
    BAD_FILES,
    CONVERTED_FILES,
    break_crc,
    encoded,
    exif_rotated,
    noise,
    png_chunk,
    png_chunks,
    png_raw,
    png_with_text,
    png_without_adler,
    write,
)


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_is_rejected_with_its_reason(tmp_path, name):
    make, reason = BAD_FILES[name]
    path = write(tmp_path, name, make())
    with pytest.raises(images.ImageRejected) as info:
        images.load_rgb(path)
    assert info.value.reason == reason


def test_decompression_bomb_warning_is_a_rejection_not_a_pass(tmp_path):
    # 100 Mpx is between Pillow's warning (89 Mpx) and error (179 Mpx) thresholds.
    path = write(tmp_path, "warn.png", png_raw(10000, 10000, 8, 2, None))
    with pytest.raises(images.ImageRejected, match="decompression bomb") as info:
        images.load_rgb(path)
    assert info.value.reason == images.TOO_MANY_PIXELS


def test_pixel_limit_is_configurable(tmp_path):
    path = write(tmp_path, "ok.png", encoded(Image.fromarray(noise(20, 20)), "PNG"))
    assert images.load_rgb(path).size == (20, 20)
    with pytest.raises(images.ImageRejected, match="400 pixels is over the limit of 399") as info:
        images.load_rgb(path, max_pixels=399)
    assert info.value.reason == images.TOO_MANY_PIXELS


def test_unreadable_path_is_rejected(tmp_path):
    with pytest.raises(images.ImageRejected) as info:
        images.load_rgb(tmp_path / "missing.png")
    assert info.value.reason == images.UNREADABLE


# ------------------------------------------------------------------ conversions
def _validated(tmp_path, name):
    make, mode = CONVERTED_FILES[name]
    result = images.validate(write(tmp_path, name, make()))
    image = images.load_rgb(tmp_path / name)
    assert image.mode == "RGB"
    assert result.original_mode == mode
    return result, np.asarray(image)


def test_cmyk_becomes_rgb(tmp_path):
    result, pixels = _validated(tmp_path, "cmyk.jpg")
    expected = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    assert np.array_equal(pixels, expected)
    assert result.reencoded


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    result, pixels = _validated(tmp_path, "grey16.png")
    assert pixels[0, :, 0].tolist() == [0, 3, 128, 255]  # v >> 8, where a plain convert clips to 255
    assert (pixels[..., 0] == pixels[..., 1]).all()
    assert result.reencoded


# The 16-bit greyscale files Pillow reads, in each mode it gives them: all scaled v >> 8, as before.
_GREY16 = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
SIXTEEN_BIT_GREY = {
    "grey16.png": (lambda: encoded(Image.fromarray(_GREY16), "PNG"), "I;16"),
    "grey16.tif": (lambda: encoded(Image.fromarray(_GREY16), "TIFF"), "I;16"),
    "grey16_big_endian.tif": (
        lambda: encoded(Image.frombytes("I;16B", (4, 1), _GREY16.astype(">u2").tobytes()), "TIFF"),
        "I;16B",
    ),
    "grey16.pgm": (lambda: b"P5\n4 1\n65535\n" + _GREY16.astype(">u2").tobytes(), "I"),  # 16 bits read as mode I
}


@pytest.mark.parametrize("name", sorted(SIXTEEN_BIT_GREY))
def test_16_bit_grey_in_every_mode_pillow_gives_it_is_scaled(tmp_path, name):
    make, mode = SIXTEEN_BIT_GREY[name]
    path = write(tmp_path, name, make())
    result = images.validate(path)
    pixels = np.asarray(images.load_rgb(path))
    assert result.original_mode == mode
    assert pixels[0, :, 0].tolist() == [0, 3, 128, 255]
    assert (pixels[..., 0] == pixels[..., 2]).all()


@pytest.mark.parametrize("top", [2**31 - 1, 3])
def test_a_32_bit_integer_tiff_is_an_unsupported_mode_not_a_white_image(tmp_path, top):
    # Clipped to 16 bits and shifted, every value over 65535 came out white (255); small values came
    # out black. Whatever its values, a 32-bit image has no agreed 0..255 scale, as 32-bit float has not.
    values = np.array([[0, 1, min(70_000, top), top]], dtype=np.int32)
    path = write(tmp_path, "int32.tif", encoded(Image.fromarray(values, "I"), "TIFF"))
    for read in (images.load_rgb, images.validate):
        with pytest.raises(images.ImageRejected) as info:
            read(path)
        assert str(info.value) == (
            "unsupported_mode: 32-bit integer images (mode I, 32 bits per sample) have no agreed 0..255 "
            "scale: save it with 8 or 16 bits per sample (e.g. as a 16-bit PNG)"
        )


def test_a_32_bit_float_tiff_says_what_to_do(tmp_path):
    path = write(tmp_path, "float.tif", encoded(Image.fromarray(np.zeros((4, 4), np.float32), "F"), "TIFF"))
    with pytest.raises(images.ImageRejected) as info:
        images.validate(path)
    assert str(info.value) == (
        "unsupported_mode: 32-bit float images (mode F) have no agreed 0..255 scale: save it with 8 or 16 bits "
        "per sample (e.g. as a 16-bit PNG)"
    )


def test_16_bit_rgb_is_reencoded_as_8_bit(tmp_path):
    result, pixels = _validated(tmp_path, "rgb16.png")
    assert np.array_equal(pixels, noise())  # (v * 256 + 7) >> 8 == v: the low byte is dropped
    assert result.reencoded  # the original 48-bit PNG would not decode to these 8-bit values


def test_palette_becomes_rgb(tmp_path):
    result, pixels = _validated(tmp_path, "palette.png")
    expected = np.asarray(Image.open(tmp_path / "palette.png").convert("RGB"))
    assert np.array_equal(pixels, expected)
    assert result.original_format == "PNG"


def test_rgba_is_composited_on_white(tmp_path):
    _, pixels = _validated(tmp_path, "rgba.png")
    assert pixels[0, 0].tolist() == [255, 127, 127]


def test_greyscale_becomes_rgb(tmp_path):
    _, pixels = _validated(tmp_path, "grey.png")
    assert np.array_equal(pixels[..., 2], noise(seed=4)[..., 0])


def test_exif_orientation_is_applied(tmp_path):
    source = noise(8, 16, seed=6)
    path = write(tmp_path, "rotated.png", exif_rotated("PNG", source, orientation=6))
    result = images.validate(path)
    pixels = np.asarray(images.load_rgb(path))
    assert pixels.shape == (16, 8, 3)
    assert np.array_equal(pixels, np.rot90(source, k=-1))  # orientation 6: rotate 90 degrees clockwise
    assert result.reencoded
    assert (result.width, result.height) == (8, 16)


def test_plain_rgb_png_is_reencoded_too(tmp_path):
    # Original PNG bytes are never packed: Pillow reads PNGs that libpng (training) refuses.
    pixels = noise(seed=11)
    data = encoded(Image.fromarray(pixels), "PNG", compress_level=9)
    result = images.validate(write(tmp_path, "plain.png", data))
    assert result.encoded != data
    assert result.reencoded
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(result.encoded))), pixels)


def test_key_and_channel_sums_come_from_the_pixels(tmp_path):
    pixels = noise(seed=9)
    a = images.validate(write(tmp_path, "a.png", encoded(Image.fromarray(pixels), "PNG")))
    b = images.validate(write(tmp_path, "b.bmp", encoded(Image.fromarray(pixels), "BMP")))
    assert a.key == b.key == images.pixel_key(pixels)  # same pixels, different files: one key
    assert a.channel_sum == tuple(pixels.sum(axis=(0, 1)).tolist())
    assert a.channel_sumsq == tuple((pixels.astype(np.int64) ** 2).sum(axis=(0, 1)).tolist())


def test_shard_bytes_decode_with_tensorflow_to_the_validated_pixels(tmp_path):
    import tensorflow as tf

    files = {name: make() for name, (make, _) in CONVERTED_FILES.items()}
    files["photo.jpg"] = encoded(Image.fromarray(noise(32, 32, seed=8)), "JPEG", quality=90)
    files["plain.png"] = encoded(Image.fromarray(noise(seed=10)), "PNG")
    for name, data in files.items():
        path = write(tmp_path, name, data)
        result = images.validate(path)
        decoded = tf.io.decode_image(result.encoded, channels=3, expand_animations=False).numpy()
        assert np.array_equal(decoded, np.asarray(images.load_rgb(path))), name


# ------------------------------------------------------------------ what training's decoder accepts
@pytest.mark.parametrize("kind", [b"IHDR", b"IDAT", b"IEND", b"tEXt"])
def test_png_with_a_bad_chunk_crc_is_corrupt(tmp_path, kind):
    # Pillow decodes a PNG whose IDAT/IEND CRC is wrong; TensorFlow's decoder (libpng) refuses it
    # with "Invalid PNG data", so it must not pass validation.
    damaged, pos = break_crc(png_with_text(noise(12, 20)), kind)
    path = write(tmp_path, "crc.png", damaged)
    for read in (images.load_rgb, images.validate):
        with pytest.raises(images.ImageRejected) as info:
            read(path)
        assert info.value.reason == images.CORRUPT
        assert info.value.detail == (
            f"PNG chunk {kind.decode()} at byte {pos} fails its CRC check: the file is damaged"
        )


def test_tensorflow_refuses_the_crc_damaged_png_that_pillow_reads():
    # The bug this guards against: Pillow alone does not notice the damage.
    import tensorflow as tf

    damaged, _ = break_crc(encoded(Image.fromarray(noise()), "PNG"), b"IDAT")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(damaged))), noise())
    with pytest.raises(tf.errors.InvalidArgumentError, match="Invalid PNG data"):
        tf.io.decode_image(damaged, channels=3)


# name -> bytes Pillow decodes to noise(10, 14) but libpng (tf.io.decode_image) refuses as they are
PILLOW_ONLY_PNGS = {
    "no_iend.png": lambda: encoded(Image.fromarray(noise(10, 14)), "PNG")[:-12],
    "no_adler32.png": lambda: png_without_adler(noise(10, 14)),
    "unknown_critical_chunk.png": lambda: (lambda p: p[:-12] + png_chunk(b"ABCD", b"xx") + p[-12:])(
        encoded(Image.fromarray(noise(10, 14)), "PNG")
    ),
}


@pytest.mark.parametrize("name", sorted(PILLOW_ONLY_PNGS))
def test_accepted_png_decodes_in_training_even_when_its_original_bytes_would_not(tmp_path, name):
    import tensorflow as tf

    data = PILLOW_ONLY_PNGS[name]()
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf.io.decode_image(data, channels=3)  # the original bytes: training would fail
    result = images.validate(write(tmp_path, name, data))
    decoded = tf.io.decode_image(result.encoded, channels=3, expand_animations=False).numpy()
    assert np.array_equal(decoded, noise(10, 14))
    assert result.reencoded


def test_bytes_after_iend_and_text_after_the_pixels_are_harmless(tmp_path):
    import tensorflow as tf

    for name, data in {
        "trailing.png": encoded(Image.fromarray(noise()), "PNG") + b"garbage" * 8,
        "late_text.png": png_with_text(noise(), after_pixels=True),
    }.items():
        result = images.validate(write(tmp_path, name, data))
        assert np.array_equal(tf.io.decode_image(result.encoded, channels=3).numpy(), noise()), name


# ------------------------------------------------------------------ size and aspect-ratio limits
LIMITS = {"min_side": 8, "max_aspect_ratio": 10.0}


@pytest.mark.parametrize(
    "width, height, reason, detail",
    [
        (1, 1, images.TOO_SMALL, "the shorter side is 1 px, below min_image_side=8"),
        (40, 3, images.TOO_SMALL, "the shorter side is 3 px, below min_image_side=8"),
        (10000, 20, images.EXTREME_ASPECT_RATIO, "10000x20 has aspect ratio 500, above max_aspect_ratio=10"),
        (9, 100, images.EXTREME_ASPECT_RATIO, "9x100 has aspect ratio 11.11, above max_aspect_ratio=10"),
    ],
)
def test_too_small_and_too_elongated_images_are_rejected(tmp_path, width, height, reason, detail):
    path = write(tmp_path, "odd.png", encoded(Image.new("RGB", (width, height), (9, 99, 199)), "PNG"))
    for read in (images.load_rgb, images.validate):
        with pytest.raises(images.ImageRejected) as info:
            read(path, **LIMITS)
        assert (info.value.reason, info.value.detail) == (reason, detail)
        assert str(info.value) == f"{reason}: {detail}"  # as predictions_rejected.csv words it


def test_limits_are_inclusive_and_off_by_default(tmp_path):
    for width, height in [(8, 8), (80, 8), (8, 80)]:  # exactly min_side and exactly max_aspect_ratio
        path = write(tmp_path, f"{width}x{height}.png", encoded(Image.new("RGB", (width, height)), "PNG"))
        assert images.validate(path, **LIMITS).width == width
    tiny = write(tmp_path, "tiny.png", encoded(Image.new("RGB", (1, 1)), "PNG"))
    long = write(tmp_path, "long.png", encoded(Image.new("RGB", (1000, 2)), "PNG"))
    assert images.load_rgb(tiny).size == (1, 1)
    assert images.load_rgb(long).size == (1000, 2)


def test_limits_are_checked_from_the_header_before_decoding(tmp_path):
    # A 10000x20 header with no pixel data at all: rejected for its shape, not as truncated.
    path = write(tmp_path, "header_only.png", png_raw(10000, 20, 8, 2, None))
    with pytest.raises(images.ImageRejected) as info:
        images.validate(path, **LIMITS)
    assert info.value.reason == images.EXTREME_ASPECT_RATIO


# ------------------------------------------------------------------ words for damaged headers
def png_with_chunk_before_pixels(pixels: np.ndarray, chunk: bytes) -> bytes:
    plain = encoded(Image.fromarray(pixels), "PNG")
    cut = next(pos for kind, pos, _ in png_chunks(plain) if kind == b"IDAT")
    return plain[:cut] + chunk + plain[cut:]


def test_a_png_whose_header_pillow_cannot_read_is_corrupt_not_a_non_image(tmp_path):
    header = struct.pack(">IIBBBBB", 0, 16, 8, 2, 0, 0, 0)  # width 0: not a valid PNG header
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IEND", b"")
    with pytest.raises(images.ImageRejected) as info:
        images.validate(write(tmp_path, "zero_width.png", data))
    assert str(info.value) == "corrupt: the file starts like a PNG image but its header is invalid"


@pytest.mark.parametrize("kind, body", [(b"zTXt", b"Comment\0\0"), (b"iCCP", b"icc\0\0")])
def test_a_metadata_decompression_bomb_is_refused_in_words(tmp_path, kind, body):
    bomb = png_chunk(kind, body + zlib.compress(b"a" * (8 << 20)))  # 8 MiB of text from ~8 kB
    path = write(tmp_path, "bomb.png", png_with_chunk_before_pixels(noise(), bomb))
    with pytest.raises(images.ImageRejected, match="refused as a possible decompression bomb") as info:
        images.validate(path)
    assert info.value.reason == images.CORRUPT


# ================================================================== formats
def test_postscript_named_jpg_is_an_unsupported_format_not_a_ghostscript_error(tmp_path):
    path = write(tmp_path, "photo.jpg", encoded(Image.fromarray(noise()), "EPS"))
    for read in (images.load_rgb, images.validate):
        with pytest.raises(images.ImageRejected) as info:
            read(path)
        assert str(info.value) == (
            "unsupported_format: the file holds EPS (Encapsulated Postscript), which is not a supported image "
            "format: convert it to PNG or JPEG"
        )
        assert "Ghostscript" not in str(info.value)


def test_a_format_pillow_decodes_but_the_pipeline_does_not_accept_is_named(tmp_path):
    data = encoded(Image.fromarray(noise()[..., 0]), "IM")  # Pillow's own IFUNC format: decodable, not accepted
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), noise()[..., 0])
    with pytest.raises(images.ImageRejected) as info:
        images.validate(write(tmp_path, "scan.png", data))
    assert (info.value.reason, info.value.detail) == (
        images.UNSUPPORTED_FORMAT,
        "the file holds IM (IFUNC Image Memory), which is not a supported image format: convert it to PNG or JPEG",
    )


def test_a_supported_format_whose_decoder_is_missing_is_unsupported_here_not_corrupt(tmp_path, monkeypatch):
    from PIL import Image as PILImage

    data = encoded(Image.fromarray(noise()), "JPEG2000")
    monkeypatch.delattr(PILImage.core, "jpeg2k_decoder")  # as on a Pillow built without OpenJPEG
    with pytest.raises(images.ImageRejected) as info:
        images.validate(write(tmp_path, "photo.jp2", data))
    assert str(info.value) == (
        "unsupported_format: the file holds JPEG2000 (JPEG 2000 (ISO 15444)), which cannot be decoded here "
        "(decoder jpeg2k not available): convert it to PNG or JPEG"
    )


def test_every_supported_format_is_one_pillow_can_open():
    Image.init()
    assert images.SUPPORTED_FORMATS - set(Image.OPEN) <= {"MPO", "AVIF"}  # MPO opens through JPEG; AVIF needs libavif


# ================================================================== what is not a regular file, or too big
def _finishes(call, fifo: Path | None = None, timeout: float = 10.0):
    """Run `call` in a thread; (finished, result or exception). A call stuck reading `fifo` is
    released by opening its write end, so a failing test does not hang the suite."""
    import threading

    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(out=_outcome(call)), daemon=True)
    thread.start()
    thread.join(timeout)
    finished = not thread.is_alive()
    if not finished and fifo is not None:
        with open(fifo, "wb"):
            pass
        thread.join(timeout)
    return finished, box.get("out")


def _outcome(call):
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc


@pytest.mark.parametrize("reader", [images.validate, images.load_rgb])
def test_a_named_pipe_is_a_special_file_and_never_blocks(tmp_path, reader):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    finished, result = _finishes(lambda: reader(fifo), fifo)
    assert finished, "reading a named pipe blocked"
    assert isinstance(result, images.ImageRejected)
    assert result.reason == images.SPECIAL_FILE
    assert "a named pipe (FIFO): not a regular file" in result.detail


def test_a_link_to_a_device_is_a_special_file_not_read(tmp_path):
    link = tmp_path / "zero.png"
    link.symlink_to("/dev/zero")  # read whole, this never ends
    finished, result = _finishes(lambda: images.validate(link))
    assert finished, result
    assert isinstance(result, images.ImageRejected), result
    assert (result.reason, result.detail) == (images.SPECIAL_FILE, "a character device: not a regular file, not read")


def test_a_file_over_the_size_cap_is_rejected_without_reading_it(tmp_path, monkeypatch):
    path = write(tmp_path, "big.png", encoded(Image.fromarray(noise()), "PNG"))
    monkeypatch.setattr(images, "MAX_FILE_BYTES", path.stat().st_size - 1)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("the file was read"))
    with pytest.raises(images.ImageRejected) as info:
        images.validate(path)
    assert info.value.reason == images.OVERSIZED_FILE
    assert (
        f"{path.stat().st_size} bytes, over the {path.stat().st_size - 1}-byte limit per file "
        "(MAX_FILE_BYTES)" in info.value.detail
    )
    monkeypatch.setattr(images, "MAX_FILE_BYTES", path.stat().st_size)
    assert images.validate(path).width == 16  # at the cap: accepted

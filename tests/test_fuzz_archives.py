"""Fuzz corpus, archives and names: crafted zip/tar inputs run through the download stage
(`tests.fuzzing.ingest`), each asserting exactly what a user sees: the error type and the words
that say what is wrong (naming the archive as given, never a cache path), or the reason the
member is listed with, and that every valid image of the same input was kept. The harness also
checks that nothing was written outside the input, store and cache.

Every archive is tiny; bomb cases lower the caps (MAX_MEMBER_BYTES, RATIO_CHECK_BYTES) instead
of writing gigabytes.
"""

from __future__ import annotations

import io
import tarfile
import unicodedata
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cnn_tasks.ingest import extract, limits
from cnn_tasks.ingest.errors import DatasetError, DownloadError
from tests.fuzzing import assert_kept, ingest
from tests.helpers import dataset, make_tar, make_zip, png


# ================================================================== crafting
def kept_sources(members: dict[str, bytes], wrapper: str = "ds") -> list[str]:
    """The manifest sources (relative to the class root) of the valid images in `members`."""
    return [name.removeprefix(f"{wrapper}/") for name in members]


def link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def tar_in_order(path: Path, entries: list[tuple[str, bytes | tarfile.TarInfo]]) -> Path:
    """A tar.gz holding `entries` in this order: (name, file bytes) or (name, a link's TarInfo)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        for name, entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                info = tarfile.TarInfo(name)
                info.size = len(entry)
                tf.addfile(info, io.BytesIO(entry))
    return path


def zip_in_order(path: Path, entries: list[tuple[str, bytes | str]]) -> Path:
    """A zip holding `entries` in this order: (name, file bytes) or (name, a symbolic link's target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, entry in entries:
            if isinstance(entry, str):
                info = zipfile.ZipInfo(name)
                info.external_attr = 0o120777 << 16  # a Unix symbolic link, as `zip --symlinks` stores one
                zf.writestr(info, entry)
            else:
                zf.writestr(name, entry)
    return path


def patch_bytes(path: Path, old: bytes, new: bytes, count: int = 2) -> None:
    """Replace `old` (a placeholder name or field) by `new` of the same length, `count` times."""
    assert len(old) == len(new)
    data = path.read_bytes()
    assert data.count(old) == count, data.count(old)
    path.write_bytes(data.replace(old, new))


def patch_zip_header(archive: Path, member: str, local: int, central: int, value: int) -> None:
    """Set one byte of `member`'s headers: at `local` in its local header, `central` in its central
    directory entry (e.g. flags: 6 and 8, compression method: 8 and 10)."""
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        data[zf.getinfo(member).header_offset + local] = value
    name, at = member.encode(), data.find(b"PK\x01\x02")
    while data[at + 46 : at + 46 + len(name)] != name:
        at = data.find(b"PK\x01\x02", at + 4)
    data[at + central] = value
    archive.write_bytes(bytes(data))


def run(tmp_path, monkeypatch, archive: Path):
    return ingest(tmp_path, archive, monkeypatch)


def row(outcome, member: str) -> dict:
    """The rejected.csv row of an archive member (listed by its path in the archive)."""
    assert member in outcome.rejected, f"{member} not listed; rejected: {outcome.reasons()}"
    return outcome.rejected[member]


def assert_error(outcome, archive: Path, *words: str) -> None:
    """A DownloadError naming the archive as the user gave it, with `words`, and no cache path."""
    assert isinstance(outcome.error, DownloadError), outcome.error
    for word in (str(archive), *words):
        assert word in outcome.message, f"{word!r} not in {outcome.message!r}"
    assert "/cache/" not in outcome.message


@pytest.fixture
def inp(tmp_path) -> Path:
    return tmp_path / "input"


# ================================================================== bombs and oversized members
def test_zip_bomb_member_is_skipped_by_its_declared_size_before_reading(tmp_path, inp, monkeypatch):
    monkeypatch.setattr(limits, "MAX_MEMBER_BYTES", 1 << 20)
    members = dataset()
    archive = make_zip(inp / "bomb.zip", {**members, "ds/cats/zeros.png": bytes(4 << 20)})
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    bomb = row(out, "cats/zeros.png")
    assert bomb["reason"] == extract.OVERSIZED_MEMBER
    assert "MAX_MEMBER_BYTES" in bomb["detail"]
    assert not list((tmp_path / "cache").rglob("zeros.png"))  # never written


def test_zip_member_with_a_bomb_ratio_is_skipped(tmp_path, inp, monkeypatch):
    monkeypatch.setattr(limits, "RATIO_CHECK_BYTES", 1 << 20)
    members = dataset()
    archive = make_zip(inp / "ratio.zip", {**members, "ds/dogs/zeros.png": bytes(3 << 20)})
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    bomb = row(out, "dogs/zeros.png")
    assert bomb["reason"] == extract.OVERSIZED_MEMBER
    assert "MAX_COMPRESSION_RATIO" in bomb["detail"]


def test_tar_gz_bomb_is_stopped_while_streaming(tmp_path, inp, monkeypatch):
    # tar has no per-member compressed size: the ratio is measured on the bytes actually read.
    monkeypatch.setattr(limits, "RATIO_CHECK_BYTES", 1 << 20)
    monkeypatch.setattr(limits, "CHUNK_BYTES", 1 << 18)
    members = dataset()
    archive = make_tar(inp / "bomb.tar.gz", {"ds/cats/zeros.png": bytes(16 << 20), **members})
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    assert "expands" in row(out, "cats/zeros.png")["detail"]


def test_tar_member_over_the_cap_is_skipped_and_the_rest_kept(tmp_path, inp, monkeypatch):
    monkeypatch.setattr(limits, "MAX_MEMBER_BYTES", 100_000)
    members = dataset()
    noise = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    archive = make_tar(inp / "big.tar", {"ds/cats/huge.png": noise, **members}, mode="w")
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    assert row(out, "cats/huge.png")["reason"] == extract.OVERSIZED_MEMBER


def test_archive_expanding_far_beyond_its_size_is_refused(tmp_path, inp, monkeypatch):
    # Many members, each under the per-member checks, still add up to a bomb.
    monkeypatch.setattr(limits, "ARCHIVE_RATIO_CHECK_BYTES", 1 << 20)
    archive = make_zip(inp / "many.zip", {f"ds/cats/{i}.bin": bytes(600_000) for i in range(8)})
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "more than 100 times its own size", "archive bomb")


# ================================================================== names
def test_tar_with_latin1_names_is_decoded_readably(tmp_path, inp, monkeypatch):
    members = {"ds/café/1.png": png(0), "ds/café/2.png": png(0), "ds/Müll/1.png": png(1), "ds/Müll/2.png": png(1)}
    archive = make_tar(inp / "latin1.tar", members, mode="w", encoding="latin-1")
    assert b"caf\xe9" in archive.read_bytes()
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    assert out.ingest["classes"] == ["Müll", "café"]


def test_zip_with_utf8_names_but_no_utf8_flag(tmp_path, inp, monkeypatch):
    # Linux `zip` writes the bytes of the locale's names without setting the UTF-8 flag.
    archive = make_zip(
        inp / "noflag.zip",
        {"ds/cafX/1.png": png(0), "ds/cafX/2.png": png(0), "ds/dogs/1.png": png(1), "ds/dogs/2.png": png(1)},
    )
    patch_bytes(archive, b"cafX/", "caé/".encode(), count=4)
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, ["caé/1.png", "caé/2.png", "dogs/1.png", "dogs/2.png"])


def test_zip_with_cp437_names_from_windows(tmp_path, inp, monkeypatch):
    archive = make_zip(
        inp / "oem.zip",
        {"ds/cafX/1.png": png(0), "ds/cafX/2.png": png(0), "ds/dogs/1.png": png(1), "ds/dogs/2.png": png(1)},
    )
    patch_bytes(archive, b"cafX", b"caf\x82", count=4)  # 0x82 is 'é' in cp437 / cp850
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, ["café/1.png", "café/2.png", "dogs/1.png", "dogs/2.png"])


def test_nfd_names_from_macos_are_normalised_to_nfc(tmp_path, inp, monkeypatch):
    nfd = unicodedata.normalize("NFD", "café")
    archive = make_zip(
        inp / "nfd.zip",
        {f"ds/{nfd}/1.png": png(0), f"ds/{nfd}/2.png": png(0), "ds/dogs/1.png": png(1), "ds/dogs/2.png": png(1)},
    )
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, ["café/1.png", "café/2.png", "dogs/1.png", "dogs/2.png"])
    assert out.ingest["classes"] == ["café", "dogs"]


def test_names_differing_only_in_normalisation_are_refused(tmp_path, inp, monkeypatch):
    nfd = unicodedata.normalize("NFD", "café")
    archive = make_zip(inp / "clash.zip", {"ds/café/1.png": png(0), f"ds/{nfd}/2.png": png(0), "ds/dogs/1.png": png(1)})
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "differ only in Unicode normalisation", "rename one of them")


def test_windows_backslash_paths_land_in_their_folders(tmp_path, inp, monkeypatch):
    members = {name.replace("/", "\\"): data for name, data in dataset().items()}
    archive = make_zip(inp / "win.zip", members)
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, ["cats/0.png", "cats/1.png", "dogs/0.png", "dogs/1.png"])


def test_member_name_too_long_for_the_file_system(tmp_path, inp, monkeypatch):
    long_name = "x" * 300 + ".png"
    archive = make_zip(inp / "long.zip", {**dataset(), f"ds/cats/{long_name}": png(0)})
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "ds/cats/xxxx", "longer than this file system allows")


def test_a_name_used_as_file_and_folder_is_refused(tmp_path, inp, monkeypatch):
    archive = make_zip(inp / "clash.zip", {**dataset(), "ds/cats": b"a file", "ds/cats/2.png": png(0)})
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "'ds/cats' is both a file and a folder")


def test_a_repeated_member_name_keeps_the_first_copy(tmp_path, inp, monkeypatch):
    members = dataset()
    archive = inp / "twice.zip"
    make_zip(archive, members)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("ds/cats/0.png", png(1))
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    assert row(out, "cats/0.png")["reason"] == extract.DUPLICATE_MEMBER
    assert out.manifest["cats/0.png"]["class"] == "cats"


# ================================================================== links and special files
def test_tar_symlink_to_a_file_is_followed(tmp_path, inp, monkeypatch):
    members = {"pool/a.png": png(0), "pool/b.png": png(1), "ds/cats/x.png": png(0), "ds/dogs/y.png": png(1)}
    archive = make_tar(
        inp / "farm.tar.gz",
        members,
        [link("ds/cats/a.png", "../../pool/a.png"), link("ds/dogs/b.png", "../../pool/b.png")],
    )
    out = ingest(tmp_path, archive, monkeypatch, dataset_subdir="ds")
    assert_kept(out, ["cats/a.png", "dogs/b.png", "cats/x.png", "dogs/y.png"])


def test_tar_hard_link_is_followed(tmp_path, inp, monkeypatch):
    members = dataset()
    archive = make_tar(
        inp / "hard.tar", members, [link("ds/cats/copy.png", "ds/cats/0.png", tarfile.LNKTYPE)], mode="w"
    )
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    # the link's file was extracted: the stage sees the same pixels twice and lists the copy
    assert out.reasons()["cats/copy.png"] == "duplicate"


def test_links_to_folders_and_dangling_links_are_listed(tmp_path, inp, monkeypatch):
    members = dataset()
    archive = make_tar(
        inp / "links.tar.gz", members, [link("ds/cats/folder.png", "../dogs"), link("ds/cats/gone.png", "missing.png")]
    )
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    assert row(out, "cats/folder.png")["reason"] == extract.LINK
    assert "links to folders are not followed" in row(out, "cats/folder.png")["detail"]
    assert "not a file extracted from the archive" in row(out, "cats/gone.png")["detail"]


def test_zip_symlink_member_is_followed(tmp_path, inp, monkeypatch):
    members = dataset()
    archive = make_zip(inp / "zlink.zip", members)
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo("ds/cats/alias.png")
        info.external_attr = 0o120777 << 16
        zf.writestr(info, "0.png")
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    assert out.reasons()["cats/alias.png"] == "duplicate"


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
@pytest.mark.parametrize("target", ["/etc/passwd", "../../../etc/passwd"])
def test_a_link_pointing_outside_the_archive_is_listed_and_the_rest_kept(tmp_path, inp, monkeypatch, kind, target):
    members = dataset()
    archive = make_tar(inp / "escape.tar.gz", members, [link("ds/cats/passwd.png", target, kind)])
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    listed = row(out, "cats/passwd.png")
    assert (listed["class"], listed["reason"]) == ("cats", extract.LINK)
    kind_word = "symbolic" if kind == tarfile.SYMTYPE else "hard"
    assert listed["detail"] == f"{kind_word} link to {target!r} points outside the archive: not followed"
    assert not list((tmp_path / "cache").rglob("passwd*"))  # nothing of it on disk


def test_devices_and_fifos_are_listed_as_special_files(tmp_path, inp, monkeypatch):
    members = dataset()
    fifo, device = tarfile.TarInfo("ds/cats/pipe.png"), tarfile.TarInfo("ds/dogs/disk.png")
    fifo.type, device.type = tarfile.FIFOTYPE, tarfile.BLKTYPE
    archive = make_tar(inp / "special.tar", members, [fifo, device], mode="w")
    out = run(tmp_path, monkeypatch, archive)
    assert_kept(out, kept_sources(members))
    assert row(out, "cats/pipe.png")["reason"] == row(out, "dogs/disk.png")["reason"] == extract.SPECIAL_FILE


LINK_ADVICE = "with a real folder at 'ds/cats/escape' instead of the link (e.g. tar --dereference"


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_a_member_written_through_a_symlink_out_of_the_archive_is_named_as_a_link(tmp_path, inp, monkeypatch, fmt):
    entries = [*dataset().items(), ("ds/cats/escape", "../../../etc"), ("ds/cats/escape/x.png", png(0))]
    if fmt == "tar":
        entries[-2] = ("ds/cats/escape", link("ds/cats/escape", "../../../etc"))
        archive = tar_in_order(inp / "escape.tar.gz", entries)
    else:
        archive = zip_in_order(inp / "escape.zip", entries)
    out = run(tmp_path, monkeypatch, archive)
    assert_error(
        out,
        archive,
        "'ds/cats/escape' is a symbolic link (to '../../../etc') and 'ds/cats/escape/x.png' is written through it: "
        "links to folders are not followed, so the archive cannot be extracted as it is.",
        "The link points outside the archive",
        "do not use an archive from a source you do not trust",
        LINK_ADVICE,
    )
    assert "both a file and a folder" not in out.message
    assert not list(tmp_path.rglob("x.png"))


def test_a_link_inside_the_archive_and_a_folder_of_the_same_name_are_named_in_either_order(tmp_path, inp, monkeypatch):
    to_dogs = link("ds/cats/escape", "../dogs")
    for order, entries, words in [
        (
            "link_first",
            [*dataset().items(), ("ds/cats/escape", to_dogs), ("ds/cats/escape/x.png", png(0))],
            "'ds/cats/escape' is a symbolic link (to '../dogs') and 'ds/cats/escape/x.png' is written through it",
        ),
        (
            "folder_first",
            [*dataset().items(), ("ds/cats/escape/x.png", png(0)), ("ds/cats/escape", to_dogs)],
            "'ds/cats/escape' is a symbolic link (to '../dogs') and it is also a folder of the archive "
            "(holding 'ds/cats/escape/x.png')",
        ),
    ]:
        archive = tar_in_order(inp / f"{order}.tar.gz", entries)
        out = run(tmp_path / order, monkeypatch, archive)
        assert_error(out, archive, words, f"Re-create the archive {LINK_ADVICE}")
        assert "outside the archive" not in out.message


def test_a_hard_link_written_through_is_named_as_a_hard_link(tmp_path, inp, monkeypatch):
    entries = [
        *dataset().items(),
        ("ds/cats/escape", link("ds/cats/escape", "ds/dogs/0.png", tarfile.LNKTYPE)),
        ("ds/cats/escape/x.png", png(0)),
    ]
    archive = tar_in_order(inp / "hard.tar.gz", entries)
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "'ds/cats/escape' is a hard link (to 'ds/dogs/0.png') and 'ds/cats/escape/x.png'")


# ================================================================== unsafe paths
def test_zip_slip_is_refused_and_nothing_lands_outside(tmp_path, inp, monkeypatch):
    archive = make_zip(inp / "slip.zip", {**dataset(), "../../escaped.png": png(0)})
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "'../../escaped.png'", "outside the extraction folder")
    assert not list(tmp_path.parent.rglob("escaped.png"))


def test_absolute_member_does_not_land_at_its_absolute_target(tmp_path, inp, monkeypatch):
    target = tmp_path / "abs_target" / "planted.png"
    archive = make_tar(inp / "abs.tar", {**dataset(), str(target): png(0)}, mode="w")
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "absolute paths are not allowed")
    assert not target.exists()


# ================================================================== damaged and wrong files
def test_truncated_tar_gz(tmp_path, inp, monkeypatch):
    archive = make_tar(inp / "cut.tar.gz", {**dataset(), "ds/cats/noise.bin": np.random.default_rng(1).bytes(50_000)})
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "the archive is truncated or damaged")


def test_truncated_plain_tar_inside_a_member(tmp_path, inp, monkeypatch):
    archive = make_tar(
        inp / "cut.tar", {**dataset(), "ds/cats/noise.bin": np.random.default_rng(2).bytes(50_000)}, mode="w"
    )
    archive.write_bytes(archive.read_bytes()[:-20_000])
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "the archive is truncated or damaged", "ds/cats/noise.bin")


def test_zip_cut_in_half(tmp_path, inp, monkeypatch):
    archive = make_zip(inp / "half.zip", dataset())
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "the archive is truncated or damaged")
    assert "not a zip" not in out.message


def test_zip_member_with_a_bad_crc(tmp_path, inp, monkeypatch):
    archive = make_zip(
        inp / "crc.zip", {"ds/cats/0.png": b"A" * 1000, "ds/dogs/0.png": png(1)}, method=zipfile.ZIP_STORED
    )
    patch_bytes(archive, b"A" * 1000, b"A" * 999 + b"B", count=1)
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "truncated or damaged at member 'ds/cats/0.png'", "CRC")


def test_encrypted_zip_member(tmp_path, inp, monkeypatch):
    archive = make_zip(inp / "secret.zip", dataset())
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("ds/cats/secret.png", png(0))
    patch_zip_header(archive, "ds/cats/secret.png", 6, 8, 0x1)  # the "encrypted" flag (what zip tools check)
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "'ds/cats/secret.png' is encrypted", "password")


def test_zip_member_with_an_unsupported_compression_method(tmp_path, inp, monkeypatch):
    archive = make_zip(
        inp / "deflate64.zip", {"ds/cats/0.png": png(0), "ds/dogs/0.png": png(1)}, method=zipfile.ZIP_STORED
    )
    patch_zip_header(archive, "ds/cats/0.png", 8, 10, 9)  # compression method 9: Deflate64
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "'ds/cats/0.png' uses compression method 9 (Deflate64)")


def test_empty_zip(tmp_path, inp, monkeypatch):
    archive = make_zip(inp / "empty.zip", {})
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "the archive is empty")


def test_tar_of_empty_folders(tmp_path, inp, monkeypatch):
    folder = tarfile.TarInfo("ds/cats")
    folder.type = tarfile.DIRTYPE
    archive = make_tar(inp / "empty.tar.gz", {}, [folder])
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "the archive is empty")


def test_html_page_saved_as_zip(tmp_path, inp, monkeypatch):
    archive = inp / "dataset.zip"
    inp.mkdir()
    archive.write_text("<!DOCTYPE html><html><body>Please sign in</body></html>")
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "is not a zip or tar archive", "web page")


def test_random_bytes_are_not_an_archive(tmp_path, inp, monkeypatch):
    archive = inp / "noise.tar.gz"
    inp.mkdir()
    archive.write_bytes(np.random.default_rng(3).bytes(4096))
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "is not a zip or tar archive")


def test_gzip_of_a_single_image_is_not_a_tar(tmp_path, inp, monkeypatch):
    import gzip

    archive = inp / "image.png.gz"
    inp.mkdir()
    archive.write_bytes(gzip.compress(png(0) * 40))
    out = run(tmp_path, monkeypatch, archive)
    assert_error(out, archive, "is a compressed file but not a tar archive")


def cache_folders_shown(tmp_path: Path, message: str) -> list[str]:
    """The cache's folders (entries, extraction folders: names a user never saw) that `message` shows as folders."""
    cache = tmp_path / "cache"
    names = {p.name for p in [*cache.glob("*"), *cache.glob("*/*"), *cache.glob("extracted/*/*")] if p.is_dir()}
    return sorted(name for name in names if f"{name}/" in message)


@pytest.mark.parametrize("inner", ["EuroSAT.zip", "EuroSAT.tar.gz"])
@pytest.mark.parametrize("outer", ["data.zip", "data.tar.gz"])
def test_an_archive_holding_only_another_archive_says_so_and_how_to_proceed(tmp_path, inp, monkeypatch, outer, inner):
    packed = make_zip if inner.endswith(".zip") else make_tar
    inner_bytes = packed(tmp_path / "made" / inner, dataset()).read_bytes()
    archive = (make_zip if outer.endswith(".zip") else make_tar)(inp / outer, {inner: inner_bytes})
    out = run(tmp_path, monkeypatch, archive)
    assert isinstance(out.error, DatasetError), out.error
    kind = "zip" if inner.endswith(".zip") else "tar.gz (gzip)"
    assert out.message.splitlines()[0] == (
        f"{str(archive)!r} holds only another archive, {inner!r} (a {kind} archive), and no class folders: "
        f"archives inside the dataset are not extracted. Extract {inner!r} and point DATASET_URL (the "
        f"dataset_url param) at the folder it holds, or point DATASET_URL at {inner!r} itself (e.g. "
        f"DATASET_URL=/path/to/{inner}):"
    )
    assert out.message.splitlines()[1:] == ["  ./", f"    {inner}"]  # paths from the archive's root
    assert cache_folders_shown(tmp_path, out.message) == [], out.message
    assert out.store_keys == []
    fixed = ingest(tmp_path / "fixed", tmp_path / "made" / inner, monkeypatch)  # following the advice works
    assert_kept(fixed, kept_sources(dataset()))


def test_an_archive_holding_a_wrapper_with_archives_names_them_from_its_root(tmp_path, inp, monkeypatch):
    members = {
        "wrap/train.zip": make_zip(tmp_path / "made" / "train.zip", dataset()).read_bytes(),
        "wrap/test.7z": b"7z\xbc\xaf\x27\x1c" + bytes(40),
        "wrap/README.md": b"two parts",
    }
    archive = make_zip(inp / "parts.zip", members)
    out = run(tmp_path, monkeypatch, archive)
    assert isinstance(out.error, DatasetError), out.error
    assert out.message.startswith(
        f"{str(archive)!r} holds only other archives ('wrap/test.7z', 'wrap/train.zip') and no class folders: "
        "archives inside the dataset are not extracted. Extract them (7z archives cannot be read here) into one "
        "folder, one sub-folder per class, and point DATASET_URL (the dataset_url param) at it:\n  wrap/\n"
    )
    assert cache_folders_shown(tmp_path, out.message) == [], out.message


@pytest.mark.parametrize("mode", ["w:bz2", "w:xz"])
def test_other_tar_compressions_are_read(tmp_path, inp, monkeypatch, mode):
    members = dataset()
    archive = make_tar(inp / f"data.tar.{mode[2:]}", members, mode=mode)
    assert_kept(run(tmp_path, monkeypatch, archive), kept_sources(members))

"""Archive members, format-independent: the members of a zip or tar archive streamed one by one,
with their names decoded readably and NFC-normalised, and damage turned into a DownloadError.

Zip names: the Info-ZIP Unicode path field, else UTF-8, else the zip standard's cp437; tar names:
UTF-8, else cp1252, else latin-1. Encrypted zip members and unsupported compression are refused
before anything is written; the declared totals are checked against the budget first.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cnn_tasks.ingest import limits
from cnn_tasks.ingest.errors import DownloadError

FILE, DIR, SYMLINK, HARDLINK, SPECIAL = "file", "dir", "symlink", "hardlink", "special"
# The tar type tarfile's data filter judges each kind as (it refuses every device and fifo alike).
TAR_TYPES = {
    FILE: tarfile.REGTYPE,
    DIR: tarfile.DIRTYPE,
    SYMLINK: tarfile.SYMTYPE,
    HARDLINK: tarfile.LNKTYPE,
    SPECIAL: tarfile.FIFOTYPE,
}


@dataclass
class Member:
    """One archive member, format-independent."""

    name: str  # readable: decoded, '/'-separated, NFC
    spelled: str  # decoded, before NFC (to spot names that only differ in normalisation)
    kind: str
    size: int = 0  # declared uncompressed size
    packed: int | None = None  # declared compressed size (zip), None when unknown (tar)
    link: str = ""
    open: Callable[[], BinaryIO] | None = None
    consumed: Callable[[], int] | None = None  # compressed bytes of the archive read so far (tar)
    refused: tuple[str, str] | None = None  # (reason, detail) when tarfile's data filter refuses it


# Zip compression methods Python reads, and names for the common others.
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_ZIP_METHOD_NAMES = {
    1: "Shrink",
    6: "Implode",
    9: "Deflate64",
    10: "PKWARE Implode",
    18: "IBM TERSE",
    19: "IBM LZ77",
    93: "Zstandard",
    95: "XZ",
    96: "JPEG",
    97: "WavPack",
    98: "PPMd",
}
_DAMAGE = (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, UnicodeDecodeError)


@contextlib.contextmanager
def reading(what: str, member: str | None = None):
    """Turn an error while reading the archive into 'the archive is truncated or damaged'."""
    try:
        yield
    except DownloadError:
        raise
    except _DAMAGE as exc:
        raise _damaged(what, exc, member) from None


def _damaged(what: str, exc: BaseException, member: str | None = None) -> DownloadError:
    at = f" at member {member!r}" if member else ""
    return DownloadError(
        f"{what}: the archive is truncated or damaged{at} ({type(exc).__name__}: {exc}): "
        "download it again or re-create it"
    )


@contextlib.contextmanager
def zip_members(archive: Path, budget: limits.Budget) -> Iterator[Iterator[Member]]:
    what = budget.what
    with reading(what):
        zf = zipfile.ZipFile(archive)
    with zf:
        infos = zf.infolist()
        for info in infos:
            name = _zip_name(info)
            if info.is_dir() or name.endswith(("/", "\\")):
                continue
            if info.flag_bits & 0x1 or info.compress_type == 99:
                raise DownloadError(
                    f"{what}: member {name!r} is encrypted (password-protected): unpack the "
                    "archive yourself and point dataset_url at the folder, or re-create it "
                    "without a password"
                )
            if info.compress_type not in _ZIP_METHODS:
                method = _ZIP_METHOD_NAMES.get(info.compress_type, "unknown")
                raise DownloadError(
                    f"{what}: member {name!r} uses compression method {info.compress_type} "
                    f"({method}), which cannot be read here: re-create the archive with "
                    "standard (deflate) compression, or unpack it and point dataset_url at the folder"
                )
        # The declared totals, before writing anything (members the caps skip do not count).
        files = [i for i in infos if not i.is_dir() and i.file_size <= limits.MAX_MEMBER_BYTES]
        budget.check(len(files), sum(i.file_size for i in files))
        yield (_zip_member(zf, info, what) for info in infos)


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> Member:
    spelled = _zip_name(info)
    name = unicodedata.normalize("NFC", spelled)
    mode = info.external_attr >> 16
    opener = lambda: zf.open(info)  # noqa: E731
    if info.is_dir() or spelled.endswith(("/", "\\")) or stat.S_ISDIR(mode):
        return Member(name, spelled, DIR)
    if stat.S_ISLNK(mode):
        with reading(what, name), zf.open(info) as src:
            link = unicodedata.normalize("NFC", src.read(4096).decode("utf-8", "replace"))
        return Member(name, spelled, SYMLINK, link=link)
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: made on DOS/Windows, no Unix mode
        return Member(name, spelled, SPECIAL)
    return Member(name, spelled, FILE, size=info.file_size, packed=info.compress_size, open=opener)


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The member's name as readable text: flagged UTF-8, the Info-ZIP Unicode path field, plain
    UTF-8 without the flag (common from Linux and macOS tools), else cp437 (the zip standard)."""
    name = info.orig_filename.split("\0")[0]
    if info.flag_bits & 0x800:
        return name
    raw = name.encode("cp437")
    return _unicode_path_field(info.extra, raw) or _decode_name(raw, "cp437")


def _unicode_path_field(extra: bytes, raw: bytes) -> str | None:
    """The UTF-8 name of Info-ZIP's Unicode Path extra field (0x7075), when it matches `raw`."""
    i = 0
    while i + 4 <= len(extra):
        kind, size = int.from_bytes(extra[i : i + 2], "little"), int.from_bytes(extra[i + 2 : i + 4], "little")
        data = extra[i + 4 : i + 4 + size]
        if kind == 0x7075 and len(data) > 5 and data[0] == 1 and int.from_bytes(data[1:5], "little") == zlib.crc32(raw):
            try:
                return data[5:].decode("utf-8")
            except UnicodeDecodeError:
                return None
        i += 4 + size
    return None


def _decode_name(raw: bytes | str, fallback: str) -> str:
    """A member name as readable text: UTF-8 if valid, else `fallback` (zip: cp437, tar: cp1252),
    else latin-1. A str is a name tarfile read as UTF-8 with surrogate escapes."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    for encoding in ("utf-8", fallback):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return raw.decode("latin-1")  # maps every byte


@contextlib.contextmanager
def tar_members(archive: Path, budget: limits.Budget) -> Iterator[Iterator[Member]]:
    what = budget.what
    with open(archive, "rb") as raw:
        try:
            tf = tarfile.open(fileobj=raw, mode="r:*", encoding="utf-8", errors="surrogateescape")
        except _DAMAGE as exc:
            if _compressed_but_not_tar(archive):
                raise DownloadError(
                    f"{what} is a compressed file but not a tar archive: dataset_url must name "
                    "a zip, a tar(.gz/.bz2/.xz) or a folder of class folders"
                ) from None
            raise _damaged(what, exc) from None
        with tf:
            yield _iter_tar(tf, raw, what)
            if tf.fileobj is raw:  # uncompressed: a partial header block at the end means truncated
                raw.seek(tf.offset)
                if 0 < len(raw.read(512)) < 512:
                    raise DownloadError(
                        f"{what}: the archive is truncated or damaged (it ends inside a "
                        "member header): download it again or re-create it"
                    )


def _iter_tar(tf: tarfile.TarFile, raw: BinaryIO, what: str) -> Iterator[Member]:
    last = None
    while True:
        with reading(what, f"after {last}" if last else None):
            if tf.fileobj is not raw:
                _skip_to_next_header(tf)
            info = tf.next()
        if info is None:
            return
        tf.members = []  # tarfile keeps every header otherwise: memory grows with the member count
        spelled = _decode_name(info.name, "cp1252")
        name, last = unicodedata.normalize("NFC", spelled), info.name
        if info.isdir():
            yield Member(name, spelled, DIR)
        elif info.issym() or info.islnk():
            link = unicodedata.normalize("NFC", _decode_name(info.linkname, "cp1252"))
            yield Member(name, spelled, SYMLINK if info.issym() else HARDLINK, link=link)
        elif info.isfile():
            yield Member(
                name, spelled, FILE, size=info.size, open=lambda info=info: tf.extractfile(info), consumed=raw.tell
            )
        else:
            yield Member(name, spelled, SPECIAL)


def _skip_to_next_header(tf: tarfile.TarFile) -> None:
    """Read past the rest of a skipped member in big chunks: tarfile seeks forward in a compressed
    stream 8 KiB at a time, which takes minutes over a multi-GiB bomb member."""
    left = tf.offset - tf.fileobj.tell()
    while left > 0:
        chunk = tf.fileobj.read(min(limits.CHUNK_BYTES, left))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        left -= len(chunk)


def _compressed_but_not_tar(archive: Path) -> bool:
    """True when `archive` decompresses fine but what it holds is not a tar archive."""
    for opener in (gzip.open, bz2.open, lzma.open):
        try:
            with opener(archive, "rb") as src:
                block = src.read(512)
        except (OSError, EOFError, lzma.LZMAError, zlib.error):
            continue
        if len(block) < 512:
            return bool(block)
        try:
            tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            return True
        return False
    return False


# ------------------------------------------------------------------ the extraction

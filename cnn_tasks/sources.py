"""Sources: bring a dataset (http(s), s3://, a local zip/tar(.gz/.bz2/.xz) or folder, file:// URL) into
the worker cache, verify its checksum and extract archives safely.

`fetch_source(ctx, url, checksum)` returns a `Fetched`: the local folder plus the archive members
that were not extracted, each with a reason (`skipped`); `fetch(...)` returns just the folder.
Library module: no stage imports another stage; ingest (download) and predict both fetch here.

Extraction never trusts the archive. tarfile's data filter (`tarfile.data_filter`, applied member by
member as they stream, to zip members too) judges names, links and special files:
- unsafe member names (absolute, or leading outside the extraction folder; a name such as
  'a/../b' that stays inside is extracted as 'b') and malformed archives (truncated, bad
  CRC, encrypted, unsupported compression, names too long, a name used as file and folder,
  a member written through a link (named as a link, with where it points), names that only differ
  in Unicode normalisation) end in a DownloadError naming the archive as the user gave it and the
  member;
- members are listed in `skipped` instead: links that do not lead to a file of the archive
  (pointing outside it, at a folder or at nothing; links are never created on disk: a link to a
  file of the archive is followed and the file copied), devices and fifos, a name repeated (the
  first copy is kept), and members above MAX_MEMBER_BYTES or expanding more than
  MAX_COMPRESSION_RATIO:1, checked from the header before reading and again on the real bytes
  while streaming (headers can lie); nothing is read whole into memory;
- the whole archive stays within MAX_EXTRACT_FILES / MAX_EXTRACT_BYTES and within
  MAX_COMPRESSION_RATIO times its own size, or it is refused;
- member names that are not UTF-8 are decoded readably (zip: the Info-ZIP Unicode path field,
  else UTF-8, else the zip standard's cp437; tar: UTF-8, else cp1252, else latin-1) and NFC-normalised.

Limits are the module's MAX_* constants, read at call time. Cache: downloads and extractions are
cache entries (`cnn_tasks.cache`), each made under its exclusive build lock
(`locks/<kind>/<entry>.build`), so two processes fetching the same source on one worker download
and extract it once; downloads go to a part file of each writer's own. An extraction is written
to a temporary folder and renamed into place together with its `skipped.json`, so a reused
extraction returns the same skipped list. What fails to download, verify or extract is never
kept: a cached download that does not extract is discarded and fetched again, once.
"""

from __future__ import annotations

import bz2
import contextlib
import errno
import fcntl
import glob
import gzip
import hashlib
import http.client
import json
import logging
import lzma
import os
import shutil
import stat
import tarfile
import threading
import time
import unicodedata
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import unquote, urlparse

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)
from urllib3.util import Retry

from cnn_tasks.context import cache_root
from cnn_tasks.errors import PipelineError

log = logging.getLogger(__name__)

# Safety limits for archive extraction (zip/tar bombs); read at call time, so tests can lower them.
MAX_EXTRACT_BYTES = 20 * 1024**3
MAX_EXTRACT_FILES = 2_000_000
MAX_MEMBER_BYTES = 512 * 1024**2
# A member expanding more than this (uncompressed : compressed) once past RATIO_CHECK_BYTES is not
# extracted; a whole archive expanding more than this times its own size past ARCHIVE_RATIO_CHECK_BYTES
# is refused. Images are compressed already: real datasets stay far below 100:1, zeros reach 1000:1.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_BYTES = 8 * 1024**2
ARCHIVE_RATIO_CHECK_BYTES = 256 * 1024**2
# Network behaviour.
HTTP_TIMEOUT_S = 30
HTTP_RETRIES = 4  # attempts in all
RETRY_BACKOFF_S = 1.0  # urllib3 Retry's backoff_factor: waits 0, 2, 4 ... x this between attempts
RETRY_STATUSES = frozenset({408, 425, 429, *range(500, 600)})
CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 5.0
# Bump when the extraction cache's layout or rules change: older entries are then not reused.
EXTRACTION_VERSION = 2

# Why an archive member was not extracted (Fetched.skipped[i]["reason"]).
LINK = "link"
OVERSIZED_MEMBER = "oversized_member"
SPECIAL_FILE = "special_file"
DUPLICATE_MEMBER = "duplicate_member"

LOCAL_COPY_HINT = (
    "Without network access, point at a local copy: DATASET_URL=/path/to/EuroSAT.zip "
    "(or the dataset_url param), and clear dataset_checksum or set it to that copy's hash."
)


class DownloadError(PipelineError, RuntimeError):
    """The source could not be fetched, verified or extracted."""


@dataclass
class Fetched:
    """A fetched source: the local folder, and the archive members not extracted into it.

    `skipped` holds one dict per member: `source` (its path inside the archive, relative to
    `folder`), `reason` (LINK, OVERSIZED_MEMBER, SPECIAL_FILE, DUPLICATE_MEMBER) and `detail`.
    `archive` names the archive `folder` was extracted from, as the user gave it (None for a folder).
    """

    folder: Path
    skipped: list[dict] = field(default_factory=list)
    archive: str | None = None


# ================================================================== fetch
def fetch(ctx, url: str, checksum: str | None = None) -> Path:
    """Bring `url` into the worker cache, verify `checksum`, extract it; return the local folder."""
    return fetch_source(ctx, url, checksum).folder


def fetch_source(ctx, url: str, checksum: str | None = None) -> Fetched:
    """Like `fetch`, plus the archive members that were not extracted and why."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https", "s3"):
        return _fetch_remote(ctx, url, parsed, checksum)
    source = Path(unquote(parsed.path) if parsed.scheme == "file" else url).expanduser().resolve()
    if not source.exists():
        raise DownloadError(
            f"{source} does not exist: dataset_url must be an http(s):// or s3:// URL, "
            "or a local zip/tar file or folder"
        )
    if source.is_dir():
        if checksum:
            log.warning("%s is a folder: the checksum %s applies only to files and is not checked", source, checksum)
        return Fetched(source)
    if checksum:
        verify_checksum(source, checksum)
    return _extract_cached(ctx, source, url)


def _fetch_remote(ctx, url: str, parsed, checksum: str | None) -> Fetched:
    """Download (or reuse the cached download of) `url` and extract it. A cached download that does
    not extract is discarded and fetched again, once; a fresh one that does not is not kept.

    The entry's build lock is held throughout: another process fetching the same URL on this worker
    waits, then finds the finished download (and extraction) and reuses them."""
    entry = ctx.hold_cache_entry(cache_root() / "downloads" / _digest(f"{url}|{checksum or ''}"))
    key, target = parsed.path.lstrip("/"), entry / _file_name(parsed.path)
    with _building(entry):
        if parsed.scheme == "s3" and (not key or key.endswith("/")):  # a prefix comes down as a folder
            return Fetched(_download_s3(ctx, parsed.netloc, key, target, checksum))
        for stale in entry.glob(f"{glob.escape(target.name)}.part*"):  # left by a killed process
            stale.unlink(missing_ok=True)
        fresh = not target.is_file()
        while True:
            if fresh:
                if parsed.scheme == "s3":
                    _download_s3(ctx, parsed.netloc, key, target, checksum)
                else:
                    _download_http(url, target, checksum)
            else:
                log.info("using the cached download of %s", url)
            try:
                return _extract_cached(ctx, target, url)
            except DownloadError as exc:
                target.unlink(missing_ok=True)  # never keep what does not extract
                if fresh:
                    raise
                log.warning(
                    "the cached download of %s does not extract (%s): discarded, downloading it again", url, exc
                )
                fresh = True


@contextlib.contextmanager
def _building(entry: Path) -> Iterator[None]:
    """Hold the exclusive build lock of cache entry `entry` while making (or re-checking) it.

    The lock file is `<cache>/locks/<kind>/<entry>.build`, beside the `.lock` file that
    `cache.Lease` holds shared against eviction (a different file: building never blocks a reader's
    lease, and eviction, which unlinks `.lock` files, leaves it alone). flock is per open file, so
    it serialises threads of one process as well as processes."""
    lock = entry.parent.parent / "locks" / entry.parent.name / f"{entry.name}.build"
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _file_name(url_path: str) -> str:
    name = PurePosixPath(unquote(url_path)).name
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name) or "download"


def verify_checksum(path: Path, checksum: str) -> None:
    """Raise DownloadError when `path` does not hash to `checksum` ('sha256:<hex>' or 'md5:<hex>')."""
    algorithm, expected = _parse_checksum(checksum)
    with open(path, "rb") as src:
        hasher = hashlib.file_digest(src, algorithm)
    _compare(hasher, expected, algorithm, str(path))


def _parse_checksum(checksum: str) -> tuple[str, str]:
    algorithm, _, expected = checksum.partition(":")
    if algorithm not in ("sha256", "md5") or not expected:
        raise DownloadError(f"checksum {checksum!r} must look like 'sha256:<hex>' or 'md5:<hex>'")
    return algorithm, expected.lower()


def _compare(hasher, expected: str, algorithm: str, what: str) -> None:
    actual = hasher.hexdigest()
    if actual != expected:
        raise DownloadError(
            f"checksum mismatch for {what}: expected {algorithm}:{expected}, got {algorithm}:{actual}. "
            "The file is corrupt or a different version; if you pointed dataset_url at another copy, "
            "set dataset_checksum to its hash or clear it."
        )


class _Sink:
    """Write a stream to a part file of this writer's own (`<target>.part-<pid>-<thread>`) while
    hashing it and logging progress; `commit` verifies and renames it to `target`. Used as a
    context manager: leaving it without a commit (an error) removes the part file."""

    def __init__(self, target: Path, checksum: str | None, total: int | None, what: str):
        self.target, self.what, self.total = target, what, total
        self.algorithm, self.expected = _parse_checksum(checksum) if checksum else ("sha256", None)
        self.hasher = hashlib.new(self.algorithm)
        self.part = target.with_name(f"{target.name}.part-{os.getpid()}-{threading.get_ident()}")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.out = open(self.part, "wb")
        self.committed = False
        self.done, self.started, self.last_log = 0, time.monotonic(), time.monotonic()

    def __enter__(self) -> _Sink:
        return self

    def __exit__(self, *exc_info) -> None:
        self.out.close()
        if not self.committed:
            self.part.unlink(missing_ok=True)

    def write(self, chunk: bytes) -> None:
        self.out.write(chunk)
        self.hasher.update(chunk)
        self.done += len(chunk)
        if time.monotonic() - self.last_log >= PROGRESS_EVERY_S:
            self.last_log = time.monotonic()
            rate = self.done / max(self.last_log - self.started, 1e-6) / 2**20
            of = f" of {self.total / 2**20:.1f} MiB ({100 * self.done / self.total:.0f}%)" if self.total else ""
            log.info("downloading %s: %.1f MiB%s at %.1f MiB/s", self.what, self.done / 2**20, of, rate)

    def commit(self) -> Path:
        self.out.close()
        if self.total and self.done < self.total:
            raise http.client.IncompleteRead(b"", self.total - self.done)
        if self.expected:
            _compare(self.hasher, self.expected, self.algorithm, self.what)
        os.replace(self.part, self.target)
        self.committed = True
        log.info("downloaded %s: %.1f MiB in %.1f s", self.what, self.done / 2**20, time.monotonic() - self.started)
        return self.target


def _download_http(url: str, target: Path, checksum: str | None) -> Path:
    """Stream `url` to `target`. urllib3's `Retry` retries transient failures (timeouts, dropped
    connections, 408/425/429/5xx answers, a body that breaks off) with exponential backoff; a host
    that cannot be reached (DNS, refused, TLS) and other answers fail at once."""
    retry = Retry(
        total=HTTP_RETRIES - 1,
        connect=0,
        other=0,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=RETRY_BACKOFF_S,
        retry_after_max=60,
        raise_on_status=False,
    )
    with urllib3.PoolManager(
        headers={"User-Agent": "cnn-image-pipeline"},
        timeout=urllib3.Timeout(connect=HTTP_TIMEOUT_S, read=HTTP_TIMEOUT_S),
    ) as pool:
        while True:
            try:
                response = pool.request("GET", url, retries=retry, preload_content=False, decode_content=False)
            except MaxRetryError as exc:
                raise _http_failure(url, exc.reason) from None
            except urllib3.exceptions.HTTPError as exc:  # e.g. a URL urllib3 cannot parse
                raise DownloadError(f"cannot download {url}: {exc}") from None
            with response:
                _check_status(url, response)
                length = response.headers.get("Content-Length")
                try:
                    with _Sink(target, checksum, int(length) if length else None, url) as sink:
                        for chunk in response.stream(CHUNK_BYTES, decode_content=False):
                            sink.write(chunk)
                        return sink.commit()
                except (ProtocolError, ReadTimeoutError) as exc:  # the body broke off: the same Retry decides
                    try:
                        retry = response.retries.increment("GET", url, error=exc)
                    except MaxRetryError:
                        raise _http_failure(url, exc) from None
                    log.warning("download of %s broke off (%s); retrying", url, exc)
            retry.sleep()


def _check_status(url: str, response) -> None:
    if response.status in (404, 410):
        raise DownloadError(f"{url} was not found (HTTP {response.status}): check dataset_url")
    if response.status in RETRY_STATUSES:  # what the last retry got
        raise DownloadError(
            f"cannot download {url} after {HTTP_RETRIES} attempts: HTTP {response.status} "
            f"{response.reason}. {LOCAL_COPY_HINT}"
        )
    if response.status >= 400:
        raise DownloadError(
            f"{url} was refused (HTTP {response.status} {response.reason}): check dataset_url "
            "and that the file is public"
        )


def _http_failure(url: str, reason: BaseException | None) -> DownloadError:
    if isinstance(reason, (ConnectTimeoutError, SSLError)):  # not retried: no point in waiting
        what = "host not found" if isinstance(reason, NameResolutionError) else "unreachable"
        return DownloadError(f"cannot download {url}: {what} ({reason}). {LOCAL_COPY_HINT}")
    return DownloadError(f"cannot download {url} after {HTTP_RETRIES} attempts: {reason}. {LOCAL_COPY_HINT}")


def _download_s3(ctx, bucket: str, key: str, target: Path, checksum: str | None) -> Path:
    """Stream s3://bucket/key to `target`; a key ending in '/' (or empty) fetches the whole prefix."""
    from botocore.exceptions import BotoCoreError, ClientError

    client, url = ctx.s3(), f"s3://{bucket}/{key}"
    try:
        if not key or key.endswith("/"):
            return _download_s3_prefix(client, bucket, key, target.parent / "prefix")
        head = client.head_object(Bucket=bucket, Key=key)
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        with _Sink(target, checksum, head.get("ContentLength"), url) as sink:
            for chunk in body.iter_chunks(CHUNK_BYTES):
                sink.write(chunk)
            return sink.commit()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise DownloadError(f"{url} does not exist ({code}): check dataset_url") from None
        raise DownloadError(f"cannot read {url}: {exc}") from None
    except BotoCoreError as exc:
        raise DownloadError(f"cannot read {url}: {exc}. {LOCAL_COPY_HINT}") from None


def _download_s3_prefix(client, bucket: str, prefix: str, folder: Path) -> Path:
    """Every object under `prefix` into `folder`, through a temporary folder renamed into place;
    the caller holds the entry's build lock. Nothing of a failed download is left behind."""
    if folder.is_dir():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        count = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                relative = obj["Key"][len(prefix) :]
                if not relative or relative.endswith("/"):
                    continue
                path = _safe_target(tmp, relative)
                path.parent.mkdir(parents=True, exist_ok=True)
                client.download_file(bucket, obj["Key"], str(path))
                count += 1
        if count == 0:
            raise DownloadError(f"s3://{bucket}/{prefix} holds no objects: check dataset_url")
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("downloaded %d objects from s3://%s/%s", count, bucket, prefix)
    return folder


# ================================================================== safe extraction
def _extract_cached(ctx, archive: Path, what: str) -> Fetched:
    """Extract `archive` once into a cache entry holding `data/` and `skipped.json`; reuse it later.

    Made under the entry's build lock: another process extracting the same archive waits, then
    finds the finished entry. The key holds the limits in force, so lowered limits extract again."""
    info = archive.stat()
    limits = (MAX_EXTRACT_BYTES, MAX_EXTRACT_FILES, MAX_MEMBER_BYTES, MAX_COMPRESSION_RATIO, RATIO_CHECK_BYTES)
    entry = ctx.hold_cache_entry(
        cache_root()
        / "extracted"
        / _digest(f"v{EXTRACTION_VERSION}|{archive}|{info.st_size}|{info.st_mtime_ns}|{limits}")
    )
    with _building(entry):
        cached = _read_extraction(entry, what)
        if cached is not None:
            log.info("using the cached extraction of %s", what)
            return cached
        shutil.rmtree(entry, ignore_errors=True)  # a damaged entry: make it again
        tmp = entry.with_name(f"{entry.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        started = time.monotonic()
        try:
            skipped = extract_archive(archive, tmp / "data", what=what)
            (tmp / "skipped.json").write_text(json.dumps({"skipped": skipped}, indent=1, ensure_ascii=False))
            tmp.rename(entry)  # the folder and its skipped list appear together
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("extracted %s in %.1f s", what, time.monotonic() - started)
        return _read_extraction(entry, what)


def _read_extraction(entry: Path, what: str) -> Fetched | None:
    """The finished extraction of archive `what` in `entry`, or None when there is none (or it is damaged)."""
    try:
        skipped = json.loads((entry / "skipped.json").read_text())["skipped"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Fetched(entry / "data", skipped, archive=what) if (entry / "data").is_dir() else None


def extract_archive(archive: Path, dest: Path, *, what: str | None = None) -> list[dict]:
    """Extract a zip or tar(.gz/.bz2/.xz) into `dest`; return the members not extracted.

    `what` names the archive in messages (the URL or path the user gave; default `archive`).
    Every refusal and every damage is a DownloadError; see the module docstring for the rules.
    The limits are the module's MAX_* constants as they are at call time.
    """
    what = what or str(archive)
    dest.mkdir(parents=True, exist_ok=True)
    extraction = _Extraction(dest.resolve(), what, archive.stat().st_size)
    if _archive_kind(archive, what) == "zip":
        with _zip_members(archive, extraction) as members:
            extraction.run(members)
    else:
        with _tar_members(archive, extraction) as members:
            extraction.run(members)
    if extraction.skipped:
        counts = ", ".join(f"{n} {r}" for r, n in sorted(Counter(s["reason"] for s in extraction.skipped).items()))
        log.warning(
            "%s: %d members not extracted (%s); listed with their reasons", what, len(extraction.skipped), counts
        )
    return extraction.skipped


def _archive_kind(archive: Path, what: str) -> str:
    """'zip' or 'tar' from the file's content, or DownloadError saying what the file is instead."""
    with open(archive, "rb") as src:
        head = src.read(512)
    if not head:
        raise DownloadError(f"{what} is empty (0 bytes): download it again or check dataset_url")
    if zipfile.is_zipfile(archive):
        return "zip"
    if head.startswith(b"PK\x03\x04"):
        raise DownloadError(
            f"{what}: the archive is truncated or damaged: it starts as a zip but its table "
            "of contents (at the end of a zip) is missing; download it again or re-create it"
        )
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        return "tar"
    if tarfile.is_tarfile(archive):
        return "tar"
    looks = ""
    if head.lstrip()[:1] == b"<":
        looks = " (it looks like a web page, e.g. an error or sign-in page sent instead of the file)"
    raise DownloadError(
        f"{what} is not a zip or tar archive{looks}: dataset_url must name a zip, a "
        "tar(.gz/.bz2/.xz) or a folder of class folders"
    )


# ------------------------------------------------------------------ members
FILE, DIR, SYMLINK, HARDLINK, SPECIAL = "file", "dir", "symlink", "hardlink", "special"
# The tar type tarfile's data filter judges each kind as (it refuses every device and fifo alike).
_TAR_TYPES = {
    FILE: tarfile.REGTYPE,
    DIR: tarfile.DIRTYPE,
    SYMLINK: tarfile.SYMTYPE,
    HARDLINK: tarfile.LNKTYPE,
    SPECIAL: tarfile.FIFOTYPE,
}


@dataclass
class _Member:
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
def _reading(what: str, member: str | None = None):
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
def _zip_members(archive: Path, extraction: _Extraction) -> Iterator[Iterator[_Member]]:
    what = extraction.what
    with _reading(what):
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
        files = [i for i in infos if not i.is_dir() and i.file_size <= MAX_MEMBER_BYTES]
        extraction.budget.check(len(files), sum(i.file_size for i in files))
        yield (_zip_member(zf, info, what) for info in infos)


def _zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str) -> _Member:
    spelled = _zip_name(info)
    name = unicodedata.normalize("NFC", spelled)
    mode = info.external_attr >> 16
    opener = lambda: zf.open(info)  # noqa: E731
    if info.is_dir() or spelled.endswith(("/", "\\")) or stat.S_ISDIR(mode):
        return _Member(name, spelled, DIR)
    if stat.S_ISLNK(mode):
        with _reading(what, name), zf.open(info) as src:
            link = unicodedata.normalize("NFC", src.read(4096).decode("utf-8", "replace"))
        return _Member(name, spelled, SYMLINK, link=link)
    if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: made on DOS/Windows, no Unix mode
        return _Member(name, spelled, SPECIAL)
    return _Member(name, spelled, FILE, size=info.file_size, packed=info.compress_size, open=opener)


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
def _tar_members(archive: Path, extraction: _Extraction) -> Iterator[Iterator[_Member]]:
    what = extraction.what
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


def _iter_tar(tf: tarfile.TarFile, raw: BinaryIO, what: str) -> Iterator[_Member]:
    last = None
    while True:
        with _reading(what, f"after {last}" if last else None):
            if tf.fileobj is not raw:
                _skip_to_next_header(tf)
            info = tf.next()
        if info is None:
            return
        tf.members = []  # tarfile keeps every header otherwise: memory grows with the member count
        spelled = _decode_name(info.name, "cp1252")
        name, last = unicodedata.normalize("NFC", spelled), info.name
        if info.isdir():
            yield _Member(name, spelled, DIR)
        elif info.issym() or info.islnk():
            link = unicodedata.normalize("NFC", _decode_name(info.linkname, "cp1252"))
            yield _Member(name, spelled, SYMLINK if info.issym() else HARDLINK, link=link)
        elif info.isfile():
            yield _Member(
                name, spelled, FILE, size=info.size, open=lambda info=info: tf.extractfile(info), consumed=raw.tell
            )
        else:
            yield _Member(name, spelled, SPECIAL)


def _skip_to_next_header(tf: tarfile.TarFile) -> None:
    """Read past the rest of a skipped member in big chunks: tarfile seeks forward in a compressed
    stream 8 KiB at a time, which takes minutes over a multi-GiB bomb member."""
    left = tf.offset - tf.fileobj.tell()
    while left > 0:
        chunk = tf.fileobj.read(min(CHUNK_BYTES, left))
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
@dataclass
class _Budget:
    """Running totals of an extraction, checked against the file-count, size and ratio limits."""

    what: str
    archive_bytes: int
    files: int = 0
    bytes: int = 0

    def check(self, files: int, size: int) -> None:
        if files > MAX_EXTRACT_FILES:
            raise DownloadError(
                f"{self.what} holds more than {MAX_EXTRACT_FILES} files (MAX_EXTRACT_FILES): "
                "refusing to extract a possible archive bomb"
            )
        if size > MAX_EXTRACT_BYTES:
            raise DownloadError(
                f"{self.what} would extract to more than {MAX_EXTRACT_BYTES} bytes "
                "(MAX_EXTRACT_BYTES): refusing to extract a possible archive bomb"
            )
        if size > ARCHIVE_RATIO_CHECK_BYTES and size > MAX_COMPRESSION_RATIO * self.archive_bytes:
            raise DownloadError(
                f"{self.what} would extract to more than {MAX_COMPRESSION_RATIO} times its own "
                f"size ({self.archive_bytes} bytes; MAX_COMPRESSION_RATIO): refusing to extract "
                "a possible archive bomb"
            )

    def add(self, files: int, size: int) -> None:
        self.files += files
        self.bytes += size
        self.check(self.files, self.bytes)


class _Extraction:
    """One archive's members written under `dest`, with every check; `skipped` lists the rest."""

    def __init__(self, dest: Path, what: str, archive_bytes: int):
        self.dest, self.what = dest, what
        self.budget = _Budget(what, archive_bytes)
        self.skipped: list[dict] = []
        self.kinds: dict[str, str] = {}  # normalised path -> DIR or FILE
        self.spellings: dict[str, str] = {}  # normalised path -> its spelling in the archive
        self.link_at: dict[str, _Member] = {}  # normalised path -> the link member claiming it
        self.folder_by: dict[str, str] = {}  # folder path -> the first member written below it
        self.links: list[tuple[_Member, Path, Path]] = []
        self.name_max = _name_max(dest)

    def run(self, members: Iterator[_Member]) -> None:
        entries = 0
        for member in members:
            path = self.target(member)
            if path is None:
                continue
            entries += member.kind != DIR
            if not self.claim(member):
                self.skip(
                    member, DUPLICATE_MEMBER, "the archive holds this name more than once: the first copy was extracted"
                )
            elif member.refused:
                self.skip(member, *member.refused)
            elif member.kind == DIR:
                with self.writing(member):
                    path.mkdir(parents=True, exist_ok=True)
            elif member.kind in (SYMLINK, HARDLINK):
                base = path.parent if member.kind == SYMLINK else self.dest  # hard links: from the archive root
                self.links.append((member, path, Path(os.path.normpath(base / member.link))))
            else:
                self.copy(member, path)
        if entries == 0:
            raise DownloadError(f"{self.what}: the archive is empty (it holds no files): check dataset_url")
        self.follow_links()

    # ---- names
    def target(self, member: _Member) -> Path | None:
        """The path for `member` under dest (None for the archive's root folder), or DownloadError.
        tarfile's data filter (see `refusal`) refuses names leading outside dest; an absolute name,
        which the filter would make relative, is refused here."""
        name = member.name.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or (parts and parts[0].endswith(":")):
            raise DownloadError(f"unsafe archive member {member.name!r} in {self.what}: absolute paths are not allowed")
        member.name = name
        member.refused = self.refusal(member)
        parts = tuple(p for p in PurePosixPath(os.path.normpath(name)).parts if p != ".")
        if not parts:
            if member.kind == DIR:
                return None
            raise DownloadError(f"{self.what}: the archive is truncated or damaged: a member has an empty name")
        for part in parts:
            size = len(part.encode("utf-8", "surrogateescape"))
            if size > self.name_max:
                raise DownloadError(
                    f"{self.what}: member {_short(member.name)!r} has a name of {size} bytes, "
                    f"longer than this file system allows ({self.name_max}): shorten it and "
                    "re-create the archive"
                )
        member.name = "/".join(parts)
        return self.dest.joinpath(*parts)

    def refusal(self, member: _Member) -> tuple[str, str] | None:
        """(reason, detail) when tarfile's data filter refuses `member` (a device or fifo; a link leading
        outside the archive: links are never created, only copied, so listing it is enough), None when
        it may be extracted; DownloadError for a name leading outside dest. Zip members are judged as
        the tar members they equal."""
        info = tarfile.TarInfo(member.name)
        info.type, info.linkname = _TAR_TYPES[member.kind], member.link
        try:
            tarfile.data_filter(info, str(self.dest))
        except tarfile.OutsideDestinationError:
            raise DownloadError(
                f"unsafe archive member {member.name!r} in {self.what}: '..' would write outside the extraction folder"
            ) from None
        except tarfile.SpecialFileError:
            return SPECIAL_FILE, "a device, fifo or other special file, not a regular file"
        except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError):
            return LINK, f"{_link_kind(member)} link to {member.link!r} points outside the archive: not followed"
        return None

    def claim(self, member: _Member) -> bool:
        """Record `member`'s path; False for a repeated file name. Raises on a name used as a file and as
        a folder, and on names that differ only in Unicode normalisation."""
        parts, spelled = member.name.split("/"), member.spelled.replace("\\", "/").strip("/").split("/")
        spelled = [p for p in spelled if p not in ("", ".")]
        for i in range(1, len(parts) + 1):
            path, spelling = "/".join(parts[:i]), "/".join(spelled[:i]) if len(spelled) == len(parts) else None
            known = self.spellings.setdefault(path, spelling)
            if spelling is not None and known is not None and known != spelling:
                raise DownloadError(
                    f"{self.what} holds both {known!r} and {spelling!r}: names that differ only "
                    "in Unicode normalisation (NFC/NFD) look identical and would merge; rename "
                    "one of them"
                )
            kind = self.kinds.get(path)
            wanted = DIR if i < len(parts) or member.kind == DIR else FILE
            if kind is not None and kind != wanted:
                raise self.clash(path, member)
            if kind == FILE:
                return False
            self.kinds[path] = wanted
            if wanted == DIR and i < len(parts):
                self.folder_by.setdefault(path, member.name)
            elif member.kind in (SYMLINK, HARDLINK):
                self.link_at[path] = member
        return True

    def clash(self, path: str, member: _Member) -> DownloadError:
        """The error for `path` claimed as a file (or a link) by one member and as a folder by another.
        A link is named as such, with where it points: links are never created on disk, so nothing can
        be written through one."""
        link = self.link_at.get(path)
        if link is not None:  # the link came first, then a member below it
            clash = f"{member.name!r} is written through it"
        elif member.kind in (SYMLINK, HARDLINK) and member.name == path:  # the folder came first
            link, below = member, self.folder_by.get(path)
            clash = f"it is also a folder of the archive{f' (holding {below!r})' if below else ''}"
        else:
            return DownloadError(
                f"{self.what}: {path!r} is both a file and a folder in the archive "
                f"(member {member.name!r}): re-create the archive without the clash"
            )
        outside = link.refused is not None and link.refused[0] == LINK  # tarfile's data filter said so
        advice = (
            "The link points outside the archive, a way to make extraction write elsewhere: do not use an "
            "archive from a source you do not trust; otherwise re-create it"
            if outside
            else "Re-create the archive"
        )
        return DownloadError(
            f"{self.what}: {path!r} is a {_link_kind(link)} link (to {link.link!r}) and {clash}: links to "
            f"folders are not followed, so the archive cannot be extracted as it is. {advice} with a real folder at "
            f"{path!r} instead of the link (e.g. tar --dereference, or zip without --symlinks)"
        )

    @contextlib.contextmanager
    def writing(self, member: _Member):
        """File-system refusals of a member's name become a DownloadError naming it."""
        try:
            yield
        except OSError as exc:
            if exc.errno not in (errno.ENAMETOOLONG, errno.EILSEQ, errno.EINVAL):
                raise
            raise DownloadError(
                f"{self.what}: member {_short(member.name)!r} cannot be written here "
                f"({exc.strerror}): rename it and re-create the archive"
            ) from None

    def skip(self, member: _Member, reason: str, detail: str) -> None:
        self.skipped.append({"source": member.name, "reason": reason, "detail": detail})

    # ---- files
    def copy(self, member: _Member, path: Path) -> None:
        """Stream one file member to `path` within the caps; over a cap it is removed and skipped."""
        cap = MAX_MEMBER_BYTES
        if member.size > cap:  # judged from the header, before reading anything
            self.skip(
                member,
                OVERSIZED_MEMBER,
                f"declares {member.size} bytes, over the {cap}-byte limit per member (MAX_MEMBER_BYTES): not extracted",
            )
            return
        if member.packed is not None and _suspicious(member.size, member.packed):
            self.skip(member, OVERSIZED_MEMBER, _ratio_detail(member.size, member.packed))
            return
        self.budget.add(1, member.size)
        charged, written, problem = member.size, 0, None
        with self.writing(member):
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(path, "wb")
        with out:
            with _reading(self.what, member.name):
                src = member.open()
                start = member.consumed() if member.consumed else 0
            while True:
                with _reading(self.what, member.name):
                    chunk = src.read(CHUNK_BYTES)
                if not chunk:
                    break
                written += len(chunk)
                if written > charged:  # the header lied: count the real bytes
                    self.budget.add(0, written - charged)
                    charged = written
                packed = member.packed if member.consumed is None else member.consumed() - start
                if written > cap:
                    problem = f"holds more than {cap} bytes (MAX_MEMBER_BYTES; its header declared {member.size})"
                elif packed is not None and _suspicious(written, packed):
                    problem = _ratio_detail(written, packed)
                if problem:
                    break
                out.write(chunk)
        if problem:
            path.unlink()
            self.budget.files -= 1
            self.budget.bytes -= charged
            self.skip(member, OVERSIZED_MEMBER, problem + ": not extracted")

    # ---- links
    def follow_links(self) -> None:
        """Copy the file each link leads to (links to links resolve in any order); list the rest."""
        pending = self.links
        while pending:
            unresolved = []
            for member, path, target in pending:
                if target.is_file():
                    self.budget.add(1, target.stat().st_size)
                    with self.writing(member):
                        path.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(target, path)
                else:
                    unresolved.append((member, path, target))
            if len(unresolved) == len(pending):
                break
            pending = unresolved
        for member, _, target in pending:
            where = target.relative_to(self.dest).as_posix()
            what = (
                "a folder: links to folders are not followed"
                if target.is_dir()
                else "not a file extracted from the archive"
            )
            self.skip(member, LINK, f"{_link_kind(member)} link to {member.link!r} ({where}), which is {what}")


def _link_kind(member: _Member) -> str:
    return "symbolic" if member.kind == SYMLINK else "hard"


def _suspicious(size: int, packed: int) -> bool:
    return size > RATIO_CHECK_BYTES and size > MAX_COMPRESSION_RATIO * max(packed, 1)


def _ratio_detail(size: int, packed: int) -> str:
    return (
        f"expands {size / max(packed, 1):.0f}:1 ({size} bytes from {packed} compressed), over "
        f"MAX_COMPRESSION_RATIO={MAX_COMPRESSION_RATIO}: a possible archive bomb, not extracted"
    )


def _short(name: str, limit: int = 80) -> str:
    return name if len(name) <= limit else name[:limit] + "..."


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _safe_target(dest: Path, name: str) -> Path:
    """The path for an object key `name` under `dest` (s3 prefixes), or DownloadError if it would escape."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        raise DownloadError(f"unsafe object key {name!r}: it would write outside the download folder")
    return dest.joinpath(*[p for p in parts if p not in ("", ".")])

"""Sources: bring a dataset (http(s), s3://, a local zip/tar(.gz) or folder, file:// URL) into the
worker cache, verify its checksum and extract archives safely.

`fetch(ctx, url, checksum)` returns the local folder. Library module: no stage imports another
stage; ingest (download) and predict both fetch through here.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from cnn_tasks.context import cache_root
from cnn_tasks.errors import PipelineError

log = logging.getLogger(__name__)

# Safety limits for archive extraction (zip/tar bombs); override per call in tests.
MAX_EXTRACT_BYTES = 20 * 1024**3
MAX_EXTRACT_FILES = 2_000_000
# Network behaviour.
HTTP_TIMEOUT_S = 30
HTTP_RETRIES = 4
RETRY_BACKOFF_S = 1.0
CHUNK_BYTES = 1 << 20
PROGRESS_EVERY_S = 5.0

LOCAL_COPY_HINT = ("Without network access, point at a local copy: DATASET_URL=/path/to/EuroSAT.zip "
                   "(or the dataset_url param), and clear dataset_checksum or set it to that copy's hash.")


class DownloadError(PipelineError, RuntimeError):
    """The source could not be fetched, verified or extracted."""


# ================================================================== fetch
def fetch(ctx, url: str, checksum: str | None = None, *, max_bytes: int = MAX_EXTRACT_BYTES,
          max_files: int = MAX_EXTRACT_FILES) -> Path:
    """Bring `url` into the worker cache, verify `checksum`, extract it; return the local folder."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https", "s3"):
        digest = _digest(f"{url}|{checksum or ''}")
        target = ctx.hold_cache_entry(cache_root() / "downloads" / digest) / _file_name(parsed.path)
        if target.is_file():
            log.info("using the cached download of %s (%s)", url, target)
            source = target
        elif parsed.scheme == "s3":
            source = _download_s3(ctx, parsed.netloc, parsed.path.lstrip("/"), target, checksum)
        else:
            source = _download_http(url, target, checksum)
    else:
        source = Path(unquote(parsed.path) if parsed.scheme == "file" else url).expanduser().resolve()
        if not source.exists():
            raise DownloadError(f"{source} does not exist: dataset_url must be an http(s):// or s3:// URL, "
                                "or a local zip/tar file or folder")
        if source.is_dir():
            if checksum:
                log.warning("%s is a folder: the checksum %s applies only to files and is not checked",
                            source, checksum)
            return source
        if checksum:
            verify_checksum(source, checksum)
        info = source.stat()
        digest = _digest(f"{source}|{info.st_size}|{info.st_mtime_ns}|{checksum or ''}")
    if source.is_dir():  # an s3:// prefix downloads straight into a folder
        return source
    return _extract_cached(source, ctx.hold_cache_entry(cache_root() / "extracted" / digest), max_bytes, max_files)


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
            "set dataset_checksum to its hash or clear it.")


class _Sink:
    """Write a stream to `<target>.part` while hashing it and logging progress; commit renames it."""

    def __init__(self, target: Path, checksum: str | None, total: int | None, what: str):
        self.target, self.what, self.total = target, what, total
        self.algorithm, self.expected = _parse_checksum(checksum) if checksum else ("sha256", None)
        self.hasher = hashlib.new(self.algorithm)
        self.part = target.with_name(target.name + ".part")
        target.parent.mkdir(parents=True, exist_ok=True)
        self.out = open(self.part, "wb")
        self.done, self.started, self.last_log = 0, time.monotonic(), time.monotonic()

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
        if self.expected:
            try:
                _compare(self.hasher, self.expected, self.algorithm, self.what)
            except DownloadError:
                self.part.unlink(missing_ok=True)
                raise
        os.replace(self.part, self.target)
        log.info("downloaded %s: %.1f MiB in %.1f s", self.what, self.done / 2**20,
                 time.monotonic() - self.started)
        return self.target

    def abort(self) -> None:
        self.out.close()
        self.part.unlink(missing_ok=True)


def _download_http(url: str, target: Path, checksum: str | None, timeout: float = HTTP_TIMEOUT_S,
                   retries: int = HTTP_RETRIES) -> Path:
    """Stream `url` to `target`, retrying transient failures with exponential backoff."""
    for attempt in range(1, retries + 1):
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "cnn-image-pipeline"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                length = response.headers.get("Content-Length")
                sink = _Sink(target, checksum, int(length) if length else None, url)
                try:
                    for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                        sink.write(chunk)
                except BaseException:
                    sink.abort()
                    raise
                if sink.total and sink.done < sink.total:
                    sink.abort()
                    raise http.client.IncompleteRead(b"", sink.total - sink.done)
            return sink.commit()
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 410):
                raise DownloadError(f"{url} was not found (HTTP {exc.code}): check dataset_url") from None
            if exc.code not in (408, 425, 429) and exc.code < 500:
                raise DownloadError(f"{url} was refused (HTTP {exc.code} {exc.reason}): check dataset_url "
                                    "and that the file is public") from None
            problem = f"HTTP {exc.code} {exc.reason}"
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, (socket.gaierror, ConnectionRefusedError)) or not _transient(reason):
                what = "host not found" if isinstance(reason, socket.gaierror) else "unreachable"
                raise DownloadError(f"cannot download {url}: {what} ({reason}). {LOCAL_COPY_HINT}") from None
            problem = str(reason)
        except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
            problem = f"{type(exc).__name__}: {exc}"
        if attempt == retries:
            raise DownloadError(f"cannot download {url} after {retries} attempts: {problem}. {LOCAL_COPY_HINT}")
        wait = RETRY_BACKOFF_S * 2 ** (attempt - 1)
        log.warning("download of %s failed (%s); retry %d/%d in %.0f s", url, problem, attempt, retries - 1, wait)
        time.sleep(wait)
    raise AssertionError("unreachable")


def _transient(reason) -> bool:
    return isinstance(reason, (TimeoutError, ConnectionResetError, ConnectionAbortedError, socket.timeout))


def _download_s3(ctx, bucket: str, key: str, target: Path, checksum: str | None) -> Path:
    """Stream s3://bucket/key to `target`; a key ending in '/' (or empty) fetches the whole prefix."""
    from botocore.exceptions import BotoCoreError, ClientError

    client, url = ctx.s3(), f"s3://{bucket}/{key}"
    try:
        if not key or key.endswith("/"):
            return _download_s3_prefix(client, bucket, key, target.parent / "prefix")
        head = client.head_object(Bucket=bucket, Key=key)
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
        sink = _Sink(target, checksum, head.get("ContentLength"), url)
        try:
            for chunk in body.iter_chunks(CHUNK_BYTES):
                sink.write(chunk)
        except BaseException:
            sink.abort()
            raise
        return sink.commit()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket"):
            raise DownloadError(f"{url} does not exist ({code}): check dataset_url") from None
        raise DownloadError(f"cannot read {url}: {exc}") from None
    except BotoCoreError as exc:
        raise DownloadError(f"cannot read {url}: {exc}. {LOCAL_COPY_HINT}") from None


def _download_s3_prefix(client, bucket: str, prefix: str, folder: Path) -> Path:
    if folder.is_dir():
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(prefix):]
            if not relative or relative.endswith("/"):
                continue
            path = _safe_target(tmp, relative)
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], str(path))
            count += 1
    if count == 0:
        raise DownloadError(f"s3://{bucket}/{prefix} holds no objects: check dataset_url")
    log.info("downloaded %d objects from s3://%s/%s", count, bucket, prefix)
    tmp.rename(folder)
    return folder


# ================================================================== safe extraction
def _extract_cached(archive: Path, folder: Path, max_bytes: int, max_files: int) -> Path:
    """Extract `archive` into `folder` once (a finished folder is reused by later calls)."""
    if folder.is_dir():
        log.info("using the cached extraction of %s (%s)", archive, folder)
        return folder
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    started = time.monotonic()
    try:
        extract_archive(archive, tmp, max_bytes=max_bytes, max_files=max_files)
        tmp.rename(folder)
    except OSError:
        if not folder.is_dir():  # another worker finishing first is fine
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("extracted %s in %.1f s", archive.name, time.monotonic() - started)
    return folder


def extract_archive(archive: Path, dest: Path, *, max_bytes: int = MAX_EXTRACT_BYTES,
                    max_files: int = MAX_EXTRACT_FILES) -> None:
    """Extract a zip or tar(.gz/.bz2/.xz) into `dest`, refusing anything unsafe.

    Refused with DownloadError: absolute member paths, '..' traversal, links pointing outside
    `dest`, more than `max_files` files or more than `max_bytes` bytes. Links inside `dest`,
    devices and fifos are skipped.
    """
    dest = dest.resolve()
    budget = _Budget(archive, max_bytes, max_files)
    if zipfile.is_zipfile(archive):
        _extract_zip(archive, dest, budget)
    elif tarfile.is_tarfile(archive):
        _extract_tar(archive, dest, budget)
    else:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive: dataset_url must name a zip, "
                            "tar(.gz) or a folder of class folders")


@dataclass
class _Budget:
    """Running totals of an extraction, checked against the file-count and size limits."""

    archive: Path
    max_bytes: int
    max_files: int
    files: int = 0
    bytes: int = 0

    def check(self, files: int, size: int) -> None:
        if files > self.max_files:
            raise DownloadError(f"{self.archive.name} holds more than {self.max_files} files (MAX_EXTRACT_FILES): "
                                "refusing to extract a possible archive bomb")
        if size > self.max_bytes:
            raise DownloadError(f"{self.archive.name} would extract to more than {self.max_bytes} bytes "
                                "(MAX_EXTRACT_BYTES): refusing to extract a possible archive bomb")

    def add(self, files: int, size: int) -> None:
        self.files += files
        self.bytes += size
        self.check(self.files, self.bytes)


def _safe_target(dest: Path, name: str) -> Path:
    """The path for archive member `name` under `dest`, or DownloadError if it would escape."""
    cleaned = name.replace("\\", "/")
    parts = PurePosixPath(cleaned).parts
    if cleaned.startswith("/") or (parts and parts[0].endswith(":")):
        raise DownloadError(f"unsafe archive member {name!r}: absolute paths are not allowed")
    if ".." in parts:
        raise DownloadError(f"unsafe archive member {name!r}: '..' would write outside the extraction folder")
    return dest.joinpath(*[p for p in parts if p not in ("", ".")])


def _check_link(dest: Path, name: str, link: str, relative_to_member: bool) -> None:
    """Raise when a link member named `name` pointing at `link` would resolve outside `dest`."""
    base = _safe_target(dest, name).parent if relative_to_member else dest
    target = Path(os.path.normpath(base / link)) if not link.startswith("/") else Path(link)
    root = os.path.normpath(dest)
    if not (str(target) == root or str(target).startswith(root + os.sep)):
        raise DownloadError(f"unsafe archive member {name!r}: link to {link!r} points outside the "
                            "extraction folder")


def _copy_member(src, path: Path, budget: _Budget, declared: int) -> None:
    budget.add(1, declared)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "wb") as out:
        for chunk in iter(lambda: src.read(CHUNK_BYTES), b""):
            written += len(chunk)
            if written > declared:  # the header lied: count the real bytes against the budget
                budget.add(0, min(len(chunk), written - declared))
            out.write(chunk)


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        files = [m for m in members if not m.is_dir()]
        # Check the declared totals before writing anything; copying enforces them again.
        budget.check(len(files), sum(m.file_size for m in files))
        for member in members:
            path = _safe_target(dest, member.filename)
            if stat.S_ISLNK(member.external_attr >> 16):
                _check_link(dest, member.filename, zf.read(member).decode("utf-8", "replace"), True)
                log.warning("skipping link %s in %s", member.filename, archive.name)
            elif member.is_dir():
                path.mkdir(parents=True, exist_ok=True)
            else:
                with zf.open(member) as src:
                    _copy_member(src, path, budget, member.file_size)


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    with tarfile.open(archive, "r:*") as tf:
        for member in tf:  # streams: members are checked as they come
            path = _safe_target(dest, member.name)
            if member.issym() or member.islnk():
                _check_link(dest, member.name, member.linkname, relative_to_member=member.issym())
                log.warning("skipping link %s -> %s in %s", member.name, member.linkname, archive.name)
            elif member.isdir():
                path.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                src = tf.extractfile(member)
                _copy_member(src, path, budget, member.size)
            else:
                log.warning("skipping special file %s in %s", member.name, archive.name)

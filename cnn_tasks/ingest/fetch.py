"""Fetch a dataset source into the worker cache: transport (http(s), s3://, a local zip/tar(.gz/.bz2/.xz)
or folder, file:// URL), checksum verification, and the cache entries downloads and extractions live in.

`fetch_source(ctx, url, checksum)` returns a `Fetched`: the local folder plus the archive members
that were not extracted, each with a reason (`skipped`); `fetch(...)` returns just the folder.
Library module: no stage imports another stage; ingest (download) and predict both fetch here.
Archives are extracted by `cnn_tasks.ingest.extract`, which never trusts them.

Cache: downloads and extractions are cache entries (`cnn_tasks.cache`), each made under its
exclusive build lock (`locks/<kind>/<entry>.build`), so two processes fetching the same source on
one worker download and extract it once; downloads go to a part file of each writer's own. An
extraction is written to a temporary folder and renamed into place together with its
`skipped.json`, so a reused extraction returns the same skipped list; it is keyed by the extraction
limits in force (`cnn_tasks.ingest.limits`). What fails to download, verify or extract is never
kept: a cached download that does not extract is discarded and fetched again, once.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import http.client
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
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
from cnn_tasks.ingest import extract, limits
from cnn_tasks.ingest.errors import DownloadError
from cnn_tasks.ingest.locking import flock

log = logging.getLogger(__name__)

# Network behaviour.
HTTP_TIMEOUT_S = 30
HTTP_RETRIES = 4  # attempts in all
RETRY_BACKOFF_S = 1.0  # urllib3 Retry's backoff_factor: waits 0, 2, 4 ... x this between attempts
RETRY_STATUSES = frozenset({408, 425, 429, *range(500, 600)})
CHUNK_BYTES = 1 << 20  # bytes streamed from a download at a time
PROGRESS_EVERY_S = 5.0
# Bump when the extraction cache's layout or rules change: older entries are then not reused.
EXTRACTION_VERSION = 2

LOCAL_COPY_HINT = (
    "Without network access, point at a local copy: DATASET_URL=/path/to/EuroSAT.zip "
    "(or the dataset_url param), and clear dataset_checksum or set it to that copy's hash."
)


@dataclass
class Fetched:
    """A fetched source: the local folder, and the archive members not extracted into it.

    `skipped` holds one dict per member: `source` (its path inside the archive, relative to
    `folder`), `reason` (`extract.LINK`, OVERSIZED_MEMBER, SPECIAL_FILE, DUPLICATE_MEMBER) and `detail`.
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
    lease, and eviction, which unlinks `.lock` files, leaves it alone)."""
    with flock(entry.parent.parent / "locks" / entry.parent.name / f"{entry.name}.build"):
        yield


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


# ================================================================== extraction cache entries
def _extract_cached(ctx, archive: Path, what: str) -> Fetched:
    """Extract `archive` once into a cache entry holding `data/` and `skipped.json`; reuse it later.

    Made under the entry's build lock: another process extracting the same archive waits, then
    finds the finished entry. The key holds the limits in force, so lowered limits extract again."""
    info = archive.stat()
    bounds = (
        limits.MAX_EXTRACT_BYTES,
        limits.MAX_EXTRACT_FILES,
        limits.MAX_MEMBER_BYTES,
        limits.MAX_COMPRESSION_RATIO,
        limits.RATIO_CHECK_BYTES,
    )
    entry = ctx.hold_cache_entry(
        cache_root()
        / "extracted"
        / _digest(f"v{EXTRACTION_VERSION}|{archive}|{info.st_size}|{info.st_mtime_ns}|{bounds}")
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
            skipped = extract.extract_archive(archive, tmp / "data", what=what)
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


def _safe_target(dest: Path, name: str) -> Path:
    """The path for an object key `name` under `dest` (s3 prefixes), or DownloadError if it would escape."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or ".." in parts or (parts and parts[0].endswith(":")):
        raise DownloadError(f"unsafe object key {name!r}: it would write outside the download folder")
    return dest.joinpath(*[p for p in parts if p not in ("", ".")])

"""Download + validate: fetch the labelled dataset, clean it, and pack it into shards.

`fetch(ctx, url, checksum)` brings any source (http(s), s3://, a local zip/tar(.gz) or folder,
file:// URLs) into the worker cache, verifies its checksum, extracts archives safely and returns
the local folder. `run(ctx)` then finds the class folders, validates every image once
(`cnn_tasks.images`), removes duplicates and writes

  data/manifest.csv        one row per accepted image (key, class, size, mode, channel sums, shard)
  data/rejected.csv        every rejected or dropped file with its reason
  data/ingest.json         counts (by class, by reason), classes, shard keys
  data/clean/images-*.tfrecord   the accepted images, in a seeded random order

Duplicates: identical pixels within one class keep the first file (sorted by path) and list the
others as `duplicate`; identical pixels in two classes have no trustworthy label, so every copy
is dropped as `duplicate_across_classes`. Files skipped by `max_images_per_class` sampling are
counted in ingest.json (`not_sampled`), not listed one by one.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import logging
import os
import random
import shutil
import socket
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlparse

from cnn_tasks import images
from cnn_tasks.context import cache_root
from cnn_tasks.errors import PipelineError
from cnn_tasks.shards import ShardWriter

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

IGNORED_NAMES = {"__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini"}
DUPLICATE = "duplicate"
DUPLICATE_ACROSS_CLASSES = "duplicate_across_classes"
LOCAL_COPY_HINT = ("Without network access, point at a local copy: DATASET_URL=/path/to/EuroSAT.zip "
                   "(or the dataset_url param), and clear dataset_checksum or set it to that copy's hash.")


class DownloadError(PipelineError, RuntimeError):
    """The source could not be fetched, verified or extracted."""


class DatasetError(PipelineError, ValueError):
    """The fetched data does not form a usable labelled dataset (layout, classes, counts)."""


# ================================================================== fetch
def fetch(ctx, url: str, checksum: str | None = None, *, max_bytes: int = MAX_EXTRACT_BYTES,
          max_files: int = MAX_EXTRACT_FILES) -> Path:
    """Bring `url` into the worker cache, verify `checksum`, extract it; return the local folder."""
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https", "s3"):
        digest = _digest(f"{url}|{checksum or ''}")
        target = cache_root() / "downloads" / digest / _file_name(parsed.path)
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
    return _extract_cached(source, cache_root() / "extracted" / digest, max_bytes, max_files)


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


# ================================================================== layout
def is_ignored(name: str) -> bool:
    """Hidden files, macOS/Windows metadata: never data, never listed as rejected."""
    return name.startswith(".") or name in IGNORED_NAMES


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_ignored(p.name))


def find_class_root(folder: Path, subdir: str | None = None) -> Path:
    """The folder holding one sub-folder per class.

    Accepts class folders at `folder`, below wrapper folders (a root with exactly one visible
    sub-folder, e.g. EuroSAT's `2750/`), and `subdir` (e.g. 'train_set') at the root or below
    one wrapper.
    """
    root = folder
    if subdir:
        candidates = [folder / subdir] + [d / subdir for d in _visible_dirs(folder)]
        found = [c for c in candidates if c.is_dir()]
        if not found:
            seen = ", ".join(d.name for d in _visible_dirs(folder)) or "nothing"
            raise DatasetError(f"dataset_subdir: {subdir!r} is not in the dataset (its top level holds: {seen})")
        root = found[0]
    for _ in range(3):  # descend through wrapper folders
        dirs = _visible_dirs(root)
        if len(dirs) != 1:
            break
        root = dirs[0]
    if len(_visible_dirs(root)) < 2:
        raise DatasetError(f"no class folders found in {folder}: expected one folder per class (at the "
                           "top, below one wrapper folder, or in dataset_subdir), with at least 2 classes")
    return root


def select_classes(available: list[str], wanted: tuple[str, ...] | None, limit: int | None) -> list[str]:
    """Apply config.classes (a subset; unknown names are an error) or config.classes_limit."""
    if wanted:
        unknown = [c for c in wanted if c not in available]
        if unknown:
            raise DatasetError(f"classes: {', '.join(map(repr, unknown))} not in the dataset; "
                               f"available classes: {', '.join(available)}")
        return sorted(wanted)
    return available[:limit] if limit else list(available)


def list_class_files(class_dir: Path) -> tuple[list[Path], int]:
    """All candidate files of one class (sorted; sub-folders included) and the number ignored."""
    files, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(class_dir):
        dirnames[:] = [d for d in dirnames if not is_ignored(d)]
        for name in filenames:
            if is_ignored(name):
                ignored += 1
            else:
                files.append(os.path.join(dirpath, name))
    return [Path(f) for f in sorted(files)], ignored


def sample_files(files: list[Path], limit: int | None, seed: int, class_name: str) -> list[Path]:
    """A seeded random sample of at most `limit` files (sorted), taken before any decoding."""
    if not limit or len(files) <= limit:
        return files
    return sorted(random.Random(f"{seed}:{class_name}").sample(files, limit))


# ================================================================== run
MANIFEST_FIELDS = ["key", "class", "label", "source", "width", "height", "mode", "format", "pixels",
                   "sum_r", "sum_g", "sum_b", "sumsq_r", "sumsq_g", "sumsq_b", "shard", "index"]
REJECTED_FIELDS = ["source", "class", "reason", "detail", "duplicate_of"]


@dataclass
class _Candidate:
    """A validated image waiting in the spool file until duplicates are known."""

    row: dict
    offset: int
    length: int


def run(ctx) -> dict:
    """Fetch, validate, dedupe and pack the dataset; write manifest, rejected list and ingest.json."""
    cfg = ctx.config
    started = time.monotonic()
    folder = fetch(ctx, cfg.dataset_url, cfg.dataset_checksum)
    class_root = find_class_root(folder, cfg.dataset_subdir)
    available = [d.name for d in _visible_dirs(class_root)]
    classes = select_classes(available, cfg.classes, cfg.classes_limit)
    log.info("dataset at %s: %d classes available, using %d: %s", class_root, len(available), len(classes),
             ", ".join(classes))

    per_class = {c: Counter() for c in classes}
    plan: list[tuple[int, str, Path]] = []
    ignored = 0
    for label, name in enumerate(classes):
        files, hidden = list_class_files(class_root / name)
        chosen = sample_files(files, cfg.max_images_per_class, cfg.seed, name)
        ignored += hidden
        per_class[name].update(found=len(files), considered=len(chosen), not_sampled=len(files) - len(chosen))
        plan += [(label, name, path) for path in chosen]

    scratch = ctx.scratch("download")
    spool_path = scratch / "validated.bin"
    rejected: list[dict] = []
    stats = Counter()
    with open(spool_path, "wb") as spool:
        candidates = _validate_all(plan, class_root, spool, rejected, stats)
    kept = _drop_duplicates(candidates, rejected)
    for cand in kept:
        per_class[cand.row["class"]]["accepted"] += 1
    for row in rejected:
        per_class[row["class"]]["rejected"] += 1

    rejected.sort(key=lambda r: (r["class"], r["source"]))
    ctx.store.put_text(ctx.data_key("rejected.csv"), _csv(REJECTED_FIELDS, rejected))
    by_reason = dict(sorted(Counter(r["reason"] for r in rejected).items()))
    ingest = {
        "source": cfg.dataset_url,
        "local_folder": str(folder),
        "class_root": str(class_root.relative_to(folder)) if class_root != folder else ".",
        "available_classes": available,
        "classes": classes,
        "files_found": sum(c["found"] for c in per_class.values()),
        "not_sampled": sum(c["not_sampled"] for c in per_class.values()),
        "files_considered": len(plan),
        "accepted": len(kept),
        "rejected": len(rejected),
        "rejected_by_reason": by_reason,
        "ignored_hidden_files": ignored,
        "converted_from_mode": dict(sorted(stats.items())),
        "reencoded_png": sum(1 for c in kept if c.row["reencoded"]),
        "per_class": {c: {k: per_class[c][k] for k in ("found", "considered", "not_sampled", "accepted",
                                                        "rejected")} for c in classes},
        "max_images_per_class": cfg.max_images_per_class,
        "min_images_per_class": cfg.min_images_per_class,
        "manifest": ctx.data_key("manifest.csv"),
        "rejected_list": ctx.data_key("rejected.csv"),
    }
    short = {c: per_class[c]["accepted"] for c in classes if per_class[c]["accepted"] < cfg.min_images_per_class}
    if short:
        ingest["error"] = "; ".join(f"class {c!r} has {n} valid images" for c, n in short.items())
        ctx.store.put_json(ctx.data_key("ingest.json"), ingest)
        spool_path.unlink(missing_ok=True)
        raise DatasetError(
            f"min_images_per_class: {ingest['error']}, fewer than min_images_per_class="
            f"{cfg.min_images_per_class}; see {ctx.data_key('rejected.csv')} for what was rejected, or "
            "lower min_images_per_class / drop the class with the classes setting")

    manifest, shard_keys = _pack(ctx, kept, spool_path, scratch)
    spool_path.unlink(missing_ok=True)
    ctx.store.put_text(ctx.data_key("manifest.csv"), _csv(MANIFEST_FIELDS, manifest))
    ingest["clean_shards"] = shard_keys
    ingest["seconds"] = round(time.monotonic() - started, 2)
    ctx.store.put_json(ctx.data_key("ingest.json"), ingest)
    log.info("ingest done: %d accepted, %d rejected %s, %.1f s", len(kept), len(rejected), by_reason,
             ingest["seconds"])
    return {"accepted": len(kept), "rejected": len(rejected), "rejected_by_reason": by_reason,
            "classes": classes, "manifest": ingest["manifest"], "ingest": ctx.data_key("ingest.json"),
            "clean_shards": len(shard_keys)}


def _validate_all(plan, class_root: Path, spool, rejected: list[dict], stats: Counter) -> list[_Candidate]:
    """Decode every planned file once; accepted encodings go to `spool`, failures to `rejected`."""
    candidates: list[_Candidate] = []
    started = last = time.monotonic()
    for done, (label, name, path) in enumerate(plan, 1):
        source = f"{name}/{path.relative_to(class_root / name).as_posix()}"
        try:
            img = images.validate(path)
        except images.ImageRejected as exc:
            rejected.append({"source": source, "class": name, "reason": exc.reason, "detail": exc.detail,
                             "duplicate_of": ""})
            continue
        if img.original_mode != "RGB":
            stats[img.original_mode] += 1
        offset = spool.tell()
        spool.write(img.encoded)
        row = {"key": img.key, "class": name, "label": label, "source": source, "width": img.width,
               "height": img.height, "mode": img.original_mode, "format": img.original_format,
               "pixels": img.width * img.height, "reencoded": img.reencoded,
               **{f"sum_{c}": v for c, v in zip("rgb", img.channel_sum)},
               **{f"sumsq_{c}": v for c, v in zip("rgb", img.channel_sumsq)}}
        candidates.append(_Candidate(row, offset, len(img.encoded)))
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            log.info("validated %d/%d files (%.0f/s), %d rejected so far", done, len(plan),
                     done / (last - started), len(rejected))
    return candidates


def _drop_duplicates(candidates: list[_Candidate], rejected: list[dict]) -> list[_Candidate]:
    """Keep the first copy of identical images in one class; drop every copy across classes."""
    groups: dict[str, list[_Candidate]] = defaultdict(list)
    for cand in candidates:
        groups[cand.row["key"]].append(cand)
    drop: set[int] = set()
    for copies in groups.values():
        if len(copies) == 1:
            continue
        if len({c.row["class"] for c in copies}) > 1:
            for cand in copies:
                others = [o.row["source"] for o in copies if o is not cand]
                rejected.append({"source": cand.row["source"], "class": cand.row["class"],
                                 "reason": DUPLICATE_ACROSS_CLASSES,
                                 "detail": "identical pixels in classes " + ", ".join(
                                     sorted({c.row["class"] for c in copies})) + ": the label is ambiguous",
                                 "duplicate_of": ";".join(others)})
                drop.add(id(cand))
        else:
            for cand in copies[1:]:
                rejected.append({"source": cand.row["source"], "class": cand.row["class"], "reason": DUPLICATE,
                                 "detail": "identical pixels", "duplicate_of": copies[0].row["source"]})
                drop.add(id(cand))
    return [c for c in candidates if id(c) not in drop]


def _pack(ctx, kept: list[_Candidate], spool_path: Path, scratch: Path) -> tuple[list[dict], list[str]]:
    """Write the accepted images into clean shards in a seeded random order; return manifest rows."""
    order = list(range(len(kept)))
    random.Random(ctx.config.seed).shuffle(order)
    folder = scratch / "clean"
    shutil.rmtree(folder, ignore_errors=True)
    manifest = []
    with open(spool_path, "rb") as spool, ShardWriter(folder, "images") as writer:
        for i in order:
            cand = kept[i]
            spool.seek(cand.offset)
            writer.write(spool.read(cand.length), cand.row["label"], cand.row["key"])
            row = {k: v for k, v in cand.row.items() if k != "reencoded"}
            row["shard"] = ctx.data_key("clean", writer.paths[-1].name)
            row["index"] = (writer.count - 1) % writer.per_shard
            manifest.append(row)
    keys = []
    for path in writer.paths:
        keys.append(ctx.data_key("clean", path.name))
        ctx.store.put_file(keys[-1], path)
    shutil.rmtree(folder, ignore_errors=True)
    log.info("packed %d images into %d clean shards", len(manifest), len(keys))
    return manifest, keys


def _csv(fields: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


"""The artifact store: a local folder (the embedded default) or an S3-compatible bucket.

Both back ends share one small interface keyed by '/'-separated keys relative to the store's
root (`runs/<run_id>/...`). Local writes are atomic (temporary file + rename); S3 uses boto3
with multipart upload for large files and retries with backoff on transient errors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple
from urllib.parse import urlparse

from cnn_tasks.errors import PipelineError


class StoreError(PipelineError, RuntimeError):
    """A store operation failed in a way the user must fix (bucket, credentials, missing key)."""


class StoreUnavailable(RuntimeError):
    """The store could not be reached or answered with a server error: a retry may succeed."""


def _clean_key(key: str) -> str:
    """Reject keys that could escape the store root; return the normalised key."""
    key = key.replace("\\", "/")
    parts = PurePosixPath(key).parts
    if not key or key.startswith("/") or any(p in ("..", ".") for p in parts):
        raise StoreError(f"invalid artifact key {key!r}: keys are relative paths without '..'")
    return "/".join(parts)


class ObjectStream(NamedTuple):
    """An object read in chunks (e.g. to serve it over HTTP without holding it in memory)."""

    size: int
    chunks: Iterator[bytes]


class ArtifactStore:
    """Interface shared by both back ends."""

    uri: str

    # -- required by back ends
    def put_file(self, key: str, path: str | Path, content_type: str | None = None) -> str:
        raise NotImplementedError

    def get_file(self, key: str, path: str | Path) -> Path:
        raise NotImplementedError

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> str:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """All keys under `prefix`, sorted."""
        raise NotImplementedError

    def url(self, key: str) -> str:
        """Where a person or tool finds the object (file path URI or s3:// URI)."""
        raise NotImplementedError

    def version(self, key: str) -> str:
        """A token that changes whenever the object is rewritten (for worker caches)."""
        raise NotImplementedError

    def folders(self, prefix: str) -> list[str]:
        """Names of the folders directly under `prefix` (a folder key ending in '/'), sorted."""
        raise NotImplementedError

    def modified(self, key: str) -> datetime:
        """When the object was last written (UTC)."""
        raise NotImplementedError

    def stream(self, key: str, chunk_size: int = 1 << 20) -> ObjectStream:
        """The object's size and its bytes in chunks; StoreError if it does not exist."""
        raise NotImplementedError

    def copy(self, source: str, target: str) -> str:
        """Copy the object at `source` to `target` inside the store, without passing it through this host."""
        raise NotImplementedError

    # -- conveniences built on the above
    def put_json(self, key: str, value: Any) -> str:
        data = json.dumps(value, indent=2, sort_keys=True, default=_json_default).encode()
        return self.put_bytes(key, data, "application/json")

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_text(self, key: str, text: str, content_type: str = "text/plain; charset=utf-8") -> str:
        return self.put_bytes(key, text.encode("utf-8"), content_type)

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode("utf-8")


def _json_default(value: Any) -> Any:
    """Let numpy scalars and arrays, paths and tuples go into JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, (Path, PurePosixPath)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


_CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
    ".json": "application/json",
    ".csv": "text/csv; charset=utf-8",
    ".jpg": "image/jpeg",
    ".txt": "text/plain; charset=utf-8",
}


def content_type_for(key: str) -> str:
    return _CONTENT_TYPES.get(PurePosixPath(key).suffix.lower(), "application/octet-stream")


def _atomic_download(path: str | Path, fetch) -> Path:
    """Run `fetch(tmp)` into a unique temporary file beside `path`, then rename it into place,
    so concurrent readers of a shared cache never see a partly written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        fetch(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class LocalStore(ArtifactStore):
    """A folder on disk. Every write goes to a temporary file first, then is renamed in place."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uri = f"file://{self.root}"

    def path(self, key: str) -> Path:
        return self.root / _clean_key(key)

    def _atomic_write(self, key: str, write) -> str:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                write(out)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return self.url(key)

    def put_bytes(self, key, data, content_type=None):
        return self._atomic_write(key, lambda out: out.write(data))

    def put_file(self, key, path, content_type=None):
        def copy(out):
            with open(path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)

        return self._atomic_write(key, copy)

    def get_bytes(self, key):
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.url(key)} does not exist: did the stage that writes it run?") from None

    def get_file(self, key, path):
        source = self.path(key)
        if not source.is_file():
            raise StoreError(f"{self.url(key)} does not exist: did the stage that writes it run?")
        return _atomic_download(path, lambda tmp: shutil.copyfile(source, tmp))

    def exists(self, key):
        return self.path(key).is_file()

    def list(self, prefix=""):
        base = self.root / prefix if prefix else self.root
        folder = base if base.is_dir() else base.parent
        if not folder.exists():
            return []
        keys = (p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())
        return sorted(k for k in keys if k.startswith(prefix) and not PurePosixPath(k).name.endswith(".part"))

    def url(self, key):
        return f"file://{self.path(key)}"

    def version(self, key):
        try:
            stat = self.path(key).stat()
        except FileNotFoundError:
            raise StoreError(f"{self.url(key)} does not exist: did the stage that writes it run?") from None
        return f"{stat.st_mtime_ns}-{stat.st_size}"

    def folders(self, prefix):
        folder = self.root / prefix if prefix else self.root
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def modified(self, key):
        try:
            return datetime.fromtimestamp(self.path(key).stat().st_mtime, UTC)
        except FileNotFoundError:
            raise StoreError(f"{self.url(key)} does not exist: did the stage that writes it run?") from None

    def stream(self, key, chunk_size=1 << 20):
        """A file that is a link leading out of the store's folder counts as missing."""
        path = self.path(key).resolve()
        if not path.is_file() or not path.is_relative_to(self.root):
            raise StoreError(f"{self.url(key)} does not exist: did the stage that writes it run?")

        def chunks():
            with open(path, "rb") as source:
                while chunk := source.read(chunk_size):
                    yield chunk

        return ObjectStream(path.stat().st_size, chunks())

    def copy(self, source, target):
        src = self.path(source)
        if not src.is_file():
            raise StoreError(f"{self.url(source)} does not exist: did the stage that writes it run?")
        dst = self.path(target)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.part")
        tmp.unlink(missing_ok=True)
        try:  # a hard link costs nothing; every write replaces a file, so the copies never change together
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
        tmp.unlink(missing_ok=True)  # renaming onto a link to the same file leaves the name behind
        return self.url(target)


class S3Store(ArtifactStore):
    """A prefix inside an S3-compatible bucket (AWS, MinIO, moto), through a boto3 client."""

    MULTIPART_THRESHOLD = 16 * 1024 * 1024

    def __init__(self, bucket: str, prefix: str = "", client=None, endpoint_url: str | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client or make_s3_client(endpoint_url)
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self._check_bucket()

    def _check_bucket(self) -> None:
        from botocore.exceptions import ClientError, NoCredentialsError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except NoCredentialsError:
            raise StoreError(
                f"no S3 credentials for {self.uri}: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or the "
                "Airflow connection named by aws_conn_id"
            ) from None
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchBucket", "NotFound"):
                raise StoreError(
                    f"bucket {self.bucket!r} does not exist at {self._endpoint()}: "
                    "create it first (e.g. `aws s3 mb` or the MinIO console)"
                ) from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"):
                raise StoreError(
                    f"access to bucket {self.bucket!r} at {self._endpoint()} was refused "
                    f"({code}): check the access key and secret"
                ) from None
            raise StoreUnavailable(f"cannot reach bucket {self.bucket!r} at {self._endpoint()}: {exc}") from None

    def _endpoint(self) -> str:
        return self.client.meta.endpoint_url

    def _key(self, key: str) -> str:
        key = _clean_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _transfer_config(self):
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.MULTIPART_THRESHOLD,
            multipart_chunksize=self.MULTIPART_THRESHOLD,
            max_concurrency=4,
        )

    def put_bytes(self, key, data, content_type=None):
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type or content_type_for(key)
        )
        return self.url(key)

    def put_file(self, key, path, content_type=None):
        self.client.upload_file(
            str(path),
            self.bucket,
            self._key(key),
            Config=self._transfer_config(),
            ExtraArgs={"ContentType": content_type or content_type_for(key)},
        )
        return self.url(key)

    def get_bytes(self, key):
        from botocore.exceptions import ClientError

        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            raise self._missing(key, exc) from None

    def get_file(self, key, path):
        from botocore.exceptions import ClientError

        def download(tmp: str) -> None:
            try:
                self.client.download_file(self.bucket, self._key(key), tmp, Config=self._transfer_config())
            except ClientError as exc:
                raise self._missing(key, exc) from None

        return _atomic_download(path, download)

    def copy(self, source, target):
        from botocore.exceptions import ClientError

        if source == target:  # S3 refuses to copy an object onto itself
            if not self.exists(source):
                raise StoreError(f"{self.url(source)} does not exist: did the stage that writes it run?")
            return self.url(target)
        try:  # a managed copy: server-side, multipart above 5 GB
            self.client.copy(
                {"Bucket": self.bucket, "Key": self._key(source)},
                self.bucket,
                self._key(target),
                Config=self._transfer_config(),
            )
        except ClientError as exc:
            raise self._missing(source, exc) from None
        return self.url(target)

    def _missing(self, key: str, exc: Exception) -> Exception:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            return StoreError(f"{self.url(key)} does not exist: did the stage that writes it run?")
        return StoreUnavailable(f"reading {self.url(key)} failed: {exc}")

    def exists(self, key):
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        full = self._key(prefix) if prefix else (self.prefix + "/" if self.prefix else "")
        if prefix.endswith("/") and not full.endswith("/"):
            full += "/"
        strip = len(self.prefix) + 1 if self.prefix else 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            for obj in page.get("Contents", []):
                yield obj["Key"][strip:]

    def list(self, prefix=""):
        return sorted(self.iter_keys(prefix))

    def url(self, key):
        return f"s3://{self.bucket}/{self._key(key)}"

    def version(self, key):
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ETag"].strip('"')
        except ClientError as exc:
            raise self._missing(key, exc) from None

    def folders(self, prefix):
        full = self._key(prefix).rstrip("/") + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full, Delimiter="/")
        return sorted(p["Prefix"][len(full) :].rstrip("/") for page in pages for p in page.get("CommonPrefixes", []))

    def modified(self, key):
        from botocore.exceptions import ClientError

        try:
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["LastModified"]
        except ClientError as exc:
            raise self._missing(key, exc) from None

    def stream(self, key, chunk_size=1 << 20):
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            raise self._missing(key, exc) from None
        return ObjectStream(obj["ContentLength"], obj["Body"].iter_chunks(chunk_size))


def make_s3_client(endpoint_url: str | None = None, session=None):
    """A boto3 S3 client with standard retries (exponential backoff) and path-style addressing.

    Credentials come from `session` (e.g. built from an Airflow connection) or the standard boto3
    environment (AWS_ACCESS_KEY_ID, ~/.aws, instance roles).
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"max_attempts": 8, "mode": "standard"},
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"},
        signature_version="s3v4",
    )
    session = session or boto3.session.Session()
    endpoint_url = endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def open_store(
    uri: str, endpoint_url: str | None = None, s3_client=None, base_dir: str | Path | None = None
) -> ArtifactStore:
    """Open `file://<path>` (relative paths are resolved against base_dir or the cwd) or `s3://bucket/prefix`."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        path = Path(parsed.netloc + parsed.path) if parsed.netloc else Path(parsed.path)
        if not path.is_absolute():
            path = Path(base_dir or os.getcwd()) / path
        return LocalStore(path)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StoreError(f"store URI {uri!r} has no bucket: use s3://<bucket>/<prefix>")
        return S3Store(parsed.netloc, parsed.path, client=s3_client, endpoint_url=endpoint_url)
    raise StoreError(f"store URI {uri!r} must start with file:// or s3://")

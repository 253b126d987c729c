"""The archive extraction's safety limits (zip/tar bombs) and the running budget checked against them.

The limits are this module's constants, read at call time (so tests can lower them); the download
cache keys extractions by the limits in force, so lowered limits extract again.
"""

from __future__ import annotations

from dataclasses import dataclass

from cnn_tasks.ingest.errors import DownloadError

MAX_EXTRACT_BYTES = 20 * 1024**3
MAX_EXTRACT_FILES = 2_000_000
MAX_MEMBER_BYTES = 512 * 1024**2
# A member expanding more than this (uncompressed : compressed) once past RATIO_CHECK_BYTES is not
# extracted; a whole archive expanding more than this times its own size past ARCHIVE_RATIO_CHECK_BYTES
# is refused. Images are compressed already: real datasets stay far below 100:1, zeros reach 1000:1.
MAX_COMPRESSION_RATIO = 100
RATIO_CHECK_BYTES = 8 * 1024**2
ARCHIVE_RATIO_CHECK_BYTES = 256 * 1024**2
CHUNK_BYTES = 1 << 20  # bytes read from an archive at a time


@dataclass
class Budget:
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


def suspicious(size: int, packed: int) -> bool:
    """Whether a member of `size` bytes from `packed` compressed bytes expands like a bomb."""
    return size > RATIO_CHECK_BYTES and size > MAX_COMPRESSION_RATIO * max(packed, 1)


def ratio_detail(size: int, packed: int) -> str:
    return (
        f"expands {size / max(packed, 1):.0f}:1 ({size} bytes from {packed} compressed), over "
        f"MAX_COMPRESSION_RATIO={MAX_COMPRESSION_RATIO}: a possible archive bomb, not extracted"
    )

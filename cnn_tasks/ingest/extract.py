"""The hardened archive extractor: `extract_archive` writes a zip or tar(.gz/.bz2/.xz) into a folder
and returns the members it did not extract, each with a reason. It never trusts the archive.

tarfile's data filter (`tarfile.data_filter`, applied member by member as they stream, to zip
members too) judges names, links and special files:
- unsafe member names (absolute, or leading outside the extraction folder; a name such as
  'a/../b' that stays inside is extracted as 'b') and malformed archives (truncated, bad
  CRC, encrypted, unsupported compression, names too long, a name used as file and folder,
  a member written through a link (named as a link, with where it points), names that only differ
  in Unicode normalisation) end in a DownloadError naming the archive as the user gave it and the
  member;
- members are listed in the skipped list instead: links that do not lead to a file of the archive
  (pointing outside it, at a folder or at nothing; links are never created on disk: a link to a
  file of the archive is followed and the file copied), devices and fifos, a name repeated (the
  first copy is kept), and members above MAX_MEMBER_BYTES or expanding more than
  MAX_COMPRESSION_RATIO:1, checked from the header before reading and again on the real bytes
  while streaming (headers can lie); nothing is read whole into memory;
- the whole archive stays within MAX_EXTRACT_FILES / MAX_EXTRACT_BYTES and within
  MAX_COMPRESSION_RATIO times its own size, or it is refused;
- member names that are not UTF-8 are decoded readably (`members`) and NFC-normalised.

The limits are `cnn_tasks.ingest.limits`' MAX_* constants, read at call time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tarfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from cnn_tasks.ingest import limits
from cnn_tasks.ingest.errors import DownloadError
from cnn_tasks.ingest.members import DIR, FILE, HARDLINK, SYMLINK, TAR_TYPES, Member, reading, tar_members, zip_members

log = logging.getLogger(__name__)

# Why an archive member was not extracted (Fetched.skipped[i]["reason"]).
LINK = "link"
OVERSIZED_MEMBER = "oversized_member"
SPECIAL_FILE = "special_file"
DUPLICATE_MEMBER = "duplicate_member"


def extract_archive(archive: Path, dest: Path, *, what: str | None = None) -> list[dict]:
    """Extract a zip or tar(.gz/.bz2/.xz) into `dest`; return the members not extracted.

    `what` names the archive in messages (the URL or path the user gave; default `archive`).
    Every refusal and every damage is a DownloadError; see the module docstring for the rules.
    The limits are `limits`' MAX_* constants as they are at call time.
    """
    what = what or str(archive)
    dest.mkdir(parents=True, exist_ok=True)
    extraction = _Extraction(dest.resolve(), what, archive.stat().st_size)
    if _archive_kind(archive, what) == "zip":
        with zip_members(archive, extraction.budget) as members:
            extraction.run(members)
    else:
        with tar_members(archive, extraction.budget) as members:
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


class _Extraction:
    """One archive's members written under `dest`, with every check; `skipped` lists the rest."""

    def __init__(self, dest: Path, what: str, archive_bytes: int):
        self.dest, self.what = dest, what
        self.budget = limits.Budget(what, archive_bytes)
        self.skipped: list[dict] = []
        self.kinds: dict[str, str] = {}  # normalised path -> DIR or FILE
        self.spellings: dict[str, str] = {}  # normalised path -> its spelling in the archive
        self.link_at: dict[str, Member] = {}  # normalised path -> the link member claiming it
        self.folder_by: dict[str, str] = {}  # folder path -> the first member written below it
        self.links: list[tuple[Member, Path, Path]] = []
        self.name_max = _name_max(dest)

    def run(self, members: Iterator[Member]) -> None:
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
    def target(self, member: Member) -> Path | None:
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

    def refusal(self, member: Member) -> tuple[str, str] | None:
        """(reason, detail) when tarfile's data filter refuses `member` (a device or fifo; a link leading
        outside the archive: links are never created, only copied, so listing it is enough), None when
        it may be extracted; DownloadError for a name leading outside dest. Zip members are judged as
        the tar members they equal."""
        info = tarfile.TarInfo(member.name)
        info.type, info.linkname = TAR_TYPES[member.kind], member.link
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

    def claim(self, member: Member) -> bool:
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

    def clash(self, path: str, member: Member) -> DownloadError:
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
    def writing(self, member: Member):
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

    def skip(self, member: Member, reason: str, detail: str) -> None:
        self.skipped.append({"source": member.name, "reason": reason, "detail": detail})

    # ---- files
    def copy(self, member: Member, path: Path) -> None:
        """Stream one file member to `path` within the caps; over a cap it is removed and skipped."""
        cap = limits.MAX_MEMBER_BYTES
        if member.size > cap:  # judged from the header, before reading anything
            self.skip(
                member,
                OVERSIZED_MEMBER,
                f"declares {member.size} bytes, over the {cap}-byte limit per member (MAX_MEMBER_BYTES): not extracted",
            )
            return
        if member.packed is not None and limits.suspicious(member.size, member.packed):
            self.skip(member, OVERSIZED_MEMBER, limits.ratio_detail(member.size, member.packed))
            return
        self.budget.add(1, member.size)
        charged, written, problem = member.size, 0, None
        with self.writing(member):
            path.parent.mkdir(parents=True, exist_ok=True)
            out = open(path, "wb")
        with out:
            with reading(self.what, member.name):
                src = member.open()
                start = member.consumed() if member.consumed else 0
            while True:
                with reading(self.what, member.name):
                    chunk = src.read(limits.CHUNK_BYTES)
                if not chunk:
                    break
                written += len(chunk)
                if written > charged:  # the header lied: count the real bytes
                    self.budget.add(0, written - charged)
                    charged = written
                packed = member.packed if member.consumed is None else member.consumed() - start
                if written > cap:
                    problem = f"holds more than {cap} bytes (MAX_MEMBER_BYTES; its header declared {member.size})"
                elif packed is not None and limits.suspicious(written, packed):
                    problem = limits.ratio_detail(written, packed)
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


def _link_kind(member: Member) -> str:
    return "symbolic" if member.kind == SYMLINK else "hard"


def _short(name: str, limit: int = 80) -> str:
    return name if len(name) <= limit else name[:limit] + "..."


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255

"""ingest.fetch and ingest.extract: fetch_source's skipped list and its cache, the download cache never keeping what failed,
bounded memory on bombs, readable member names. (The fuzz corpus of crafted archives run through
the whole download stage is tests/test_fuzz_archives.py.)"""

from __future__ import annotations

import http.server
import io
import json
import tarfile
import threading
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import pytest

from cnn_tasks.ingest import extract, fetch, limits, members
from cnn_tasks.ingest.errors import DownloadError
from tests.helpers import dataset, make_tar, make_zip, png


@pytest.fixture
def ctx(make_ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "cache"))
    context = make_ctx()
    yield context
    context.close()


# ================================================================== fetch_source and its cache
def _with_links(path: Path) -> Path:
    dangling = tarfile.TarInfo("ds/cats/gone.png")
    dangling.type, dangling.linkname = tarfile.SYMTYPE, "nowhere.png"
    fifo = tarfile.TarInfo("ds/dogs/pipe")
    fifo.type = tarfile.FIFOTYPE
    return make_tar(path, dataset(), [dangling, fifo])


def test_fetch_source_lists_skipped_members_and_fetch_returns_the_same_folder(tmp_path, ctx):
    archive = _with_links(tmp_path / "links.tar.gz")
    fetched = fetch.fetch_source(ctx, str(archive))
    assert sorted(p.relative_to(fetched.folder).as_posix() for p in fetched.folder.rglob("*.png")) == [
        "ds/cats/0.png",
        "ds/cats/1.png",
        "ds/dogs/0.png",
        "ds/dogs/1.png",
    ]
    assert [(s["source"], s["reason"]) for s in fetched.skipped] == [
        ("ds/dogs/pipe", extract.SPECIAL_FILE),
        ("ds/cats/gone.png", extract.LINK),
    ]
    assert all(s["detail"] for s in fetched.skipped)
    assert fetch.fetch(ctx, str(archive)) == fetched.folder


def test_fetch_source_names_the_archive_as_given_and_no_archive_for_a_folder(tmp_path, ctx):
    archive = make_zip(tmp_path / "given.zip", dataset())
    assert fetch.fetch_source(ctx, str(archive)).archive == str(archive)  # for messages about its contents
    assert fetch.fetch_source(ctx, str(archive)).archive == str(archive)  # the cached extraction too
    folder = tmp_path / "folder"
    folder.mkdir()
    assert fetch.fetch_source(ctx, str(folder)).archive is None


def test_a_cached_extraction_returns_the_same_skipped_list(tmp_path, ctx, monkeypatch):
    archive = _with_links(tmp_path / "links.tar.gz")
    first = fetch.fetch_source(ctx, str(archive))
    calls = []
    monkeypatch.setattr(extract, "extract_archive", lambda *a, **k: calls.append(a))
    second = fetch.fetch_source(ctx, str(archive))
    assert calls == []
    assert second == first  # reused, not extracted again
    assert json.loads((first.folder.parent / "skipped.json").read_text())["skipped"] == first.skipped


def test_a_damaged_cached_extraction_is_made_again(tmp_path, ctx):
    archive = _with_links(tmp_path / "links.tar.gz")
    first = fetch.fetch_source(ctx, str(archive))
    (first.folder.parent / "skipped.json").unlink()  # e.g. an entry left by an older version
    again = fetch.fetch_source(ctx, str(archive))
    assert again == first
    assert (again.folder / "ds/cats/0.png").is_file()


def test_a_failed_extraction_leaves_nothing_in_the_cache(tmp_path, ctx):
    archive = make_zip(tmp_path / "slip.zip", {"ds/cats/0.png": png(), "../evil.png": png()})
    with pytest.raises(DownloadError, match="unsafe archive member '../evil.png'"):
        fetch.fetch_source(ctx, str(archive))
    assert not [p for p in (tmp_path / "cache" / "extracted").rglob("*") if p.is_file()]


# ================================================================== the download cache
class _Server(http.server.BaseHTTPRequestHandler):
    """Answers each path with the next of its queued (status, content type, body[, declared length])
    responses; a declared length above the body's is a download that breaks off."""

    answers: dict[str, list[tuple]] = {}
    requests: list[str] = []

    def do_GET(self):
        _Server.requests.append(self.path)
        queue = _Server.answers.get(self.path, [])
        status, kind, body, *declared = queue.pop(0) if len(queue) > 1 else queue[0]
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(declared[0] if declared else len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    _Server.answers, _Server.requests = {}, []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


HTML = (200, "text/html", b"<!doctype html><html><body>Service temporarily moved</body></html>")


def _zip_bytes(tmp_path) -> bytes:
    return make_zip(tmp_path / "served.zip", dataset()).read_bytes()


def test_an_html_answer_is_not_cached_and_a_fixed_server_works_next_time(tmp_path, ctx, server):
    url = f"{server}/data.zip"
    _Server.answers["/data.zip"] = [HTML, (200, "application/zip", _zip_bytes(tmp_path))]
    with pytest.raises(DownloadError) as info:
        fetch.fetch_source(ctx, url)
    message = str(info.value)
    assert url in message
    assert "is not a zip or tar archive" in message
    assert "web page" in message
    assert str(tmp_path / "cache") not in message
    assert not [p for p in (tmp_path / "cache" / "downloads").rglob("*") if p.is_file()]
    fetched = fetch.fetch_source(ctx, url)  # the server is fixed
    assert (fetched.folder / "ds/cats/0.png").is_file()
    assert _Server.requests == ["/data.zip"] * 2


def test_a_poisoned_cached_download_is_discarded_and_fetched_again_once(tmp_path, ctx, server):
    url = f"{server}/data.zip"
    _Server.answers["/data.zip"] = [(200, "application/zip", _zip_bytes(tmp_path))]
    good = fetch.fetch_source(ctx, url)
    cached = next(p for p in (tmp_path / "cache" / "downloads").rglob("data.zip"))
    cached.write_bytes(HTML[2])  # what an earlier bad answer left under the URL's key
    ctx.close()
    again = fetch.fetch_source(ctx, url)
    assert _Server.requests == ["/data.zip"] * 2
    assert (again.folder / "ds/cats/0.png").is_file()
    assert again.skipped == good.skipped == []


def test_a_cached_download_that_still_fails_is_an_error_naming_the_url(tmp_path, ctx, server):
    url = f"{server}/data.zip"
    _Server.answers["/data.zip"] = [(200, "application/zip", _zip_bytes(tmp_path)), HTML]
    fetch.fetch_source(ctx, url)
    next((tmp_path / "cache" / "downloads").rglob("data.zip")).write_bytes(b"<html>stale</html>")
    with pytest.raises(DownloadError, match=f"{url} is not a zip or tar archive"):
        fetch.fetch_source(ctx, url)
    assert _Server.requests == ["/data.zip"] * 2  # fetched again once, not more
    assert not list((tmp_path / "cache" / "downloads").rglob("data.zip"))


def test_a_truncated_download_names_the_url_not_the_cache(tmp_path, ctx, server):
    url = f"{server}/data.tar.gz"
    data = make_tar(tmp_path / "served.tar.gz", {**dataset(), "ds/cats/big.bin": bytes(range(256)) * 400}).read_bytes()
    _Server.answers["/data.tar.gz"] = [(200, "application/gzip", data[: len(data) * 2 // 3])]
    with pytest.raises(DownloadError) as info:
        fetch.fetch_source(ctx, url)
    assert f"{url}: the archive is truncated or damaged" in str(info.value)
    assert "cache" not in str(info.value)


def test_a_download_that_breaks_off_is_retried(tmp_path, ctx, server, monkeypatch):
    monkeypatch.setattr(fetch, "RETRY_BACKOFF_S", 0.01)
    url, data = f"{server}/data.zip", _zip_bytes(tmp_path)
    _Server.answers["/data.zip"] = [(200, "application/zip", data[:100], len(data)), (200, "application/zip", data)]
    fetched = fetch.fetch_source(ctx, url)
    assert (fetched.folder / "ds/cats/0.png").is_file()
    assert _Server.requests == ["/data.zip"] * 2


def test_a_download_that_always_breaks_off_names_the_url_after_every_attempt(tmp_path, ctx, server, monkeypatch):
    monkeypatch.setattr(fetch, "RETRY_BACKOFF_S", 0.01)
    url, data = f"{server}/data.zip", _zip_bytes(tmp_path)
    _Server.answers["/data.zip"] = [(200, "application/zip", data[:100], len(data))]
    with pytest.raises(DownloadError, match=f"cannot download {url} after 4 attempts: .*IncompleteRead"):
        fetch.fetch_source(ctx, url)
    assert _Server.requests == ["/data.zip"] * 4
    assert not [p for p in (tmp_path / "cache" / "downloads").rglob("*") if p.is_file()]


def test_a_refused_request_is_not_retried(ctx, server):
    url = f"{server}/private.zip"
    _Server.answers["/private.zip"] = [(403, "text/plain", b"no")]
    with pytest.raises(DownloadError, match=f"{url} was refused \\(HTTP 403 Forbidden\\)"):
        fetch.fetch_source(ctx, url)
    assert _Server.requests == ["/private.zip"]


# ================================================================== names judged by tarfile's data filter
def test_a_name_through_dot_dot_that_stays_inside_is_extracted_where_it_leads(tmp_path):
    archive = make_tar(tmp_path / "dots.tar", {**dataset(), "ds/cats/../dogs/9.png": png(1)}, mode="w")
    assert extract.extract_archive(archive, tmp_path / "out") == []
    assert (tmp_path / "out" / "ds" / "dogs" / "9.png").is_file()


# ================================================================== bombs: bounded memory and disk
def test_a_bomb_member_costs_neither_memory_nor_disk(tmp_path, monkeypatch):
    """A 64 MiB member of zeros, skipped by its declared size (zip) and by its ratio while
    streaming (tar.gz): memory stays around one chunk, nothing of it stays on disk."""
    monkeypatch.setattr(limits, "MAX_MEMBER_BYTES", 32 << 20)
    monkeypatch.setattr(limits, "RATIO_CHECK_BYTES", 2 << 20)
    zeros = {"ds/cats/zeros.png": bytes(64 << 20)}
    for archive in (make_zip(tmp_path / "bomb.zip", zeros), make_tar(tmp_path / "bomb.tar.gz", zeros)):
        assert archive.stat().st_size < 200_000
        dest = tmp_path / archive.name.replace(".", "_")
        tracemalloc.start()
        skipped = extract.extract_archive(archive, dest)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert [s["reason"] for s in skipped] == [extract.OVERSIZED_MEMBER], archive
        assert peak < 8 << 20, f"{archive.name}: peak {peak / 2**20:.1f} MiB"
        assert sum(p.stat().st_size for p in dest.rglob("*") if p.is_file()) == 0


def test_a_zip_header_that_lies_about_the_size_is_damage_not_a_bomb(tmp_path):
    archive = make_zip(tmp_path / "liar.zip", {"ds/cats/zeros.png": bytes(1 << 20), "ds/dogs/0.png": png()})
    data = bytearray(archive.read_bytes())
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo("ds/cats/zeros.png")
    small = (1000).to_bytes(4, "little")
    data[info.header_offset + 22 : info.header_offset + 26] = small  # local header: uncompressed size
    central = data.find(b"PK\x01\x02")
    data[central + 24 : central + 28] = small
    archive.write_bytes(bytes(data))
    with pytest.raises(DownloadError, match="truncated or damaged at member 'ds/cats/zeros.png'"):
        extract.extract_archive(archive, tmp_path / "out")
    assert (
        not (tmp_path / "out" / "ds/cats/zeros.png").exists()
        or (tmp_path / "out" / "ds/cats/zeros.png").stat().st_size <= 1000
    )


def test_the_total_budget_still_applies_to_links(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_EXTRACT_FILES", 1)
    link = tarfile.TarInfo("ds/cats/copy.png")
    link.type, link.linkname = tarfile.LNKTYPE, "ds/cats/0.png"
    archive = make_tar(tmp_path / "links.tar", {"ds/cats/0.png": bytes(600)}, [link], mode="w")
    with pytest.raises(DownloadError, match=r"more than 1 files \(MAX_EXTRACT_FILES\)"):
        extract.extract_archive(archive, tmp_path / "out")


# ================================================================== names
def _unicode_path_field(name: str, raw: bytes) -> bytes:
    data = b"\x01" + zlib.crc32(raw).to_bytes(4, "little") + name.encode()
    return (0x7075).to_bytes(2, "little") + len(data).to_bytes(2, "little") + data


def test_zip_unicode_path_field_wins_over_the_raw_name():
    info = zipfile.ZipInfo("placeholder")
    info.orig_filename = b"caf\x82.png".decode("cp437")
    info.extra = _unicode_path_field("café.png", b"caf\x82.png")
    assert members._zip_name(info) == "café.png"
    info.extra = _unicode_path_field("other.png", b"different raw name")  # a stale field is ignored
    assert members._zip_name(info) == "café.png"


@pytest.mark.parametrize(
    "raw, expected", [(b"caf\xc3\xa9", "café"), (b"caf\xe9", "café"), (b"\x80uro", "€uro"), (b"\x81x", "\x81x")]
)
def test_tar_names_decode_as_utf8_then_cp1252_then_latin1(raw, expected):
    assert members._decode_name(raw.decode("utf-8", "surrogateescape"), "cp1252") == expected
    assert members._decode_name(raw, "cp1252") == expected


def test_skipped_names_are_plain_text(tmp_path):
    """Nothing downstream meets surrogate escapes: every listed name encodes as UTF-8."""
    fifo = tarfile.TarInfo("ds/caf\udce9/pipe")  # a Latin-1 byte read as UTF-8 with surrogateescape
    fifo.type = tarfile.FIFOTYPE
    archive = tmp_path / "names.tar"
    with tarfile.open(archive, "w", encoding="utf-8", errors="surrogateescape") as tf:
        data = png()
        info = tarfile.TarInfo("ds/caf\udce9/0.png")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
        tf.addfile(fifo)
    skipped = extract.extract_archive(archive, tmp_path / "out")
    assert skipped[0]["source"] == "ds/café/pipe"
    assert (tmp_path / "out" / "ds" / "café" / "0.png").is_file()


# ================================================================== two fetches of one source on one worker
class _SlowServer(http.server.BaseHTTPRequestHandler):
    """Serves `body` in two halves; between them it waits (at most `PAUSE_S`) for a second request,
    so that two unsynchronised downloads of one URL would overlap."""

    body = b""
    requests: list[str] = []
    second = threading.Event()
    PAUSE_S = 0.5

    def do_GET(self):
        _SlowServer.requests.append(self.path)
        if len(_SlowServer.requests) > 1:
            _SlowServer.second.set()
        half = len(self.body) // 2
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body[:half])
        self.wfile.flush()
        _SlowServer.second.wait(self.PAUSE_S)
        self.wfile.write(self.body[half:])

    def log_message(self, *args):
        pass


def test_two_fetches_of_one_url_download_and_extract_it_once(tmp_path, make_ctx, monkeypatch):
    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "cache"))
    _SlowServer.body, _SlowServer.requests = _zip_bytes(tmp_path), []
    _SlowServer.second = threading.Event()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowServer)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/data.zip"
    extractions = []
    real_extract = extract.extract_archive
    monkeypatch.setattr(extract, "extract_archive", lambda *a, **k: extractions.append(a) or real_extract(*a, **k))
    results, errors = [], []

    def fetch_in_a_task():  # a task of its own: its own context, as two tasks on one worker have
        context = make_ctx()
        try:
            results.append(fetch.fetch_source(context, url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            context.close()

    threads = [threading.Thread(target=fetch_in_a_task) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert errors == []
    assert len(results) == 2
    assert _SlowServer.requests == ["/data.zip"]
    assert len(extractions) == 1  # the second waited, then reused
    assert results[0] == results[1]
    assert (results[0].folder / "ds/cats/0.png").read_bytes() == dataset_png(tmp_path)
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".part" in p.name or ".tmp-" in p.name]


def dataset_png(tmp_path) -> bytes:
    with zipfile.ZipFile(tmp_path / "served.zip") as zf:
        return zf.read("ds/cats/0.png")


def test_the_build_lock_makes_a_second_fetch_wait_for_the_first(tmp_path, ctx):
    archive = _with_links(tmp_path / "links.tar.gz")
    done = threading.Event()
    entries = tmp_path / "cache" / "extracted"
    first = fetch.fetch_source(ctx, str(archive))  # makes the entry
    entry = first.folder.parent
    assert entry.parent == entries
    with fetch._building(entry):  # a builder at work on this entry
        thread = threading.Thread(target=lambda: fetch.fetch_source(ctx, str(archive)) and done.set())
        thread.start()
        assert not done.wait(0.3)  # waits for the builder
    thread.join(10)
    assert done.is_set()
    assert (tmp_path / "cache" / "locks" / "extracted" / f"{entry.name}.build").is_file()


def test_part_files_left_by_a_killed_download_do_not_break_the_next(tmp_path, ctx, server):
    url = f"{server}/data.zip"
    _Server.answers["/data.zip"] = [(200, "application/zip", _zip_bytes(tmp_path))]
    entry = tmp_path / "cache" / "downloads" / fetch._digest(f"{url}|")
    entry.mkdir(parents=True)
    for name in ("data.zip.part", "data.zip.part-424242-1"):  # older and per-process part files
        (entry / name).write_bytes(b"half a download of another process")
    fetched = fetch.fetch_source(ctx, url)
    assert (fetched.folder / "ds/cats/0.png").is_file()
    assert sorted(p.name for p in entry.iterdir()) == ["data.zip"]


class _FakeS3:
    """list_objects_v2 pages and download_file for a prefix of two objects; the second can fail."""

    def __init__(self, fail: bool):
        self.fail = fail

    def get_paginator(self, name):
        objects = [{"Key": "ds/cats/0.png"}, {"Key": "ds/dogs/0.png"}]
        return type("Pages", (), {"paginate": lambda self, **kw: [{"Contents": objects}]})()

    def download_file(self, bucket, key, path):
        from botocore.exceptions import ClientError

        if self.fail and key.startswith("ds/dogs"):
            raise ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "GetObject")
        Path(path).write_bytes(png())


def test_a_failed_s3_prefix_download_leaves_no_temporary_folder(tmp_path, ctx):
    ctx.s3_client = _FakeS3(fail=True)
    with pytest.raises(DownloadError, match="cannot read s3://bucket/ds/"):
        fetch.fetch_source(ctx, "s3://bucket/ds/")
    assert not [p for p in (tmp_path / "cache" / "downloads").rglob("*") if ".tmp-" in str(p)]
    ctx.s3_client = _FakeS3(fail=False)
    folder = fetch.fetch(ctx, "s3://bucket/ds/")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.png")) == ["cats/0.png", "dogs/0.png"]

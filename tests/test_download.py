"""download.run with ingest.fetch and layout: sources, safe extraction, layouts, class selection, cleaning."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnn_tasks import download, images
from cnn_tasks.config import EUROSAT_URL, PipelineConfig
from cnn_tasks.context import RunContext
from cnn_tasks.ingest import extract, fetch, layout, limits
from cnn_tasks.ingest.errors import DatasetError, DownloadError
from tests.helpers import BAD_FILES, CONVERTED_FILES, encoded, write
from tests.imagegen import make_dataset, zip_folder


def _ctx(store: Path, run_id: str = "test_run", **overrides) -> RunContext:
    values = {"store_uri": f"file://{store}", "dataset_checksum": None, "min_images_per_class": 5, **overrides}
    return RunContext.create(PipelineConfig.from_dict(values), run_id)


def _read_csv(ctx, name: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(ctx.store.get_text(ctx.data_key(name)))))


# ================================================================== a dirty dataset, ingested once
@pytest.fixture(scope="module")
def dirty(tmp_path_factory):
    """3 classes x 12 good images plus every bad input, zipped under a wrapper folder."""
    root = make_dataset(tmp_path_factory.mktemp("dirty") / "data", classes=3, per_class=12, size=16)
    bad = root / "class_a"
    for name, (make, _) in {**BAD_FILES, **CONVERTED_FILES}.items():
        write(bad, name, make())
    shutil.copy(bad / "class_a_0.png", bad / "dup_within.png")
    cross = encoded(Image.fromarray(np.full((16, 16, 3), 77, np.uint8)), "PNG")
    write(root / "class_b", "cross.png", cross)
    write(root / "class_c", "cross.png", cross)
    for hidden in (".DS_Store", "Thumbs.db", "._class_a_1.png"):
        write(bad, hidden, b"junk")
    write(root / "__MACOSX" / "class_a", "._class_a_0.png", b"junk")
    archive = zip_folder(root, root.parent / "dirty.zip", wrapper="EuroSAT_RGB")
    # min_image_side=1: some converted fixtures are a pixel wide (the size checks have their own tests)
    ctx = _ctx(root.parent / "store", dataset_url=str(archive), min_image_side=1)
    result = download.run(ctx)
    return {
        "ctx": ctx,
        "result": result,
        "rejected": {r["source"]: r for r in _read_csv(ctx, "rejected.csv")},
        "manifest": {r["source"]: r for r in _read_csv(ctx, "manifest.csv")},
        "ingest": ctx.store.get_json(ctx.data_key("ingest.json")),
        "folder": Path(ctx.store.get_json(ctx.data_key("ingest.json"))["local_folder"]) / "EuroSAT_RGB",
    }


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_listed_in_rejected_csv_with_its_reason(dirty, name):
    row = dirty["rejected"][f"class_a/{name}"]
    assert row["reason"] == BAD_FILES[name][1]
    assert row["class"] == "class_a"
    assert f"class_a/{name}" not in dirty["manifest"]


@pytest.mark.parametrize("name", sorted(CONVERTED_FILES))
def test_converted_file_is_accepted_with_its_original_mode(dirty, name):
    row = dirty["manifest"][f"class_a/{name}"]
    assert row["mode"] == CONVERTED_FILES[name][1]


def test_duplicate_within_a_class_keeps_the_first(dirty):
    row = dirty["rejected"]["class_a/dup_within.png"]
    assert (row["reason"], row["duplicate_of"]) == (download.DUPLICATE, "class_a/class_a_0.png")
    assert "class_a/class_a_0.png" in dirty["manifest"]


def test_duplicates_across_classes_are_all_dropped(dirty):
    b, c = dirty["rejected"]["class_b/cross.png"], dirty["rejected"]["class_c/cross.png"]
    assert b["reason"] == c["reason"] == download.DUPLICATE_ACROSS_CLASSES
    assert (b["duplicate_of"], c["duplicate_of"]) == ("class_c/cross.png", "class_b/cross.png")
    assert "class_b, class_c" in b["detail"]
    assert not any(source.endswith("cross.png") for source in dirty["manifest"])


def test_counts_by_reason_in_ingest_json(dirty):
    ingest = dirty["ingest"]
    expected = {reason: 1 for _, reason in BAD_FILES.values()}
    expected.update({download.DUPLICATE: 1, download.DUPLICATE_ACROSS_CLASSES: 2})
    assert ingest["rejected_by_reason"] == expected
    assert ingest["accepted"] == 3 * 12 + len(CONVERTED_FILES) == dirty["result"]["accepted"]
    assert ingest["per_class"]["class_a"]["accepted"] == 12 + len(CONVERTED_FILES)


def test_wrapper_and_hidden_files_are_skipped(dirty):
    ingest = dirty["ingest"]
    assert ingest["class_root"] == "EuroSAT_RGB"
    assert ingest["classes"] == ["class_a", "class_b", "class_c"]  # no __MACOSX class
    assert ingest["ignored_hidden_files"] == 3
    listed = set(dirty["manifest"]) | set(dirty["rejected"])
    assert not any(Path(s).name.startswith(".") or "Thumbs" in s for s in listed)


def test_manifest_rows_and_clean_shards_hold_the_validated_pixels(dirty):
    import tensorflow as tf

    from cnn_tasks.shards import iter_records

    ctx, manifest = dirty["ctx"], dirty["manifest"]
    by_key = {row["key"]: row for row in manifest.values()}
    records = list(iter_records([ctx.cached(k) for k in dirty["ingest"]["clean_shards"]]))
    assert sorted(r[2] for r in records) == sorted(by_key)
    for data, label, key in records:
        row = by_key[key]
        pixels = np.asarray(images.load_rgb(dirty["folder"] / row["source"]))
        assert np.array_equal(tf.io.decode_image(data, channels=3).numpy(), pixels), row["source"]
        assert int(row["label"]) == label
        assert images.pixel_key(pixels) == key
        assert (int(row["width"]), int(row["height"])) == (pixels.shape[1], pixels.shape[0])
        assert int(row["sum_g"]) == int(pixels[..., 1].sum())


# ================================================================== layouts and class selection
def test_subdir_layout_and_local_folder_source(tmp_path):
    make_dataset(tmp_path / "ds" / "train_set", classes=3, per_class=6, size=8)
    make_dataset(tmp_path / "ds" / "test_set", classes=2, per_class=6, size=8)
    ctx = _ctx(tmp_path / "store", dataset_url=f"file://{tmp_path / 'ds'}", dataset_subdir="train_set")
    assert download.run(ctx)["classes"] == ["class_a", "class_b", "class_c"]


def test_unknown_class_lists_the_available_ones(tmp_path, tiny_dataset):
    ctx = _ctx(tmp_path / "store", dataset_url=str(tiny_dataset), classes=["class_a", "Forest"])
    with pytest.raises(DatasetError, match="'Forest' not in the dataset; available classes: class_a, class_b, class_c"):
        download.run(ctx)


def test_class_below_minimum_is_an_error_naming_it(tmp_path):
    root = make_dataset(tmp_path / "ds", classes=3, per_class=[8, 8, 3], size=8)
    ctx = _ctx(tmp_path / "store", dataset_url=str(root))
    with pytest.raises(DatasetError, match=r"class 'class_c' has 3 valid images.*min_images_per_class=5"):
        download.run(ctx)
    assert ctx.store.get_json(ctx.data_key("ingest.json"))["per_class"]["class_c"]["accepted"] == 3


def test_classes_limit_and_seeded_sample_per_class(tmp_path):
    root = make_dataset(tmp_path / "ds", classes=4, per_class=15, size=8)
    runs = []
    for run_id in ("a", "b"):
        ctx = _ctx(tmp_path / "store", run_id, dataset_url=str(root), classes_limit=3, max_images_per_class=10)
        assert download.run(ctx)["classes"] == ["class_a", "class_b", "class_c"]
        runs.append(sorted(r["source"] for r in _read_csv(ctx, "manifest.csv")))
        assert ctx.store.get_json(ctx.data_key("ingest.json"))["not_sampled"] == 15
    assert runs[0] == runs[1]
    assert len(runs[0]) == 30


# ================================================================== safe extraction
def _zip_with(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_zip_slip_is_refused(tmp_path):
    archive = _zip_with(tmp_path / "slip.zip", {"class_a/ok.txt": b"x", "../evil.txt": b"x"})
    with pytest.raises(DownloadError, match=r"unsafe archive member '../evil.txt'.*outside"):
        extract.extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


def test_absolute_member_path_is_refused(tmp_path):
    archive = _zip_with(tmp_path / "abs.zip", {"/tmp/evil.txt": b"x"})
    with pytest.raises(DownloadError, match="absolute paths are not allowed"):
        extract.extract_archive(archive, tmp_path / "out")


def test_tar_symlink_escaping_the_target_is_listed_not_followed(tmp_path):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        link = tarfile.TarInfo("class_a/passwd.png")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tf.addfile(link)
    skipped = extract.extract_archive(archive, tmp_path / "out")  # listed, never created nor followed
    assert skipped == [
        {
            "source": "class_a/passwd.png",
            "reason": extract.LINK,
            "detail": "symbolic link to '../../../etc/passwd' points outside the archive: not followed",
        }
    ]
    assert not (tmp_path / "out" / "class_a" / "passwd.png").exists()


def test_size_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_EXTRACT_BYTES", 1_000_000)
    archive = _zip_with(tmp_path / "bomb.zip", {"class_a/zeros.bin": b"\0" * 2_000_000})
    assert archive.stat().st_size < 10_000
    with pytest.raises(DownloadError, match=r"more than 1000000 bytes \(MAX_EXTRACT_BYTES\)"):
        extract.extract_archive(archive, tmp_path / "out")
    assert not any((tmp_path / "out").rglob("*.bin"))  # refused before writing


def test_file_count_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "MAX_EXTRACT_FILES", 10)
    archive = _zip_with(tmp_path / "many.zip", {f"class_a/{i}.png": b"x" for i in range(20)})
    with pytest.raises(DownloadError, match=r"more than 10 files \(MAX_EXTRACT_FILES\)"):
        extract.extract_archive(archive, tmp_path / "out")


def test_tar_gz_source_with_checksums(tmp_path, tiny_dataset):
    archive = tmp_path / "tiny.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(tiny_dataset, arcname="tiny")
    data = archive.read_bytes()
    ctx = _ctx(tmp_path / "store")
    for checksum in (f"sha256:{hashlib.sha256(data).hexdigest()}", f"md5:{hashlib.md5(data).hexdigest()}"):
        folder = fetch.fetch(ctx, str(archive), checksum)
        assert layout.detect_layout(folder).base.name == "tiny"


def test_wrong_checksum_names_both_hashes(tmp_path, tiny_dataset):
    archive = zip_folder(tiny_dataset, tmp_path / "tiny.zip")
    actual = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(DownloadError) as info:
        fetch.fetch(_ctx(tmp_path / "store"), str(archive), "sha256:" + "0" * 64)
    assert f"expected sha256:{'0' * 64}, got sha256:{actual}" in str(info.value)


# ================================================================== http and s3
class _Handler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []
    failures = 0  # answer this many requests with 503 first

    def do_GET(self):
        _Handler.requests.append(self.path)
        if _Handler.failures > 0:
            _Handler.failures -= 1
            self.send_error(503, "busy")
            return
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    """Serve tmp_path/www on a local port; yields (folder, base URL)."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(www)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Handler.requests, _Handler.failures = [], 0
    yield www, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_download_works_and_is_cached(tmp_path, tiny_dataset, http_root):
    www, base = http_root
    zip_folder(tiny_dataset, www / "tiny.zip", wrapper="2750")
    ctx = _ctx(tmp_path / "store")
    first = fetch.fetch(ctx, f"{base}/tiny.zip")
    second = fetch.fetch(ctx, f"{base}/tiny.zip")
    assert first == second
    assert _Handler.requests == ["/tiny.zip"]
    assert sorted(p.name for p in (first / "2750").iterdir()) == ["class_a", "class_b", "class_c"]


def test_transient_http_errors_are_retried(tmp_path, tiny_dataset, http_root, monkeypatch):
    www, base = http_root
    zip_folder(tiny_dataset, www / "retry.zip")
    monkeypatch.setattr(fetch, "RETRY_BACKOFF_S", 0.01)
    _Handler.failures = 2
    folder = fetch.fetch(_ctx(tmp_path / "store"), f"{base}/retry.zip")
    assert _Handler.requests == ["/retry.zip"] * 3
    assert (folder / "class_a").is_dir()


def test_http_404_is_a_clear_error(tmp_path, http_root):
    _, base = http_root
    with pytest.raises(DownloadError, match=r"was not found \(HTTP 404\): check dataset_url"):
        fetch.fetch(_ctx(tmp_path / "store"), f"{base}/missing.zip")


def test_unreachable_host_fails_fast(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(DownloadError, match="unreachable.*DATASET_URL=/path/to/EuroSAT.zip"):
        fetch.fetch(_ctx(tmp_path / "store"), f"http://127.0.0.1:{port}/data.zip")
    assert time.monotonic() - started < 5


def test_default_url_without_network_says_how_to_use_a_local_copy(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    started = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch.fetch(_ctx(tmp_path / "store"), EUROSAT_URL, "md5:" + "0" * 32)
    assert time.monotonic() - started < 5
    assert "host not found" in str(info.value)
    assert "DATASET_URL=/path/to/EuroSAT.zip" in str(info.value)
    assert "dataset_url param" in str(info.value)


def test_s3_download_from_moto_server(tmp_path, tiny_dataset, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="datasets")
        s3.upload_file(str(zip_folder(tiny_dataset, tmp_path / "tiny.zip")), "datasets", "eurosat/tiny.zip")
        ctx = _ctx(tmp_path / "store", s3_endpoint_url=endpoint)
        folder = fetch.fetch(ctx, "s3://datasets/eurosat/tiny.zip")
        assert sorted(p.name for p in folder.iterdir()) == ["class_a", "class_b", "class_c"]
        with pytest.raises(DownloadError, match="s3://datasets/nope.zip does not exist"):
            fetch.fetch(ctx, "s3://datasets/nope.zip")
        for name in ("a.png", "sub/b.png"):  # a prefix (e.g. unlabelled images) comes down as a folder
            s3.put_object(Bucket="datasets", Key=f"unlabelled/{name}", Body=b"png")
        prefix = fetch.fetch(ctx, "s3://datasets/unlabelled/")
        assert sorted(p.relative_to(prefix).as_posix() for p in prefix.rglob("*.png")) == ["a.png", "sub/b.png"]
    finally:
        server.stop()


def test_ingest_json_is_json_serialisable_summary(dirty):
    json.dumps(dirty["result"])  # what the task returns goes through XCom
    assert dirty["result"]["rejected"] == len(dirty["rejected"])


def test_archive_members_not_extracted_are_listed_with_their_class(tmp_path, tiny_dataset):
    archive = tmp_path / "special.tar"
    with tarfile.open(archive, "w") as tf:
        tf.add(tiny_dataset, arcname="tiny")
        fifo = tarfile.TarInfo("tiny/class_b/pipe.png")
        fifo.type = tarfile.FIFOTYPE
        tf.addfile(fifo)
    ctx = _ctx(tmp_path / "store", dataset_url=str(archive))
    assert download.run(ctx)["accepted"] == 60
    rows = {r["source"]: r for r in _read_csv(ctx, "rejected.csv")}
    assert rows["class_b/pipe.png"]["reason"] == extract.SPECIAL_FILE
    assert rows["class_b/pipe.png"]["class"] == "class_b"
    assert ctx.store.get_json(ctx.data_key("ingest.json"))["per_class"]["class_b"]["rejected"] == 1


def test_a_failure_after_validation_uploads_no_shard(tmp_path, tiny_dataset, monkeypatch):
    def broken(*outputs):
        raise UnicodeEncodeError("utf-8", "\udce9", 0, 1, "surrogates not allowed")

    monkeypatch.setattr(download, "_check_serialisable", broken)
    ctx = _ctx(tmp_path / "store", dataset_url=str(tiny_dataset))
    with pytest.raises(UnicodeEncodeError):
        download.run(ctx)
    assert ctx.store.list(ctx.prefix + "/") == []


def test_latin1_folder_and_file_names_from_a_local_folder(tmp_path):
    import os

    root = make_dataset(tmp_path / "ds", classes=2, per_class=6, size=8)
    os.rename(root / "class_a", root / os.fsdecode(b"caf\xe9"))
    os.rename(root / "class_b" / "class_b_0.png", root / "class_b" / os.fsdecode(b"\xfcber.png"))
    ctx = _ctx(tmp_path / "store", dataset_url=str(root))
    assert download.run(ctx)["classes"] == ["café", "class_b"]
    sources_ = {r["source"]: r["class"] for r in _read_csv(ctx, "manifest.csv")}
    assert sources_["café/class_a_0.png"] == "café"
    assert sources_["class_b/über.png"] == "class_b"
    assert ctx.store.get_json(ctx.data_key("ingest.json"))["per_class"]["café"]["accepted"] == 6


# ================================================================== names that cannot be stored as they are
def test_a_local_folder_with_a_non_utf8_path_is_recorded_readably(tmp_path, monkeypatch):
    from tests.fuzzing import assert_kept, ingest

    folder = tmp_path / "input" / os.fsdecode(b"caf\xe9")
    make_dataset(folder, classes=2, per_class=2)
    out = ingest(tmp_path, folder, monkeypatch)
    assert_kept(out, list(out.manifest))
    assert out.ingest["local_folder"].endswith("/input/café")
    assert out.ingest["source"].endswith("/input/café")


def test_output_that_cannot_be_stored_is_a_dataset_error_naming_it():
    rows = [
        {
            "source": "a/x.png",
            "class": "a",
            "reason": "corrupt",
            "detail": "bad " + os.fsdecode(b"\xff"),
            "duplicate_of": "",
        }
    ]
    with pytest.raises(
        DatasetError, match=r"cannot store rejected.csv: .* in 'a/x.png,a,corrupt,bad \\udcff,'; rename"
    ):
        download._check_serialisable(("rejected.csv", download._csv(download.REJECTED_FIELDS, rows)))

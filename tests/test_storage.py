"""The artifact store: the same behaviour from the local folder and from S3 (moto over HTTP)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from cnn_tasks.storage import LocalStore, S3Store, StoreError, make_s3_client, open_store
from tests.s3server import moto_s3


@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_s3("artifacts") as endpoint:
        yield endpoint


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(f"file://{tmp_path / 'store'}")
    endpoint = request.getfixturevalue("s3_endpoint")
    return open_store(f"s3://artifacts/{tmp_path.name}", endpoint_url=endpoint)


def test_bytes_json_text_round_trip(store):
    store.put_bytes("runs/r1/a.bin", b"\x00\x01")
    store.put_json("runs/r1/m.json", {"x": 1, "t": (1, 2)})
    store.put_text("runs/r1/report/index.html", "<h1>é</h1>")
    assert store.get_bytes("runs/r1/a.bin") == b"\x00\x01"
    assert store.get_json("runs/r1/m.json") == {"x": 1, "t": [1, 2]}
    assert store.get_text("runs/r1/report/index.html") == "<h1>é</h1>"
    assert store.list("runs/r1/") == ["runs/r1/a.bin", "runs/r1/m.json", "runs/r1/report/index.html"]
    assert store.exists("runs/r1/a.bin")
    assert not store.exists("runs/r1/nope")


def test_files_round_trip_and_missing_key_is_named(store, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3000))
    store.put_file("runs/r2/model.keras", src)
    out = store.get_file("runs/r2/model.keras", tmp_path / "out" / "model.keras")
    assert out.read_bytes() == src.read_bytes()
    with pytest.raises(StoreError, match="runs/r3/missing.json does not exist"):
        store.get_bytes("runs/r3/missing.json")


def test_copy_makes_an_independent_object_and_names_a_missing_source(store):
    store.put_bytes("runs/a/shard.tfrecord", b"first")
    store.copy("runs/a/shard.tfrecord", "runs/b/shard.tfrecord")
    assert store.get_bytes("runs/b/shard.tfrecord") == b"first"
    store.put_bytes("runs/a/shard.tfrecord", b"rewritten")  # a copy never changes with its source
    assert store.get_bytes("runs/b/shard.tfrecord") == b"first"
    store.copy("runs/b/shard.tfrecord", "runs/b/shard.tfrecord")  # onto itself: unchanged, nothing left over
    assert store.list("runs/b/") == ["runs/b/shard.tfrecord"]
    with pytest.raises(StoreError, match="runs/a/missing does not exist"):
        store.copy("runs/a/missing", "runs/b/missing")


@pytest.mark.parametrize("key", ["../escape", "/abs/key", "runs/../../x", ""])
def test_keys_cannot_escape_the_store(store, key):
    with pytest.raises(StoreError, match="invalid artifact key"):
        store.put_bytes(key, b"x")


def test_list_does_not_match_sibling_prefixes(store):
    store.put_bytes("runs/a/x", b"1")
    store.put_bytes("runs/ab/y", b"2")
    assert store.list("runs/a/") == ["runs/a/x"]


def test_local_writes_are_atomic(tmp_path, monkeypatch):
    store = LocalStore(tmp_path)
    store.put_bytes("k.json", b"old")

    def broken(out):
        out.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        store._atomic_write("k.json", broken)
    assert store.get_bytes("k.json") == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["k.json"]


def test_s3_large_file_uses_multipart(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setattr(S3Store, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
    store = open_store("s3://artifacts/multipart", endpoint_url=s3_endpoint)
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * 1024 * 1024))
    store.put_file("runs/r/big.bin", big)
    head = store.client.head_object(Bucket="artifacts", Key="multipart/runs/r/big.bin")
    assert head["ContentLength"] == big.stat().st_size
    assert head["ETag"].strip('"').endswith("-3")  # three parts of 5 MiB, 5 MiB, 1 MiB
    assert store.get_file("runs/r/big.bin", tmp_path / "back.bin").read_bytes() == big.read_bytes()


def test_s3_missing_bucket_is_a_clear_error(s3_endpoint):
    with pytest.raises(StoreError, match="bucket 'no-such-bucket' does not exist"):
        open_store("s3://no-such-bucket/x", endpoint_url=s3_endpoint)


def test_s3_refused_credentials_are_a_clear_error(s3_endpoint, monkeypatch):
    class Refusing:
        meta = type("M", (), {"endpoint_url": s3_endpoint})()

        def head_bucket(self, Bucket):
            from botocore.exceptions import ClientError

            raise ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "bad key"}}, "HeadBucket")

    with pytest.raises(StoreError, match="refused .*InvalidAccessKeyId.*check the access key"):
        S3Store("artifacts", client=Refusing())


def test_s3_client_retries_with_backoff():
    client = make_s3_client("http://127.0.0.1:9")
    retries = client.meta.config.retries
    assert retries["mode"] == "standard"
    assert retries["total_max_attempts"] >= 5


def test_unknown_scheme_and_missing_bucket_name():
    with pytest.raises(StoreError, match="must start with file:// or s3://"):
        open_store("gs://bucket")
    with pytest.raises(StoreError, match="has no bucket"):
        open_store("s3:///prefix")


def test_relative_file_uri_resolves_against_base_dir(tmp_path):
    store = open_store("file://artifacts", base_dir=tmp_path)
    assert isinstance(store, LocalStore)
    assert store.root == tmp_path / "artifacts"


def test_version_changes_when_an_object_is_rewritten(store):
    store.put_bytes("runs/v/model.keras", b"first")
    before = store.version("runs/v/model.keras")
    store.put_bytes("runs/v/model.keras", b"second, longer")
    assert store.version("runs/v/model.keras") != before


def test_worker_cache_refetches_a_rewritten_object(make_ctx):
    ctx = make_ctx()
    key = ctx.model_key("m", "model.keras")
    ctx.store.put_bytes(key, b"first")
    assert ctx.cached(key).read_bytes() == b"first"
    ctx.store.put_bytes(key, b"second, longer")
    assert ctx.cached(key).read_bytes() == b"second, longer"


def test_content_addressed_cache_refuses_an_object_that_changed(make_ctx):
    import hashlib

    from cnn_tasks.context import cache_root

    ctx = make_ctx()
    key = ctx.data_key("shards", "train", "unbalanced", "train-00000.tfrecord")
    ctx.store.put_bytes(key, b"recorded content")
    recorded = hashlib.sha256(b"recorded content").hexdigest()
    assert ctx.cached(key, recorded).read_bytes() == b"recorded content"
    ctx.store.put_bytes(key, b"changed after dataset.json was written")
    stale = hashlib.sha256(b"what dataset.json recorded for another version").hexdigest()
    with pytest.raises(StoreError, match="does not match the sha256 recorded for it"):
        ctx.cached(key, stale)
    assert not (cache_root() / "content" / stale / "train-00000.tfrecord").exists()  # nothing bad is cached


def test_folders_modified_and_stream(store):
    data = os.urandom(3000)
    store.put_bytes("runs/r1/report/summary.json", b"{}")
    store.put_bytes("runs/r2/a.bin", data)
    store.put_bytes("runs/top.txt", b"x")
    assert store.folders("runs/") == ["r1", "r2"]
    assert store.folders("runs/r1/") == ["report"]
    assert store.folders("nothing/") == []

    modified = store.modified("runs/r1/report/summary.json")
    assert modified.tzinfo is not None
    assert abs(datetime.now(UTC) - modified) < timedelta(minutes=1)

    stream = store.stream("runs/r2/a.bin", chunk_size=1024)
    assert stream.size == 3000
    chunks = list(stream.chunks)
    assert b"".join(chunks) == data
    assert max(len(c) for c in chunks) <= 1024
    for read in (store.stream, store.modified):
        with pytest.raises(StoreError, match="does not exist"):
            read("runs/r1/nope.png")


def test_local_stream_refuses_links_out_of_the_store(tmp_path):
    store = LocalStore(tmp_path / "store")
    (tmp_path / "outside.txt").write_text("do not serve")
    store.put_bytes("runs/r/in.txt", b"inside")
    (store.root / "runs/r/leak.txt").symlink_to(tmp_path / "outside.txt")
    (store.root / "runs/r/alias.txt").symlink_to(store.root / "runs/r/in.txt")
    with pytest.raises(StoreError, match="does not exist"):
        store.stream("runs/r/leak.txt")
    assert b"".join(store.stream("runs/r/alias.txt").chunks) == b"inside"

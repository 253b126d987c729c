"""Packed image shards: a few TFRecord files per split instead of thousands of small objects.

Each record is a `tf.train.Example` with
  image: a PNG that decodes to exactly the validated 8-bit RGB pixels
  label: the class index (int64) into the dataset's class list
  key:   the image's id (content sha256, plus '#aug<n>' for augmented copies)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

RECORDS_PER_SHARD = 4096

FEATURES = ("image", "label", "key")


def _tf():
    import tensorflow as tf

    return tf


def encode_example(image: bytes, label: int, key: str) -> bytes:
    tf = _tf()
    feature = {
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


class ShardWriter:
    """Write records into `<folder>/<name>-00000.tfrecord`, ... with at most `per_shard` each.

    Files are written under a '.part' name and renamed when complete, so a crash never leaves
    a shard that looks finished.
    """

    def __init__(self, folder: str | Path, name: str, per_shard: int = RECORDS_PER_SHARD):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.name, self.per_shard = name, per_shard
        self.paths: list[Path] = []
        self.count = 0
        self._writer = None
        self._in_shard = 0

    def write(self, image: bytes, label: int, key: str) -> None:
        if self._writer is None or self._in_shard >= self.per_shard:
            self._close_shard()
            path = self.folder / f"{self.name}-{len(self.paths):05d}.tfrecord"
            self.paths.append(path)
            self._writer = _tf().io.TFRecordWriter(str(path) + ".part")
            self._in_shard = 0
        self._writer.write(encode_example(image, label, key))
        self._in_shard += 1
        self.count += 1

    def _close_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
            part = Path(str(self.paths[-1]) + ".part")
            part.replace(self.paths[-1])
            self._writer = None

    def close(self) -> list[Path]:
        self._close_shard()
        return self.paths

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif self._writer is not None:
            self._writer.close()


def parse_example(serialized):
    """tf.data map function: serialized Example -> dict(image=bytes, label=int64, key=bytes)."""
    tf = _tf()
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
        "key": tf.io.FixedLenFeature([], tf.string),
    }
    return tf.io.parse_single_example(serialized, spec)


def iter_records(paths: Iterable[str | Path]) -> Iterator[tuple[bytes, int, str]]:
    """Stream (encoded image, label, key) from shards in order, one record at a time."""
    tf = _tf()
    for path in paths:
        for raw in tf.data.TFRecordDataset(str(path)):
            rec = parse_example(raw)
            yield rec["image"].numpy(), int(rec["label"].numpy()), rec["key"].numpy().decode()

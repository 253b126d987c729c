"""The data stages on real EuroSAT images: a stratified few hundred from ../shared/datasets/eurosat.zip.

To stay fast, the test copies 40 images per class into a small zip (the full archive takes
seconds just to extract) and lets max_images_per_class=30 sample from those.
"""

from __future__ import annotations

import io
import random
import zipfile
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from cnn_tasks import download, images, rebalance, split
from cnn_tasks.config import PipelineConfig
from cnn_tasks.context import RunContext
from tests.helpers import EUROSAT_CLASSES, eurosat_zip

PER_CLASS_IN_ZIP, PER_CLASS = 40, 30


def _subset_zip(source, target) -> None:
    with zipfile.ZipFile(source) as zf:
        by_class = defaultdict(list)
        for name in zf.namelist():
            if name.lower().endswith(".jpg"):
                by_class[name.split("/")[-2]].append(name)
        with zipfile.ZipFile(target, "w") as out:
            for names in by_class.values():
                for name in random.Random(0).sample(sorted(names), PER_CLASS_IN_ZIP):
                    out.writestr(name, zf.read(name))


@pytest.mark.realdata
def test_eurosat_sample_through_download_split_rebalance(tmp_path):
    archive = tmp_path / "eurosat_sample.zip"
    _subset_zip(eurosat_zip(), archive)
    config = PipelineConfig.from_dict(
        {
            "store_uri": f"file://{tmp_path / 'store'}",
            "dataset_url": str(archive),
            "dataset_checksum": None,
            "max_images_per_class": PER_CLASS,
            "image_size": 32,
            "min_images_per_class": 10,
            "rebalance": "augment",
        }
    )
    ctx = RunContext.create(config, "real_data")

    ingest = download.run(ctx)
    assert ingest["classes"] == EUROSAT_CLASSES
    assert ingest["accepted"] == 10 * PER_CLASS
    assert ingest["rejected"] == 0

    split.run(ctx)
    table = pd.read_csv(io.StringIO(ctx.store.get_text(ctx.data_key("split.csv"))))
    counts = table.groupby(["class", "split"]).size().unstack()
    assert (counts["train"] == 21).all()
    assert (counts["val"] == 6).all()
    assert (counts["test"] == 3).all()
    assert table["key"].is_unique  # no image in two splits
    analysis = ctx.store.get_json(ctx.data_key("analysis.json"))
    assert analysis["no_leakage"]
    assert analysis["image_sizes"]["train"]["most_common"] == [[64, 64, 210]]
    assert all(20 < m < 200 for m in analysis["mean"])
    assert all(5 < s < 100 for s in analysis["std"])
    assert len(analysis["shortfalls"]) == 30  # 21/6/3 per class are all below the reference minimums

    rebalance.run(ctx)
    dataset = ctx.store.get_json(ctx.data_key("dataset.json"))
    assert dataset["image_size"] == 32
    assert dataset["classes"] == EUROSAT_CLASSES
    assert dataset["splits"]["train"]["balanced"]["class_counts"] == [21] * 10  # already balanced
    assert dataset["splits"]["test"]["unbalanced"]["count"] == 30
    for figure in analysis["figures"] + dataset["figures"]:
        assert ctx.store.get_bytes(figure["key"]).startswith(b"\x89PNG")


@pytest.mark.realdata
def test_eurosat_jpegs_are_packed_so_tensorflow_decodes_the_validated_pixels(tmp_path):
    """tf.io.decode_image decodes JPEG with a faster IDCT than Pillow: shards must hold PNG."""
    import tensorflow as tf

    with zipfile.ZipFile(eurosat_zip()) as zf:
        names = [n for n in zf.namelist() if n.endswith(".jpg")][::2700]
        for name in names:
            path = tmp_path / name.replace("/", "_")
            path.write_bytes(zf.read(name))
            result = images.validate(path)
            assert result.original_format == "JPEG"
            assert result.reencoded
            decoded = tf.io.decode_image(result.encoded, channels=3).numpy()
            assert np.array_equal(decoded, np.asarray(images.load_rgb(path))), name

"""CNN image-classification pipeline stages: plain Python modules with no Airflow import.

Each stage is a function `run(ctx, ...) -> dict` that reads what earlier stages wrote to the
artifact store and writes its own outputs under the run's prefix; the dict it returns is small
(keys, URIs, a few metrics) so it can travel through Airflow XCom.

The names below are defined here once, for the stages, the DAG, the plugin, scripts and tests.
"""

import os

from cnn_tasks import quiet_tensorflow

# TensorFlow's C++ start-up notes (CPU instructions, oneDNN) are INFO messages written to stderr,
# which Airflow's task log shows as red ERROR lines: hidden unless the user sets the variable.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
quiet_tensorflow.install()  # and the notes TF_CPP_MIN_LOG_LEVEL does not reach, written while it is imported

DAG_ID = "cnn_image_classification"
SPLITS = ("train", "val", "test")  # the labelled splits, in this order everywhere
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}  # for prose
VARIANTS = ("unbalanced", "balanced")  # the training data variants (balanced: after rebalancing)

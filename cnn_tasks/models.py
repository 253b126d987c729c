"""The model builder: a keras.Sequential CNN from an ExperimentSpec (config.py).

Layer layout (names are the contract other stages rely on, see docs/architecture.md):
  input (S, S, 3) float32 pixels 0..255
  standardize                      Normalization with the training split's channel mean/std
  conv<i> -> bn<i>? -> act<i> -> pool<i>? -> sdrop<i>?      i = 1..len(spec.conv)
      conv<i> is a Conv2D, or a SeparableConv2D where the block says separable (never conv1)
  head: flatten | global_pool, then dropout1 -> dense -> dense_act -> dropout2
  logits (Dense, linear) -> softmax (Activation, float32 even under mixed precision)
sdrop<i> (SpatialDropout2D) follows each unit that downsamples (pooling or stride > 1).
"""

from __future__ import annotations

import math

from cnn_tasks.experiments import ExperimentSpec, check_downsampling
from cnn_tasks.fields import ConfigError


def _keras():
    import keras

    return keras


def build_model(spec: ExperimentSpec, num_classes: int, image_size: int, mean, std):
    """A compiled-free keras.Sequential for `spec`; ConfigError names the field when it cannot be built."""
    keras = _keras()
    if num_classes < 2:
        raise ConfigError("classes", f"{num_classes} class(es); at least 2 are needed")
    check_downsampling(spec, image_size, spec.name)
    variance = [float(s) ** 2 for s in std]
    layers = [
        keras.Input((image_size, image_size, 3), name="pixels"),
        keras.layers.Normalization(mean=list(map(float, mean)), variance=variance, name="standardize"),
    ]
    for i, block in enumerate(spec.conv, start=1):
        layers += _conv_unit(spec, block, i)
    layers += _head(spec, num_classes)
    return keras.Sequential(layers, name=spec.name)


def _conv_unit(spec: ExperimentSpec, block, i: int) -> list:
    keras = _keras()
    regularizer = keras.regularizers.L2(spec.l2) if spec.l2 > 0 else None
    shape = {"strides": block.strides, "padding": "same", "use_bias": not spec.batch_norm, "name": f"conv{i}"}
    if block.separable:
        conv = keras.layers.SeparableConv2D(
            block.filters,
            block.kernel_size,
            depthwise_regularizer=regularizer,
            pointwise_regularizer=regularizer,
            **shape,
        )
    else:
        conv = keras.layers.Conv2D(block.filters, block.kernel_size, kernel_regularizer=regularizer, **shape)
    layers = [conv]
    if spec.batch_norm:
        # momentum 0.9 (Keras default 0.99): moving statistics settle within tens of steps, so
        # short runs (quick profile, small datasets) validate with the statistics they trained with.
        layers.append(keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}"))
    layers.append(keras.layers.Activation(spec.activation, name=f"act{i}"))
    if block.pool == "max":
        layers.append(keras.layers.MaxPooling2D(2, name=f"pool{i}"))
    elif block.pool == "average":
        layers.append(keras.layers.AveragePooling2D(2, name=f"pool{i}"))
    if spec.spatial_dropout > 0 and (block.pool != "none" or block.strides > 1):
        layers.append(keras.layers.SpatialDropout2D(spec.spatial_dropout, name=f"sdrop{i}"))
    return layers


def _head(spec: ExperimentSpec, num_classes: int) -> list:
    keras = _keras()
    regularizer = keras.regularizers.L2(spec.l2) if spec.l2 > 0 else None
    pooling = {
        "flatten": keras.layers.Flatten(name="flatten"),
        "global_average": keras.layers.GlobalAveragePooling2D(name="global_pool"),
        "global_max": keras.layers.GlobalMaxPooling2D(name="global_pool"),
    }[spec.head]
    layers = [pooling]
    if spec.dropout > 0:
        layers.append(keras.layers.Dropout(spec.dropout, name="dropout1"))
    layers += [
        keras.layers.Dense(spec.dense_units, kernel_regularizer=regularizer, name="dense"),
        keras.layers.Activation(spec.activation, name="dense_act"),
    ]
    if spec.dropout > 0:
        layers.append(keras.layers.Dropout(spec.dropout, name="dropout2"))
    layers += [
        keras.layers.Dense(num_classes, kernel_regularizer=regularizer, name="logits"),
        keras.layers.Activation("softmax", dtype="float32", name="softmax"),
    ]
    return layers


def load_model(path):
    """Load a saved model.keras; safe_mode refuses arbitrary code (e.g. Lambda layers) in the file."""
    return _keras().saving.load_model(str(path), safe_mode=True)


def describe(model) -> dict:
    """The layer table for the report: name, type, output shape, parameter count; plus totals."""
    rows = [
        {
            "name": layer.name,
            "type": type(layer).__name__,
            "output_shape": list(layer.output.shape),
            "params": int(layer.count_params()),
        }
        for layer in model.layers
    ]
    trainable = sum(int(math.prod(v.shape)) for v in model.trainable_weights)
    return {"layers": rows, "total_params": int(model.count_params()), "trainable_params": trainable}

"""The model experiments: one Sequential CNN and its training recipe per `ExperimentSpec`.

`PipelineConfig.experiments` (config.py) holds them; `DEFAULT_EXPERIMENTS` are the three the
pipeline trains unless a run names its own. Every field carries its bounds, choices and
description, so the JSON schema of the config documents them; `models.build_model` builds the
network and `check_downsampling` rejects a spec that does not fit an image size.
"""

import math
from typing import Annotated, Literal, get_args

from pydantic import Field, StrictBool

from cnn_tasks.fields import SLUG_PATTERN, ConfigError, Float, Int, SettingsModel, rule

Activation = Literal["relu", "elu", "gelu", "selu", "swish", "leaky_relu", "tanh"]
Optimizer = Literal["adam", "adamw", "sgd", "rmsprop", "nadam"]
Pooling = Literal["max", "average", "none"]
LrSchedule = Literal["none", "plateau", "cosine", "one_cycle"]
Head = Literal["flatten", "global_average", "global_max"]

ACTIVATIONS: tuple[str, ...] = get_args(Activation)
OPTIMIZERS: tuple[str, ...] = get_args(Optimizer)
POOLINGS: tuple[str, ...] = get_args(Pooling)
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
HEADS: tuple[str, ...] = get_args(Head)

FIRST_CONV_FULL = rule(
    lambda conv: not conv or not conv[0].separable,
    "the first layer must be a full convolution (separable: false): on 3 input channels a separable one saves "
    "almost nothing, and its colour kernels are what the report shows",
)


class ConvBlock(SettingsModel):
    """One convolution layer, optionally followed by pooling."""

    filters: Int = Field(ge=1, le=2048, description="Number of convolution filters.")
    kernel_size: Int = Field(3, ge=1, le=11, description="Side of the square kernel.")
    strides: Int = Field(1, ge=1, le=4, description="Stride; above 1 the layer downsamples ('same' padding).")
    pool: Pooling = Field("none", description="2x2 pooling after this convolution, or none.")
    separable: StrictBool = Field(
        False,
        description="Depthwise-separable convolution (a per-channel spatial filter, then a 1x1 mix): "
        "about kernel_size² times fewer multiply-adds than a full convolution of the same width.",
    )


class ExperimentSpec(SettingsModel):
    """One model architecture and its training recipe (a Sequential CNN)."""

    name: str = Field(
        pattern=SLUG_PATTERN,
        description="Names the model in the report: 1-40 lowercase letters, digits, '_' or '-'.",
    )
    description: str = Field("", description="What this experiment tests.")
    conv: Annotated[tuple[ConvBlock, ...], FIRST_CONV_FULL] = Field(
        min_length=4, description="The convolution layers, in order."
    )
    activation: Activation = Field("relu", description="Activation after each convolution and after the dense layer.")
    batch_norm: StrictBool = Field(True, description="Batch normalisation after each convolution.")
    dropout: Float = Field(0.3, ge=0, lt=1, description="Dropout before the dense head and after it.")
    spatial_dropout: Float = Field(
        0.0, ge=0, lt=1, description="Spatial dropout after each downsampling (pooling or a stride above 1)."
    )
    l2: Float = Field(1e-4, ge=0, le=1, description="L2 weight regularisation.")
    head: Head = Field("global_average", description="How the feature map becomes a vector.")
    dense_units: Int = Field(128, ge=1, le=8192, description="Units of the dense layer before the output.")
    optimizer: Optimizer = Field("adam", description="Keras optimizer; sgd uses Nesterov momentum 0.9.")
    learning_rate: Float = Field(
        1e-3,
        gt=0,
        le=10,
        description="Learning rate (the peak rate under the cosine and one_cycle schedules); the run setting "
        "lr_range_test replaces it with the rate the range test picks.",
    )
    lr_schedule: LrSchedule = Field(
        "plateau",
        description="Learning-rate schedule: none; halve on a validation-loss plateau; cosine decay over all "
        "epochs; one_cycle (a linear warm-up from a tenth of the rate over the first 10 % of steps, then cosine).",
    )
    batch_size: Int = Field(32, ge=1, le=4096, description="Images per training batch.")


def _block(filters, kernel_size=3, strides=1, pool="none", separable=False) -> ConvBlock:
    return ConvBlock(filters=filters, kernel_size=kernel_size, strides=strides, pool=pool, separable=separable)


# Three default experiments, each cheap enough per image that all six models train on a 2-core CPU
# (docs/benchmarks.md). The first is the reference recipe (ReLU + Adam + batch 32); the other two
# each change one family of choices so the comparison teaches something. All warm up and anneal
# (one_cycle), which converges in fewer epochs than decay on a plateau.
DEFAULT_EXPERIMENTS: tuple[ExperimentSpec, ...] = (
    ExperimentSpec(
        name="baseline",
        description="Reference recipe: 7 conv layers, VGG-style 3x3 convolutions that pool early (the first "
        "layer alone works at full resolution) and widen as they downsample (32-48-96-192 filters); ReLU, batch "
        "norm, dropout, L2, global average pooling head; Adam 1e-3 with a one-cycle schedule, batch size 32.",
        conv=(
            _block(32, pool="max"),
            _block(48),
            _block(48, pool="max"),
            _block(96),
            _block(96, pool="max"),
            _block(192),
            _block(192),
        ),
        lr_schedule="one_cycle",
    ),
    ExperimentSpec(
        name="strided_elu",
        description="Learned downsampling: stride-2 convolutions instead of pooling after the first layer, "
        "at the baseline's widths (32-48-96-192 filters, 6 layers); ELU; SGD with Nesterov momentum 0.9 and a "
        "one-cycle schedule; batch size 64. Tests whether strided convolutions and a different optimiser match "
        "the baseline at four fifths of its FLOPs.",
        conv=(
            _block(32),
            _block(48, strides=2),
            _block(48),
            _block(96, strides=2),
            _block(96),
            _block(192, strides=2),
        ),
        activation="elu",
        optimizer="sgd",
        learning_rate=0.05,
        lr_schedule="one_cycle",
        batch_size=64,
    ),
    ExperimentSpec(
        name="separable_swish",
        description="Depthwise-separable convolutions after the first layer (MobileNet-style, 32-64-128-256 "
        "filters): a quarter of the baseline's FLOPs per image. Swish, AdamW 2e-3 with a one-cycle schedule, "
        "spatial dropout after each pooling; batch size 64. Tests how much accuracy the cheap convolutions cost.",
        conv=(
            _block(32, pool="max"),
            _block(64, separable=True),
            _block(64, separable=True, pool="max"),
            _block(128, separable=True),
            _block(128, separable=True, pool="max"),
            _block(256, separable=True),
            _block(256, separable=True),
        ),
        activation="swish",
        optimizer="adamw",
        learning_rate=2e-3,
        lr_schedule="one_cycle",
        spatial_dropout=0.1,
        batch_size=64,
    ),
)


def check_downsampling(spec: ExperimentSpec, image_size: int, where: str) -> None:
    """Reject specs that downsample the feature map below 1x1 at `image_size`, naming the field."""
    size = image_size
    for j, block in enumerate(spec.conv):
        field_name, layer = f"{where}.conv[{j}]", j + 1
        if block.strides > 1 and size < 2:
            raise ConfigError(
                f"{field_name}.strides",
                f"conv{layer} cannot downsample a {size}x{size} feature "
                f"map (image_size {image_size}): too many downsamplings for this image size",
            )
        size = math.ceil(size / block.strides)  # 'same' padding
        if block.pool != "none":
            if size < 2:
                raise ConfigError(
                    f"{field_name}.pool",
                    f"pool{layer} needs a feature map of at least 2x2 but "
                    f"conv{layer} outputs {size}x{size} at image_size {image_size}: too many "
                    "downsamplings for this image size",
                )
            size //= 2

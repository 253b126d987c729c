"""The pipeline configuration: one typed, validated object built by Airflow Params, the CLI and tests.

`PipelineConfig.from_dict` is the only way in: it applies the profile, fills defaults, and
rejects invalid values before any work with a `ConfigError` that names the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from cnn_tasks.errors import PipelineError

# The public EuroSAT RGB archive (wrapper folder `2750/` above the class folders).
EUROSAT_URL = (
    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
    "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip"
)
EUROSAT_CHECKSUM = "md5:c8fa014336c82ac7804f0398fcb19387"

REBALANCE_STRATEGIES = ("none", "class_weight", "oversample", "undersample", "augment")
PROFILES = ("standard", "quick")
ACTIVATIONS = ("relu", "elu", "gelu", "selu", "swish", "leaky_relu", "tanh")
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop", "nadam")
POOLINGS = ("max", "average", "none")
LR_SCHEDULES = ("none", "plateau", "cosine")
HEADS = ("flatten", "global_average", "global_max")
PROMOTION_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auc")
PREDEFINED_SPLITS = ("auto", "ignore", "require")
IMAGE_FITS = ("squash", "pad", "center_crop")


class ConfigError(PipelineError, ValueError):
    """An invalid configuration value; the message starts with the field's name."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(f"{field_name}: {message}")


@dataclass(frozen=True)
class ConvBlock:
    """One convolution layer, optionally followed by pooling."""

    filters: int
    kernel_size: int = 3
    strides: int = 1
    pool: str = "none"  # pooling after this conv: max | average | none


@dataclass(frozen=True)
class ExperimentSpec:
    """One model architecture and its training recipe (a Sequential CNN)."""

    name: str
    description: str
    conv: tuple[ConvBlock, ...]
    activation: str = "relu"
    batch_norm: bool = True
    dropout: float = 0.3  # before the dense head and after it
    spatial_dropout: float = 0.0  # after each pooling
    l2: float = 1e-4
    head: str = "global_average"  # flatten | global_average | global_max
    dense_units: int = 128
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    lr_schedule: str = "plateau"  # none | plateau | cosine
    batch_size: int = 32


def _block(filters, kernel_size=3, strides=1, pool="none") -> ConvBlock:
    return ConvBlock(filters=filters, kernel_size=kernel_size, strides=strides, pool=pool)


# Three default experiments. The first is the reference recipe (ReLU + Adam + batch 32);
# the other two change one family of choices each so the comparison teaches something.
DEFAULT_EXPERIMENTS: tuple[ExperimentSpec, ...] = (
    ExperimentSpec(
        name="baseline",
        description="Reference recipe: 6 conv layers in 3 VGG-style blocks (32-64-128 filters, "
        "3x3, max pooling), ReLU, batch norm, dropout, L2, global average pooling head; "
        "Adam 1e-3 with plateau decay, batch size 32.",
        conv=(
            _block(32), _block(32, pool="max"),
            _block(64), _block(64, pool="max"),
            _block(128), _block(128, pool="max"),
        ),
    ),
    ExperimentSpec(
        name="strided_elu",
        description="Fewer, wider layers that downsample with stride 2 instead of pooling; "
        "ELU activation; SGD with momentum 0.9 and a cosine schedule; batch size "
        "64. Tests whether learned downsampling and a different optimiser match the baseline.",
        conv=(
            _block(48), _block(48, strides=2),
            _block(96), _block(96, strides=2),
            _block(192, strides=2),
        ),
        activation="elu",
        optimizer="sgd",
        learning_rate=0.05,
        lr_schedule="cosine",
        batch_size=64,
    ),
    ExperimentSpec(
        name="deep_swish",
        description="Deeper network (8 conv layers, 4 blocks up to 256 filters) with Swish "
        "activation, AdamW and a cosine schedule, spatial dropout after each block; batch size "
        "64. Tests whether extra depth buys accuracy on 64 px images.",
        conv=(
            _block(32), _block(32, pool="max"),
            _block(64), _block(64, pool="max"),
            _block(128), _block(128, pool="max"),
            _block(256), _block(256, pool="max"),
        ),
        activation="swish",
        optimizer="adamw",
        learning_rate=2e-3,
        lr_schedule="cosine",
        spatial_dropout=0.1,
        batch_size=64,
    ),
)

# Overrides applied by `profile="quick"`: a few minutes on a laptop CPU.
QUICK_PROFILE: dict[str, Any] = {
    "max_images_per_class": 300,
    "classes_limit": 4,
    "image_size": 32,
    "epochs": 8,
    "min_images_per_class": 10,
    "filter_pattern_steps": 10,
}


@dataclass(frozen=True)
class PipelineConfig:
    """Everything a run needs. Defaults are the standard profile (the real job)."""

    # data
    dataset_url: str = EUROSAT_URL
    dataset_checksum: str | None = EUROSAT_CHECKSUM
    dataset_subdir: str | None = None  # e.g. "train_set" inside the archive
    predefined_split: str = "auto"  # auto | ignore | require: what to do with train/val/test folders
    unlabelled_url: str | None = None  # images to predict after training
    classes: tuple[str, ...] | None = None  # subset of classes; None = all
    classes_limit: int | None = None  # keep the first N classes (sorted) when classes is None
    max_images_per_class: int | None = None  # cap per class (seeded sample); None = all
    min_images_per_class: int = 50
    image_size: int = 64
    image_fit: str = "squash"  # squash | pad | center_crop: how a non-square image becomes square
    min_image_side: int = 8  # images with a shorter side are rejected (too_small)
    max_aspect_ratio: float = 10.0  # images longer/shorter than this are rejected (extreme_aspect_ratio)
    split: tuple[float, float, float] = (0.7, 0.2, 0.1)
    seed: int = 42
    rebalance: str = "augment"
    # models and training
    experiments: tuple[ExperimentSpec, ...] = DEFAULT_EXPERIMENTS
    epochs: int = 30
    early_stopping_patience: int = 6
    augment: bool = True  # random flips/rotation/zoom/contrast on training batches
    single_batch_steps: int = 150
    mixed_precision: bool = False
    deterministic: bool = False
    # visualisation
    filter_pattern_steps: int = 30
    # promotion
    promotion_metric: str = "macro_f1"
    promotion_margin: float = 0.0
    promotion_min_accuracy: float = 0.5
    # artifact store
    store_uri: str = "file://artifacts"
    s3_endpoint_url: str | None = None
    aws_conn_id: str = "aws_default"
    profile: str = "standard"

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None, given: set[str] | None = None) -> "PipelineConfig":
        """Build and validate a config; `profile` overrides apply under explicit values.

        `given` names the fields the user set (default: every key of `values`). The profile fills
        a field the user did not set or left at its standard default; an optional field the user
        set to empty (None, e.g. classes_limit: all classes) is an explicit choice and wins. A
        trigger form gives every field, so there only values that differ from the defaults count.
        """
        values = dict(values or {})
        given = set(values) if given is None else set(given)
        if given >= set(_STANDARD_DEFAULTS):  # a form: every field is given
            given = {k for k in given if values.get(k) != _STANDARD_DEFAULTS[k]}
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(unknown[0], f"unknown setting; known: {', '.join(_field_names())}")
        profile = values.get("profile") or "standard"
        if profile not in PROFILES:
            raise ConfigError("profile", f"{profile!r} is not one of {PROFILES}")
        merged = {k: v for k, v in values.items() if v is not None or k in _NULLABLE}
        if profile == "quick":
            # A form submits every field, so the profile wins wherever a field still holds
            # its standard default; a value the user changed is kept.
            for name, quick_value in QUICK_PROFILE.items():
                explicit_empty = name in given and name in values and values[name] is None
                if not explicit_empty and (name not in merged or merged[name] == _STANDARD_DEFAULTS[name]):
                    merged[name] = quick_value
        merged["profile"] = profile
        if merged.get("dataset_url", EUROSAT_URL) != EUROSAT_URL and merged.get("dataset_checksum") == EUROSAT_CHECKSUM:
            merged["dataset_checksum"] = None  # the pinned checksum belongs to the EuroSAT archive only
        return cls(**_coerce(merged)).validated()

    @classmethod
    def from_json(cls, text: str) -> "PipelineConfig":
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def experiment(self, name: str) -> ExperimentSpec:
        for spec in self.experiments:
            if spec.name == name:
                return spec
        raise ConfigError("experiments", f"no experiment named {name!r}")

    # ---------------------------------------------------------------- validation
    def validated(self) -> "PipelineConfig":
        _check(self.dataset_url.strip() != "", "dataset_url", "must not be empty")
        if self.dataset_checksum is not None:
            _check(
                re.fullmatch(r"(md5:[0-9a-f]{32}|sha256:[0-9a-f]{64})", self.dataset_checksum) is not None,
                "dataset_checksum",
                f"{self.dataset_checksum!r} must look like 'md5:<32 hex>' or 'sha256:<64 hex>'",
            )
        if self.classes is not None:
            _check(len(self.classes) >= 2, "classes", "select at least 2 classes (or leave empty for all)")
            _check(len(set(self.classes)) == len(self.classes), "classes", "contains a class twice")
        _check(self.classes_limit is None or self.classes_limit >= 2, "classes_limit", "must be >= 2")
        _check(
            self.max_images_per_class is None or self.max_images_per_class >= 10,
            "max_images_per_class", "must be >= 10 (or empty for all images)",
        )
        _check(self.min_images_per_class >= 1, "min_images_per_class", "must be >= 1")
        _check(16 <= self.image_size <= 512, "image_size", f"{self.image_size} is outside 16..512")
        _check(len(self.split) == 3, "split", "needs three ratios: train, validation, test")
        _check(all(r > 0 for r in self.split), "split", f"{list(self.split)}: every ratio must be > 0")
        _check(
            math.isclose(sum(self.split), 1.0, abs_tol=1e-6), "split",
            f"{list(self.split)} sums to {sum(self.split):.4f}; the ratios must sum to 1",
        )
        _check(self.predefined_split in PREDEFINED_SPLITS, "predefined_split",
               f"{self.predefined_split!r} is not one of {PREDEFINED_SPLITS}")
        _check(self.image_fit in IMAGE_FITS, "image_fit", f"{self.image_fit!r} is not one of {IMAGE_FITS}")
        _check(1 <= self.min_image_side <= 4096, "min_image_side", f"{self.min_image_side} is outside 1..4096")
        _check(1 <= self.max_aspect_ratio <= 1000, "max_aspect_ratio",
               f"{self.max_aspect_ratio} is outside 1..1000")
        _check(self.rebalance in REBALANCE_STRATEGIES, "rebalance",
               f"{self.rebalance!r} is not one of {REBALANCE_STRATEGIES}")
        _check(1 <= self.epochs <= 1000, "epochs", f"{self.epochs} is outside 1..1000")
        _check(1 <= self.early_stopping_patience <= 100, "early_stopping_patience", "must be in 1..100")
        _check(self.seed >= 0, "seed", "must be >= 0")
        _check(0 <= self.promotion_margin <= 1, "promotion_margin", "must be in 0..1")
        _check(10 <= self.single_batch_steps <= 5000, "single_batch_steps", "must be in 10..5000")
        _check(1 <= self.filter_pattern_steps <= 500, "filter_pattern_steps", "must be in 1..500")
        _check(self.promotion_metric in PROMOTION_METRICS, "promotion_metric",
               f"{self.promotion_metric!r} is not one of {PROMOTION_METRICS}")
        _check(0 <= self.promotion_min_accuracy <= 1, "promotion_min_accuracy", "must be in 0..1")
        _check(re.match(r"^(file://|s3://)", self.store_uri) is not None, "store_uri",
               f"{self.store_uri!r} must start with file:// or s3://")
        _check(len(self.experiments) >= 1, "experiments", "at least one experiment is needed")
        names = [e.name for e in self.experiments]
        _check(len(set(names)) == len(names), "experiments", f"duplicate experiment names in {names}")
        for i, spec in enumerate(self.experiments):
            _validate_experiment(spec, f"experiments[{i}]")
            check_downsampling(spec, self.image_size, f"experiments[{i}]")
        return self


_STANDARD_DEFAULTS = {f.name: f.default for f in dataclasses.fields(PipelineConfig)}

_NULLABLE = {"dataset_checksum", "dataset_subdir", "unlabelled_url", "classes", "classes_limit",
             "max_images_per_class", "s3_endpoint_url"}


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(PipelineConfig)]


def _check(ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise ConfigError(field_name, message)


def _validate_experiment(spec: ExperimentSpec, where: str) -> None:
    _check(re.fullmatch(r"[a-z0-9][a-z0-9_\-]{0,39}", spec.name) is not None, f"{where}.name",
           f"{spec.name!r}: use 1-40 lowercase letters, digits, '_' or '-'")
    _check(len(spec.conv) >= 4, f"{where}.conv", f"has {len(spec.conv)} conv layers; at least 4 are required")
    for j, block in enumerate(spec.conv):
        w = f"{where}.conv[{j}]"
        _check(1 <= block.filters <= 2048, f"{w}.filters", f"{block.filters} is outside 1..2048")
        _check(1 <= block.kernel_size <= 11, f"{w}.kernel_size", f"{block.kernel_size} is outside 1..11")
        _check(1 <= block.strides <= 4, f"{w}.strides", f"{block.strides} is outside 1..4")
        _check(block.pool in POOLINGS, f"{w}.pool", f"{block.pool!r} is not one of {POOLINGS}")
    _check(spec.activation in ACTIVATIONS, f"{where}.activation", f"{spec.activation!r} is not one of {ACTIVATIONS}")
    _check(spec.optimizer in OPTIMIZERS, f"{where}.optimizer", f"{spec.optimizer!r} is not one of {OPTIMIZERS}")
    _check(spec.lr_schedule in LR_SCHEDULES, f"{where}.lr_schedule", f"{spec.lr_schedule!r} is not one of {LR_SCHEDULES}")
    _check(spec.head in HEADS, f"{where}.head", f"{spec.head!r} is not one of {HEADS}")
    _check(0 <= spec.dropout < 1, f"{where}.dropout", f"{spec.dropout} is outside [0, 1)")
    _check(0 <= spec.spatial_dropout < 1, f"{where}.spatial_dropout", f"{spec.spatial_dropout} is outside [0, 1)")
    _check(0 <= spec.l2 <= 1, f"{where}.l2", f"{spec.l2} is outside [0, 1]")
    _check(1 <= spec.dense_units <= 8192, f"{where}.dense_units", f"{spec.dense_units} is outside 1..8192")
    _check(0 < spec.learning_rate <= 10, f"{where}.learning_rate", f"{spec.learning_rate} is outside (0, 10]")
    _check(1 <= spec.batch_size <= 4096, f"{where}.batch_size", f"{spec.batch_size} is outside 1..4096")


def check_downsampling(spec: ExperimentSpec, image_size: int, where: str) -> None:
    """Reject specs that downsample the feature map below 1x1 at `image_size`, naming the field."""
    size = image_size
    for j, block in enumerate(spec.conv):
        field_name, layer = f"{where}.conv[{j}]", j + 1
        if block.strides > 1 and size < 2:
            raise ConfigError(f"{field_name}.strides", f"conv{layer} cannot downsample a {size}x{size} feature "
                              f"map (image_size {image_size}): too many downsamplings for this image size")
        size = math.ceil(size / block.strides)  # 'same' padding
        if block.pool != "none":
            if size < 2:
                raise ConfigError(f"{field_name}.pool", f"pool{layer} needs a feature map of at least 2x2 but "
                                  f"conv{layer} outputs {size}x{size} at image_size {image_size}: too many "
                                  "downsamplings for this image size")
            size //= 2


def _coerce(values: dict[str, Any]) -> dict[str, Any]:
    """Turn JSON-ish values (lists, dicts, strings from a form) into the dataclass types."""
    out = dict(values)
    types = {"image_size": int, "seed": int, "epochs": int, "min_images_per_class": int,
             "early_stopping_patience": int, "single_batch_steps": int, "filter_pattern_steps": int,
             "promotion_margin": float, "promotion_min_accuracy": float, "min_image_side": int,
             "max_aspect_ratio": float}
    for name, kind in types.items():
        if name in out:
            out[name] = _as(kind, out[name], name)
    for name in ("classes_limit", "max_images_per_class"):
        if out.get(name) is not None:
            out[name] = _as(int, out[name], name)
    for name in ("augment", "mixed_precision", "deterministic"):
        if name in out and not isinstance(out[name], bool):
            raise ConfigError(name, f"{out[name]!r} must be true or false")
    for name in ("dataset_checksum", "dataset_subdir", "unlabelled_url", "s3_endpoint_url"):
        if isinstance(out.get(name), str) and not out[name].strip():
            out[name] = None
    subdir = out.get("dataset_subdir")
    if isinstance(subdir, str) and (subdir.startswith(("/", "\\")) or ".." in re.split(r"[/\\]", subdir)):
        raise ConfigError("dataset_subdir", f"{subdir!r} must name a folder inside the dataset, relative to its top "
                                            "and without '..' (e.g. 'train_set' or 'data/train')")
    if "classes" in out and out["classes"] is not None:
        classes = out["classes"]
        if isinstance(classes, str):
            classes = [c.strip() for c in classes.split(",") if c.strip()]
        if not isinstance(classes, (list, tuple)) or not all(isinstance(c, str) for c in classes):
            raise ConfigError("classes", "must be a list of class-folder names")
        out["classes"] = tuple(classes) or None
    if "split" in out:
        split = out["split"]
        if not isinstance(split, (list, tuple)):
            raise ConfigError("split", "must be a list of three ratios, e.g. [0.7, 0.2, 0.1]")
        out["split"] = tuple(_as(float, r, "split") for r in split)
    if "experiments" in out:
        out["experiments"] = tuple(_experiment(e, i) for i, e in enumerate(_as_list(out["experiments"])))
    return out


def _as_list(value: Any) -> list:
    if not isinstance(value, (list, tuple)):
        raise ConfigError("experiments", "must be a list of experiment objects")
    return list(value)


def _experiment(value: Any, i: int) -> ExperimentSpec:
    if isinstance(value, ExperimentSpec):
        return value
    where = f"experiments[{i}]"
    if not isinstance(value, dict):
        raise ConfigError(where, "must be an object with name, description and conv")
    known = {f.name for f in dataclasses.fields(ExperimentSpec)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown setting; known: {', '.join(sorted(known))}")
    for required in ("name", "conv"):
        if required not in value:
            raise ConfigError(f"{where}.{required}", "is required")
    spec = dict(value)
    spec.setdefault("description", "")
    blocks = []
    for j, b in enumerate(_as_list(spec["conv"])):
        if isinstance(b, ConvBlock):
            blocks.append(b)
            continue
        if not isinstance(b, dict) or "filters" not in b:
            raise ConfigError(f"{where}.conv[{j}]", "must be an object with at least 'filters'")
        try:
            blocks.append(ConvBlock(**b))
        except TypeError as exc:
            raise ConfigError(f"{where}.conv[{j}]", str(exc)) from None
    spec["conv"] = tuple(blocks)
    for name, kind in (("learning_rate", float), ("dropout", float), ("spatial_dropout", float),
                       ("l2", float), ("dense_units", int), ("batch_size", int)):
        if name in spec:
            spec[name] = _as(kind, spec[name], f"{where}.{name}")
    return ExperimentSpec(**spec)


def _as(kind: type, value: Any, name: str):
    if isinstance(value, bool):
        raise ConfigError(name, f"{value!r} is not a number")
    try:
        result = kind(value)
    except (TypeError, ValueError):
        raise ConfigError(name, f"{value!r} is not a valid {kind.__name__}") from None
    if kind is int and isinstance(value, float) and value != result:
        raise ConfigError(name, f"{value!r} must be a whole number")
    return result


# Titles and descriptions for every field: the Airflow trigger form and the README use them.
FIELD_DOCS: dict[str, tuple[str, str]] = {
    "dataset_url": ("Dataset", "Labelled images: http(s) URL, s3://bucket/key, or a local zip, tar(.gz) or "
                    "folder with one sub-folder per class."),
    "dataset_checksum": ("Dataset checksum", "Optional 'sha256:<hex>' or 'md5:<hex>' of the archive; a mismatch "
                         "stops the run. Leave empty when pointing at your own data."),
    "dataset_subdir": ("Sub-folder", "Folder inside the archive that holds the class folders (e.g. train_set)."),
    "predefined_split": ("Predefined split", "What to do with train/val/test folders found in the dataset: "
                         "'auto' keeps a given test and validation split and carves what is missing from the "
                         "training split; 'ignore' pools every labelled image and splits it by the split "
                         "ratios; 'require' fails unless the dataset ships its own split."),
    "unlabelled_url": ("Unlabelled images", "Optional folder, archive or URL of images to classify with the "
                       "champion model after training (writes predictions.csv)."),
    "classes": ("Classes", "Subset of class-folder names to use; empty means all classes."),
    "classes_limit": ("Number of classes", "Keep only the first N classes (alphabetical) when no subset is given; "
                      "empty means all classes."),
    "max_images_per_class": ("Images per class (cap)", "Seeded random sample per class; empty means all images."),
    "min_images_per_class": ("Minimum images per class", "A class with fewer valid images stops the run."),
    "image_size": ("Image size (px)", "Images are resized to this square size before training."),
    "image_fit": ("Image fit", "How a non-square image becomes a square of image_size: 'squash' resizes it "
                  "(distorting the aspect ratio), 'pad' letterboxes it with black borders, 'center_crop' "
                  "keeps the central square."),
    "min_image_side": ("Minimum image side (px)", "Images whose shorter side is below this are rejected "
                       "(reason too_small)."),
    "max_aspect_ratio": ("Maximum aspect ratio", "Images whose longer side exceeds the shorter side this many "
                         "times are rejected (reason extreme_aspect_ratio)."),
    "split": ("Split ratios", "Train, validation and test fractions; must sum to 1."),
    "seed": ("Seed", "Every random choice (split, shuffling, augmentation, initialisation) uses this seed."),
    "rebalance": ("Rebalance strategy", "How training and validation data are balanced for the 'balanced' "
                  "variant; the test split is never touched."),
    "experiments": ("Model experiments", "Sequential CNN specs (>= 4 conv layers each); every experiment is "
                    "trained on the unbalanced and on the balanced data."),
    "epochs": ("Epochs", "Maximum epochs per training run (early stopping may end sooner)."),
    "early_stopping_patience": ("Early-stopping patience", "Epochs without validation-loss improvement "
                                "before training stops and the best weights are restored."),
    "augment": ("Augment training images", "Random flips, small rotations, zoom and contrast on training batches."),
    "single_batch_steps": ("Single-batch check steps", "Step budget for overfitting one batch before training."),
    "mixed_precision": ("Mixed precision", "float16 compute on a GPU (leave off on CPU)."),
    "deterministic": ("Deterministic ops", "Bit-for-bit reproducible TensorFlow ops (slower)."),
    "filter_pattern_steps": ("Filter-pattern steps", "Gradient-ascent steps per filter visualisation."),
    "promotion_metric": ("Promotion metric", "Test metric a new model must beat the champion on."),
    "promotion_margin": ("Promotion margin", "How much better (absolute) the new model must be to be promoted."),
    "promotion_min_accuracy": ("Minimum accuracy to promote", "Guard: a model below this test accuracy is "
                               "never promoted."),
    "store_uri": ("Artifact store", "file:///path or s3://bucket/prefix where every artifact and the report go."),
    "s3_endpoint_url": ("S3 endpoint", "For MinIO or another S3-compatible store; empty means AWS."),
    "aws_conn_id": ("AWS connection id", "Airflow connection holding the S3 credentials."),
    "profile": ("Profile", "'quick' runs a few minutes on a laptop CPU (few classes, images and epochs); "
                "'standard' is the real job. Quick settings apply to fields left at their defaults."),
}

_CHOICES = {"predefined_split": PREDEFINED_SPLITS, "image_fit": IMAGE_FITS, "rebalance": REBALANCE_STRATEGIES, "promotion_metric": PROMOTION_METRICS, "profile": PROFILES}
_BOUNDS = {"image_size": (16, 512), "epochs": (1, 1000), "early_stopping_patience": (1, 100),
           "single_batch_steps": (10, 5000), "filter_pattern_steps": (1, 500), "min_images_per_class": (1, None),
           "classes_limit": (2, None), "max_images_per_class": (10, None), "promotion_min_accuracy": (0, 1),
           "promotion_margin": (0, 1), "seed": (0, None),
           "min_image_side": (1, 4096), "max_aspect_ratio": (1, 1000)}


def field_schemas(defaults: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """A JSON-schema description of every field (type, enum, bounds, title, description, default).

    The DAG turns these into Airflow Params, so the trigger form is built from this module.
    """
    base = PipelineConfig().to_dict()
    base.update(defaults or {})
    schemas = {}
    for f in dataclasses.fields(PipelineConfig):
        default = base[f.name]
        title, description = FIELD_DOCS[f.name]
        kind = {bool: "boolean", int: "integer", float: "number", str: "string"}.get(type(default))
        if f.name == "split":
            schema = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
        elif f.name == "classes":
            schema = {"type": ["null", "array"], "items": {"type": "string"}}
        elif f.name == "experiments":
            schema = {"type": "array", "items": {"type": "object"}, "minItems": 1}
        elif f.name in _NULLABLE:
            schema = {"type": ["null", "integer" if f.name.endswith(("_limit", "_per_class")) else "string"]}
        else:
            schema = {"type": kind}
        if f.name in _CHOICES:
            schema["enum"] = list(_CHOICES[f.name])
        low, high = _BOUNDS.get(f.name, (None, None))
        if low is not None:
            schema["minimum"] = low
        if high is not None:
            schema["maximum"] = high
        schemas[f.name] = {"default": default, "title": title, "description": description, **schema}
    return schemas

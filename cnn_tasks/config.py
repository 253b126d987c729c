"""The pipeline configuration: one typed, validated object built by Airflow Params, the CLI and tests.

`PipelineConfig.from_dict` is the way in: it applies the profile, fills defaults and rejects
invalid values before any work with a `ConfigError` that names the field the way users see it
(`experiments[0].conv[2].filters: 4096 is outside 1..2048`). The settings are frozen pydantic
models: bounds, choices, titles, descriptions and the trigger-form section live on each field,
and the Airflow Params are generated from their JSON schema (`field_schemas`). The experiment
model is in experiments.py; the shared field types, checks and error messages in fields.py.
"""

import json
import math
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import BeforeValidator, Field, StrictBool, ValidationError, ValidationInfo, model_validator

from cnn_tasks.experiments import DEFAULT_EXPERIMENTS, ExperimentSpec, check_downsampling
from cnn_tasks.fields import (
    OPTIONAL_CHECKSUM_PATTERN,
    OPTIONAL_SLUG_PATTERN,
    ConfigError,
    Float,
    Int,
    OptionalFloat,
    OptionalInt,
    OptionalText,
    SettingsModel,
    config_error,
    rule,
)

# The public EuroSAT RGB archive (wrapper folder `2750/` above the class folders).
EUROSAT_URL = (
    "https://huggingface.co/datasets/torchgeo/eurosat/resolve/c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip"
)
EUROSAT_CHECKSUM = "md5:c8fa014336c82ac7804f0398fcb19387"

Rebalance = Literal["none", "class_weight", "oversample", "undersample", "augment"]
Profile = Literal["standard", "quick"]
PromotionMetric = Literal["accuracy", "balanced_accuracy", "macro_f1", "macro_auc"]
PredefinedSplit = Literal["auto", "ignore", "require"]
ImageFit = Literal["squash", "pad", "center_crop"]
SkipUnchanged = Literal["auto", "always", "never"]
Augment = Literal["auto", "aerial", "natural", "none"]

REBALANCE_STRATEGIES: tuple[str, ...] = get_args(Rebalance)
PROFILES: tuple[str, ...] = get_args(Profile)
PROMOTION_METRICS: tuple[str, ...] = get_args(PromotionMetric)
PREDEFINED_SPLITS: tuple[str, ...] = get_args(PredefinedSplit)
IMAGE_FITS: tuple[str, ...] = get_args(ImageFit)


def _augment_preset(value: Any) -> Any:
    """`augment` was a switch before it named a preset: true still means augment (auto), false none."""
    return {True: "auto", False: "none"}.get(value, value) if isinstance(value, bool) else value


def _class_list(value: Any) -> Any:
    """A form may send classes as 'Forest, River'; an empty list means all classes."""
    if isinstance(value, str):
        value = [c.strip() for c in value.split(",") if c.strip()]
    return None if isinstance(value, (list, tuple)) and not value else value


# Checks of single values, each with the message a user sees.
NOT_EMPTY = rule(str.strip, "must not be empty")
INSIDE_DATASET = rule(
    lambda d: not d.startswith(("/", "\\")) and ".." not in re.split(r"[/\\]", d),
    "{value!r} must name a folder inside the dataset, relative to its top and without '..' "
    "(e.g. 'train_set' or 'data/train')",
)
TWO_CLASSES = rule(lambda c: len(c) >= 2, "select at least 2 classes (or leave empty for all)")
DISTINCT_CLASSES = rule(lambda c: len(set(c)) == len(c), "contains a class twice")
POSITIVE_RATIOS = rule(lambda s: all(r > 0 for r in s), lambda s: f"{list(s)}: every ratio must be > 0")
SUMS_TO_ONE = rule(
    lambda s: math.isclose(sum(s), 1.0, abs_tol=1e-6),
    lambda s: f"{list(s)} sums to {sum(s):.4f}; the ratios must sum to 1",
)
DISTINCT_NAMES = rule(
    lambda e: len({spec.name for spec in e}) == len(e),
    lambda e: f"duplicate experiment names in {[spec.name for spec in e]}",
)
STORE_SCHEME = rule(lambda u: u.startswith(("file://", "s3://")), "{value!r} must start with file:// or s3://")

# Trigger-form sections (the Airflow Param `section`); fields without one come first, open.
DATA = {"section": "Data preparation"}
TRAINING = {"section": "Model and training"}
PROMOTION = {"section": "Promotion"}
RETRAINING = {"section": "Retraining"}
STORAGE = {"section": "Storage"}

# Overrides applied by `profile="quick"`: a few minutes on a laptop CPU.
QUICK_PROFILE: dict[str, Any] = {
    "max_images_per_class": 300,
    "classes_limit": 4,
    "image_size": 32,
    "epochs": 8,
    "min_images_per_class": 10,
    "filter_pattern_steps": 20,
}


class PipelineConfig(SettingsModel):
    """Everything a run needs. Defaults are the standard profile (the real job).

    The fields are in trigger-form order: the profile and the most-used settings first.
    """

    profile: Profile = Field(
        "standard",
        title="Profile",
        description=(
            "'quick' runs a few minutes on a laptop CPU (few classes, images and epochs); 'standard' is the real job. "
            "Quick sets "
            + ", ".join(f"{name} {value}" for name, value in QUICK_PROFILE.items())
            + ". In this form it changes only fields still at their standard default; in a settings file or "
            "make run, a value you give is kept."
        ),
    )
    dataset_url: Annotated[str, NOT_EMPTY] = Field(
        EUROSAT_URL,
        title="Dataset",
        description=(
            "Labelled images: http(s) URL, s3://bucket/key, or a local zip, tar(.gz) or folder with one sub-folder per "
            "class."
        ),
    )
    dataset_checksum: OptionalText = Field(
        EUROSAT_CHECKSUM,
        pattern=OPTIONAL_CHECKSUM_PATTERN,
        title="Dataset checksum",
        description="Optional 'sha256:<hex>' or 'md5:<hex>' of the "
        "archive; a mismatch stops the run. Leave empty when pointing at your own data.",
    )
    classes: Annotated[tuple[str, ...] | None, BeforeValidator(_class_list), TWO_CLASSES, DISTINCT_CLASSES] = Field(
        None, title="Classes", description="Subset of class-folder names to use; empty means all classes."
    )
    classes_limit: OptionalInt = Field(
        None,
        ge=2,
        title="Number of classes",
        description=("Keep only the first N classes (alphabetical) when no subset is given; empty means all classes."),
    )
    max_images_per_class: OptionalInt = Field(
        None,
        ge=10,
        title="Images per class (cap)",
        description="Seeded random sample per class; empty means all images.",
    )
    image_size: Int = Field(
        64,
        ge=16,
        le=512,
        title="Image size (px)",
        description="Images are resized to this square size before training.",
    )
    epochs: Int = Field(
        30,
        ge=1,
        le=1000,
        title="Epochs",
        description="Maximum epochs per training run (early stopping may end sooner).",
    )
    unlabelled_url: OptionalText = Field(
        None,
        title="Unlabelled images",
        description=(
            "Optional folder, archive or URL of images to classify with the champion model after training (writes "
            "predictions.csv)."
        ),
    )

    dataset_subdir: Annotated[OptionalText, INSIDE_DATASET] = Field(
        None,
        title="Sub-folder",
        json_schema_extra=DATA,
        description="Folder inside the archive that holds the class folders (e.g. train_set).",
    )
    predefined_split: PredefinedSplit = Field(
        "auto",
        title="Predefined split",
        json_schema_extra=DATA,
        description=(
            "What to do with train/val/test folders found in the dataset: 'auto' keeps a given test and validation split "
            "and carves what is missing from the training split; 'ignore' pools every labelled image and splits it by "
            "the split ratios; 'require' fails unless the dataset ships its own split."
        ),
    )
    min_images_per_class: Int = Field(
        50,
        ge=1,
        title="Minimum images per class",
        json_schema_extra=DATA,
        description="A class with fewer valid images stops the run.",
    )
    image_fit: ImageFit = Field(
        "squash",
        title="Image fit",
        json_schema_extra=DATA,
        description=(
            "How a non-square image becomes a square of image_size: 'squash' resizes it (distorting the aspect ratio), "
            "'pad' letterboxes it with black borders, 'center_crop' keeps the central square."
        ),
    )
    min_image_side: Int = Field(
        8,
        ge=1,
        le=4096,
        title="Minimum image side (px)",
        json_schema_extra=DATA,
        description="Images whose shorter side is below this are rejected (reason too_small).",
    )
    max_aspect_ratio: Float = Field(
        10.0,
        ge=1,
        le=1000,
        title="Maximum aspect ratio",
        json_schema_extra=DATA,
        description="Images whose longer side exceeds the shorter side this many times "
        "are rejected (reason extreme_aspect_ratio).",
    )
    split: Annotated[tuple[Float, ...], POSITIVE_RATIOS, SUMS_TO_ONE] = Field(
        (0.7, 0.2, 0.1),
        min_length=3,
        max_length=3,
        title="Split ratios",
        json_schema_extra=DATA,
        description="Train, validation and test fractions; must sum to 1.",
    )
    seed: Int = Field(
        42,
        ge=0,
        title="Seed",
        json_schema_extra=DATA,
        description=("Every random choice (split, shuffling, augmentation, initialisation) uses this seed."),
    )
    rebalance: Rebalance = Field(
        "augment",
        title="Rebalance strategy",
        json_schema_extra=DATA,
        description=(
            "How training and validation data are balanced for the 'balanced' variant; the test split is never touched."
        ),
    )

    experiments: Annotated[tuple[ExperimentSpec, ...], DISTINCT_NAMES] = Field(
        DEFAULT_EXPERIMENTS,
        min_length=1,
        title="Model experiments",
        json_schema_extra=TRAINING,
        description=(
            "Sequential CNN specs (>= 4 conv layers each); every experiment is trained on the unbalanced and on the "
            "balanced data."
        ),
    )
    early_stopping_patience: Int = Field(
        6,
        ge=1,
        le=100,
        title="Early-stopping patience",
        json_schema_extra=TRAINING,
        description="Epochs without validation-loss improvement before training "
        "stops and the best weights are restored.",
    )
    time_budget_minutes: OptionalFloat = Field(
        None,
        gt=0,
        le=7 * 24 * 60,
        title="Time budget per training (min)",
        json_schema_extra=TRAINING,
        description=(
            "Each training task ends at an epoch boundary before its epochs (validation included, all tries "
            "together) would pass this many minutes, and keeps its best epoch; empty means no budget."
        ),
    )
    augment: Annotated[Augment, BeforeValidator(_augment_preset)] = Field(
        "auto",
        title="Augmentation preset",
        json_schema_extra=TRAINING,
        description=(
            "Random changes to training batches, for the kind of images: 'aerial' (satellite, microscopy, textures: "
            "flips in both axes and 90-degree rotations, brightness and contrast), 'natural' (photos with an up: "
            "horizontal flip, random resized crop, colour jitter) or 'none'; 'auto' decides from the class names: "
            "'aerial' when most are satellite or aerial scene classes (EuroSAT, UC Merced, RESISC45), else 'natural'. "
            "The report's data section says which preset was used and why. Rebalance=augment's copies follow it too."
        ),
    )
    lr_range_test: StrictBool = Field(
        False,
        title="Learning-rate range test",
        json_schema_extra=TRAINING,
        description=(
            "After each experiment's single-batch check, sweep its learning rate from 1e-5 to 1 over 100 training "
            "batches and train with a tenth of the rate where the loss was lowest, instead of the spec's "
            "learning_rate (the peak rate under a cosine schedule)."
        ),
    )
    tta: StrictBool = Field(
        False,
        title="Test-time augmentation",
        json_schema_extra=TRAINING,
        description=(
            "Also score each model on the test split with its predictions averaged over the flips its augmentation "
            "preset trains with (aerial: 4 views, natural: 2), shown beside the plain scores; ensembles and "
            "promotion keep using the plain ones."
        ),
    )
    single_batch_steps: Int = Field(
        150,
        ge=10,
        le=5000,
        title="Single-batch check steps",
        json_schema_extra=TRAINING,
        description="Step budget for overfitting one batch before training.",
    )
    mixed_precision: StrictBool = Field(
        False,
        title="Mixed precision",
        json_schema_extra=TRAINING,
        description="float16 compute on a GPU (leave off on CPU).",
    )
    deterministic: StrictBool = Field(
        False,
        title="Deterministic ops",
        json_schema_extra=TRAINING,
        description="Bit-for-bit reproducible TensorFlow ops (slower).",
    )
    filter_pattern_steps: Int = Field(
        30,
        ge=1,
        le=500,
        title="Filter-pattern steps",
        json_schema_extra=TRAINING,
        description="Gradient-ascent steps per filter visualisation.",
    )

    model_name: OptionalText = Field(
        None,
        pattern=OPTIONAL_SLUG_PATTERN,
        title="Model name",
        json_schema_extra=PROMOTION,
        description=(
            "The line of champions this run competes in: runs with the same name compete, runs with different names "
            "never replace each other's champion. Empty: derived from the dataset's file or folder name "
            "(EuroSAT.zip: eurosat)."
        ),
    )
    new_lineage_on_class_change: StrictBool = Field(
        False,
        title="New classes start a new lineage",
        json_schema_extra=PROMOTION,
        description=(
            "When this run's classes differ from its champion's, let its model replace that champion if it passes the "
            "guards (the old champion stays in the history). Off: such a run is never promoted; the report says how "
            "the classes differ."
        ),
    )
    promotion_metric: PromotionMetric = Field(
        "macro_f1",
        title="Promotion metric",
        json_schema_extra=PROMOTION,
        description="Test metric a new model must beat the champion on.",
    )
    promotion_margin: Float = Field(
        0.0,
        ge=0,
        le=1,
        title="Promotion margin",
        json_schema_extra=PROMOTION,
        description="How much better (absolute) the new model must be to be promoted.",
    )
    promotion_min_accuracy: Float = Field(
        0.5,
        ge=0,
        le=1,
        title="Minimum accuracy to promote",
        json_schema_extra=PROMOTION,
        description="Guard: a model below this test accuracy is never promoted.",
    )

    export_tflite: StrictBool = Field(
        True,
        title="Export TFLite",
        json_schema_extra=PROMOTION,
        description=(
            "Also export a promoted champion as a float16 TFLite file (model.tflite) for phones and edge devices, "
            "beside its SavedModel."
        ),
    )

    min_unseen_test_images: Int = Field(
        30,
        ge=1,
        title="Minimum unseen test images",
        json_schema_extra=PROMOTION,
        description=(
            "Champion and candidate are compared only on this run's test images that neither trained or validated on; "
            "with fewer left, the comparison is refused and the candidate is not promoted."
        ),
    )

    skip_unchanged: SkipUnchanged = Field(
        "auto",
        title="Stop when nothing changed",
        json_schema_extra=RETRAINING,
        description=(
            "Stop right after ingest when the dataset's content and the model settings equal the champion's: 'auto' "
            "for scheduled and dataset-triggered runs (a manual run always trains), 'always', or 'never'."
        ),
    )
    drift_class_share_change: Float = Field(
        0.05,
        gt=0,
        le=1,
        title="Drift: class share change",
        json_schema_extra=RETRAINING,
        description="The report flags a class whose share of the images moved by more than this since the champion's data.",
    )
    drift_psi: Float = Field(
        0.2,
        gt=0,
        title="Drift: channel PSI",
        json_schema_extra=RETRAINING,
        description=(
            "The report flags a colour channel whose brightness distribution moved by a population stability index "
            "above this since the champion's data (0.1: moderate shift, 0.25: large)."
        ),
    )
    recompute: StrictBool = Field(
        False,
        title="Recompute data stages",
        json_schema_extra=RETRAINING,
        description=(
            "Compute download, split and rebalance afresh. Off: a stage whose input, settings and code equal an earlier "
            "run's copies that run's outputs (the report says which run)."
        ),
    )
    reuse_models: StrictBool = Field(
        False,
        title="Reuse trained models",
        json_schema_extra=RETRAINING,
        description=(
            "Copy a model an earlier run trained from the same data, experiment spec, seed and training settings "
            "instead of training it again."
        ),
    )

    store_uri: Annotated[str, STORE_SCHEME] = Field(
        "file://artifacts",
        title="Artifact store",
        json_schema_extra=STORAGE,
        description="file:///path or s3://bucket/prefix where every artifact and the report go.",
    )
    s3_endpoint_url: OptionalText = Field(
        None,
        title="S3 endpoint",
        json_schema_extra=STORAGE,
        description="For MinIO or another S3-compatible store; empty means AWS.",
    )
    aws_conn_id: str = Field(
        "aws_default",
        title="AWS connection id",
        json_schema_extra=STORAGE,
        description="Airflow connection holding the S3 credentials.",
    )

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None, given: set[str] | None = None) -> "PipelineConfig":
        """Build and validate a config; `profile` overrides apply under explicit values.

        `given` names the fields the user set (default: every key of `values`). The profile fills
        only the fields the user did not set: a value given (also one equal to the standard default,
        or empty, e.g. classes_limit: all classes) is kept. A trigger form gives every field, so
        there only values that differ from the standard defaults count as given.
        """
        try:
            return cls.model_validate(dict(values or {}), context={"given": given})
        except ValidationError as exc:
            raise config_error(exc, cls) from None

    @classmethod
    def from_json(cls, text: str) -> "PipelineConfig":
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def experiment(self, name: str) -> ExperimentSpec:
        for spec in self.experiments:
            if spec.name == name:
                return spec
        raise ConfigError("experiments", f"no experiment named {name!r}")

    # ---------------------------------------------------------------- validation
    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, values: Any, info: ValidationInfo) -> Any:
        """Fill the profile's settings under the user's; a missing or None value means the default."""
        if not isinstance(values, dict):
            return values
        given = (info.context or {}).get("given")
        given = set(values) if given is None else set(given)
        defaults = {name: f.default for name, f in cls.model_fields.items()}
        if given >= set(defaults):  # a form: every field is given
            given = {k for k in given if values.get(k) != defaults[k]}
        nullable = {name for name, f in cls.model_fields.items() if type(None) in get_args(f.annotation)}
        merged = {k: v for k, v in values.items() if v is not None or k in nullable or k not in defaults}
        merged["profile"] = merged.get("profile") or "standard"
        if merged["profile"] == "quick":
            for name, quick_value in QUICK_PROFILE.items():
                if name not in given and merged.get(name, defaults[name]) == defaults[name]:
                    merged[name] = quick_value
        if (
            merged.get("dataset_url", EUROSAT_URL) != EUROSAT_URL
            and merged.get("dataset_checksum", EUROSAT_CHECKSUM) == EUROSAT_CHECKSUM
        ):
            merged["dataset_checksum"] = None  # the pinned checksum belongs to the EuroSAT archive only
        return merged

    @model_validator(mode="after")
    def _downsampling_fits_the_image_size(self) -> "PipelineConfig":
        for i, spec in enumerate(self.experiments):
            check_downsampling(spec, self.image_size, f"experiments[{i}]")
        return self

    @model_validator(mode="after")
    def _tta_needs_augmentation(self) -> "PipelineConfig":
        if self.tta and self.augment == "none":
            raise ConfigError(
                "tta", "test-time augmentation averages over the flips training used, but augment is 'none'"
            )
        return self


# ------------------------------------------------------------------------------ the trigger form
def field_schemas(defaults: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Each field's JSON schema (type, enum, bounds, title, description, default, section), in form order.

    From `PipelineConfig.model_json_schema()`, flattened for the Airflow trigger form: pydantic's
    `anyOf [X, null]` becomes `type: [X, "null"]`, nested models become plain objects. `defaults`
    replace the defaults (deployment settings).
    """
    schemas = {}
    for name, schema in PipelineConfig.model_json_schema()["properties"].items():
        options = schema.pop("anyOf", None)
        if options:
            (value,) = [option for option in options if option.get("type") != "null"]
            schema = {**value, **schema, "type": [value["type"], "null"]}
        if "$ref" in schema.get("items", {}):
            schema["items"] = {"type": "object"}
        if name in (defaults or {}):
            schema["default"] = defaults[name]
        schemas[name] = schema
    return schemas

"""The configuration: defaults, profiles, coercion from form values, and errors naming the field."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from cnn_tasks.config import PipelineConfig, field_schemas
from cnn_tasks.experiments import DEFAULT_EXPERIMENTS, ConvBlock, ExperimentSpec
from cnn_tasks.fields import ConfigError


def test_defaults_are_the_standard_profile():
    config = PipelineConfig.from_dict({})
    assert config.profile == "standard"
    assert config.split == (0.7, 0.2, 0.1)
    assert config.image_size == 64
    assert config.classes is None
    assert config.max_images_per_class is None
    assert [e.name for e in config.experiments] == ["baseline", "strided_elu", "separable_swish"]
    first = config.experiments[0]
    assert (first.activation, first.optimizer, first.batch_size) == ("relu", "adam", 32)
    assert all(len(e.conv) >= 4 for e in DEFAULT_EXPERIMENTS)


def test_quick_profile_fills_fields_left_at_defaults_but_keeps_user_values():
    form = PipelineConfig().to_dict() | {"profile": "quick", "epochs": 5}
    config = PipelineConfig.from_dict(form)
    assert config.epochs == 5  # changed by the user: kept
    assert config.image_size == 32
    assert config.max_images_per_class == 300
    assert config.classes_limit == 4


def test_a_value_given_equal_to_the_standard_default_is_kept_under_the_quick_profile():
    config = PipelineConfig.from_dict({"profile": "quick", "epochs": 30, "image_size": 64})
    assert (config.epochs, config.image_size) == (30, 64)  # typed by the user: kept
    assert config.max_images_per_class == 300  # not given: the profile fills it
    # Airflow passes every Param; the run's conf (what make run sends) says which the user gave.
    params = PipelineConfig().to_dict() | {"profile": "quick"}
    assert PipelineConfig.from_dict(params, given={"profile", "epochs"}).epochs == 30
    assert PipelineConfig.from_dict(params, given={"profile"}).epochs == 8


def test_the_form_says_which_fields_the_quick_profile_changes():
    description = field_schemas()["profile"]["description"]
    assert "Quick sets max_images_per_class 300, classes_limit 4, image_size 32, epochs 8" in description
    assert "a value you give is kept" in description


def test_an_explicit_empty_value_wins_over_the_quick_profile():
    config = PipelineConfig.from_dict({"profile": "quick", "classes_limit": None})
    assert config.classes_limit is None  # "all classes", said explicitly
    assert config.max_images_per_class == 300  # not given: the profile fills it
    assert PipelineConfig.from_dict({"profile": "quick"}).classes_limit == 4
    # Airflow passes every Param; the run's conf says which of them the user gave.
    params = PipelineConfig().to_dict() | {"profile": "quick"}
    assert PipelineConfig.from_dict(params, given={"profile", "classes_limit"}).classes_limit is None
    assert PipelineConfig.from_dict(params, given={"profile"}).classes_limit == 4


def test_json_round_trip_and_form_strings():
    config = PipelineConfig.from_dict({"classes": "Forest, River", "dataset_subdir": "  ", "image_size": "48"})
    assert config.classes == ("Forest", "River")
    assert config.dataset_subdir is None
    assert config.image_size == 48
    assert PipelineConfig.from_json(config.to_json()) == config


def test_form_values_pydantic_would_otherwise_read_loosely():
    config = PipelineConfig.from_dict({"max_aspect_ratio": "2.5", "seed": 7.0, "classes": [], "epochs": None})
    assert config.max_aspect_ratio == 2.5
    assert config.seed == 7
    assert config.classes is None  # an empty list means all classes
    assert config.epochs == 30  # None for a field that cannot be empty means its default
    for values, field in (
        ({"epochs": True}, "epochs"),
        ({"promotion_margin": False}, "promotion_margin"),
        ({"classes_limit": True}, "classes_limit"),
    ):
        with pytest.raises(ConfigError, match="is not a number") as err:
            PipelineConfig.from_dict(values)
        assert err.value.field == field
    for value in ("true", 1, "yes"):  # booleans are true or false, not words or numbers
        with pytest.raises(ConfigError, match="must be true or false"):
            PipelineConfig.from_dict({"deterministic": value})


def test_settings_are_frozen_and_reject_unknown_fields():
    config = PipelineConfig.from_dict({})
    with pytest.raises(ValidationError):
        config.epochs = 3  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ConvBlock(filters=8, dilation=2)
    assert hash(config) == hash(PipelineConfig.from_dict({}))


@pytest.mark.parametrize(
    "values, field, message",
    [
        ({"split": [0.6, 0.2, 0.1]}, "split", "sums to 0.9000"),
        ({"split": [0.7, 0.3]}, "split", "three ratios"),
        ({"image_size": 8}, "image_size", "outside 16..512"),
        ({"image_size": 32.5}, "image_size", "whole number"),
        ({"rebalance": "smote"}, "rebalance", "not one of"),
        ({"epochs": 0}, "epochs", "outside 1..1000"),
        ({"time_budget_minutes": 0}, "time_budget_minutes", r"0 is outside \(0, 10080\]"),
        ({"tta": True, "augment": "none"}, "tta", "but augment is 'none'"),
        ({"time_budget_minutes": True}, "time_budget_minutes", "not a number"),
        ({"classes": ["Forest"]}, "classes", "at least 2"),
        ({"dataset_checksum": "md5:xyz"}, "dataset_checksum", "must look like"),
        ({"store_uri": "ftp://x"}, "store_uri", "file:// or s3://"),
        ({"profile": "huge"}, "profile", "not one of"),
        ({"augment": "yes"}, "augment", "'yes' is not one of 'auto', 'aerial', 'natural' or 'none'"),
        ({"epoch": 3}, "epoch", "unknown setting"),
        ({"experiments": []}, "experiments", "at least one"),
        ({"experiments": [{"name": "a", "conv": [{"filters": 8}] * 3}]}, "experiments[0].conv", "at least 4"),
        (
            {"experiments": [{"name": "a", "conv": [{"filters": 8}] * 4, "activation": "nope"}]},
            "experiments[0].activation",
            "not one of",
        ),
        (
            {"experiments": [{"name": "a", "conv": [{"filters": 8, "pool": "mean"}] * 4}]},
            "experiments[0].conv[0].pool",
            "not one of",
        ),
        ({"experiments": [{"name": "A b", "conv": [{"filters": 8}] * 4}]}, "experiments[0].name", "lowercase"),
        ({"experiments": [{"conv": [{"filters": 8}] * 4}]}, "experiments[0].name", "is required"),
        ({"dataset_subdir": "/usr"}, "dataset_subdir", "inside the dataset"),
        ({"dataset_subdir": "../../.."}, "dataset_subdir", "without '..'"),
        ({"dataset_subdir": "data/../../x"}, "dataset_subdir", "without '..'"),
        (
            {
                "experiments": [
                    {"name": "a", "conv": [{"filters": 8}, {"filters": 8}, {"filters": 4096}, {"filters": 8}]}
                ]
            },
            "experiments[0].conv[2].filters",
            r"^experiments\[0\]\.conv\[2\]\.filters: 4096 is outside 1\.\.2048$",
        ),
        (
            {"experiments": [{"name": "a", "conv": [{"filters": 8}] * 4, "dropout": 1}]},
            "experiments[0].dropout",
            r"1 is outside \[0, 1\)",
        ),
        (
            {"experiments": [{"name": "a", "conv": [{"filters": 8}] * 4, "learning_rate": 0}]},
            "experiments[0].learning_rate",
            r"0 is outside \(0, 10\]",
        ),
        (
            {"experiments": [{"name": "a", "conv": [{"filters": 8}] * 4, "momentum": 0.9}]},
            "experiments[0].momentum",
            "unknown setting; known: name, description, conv",
        ),
        (
            {"experiments": [{"name": "a", "conv": [{"kernel_size": 3}] * 4}]},
            "experiments[0].conv[0].filters",
            "is required",
        ),
        ({"experiments": [{"name": "a", "conv": [{"filters": 8}] * 4}] * 2}, "experiments", "duplicate"),
        ({"experiments": ["baseline"]}, "experiments[0]", "must be an object"),
        ({"classes": ["Forest", "Forest"]}, "classes", "twice"),
        ({"classes": ["Forest", 3]}, "classes[1]", "must be text"),
        ({"classes_limit": 1}, "classes_limit", "1 must be >= 2"),
        ({"image_size": "big"}, "image_size", "not a valid int"),
        ({"split": [0.8, 0.2, 0.0]}, "split", "every ratio must be > 0"),
        ({"dataset_url": " "}, "dataset_url", "must not be empty"),
        ({"model_name": "My Photos"}, "model_name", "'My Photos': use 1-40 lowercase letters"),
        ({"skip_unchanged": "sometimes"}, "skip_unchanged", "not one of"),
        ({"min_unseen_test_images": 0}, "min_unseen_test_images", "0 must be >= 1"),
        ({"drift_psi": 0}, "drift_psi", "0 must be > 0"),
        ({"recompute": "yes"}, "recompute", "must be true or false"),
    ],
)
def test_invalid_values_name_the_field(values, field, message):
    with pytest.raises(ConfigError, match=message) as err:
        PipelineConfig.from_dict(values)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


def test_dataset_subdir_inside_the_dataset_is_accepted():
    assert PipelineConfig.from_dict({"dataset_subdir": "data/train_set"}).dataset_subdir == "data/train_set"
    assert PipelineConfig.from_dict({"dataset_subdir": "."}).dataset_subdir == "."


def test_custom_experiment_from_json():
    config = PipelineConfig.from_dict(
        {
            "experiments": [
                {
                    "name": "tiny",
                    "conv": [{"filters": 8, "pool": "max"}] * 4,
                    "batch_size": "16",
                    "learning_rate": "0.01",
                }
            ]
        }
    )
    spec = config.experiment("tiny")
    assert spec.batch_size == 16
    assert spec.learning_rate == 0.01
    assert spec.conv[0].pool == "max"


def test_field_schemas_describe_every_field_for_the_trigger_form():
    schemas = field_schemas({"store_uri": "s3://bucket/x"})
    assert set(schemas) == set(PipelineConfig().to_dict())
    for name, schema in schemas.items():
        assert schema["title"], name
        assert schema["description"], name
    assert schemas["store_uri"]["default"] == "s3://bucket/x"
    assert schemas["rebalance"]["enum"] == ["none", "class_weight", "oversample", "undersample", "augment"]
    assert (schemas["image_size"]["minimum"], schemas["image_size"]["maximum"]) == (16, 512)
    assert schemas["classes"]["type"] == ["array", "null"]  # pydantic's anyOf [array, null], flattened


def test_field_schemas_are_flat_and_grouped_for_the_trigger_form():
    schemas = field_schemas()
    assert list(schemas)[0] == "profile"  # the profile and the most-used fields first, without a section
    assert not any("section" in schemas[name] for name in ("profile", "dataset_url", "image_size", "epochs"))
    sections = [schema.get("section") for schema in schemas.values()]
    assert list(dict.fromkeys(sections)) == [
        None,
        "Data preparation",
        "Model and training",
        "Promotion",
        "Retraining",
        "Storage",
    ]
    assert sections == sorted(sections, key=list(dict.fromkeys(sections)).index)  # each section in one block
    for name, schema in schemas.items():
        assert "anyOf" not in schema, name
        assert "$ref" not in str(schema), name
    assert schemas["classes_limit"]["type"] == ["integer", "null"]
    assert schemas["classes_limit"]["minimum"] == 2
    assert schemas["experiments"]["items"] == {"type": "object"}
    assert schemas["experiments"]["default"] == PipelineConfig().to_dict()["experiments"]
    assert (schemas["split"]["minItems"], schemas["split"]["maxItems"]) == (3, 3)
    assert schemas["split"]["items"] == {"type": "number"}


def test_the_form_sees_the_patterns_and_blank_still_means_unset():
    schemas = field_schemas()
    for name, good, bad in (
        ("dataset_checksum", "md5:" + "0" * 32, "md5:xyz"),
        ("model_name", "photos-2", "My Photos"),
    ):
        pattern = schemas[name]["pattern"]  # Airflow checks Params with Python's re (jsonschema), the UI with JS
        assert re.search(pattern, good), name
        assert re.search(pattern, ""), name
        assert not re.search(pattern, bad), name
    config = PipelineConfig.from_dict({"dataset_checksum": " ", "model_name": ""})
    assert (config.dataset_checksum, config.model_name) == (None, None)


def test_every_experiment_field_is_described():
    for model in (ExperimentSpec, ConvBlock):
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name}"
    assert "pattern" in ExperimentSpec.model_json_schema()["properties"]["name"]


def test_the_augmentation_preset_auto_stays_auto_until_the_data_decides():
    assert PipelineConfig.from_dict({}).augment == "auto"  # rebalance decides from the class names
    assert PipelineConfig.from_dict({"dataset_url": "/data/eurosat.zip"}).augment == "auto"
    assert PipelineConfig.from_dict({"dataset_url": "/data/tiles.zip", "augment": "aerial"}).augment == "aerial"
    form = {name: schema["default"] for name, schema in field_schemas().items()}
    assert form["augment"] == "auto"
    # settings files from before the presets: true still augments (auto), false does not
    assert PipelineConfig.from_dict({"dataset_url": "/data/photos.zip", "augment": True}).augment == "auto"
    assert PipelineConfig.from_dict({"augment": False}).augment == "none"


def test_the_pinned_eurosat_checksum_is_dropped_for_another_dataset():
    from cnn_tasks.config import EUROSAT_CHECKSUM

    form = PipelineConfig().to_dict() | {"dataset_url": "/data/my_images.zip"}
    assert PipelineConfig.from_dict(form).dataset_checksum is None
    assert PipelineConfig.from_dict({}).dataset_checksum == EUROSAT_CHECKSUM
    # Given alone, another dataset also drops the pinned checksum (it failed the download before).
    assert PipelineConfig.from_dict({"dataset_url": "/data/my_images.zip"}).dataset_checksum is None
    mine = "sha256:" + "a" * 64
    assert PipelineConfig.from_dict(form | {"dataset_checksum": mine}).dataset_checksum == mine


def test_too_many_downsamplings_for_the_image_size_fail_before_any_work():
    five_pools = [{"filters": 8, "pool": "max"}] * 5
    with pytest.raises(ConfigError, match="pool5 needs a feature map of at least 2x2") as err:
        PipelineConfig.from_dict({"image_size": 16, "experiments": [{"name": "tiny", "conv": five_pools}]})
    assert err.value.field == "experiments[0].conv[4].pool"
    assert PipelineConfig.from_dict({"image_size": 32, "experiments": [{"name": "tiny", "conv": five_pools}]})

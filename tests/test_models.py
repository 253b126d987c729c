"""Model builder: contract layer names, every spec option honoured, invalid specs rejected."""

from __future__ import annotations

import numpy as np
import pytest

from cnn_tasks import models
from cnn_tasks.config import PipelineConfig
from cnn_tasks.experiments import DEFAULT_EXPERIMENTS, ConvBlock, ExperimentSpec
from cnn_tasks.fields import ConfigError

MEAN, STD = [120.0, 110.0, 100.0], [50.0, 40.0, 30.0]


def tiny_spec(**changes) -> ExperimentSpec:
    spec = ExperimentSpec(
        name="tiny",
        description="test",
        conv=(
            ConvBlock(filters=4),
            ConvBlock(filters=4, pool="max"),
            ConvBlock(filters=8),
            ConvBlock(filters=8, pool="max"),
        ),
        dense_units=8,
    )
    return spec.model_copy(update=changes)


def layers_of(model, kind: str) -> list:
    return [layer for layer in model.layers if type(layer).__name__ == kind]


@pytest.mark.parametrize("spec", DEFAULT_EXPERIMENTS, ids=lambda s: s.name)
def test_default_experiments_follow_the_layer_contract(spec):
    model = models.build_model(spec, num_classes=5, image_size=32, mean=MEAN, std=STD)
    names = [layer.name for layer in model.layers]
    assert names[0] == "standardize"
    assert type(model.layers[0]).__name__ == "Normalization"
    convs = [layer for layer in model.layers if layer.name.startswith("conv")]
    assert len(convs) == len(spec.conv) >= 4
    assert [c.name for c in convs] == [f"conv{i}" for i in range(1, len(spec.conv) + 1)]
    kinds = ["SeparableConv2D" if block.separable else "Conv2D" for block in spec.conv]
    assert [type(c).__name__ for c in convs] == kinds
    assert kinds[0] == "Conv2D"
    assert all(c.get_config()["activation"] == "linear" for c in convs)
    assert {f"act{i}" for i in range(1, len(spec.conv) + 1)} <= set(names)
    assert names[-1] == "softmax"
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"
    assert tuple(model.output_shape) == (None, 5)
    assert spec.description


def test_standardize_layer_holds_training_statistics():
    model = models.build_model(tiny_spec(), 3, 16, MEAN, STD)
    pixels = np.broadcast_to(np.array(MEAN, np.float32) + np.array(STD, np.float32), (1, 16, 16, 3))
    np.testing.assert_allclose(model.get_layer("standardize")(pixels), np.ones((1, 16, 16, 3)), rtol=1e-5)


def test_activation_batch_norm_and_l2_are_honoured():
    model = models.build_model(tiny_spec(activation="elu", batch_norm=False, l2=0.01), 3, 16, MEAN, STD)
    assert {model.get_layer(f"act{i}").get_config()["activation"] for i in range(1, 5)} == {"elu"}
    assert not layers_of(model, "BatchNormalization")
    assert all(c.use_bias for c in layers_of(model, "Conv2D"))
    assert model.get_layer("conv1").kernel_regularizer.get_config()["l2"] == pytest.approx(0.01)
    with_bn = models.build_model(tiny_spec(l2=0.0), 3, 16, MEAN, STD)
    assert len(layers_of(with_bn, "BatchNormalization")) == 4
    assert with_bn.get_layer("conv1").kernel_regularizer is None


def test_pooling_strides_and_kernel_sizes_are_honoured():
    conv = (
        ConvBlock(filters=4, kernel_size=5),
        ConvBlock(filters=4, pool="average"),
        ConvBlock(filters=8, strides=2),
        ConvBlock(filters=8, pool="max"),
    )
    model = models.build_model(tiny_spec(conv=conv), 3, 16, MEAN, STD)
    assert model.get_layer("conv1").kernel_size == (5, 5)
    assert type(model.get_layer("pool2")).__name__ == "AveragePooling2D"
    assert type(model.get_layer("pool4")).__name__ == "MaxPooling2D"
    assert model.get_layer("conv3").strides == (2, 2)
    assert tuple(model.get_layer("act4").output.shape) == (None, 4, 4, 8)
    assert tuple(model.get_layer("pool4").output.shape) == (None, 2, 2, 8)


def test_separable_blocks_are_depthwise_separable_and_cheaper():
    separable = tuple(
        ConvBlock(filters=b.filters, pool=b.pool, separable=i > 0) for i, b in enumerate(tiny_spec().conv)
    )
    model = models.build_model(tiny_spec(conv=separable, l2=0.01), 3, 16, MEAN, STD)
    full = models.build_model(tiny_spec(l2=0.01), 3, 16, MEAN, STD)
    assert [type(model.get_layer(f"conv{i}")).__name__ for i in range(1, 5)] == ["Conv2D"] + ["SeparableConv2D"] * 3
    conv4 = model.get_layer("conv4")
    assert conv4.depthwise_regularizer.get_config()["l2"] == pytest.approx(0.01)
    assert conv4.pointwise_regularizer.get_config()["l2"] == pytest.approx(0.01)
    assert not conv4.use_bias  # batch norm follows
    # 3x3 depthwise (8 x 9) + pointwise (8 x 8) weights instead of 8 x 8 x 9
    assert conv4.count_params() == 8 * 9 + 8 * 8 < full.get_layer("conv4").count_params() == 8 * 8 * 9
    assert tuple(model.get_layer("pool4").output.shape) == tuple(full.get_layer("pool4").output.shape)


def test_a_separable_first_layer_is_rejected_naming_the_field():
    conv = [{"filters": 8, "separable": True}] + [{"filters": 8}] * 3
    with pytest.raises(ConfigError, match="first layer must be a full convolution") as info:
        PipelineConfig.from_dict({"experiments": [{"name": "sep", "conv": conv}]})
    assert info.value.field == "experiments[0].conv"


@pytest.mark.parametrize(
    "head,layer",
    [("flatten", "Flatten"), ("global_average", "GlobalAveragePooling2D"), ("global_max", "GlobalMaxPooling2D")],
)
def test_head_types(head, layer):
    model = models.build_model(tiny_spec(head=head), 3, 16, MEAN, STD)
    assert len(layers_of(model, layer)) == 1


def test_dropout_and_spatial_dropout():
    model = models.build_model(tiny_spec(dropout=0.4, spatial_dropout=0.2, dense_units=6), 3, 16, MEAN, STD)
    assert [d.rate for d in layers_of(model, "Dropout")] == [0.4, 0.4]
    assert [d.name for d in layers_of(model, "SpatialDropout2D")] == ["sdrop2", "sdrop4"]
    assert model.get_layer("dense").units == 6
    plain = models.build_model(tiny_spec(dropout=0.0), 3, 16, MEAN, STD)
    assert not layers_of(plain, "Dropout")
    assert not layers_of(plain, "SpatialDropout2D")


def test_too_many_downsamplings_are_rejected_naming_the_layer():
    conv = tuple(ConvBlock(filters=4, pool="max") for _ in range(5))
    with pytest.raises(ConfigError, match=r"pool5") as info:
        models.build_model(tiny_spec(conv=conv), 3, 16, MEAN, STD)
    assert info.value.field == "tiny.conv[4].pool"
    strided = tuple(ConvBlock(filters=4, strides=4) for _ in range(4))
    with pytest.raises(ConfigError, match=r"conv3 cannot downsample") as info:
        models.build_model(tiny_spec(conv=strided), 3, 16, MEAN, STD)
    assert info.value.field == "tiny.conv[2].strides"


def test_invalid_specs_are_rejected_by_the_config_naming_the_field():
    base = {"name": "bad", "conv": [{"filters": 8}] * 4}
    for change, field in (
        ({"conv": [{"filters": 8}] * 3}, "experiments[0].conv"),
        ({"activation": "sigmoidish"}, "experiments[0].activation"),
        ({"head": "dense"}, "experiments[0].head"),
        ({"conv": [{"filters": 8, "pool": "min"}] * 4}, "experiments[0].conv[0].pool"),
    ):
        with pytest.raises(ConfigError) as info:
            PipelineConfig.from_dict({"experiments": [{**base, **change}]})
        assert info.value.field == field
    with pytest.raises(ConfigError, match="classes"):
        models.build_model(tiny_spec(), 1, 16, MEAN, STD)


def test_saved_model_loads_with_safe_mode_and_describe_lists_layers(tmp_path):
    model = models.build_model(tiny_spec(), 3, 16, MEAN, STD)
    model.save(tmp_path / "model.keras")
    loaded = models.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), rtol=1e-5)
    table = models.describe(loaded)
    assert table["layers"][0] == {
        "name": "standardize",
        "type": "Normalization",
        "output_shape": [None, 16, 16, 3],
        "params": 0,
    }
    assert table["total_params"] == model.count_params() == sum(r["params"] for r in table["layers"])

"""The layers of a Keras classifier that the visualisations look at: its conv layers and the ends of
their units (conv -> batch norm -> activation), its pooling layers, the layer that scores the
classes, and sub-models from the input to any of them that share the trained weights.

Used by `cnn_tasks.visualize` (feature maps, kernels, Grad-CAM) and `cnn_tasks.filter_patterns`.
Nested sub-models are not searched.
"""

from __future__ import annotations


def conv_layers(model) -> list:
    """The model's Conv2D and SeparableConv2D layers, in order (nested sub-models are not searched)."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D))]


def full_conv_layers(model) -> list:
    """The model's (full) Conv2D layers: the ones with colour kernels."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def require_conv_layers(model, model_id: str | None = None) -> None:
    """Reject models these pictures cannot explain."""
    if not full_conv_layers(model):
        raise ValueError(
            f"model {model_id or model.name!r} has no Conv2D layers: there are no filters, "
            "feature maps or kernels to visualise (nested sub-models are not searched)"
        )


def conv_unit_outputs(model) -> list[str]:
    """For each conv layer, the layer that ends its unit: its activation when one follows
    (conv<i> -> bn<i> -> act<i> gives act<i>), else the Conv2D itself."""
    import keras

    unit_tail = (
        keras.layers.BatchNormalization,
        keras.layers.Activation,
        keras.layers.ReLU,
        keras.layers.LeakyReLU,
        keras.layers.ELU,
        keras.layers.PReLU,
    )
    names, layers = [], model.layers
    for i, layer in enumerate(layers):
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.SeparableConv2D)):
            shown = layer
            for follower in layers[i + 1 :]:
                if not isinstance(follower, unit_tail):
                    break
                if not isinstance(follower, keras.layers.BatchNormalization):
                    shown = follower
            names.append(shown.name)
    return names


def pooling_layers(model) -> list[str]:
    """Names of the 2D pooling layers (global pooling excluded: it has no maps)."""
    import keras

    pooling = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
    return [layer.name for layer in model.layers if isinstance(layer, pooling)]


def feature_layers(model) -> list[str]:
    """The layers whose outputs are shown as feature maps: conv units and pooling, in model order."""
    shown = set(conv_unit_outputs(model)) | set(pooling_layers(model))
    return [layer.name for layer in model.layers if layer.name in shown]


def input_size(model) -> tuple[int, int]:
    """(height, width) the model takes."""
    return tuple(int(d) for d in model.inputs[0].shape[1:3])


def sub_model(model, layer_names: list[str]):
    """A model from the input to the outputs of `layer_names`, sharing the trained weights."""
    import keras

    if not isinstance(model, keras.Sequential):
        return keras.Model(inputs=model.inputs[0], outputs=[model.get_layer(name).output for name in layer_names])
    # A loaded Sequential's layers hold several graph nodes, and `layer.output` (the first) is not
    # the one `model.outputs` grows from: chain the layers once more on a fresh input instead.
    inputs = keras.Input(model.inputs[0].shape[1:])
    x, tensors = inputs, {}
    for layer in model.layers:
        x = tensors[layer.name] = layer(x)
        if set(layer_names) <= set(tensors):
            break  # nothing past the last requested layer is needed
    return keras.Model(inputs=inputs, outputs=[tensors[name] for name in layer_names])


def class_score_layer(model) -> str:
    """The layer that scores the classes: the logits before a final softmax Activation layer when
    there is one (a saturated softmax has zero gradient), else the output layer."""
    import keras

    last = model.layers[-1]
    is_softmax = getattr(getattr(last, "activation", None), "__name__", "") == "softmax"
    if isinstance(last, keras.layers.Activation) and is_softmax and len(model.layers) > 1:
        return model.layers[-2].name
    return last.name

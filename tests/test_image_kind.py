"""`augment: auto` decided from the data: overhead imagery (any copy or subset of EuroSAT, the other
remote-sensing benchmarks) trains with the 'aerial' preset, photos with 'natural', and the reason
says which names decided it."""

from __future__ import annotations

import pytest

from cnn_tasks.image_kind import resolve_augment
from tests.helpers import EUROSAT_CLASSES as EUROSAT


@pytest.mark.parametrize(
    "classes",
    [
        EUROSAT,
        EUROSAT[:4],  # the quick profile's first four classes
        ["sea_lake", "annual crop", "forest"],  # another spelling of the same names
        ["agricultural", "denseresidential", "forest", "parkinglot", "runway", "beach"],  # UC Merced
    ],
    ids=["eurosat", "eurosat-subset", "spelled-otherwise", "uc-merced"],
)
def test_overhead_scene_classes_train_with_the_aerial_preset(classes):
    preset, why = resolve_augment("auto", classes)
    assert preset == "aerial"
    assert f"of {len(classes)} class names" in why


@pytest.mark.parametrize(
    "classes",
    [
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],  # CIFAR-10
        ["tench", "English springer", "cassette player", "chain saw", "church", "French horn", "garbage truck"],
        ["beach", "mountain", "desert", "lake"],  # landscape photos share names with aerial scenes, none only theirs
        ["cats", "dogs"],
    ],
    ids=["cifar10", "imagenette", "landscapes", "pets"],
)
def test_other_classes_train_as_photos_that_keep_their_up(classes):
    preset, why = resolve_augment("auto", classes)
    assert preset == "natural"
    assert "set augment to 'aerial' for overhead or microscopy images" in why


@pytest.mark.parametrize("setting", ["aerial", "natural", "none"])
def test_a_preset_that_is_set_is_used_whatever_the_classes(setting):
    assert resolve_augment(setting, EUROSAT) == (setting, f"augment is set to '{setting}'")

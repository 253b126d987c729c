"""What `augment: auto` means for a dataset, decided from its class names.

Overhead imagery (satellite and aerial scenes) has no "up": every flip and 90-degree rotation of
a tile is another valid tile, so it trains with the 'aerial' preset. Photos keep their up, so
anything else trains with 'natural'. The data says which: when most class names are scene
classes of the public overhead-imagery benchmarks (EuroSAT, UC Merced Land Use, NWPU-RESISC45,
AID) and at least one is a name photos do not use (like 'SeaLake' or 'parking lot'), the dataset
is aerial. That holds for any copy of EuroSAT (a URL, a local zip, a folder, a subset of its classes) and for the other benchmarks, and a photo dataset that shares a name or
two with them (CIFAR-10's airplane and ship) stays natural. `augment` set to a preset always wins.
"""

from __future__ import annotations

import re

# Scene classes of the overhead-imagery benchmarks: names only overhead imagery uses, and names
# photos use too (a beach, a lake, a ship). Letters only, lower case.
_OVERHEAD_ONLY = """
annualcrop herbaceousvegetation industrial pasture permanentcrop residential sealake highway agricultural
baseballdiamond chaparral denseresidential freeway golfcourse intersection mediumresidential mobilehomepark
overpass parkinglot runway sparseresidential storagetanks storagetank tenniscourt basketballcourt
circularfarmland commercialarea groundtrackfield industrialarea railwaystation rectangularfarmland roundabout
seaice snowberg thermalpowerstation bareland farmland commercial parking viaduct
"""
_ALSO_IN_PHOTOS = """
forest river airplane beach buildings harbor airport bridge church cloud desert island lake meadow mountain
palace railway ship stadium terrace wetland center park playground pond port school square
"""
OVERHEAD_ONLY = frozenset(_OVERHEAD_ONLY.split())
OVERHEAD_SCENES = OVERHEAD_ONLY | frozenset(_ALSO_IN_PHOTOS.split())


def _normalised(name: str) -> str:
    """'Sea_Lake', 'sea lake' and 'SeaLake' alike: lower case, letters only."""
    return re.sub(r"[^a-z]", "", name.lower())


def resolve_augment(setting: str, classes: list[str]) -> tuple[str, str]:
    """(preset, why) for the `augment` setting and the dataset's class names."""
    if setting != "auto":
        return setting, f"augment is set to '{setting}'"
    scenes = [c for c in classes if _normalised(c) in OVERHEAD_SCENES]
    distinct = any(_normalised(c) in OVERHEAD_ONLY for c in classes)
    if distinct and len(scenes) * 2 > len(classes):
        shown = ", ".join(scenes[:4]) + (", ..." if len(scenes) > 4 else "")
        return "aerial", (
            f"augment 'auto': {len(scenes)} of {len(classes)} class names ({shown}) are overhead-imagery scene "
            "classes, so the tiles are flipped and turned in every direction"
        )
    return "natural", (
        "augment 'auto': the class names do not look like satellite or aerial scenes, so the images are treated "
        "as photos that keep their up (horizontal flips only); set augment to 'aerial' for overhead or "
        "microscopy images"
    )

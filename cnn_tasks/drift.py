"""Data drift: a profile of each run's accepted images, and its comparison with the data the
champion was trained on.

The split stage writes the profile (data/profile.json) from the manifest, without decoding an
image again: class shares, image sizes, a fine histogram of each image's mean red, green and blue,
and the share of files rejected. Promotion keeps a copy beside the champion; the report compares
this run's profile with the champion's and flags:

- a class whose share of the images moved by more than `drift_class_share_change` (absolute),
  and classes that appeared or disappeared;
- a channel whose population stability index (PSI, over the champion's deciles) exceeds
  `drift_psi` (0.1 is usually read as a moderate shift, 0.25 as a large one);
- median image width or height changed by more than a quarter;
- a rejected share that rose by more than 5 points.

Library module: no stage logic.
"""

from __future__ import annotations

import math

import numpy as np

CHANNELS = ("r", "g", "b")
FINE_BINS = 256  # one per intensity level of a channel mean: deciles are cut from these
DECILES = 10
SIZE_CHANGE = 0.25
REJECTED_RISE = 0.05
PSI_FLOOR = 1e-4  # an empty bin counts as this share, so the logarithm stays finite


def profile(manifest, ingest: dict) -> dict:
    """The profile of one run's accepted images (manifest.csv as a DataFrame) and its rejections."""
    counts = manifest["class"].value_counts()
    classes = list(ingest.get("classes") or sorted(counts.index))
    total = int(len(manifest))
    pixels = manifest["pixels"].astype(float).clip(lower=1)
    histograms = {}
    for channel in CHANNELS:
        means = (manifest[f"sum_{channel}"].astype(float) / pixels).clip(0, 255)
        hist, _ = np.histogram(means, bins=FINE_BINS, range=(0, 256))
        histograms[channel] = hist.tolist()
    rejected = int(ingest.get("rejected") or 0)
    return {
        "images": total,
        "class_counts": {c: int(counts.get(c, 0)) for c in classes},
        "class_shares": {c: round(int(counts.get(c, 0)) / total, 6) if total else 0.0 for c in classes},
        "width": _quantiles(manifest["width"]),
        "height": _quantiles(manifest["height"]),
        "channel_mean_histograms": histograms,
        "rejected": rejected,
        "rejected_share": round(rejected / (total + rejected), 6) if total + rejected else 0.0,
    }


def _quantiles(values) -> dict:
    values = np.asarray(values, dtype=float)
    return {name: float(np.quantile(values, q)) for name, q in (("p10", 0.1), ("median", 0.5), ("p90", 0.9))}


def psi(reference: list[int], current: list[int]) -> float:
    """Population stability index of `current` against `reference` (fine histograms over the same
    bins), over the reference's deciles: sum of (cur - ref) * ln(cur / ref) per decile."""
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if ref.sum() == 0 or cur.sum() == 0:
        return math.nan
    cumulative = np.cumsum(ref) / ref.sum()
    # The fine bins where each decile of the reference ends; repeated edges (a spike) merge.
    ends = np.unique(np.searchsorted(cumulative, np.arange(1, DECILES) / DECILES, side="left"))
    edges = [0, *[e + 1 for e in ends if e + 1 < len(ref)], len(ref)]
    ref_share = np.array([ref[a:b].sum() for a, b in zip(edges, edges[1:])]) / ref.sum()
    cur_share = np.array([cur[a:b].sum() for a, b in zip(edges, edges[1:])]) / cur.sum()
    ref_share, cur_share = np.maximum(ref_share, PSI_FLOOR), np.maximum(cur_share, PSI_FLOOR)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def compare(current: dict, reference: dict, max_share_change: float, max_psi: float) -> dict:
    """{"classes": rows, "channels": rows, "sizes": rows, "rejected": row, "flags": [sentences]}."""
    flags = []
    classes = list(dict.fromkeys([*reference["class_shares"], *current["class_shares"]]))
    class_rows = []
    for name in classes:
        before, after = reference["class_shares"].get(name), current["class_shares"].get(name)
        change = (after or 0.0) - (before or 0.0)
        flagged = before is None or after is None or abs(change) > max_share_change
        class_rows.append(
            {"class": name, "champion's data": before, "this run": after, "change": change, "flag": flagged}
        )
        if before is None:
            flags.append(f"class {name!r} is new: the champion never saw it")
        elif after is None:
            flags.append(f"class {name!r} is gone from this run's data")
        elif flagged:
            flags.append(f"class {name!r} went from {before:.1%} to {after:.1%} of the images")
    channel_rows = []
    for channel in CHANNELS:
        value = psi(reference["channel_mean_histograms"][channel], current["channel_mean_histograms"][channel])
        flagged = bool(value > max_psi)
        channel_rows.append({"channel": channel, "PSI": value, "flag": flagged})
        if flagged:
            flags.append(f"the {channel} channel's brightness shifted (PSI {value:.2f} > {max_psi})")
    size_rows = []
    for side in ("width", "height"):
        before, after = reference[side]["median"], current[side]["median"]
        change = after / before - 1 if before else math.nan
        flagged = bool(abs(change) > SIZE_CHANGE)
        size_rows.append(
            {"median": side, "champion's data": before, "this run": after, "change": change, "flag": flagged}
        )
        if flagged:
            flags.append(f"the median image {side} went from {before:g} to {after:g} px")
    rise = current["rejected_share"] - reference["rejected_share"]
    rejected = {
        "champion's data": reference["rejected_share"],
        "this run": current["rejected_share"],
        "flag": rise > REJECTED_RISE,
    }
    if rejected["flag"]:
        flags.append(
            f"{current['rejected_share']:.1%} of the files were rejected, against {reference['rejected_share']:.1%} "
            "for the champion's data"
        )
    return {"classes": class_rows, "channels": channel_rows, "sizes": size_rows, "rejected": rejected, "flags": flags}

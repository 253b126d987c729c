"""Split + analysis: a seeded stratified train/validation/test split and a description of it.

Reads data/manifest.csv (never the pixels, except a few samples for the grid) and writes
  data/split.csv       key, class, label, split ("train" | "val" | "test"), given_split (the
                       dataset's own split of the image, empty when it ships none)
  data/analysis.json   counts per split and class, imbalance measures and a written conclusion,
                       shortfalls against the reference minimums, image sizes, the training
                       split's channel mean/std (for normalisation), the layout found and
                       where each split came from ("origin"), "figures"
  data/figures/*.png   class counts (the splits side by side), class shares (one pie, or one per
                       split when their mixes differ), image sizes (only when they differ: else
                       the report says the one size in a sentence), sample grid

Predefined splits (config.predefined_split, manifest column `given_split` written by download):
`auto` keeps a given test split as the test split and a given validation split as the validation
split, and carves what is missing from the given training split, class by class and seeded, in
the proportions of config.split (with a given test split, validation gets round(n x 0.2/0.9) of
each class's training images for split 0.7/0.2/0.1); `ignore` and datasets without given splits
get the stratified split of every image by config.split; `require` is enforced by download.
"""

from __future__ import annotations

import io
import logging
import math
from collections import Counter

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from cnn_tasks import drift, plots
from cnn_tasks.data import SPLIT_NAMES, SPLITS, read_csv
from cnn_tasks.errors import PipelineError

log = logging.getLogger(__name__)

# Per-class minimums of the reference setup; shortfalls are reported, not fatal.
REFERENCE_MINIMUMS = {"train": 1000, "val": 300, "test": 60}
SAMPLES_PER_CLASS = 4

_STRATEGY_TEXT = {
    "none": "no rebalancing: the models see the class mix as it is",
    "class_weight": "class weights (N / (C x n_class)) in the loss for training and as sample weights for "
    "validation; the images themselves are unchanged",
    "oversample": "random oversampling: minority classes of training and validation are topped up with "
    "exact copies to the size of the largest class",
    "undersample": "random undersampling: every class of training and validation is cut to the size of the "
    "smallest class",
    "augment": "augmented oversampling: minority classes of training and validation are topped up to the "
    "size of the largest class with randomly augmented copies (small brightness/contrast changes, and "
    "the flips or rotations the augmentation preset allows)",
}


class SplitError(PipelineError, ValueError):
    """The data cannot be split as configured (a class too small, or leakage between splits)."""


def run(ctx) -> dict:
    """Split the manifest, check for leakage, analyse the splits and draw the figures."""
    cfg = ctx.config
    manifest = read_csv(ctx, "manifest.csv")
    ingest = ctx.store.get_json(ctx.data_key("ingest.json"))
    classes = ingest["classes"]  # label order
    table, origin = assign_splits(manifest, cfg.split, cfg.seed, cfg.predefined_split)
    assert_no_leakage(table)
    ctx.store.put_text(
        ctx.data_key("split.csv"), table[["key", "class", "label", "split", "given_split"]].to_csv(index=False)
    )

    counts = {s: class_counts(table[table["split"] == s], classes) for s in SPLITS}
    imbalance = {s: imbalance_measures(counts[s]) for s in SPLITS}
    mean, std = channel_stats(table[table["split"] == "train"])
    shortfalls = find_shortfalls(counts)
    analysis = {
        "classes": classes,
        "split_ratios": list(cfg.split),
        "seed": cfg.seed,
        "layout": layout_summary(ingest.get("layout") or {}),
        "origin": origin,
        "counts": counts,
        "totals": {s: sum(counts[s].values()) for s in SPLITS},
        "imbalance": imbalance,
        "rebalance": cfg.rebalance,
        "conclusion": conclusion(imbalance, cfg.rebalance),
        "reference_minimums": REFERENCE_MINIMUMS,
        "shortfalls": shortfalls,
        "shortfall_text": shortfall_text(shortfalls),
        "image_sizes": {s: size_summary(table[table["split"] == s]) for s in SPLITS},
        "mean": mean,
        "std": std,
        "no_leakage": True,
    }
    analysis["figures"] = draw_figures(ctx, table, counts, classes)
    ctx.store.put_json(ctx.data_key("profile.json"), drift.profile(manifest, ingest))  # compared for drift
    ctx.store.put_json(ctx.data_key("analysis.json"), analysis)
    log.info("split %s; %s", analysis["totals"], analysis["conclusion"])
    return {
        "totals": analysis["totals"],
        "split": ctx.data_key("split.csv"),
        "analysis": ctx.data_key("analysis.json"),
        "figures": len(analysis["figures"]),
    }


# ================================================================== splitting
def split_sizes(n: int, ratios) -> tuple[int, int, int]:
    """(train, val, test) sizes for a class of n images; validation and test get at least one."""
    n_val = max(1, math.floor(n * ratios[1] + 0.5))
    n_test = max(1, math.floor(n * ratios[2] + 0.5))
    return n - n_val - n_test, n_val, n_test


def stratified_split(manifest: pd.DataFrame, ratios, seed: int) -> pd.DataFrame:
    """Assign each image to a split, class by class; the same seed gives the same split."""
    parts = []
    for label, group in sorted(manifest.groupby("label"), key=lambda item: item[0]):
        group = group.sort_values("key")  # independent of manifest order
        n_train, n_val, n_test = split_sizes(len(group), ratios)
        name = group["class"].iloc[0]
        if n_train < 1:
            raise SplitError(
                f"class {name!r} has {len(group)} images: too few for the split "
                f"{list(ratios)} with at least one image in each of train, validation and test; "
                "add images, raise min_images_per_class or drop the class"
            )
        order = np.random.default_rng([seed, int(label)]).permutation(len(group))
        names = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
        group = group.iloc[order].assign(split=names)
        parts.append(group)
    return pd.concat(parts, ignore_index=True)


def assign_splits(manifest: pd.DataFrame, ratios, seed: int, policy: str = "auto") -> tuple[pd.DataFrame, dict]:
    """The split table and, per split, where its images came from (given or carved)."""
    given = manifest["given_split"].fillna("") if "given_split" in manifest else pd.Series("", manifest.index)
    manifest = manifest.assign(given_split=given.astype(str))
    present = [s for s in SPLITS if (manifest["given_split"] == s).any()]
    ratio_text = "/".join(f"{r:g}" for r in ratios)
    if policy == "ignore" or not present:
        why = "predefined_split=ignore pools the given splits" if present else "the dataset ships no split"
        text = f"carved from all labelled images ({why}): stratified {ratio_text} per class, seed {seed}"
        return stratified_split(manifest, ratios, seed), dict.fromkeys(SPLITS, text)
    return predefined_split(manifest, ratios, seed)


def predefined_split(manifest: pd.DataFrame, ratios, seed: int) -> tuple[pd.DataFrame, dict]:
    """Keep the given val/test splits; carve the missing ones from the given training images."""
    present = {s for s in SPLITS if (manifest["given_split"] == s).any()}
    if "train" not in present:
        raise SplitError(
            f"the dataset's given splits ({', '.join(sorted(present))}) have no training split; "
            "set predefined_split=ignore to pool every labelled image"
        )
    carve = [s for s in ("val", "test") if s not in present]
    share = {"val": ratios[1], "test": ratios[2]}
    base = ratios[0] + sum(share[s] for s in carve)  # the carved splits' share of the given training images
    fractions = {s: share[s] / base for s in carve}
    parts = []
    for label, group in sorted(manifest.groupby("label"), key=lambda item: item[0]):
        name = group["class"].iloc[0]
        held = group[group["given_split"].isin(["val", "test"])]
        train = group[~group["given_split"].isin(["val", "test"])].sort_values("key")
        sizes = {s: max(1, math.floor(len(train) * f + 0.5)) for s, f in fractions.items()}
        n_train = len(train) - sum(sizes.values())
        if n_train < 1:
            raise SplitError(
                f"class {name!r} has {len(train)} images in the given training split: too few to "
                f"carve {' and '.join(carve)} from it and keep at least one training image; add "
                "images, or set predefined_split=ignore"
            )
        order = np.random.default_rng([seed, int(label)]).permutation(len(train))
        names = ["train"] * n_train + [s for s in carve for _ in range(sizes[s])]
        parts.append(train.iloc[order].assign(split=names))
        parts.append(held.assign(split=held["given_split"]))
        for s in present - {"train"}:
            if not (held["given_split"] == s).any():
                raise SplitError(
                    f"class {name!r} has no valid images in the dataset's given {s} split (see "
                    "rejected.csv); add images, or set predefined_split=ignore to pool every "
                    "labelled image"
                )
    table = pd.concat(parts, ignore_index=True)
    origin = {
        "train": "given training split" + (f", less the images carved for {' and '.join(carve)}" if carve else "")
    }
    for s in ("val", "test"):
        origin[s] = (
            f"given {SPLIT_NAMES[s]} split"
            if s in present
            else f"carved from the given training split: {fractions[s]:.4g} of each class "
            f"({share[s]:g}/{base:g} of the split ratios), stratified, seed {seed}"
        )
    return table, origin


def layout_summary(layout: dict) -> dict:
    """What the report says about the dataset's layout (from ingest.json)."""
    keys = ("kind", "wrapper", "splits", "unlabelled", "mapping_file", "warnings", "predefined_split", "loose_files")
    return {k: layout[k] for k in keys if k in layout}


def assert_no_leakage(table: pd.DataFrame) -> None:
    """Every image key sits in exactly one split (ingest removed duplicates; check anyway)."""
    repeated = table["key"][table["key"].duplicated()]
    if len(repeated):
        raise SplitError(
            f"leakage: {len(repeated)} image keys appear more than once (e.g. {repeated.iloc[0]}); "
            "the manifest should hold each image once"
        )
    keys = {s: set(table.loc[table["split"] == s, "key"]) for s in SPLITS}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if keys[a] & keys[b]:
            raise SplitError(f"leakage: {len(keys[a] & keys[b])} images are in both {a} and {b}")


# ================================================================== analysis
def class_counts(part: pd.DataFrame, classes: list[str]) -> dict[str, int]:
    counts = part["class"].value_counts()
    return {c: int(counts.get(c, 0)) for c in classes}


def imbalance_measures(counts: dict[str, int]) -> dict:
    """Max/min class ratio and normalised entropy (1.0 = perfectly balanced)."""
    values = np.array(list(counts.values()), dtype=float)
    total = values.sum()
    p = values[values > 0] / total
    entropy = float(-(p * np.log(p)).sum() / math.log(len(values))) if len(values) > 1 else 1.0
    largest, smallest = max(counts, key=counts.get), min(counts, key=counts.get)
    ratio = counts[largest] / counts[smallest] if counts[smallest] else math.inf
    return {
        "max_min_ratio": round(ratio, 3),
        "normalised_entropy": round(entropy, 4),
        "largest": largest,
        "largest_count": counts[largest],
        "smallest": smallest,
        "smallest_count": counts[smallest],
        "severity": severity(ratio),
    }


def severity(ratio: float) -> str:
    if ratio < 1.2:
        return "balanced"
    if ratio < 2:
        return "mild"
    if ratio < 5:
        return "moderate"
    return "severe"


def _describe(split: str, m: dict) -> str:
    return (
        f"The {SPLIT_NAMES[split]} split ranges from {m['smallest_count']} ({m['smallest']}) to "
        f"{m['largest_count']} ({m['largest']}) images per class: max/min ratio "
        f"{m['max_min_ratio']:.2f}, normalised entropy {m['normalised_entropy']:.3f} "
        f"(1 = perfectly balanced): {_VERDICTS[m['severity']]}."
    )


_VERDICTS = {
    "balanced": "balanced",
    "mild": "a mild imbalance",
    "moderate": "a moderate imbalance",
    "severe": "a severe imbalance",
}


def conclusion(imbalance: dict, strategy: str) -> str:
    """The written diagnosis for the report: the numbers, the verdict and the chosen fix."""
    text = [_describe("train", imbalance["train"]), _describe("val", imbalance["val"])]
    if imbalance["train"]["severity"] == "balanced" and strategy != "none":
        text.append("The classes are close to balanced, so rebalancing changes little.")
    elif imbalance["train"]["severity"] != "balanced" and strategy == "none":
        text.append("Left unfixed, a model can favour the larger classes; compare per-class recall.")
    text.append(
        f"Chosen fix (rebalance={strategy!r}): {_STRATEGY_TEXT[strategy]}. Every model is trained "
        "on both the unbalanced and the balanced variant so the effect can be measured."
    )
    text.append(
        _describe("test", imbalance["test"]) + " The test split is not rebalanced, so test "
        "metrics reflect the real class mix."
    )
    return " ".join(text)


def find_shortfalls(counts: dict[str, dict[str, int]]) -> list[dict]:
    return [
        {"split": s, "class": c, "count": n, "minimum": REFERENCE_MINIMUMS[s]}
        for s in SPLITS
        for c, n in counts[s].items()
        if n < REFERENCE_MINIMUMS[s]
    ]


def shortfall_text(shortfalls: list[dict]) -> str:
    minimums = ", ".join(f"{SPLIT_NAMES[s]} >= {n}" for s, n in REFERENCE_MINIMUMS.items())
    if not shortfalls:
        return f"Every class meets the reference minimums per class ({minimums})."
    by_split = []
    for s in SPLITS:
        rows = [f"{r['class']} ({r['count']})" for r in shortfalls if r["split"] == s]
        if rows:
            by_split.append(f"{SPLIT_NAMES[s]} (minimum {REFERENCE_MINIMUMS[s]}): {', '.join(rows)}")
    return (
        f"{len(shortfalls)} class/split counts fall short of the reference minimums per class "
        f"({minimums}): " + "; ".join(by_split) + ". Results on such small splits are noisy; use "
        "more images (max_images_per_class) for conclusions."
    )


def channel_stats(train: pd.DataFrame) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (0-255 scale) of the training pixels, from the manifest sums."""
    pixels = float(train["pixels"].astype("int64").sum())
    mean = [float(train[f"sum_{c}"].astype(float).sum()) / pixels for c in "rgb"]
    sq = [float(train[f"sumsq_{c}"].astype(float).sum()) / pixels for c in "rgb"]
    std = [math.sqrt(max(s - m * m, 0.0)) for s, m in zip(sq, mean)]
    return [round(m, 4) for m in mean], [round(s, 4) for s in std]


def size_summary(part: pd.DataFrame) -> dict:
    sizes = Counter(zip(part["width"].astype(int), part["height"].astype(int)))
    return {
        "width": {
            "min": int(part["width"].min()),
            "median": float(part["width"].median()),
            "max": int(part["width"].max()),
        },
        "height": {
            "min": int(part["height"].min()),
            "median": float(part["height"].median()),
            "max": int(part["height"].max()),
        },
        "most_common": [[w, h, n] for (w, h), n in sizes.most_common(5)],
    }


# ================================================================== figures
SHARE_TOLERANCE = 0.02  # class shares of the splits within 2 points of each other: one share chart


def draw_figures(ctx, table: pd.DataFrame, counts: dict, classes: list[str]) -> list[dict]:
    """Class counts (one chart, the splits side by side), class shares (one chart when the splits
    share them, else one pie per split), image sizes (only when they differ) and sample images."""
    figures = [counts_bars(ctx, counts), counts_shares(ctx, counts)]
    if not uniform_size(table):
        figures.append(size_histograms(ctx, table))
    figures.append(sample_grid(ctx, table, classes))
    return figures


def uniform_size(table: pd.DataFrame) -> tuple[int, int] | None:
    """(width, height) when every image has that size; None when sizes differ."""
    sizes = set(zip(table["width"].astype(int), table["height"].astype(int)))
    return next(iter(sizes)) if len(sizes) == 1 else None


def shares_differ(counts: dict) -> bool:
    """Whether some class's share of its split differs by more than SHARE_TOLERANCE between splits."""
    shares = np.array([[n / max(sum(c.values()), 1) for n in c.values()] for c in counts.values()])
    return bool((shares.max(axis=0) - shares.min(axis=0)).max() > SHARE_TOLERANCE)


def counts_bars(ctx, counts: dict) -> dict:
    """Images per class, the three splits side by side, each split's reference minimum as a
    dashed line in its colour when it is within reach of the bars (else said in the title)."""
    classes, splits = list(counts[SPLITS[0]]), [s for s in SPLITS if s in counts]
    fig, ax = plots.new_figure(max(7, 0.9 * len(classes) + 2.5), 4.8)
    width = 0.8 / len(splits)
    x = np.arange(len(classes))
    far = []
    for i, split in enumerate(splits):
        values = [counts[split][c] for c in classes]
        bars = ax.bar(x + (i - (len(splits) - 1) / 2) * width, values, width, label=SPLIT_NAMES[split])
        ax.bar_label(bars, fontsize=8)
        minimum = REFERENCE_MINIMUMS[split]
        if minimum <= 1.5 * max(max(c.values()) for c in counts.values()):
            ax.axhline(minimum, color=bars.patches[0].get_facecolor(), linestyle="--", linewidth=1)
        else:  # a line far above the bars would flatten them: say it instead
            far.append(f"{SPLIT_NAMES[split]} {minimum}")
    ax.set_xticks(x, classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_ylabel("images")
    sizes = ", ".join(f"{SPLIT_NAMES[s]} {sum(counts[s].values())}" for s in splits)
    title = f"Images per class and split\n({sizes} images)"
    if far:
        title += "\nfar below the reference minimum per class:\n" + ", ".join(far)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    key = plots.save_figure(ctx.store, ctx.data_key("figures", "counts_per_split.png"), fig)
    return plots.figure_entry(
        key,
        "Images per class in the training, validation and test splits side by side; dashed lines are the reference "
        "minimums per class, in each split's colour, where the bars come near them.",
    )


def counts_shares(ctx, counts: dict) -> dict:
    """The share of each class: one pie when every split has the same shares (within
    SHARE_TOLERANCE, as a stratified split gives), else one pie per split side by side."""
    splits = [s for s in SPLITS if s in counts]
    differ = shares_differ({s: counts[s] for s in splits})
    shown = splits if differ else ["all"]
    fig, axes = plots.new_figure(5.5 * len(shown), 5.5, ncols=len(shown), squeeze=False)
    for ax, split in zip(axes[0], shown):
        values = counts[split] if split != "all" else {c: sum(counts[s][c] for s in splits) for c in counts[splits[0]]}
        ax.pie(
            list(values.values()),
            labels=list(values),
            autopct="%1.1f%%",
            startangle=90,
            counterclock=False,
            textprops={"fontsize": 9},
        )
        ax.set_title(
            "Every split: share of each class" if split == "all" else f"{SPLIT_NAMES[split].capitalize()} split"
        )
    key = plots.save_figure(ctx.store, ctx.data_key("figures", "counts_shares.png"), fig)
    caption = (
        "Share of each class in each split: the splits' class mixes differ by more than "
        f"{SHARE_TOLERANCE:.0%} somewhere."
        if differ
        else f"Share of each class, the same in every split (within {SHARE_TOLERANCE:.0%}): one chart for all."
    )
    return plots.figure_entry(key, caption)


def size_histograms(ctx, table: pd.DataFrame) -> dict:
    fig, axes = plots.new_figure(10, 4, ncols=2)
    for ax, dim in zip(axes, ("width", "height")):
        data = [table.loc[table["split"] == s, dim].astype(int) for s in SPLITS]
        low, high = min(d.min() for d in data), max(d.max() for d in data)
        bins = np.linspace(low - 0.5, high + 0.5, min(40, high - low + 1) + 1)
        ax.hist(data, bins=bins, label=[SPLIT_NAMES[s] for s in SPLITS], stacked=True)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel(f"{dim} (pixels)")
        ax.set_ylabel("images")
        ax.set_title(f"Image {dim}")
        ax.legend(fontsize=8)
    key = plots.save_figure(ctx.store, ctx.data_key("figures", "image_sizes.png"), fig)
    return plots.figure_entry(
        key,
        f"Distribution of image widths and heights (stacked by split) before resizing to {ctx.config.image_size} px.",
    )


def sample_grid(ctx, table: pd.DataFrame, classes: list[str], cell: int = 64) -> dict:
    """The first few training images of each class in shard order (a seeded random choice),
    tiled into one mosaic (one row per class) so the figure stays cheap with many classes."""
    from PIL import Image

    train = table[table["split"] == "train"].sort_values(["shard", "index"])
    picks = train.groupby("class", sort=False).head(SAMPLES_PER_CLASS)
    encoded = read_images(ctx, picks)
    pad = 2
    mosaic = np.full((len(classes) * (cell + pad), SAMPLES_PER_CLASS * (cell + pad), 3), 255, np.uint8)
    for row, name in enumerate(classes):
        for col, key in enumerate(picks.loc[picks["class"] == name, "key"]):
            image = Image.open(io.BytesIO(encoded[key])).convert("RGB").resize((cell, cell), Image.NEAREST)
            y, x = row * (cell + pad), col * (cell + pad)
            mosaic[y : y + cell, x : x + cell] = np.asarray(image)
    fig, ax = plots.new_figure(1.2 * SAMPLES_PER_CLASS + 2, 1.2 * len(classes) + 0.6)
    ax.imshow(mosaic)
    ax.set_yticks([r * (cell + pad) + cell / 2 for r in range(len(classes))], classes, fontsize=8)
    ax.set_xticks([])
    ax.set_title("Sample training images per class")
    key = plots.save_figure(ctx.store, ctx.data_key("figures", "samples.png"), fig)
    return plots.figure_entry(
        key,
        f"{SAMPLES_PER_CLASS} training images per class, as validated (RGB, "
        "EXIF orientation applied), one row per class.",
    )


def read_images(ctx, rows: pd.DataFrame) -> dict[str, bytes]:
    """Encoded bytes of the manifest `rows` (columns shard, index, key), read from the clean shards."""
    import tensorflow as tf

    found = {}
    for shard, group in rows.groupby("shard"):
        wanted = dict(zip(group["index"].astype(int), group["key"]))
        for i, raw in enumerate(tf.data.TFRecordDataset(str(ctx.cached(shard))).take(max(wanted) + 1)):
            if i in wanted:
                example = tf.train.Example.FromString(raw.numpy())
                found[wanted[i]] = example.features.feature["image"].bytes_list.value[0]
    return found

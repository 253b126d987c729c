"""The report's tables and sentences, from the stage JSONs as plain dicts: where the dataset's
splits came from, the split stage's numbers (one sentence instead of a table when there is
nothing to tell apart: one image size, every split balanced, every split made the same way), how
the experiments differ, one line per single-batch check and per trained model, the layers with
dead channels. Library module: the report stage's section functions call these and the templates
render what they return.
"""

from __future__ import annotations

from cnn_tasks import SPLIT_NAMES, SPLITS, leaderboard
from cnn_tasks.leaderboard import duration, fmt


# ----------------------------------------------------------------------------- template helpers
def is_flat(value) -> bool:
    """A list of scalars: fits in one table cell as 'a, b, c'."""
    return isinstance(value, (list, tuple)) and all(not isinstance(v, (dict, list, tuple)) for v in value)


def is_records(value) -> bool:
    """A non-empty list of dicts: a table."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def columns_of(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def kv_rows(values: dict) -> list[dict]:
    return [{"name": k, "value": v} for k, v in values.items()]


LONG_LIST = 8  # flat lists longer than this (per-step losses) are folded, not spelt out in the table


def fields(values: dict, skip: tuple = ("figures",)) -> dict:
    """A stage JSON split for display: scalars and short flat lists in one name/value table
    (`plain`), long flat lists folded (`long`), each nested value under its own heading (`nested`)."""
    shown = {k: v for k, v in values.items() if k not in skip}
    flat = {k: v for k, v in shown.items() if not isinstance(v, (dict, list)) or is_flat(v)}
    long = {k.replace("_", " "): v for k, v in flat.items() if isinstance(v, (list, tuple)) and len(v) > LONG_LIST}
    return {
        "plain": {k: v for k, v in flat.items() if k.replace("_", " ") not in long},
        "long": long,
        "nested": {k.replace("_", " "): v for k, v in shown.items() if k not in flat},
    }


# ----------------------------------------------------------------------------- tables and sentences


def layout_part(analysis: dict) -> dict | None:
    """Which dataset layout was found, where each split's images came from (given or carved)."""
    found = analysis.get("layout") or {}
    if not found:
        return None
    where = f" below {found['wrapper']}/" if found.get("wrapper") else ""
    text = f"Layout found: {found.get('kind', '?')}{where} (predefined_split={found.get('predefined_split', 'auto')})."
    if found.get("splits"):
        text += (
            " Given splits: " + ", ".join(f"{s} = {found['splits'][s]}/" for s in SPLITS if s in found["splits"]) + "."
        )
    if found.get("mapping_file"):
        text += f" Class names read from {found['mapping_file']}."
    totals = analysis.get("totals", {})
    notes = []
    if found.get("splits"):
        notes.append(
            "Identical images in two given splits would leak held-out images into training: only the "
            "copy in the most held-out split (test, then validation, then training) is kept, the "
            "others are listed in rejected.csv as duplicate_across_splits."
        )
    notes += [
        f"{entry['folder']}/ holds {entry['files']} unlabelled files: they are not training data and are "
        "predicted with the champion unless unlabelled_url is set (see Predictions)."
        for entry in found.get("unlabelled", [])
    ]
    warns = list(found.get("warnings", []))
    if found.get("loose_files"):
        warns.insert(
            0,
            f"{len(found['loose_files'])} file(s) lay beside the class folders, outside any class: "
            "listed in rejected.csv as not_in_a_class_folder.",
        )
    return {
        "text": text,
        "notes": notes,
        "warnings": warns,
        "origins": origins(analysis.get("origin") or {}, totals),
    }


def origins(origin: dict, totals: dict) -> list[dict] | str:
    """Where each split's images came from: a table, or one sentence when every split came the same way."""
    splits = [s for s in SPLITS if s in origin]
    if len(splits) > 1 and len({origin[s] for s in splits}) == 1:
        counts = ", ".join(f"{SPLIT_NAMES[s]} {totals.get(s, '-')}" for s in splits)
        return f"Every split was {origin[splits[0]]} ({counts} images)."
    return [{"split": SPLIT_NAMES[s], "images come from": origin[s], "images": totals.get(s, "-")} for s in splits]


def analysis_tables(analysis: dict) -> dict:
    """The split stage's numbers as tables a person reads: counts, imbalance, sizes, channels."""
    splits = [s for s in SPLITS if s in analysis["counts"]]
    short = {(row["class"], row["split"]) for row in analysis.get("shortfalls", [])}
    counts = [
        {
            "class": c,
            **{SPLIT_NAMES[s]: f"{analysis['counts'][s][c]}{' *' if (c, s) in short else ''}" for s in splits},
            "total": sum(analysis["counts"][s][c] for s in splits),
        }
        for c in analysis["classes"]
    ]
    imbalance = balanced_sentence(analysis["imbalance"]) or [
        {
            "split": SPLIT_NAMES[s],
            "largest class": f"{m['largest']} ({m['largest_count']})",
            "smallest class": f"{m['smallest']} ({m['smallest_count']})",
            "max/min ratio": m["max_min_ratio"],
            "normalised entropy": m["normalised_entropy"],
            "verdict": m["severity"],
        }
        for s, m in analysis["imbalance"].items()
    ]
    sizes = size_sentence(analysis["image_sizes"]) or [
        {
            "split": SPLIT_NAMES[s],
            "width min/median/max": _range(d["width"]),
            "height min/median/max": _range(d["height"]),
            "most common size": "{}x{} ({} images)".format(*d["most_common"][0]) if d.get("most_common") else "-",
        }
        for s, d in analysis["image_sizes"].items()
    ]
    channels = [
        {"channel": name, "mean": m, "std": sd} for name, m, sd in zip("RGB", analysis["mean"], analysis["std"])
    ]
    leakage = (
        "No image appears in more than one split (checked by content hash)."
        if analysis.get("no_leakage")
        else "Leakage check did not pass."
    )
    return {
        "counts": counts,
        "short": bool(short),
        "imbalance": imbalance,
        "sizes": sizes,
        "channels": channels,
        "leakage": leakage,
    }


def balanced_sentence(imbalance: dict) -> str | None:
    """One sentence instead of the imbalance table when every split is balanced."""
    if not imbalance or any(m.get("severity") != "balanced" for m in imbalance.values()):
        return None
    worst = max(m["max_min_ratio"] for m in imbalance.values())
    return f"Every split is balanced (largest/smallest class at most {worst:.2f})."


def size_sentence(image_sizes: dict) -> str | None:
    """'All 80 images are 28 x 28 px.' when every image of every split has one size (the split
    stage then draws no size histogram); None when sizes differ."""
    parts = [d for d in image_sizes.values() if d.get("most_common")]
    found = {tuple(d["most_common"][0][:2]) for d in parts}
    if not parts or len(found) != 1 or any(len(d["most_common"]) != 1 for d in parts):
        return None
    (width, height), images = found.pop(), sum(d["most_common"][0][2] for d in parts)
    return f"All {images} images are {width} x {height} px."


def _range(d: dict) -> str:
    return f"{d['min']} / {fmt(d['median'])} / {d['max']}"


def spec_differences(specs) -> dict[str, list[dict]]:
    """For each experiment, the settings that differ from the first (reference) experiment."""
    if not specs:
        return {}
    reference = specs[0].model_dump()
    out = {}
    for spec in specs:
        values = spec.model_dump()
        out[spec.name] = [
            {"setting": k, specs[0].name: _short(reference[k]), spec.name: _short(v)}
            for k, v in values.items()
            if k not in ("name", "description") and v != reference[k]
        ]
    return out


def _short(value) -> str:
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], dict):
        return " ".join(
            f"{b['filters']}/{b['kernel_size']}x{b['kernel_size']}/s{b['strides']}"
            + (f"+{b['pool']}" if b["pool"] != "none" else "")
            for b in value
        )
    return str(value)


def model_summary(meta: dict, max_epochs: int) -> str:
    """'685,411 parameters; 2 of 8 epochs (stopped early), best 2; trained in 1 min 57 s': the folded model's title."""
    why = leaderboard.STOPPED_BY.get(meta.get("stopped_by"))
    return (
        f"{meta.get('params', 0):,} parameters; {meta.get('epochs_run')} of {max_epochs} epochs"
        + (f" ({why})" if why else "")
        + f", best {meta.get('best_epoch')}; trained in {duration(meta.get('train_time_s'))}"
    )


def check_line(check: dict, lr_fields: dict) -> str:
    """'Passed: loss 0.0165 after 4 of 150 steps on one batch of 32 (tolerance 0.05).' (+ the range test's rate)."""
    text = (
        f"{'Passed' if check.get('passed') else 'Failed'}: loss {fmt(check.get('loss'))} after {check.get('steps')} "
        f"of {check.get('max_steps')} steps on one batch of {check.get('batch_size')} "
        f"(tolerance {fmt(check.get('loss_tolerance'))})."
    )
    if "learning_rate" in lr_fields:
        text += f" Learning-rate range test: trains with {lr_fields['learning_rate']:g}"
        text += f" (the spec says {lr_fields['spec_learning_rate']:g})." if "spec_learning_rate" in lr_fields else "."
    return text


def dead_layers(dead) -> list[dict]:
    """The layers with dead channels ({layer: {dead, total}} in viz.json): none is one sentence, no table."""
    rows = dead if isinstance(dead, list) else [{"layer": k, **v} for k, v in (dead or {}).items()]
    return [r for r in rows if isinstance(r, dict) and r.get("dead")]


def tta_columns(metrics: dict) -> dict:
    """Test accuracy and macro-F1 with test-time augmentation, beside the plain scores (config.tta)."""
    tta = metrics.get("tta")
    if not tta:
        return {}
    views = len(tta["views"])
    return {
        f"test accuracy, TTA {views} views": tta["test"]["accuracy"],
        f"test macro_f1, TTA {views} views": tta["test"]["macro_f1"],
    }

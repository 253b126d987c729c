"""Download + validate: fetch the labelled dataset, clean it, and pack it into shards.

`run(ctx)` fetches the source (`cnn_tasks.sources`), finds the class folders, validates every image once
(`cnn_tasks.images`), removes duplicates and writes

  data/manifest.csv        one row per accepted image (key, class, size, mode, channel sums, shard)
  data/rejected.csv        every rejected or dropped file with its reason
  data/ingest.json         counts (by class, by reason), classes, shard keys
  data/clean/images-*.tfrecord   the accepted images, in a seeded random order

Duplicates: identical pixels within one class keep the first file (sorted by path) and list the
others as `duplicate`; identical pixels in two classes have no trustworthy label, so every copy
is dropped as `duplicate_across_classes`. Files skipped by `max_images_per_class` sampling are
counted in ingest.json (`not_sampled`), not listed one by one.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from cnn_tasks import images
from cnn_tasks.layout import DatasetError, find_class_root, list_class_files, sample_files, select_classes, visible_dirs
from cnn_tasks.shards import ShardWriter
from cnn_tasks.sources import PROGRESS_EVERY_S, fetch

log = logging.getLogger(__name__)

DUPLICATE = "duplicate"
DUPLICATE_ACROSS_CLASSES = "duplicate_across_classes"


# ================================================================== run
MANIFEST_FIELDS = ["key", "class", "label", "source", "width", "height", "mode", "format", "pixels",
                   "sum_r", "sum_g", "sum_b", "sumsq_r", "sumsq_g", "sumsq_b", "shard", "index"]
REJECTED_FIELDS = ["source", "class", "reason", "detail", "duplicate_of"]


@dataclass
class _Candidate:
    """A validated image waiting in the spool file until duplicates are known."""

    row: dict
    offset: int
    length: int


def run(ctx) -> dict:
    """Fetch, validate, dedupe and pack the dataset; write manifest, rejected list and ingest.json."""
    cfg = ctx.config
    started = time.monotonic()
    folder = fetch(ctx, cfg.dataset_url, cfg.dataset_checksum)
    class_root = find_class_root(folder, cfg.dataset_subdir)
    available = [d.name for d in visible_dirs(class_root)]
    classes = select_classes(available, cfg.classes, cfg.classes_limit)
    log.info("dataset at %s: %d classes available, using %d: %s", class_root, len(available), len(classes),
             ", ".join(classes))

    per_class = {c: Counter() for c in classes}
    plan: list[tuple[int, str, Path]] = []
    ignored = 0
    for label, name in enumerate(classes):
        files, hidden = list_class_files(class_root / name)
        chosen = sample_files(files, cfg.max_images_per_class, cfg.seed, name)
        ignored += hidden
        per_class[name].update(found=len(files), considered=len(chosen), not_sampled=len(files) - len(chosen))
        plan += [(label, name, path) for path in chosen]

    scratch = ctx.scratch("download")
    spool_path = scratch / "validated.bin"
    rejected: list[dict] = []
    stats = Counter()
    with open(spool_path, "wb") as spool:
        candidates = _validate_all(plan, class_root, spool, rejected, stats)
    kept = _drop_duplicates(candidates, rejected)
    for cand in kept:
        per_class[cand.row["class"]]["accepted"] += 1
    for row in rejected:
        per_class[row["class"]]["rejected"] += 1

    rejected.sort(key=lambda r: (r["class"], r["source"]))
    ctx.store.put_text(ctx.data_key("rejected.csv"), _csv(REJECTED_FIELDS, rejected))
    by_reason = dict(sorted(Counter(r["reason"] for r in rejected).items()))
    ingest = {
        "source": cfg.dataset_url,
        "local_folder": str(folder),
        "class_root": str(class_root.relative_to(folder)) if class_root != folder else ".",
        "available_classes": available,
        "classes": classes,
        "files_found": sum(c["found"] for c in per_class.values()),
        "not_sampled": sum(c["not_sampled"] for c in per_class.values()),
        "files_considered": len(plan),
        "accepted": len(kept),
        "rejected": len(rejected),
        "rejected_by_reason": by_reason,
        "ignored_hidden_files": ignored,
        "converted_from_mode": dict(sorted(stats.items())),
        "reencoded_png": sum(1 for c in kept if c.row["reencoded"]),
        "per_class": {c: {k: per_class[c][k] for k in ("found", "considered", "not_sampled", "accepted",
                                                        "rejected")} for c in classes},
        "max_images_per_class": cfg.max_images_per_class,
        "min_images_per_class": cfg.min_images_per_class,
        "manifest": ctx.data_key("manifest.csv"),
        "rejected_list": ctx.data_key("rejected.csv"),
    }
    short = {c: per_class[c]["accepted"] for c in classes if per_class[c]["accepted"] < cfg.min_images_per_class}
    if short:
        ingest["error"] = "; ".join(f"class {c!r} has {n} valid images" for c, n in short.items())
        ctx.store.put_json(ctx.data_key("ingest.json"), ingest)
        spool_path.unlink(missing_ok=True)
        raise DatasetError(
            f"min_images_per_class: {ingest['error']}, fewer than min_images_per_class="
            f"{cfg.min_images_per_class}; see {ctx.data_key('rejected.csv')} for what was rejected, or "
            "lower min_images_per_class / drop the class with the classes setting")

    manifest, shard_keys = _pack(ctx, kept, spool_path, scratch)
    spool_path.unlink(missing_ok=True)
    ctx.store.put_text(ctx.data_key("manifest.csv"), _csv(MANIFEST_FIELDS, manifest))
    ingest["clean_shards"] = shard_keys
    ingest["seconds"] = round(time.monotonic() - started, 2)
    ctx.store.put_json(ctx.data_key("ingest.json"), ingest)
    log.info("ingest done: %d accepted, %d rejected %s, %.1f s", len(kept), len(rejected), by_reason,
             ingest["seconds"])
    return {"accepted": len(kept), "rejected": len(rejected), "rejected_by_reason": by_reason,
            "classes": classes, "manifest": ingest["manifest"], "ingest": ctx.data_key("ingest.json"),
            "clean_shards": len(shard_keys)}


def _validate_all(plan, class_root: Path, spool, rejected: list[dict], stats: Counter) -> list[_Candidate]:
    """Decode every planned file once; accepted encodings go to `spool`, failures to `rejected`."""
    candidates: list[_Candidate] = []
    started = last = time.monotonic()
    for done, (label, name, path) in enumerate(plan, 1):
        source = f"{name}/{path.relative_to(class_root / name).as_posix()}"
        try:
            img = images.validate(path)
        except images.ImageRejected as exc:
            rejected.append({"source": source, "class": name, "reason": exc.reason, "detail": exc.detail,
                             "duplicate_of": ""})
            continue
        if img.original_mode != "RGB":
            stats[img.original_mode] += 1
        offset = spool.tell()
        spool.write(img.encoded)
        row = {"key": img.key, "class": name, "label": label, "source": source, "width": img.width,
               "height": img.height, "mode": img.original_mode, "format": img.original_format,
               "pixels": img.width * img.height, "reencoded": img.reencoded,
               **{f"sum_{c}": v for c, v in zip("rgb", img.channel_sum)},
               **{f"sumsq_{c}": v for c, v in zip("rgb", img.channel_sumsq)}}
        candidates.append(_Candidate(row, offset, len(img.encoded)))
        if time.monotonic() - last >= PROGRESS_EVERY_S:
            last = time.monotonic()
            log.info("validated %d/%d files (%.0f/s), %d rejected so far", done, len(plan),
                     done / (last - started), len(rejected))
    return candidates


def _drop_duplicates(candidates: list[_Candidate], rejected: list[dict]) -> list[_Candidate]:
    """Keep the first copy of identical images in one class; drop every copy across classes."""
    groups: dict[str, list[_Candidate]] = defaultdict(list)
    for cand in candidates:
        groups[cand.row["key"]].append(cand)
    drop: set[int] = set()
    for copies in groups.values():
        if len(copies) == 1:
            continue
        if len({c.row["class"] for c in copies}) > 1:
            for cand in copies:
                others = [o.row["source"] for o in copies if o is not cand]
                rejected.append({"source": cand.row["source"], "class": cand.row["class"],
                                 "reason": DUPLICATE_ACROSS_CLASSES,
                                 "detail": "identical pixels in classes " + ", ".join(
                                     sorted({c.row["class"] for c in copies})) + ": the label is ambiguous",
                                 "duplicate_of": ";".join(others)})
                drop.add(id(cand))
        else:
            for cand in copies[1:]:
                rejected.append({"source": cand.row["source"], "class": cand.row["class"], "reason": DUPLICATE,
                                 "detail": "identical pixels", "duplicate_of": copies[0].row["source"]})
                drop.add(id(cand))
    return [c for c in candidates if id(c) not in drop]


def _pack(ctx, kept: list[_Candidate], spool_path: Path, scratch: Path) -> tuple[list[dict], list[str]]:
    """Write the accepted images into clean shards in a seeded random order; return manifest rows."""
    order = list(range(len(kept)))
    random.Random(ctx.config.seed).shuffle(order)
    folder = scratch / "clean"
    shutil.rmtree(folder, ignore_errors=True)
    manifest = []
    with open(spool_path, "rb") as spool, ShardWriter(folder, "images") as writer:
        for i in order:
            cand = kept[i]
            spool.seek(cand.offset)
            writer.write(spool.read(cand.length), cand.row["label"], cand.row["key"])
            row = {k: v for k, v in cand.row.items() if k != "reencoded"}
            row["shard"] = ctx.data_key("clean", writer.paths[-1].name)
            row["index"] = (writer.count - 1) % writer.per_shard
            manifest.append(row)
    keys = []
    for path in writer.paths:
        keys.append(ctx.data_key("clean", path.name))
        ctx.store.put_file(keys[-1], path)
    shutil.rmtree(folder, ignore_errors=True)
    log.info("packed %d images into %d clean shards", len(manifest), len(keys))
    return manifest, keys


def _csv(fields: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


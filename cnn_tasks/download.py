"""Download + validate: fetch the labelled dataset, clean it, and pack it into shards.

`run(ctx)` fetches the source (`cnn_tasks.ingest.fetch`), reads its layout (`ingest.layout.detect_layout`:
class folders, given train/val/test splits, unlabelled folders, metadata), validates every image
once (`cnn_tasks.images`), removes duplicates and writes

  data/manifest.csv        one row per accepted image (key, class, given_split, size, mode, channel sums, shard)
  data/rejected.csv        every rejected or dropped file with its reason
  data/ingest.json         counts (by class, by reason), classes, the layout found, shard keys
  data/clean/images-*.tfrecord   the accepted images, in a seeded random order

Every output is built and checked to serialise before the first shard is uploaded, so a failure
never leaves shards without a manifest. File and class names are stored readably (a non-UTF-8
name is decoded as Windows-1252/Latin-1; `ingest.files.readable`); files are opened by their real path.

Rejections besides bad images: files lying beside the class (or split) folders are listed as
`not_in_a_class_folder`; archive members the extraction skipped (links, oversized, special files)
keep the reason the extraction gave. README, mapping and other metadata files are not images and
are listed in ingest.json (`layout.metadata_files`), never rejected.

Duplicates: identical pixels within one class (and one given split) keep the first file (sorted by
path) and list the others as `duplicate`; identical pixels in two classes have no trustworthy label,
so every copy is dropped as `duplicate_across_classes`; identical pixels of one class in two given
splits (e.g. train_set and test_set) would leak test images into training, so only the copy in the
most held-out split is kept (test, then val, then train) and the others are listed as
`duplicate_across_splits` (with predefined_split=ignore the splits are pooled and such copies are
plain `duplicate`s). Files skipped by `max_images_per_class` sampling are counted in ingest.json
(`not_sampled`), not listed one by one; with given splits the sample keeps each split's share.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import random
import shutil
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from cnn_tasks import SPLITS, images
from cnn_tasks.ingest import fetch
from cnn_tasks.ingest.dataset import Layout
from cnn_tasks.ingest.errors import DatasetError
from cnn_tasks.ingest.files import raw_rel, readable, sample_per_split, select_classes
from cnn_tasks.ingest.layout import detect_layout
from cnn_tasks.shards import ShardWriter

log = logging.getLogger(__name__)

DUPLICATE = "duplicate"
DUPLICATE_ACROSS_CLASSES = "duplicate_across_classes"
DUPLICATE_ACROSS_SPLITS = "duplicate_across_splits"
NOT_IN_A_CLASS_FOLDER = "not_in_a_class_folder"
HELD_OUT_FIRST = ("test", "val", "train", "")  # which copy of a cross-split duplicate is kept


# ================================================================== run
MANIFEST_FIELDS = [
    "key",
    "class",
    "label",
    "given_split",
    "source",
    "width",
    "height",
    "mode",
    "format",
    "pixels",
    "sum_r",
    "sum_g",
    "sum_b",
    "sumsq_r",
    "sumsq_g",
    "sumsq_b",
    "shard",
    "index",
]
REJECTED_FIELDS = ["source", "class", "reason", "detail", "duplicate_of"]


@dataclass
class _Candidate:
    """A validated image waiting in the spool file until duplicates are known."""

    row: dict
    offset: int
    length: int


@dataclass
class _Planned:
    """A file chosen for validation: its label, class, given split, real path and readable name."""

    label: int
    name: str
    split: str
    path: Path
    source: str


def run(ctx) -> dict:
    """Fetch, validate, dedupe and pack the dataset; write manifest, rejected list and ingest.json."""
    cfg = ctx.config
    started = time.monotonic()
    folder, skipped, archive = _fetch(ctx)
    found = detect_layout(folder, subdir=cfg.dataset_subdir, predefined_split=cfg.predefined_split, archive=archive)
    classes = select_classes(found.classes, cfg.classes, cfg.classes_limit)
    log.info(
        "dataset at %s: layout %s%s; %d classes available, using %d: %s",
        folder,
        found.kind,
        f" below {found.wrapper}/" if found.wrapper else "",
        len(found.classes),
        len(classes),
        ", ".join(classes),
    )
    for warning in found.warnings:
        log.warning("dataset layout: %s", warning)

    per_class = {c: Counter() for c in classes}
    metadata: list[Path] = []
    plan, ignored = _plan(found, classes, cfg, per_class, metadata)

    rejected = _skipped_rows(found, skipped) + [_loose_row(found, p) for p in found.loose]
    scratch = ctx.scratch("download")
    spool_path = scratch / "validated.bin"
    stats = Counter()
    with open(spool_path, "wb") as spool:
        candidates = _validate_all(plan, spool, rejected, stats, cfg)
    kept = _drop_duplicates(candidates, rejected, by_split=cfg.predefined_split != "ignore")
    rejected.sort(key=lambda r: (r["class"], r["source"]))
    ingest = _ingest_record(ctx, folder, found, classes, metadata, plan, kept, rejected, per_class, ignored, stats)
    by_reason = ingest["rejected_by_reason"]
    rejected_text = _csv(REJECTED_FIELDS, rejected)
    short = {c: per_class[c]["accepted"] for c in classes if per_class[c]["accepted"] < cfg.min_images_per_class}
    if short:
        ingest["error"] = "; ".join(f"class {c!r} has {n} valid images" for c, n in short.items())
        _check_serialisable(("rejected.csv", rejected_text), ("ingest.json", ingest))
        ctx.store.put_text(ctx.data_key("rejected.csv"), rejected_text)
        ctx.store.put_json(ctx.data_key("ingest.json"), ingest)
        spool_path.unlink(missing_ok=True)
        raise DatasetError(
            f"min_images_per_class: {ingest['error']}, fewer than min_images_per_class="
            f"{cfg.min_images_per_class}; see {ctx.data_key('rejected.csv')} for what was rejected, or "
            "lower min_images_per_class / drop the class with the classes setting"
        )

    manifest, shards = _write_shards(ctx, kept, spool_path, scratch)
    spool_path.unlink(missing_ok=True)
    manifest_text = _csv(MANIFEST_FIELDS, manifest)
    ingest["clean_shards"] = [key for key, _ in shards]
    ingest["seconds"] = round(time.monotonic() - started, 2)
    _check_serialisable(
        ("rejected.csv", rejected_text), ("ingest.json", ingest), ("manifest.csv", manifest_text)
    )  # before anything is uploaded
    for key, path in shards:
        ctx.store.put_file(key, path)
    shutil.rmtree(scratch / "clean", ignore_errors=True)
    ctx.store.put_text(ctx.data_key("rejected.csv"), rejected_text)
    ctx.store.put_text(ctx.data_key("manifest.csv"), manifest_text)
    ctx.store.put_json(ctx.data_key("ingest.json"), ingest)
    log.info("ingest done: %d accepted, %d rejected %s, %.1f s", len(kept), len(rejected), by_reason, ingest["seconds"])
    return {
        "accepted": len(kept),
        "rejected": len(rejected),
        "rejected_by_reason": by_reason,
        "classes": classes,
        "layout": found.kind,
        "manifest": ingest["manifest"],
        "ingest": ctx.data_key("ingest.json"),
        "clean_shards": len(shards),
    }


def _ingest_record(
    ctx,
    folder: Path,
    found: Layout,
    classes: list[str],
    metadata: list[Path],
    plan: list,
    kept: list[_Candidate],
    rejected: list[dict],
    per_class: dict,
    ignored: int,
    stats: Counter,
) -> dict:
    """ingest.json: what was found, considered, accepted and rejected, per class and given split
    (adds the accepted and rejected counts to `per_class`)."""
    cfg = ctx.config
    given = defaultdict(Counter)
    for cand in kept:
        per_class[cand.row["class"]]["accepted"] += 1
        given[cand.row["given_split"]][cand.row["class"]] += 1
    for row in rejected:
        if row["class"] in per_class:
            per_class[row["class"]]["rejected"] += 1
    by_reason = dict(sorted(Counter(r["reason"] for r in rejected).items()))
    described = found.describe()
    described["metadata_files"] += [found.rel(p) for p in metadata]
    return {
        "source": readable(cfg.dataset_url),  # a local path may hold non-UTF-8 bytes
        "local_folder": readable(os.fspath(folder)),
        "class_root": found.wrapper or ".",
        "layout": {
            **described,
            "predefined_split": cfg.predefined_split,
            "given_counts": {s: {c: given[s][c] for c in classes} for s in SPLITS if s in found.splits},
        },
        "available_classes": found.classes,
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
        "per_class": {
            c: {k: per_class[c][k] for k in ("found", "considered", "not_sampled", "accepted", "rejected")}
            for c in classes
        },
        "max_images_per_class": cfg.max_images_per_class,
        "min_images_per_class": cfg.min_images_per_class,
        "manifest": ctx.data_key("manifest.csv"),
        "rejected_list": ctx.data_key("rejected.csv"),
    }


def _fetch(ctx) -> tuple[Path, list[dict], str | None]:
    """The dataset's local folder, the archive members its extraction skipped and the archive it
    was extracted from (as the user named it; None for a folder)."""
    cfg = ctx.config
    fetched = fetch.fetch_source(ctx, cfg.dataset_url, cfg.dataset_checksum)
    return Path(fetched.folder), list(fetched.skipped), fetched.archive


def _plan(found: Layout, classes: list[str], cfg, per_class: dict, metadata: list[Path]) -> tuple[list, int]:
    """The files to validate, class by class and split by split, sampled per max_images_per_class."""
    plan: list[_Planned] = []
    seen: set[str] = set()
    ignored = 0
    for label, name in enumerate(classes):
        by_split, hidden = found.class_files(name, metadata)
        ignored += hidden
        chosen = sample_per_split(by_split, cfg.max_images_per_class, cfg.seed, name)
        found_n, considered = sum(map(len, by_split.values())), sum(map(len, chosen.values()))
        per_class[name].update(found=found_n, considered=considered, not_sampled=found_n - considered)
        for split, files in chosen.items():
            for path in files:
                source = found.source(path)
                if source in seen:  # two on-disk names read alike: show the undecodable bytes
                    source = raw_rel(path, found.base)
                seen.add(source)
                plan.append(_Planned(label, name, split, path, source))
    return plan, ignored


def _loose_row(found: Layout, path: Path) -> dict:
    where = found.rel(path.parent)
    return {
        "source": found.source(path),
        "class": "",
        "reason": NOT_IN_A_CLASS_FOLDER,
        "detail": f"lies in {where!r} beside the class folders, not inside one, so it has no label; move it "
        "into its class folder",
        "duplicate_of": "",
    }


def _skipped_rows(found: Layout, skipped: list[dict]) -> list[dict]:
    """rejected.csv rows for archive members the extraction skipped, with the class they would have had."""
    folders = {f"{found.rel(folder)}/": name for g in found.groups for name, folder in g.classes.items()}
    base = f"{found.rel(found.base)}/" if found.base != found.root else ""
    rows = []
    for item in skipped:
        path = str(item.get("source", ""))  # relative to the dataset root
        name = next((n for prefix, n in folders.items() if path.startswith(prefix)), "")
        source = path[len(base) :] if base and path.startswith(base) else path  # as the manifest names files
        rows.append(
            {
                "source": source,
                "class": name,
                "reason": str(item.get("reason", "")),
                "detail": str(item.get("detail", "")),
                "duplicate_of": "",
            }
        )
    return rows


def _check_serialisable(*outputs: tuple[str, object]) -> None:
    """Every (name, output) encodes (UTF-8 text, JSON) before anything is written to the store; one
    that cannot is a DatasetError naming the output and the text around what cannot be stored."""
    for name, output in outputs:
        text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            line_start = text.rfind("\n", 0, exc.start) + 1
            line_end = text.find("\n", exc.end) % (len(text) + 1)
            line = text[max(line_start, exc.start - 150) : min(line_end, exc.end + 150)]
            raise DatasetError(
                f"cannot store {name}: it would hold text that is not valid Unicode "
                f"({exc.reason}) in {ascii(line)}; rename the file or folder it names"
            ) from exc


def _validate_all(plan: list[_Planned], spool, rejected: list[dict], stats: Counter, cfg) -> list[_Candidate]:
    """Decode every planned file once; accepted encodings go to `spool`, failures to `rejected`."""
    candidates: list[_Candidate] = []
    started = last = time.monotonic()
    for done, item in enumerate(plan, 1):
        try:
            img = images.validate(item.path, min_side=cfg.min_image_side, max_aspect_ratio=cfg.max_aspect_ratio)
        except images.ImageRejected as exc:
            rejected.append(
                {
                    "source": item.source,
                    "class": item.name,
                    "reason": exc.reason,
                    "detail": exc.detail,
                    "duplicate_of": "",
                }
            )
            continue
        if img.original_mode != "RGB":
            stats[img.original_mode] += 1
        offset = spool.tell()
        spool.write(img.encoded)
        row = {
            "key": img.key,
            "class": item.name,
            "label": item.label,
            "given_split": item.split,
            "source": item.source,
            "width": img.width,
            "height": img.height,
            "mode": img.original_mode,
            "format": img.original_format,
            "pixels": img.width * img.height,
            "reencoded": img.reencoded,
            **{f"sum_{c}": v for c, v in zip("rgb", img.channel_sum)},
            **{f"sumsq_{c}": v for c, v in zip("rgb", img.channel_sumsq)},
        }
        candidates.append(_Candidate(row, offset, len(img.encoded)))
        if time.monotonic() - last >= fetch.PROGRESS_EVERY_S:
            last = time.monotonic()
            log.info(
                "validated %d/%d files (%.0f/s), %d rejected so far",
                done,
                len(plan),
                done / (last - started),
                len(rejected),
            )
    return candidates


def _drop_duplicates(candidates: list[_Candidate], rejected: list[dict], by_split: bool = True) -> list[_Candidate]:
    """Keep the first copy of identical images in one class (and split); drop every copy across
    classes; across given splits keep only the most held-out copy (`by_split`)."""
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
                rejected.append(
                    {
                        "source": cand.row["source"],
                        "class": cand.row["class"],
                        "reason": DUPLICATE_ACROSS_CLASSES,
                        "detail": "identical pixels in classes "
                        + ", ".join(sorted({c.row["class"] for c in copies}))
                        + ": the label is ambiguous",
                        "duplicate_of": ";".join(others),
                    }
                )
                drop.add(id(cand))
            continue
        splits = {c.row["given_split"] for c in copies}
        first = (
            min(copies, key=lambda c: HELD_OUT_FIRST.index(c.row["given_split"]))
            if by_split and len(splits) > 1
            else copies[0]
        )
        for cand in copies:
            if cand is first:
                continue
            if by_split and cand.row["given_split"] != first.row["given_split"]:
                reason = DUPLICATE_ACROSS_SPLITS
                detail = (
                    f"identical pixels in the given {cand.row['given_split']} and {first.row['given_split']} "
                    f"splits: the {first.row['given_split']} copy is kept so no held-out image is trained "
                    "or tuned on"
                )
            else:
                reason, detail = DUPLICATE, "identical pixels"
            rejected.append(
                {
                    "source": cand.row["source"],
                    "class": cand.row["class"],
                    "reason": reason,
                    "detail": detail,
                    "duplicate_of": first.row["source"],
                }
            )
            drop.add(id(cand))
    return [c for c in candidates if id(c) not in drop]


def _write_shards(ctx, kept: list[_Candidate], spool_path: Path, scratch: Path) -> tuple[list[dict], list]:
    """Write the accepted images into local clean shards in a seeded random order; return the
    manifest rows and (store key, local path) of each shard. Nothing is uploaded here."""
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
    shards = [(ctx.data_key("clean", path.name), path) for path in writer.paths]
    log.info("packed %d images into %d clean shards", len(manifest), len(shards))
    return manifest, shards


def _csv(fields: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()

"""Label files: the readable class names a mapping file (mapping.txt, labels.txt, classes.json,
ImageNet's synset words...) gives numeric or WordNet-id class folders (`read_mapping`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path

_MAPPING_LINE = re.compile(r"^\s*([^\s:,;=]+)\s*(?:[:,;=\t]|\s)\s*(.*?)\s*$")
MAX_MAPPING_BYTES = 5_000_000  # a mapping file is read up to this size (ImageNet's is 31 KB)


def read_mapping(path: Path, folder_names: list[str]) -> dict[str, str] | None:
    """folder name -> readable class name from a mapping file, or None unless it names every folder.

    Formats: '0 name', '0: name', '0,name', '0<TAB>name', 'n01440764 tench, Tinca tinca' (the
    first comma-separated part is the name), a JSON object {"0": "name"} or list, or one name per
    line in index order (folders 0..N-1, or 1..N when there is no 0).
    """
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_MAPPING_BYTES)
        text = raw.decode("utf-8-sig") if _is_utf8(raw) else raw.decode("cp1252", "replace")
    except OSError:
        return None
    pairs, lines = _parse_mapping(text, path.suffix.lower())
    wanted = set(folder_names)
    mapping = {}
    for key, name in pairs:
        for folder in _matching_folders(key, wanted):
            mapping.setdefault(folder, name)
    if set(mapping) != wanted and all(n.isdigit() for n in folder_names) and lines:
        indices = {n: int(n) for n in folder_names}
        offset = 0 if 0 in indices.values() else 1
        if max(indices.values()) - offset < len(lines):
            mapping = {n: lines[i - offset] for n, i in indices.items()}
    names = [_clean_name(v) for v in mapping.values()]
    if set(mapping) != wanted or not all(names) or len(set(names)) != len(names):
        return None
    return {k: _clean_name(v) for k, v in mapping.items()}


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _parse_mapping(text: str, suffix: str) -> tuple[list[tuple[str, str]], list[str]]:
    """(key, name) pairs and plain lines of a mapping file."""
    if suffix == ".json":
        try:
            data = json.loads(text)
        except ValueError:
            return [], []
        if isinstance(data, dict):
            return [
                (str(k), v if isinstance(v, str) else str((v or [""])[-1] if isinstance(v, list) else v))
                for k, v in data.items()
            ], []
        if isinstance(data, list):
            return [], [str(v) for v in data]
        return [], []
    pairs, lines = [], []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        lines.append(line)
        match = _MAPPING_LINE.match(line)
        if match and match.group(2):
            pairs.append((match.group(1), match.group(2)))
    return pairs, lines


def _matching_folders(key: str, wanted: set[str]) -> list[str]:
    key = key.strip("\"'")
    if key in wanted:
        return [key]
    if key.isdigit():  # '7' names folder '007'
        return [w for w in wanted if w.isdigit() and int(w) == int(key)]
    return []


def _clean_name(text: str) -> str:
    """The readable class name of a mapping entry: first comma-separated part, no quotes or slashes."""
    name = text.split(",")[0].strip().strip("\"'").strip()
    name = re.sub(r"\s+", " ", name.replace("/", "-").replace("\\", "-"))
    return unicodedata.normalize("NFC", name)

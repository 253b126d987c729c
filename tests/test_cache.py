"""The worker cache's bounds: LRU eviction under CNN_CACHE_MAX_GB, entries in use kept, scratch cleaned."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from cnn_tasks import cache
from cnn_tasks.context import cache_root
from cnn_tasks.errors import PipelineError
from cnn_tasks.ingest import fetch

DAY = 86400


@pytest.fixture
def root(tmp_path, monkeypatch) -> Path:
    """An empty worker cache of its own."""
    monkeypatch.setenv("CNN_CACHE_DIR", str(tmp_path / "cache"))
    return cache_root()


def _entry(root: Path, kind: str, name: str, size: int, age_s: float) -> Path:
    """A cache entry folder holding `size` bytes, last used `age_s` seconds ago."""
    folder = root / kind / name
    folder.mkdir(parents=True)
    (folder / "data.bin").write_bytes(b"x" * size)
    stamp = time.time() - age_s
    os.utime(folder, (stamp, stamp))
    return folder


def _limit(monkeypatch, size_bytes: int) -> None:
    monkeypatch.setenv("CNN_CACHE_MAX_GB", repr(size_bytes / cache.GB))


def _remaining(root: Path) -> list[str]:
    return sorted(f"{e.path.parent.name}/{e.path.name}" for e in cache.entries(root))


# ------------------------------------------------------------------ eviction
def test_eviction_removes_least_recently_used_entries_until_within_the_limit(root, monkeypatch, caplog):
    _entry(root, "downloads", "d1", 100, age_s=4000)
    _entry(root, "extracted", "x1", 100, age_s=3000)
    _entry(root, "content", "c1", 100, age_s=1000)
    _entry(root, "objects", "o1", 100, age_s=2000)
    _limit(monkeypatch, 250)
    with caplog.at_level(logging.INFO, logger="cnn_tasks.cache"):
        evicted = cache.enforce_limit(root)
    assert [e.path.name for e in evicted] == ["d1", "x1"]  # oldest last use first
    assert _remaining(root) == ["content/c1", "objects/o1"]
    assert sum(e.size for e in cache.entries(root)) <= 250
    assert "cache over 0.0 GB: evicted 2 entries, 0.0 GB, least recently used first" in caplog.text
    assert not (root / "locks" / "downloads" / "d1.lock").exists()  # nothing of an evicted entry is left


def test_a_use_makes_an_entry_most_recent(root, monkeypatch, make_ctx):
    old = _entry(root, "content", "old", 100, age_s=5000)
    _entry(root, "content", "newer", 100, age_s=100)
    ctx = make_ctx()
    ctx.hold_cache_entry(old)  # used again now
    ctx.close()  # the default 20 GB limit: nothing evicted
    _limit(monkeypatch, 150)
    assert [e.path.name for e in cache.enforce_limit(root)] == ["newer"]
    assert _remaining(root) == ["content/old"]


def test_within_the_limit_or_unbounded_nothing_is_evicted(root, monkeypatch):
    _entry(root, "content", "a", 100, age_s=DAY)
    _limit(monkeypatch, 100)
    assert cache.enforce_limit(root) == []
    monkeypatch.setenv("CNN_CACHE_MAX_GB", "0")
    _entry(root, "content", "b", 10**6, age_s=DAY)
    assert cache.enforce_limit(root) == []
    assert _remaining(root) == ["content/a", "content/b"]


def test_entries_a_running_task_holds_are_not_evicted(root, monkeypatch, make_ctx, caplog):
    ctx = make_ctx()
    key = ctx.data_key("clean", "images-00000.tfrecord")
    ctx.store.put_bytes(key, b"s" * 300)
    path = ctx.cached(key)  # held by this task until close()
    half_made = _entry(root, "objects", path.parent.name + ".tmp-4242", 100, age_s=DAY)  # shares its lock
    unused = _entry(root, "content", "unused", 100, age_s=10)
    os.utime(path.parent, (time.time() - DAY, time.time() - DAY))  # held, and the least recently used
    _limit(monkeypatch, 1)
    with caplog.at_level(logging.INFO, logger="cnn_tasks.cache"):
        evicted = cache.enforce_limit(root)
    assert [e.path for e in evicted] == [unused]
    assert path.read_bytes() == b"s" * 300
    assert half_made.exists()
    assert "over its 0.0 GB limit (CNN_CACHE_MAX_GB): the rest is in use by running tasks" in caplog.text
    ctx.close()  # released, then the limit is enforced at the task's end
    assert not path.exists()
    assert not half_made.exists()


def test_a_hold_in_another_process_blocks_eviction(root, monkeypatch):
    """Airflow runs each task in its own process: the lock must work across processes."""
    entry = _entry(root, "extracted", "dataset", 100, age_s=DAY)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from cnn_tasks import cache; "
            "lease = cache.Lease(Path(sys.argv[1])); print('held', flush=True); sys.stdin.readline()",
            str(entry),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    try:
        assert child.stdout.readline().strip() == "held"
        _limit(monkeypatch, 1)
        assert cache.enforce_limit(root) == []
        assert entry.exists()
    finally:
        child.communicate("done\n", timeout=30)
    assert [e.path for e in cache.enforce_limit(root)] == [entry]


def test_fetch_holds_its_extraction_until_the_task_ends(root, monkeypatch, tmp_path, make_ctx):
    archive = tmp_path / "data.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("cats/1.png", b"not checked here")
    ctx = make_ctx()
    folder = fetch.fetch(ctx, str(archive))
    assert folder.parent.parent == root / "extracted"  # <entry>/data beside <entry>/skipped.json
    _limit(monkeypatch, 1)
    assert cache.enforce_limit(root) == []
    assert (folder / "cats" / "1.png").is_file()
    ctx.close()
    assert not folder.exists()


def test_an_evicted_entry_is_fetched_again(root, monkeypatch, make_ctx):
    ctx = make_ctx()
    key = ctx.data_key("blob.bin")
    ctx.store.put_bytes(key, b"first")
    path = ctx.cached(key)
    _limit(monkeypatch, 1)
    ctx.close()
    assert not path.exists()
    again = make_ctx()
    assert again.cached(key).read_bytes() == b"first"


# ------------------------------------------------------------------ the setting
@pytest.mark.parametrize("raw, expected", [("", 20 * 10**9), ("0", None), ("1.5", 1_500_000_000), (" 2 ", 2 * 10**9)])
def test_cache_limit_setting(monkeypatch, raw, expected):
    monkeypatch.setenv("CNN_CACHE_MAX_GB", raw)
    assert cache.max_bytes() == expected


@pytest.mark.parametrize("raw", ["abc", "20GB", "-1", "nan", "inf"])
def test_a_bad_cache_limit_fails_the_task_at_its_start_with_a_clear_message(monkeypatch, make_ctx, raw):
    monkeypatch.setenv("CNN_CACHE_MAX_GB", raw)
    with pytest.raises(PipelineError) as caught:
        make_ctx()
    assert str(caught.value) == (
        f"CNN_CACHE_MAX_GB={raw!r} is not a size in GB: set it to a number such as 20 "
        "(the default) or 1.5, or to 0 for an unbounded worker cache"
    )


# ------------------------------------------------------------------ scratch
def test_a_finished_task_removes_its_scratch_but_not_a_sibling_task_s(root, make_ctx):
    mine, sibling = make_ctx("run_a"), make_ctx("run_a")
    work = mine.scratch("train", "m1")
    (work / "checkpoint").mkdir()
    (work / "checkpoint" / "best.weights.h5").write_bytes(b"w")
    other = sibling.scratch("train", "m2") / "checkpoint"
    other.mkdir()  # empty for now: the sibling's first epoch is still running
    mine.close()
    assert not work.exists()
    assert other.is_dir()
    sibling.close()
    assert not (root / "scratch" / "run_a").exists()  # the run's last task on this worker ended


def test_scratch_needs_a_folder_of_the_task_s_own(make_ctx):
    with pytest.raises(ValueError, match=r"ctx.scratch\('train', model_id\)"):
        make_ctx().scratch()


def _age(folder: Path, age_s: float) -> None:
    stamp = time.time() - age_s
    for path in [*folder.rglob("*"), folder]:
        os.utime(path, (stamp, stamp))


def test_scratch_left_by_killed_tasks_of_old_runs_is_pruned_but_not_the_current_run_s(root, make_ctx):
    scratch = root / "scratch"
    for run in ("old_run", "current_run", "recent_run"):
        (scratch / run / "train" / "m").mkdir(parents=True)
        (scratch / run / "train" / "m" / "state.bin").write_bytes(b"s")
        _age(scratch / run, 4 * DAY)
    (scratch / "recent_run" / "train" / "m" / "state.bin").touch()  # a live task wrote deep inside today
    make_ctx("current_run").close()  # e.g. a retry of a killed task of this run: its old folders stay
    assert sorted(p.name for p in scratch.iterdir()) == ["current_run", "recent_run"]
    assert (scratch / "current_run" / "train" / "m" / "state.bin").exists()

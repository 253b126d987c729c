"""bench/bench_time_to_accuracy.py without training: which grid cells are missing, and the summary of small
synthetic result files (GFLOP ratios, mean ± spread, a threshold never reached, ensemble, wall-time pairs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_time_to_accuracy.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_time_to_accuracy", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def history(accuracies: list[float], seconds: float = 10.0) -> list[dict]:
    return [{"epoch": i + 1, "val_accuracy": a, "seconds": seconds} for i, a in enumerate(accuracies)]


def write_cell(bench, folder: Path, recipe: str, seed: int, accuracies: list[float], **changes) -> dict:
    """A result file as run_cell writes it, for a 1,000-image training split."""
    gflop_per_image = changes.pop("gflop_per_image", 1.0)
    hist = history(accuracies)
    labels = np.arange(20) % 10
    probabilities = changes.pop("probabilities", np.eye(10)[labels])
    row = {
        "dataset": "tiny32-00000000",
        "recipe": recipe,
        "seed": seed,
        "epochs_configured": len(accuracies),
        "epochs_run": len(accuracies),
        "stopped_by": "epochs",
        "best_val_accuracy": max(accuracies),
        "test_accuracy": 0.9,
        "gflop_per_image": gflop_per_image,
        "reached": {bench.threshold_key(t): bench.reached(hist, t, gflop_per_image * 1000) for t in bench.THRESHOLDS},
        "train_s": sum(h["seconds"] for h in hist),
        "images_per_s": 100.0,
        "achieved_gflop_per_s": 100.0 * gflop_per_image,
        "history": hist,
        "machine": "Test CPU, AVX2, 1 cores",
        "matmul_peak_gflop_per_s": 200.0,
        "commit": "0123456789abcdef",
        "date": "2026-12-04T00:00:00+00:00",
        "run_id": "run-a",
        "test_labels": bench.encode_array(labels, "uint8"),
        "test_probabilities": bench.encode_array(probabilities, "float16"),
        **changes,
    }
    path = bench.result_path(folder, row["dataset"], recipe, seed)
    path.write_text(json.dumps(row))
    return row


def test_only_the_cells_without_a_result_file_run(bench, tmp_path):
    bench.result_path(tmp_path, "eurosat64-abc", "baseline", 0).write_text("{}")
    bench.result_path(tmp_path, "eurosat32-abc", "old_baseline", 0).write_text("{}")  # another dataset
    missing = bench.missing_cells(tmp_path, "eurosat64-abc", ["baseline", "old_baseline"], [0, 1])
    assert missing == [("old_baseline", 0), ("baseline", 1), ("old_baseline", 1)]


def test_reduced_runs_get_their_own_dataset_name(bench, tmp_path):
    archive = tmp_path / "EuroSAT.zip"
    archive.write_bytes(b"not really a zip")
    full = bench.dataset_name(archive, 64)
    assert full.startswith("eurosat64-")
    assert bench.dataset_name(archive, 64, max_per_class=300, epochs=12) == f"{full}-max300-ep12"


def test_thresholds_count_epochs_seconds_and_training_gflop(bench):
    hist = history([0.5, 0.91, 0.96, 0.955])
    assert bench.reached(hist, 0.96, 2000.0) == {"epoch": 3, "seconds": 30.0, "gflop": 6000.0}
    assert bench.reached(hist, 0.97, 2000.0) is None


def test_summary_ratios_spreads_and_a_threshold_never_reached(bench, tmp_path):
    write_cell(bench, tmp_path, "old_baseline", 0, [0.8, 0.9, 0.95, 0.96])  # 96 % at epoch 4: 4,000 GFLOP
    write_cell(bench, tmp_path, "baseline", 0, [0.9, 0.96], gflop_per_image=0.5, test_accuracy=0.97)  # 1,000
    write_cell(bench, tmp_path, "baseline", 1, [0.9, 0.95, 0.96, 0.97], gflop_per_image=0.5, test_accuracy=0.95)
    write_cell(bench, tmp_path, "strided_elu", 0, [0.5, 0.6], run_id="run-b")  # never reaches 90 %
    rows = bench.load_results(tmp_path)
    assert len(rows) == 4

    text = bench.summary(rows)
    per_recipe = text.split("Per cell:")[0].splitlines()
    lines = {line.split(" | ")[0]: line for line in per_recipe if line.startswith("| ")}
    baseline = lines["| baseline"]
    # GFLOP to 96 % (0.5 GFLOP x 1,000 images x epochs): mean of 1,000 and 1,500 against old_baseline's 4,000
    assert "| 0.31x |" in baseline
    assert "0.9600 ± 0.0141 (2 seeds)" in baseline  # test accuracy, sample standard deviation
    assert "1250 ± 354 (2 seeds)" in baseline
    assert "1.0 ± 0.0 (2 seeds)" in baseline  # both reached 90 % at epoch 1
    assert "2.5 ± 0.7 (2 seeds)" in baseline  # 96 % at epochs 2 and 3
    assert "4.0 (1 seed); 1 of 2 not reached" in baseline  # 97 %
    strided = lines["| strided_elu"]
    assert strided.count("not reached") == 5  # four thresholds and the GFLOP to 96 %
    assert "| - |" in strided  # no ratio without reaching 96 %
    assert "no seed has all of them yet" in text


def test_wall_time_ratios_only_within_one_invocation_and_machine(bench, tmp_path):
    write_cell(bench, tmp_path, "old_baseline", 0, [0.9, 0.96])
    write_cell(bench, tmp_path, "baseline", 0, [0.96])
    write_cell(bench, tmp_path, "strided_elu", 0, [0.96], run_id="run-b")
    write_cell(bench, tmp_path, "separable_swish", 0, [0.96], machine="Other CPU, AVX-512, 2 cores")
    pairs = bench.wall_ratios(bench.load_results(tmp_path))
    assert [(r["recipe"], ref["recipe"]) for r, ref in pairs] == [("baseline", "old_baseline")]
    assert "| baseline | 0 | run-a | Test CPU, AVX2, 1 cores | 1.00x | 0.50x |" in bench.summary(
        bench.load_results(tmp_path)
    )


def test_ensemble_soft_votes_per_seed_where_every_member_ran(bench, tmp_path):
    labels = np.arange(20) % 10
    right = np.eye(10)[labels]
    wrong_half = right.copy()
    wrong_half[:10] = np.roll(right[:10], 1, axis=1) * 0.9  # confidently wrong on half the images
    write_cell(bench, tmp_path, "baseline", 0, [0.9], probabilities=wrong_half)
    write_cell(bench, tmp_path, "strided_elu", 0, [0.9], probabilities=right)
    write_cell(bench, tmp_path, "separable_swish", 0, [0.9], probabilities=right)
    write_cell(bench, tmp_path, "baseline", 1, [0.9])  # seed 1 lacks two members: no ensemble
    accuracies = bench.ensemble_accuracies(bench.load_results(tmp_path))
    assert accuracies == {0: 1.0}


def test_probabilities_round_trip_compactly(bench):
    probabilities = np.random.default_rng(0).dirichlet(np.ones(10), size=2700)
    encoded = bench.encode_array(probabilities, "float16")
    assert len(json.dumps(encoded)) < 80_000
    np.testing.assert_allclose(bench.decode_array(encoded), probabilities, atol=5e-4)


def test_the_summary_replaces_only_its_block_in_the_docs(bench, tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"before\n{bench.DOCS_START}\nold\n{bench.DOCS_END}\nafter\n")
    bench.write_docs(docs, "new table\n")
    assert docs.read_text() == f"before\n{bench.DOCS_START}\nnew table\n{bench.DOCS_END}\nafter\n"

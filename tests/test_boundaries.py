"""Stage boundaries: no stage module imports another (anywhere in the file, inside functions too);
they share library modules and talk through the store. Importing the report stage, the DAG file's
libraries or the plugin loads no TensorFlow."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cnn_tasks"
STAGES = (
    "download",
    "split",
    "rebalance",
    "train",
    "visualize",
    "evaluate",
    "ensemble",
    "promote",
    "predict",
    "report",
)
ENTRY_POINTS = ("cli", "__main__")  # the command line runs stages, like the DAG; nothing imports it
# The settings layer under everything else: the cnn_tasks modules each of its modules may import.
SETTINGS_LAYER = {
    "errors": (),
    "fields": ("errors",),
    "experiments": ("fields",),
    "config": ("experiments", "fields"),
    "deployment": (),
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth: `from cnn_tasks import a, b` gives
    cnn_tasks.a and cnn_tasks.b, `from cnn_tasks.a import x` gives cnn_tasks.a (relative imports resolved)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(["cnn_tasks"][: 2 - node.level] + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return found


def stage_imports(path: Path, root: Path = ROOT) -> list[str]:
    """'file:line imports cnn_tasks.<stage>' for every import of another stage module."""
    hits = [
        f"{path.relative_to(root)}:{line} imports cnn_tasks.{module.split('.')[1]}"
        for line, module in imported_modules(path)
        if module.startswith("cnn_tasks.") and module.split(".")[1] in STAGES and module.split(".")[1] != path.stem
    ]
    return list(dict.fromkeys(hits))


def test_every_stage_module_exists():
    assert sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem in STAGES) == sorted(STAGES)


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another_stage(stage):
    assert stage_imports(PACKAGE / f"{stage}.py") == []


def package_modules() -> list[Path]:
    """Every module of the package, in its sub-packages (cnn_tasks/ingest/) too."""
    return sorted(PACKAGE.rglob("*.py"))


def test_library_modules_import_no_stage():
    """Library modules (sub-packages included) are below the stages: importing one never drags a stage in."""
    offending = [
        hit
        for path in package_modules()
        if path.parent != PACKAGE or path.stem not in STAGES + ENTRY_POINTS
        for hit in stage_imports(path)
    ]
    assert offending == []


def test_nothing_imports_the_entry_points():
    importers = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in package_modules()
        if path.parent != PACKAGE or path.stem not in ENTRY_POINTS
        for line, module in imported_modules(path)
        if module in ("cnn_tasks.cli", "cnn_tasks.__main__")
    ]
    assert importers == []


@pytest.mark.parametrize("module", SETTINGS_LAYER)
def test_settings_modules_import_only_the_layer_below(module):
    imported = {
        name.split(".")[1] for _, name in imported_modules(PACKAGE / f"{module}.py") if name.startswith("cnn_tasks.")
    }
    assert imported <= set(SETTINGS_LAYER[module]), f"{module}.py imports {sorted(imported)}"


def test_the_check_finds_stage_imports_at_any_depth(tmp_path):
    """The rule sees every import form, inside functions too (so the tests above can fail)."""
    path = tmp_path / "report.py"
    path.write_text(
        "from cnn_tasks import plots, train\n"
        "def f():\n    from cnn_tasks.evaluate import x\n    import cnn_tasks.promote\n"
        "    from . import predict\n    from .split import read_csv\n    from cnn_tasks import report\n"
    )
    assert stage_imports(path, root=tmp_path) == [
        "report.py:1 imports cnn_tasks.train",
        "report.py:3 imports cnn_tasks.evaluate",
        "report.py:4 imports cnn_tasks.promote",
        "report.py:5 imports cnn_tasks.predict",
        "report.py:6 imports cnn_tasks.split",
    ]


def heavy_modules_after(code: str, **env: str) -> list[str]:
    """The heavy libraries in sys.modules after running `code` in a fresh interpreter."""
    probe = code + "\nimport sys\nprint('HEAVY', [m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules])\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", **env}
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)
    line = [s for s in proc.stdout.splitlines() if s.startswith("HEAVY")]
    assert line, proc.stderr[-3000:]
    return ast.literal_eval(line[-1][len("HEAVY ") :])


def test_importing_the_report_stage_loads_no_tensorflow():
    assert heavy_modules_after("import cnn_tasks.report") == []


def test_importing_the_plugin_loads_no_tensorflow(tmp_path):
    plugin = ROOT / "plugins" / "cnn_reports.py"
    assert (
        heavy_modules_after(f"import runpy; runpy.run_path({str(plugin)!r})", AIRFLOW_HOME=str(tmp_path / "airflow"))
        == []
    )

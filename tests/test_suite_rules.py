"""Rules for the test suite itself: shared helpers live in helper modules (never imported from a
test file or conftest)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TEST_FILES = sorted(Path(__file__).parent.glob("test_*.py"))


def _imported_modules(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_a_test_file_imports_no_other_test_file_or_conftest(path):
    imported = _imported_modules(ast.parse(path.read_text()))
    tests = {name for name in imported if name.startswith("tests.")}
    leaked = sorted(n for n in tests if n.split(".")[1].startswith("test_") or n.split(".")[1] == "conftest")
    assert leaked == [], f"{path.name} imports {leaked}: move shared helpers to tests/helpers.py"


def test_the_rules_see_what_they_forbid():
    tree = ast.parse("from tests.test_images import write\nimport tests.conftest\n")
    assert _imported_modules(tree) >= {"tests.test_images", "tests.conftest"}

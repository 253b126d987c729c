"""Rules for the test suite itself: shared helpers live in helper modules (never imported from a
test file or conftest), and no assert chains checks with `and` (a failure must say which failed)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TEST_FILES = sorted(Path(__file__).parent.glob("test_*.py"))
TESTS_AND_HELPERS = sorted(Path(__file__).parent.glob("*.py"))


def leaked_imports(source: str) -> list[str]:
    """The test modules and conftests that `source` imports."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    parts = (name.split(".") for name in names)
    return sorted({f"{p[0]}.{p[1]}" for p in parts if len(p) > 1 and (p[1].startswith("test_") or p[1] == "conftest")})


def chained_asserts(source: str) -> list[int]:
    """Lines of the asserts whose whole test is an `and` chain."""
    return sorted(
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Assert) and isinstance(node.test, ast.BoolOp) and isinstance(node.test.op, ast.And)
    )


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_a_test_file_imports_no_other_test_file_or_conftest(path):
    leaked = leaked_imports(path.read_text())
    assert leaked == [], f"{path.name} imports {leaked}: move shared helpers to tests/helpers.py"


@pytest.mark.parametrize("path", TESTS_AND_HELPERS, ids=lambda p: p.name)
def test_no_assert_chains_checks_with_and(path):
    chained = chained_asserts(path.read_text())
    assert chained == [], f"{path.name}: split the `assert a and b` on lines {chained} into one assert each"


def test_the_rules_see_what_they_forbid():
    imports = "from tests.test_images import write\nimport tests.conftest\nfrom tests import test_x, helpers\n"
    assert leaked_imports(imports + "from tests.helpers import build\nimport tests.imagegen\n") == [
        "tests.conftest",
        "tests.test_images",
        "tests.test_x",
    ]
    asserts = "assert a and b, 'm'\nassert any(x and y for x in z)\nassert a, 'a and b'\nassert (a or b) and c\n"
    assert chained_asserts(asserts) == [1, 4]

"""Where shared test code lives: in sidecar_testing, which tests and benchmarks both import.

A test module importing another test module (or conftest) runs that module's code twice under
two names, couples unrelated tests, and hides helpers where benchmarks cannot reach them
without importing tests/. So: no file in tests/ imports tests, tests.*, conftest or a test
module (`from .x` in tests/ is `from tests.x`), and benchmarks/ and sidecar_testing/ import
nothing from tests/ at all.
"""

import ast
from pathlib import Path

from sidecar_testing.data import ROOT

TESTS = ROOT / "tests"
# What a file outside tests/ could import it as: the package, conftest, or a test module by
# its bare name (were tests/ on sys.path).
TEST_MODULES = {"tests", "conftest", *(path.stem for path in TESTS.glob("test_*.py"))}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, a relative one resolved against the file's
    package (tests/, benchmarks/ and sidecar_testing/ are top-level packages)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            package = path.parent.name if node.level else None
            module = ".".join(part for part in (package, node.module) if part)
            found.append((node.lineno, module))
    return found


def imports_from_tests(paths: list[Path]) -> list[str]:
    """'file:line: module' for each import of something in tests/."""
    return [
        f"{path.relative_to(ROOT)}:{line}: {module}"
        for path in paths
        for line, module in imported_modules(path)
        if module.split(".")[0] in TEST_MODULES
    ]


def test_no_test_module_imports_another_or_conftest():
    assert imports_from_tests(sorted(TESTS.glob("*.py"))) == []


def test_benchmarks_and_shared_helpers_import_nothing_from_tests():
    paths = sorted((ROOT / "benchmarks").glob("*.py")) + sorted(
        (ROOT / "sidecar_testing").glob("*.py")
    )
    assert len(paths) > 2  # the globs found the folders
    assert imports_from_tests(paths) == []

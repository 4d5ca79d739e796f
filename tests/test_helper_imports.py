"""Test files import shared code from helper modules only, never from each other.

Importing a test file (or a conftest) from another runs it twice under two module
names and couples unrelated tests; shared code lives in ``tests/helpers.py`` and
``tests/trainer/helpers.py``, fixtures in the conftest files.
"""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HELPERS = {"tests.helpers", "tests.trainer.helpers", "tests.service.metrics.stats.sims"}
# pending: owner still editing (the lead moves these to tests.helpers and empties this)
PENDING: set[str] = set()


def imported_test_modules(path: Path) -> list[str]:
    """Modules of the test tree that ``path`` imports, other than the helper modules."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level > 0:  # from .conftest import ..., from . import test_x
                out.append("." * node.level + (node.module or ""))
            elif node.module and node.module.split(".")[0] == "tests":
                out.append(node.module)
        elif isinstance(node, ast.Import):
            out += [a.name for a in node.names if a.name.split(".")[0] == "tests"]
    return [m for m in out if m not in HELPERS]


def test_imported_test_modules_reads_both_forms(tmp_path: Path) -> None:
    src = tmp_path / "test_x.py"
    src.write_text(
        "from tests.helpers import make_batch\nfrom .conftest import X\n"
        "def f():\n    from tests.service.test_y import z\n    import tests.other\n"
    )
    assert imported_test_modules(src) == [".conftest", "tests.service.test_y", "tests.other"]


def test_no_test_file_imports_another_test_module() -> None:
    offenders = {
        path.relative_to(TESTS).as_posix(): imported_test_modules(path)
        for path in TESTS.rglob("*.py")
        if path.name != "conftest.py" and imported_test_modules(path)
    }
    assert set(offenders) - PENDING == set(), offenders

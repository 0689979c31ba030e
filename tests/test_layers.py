"""The layers of netcache, checked by import-linter with the contracts in pyproject.toml:
no import cycles, backends and policies below everything but the page types, and nothing
importing the fsspec adapter."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_LINT = (
    "import sys; from importlinter.cli import lint_imports; sys.exit(lint_imports(no_cache=True))"
)


def test_the_import_contracts_are_kept() -> None:
    out = subprocess.run([sys.executable, "-c", _LINT], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 kept, 0 broken" in out.stdout

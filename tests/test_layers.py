"""The layers of netcache, checked by import-linter with the contracts in pyproject.toml:
no import cycles, backends and policies below everything but the page types, nothing
importing the fsspec adapter, and the test scaffolding out of the runtime."""

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
    assert "4 kept, 0 broken" in out.stdout


def test_every_module_is_placed_by_the_contracts() -> None:
    """A new module must be named in each contract's list (or be one of the few it is
    about): a module left out would be unchecked."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]

    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    named = {}
    for contract in contracts["contracts"][1:]:
        named[contract["name"]] = set(contract["source_modules"]) | set(
            contract["forbidden_modules"]
        )
    package = ROOT / "netcache"
    modules = {f"netcache.{p.stem}" for p in package.glob("*.py") if not p.stem.startswith("__")}
    modules |= {f"netcache.{p.name}" for p in package.iterdir() if (p / "__init__.py").exists()}
    page_types = {"netcache.buffers", "netcache.errors", "netcache.page", "netcache.sizes",
                  "netcache.warnonce", "netcache.backends", "netcache.policies"}  # fmt: skip
    exempt = {"netcache.demo"}  # the demo may use the adapter and the scaffolding
    for name, listed in named.items():
        allowed = page_types if name.startswith("Backends") else exempt
        assert modules - listed - allowed == set(), name

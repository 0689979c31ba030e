"""Every private name of fsspec, s3fs and distributed that netcache reaches (listed in
netcache._compat) exists in the installed releases: a release that renames or removes
one fails here, by name."""

from __future__ import annotations

import importlib.metadata

import pytest

from netcache import _compat


@pytest.mark.parametrize(("module", "name"), _compat.PRIVATE_NAMES,
                         ids=[f"{m}:{n}" for m, n in _compat.PRIVATE_NAMES])  # fmt: skip
def test_each_private_name_is_there(module: str, name: str) -> None:
    value = _compat.resolve(module, name)
    assert value is not None, f"{module}.{name} is gone in this release"
    if name.startswith("Worker."):
        assert hasattr(value, "__iter__")  # a set of the live workers
    elif name != "HTTPFileSystem._cat_file":
        assert callable(value), f"{module}.{name} is no longer callable"


def test_no_other_module_reaches_a_private_name() -> None:
    """Only netcache._compat names them: the list above is all there is to check."""
    import pathlib
    import re

    names = {name.rsplit(".", 1)[-1] for _, name in _compat.PRIVATE_NAMES}
    names.add("_run_coros_in_chunks")  # replaced by a semaphore; must not come back
    # reached as an attribute, or imported by name
    pattern = re.compile("|".join(rf"(\.|import |, ){re.escape(n)}\b" for n in sorted(names)))
    package = pathlib.Path(_compat.__file__).parent
    found = [
        f"{path.relative_to(package)}:{n + 1}"
        for path in sorted(package.rglob("*.py"))
        if path.name != "_compat.py"
        for n, line in enumerate(path.read_text().splitlines())
        if pattern.search(line.split("#", 1)[0])
    ]
    assert found == []


def test_tested_releases_are_within_the_declared_bounds() -> None:
    """pyproject's bounds cover the releases installed here, which the suite tests."""
    from packaging.requirements import Requirement

    metadata = importlib.metadata.metadata("netcache")
    wanted = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    bounds = {r.name: r.specifier for r in wanted if r.name in ("fsspec", "s3fs")}
    assert set(bounds) == {"fsspec", "s3fs"}
    for name, spec in bounds.items():
        assert spec.contains(importlib.metadata.version(name)), (name, str(spec))
        assert "<" in str(spec), f"{name} has no upper bound"


def test_importing_compat_loads_no_optional_stack() -> None:
    import subprocess
    import sys

    code = (
        "import sys, netcache._compat; "
        "print([m for m in ('s3fs', 'distributed', 'aiohttp') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"

"""Byte sizes given as ints or human strings ("512MiB", "20 GB")."""

from __future__ import annotations

import re

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1 << 10,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1 << 20,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1 << 30,
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value: int | str, name: str, *, minimum: int = 0) -> int:
    """Return ``value`` as a number of bytes, or raise naming the argument ``name``.

    Accepts a non-negative int or a string such as ``"512MiB"``, ``"1.5 GB"``, ``"4096"``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise TypeError(
            f"{name} must be an int number of bytes or a string like '512MiB', "
            f"not {type(value).__name__}"
        )
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value)
        unit = match.group(2).lower() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"{name}={value!r} is not a size; use bytes or a number with one of the "
                f"units {', '.join(u for u in _UNITS if u)} (for example '512MiB')"
            )
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < minimum:
        raise ValueError(f"{name}={value!r} must be at least {minimum} bytes")
    return size


def format_size(n: int) -> str:
    """Render ``n`` bytes with a binary unit, for messages and the demo."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")

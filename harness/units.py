"""Byte sizes as people write them: ``256MB``, ``1.5GiB``, ``64k``, ``1000000``."""

from __future__ import annotations

import re

from harness.errors import ConfigError

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?)(b?)\s*$", re.IGNORECASE)


def parse_bytes(text: str | int) -> int:
    """Parse a byte size: decimal units (``MB`` = 10**6), binary with ``i`` (``MiB`` = 2**20)."""
    if isinstance(text, int):
        value = text
    else:
        m = _PATTERN.match(text)
        if not m:
            raise ConfigError(f"cannot read {text!r} as a byte size (try 256MB or 1GiB)")
        number, prefix, binary, _ = m.groups()
        prefix = prefix.lower()
        if binary and not prefix:
            raise ConfigError(f"cannot read {text!r} as a byte size (try 256MB or 1GiB)")
        scale = 1024 ** "kmgt".index(prefix) * 1024 if binary else _UNITS[prefix]
        value = int(float(number) * scale)
    if value <= 0:
        raise ConfigError(f"byte size must be positive, got {text!r}")
    return value


def format_bytes(n: float) -> str:
    """Human-readable binary size, e.g. ``'245.3 MiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"

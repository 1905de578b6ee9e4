"""Parsing of sizes and integers as users type them: 64M, 0x4000000, 1G; 0x1, 5, 0b101."""

from __future__ import annotations

__all__ = ["parse_int", "parse_size"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def parse_int(text) -> int:
    if isinstance(text, int):
        return text
    try:
        return int(str(text).strip().replace("_", ""), 0)
    except ValueError:
        raise ValueError(f"{text!r} is not an integer (decimal, 0x hex or 0b binary)") from None


def parse_size(text) -> int:
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("IB").removesuffix("B")
    unit = s[-1:] if s[-1:] in _UNITS and s[-1:] else ""
    num = s[:-1] if unit else s
    try:
        value = int(num, 0) * _UNITS[unit]
    except ValueError:
        raise ValueError(f"{text!r} is not a size (e.g. 64M, 1G, 0x4000000)") from None
    if value <= 0:
        raise ValueError(f"size must be positive, not {text!r}")
    return value

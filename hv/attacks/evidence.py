"""Searching what the hypervisor saw for a secret, and saying so in one line."""

from __future__ import annotations

__all__ = ["WINDOW", "find_all", "find_windows", "hexs", "text_of"]

WINDOW = 16  # one AES block: a 16-byte window of plaintext in a dump cannot be chance


def find_all(haystack: bytes, needle: bytes, limit: int = 8) -> list[int]:
    """Offsets of `needle` in `haystack` (at most `limit`)."""
    out: list[int] = []
    pos = haystack.find(needle)
    while pos >= 0 and len(out) < limit:
        out.append(pos)
        pos = haystack.find(needle, pos + 1)
    return out


def find_windows(haystack: bytes, secret: bytes, width: int = WINDOW) -> list[int]:
    """Offsets where any `width`-byte window of `secret` occurs: the leak test for a dump.
    Searching every window, not just the whole secret, also catches a secret cut by a page or
    block boundary."""
    width = min(width, len(secret))
    hits: set[int] = set()
    for i in range(len(secret) - width + 1):
        for pos in find_all(haystack, secret[i:i + width], limit=4):
            hits.add(pos - i)
    return sorted(hits)


def hexs(addrs: list[int], limit: int = 3) -> str:
    shown = ", ".join(f"{a:#x}" for a in addrs[:limit])
    return shown + (f" (+{len(addrs) - limit} more)" if len(addrs) > limit else "")


def text_of(data: bytes) -> str:
    """Bytes as a person reads them: quoted text when every byte is printable ASCII, else hex
    digits. Never Python's b'...' repr, whose escapes read as noise in an evidence line."""
    if not data:
        return "no bytes"
    if data and all(0x20 <= b < 0x7F for b in data) and b'"' not in data:
        return f'"{data.decode()}"'
    return f"hex {data.hex()}"

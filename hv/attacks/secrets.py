"""Fresh secrets for each run: the attacks must recover them, never rely on a known value."""

from __future__ import annotations

import os

__all__ = ["fresh_secret"]


def fresh_secret() -> bytes:
    """32 printable bytes, new every call and random from the first byte on (the side-channel
    attacks recover the leading bytes), so a demo reader can spot them in a dump."""
    return os.urandom(10).hex().encode() + b"-LAB-SECRET"[:11] + b"!"

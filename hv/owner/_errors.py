"""Errors of the guest owner's tools, each with the exit status the CLI turns it into.

1 = a check ran and failed (a broken chain, a measurement that does not match);
2 = the input itself is unusable (missing file, wrong size, not hex, bad format).
The CLI converts them in one place (`cli._OwnerGroup.invoke`).
"""

from __future__ import annotations

__all__ = ["OwnerError", "OwnerInputError", "OwnerCheckFailed"]


class OwnerError(Exception):
    """Base class; `exit_code` is what `hv owner ...` exits with."""

    exit_code = 2


class OwnerInputError(OwnerError, ValueError):
    """An input file or value is unusable (exit status 2)."""

    exit_code = 2


class OwnerCheckFailed(OwnerError):
    """A verification ran to the end and failed (exit status 1)."""

    exit_code = 1

"""The host files hv itself writes: the PSP's state file, --dump-dram, --trace.

A path that cannot be used is found before the guest runs and reported in one line with status 2
(``HostFileError``), never as a traceback: the state file's directory must exist or be creatable
and the state file, if there is one, must be a regular file (a FIFO would block the PSP's boot);
an output file must be creatable or writable.  A write that fails after the guest started (a full
disk) cannot be undone by a status: it becomes one line on stderr and the run keeps the guest's
exit status (``TraceSink``, and ``hv run``'s --dump-dram).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import IO

import click

__all__ = ["HostFileError", "EXIT_HOST_FILE", "default_psp_state", "prepare_psp_state", "check_writable",
           "TraceSink"]

EXIT_HOST_FILE = 2
"""Exit status for a path hv cannot use: a bad input, like bad usage or a bad image."""


class HostFileError(click.ClickException):
    """One line on stderr, ``<prefix>: <message>``, and status 2."""

    exit_code = EXIT_HOST_FILE

    def __init__(self, message: str, prefix: str = "hv") -> None:
        super().__init__(message)
        self.prefix = prefix

    def show(self, file: IO | None = None) -> None:
        click.echo(f"{self.prefix}: {self.format_message()}", err=True, file=file)


def default_psp_state() -> str:
    """The PSP's non-volatile storage when no --psp-state or $HV_PSP_STATE names one: the user's
    data directory ($XDG_DATA_HOME, else ~/.local/share)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "hv", "psp-state.json")


def prepare_psp_state(path: str | os.PathLike[str], prefix: str = "hv") -> str:
    """Make the state file's directory and check that an existing state file is a regular file;
    returns the path.  Whether the file itself can be written shows when the PSP saves it.

    A missing state file means a new platform identity (new chip keys, OCA, PEK, PDH): certificates
    exported before no longer match it.  That is said on stderr, with the path, since a mistyped
    --psp-state or $HV_PSP_STATE would otherwise change the platform's identity in silence."""
    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = "Not a directory" if isinstance(e, FileExistsError) else e.strerror
        raise HostFileError(f"cannot create the PSP state directory {p.parent}: {why} "
                            f"(choose a state file with --psp-state or $HV_PSP_STATE)", prefix) from None
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        click.echo(f"{prefix}: no PSP state file at {p.absolute()}: the PSP makes a new platform "
                   f"identity there", err=True)
        return str(p)
    except OSError as e:
        raise HostFileError(f"PSP state file {p}: {e.strerror}", prefix) from None
    if not stat.S_ISREG(mode):
        raise HostFileError(f"PSP state file {p} is not a regular file", prefix)
    return str(p)


def check_writable(path: str | os.PathLike[str], option: str, prefix: str = "hv") -> None:
    """Refuse an output path that cannot be written, before anything runs.  An existing regular
    file is opened for appending (nothing is truncated); a missing one is created and removed
    again; a pipe or device (/dev/stdout, a FIFO) is left alone, as opening it has effects."""
    p = Path(path)
    try:
        mode = os.stat(p).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise HostFileError(f"cannot write {option} {p}: {e.strerror}", prefix) from None
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISDIR(mode):
            raise HostFileError(f"cannot write {option} {p}: Is a directory", prefix)
        return
    try:
        with open(p, "ab"):
            pass
    except OSError as e:
        raise HostFileError(f"cannot write {option} {p}: {e.strerror}", prefix) from None
    if mode is None:
        p.unlink(missing_ok=True)


class TraceSink:
    """A text file for the tracer that stops writing at its first error instead of raising into
    the run (a full disk must not crash a guest); ``error`` says what went wrong."""

    def __init__(self, out: IO[str]) -> None:
        self._out = out
        self.error: OSError | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], option: str = "--trace") -> TraceSink:
        try:
            return cls(open(path, "w", encoding="utf-8"))  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise HostFileError(f"cannot write {option} {path}: {e.strerror}") from None

    def write(self, text: str) -> int:
        if self.error is None:
            try:
                return self._out.write(text)
            except OSError as e:
                self.error = e
        return 0

    def flush(self) -> None:
        if self.error is None:
            try:
                self._out.flush()
            except OSError as e:
                self.error = e

    def close(self) -> None:
        try:
            self._out.close()
        except OSError as e:
            if self.error is None:
                self.error = e

"""Typed errors of the PSP firmware.

Inside the firmware a command handler refuses by raising ``CommandError`` with the spec's
status code; the dispatcher is the one place that turns it into the SEV_RET_* value the mailbox
returns (STYLE: exceptions carry their exit code and are converted in exactly one place).

``NvStoreError`` is the one error that leaves the firmware as an exception: a state file that
cannot be read is a configuration problem of whoever constructs the machine, not something the
hypervisor did through the mailbox, so it is raised by ``Firmware(...)`` itself.  When a command
that changes the platform's identity cannot read or write the file, the dispatcher answers with
the error's ``status`` instead and keeps its text as a key-free diagnostic (``Firmware.nv_fault``).
"""

from __future__ import annotations

from sevwire import Status

__all__ = ["FirmwareError", "CommandError", "NvStoreError", "NvWriteError"]


class FirmwareError(Exception):
    """Base of the firmware's own exceptions."""


class CommandError(FirmwareError):
    """A command is refused with ``status``.

    ``writeback`` is the command buffer to store back before returning, for the commands whose
    failure still reports something (INVALID_LEN writes the lengths the caller should have given,
    as LAUNCH_MEASURE, PDH_CERT_EXPORT, ATTESTATION and GET_ID do on real parts).
    """

    def __init__(self, status: Status, why: str = "", *, writeback: bytes | None = None) -> None:
        super().__init__(f"{status.name}: {why}" if why else status.name)
        self.status = Status(status)
        self.writeback = writeback


class NvStoreError(FirmwareError):
    """The non-volatile state file is missing pieces, corrupt or from another format version.

    Real firmware answers INIT with SECURE_DATA_INVALID in that case; here the file is read when
    the PSP is constructed, so the error is raised there, with ``status`` for callers that want
    to show it the SEV way.
    """

    status = Status.SECURE_DATA_INVALID


class NvWriteError(NvStoreError):
    """The state file could not be locked or written (read-only directory, full disk, ...).

    Nothing changed: the file still holds the old state and the firmware keeps it in force.  A
    command that hits this answers HWERROR_PLATFORM, the spec's status for a hardware condition
    after which the parameter buffers are safe to reuse.
    """

    status = Status.HWERROR_PLATFORM

"""SEV firmware status codes (SEV_RET_*, sev-reference 5.3) and a one-line hint for each.

The names are the spec's (`SEV_RET_` dropped) so a status printed by hv can be looked up in AMD's
and Linux's documents; Linux's own spellings (`INAVLID_CONFIG`, `HWSEV_RET_PLATFORM`) are not
copied. 0x1E is unassigned in every source, so it has no member.
"""

from __future__ import annotations

import enum

__all__ = ["Status", "status_hint", "status_name"]


class Status(enum.IntEnum):
    """A SEV firmware return code, as the PSP writes it to the mailbox status register."""

    SUCCESS = 0x00
    INVALID_PLATFORM_STATE = 0x01
    INVALID_GUEST_STATE = 0x02
    INVALID_CONFIG = 0x03
    INVALID_LEN = 0x04
    ALREADY_OWNED = 0x05
    INVALID_CERTIFICATE = 0x06
    POLICY_FAILURE = 0x07
    INACTIVE = 0x08
    INVALID_ADDRESS = 0x09
    BAD_SIGNATURE = 0x0A
    BAD_MEASUREMENT = 0x0B
    ASID_OWNED = 0x0C
    INVALID_ASID = 0x0D
    WBINVD_REQUIRED = 0x0E
    DFFLUSH_REQUIRED = 0x0F
    INVALID_GUEST = 0x10
    INVALID_COMMAND = 0x11
    ACTIVE = 0x12
    HWERROR_PLATFORM = 0x13
    HWERROR_UNSAFE = 0x14
    UNSUPPORTED = 0x15
    INVALID_PARAM = 0x16
    RESOURCE_LIMIT = 0x17
    SECURE_DATA_INVALID = 0x18
    INVALID_PAGE_SIZE = 0x19
    INVALID_PAGE_STATE = 0x1A
    INVALID_MDATA_ENTRY = 0x1B
    INVALID_PAGE_OWNER = 0x1C
    AEAD_OFLOW = 0x1D
    EXIT_RING_BUFFER = 0x1F
    RMP_INIT_REQUIRED = 0x20
    BAD_SVN = 0x21
    BAD_VERSION = 0x22
    SHUTDOWN_REQUIRED = 0x23
    UPDATE_FAILED = 0x24
    RESTORE_REQUIRED = 0x25
    RMP_INITIALIZATION_FAILED = 0x26
    INVALID_KEY = 0x27

    @property
    def hint(self) -> str:
        """What a user should check when a command returns this code."""
        return _HINTS[self]


_HINTS: dict[Status, str] = {
    Status.SUCCESS: "the command completed",
    Status.INVALID_PLATFORM_STATE: "the platform is in the wrong state for this command (INIT first? guests still running?)",
    Status.INVALID_GUEST_STATE: "the guest is in the wrong state for this command (check the launch order)",
    Status.INVALID_CONFIG: "the platform configuration is invalid (e.g. SEV-ES requested without a TMR)",
    Status.INVALID_LEN: "a buffer length is wrong or too small for the result",
    Status.ALREADY_OWNED: "the platform is already owned; reset it before importing a new OCA",
    Status.INVALID_CERTIFICATE: "a certificate is malformed or of the wrong kind",
    Status.POLICY_FAILURE: "the guest policy forbids this, or the policy does not match the session",
    Status.INACTIVE: "the guest has no ASID: ACTIVATE it first",
    Status.INVALID_ADDRESS: "a physical address is invalid, misaligned or not owned by the guest",
    Status.BAD_SIGNATURE: "a signature did not verify",
    Status.BAD_MEASUREMENT: "a MAC or measurement did not verify (wrong keys or tampered data)",
    Status.ASID_OWNED: "the ASID is already used by another guest",
    Status.INVALID_ASID: "the ASID is out of range for this kind of guest",
    Status.WBINVD_REQUIRED: "caches must be written back (WBINVD) before this command",
    Status.DFFLUSH_REQUIRED: "DF_FLUSH is required before the ASID can be reused",
    Status.INVALID_GUEST: "no guest with this handle",
    Status.INVALID_COMMAND: "unknown command id",
    Status.ACTIVE: "the guest is still active: DEACTIVATE it first",
    Status.HWERROR_PLATFORM: "hardware error in the platform: the firmware state may be lost",
    Status.HWERROR_UNSAFE: "unsafe hardware error: the platform must be reset",
    Status.UNSUPPORTED: "this firmware does not support the feature",
    Status.INVALID_PARAM: "a parameter of the command buffer is invalid",
    Status.RESOURCE_LIMIT: "out of a firmware resource (guest contexts, ASIDs)",
    Status.SECURE_DATA_INVALID: "persistent firmware data failed its integrity check; INIT again",
    Status.INVALID_PAGE_SIZE: "SNP: wrong page size for this operation",
    Status.INVALID_PAGE_STATE: "SNP: the page's RMP state does not allow this operation",
    Status.INVALID_MDATA_ENTRY: "SNP: invalid metadata entry",
    Status.INVALID_PAGE_OWNER: "SNP: the page is owned by someone else",
    Status.AEAD_OFLOW: "SNP: the message sequence counter overflowed",
    Status.EXIT_RING_BUFFER: "the ring-buffer mode was exited",
    Status.RMP_INIT_REQUIRED: "SNP: the RMP must be initialized first",
    Status.BAD_SVN: "the firmware security version is too low",
    Status.BAD_VERSION: "the firmware version is not acceptable",
    Status.SHUTDOWN_REQUIRED: "SHUTDOWN is required before this command",
    Status.UPDATE_FAILED: "the firmware update failed",
    Status.RESTORE_REQUIRED: "a firmware restore is required",
    Status.RMP_INITIALIZATION_FAILED: "SNP: RMP initialization failed",
    Status.INVALID_KEY: "the key is invalid",
}


def status_name(code: int) -> str:
    """The spec name for a raw code, or UNKNOWN(0x..) for a code no source defines."""
    try:
        return Status(code).name
    except ValueError:
        return f"UNKNOWN(0x{code:02x})"


def status_hint(code: int) -> str:
    """The hint for a raw code; unknown codes get a generic hint instead of an exception."""
    try:
        return Status(code).hint
    except ValueError:
        return "status code not defined by the SEV API"

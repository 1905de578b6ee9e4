"""The one capability the PSP firmware holds over the machine.

The real AMD Secure Processor sits beside the memory controller: it can read and write system
memory (the mailbox command buffers, certificates and session blobs the driver leaves there),
read and write memory *through* a guest's key (LAUNCH_UPDATE_DATA encrypts in place, DBG_* and
LAUNCH_SECRET go through the guest key), and load keys into the memory controller's per-ASID key
slots; and it knows the platform's own CPUID, to check the table an SEV-SNP guest is promised.
Nothing else: the firmware never sees the CPU, the hypervisor or a VM object.

This module defines that capability as a structural ``Protocol`` so the firmware imports nothing
from ``hv``; the machine (``hv/hw``) implements it and raises ``PortError`` subclasses for
addresses outside DRAM or ASIDs the memory controller does not have.  The dispatcher turns those
into SEV_RET_INVALID_ADDRESS / SEV_RET_INVALID_ASID, so a hostile command buffer can never make
the firmware crash.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

__all__ = [
    "PlatformPort",
    "PortError",
    "PortAddressError",
    "PortAsidError",
]


class PortError(Exception):
    """Base of every error a ``PlatformPort`` raises for a refused access.

    The machine raises it (or a subclass) instead of an ``IndexError`` or a Unicorn error so the
    firmware can tell "the hypervisor gave a bad address" (answered with a status code) from "the
    firmware has a bug" (answered with HWERROR_PLATFORM).  A bare ``PortError`` is treated as a
    bad address.
    """


class PortAddressError(PortError):
    """The system-physical range is not (entirely) backed by DRAM."""


class PortAsidError(PortError):
    """The ASID is 0 (the host) or above the memory controller's highest key slot."""


@runtime_checkable
class PlatformPort(Protocol):
    """What the PSP can touch of the machine: system-physical memory and the key slots, plus
    what it knows of it (the ASID ranges, the cores' CPUID)."""

    max_asid: int
    """CPUID 0x8000001F ECX: the highest ASID (and number of encrypted guests)."""

    min_sev_asid: int
    """CPUID 0x8000001F EDX: ASIDs below it are for SEV-ES/SNP guests, EDX..ECX for plain SEV."""

    def read(self, spa: int, length: int) -> bytes:
        """Memory as a host access with C=0 sees it (command buffers, certs, session blobs)."""
        ...

    def write(self, spa: int, data: bytes) -> None:
        """Store bytes as a host access with C=0 would."""
        ...

    def read_guest(self, asid: int, spa: int, length: int) -> bytes:
        """Decrypt with the key in slot ``asid`` (coherent with the running guest's view)."""
        ...

    def write_guest(self, asid: int, spa: int, data: bytes) -> None:
        """Encrypt with the key in slot ``asid``."""
        ...

    def program_key(self, asid: int, key: bytes) -> None:
        """Load a 16-byte AES key into slot ``asid``; write-only, nothing reads a key back."""
        ...

    def clear_key(self, asid: int) -> None:
        """Forget the key in slot ``asid``."""
        ...

    def host_cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """(EAX, EBX, ECX, EDX) the platform's own cores return for CPUID ``leaf``/``subleaf``:
        what SNP_LAUNCH_UPDATE checks a guest's CPUID page against."""
        ...

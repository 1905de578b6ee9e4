"""firmware: the emulated AMD Secure Processor (PSP) running the SEV firmware API.

It is the only component of the machine that ever holds a key: guest VEKs, launch transport keys
(TEK/TIK) and the platform identity (ARK/ASK/CEK/OCA/PEK/PDH).  It imports nothing from ``hv``;
it touches the machine only through a ``PlatformPort`` (system memory, guest-key memory access
and the write-only key slots), and the hypervisor reaches it only through ``Firmware.command``.

    fw = Firmware(port, "psp-state.json")
    status = fw.command(Cmd.PLATFORM_STATUS, buf_spa)   # SEV_RET_* as an int

API version: SEV API 0.24, build 15 (>= 0.17, so the measurement covers the
API version and build: 0x04 || major || minor || build || policy || LD || MNONCE).
"""

from firmware._errors import CommandError, FirmwareError, NvStoreError, NvWriteError
from firmware._firmware import HANDLERS, Firmware, new_chip_identity
from firmware._identity import ChipIdentity
from firmware._context import API_MAJOR, API_MINOR, BUILD
from firmware.ports import PlatformPort, PortAddressError, PortAsidError, PortError

__all__ = [
    "Firmware",
    "new_chip_identity",
    "ChipIdentity",
    "HANDLERS",
    "FirmwareError",
    "CommandError",
    "NvStoreError",
    "NvWriteError",
    "PlatformPort",
    "PortError",
    "PortAddressError",
    "PortAsidError",
    "API_MAJOR",
    "API_MINOR",
    "BUILD",
]

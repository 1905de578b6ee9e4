"""PSP command buffers (sev-reference 5.2): the structures the hypervisor writes to memory before
ringing the mailbox doorbell, and the firmware parses.

Each buffer is a frozen dataclass whose `FORMAT` is a little-endian `struct` format; reserved
fields are `x` pad bytes, so packing writes zeros and unpacking ignores them, as the firmware does.
`SIZE` is checked against the spec size when the class is defined. `unpack` wants exactly `SIZE`
bytes: a short (or long) buffer is a BufferLengthError, which the firmware answers with
INVALID_LEN. Field names are the spec's (`gdh_cert_paddr`, `session_len`).
"""

from __future__ import annotations

import dataclasses
import re
import struct
from typing import ClassVar

from sevwire._commands import Cmd
from sevwire._errors import BufferLengthError, FieldRangeError

__all__ = [
    "CommandBuffer",
    "Init",
    "InitEx",
    "PlatformStatus",
    "PekCsr",
    "PekCertImport",
    "PdhCertExport",
    "GetId",
    "DownloadFirmware",
    "LaunchStart",
    "LaunchUpdateData",
    "LaunchUpdateVmsa",
    "LaunchMeasure",
    "LaunchSecret",
    "LaunchFinish",
    "Decommission",
    "Deactivate",
    "Activate",
    "GuestStatus",
    "DbgDecrypt",
    "DbgEncrypt",
    "Attestation",
    "MeasureResult",
    "BUFFER_FOR_CMD",
]


class CommandBuffer:
    """Base of the buffer dataclasses: struct packing driven by the class's FORMAT and SPEC_SIZE."""

    FORMAT: ClassVar[str]
    SPEC_SIZE: ClassVar[int]
    SIZE: ClassVar[int]
    _BYTES_LEN: ClassVar[tuple[int | None, ...]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.SIZE = struct.calcsize(cls.FORMAT)
        if cls.SIZE != cls.SPEC_SIZE:
            raise AssertionError(f"{cls.__name__}: FORMAT is {cls.SIZE} bytes, spec says {cls.SPEC_SIZE}")
        # struct pads or truncates an 's' field silently; remember each field's exact byte length
        # so pack() can refuse a 15-byte nonce instead of sending a zero-padded one.
        tokens = re.findall(r"(\d*)([xBHIQs])", cls.FORMAT[1:])
        cls._BYTES_LEN = tuple(int(n) if code == "s" else None for n, code in tokens if code != "x")

    def pack(self) -> bytes:
        """The buffer's wire bytes (reserved fields zero)."""
        values = [getattr(self, f.name) for f in dataclasses.fields(self)]  # type: ignore[arg-type]
        for field, value, size in zip(dataclasses.fields(self), values, self._BYTES_LEN):  # type: ignore[arg-type]
            if size is not None and (not isinstance(value, (bytes, bytearray)) or len(value) != size):
                raise FieldRangeError(f"{type(self).__name__}.{field.name} must be {size} bytes")
        try:
            return struct.pack(self.FORMAT, *values)
        except struct.error as exc:
            raise FieldRangeError(f"{type(self).__name__}: a field does not fit its width ({exc})") from None

    @classmethod
    def unpack(cls, buf: bytes):
        """Parse exactly SIZE bytes; anything else is a BufferLengthError (INVALID_LEN)."""
        buf = bytes(buf)
        if len(buf) != cls.SIZE:
            raise BufferLengthError(f"{cls.__name__} buffer: expected {cls.SIZE} bytes, got {len(buf)}")
        return cls(*struct.unpack(cls.FORMAT, buf))


@dataclasses.dataclass(frozen=True)
class Init(CommandBuffer):
    """INIT: `flags` bit 0 = SEV-ES (InitFlags), and the trusted memory region for ES state."""

    FORMAT = "<I4xQI"
    SPEC_SIZE = 0x14
    flags: int = 0
    tmr_paddr: int = 0
    tmr_len: int = 0


@dataclasses.dataclass(frozen=True)
class InitEx(CommandBuffer):
    """INIT_EX: INIT plus a 32 KiB non-volatile area; `length` must be 0x24."""

    FORMAT = "<IIQI4xQI"
    SPEC_SIZE = 0x24
    length: int = 0x24
    flags: int = 0
    tmr_paddr: int = 0
    tmr_len: int = 0
    nv_paddr: int = 0
    nv_len: int = 0


@dataclasses.dataclass(frozen=True)
class PlatformStatus(CommandBuffer):
    """PLATFORM_STATUS output (12 bytes). `owner` bit 0: externally owned; `config` bit 0: ES
    initialised (Linux reads bytes 3-6 as one u32 whose bit 8 is that same ES bit)."""

    FORMAT = "<BBBBHxBI"
    SPEC_SIZE = 12
    api_major: int = 0
    api_minor: int = 0
    state: int = 0
    owner: int = 0
    config: int = 0
    build: int = 0
    guest_count: int = 0


@dataclasses.dataclass(frozen=True)
class PekCsr(CommandBuffer):
    """PEK_CSR: where to write the CSR (an SEV cert with empty signatures); `len` is in/out."""

    FORMAT = "<QI"
    SPEC_SIZE = 12
    address: int = 0
    len: int = 0


@dataclasses.dataclass(frozen=True)
class PekCertImport(CommandBuffer):
    """PEK_CERT_IMPORT: the OCA-signed PEK and the OCA certificate."""

    FORMAT = "<QI4xQI"
    SPEC_SIZE = 0x1C
    pek_paddr: int = 0
    pek_len: int = 0
    oca_paddr: int = 0
    oca_len: int = 0


@dataclasses.dataclass(frozen=True)
class PdhCertExport(CommandBuffer):
    """PDH_CERT_EXPORT: the PDH (2084 B) and the chain PEK||OCA||CEK (6252 B); lengths in/out."""

    FORMAT = "<QI4xQI"
    SPEC_SIZE = 0x1C
    pdh_paddr: int = 0
    pdh_len: int = 0
    chain_paddr: int = 0
    chain_len: int = 0


@dataclasses.dataclass(frozen=True)
class GetId(CommandBuffer):
    """GET_ID: where to write the 64-byte chip id (per socket); `len` is in/out."""

    FORMAT = "<QI"
    SPEC_SIZE = 12
    address: int = 0
    len: int = 0


@dataclasses.dataclass(frozen=True)
class DownloadFirmware(CommandBuffer):
    """DOWNLOAD_FIRMWARE: address and length of a firmware image."""

    FORMAT = "<QI"
    SPEC_SIZE = 12
    address: int = 0
    len: int = 0


@dataclasses.dataclass(frozen=True)
class LaunchStart(CommandBuffer):
    """LAUNCH_START: `handle` 0 asks for a new guest context and is written back; the GODH
    certificate and the 128-byte session blob come from the guest owner."""

    FORMAT = "<IIQI4xQI"
    SPEC_SIZE = 0x24
    handle: int = 0
    policy: int = 0
    gdh_cert_paddr: int = 0
    gdh_cert_len: int = 0
    session_paddr: int = 0
    session_len: int = 0


@dataclasses.dataclass(frozen=True)
class LaunchUpdateData(CommandBuffer):
    """LAUNCH_UPDATE_DATA: encrypt `len` bytes at `paddr` in place and extend the launch digest."""

    FORMAT = "<I4xQI"
    SPEC_SIZE = 0x14
    handle: int = 0
    paddr: int = 0
    len: int = 0


@dataclasses.dataclass(frozen=True)
class LaunchUpdateVmsa(CommandBuffer):
    """LAUNCH_UPDATE_VMSA (SEV-ES): encrypt and measure one vCPU's 4 KiB VMSA page."""

    FORMAT = "<I4xQI"
    SPEC_SIZE = 0x14
    handle: int = 0
    paddr: int = 0
    len: int = 0


@dataclasses.dataclass(frozen=True)
class LaunchMeasure(CommandBuffer):
    """LAUNCH_MEASURE: where to write MEASURE||MNONCE (48 B); `len` is in/out (0 asks the size)."""

    FORMAT = "<I4xQI"
    SPEC_SIZE = 0x14
    handle: int = 0
    paddr: int = 0
    len: int = 0


@dataclasses.dataclass(frozen=True)
class LaunchSecret(CommandBuffer):
    """LAUNCH_SECRET: the 52-byte packet header, the guest destination and the ciphertext."""

    FORMAT = "<I4xQI4xQI4xQI"
    SPEC_SIZE = 0x34
    handle: int = 0
    hdr_paddr: int = 0
    hdr_len: int = 0
    guest_paddr: int = 0
    guest_len: int = 0
    trans_paddr: int = 0
    trans_len: int = 0


@dataclasses.dataclass(frozen=True)
class LaunchFinish(CommandBuffer):
    """LAUNCH_FINISH: the guest's handle only."""

    FORMAT = "<I"
    SPEC_SIZE = 4
    handle: int = 0


@dataclasses.dataclass(frozen=True)
class Decommission(CommandBuffer):
    """DECOMMISSION: the guest's handle only."""

    FORMAT = "<I"
    SPEC_SIZE = 4
    handle: int = 0


@dataclasses.dataclass(frozen=True)
class Deactivate(CommandBuffer):
    """DEACTIVATE: the guest's handle only."""

    FORMAT = "<I"
    SPEC_SIZE = 4
    handle: int = 0


@dataclasses.dataclass(frozen=True)
class Activate(CommandBuffer):
    """ACTIVATE: bind the guest's key to an ASID in the memory controller."""

    FORMAT = "<II"
    SPEC_SIZE = 8
    handle: int = 0
    asid: int = 0


@dataclasses.dataclass(frozen=True)
class GuestStatus(CommandBuffer):
    """GUEST_STATUS: `handle` in; policy, asid and state (GuestState) out. Packed, 13 bytes, as
    Linux's `sev_data_guest_status`."""

    FORMAT = "<IIIB"
    SPEC_SIZE = 13
    handle: int = 0
    policy: int = 0
    asid: int = 0
    state: int = 0


@dataclasses.dataclass(frozen=True)
class DbgDecrypt(CommandBuffer):
    """DBG_DECRYPT: copy `len` bytes decrypted with the guest key (refused under Policy.NODBG)."""

    FORMAT = "<I4xQQI"
    SPEC_SIZE = 0x1C
    handle: int = 0
    src: int = 0
    dst: int = 0
    len: int = 0


@dataclasses.dataclass(frozen=True)
class DbgEncrypt(CommandBuffer):
    """DBG_ENCRYPT: copy `len` bytes encrypted with the guest key (refused under Policy.NODBG)."""

    FORMAT = "<I4xQQI"
    SPEC_SIZE = 0x1C
    handle: int = 0
    src: int = 0
    dst: int = 0
    len: int = 0


@dataclasses.dataclass(frozen=True)
class Attestation(CommandBuffer):
    """ATTESTATION: write a PEK-signed report (208 B) binding `mnonce` to the launch digest."""

    FORMAT = "<I4xQ16sI"
    SPEC_SIZE = 0x24
    handle: int = 0
    paddr: int = 0
    mnonce: bytes = bytes(16)
    len: int = 0


@dataclasses.dataclass(frozen=True)
class MeasureResult(CommandBuffer):
    """What LAUNCH_MEASURE writes at `paddr`: MEASURE[32] || MNONCE[16] (MNONCE chosen by the PSP)."""

    FORMAT = "<32s16s"
    SPEC_SIZE = 48
    measurement: bytes = bytes(32)
    mnonce: bytes = bytes(16)


BUFFER_FOR_CMD: dict[Cmd, type[CommandBuffer]] = {
    Cmd.INIT: Init,
    Cmd.INIT_EX: InitEx,
    Cmd.PLATFORM_STATUS: PlatformStatus,
    Cmd.PEK_CSR: PekCsr,
    Cmd.PEK_CERT_IMPORT: PekCertImport,
    Cmd.PDH_CERT_EXPORT: PdhCertExport,
    Cmd.GET_ID: GetId,
    Cmd.DOWNLOAD_FIRMWARE: DownloadFirmware,
    Cmd.LAUNCH_START: LaunchStart,
    Cmd.LAUNCH_UPDATE_DATA: LaunchUpdateData,
    Cmd.LAUNCH_UPDATE_VMSA: LaunchUpdateVmsa,
    Cmd.LAUNCH_MEASURE: LaunchMeasure,
    Cmd.LAUNCH_SECRET: LaunchSecret,
    Cmd.LAUNCH_FINISH: LaunchFinish,
    Cmd.DECOMMISSION: Decommission,
    Cmd.DEACTIVATE: Deactivate,
    Cmd.ACTIVATE: Activate,
    Cmd.GUEST_STATUS: GuestStatus,
    Cmd.DBG_DECRYPT: DbgDecrypt,
    Cmd.DBG_ENCRYPT: DbgEncrypt,
    Cmd.ATTESTATION: Attestation,
}
"""The buffer layout of each command that takes one (SHUTDOWN, PEK_GEN, PDH_GEN, DF_FLUSH take none)."""

"""Test doubles for the PSP firmware: an in-memory machine and a mailbox driver.

``MemPort`` is a small ``PlatformPort``: DRAM is a bytearray, each key slot holds an AES-128 key
and guest accesses are AES-ECB of the plaintext XOR an address tweak (XE mode of sev-reference 3,
with a tweak made from the block address), so ``read_guest`` inverts ``write_guest`` only with
the same key and the same address.  It also keeps a log of key-slot operations, which the tests
use to prove the firmware never touched a slot it should not have; nothing in the firmware can
read a key back.

``MemPort.host_cpuid`` answers from ``HOST_CPUID``, a Zen 3-like part written out here by hand
(not taken from hv's CPU model), which the firmware checks SNP CPUID pages against.

``SnpMemPort`` adds what SEV-SNP needs: an RMP the firmware reads and writes (after SNP_INIT),
and the hypervisor's RMPUPDATE, which refuses immutable pages and always clears `validated`.

``Mailbox`` plays the driver: it writes a command buffer at a fixed address, rings the doorbell
(``Firmware.command``) and parses what the firmware wrote back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from firmware import Firmware, PortAddressError, PortAsidError
from sevwire import CommandBuffer

__all__ = ["MemPort", "SnpMemPort", "RmpRow", "Mailbox", "MB_BUF", "SCRATCH", "DRAM_SIZE",
           "HOST_CPUID"]

DRAM_SIZE = 8 << 20
MB_BUF = 0x1000
"""Where the mailbox driver writes command buffers."""
SCRATCH = 0x10000
"""Start of free memory for certificates, blobs and outputs in tests."""


_AMD = (0x68747541, 0x444D4163, 0x69746E65)  # "Auth" "cAMD" "enti": EBX, ECX, EDX
HOST_CPUID: dict[tuple[int, int], tuple[int, int, int, int]] = {
    (0x0, 0): (0x10, *_AMD),
    (0x1, 0): (0x00A00F11, 0x00020800, 0x7ED8320B, 0x178BFBFF),  # family 0x19, no hypervisor bit
    (0x7, 0): (0, 0x219C97A9, 0x0040069C, 0x00000010),
    (0x7, 1): (0, 0, 0, 0),
    (0x80000000, 0): (0x80000021, *_AMD),
    (0x80000001, 0): (0x00A00F11, 0, 0x75C237FF, 0x2FD3FBFF),
    (0x80000007, 0): (0, 0, 0, 0x100),  # invariant TSC
    (0x80000008, 0): (0x3030, 0, 0, 0),  # 48 physical, 48 linear address bits
    (0x8000001F, 0): (0x1F, 0x16F, 509, 0x80),  # SME..SNP; C-bit 47, 5 bits of reduction
}
"""The test platform's CPUID: (leaf, subleaf) -> (EAX, EBX, ECX, EDX); leaf 7 has subleaves."""


def _tweak(spa: int, length: int) -> bytes:
    # 16 bytes per block: the block's address, little-endian, so each block differs.
    first = spa // 16
    return b"".join(struct.pack("<QQ", first + i, 0x5E5E5E5E5E5E5E5E) for i in range(length // 16))


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "little") ^ int.from_bytes(b, "little")).to_bytes(len(a), "little")


@dataclass
class MemPort:
    """An in-memory machine implementing ``firmware.PlatformPort``."""

    max_asid: int = 15
    min_sev_asid: int = 5
    size: int = DRAM_SIZE
    dram: bytearray = field(default=None)  # type: ignore[assignment]
    slots: dict[int, bytes] = field(default_factory=dict)
    key_log: list[tuple[str, int]] = field(default_factory=list)
    guest_log: list[tuple[str, int, int, int]] = field(default_factory=list)
    """Every guest-key access: (read/write, asid, spa, length)."""

    def __post_init__(self) -> None:
        if self.dram is None:
            self.dram = bytearray(self.size)

    # -- checks ----------------------------------------------------------------------------------
    def _range(self, spa: int, length: int) -> None:
        if spa < 0 or length < 0 or spa + length > len(self.dram):
            raise PortAddressError(f"SPA range 0x{spa:x}+0x{length:x} is outside DRAM")

    def _key(self, asid: int) -> bytes:
        if not 1 <= asid <= self.max_asid:
            raise PortAsidError(f"no key slot {asid}")
        key = self.slots.get(asid)
        if key is None:
            raise PortAsidError(f"key slot {asid} is empty")
        return key

    # -- PlatformPort ----------------------------------------------------------------------------
    def read(self, spa: int, length: int) -> bytes:
        self._range(spa, length)
        return bytes(self.dram[spa:spa + length])

    def write(self, spa: int, data: bytes) -> None:
        self._range(spa, len(data))
        self.dram[spa:spa + len(data)] = data

    def _blocks(self, spa: int, length: int) -> tuple[int, int]:
        start = spa & ~15
        end = (spa + length + 15) & ~15
        return start, end

    def read_guest(self, asid: int, spa: int, length: int) -> bytes:
        self.guest_log.append(("read", asid, spa, length))
        return self._read_guest(asid, spa, length)

    def _read_guest(self, asid: int, spa: int, length: int) -> bytes:
        key = self._key(asid)
        self._range(spa, length)
        start, end = self._blocks(spa, length)
        self._range(start, end - start)
        dec = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
        plain = _xor(dec.update(bytes(self.dram[start:end])), _tweak(start, end - start))
        return plain[spa - start:spa - start + length]

    def write_guest(self, asid: int, spa: int, data: bytes) -> None:
        self.guest_log.append(("write", asid, spa, len(data)))
        key = self._key(asid)
        self._range(spa, len(data))
        start, end = self._blocks(spa, len(data))
        self._range(start, end - start)
        plain = bytearray(self._read_guest(asid, start, end - start))
        plain[spa - start:spa - start + len(data)] = data
        enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        self.dram[start:end] = enc.update(_xor(bytes(plain), _tweak(start, end - start)))

    def program_key(self, asid: int, key: bytes) -> None:
        if not 1 <= asid <= self.max_asid:
            raise PortAsidError(f"no key slot {asid}")
        if len(key) != 16:
            raise ValueError("key slots take 16-byte keys")
        self.slots[asid] = bytes(key)
        self.key_log.append(("program", asid))

    def clear_key(self, asid: int) -> None:
        if not 1 <= asid <= self.max_asid:
            raise PortAsidError(f"no key slot {asid}")
        self.slots.pop(asid, None)
        self.key_log.append(("clear", asid))

    def host_cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        return HOST_CPUID.get((leaf, subleaf if leaf == 7 else 0), (0, 0, 0, 0))

    # -- test helpers (hardware-level access, not part of the port) -----------------------------
    def encrypt_with(self, key: bytes, spa: int, plain: bytes) -> bytes:
        """What DRAM holds for ``plain`` at ``spa`` under ``key`` (independent of the slots)."""
        enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        return enc.update(_xor(plain, _tweak(spa, len(plain))))


RmpRow = tuple[bool, int, int, int, bool, bool, bool]
"""(assigned, asid, gpa, page_size, immutable, validated, vmsa), as ``rmp_read`` returns it."""
HYPERVISOR_PAGE: RmpRow = (False, 0, 0, 0, False, False, False)


@dataclass
class SnpMemPort(MemPort):
    """``MemPort`` with an RMP: one entry per 4 KiB page, off until SNP_INIT (``enable_rmp``)."""

    rmp: dict[int, RmpRow] | None = None

    def _page(self, spa: int) -> None:
        if self.rmp is None:
            raise PortAddressError("the RMP is not enabled")
        if spa % 0x1000 or not 0 <= spa < len(self.dram):
            raise PortAddressError(f"0x{spa:x} is not a page of DRAM")

    def enable_rmp(self) -> None:
        self.rmp = {}

    def rmp_read(self, spa: int) -> RmpRow:
        self._page(spa)
        return self.rmp.get(spa, HYPERVISOR_PAGE)  # type: ignore[union-attr]

    def rmp_write(self, spa: int, assigned: bool, asid: int, gpa: int, immutable: bool,
                  validated: bool, vmsa: bool) -> None:
        self._page(spa)
        self.rmp[spa] = (assigned, asid, gpa, 0, immutable, validated, vmsa)  # type: ignore[index]

    # -- the hypervisor's RMPUPDATE, for tests: not part of the port ----------------------------
    def rmpupdate(self, spa: int, assigned: bool = False, asid: int = 0, gpa: int = 0,
                  immutable: bool = False) -> bool:
        """RMPUPDATE: False (nothing changed) for an immutable page; clears validated and VMSA."""
        self._page(spa)
        if self.rmp_read(spa)[4]:
            return False
        row = (assigned, asid if assigned else 0, gpa if assigned else 0, 0, immutable, False, False)
        self.rmp[spa] = row  # type: ignore[index]
        return True

    def rmp_snapshot(self) -> dict[int, RmpRow]:
        return dict(self.rmp or {})


class Mailbox:
    """The driver side of the PSP mailbox, for tests."""

    def __init__(self, fw: Firmware, port: MemPort, buf_spa: int = MB_BUF) -> None:
        self.fw = fw
        self.port = port
        self.buf_spa = buf_spa

    def call(self, cmd: int, buf: CommandBuffer | None = None) -> tuple[int, CommandBuffer | None]:
        """Write ``buf``, ring the doorbell, return (status, the buffer as written back)."""
        if buf is not None:
            self.port.write(self.buf_spa, buf.pack())
        status = self.fw.command(int(cmd), self.buf_spa)
        out = None
        if buf is not None:
            out = type(buf).unpack(self.port.read(self.buf_spa, type(buf).SIZE))
        return status, out

    def status(self, cmd: int, buf: CommandBuffer | None = None) -> int:
        return self.call(cmd, buf)[0]

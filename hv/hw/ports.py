"""The narrow capabilities the machine hands out: one per party, each only what that party needs.

- HostPort: the hypervisor's view of host physical memory. It reads what DRAM stores (ciphertext
  of private guest pages) unless the host sets its own C-bit, which selects the host's SME key.
- DmaPort: a device's view. Never a guest key; the host key only under transparent SME.
- ColdBootPort: DRAM cells as a physical attacker reads them.
- PspPort: the PSP's capability (firmware.ports.PlatformPort): memory, memory through a guest
  key, write-only key slots, and the part's own CPUID. Errors become firmware PortError
  subclasses so the firmware can answer a hostile command buffer with a status code.
"""

from __future__ import annotations

from firmware.ports import PortAddressError, PortAsidError
from hv.hw.addr import SPA
from hv.hw.cpuid import EPYC, CpuModel
from hv.hw.engine import KeySlotPort
from hv.hw.errors import AddressError, AsidError, KeySlotError
from hv.hw.memctl import MemoryController
from hv.hw.rmp import RmpEntry

__all__ = ["ColdBootPort", "DmaPort", "HostPort", "PspPort"]


class HostPort:
    """Host physical memory for the hypervisor (never a guest key)."""

    __slots__ = ("_mc",)

    def __init__(self, mc: MemoryController):
        self._mc = mc

    @property
    def size(self) -> int:
        return self._mc.size

    def read(self, spa: SPA, length: int, c_bit: bool = False) -> bytes:
        self._mc.check_host(spa, length)
        return self._mc.read(spa, length, self._mc.host_slot(c_bit))

    def write(self, spa: SPA, data: bytes, c_bit: bool = False) -> None:
        self._mc.check_host_write(spa, len(data))
        self._mc.write(spa, data, self._mc.host_slot(c_bit))


class DmaPort:
    """What a bus-mastering device reaches: host memory without any guest key."""

    __slots__ = ("_mc",)

    def __init__(self, mc: MemoryController):
        self._mc = mc

    def read(self, spa: SPA, length: int) -> bytes:
        self._mc.check_host(spa, length)
        return self._mc.read(spa, length, self._mc.host_slot(False))

    def write(self, spa: SPA, data: bytes) -> None:
        self._mc.check_host_write(spa, len(data))
        self._mc.write(spa, data, self._mc.host_slot(False))


class ColdBootPort:
    """The DRAM chips themselves: caches flushed, no key applied."""

    __slots__ = ("_mc",)

    def __init__(self, mc: MemoryController):
        self._mc = mc

    def dump(self, spa: SPA = SPA(0), length: int | None = None) -> bytes:
        return self._mc.raw_dump(spa, length)


class PspPort:
    """firmware.ports.PlatformPort over the memory controller and the engine's key slots."""

    def __init__(self, mc: MemoryController, keys: KeySlotPort, min_sev_asid: int,
                 model: CpuModel = EPYC):
        self._mc = mc
        self._keys = keys
        self._model = model
        self.max_asid = mc.engine.max_asid
        self.min_sev_asid = min_sev_asid

    def host_cpuid(self, leaf: int, subleaf: int) -> tuple[int, int, int, int]:
        """The part's own CPUID (the machine's CpuModel), which SNP_LAUNCH_UPDATE checks a CPUID
        page against."""
        return self._model.host_cpuid(leaf, subleaf)

    def read(self, spa: int, length: int) -> bytes:
        with _as_port_errors():
            return self._mc.read(spa, length, self._mc.host_slot(False))

    def write(self, spa: int, data: bytes) -> None:
        with _as_port_errors():
            self._mc.write(spa, data, self._mc.host_slot(False))

    def read_guest(self, asid: int, spa: int, length: int) -> bytes:
        with _as_port_errors():
            self._guest_asid(asid)
            return self._mc.read(spa, length, asid)

    def write_guest(self, asid: int, spa: int, data: bytes) -> None:
        with _as_port_errors():
            self._guest_asid(asid)
            self._mc.write(spa, data, asid)

    def reserve_tmr(self, spa: int, length: int) -> None:
        """Fence the SEV-ES trusted memory region off from the host, devices and guests (not
        from the PSP or the CPU, which keep VMSA integrity values there); under SNP its pages
        are Firmware pages in the RMP. INIT calls this."""
        with _as_port_errors():
            self._mc.fence(spa, length)

    # -- SEV-SNP: the PSP writes RMP entries directly (launch pages, its own pages) ---------------
    def enable_rmp(self) -> None:
        """SNP_INIT: the memory controller starts checking the RMP (all pages hypervisor-owned)."""
        self._mc.enable_rmp()

    def rmp_read(self, spa: int) -> tuple[bool, int, int, int, bool, bool, bool]:
        """(assigned, asid, gpa, page_size, immutable, validated, vmsa) of the page at `spa`."""
        with _as_port_errors():
            e = self._rmp().read(spa)
            return e.assigned, e.asid, e.gpa, e.page_size, e.immutable, e.validated, e.vmsa

    def rmp_write(self, spa: int, assigned: bool, asid: int, gpa: int, immutable: bool,
                  validated: bool, vmsa: bool) -> None:
        with _as_port_errors():
            self._rmp().firmware_set(spa, RmpEntry(assigned, asid, gpa, 0, immutable, validated,
                                                   vmsa))
            self._mc.bump()

    def _rmp(self):
        if self._mc.rmp is None:
            raise AddressError("the RMP is not enabled")
        return self._mc.rmp

    def program_key(self, asid: int, key: bytes) -> None:
        with _as_port_errors():
            self._guest_asid(asid)
            self._retire_view(asid)
            self._keys.program_key(asid, key)

    def clear_key(self, asid: int) -> None:
        with _as_port_errors():
            self._guest_asid(asid)
            self._retire_view(asid)
            self._keys.clear_key(asid)

    def _guest_asid(self, asid: int) -> None:
        if not isinstance(asid, int) or not 1 <= asid <= self.max_asid:
            raise AsidError(f"ASID {asid} is outside 1..{self.max_asid}")

    def _retire_view(self, asid: int) -> None:
        # Plaintext cached under the old key goes back to DRAM under the old key, then is dropped:
        # a new key must never see (or be mixed with) the previous guest's plaintext.
        view = self._mc.views.pop(asid, None)
        if view is not None:
            if self._mc.engine.has_key(asid):
                self._mc.views[asid] = view
                self._mc.writeback_view(view)
                del self._mc.views[asid]
            self._mc.bump(code=True)


class _as_port_errors:
    """Translate the machine's typed errors into the firmware's, so nothing else leaks through."""

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is None:
            return False
        if isinstance(exc, (AsidError, KeySlotError)):
            raise PortAsidError(str(exc)) from exc
        if isinstance(exc, (AddressError, ValueError)):
            raise PortAddressError(str(exc)) from exc
        return False

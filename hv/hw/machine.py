"""The machine: one SoC with DRAM, a memory controller, an AES engine, a PSP and CPU cores.

The machine hands out capabilities, never itself: the hypervisor gets a HypervisorPort (the host
memory port, the PSP mailbox, CPUs, nested page tables, the RMP instructions); the PSP firmware
gets a PspPort with the key slots; a physical attacker gets PhysicalAccess (DMA, the DRAM cells),
asked for separately (hv.hw.grants). Nothing here returns a key.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from hv.hw.addr import SPA
from hv.hw.cpu import Cpu, GuestControl
from hv.hw.cpuid import EPYC, CpuModel
from hv.hw.engine import AesEngine, KeySlotPort, TweakMode
from hv.hw.grants import HypervisorPort, KeyServer, PhysicalAccess
from hv.hw.memctl import MemoryController
from hv.hw.npt import NestedPageTable
from hv.hw.oscpu import OsCpu
from hv.hw.osmem import PrivateRam
from hv.hw.pvalidate import OsValidation
from hv.hw.ports import ColdBootPort, DmaPort, HostPort, PspPort
from hv.hw.psp import PspMailbox
from hv.hw.rmp import RmpEntry

__all__ = ["Machine", "MachineConfig", "TweakMode"]

SEV_STATUS = 0xC0010131  # read-only: bit 0 SEV, 1 SEV-ES, 2 SEV-SNP
# The MSRs whose accesses an SEV-ES guest's #VC handler forwards to the hypervisor (the rest run
# on the core, as KVM passes them through): the TSC, APIC base, microcode patch level, the
# machine-check registers and AMD's configuration registers (SYSCFG, HWCR, DE_CFG).
ES_VC_MSRS = frozenset({0x10, 0x1B, 0x8B, 0x179, 0x17A, 0x17B, 0xC0010010, 0xC0010015,
                        0xC0011029})


def _ignore(_value: int) -> None:
    """A write to a read-only MSR the core does not fault on."""


@dataclass(frozen=True)
class MachineConfig:
    dram_size: int = 256 << 20
    model: CpuModel = EPYC
    tweak: TweakMode = TweakMode.XEX_RANDOM
    tweak_constants: tuple[int, ...] | None = None
    tsme: bool = False
    psp_state: str | os.PathLike | None = None  # the PSP's non-volatile storage; None: in memory


class Machine:
    def __init__(self, config: MachineConfig = MachineConfig()):
        self.config = config
        self.model = config.model
        engine = AesEngine(config.model.max_asid, config.tweak,
                           list(config.tweak_constants) if config.tweak_constants else None)
        self._mc = MemoryController(config.dram_size, engine, tsme=config.tsme)
        self._keys = KeySlotPort(engine)
        self.host = HostPort(self._mc)
        self.dma = DmaPort(self._mc)
        self.cold_boot = ColdBootPort(self._mc)
        self.psp = PspMailbox(self._make_firmware)
        self.kds = KeyServer(lambda: self.psp_firmware)

    @property
    def psp_firmware(self):
        """The PSP's firmware itself, booted: for the platform owner's diagnostics (`hv psp`'s
        state-file faults) and for tests that check it. No hypervisor capability reaches it."""
        self.psp.boot()
        return self.psp._firmware()

    def hypervisor_port(self) -> HypervisorPort:
        """What a hypervisor on this machine may use (hv.kvm.Kvm's view of it)."""
        return HypervisorPort(self)

    def physical_access(self) -> PhysicalAccess:
        """A physical attacker's reach: DMA, the DRAM cells, a power cycle of the same part."""
        return PhysicalAccess(self.dma, self.cold_boot, self._power_cycled_read)

    def _power_cycled_read(self, cells: bytes) -> bytes:
        fresh = Machine(MachineConfig(dram_size=len(cells), model=self.model,
                                      tweak=self.tweak_mode(), tsme=self.tsme))
        fresh.host.write(SPA(0), cells)
        return fresh.host.read(SPA(0), len(cells), c_bit=True)

    def _make_firmware(self):
        from firmware import Firmware  # the PSP's own code, loaded when the PSP first boots

        port = PspPort(self._mc, self._keys, self.model.min_sev_asid, self.model)
        return Firmware(port, self.config.psp_state)

    @property
    def dram_size(self) -> int:
        return self._mc.size

    @property
    def tsme(self) -> bool:
        return self._mc.tsme

    def host_cpuid(self, leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
        return self.model.host_cpuid(leaf, subleaf)

    def tweak_mode(self) -> TweakMode:
        return self._mc.engine.mode

    def tweak_constants(self) -> list[int]:
        """The linear-tweak constants of this part (public properties of the silicon, not keys)."""
        return self._mc.engine.tweak_constants()

    def new_npt(self) -> NestedPageTable:
        return NestedPageTable(self._mc.size, self._mc.bump)

    def new_cpu(self, control: GuestControl) -> Cpu:
        return Cpu(self._mc, control)

    def new_os_cpu(self, ram_spa: SPA, ram_size: int, asid: int = 0, cbit: int = 0,
                   sev_status: int = 0, npt: NestedPageTable | None = None, **devices) -> OsCpu:
        """A core for an operating system over host memory [ram_spa, ram_spa + ram_size)
        (hv.hw.oscpu); `devices` are its in-kernel port devices, CPUID table and TSC. With an
        `asid` the guest is encrypted with that key: its C-bit (`cbit`) leads to private memory
        (hv.hw.osmem) and SEV_STATUS reads `sev_status`; with its SNP bit, PVALIDATE and
        RMPADJUST act on the RMP (hv.hw.pvalidate.OsValidation)."""
        self._mc.check_range(ram_spa, ram_size)
        self._mc.check_host(ram_spa, ram_size)
        if not asid:
            return OsCpu(self._mc.dram.ctypes.data + ram_spa, ram_size, **devices)
        self._mc.check_slot(asid)
        private = PrivateRam(self._mc, ram_spa, ram_size, asid, npt)  # follows the VM's `npt`
        msrs = {SEV_STATUS: (lambda: sev_status, _ignore)}
        es = bool(sev_status & 2)
        validation = None
        if sev_status & 4:
            if self._mc.rmp is None:
                private.close()
                raise RuntimeError("an SEV-SNP core needs SNP enabled (SNP_INIT)")
            validation = OsValidation(self._mc.rmp, ram_spa, ram_size, asid)
        try:
            return OsCpu(self._mc.dram.ctypes.data + ram_spa, ram_size, private=private, cbit=cbit,
                         msrs=msrs, es=es, vc_msrs=ES_VC_MSRS if es else frozenset(),
                         validation=validation, **devices)
        except BaseException:
            private.close()  # a refused core leaves the memory controller as it was
            raise

    def stats(self) -> dict[str, int]:
        return dict(self._mc.stats)

    # -- SEV-SNP: the RMP ---------------------------------------------------------------------------
    @property
    def snp_enabled(self) -> bool:
        return self._mc.rmp is not None

    def rmpupdate(self, spa: SPA, entry: RmpEntry) -> int:
        """RMPUPDATE, the hypervisor's instruction: the status code (0 = success).

        Every TLB is flushed afterwards, so guests see the new ownership at their next access."""
        rmp = self._mc.rmp
        if rmp is None:
            raise RuntimeError("RMPUPDATE needs SNP enabled (SNP_INIT)")
        self._mc.check_range(spa, 0x1000)
        if entry.assigned:
            # The page's cached plaintext of any other owner goes back to DRAM first.
            self._mc.writeback(spa >> 12, (spa >> 12) + 1)
        status = rmp.rmpupdate(spa, entry)
        self._mc.bump()
        return status

    def rmpread(self, spa: SPA) -> RmpEntry:
        """RMPREAD: the entry of one host page."""
        if self._mc.rmp is None:
            raise RuntimeError("RMPREAD needs SNP enabled (SNP_INIT)")
        return self._mc.rmp.read(spa)

    def rmp_census(self, spa: SPA, size: int) -> dict[str, int]:
        """RMPREAD over the pages of [spa, spa + size), counted: assigned (to a guest or the
        firmware), of those validated, and the hypervisor's own (not assigned)."""
        rmp = self._mc.rmp
        if rmp is None:
            raise RuntimeError("RMPREAD needs SNP enabled (SNP_INIT)")
        self._mc.check_range(spa, size)
        p0, p1 = spa >> 12, (spa + size + 0xFFF) >> 12
        assigned = int(rmp.assigned[p0:p1].sum())
        return {"assigned": assigned, "validated": int((rmp.assigned[p0:p1] & rmp.validated[p0:p1]).sum()),
                "hypervisor": (p1 - p0) - assigned}

    def flush_caches(self) -> None:
        """WBINVD on every core: dirty plaintext goes back to DRAM as ciphertext."""
        self._mc.flush_all()

"""The capabilities the machine hands out, one per party, and nothing else.

A hypervisor gets a `HypervisorPort`: the host memory port (DRAM as stored; the host's own SME
key on request), the PSP mailbox (command buffers and a doorbell), new CPUs and nested page
tables, RMPUPDATE/RMPREAD, WBINVD and the part's public properties. It gets no DMA device and no
DRAM probe (those are a physical attacker's, `PhysicalAccess`, granted separately and only on
request), no tweak constants and nothing of the firmware or the key slots.

Python cannot stop code that means to reach through an object; what these classes give is a
boundary that can be checked: each holds bound operations, not the machine, and the attack lab's
source is scanned for any reach past them (tests/security/test_attack_boundaries.py).
"""

from __future__ import annotations

from typing import Any, Callable

from hv.hw.engine import TweakMode
from hv.hw.addr import SPA
from hv.hw.ports import ColdBootPort, DmaPort, HostPort
from hv.hw.rmp import RmpEntry

__all__ = ["HostPort", "HypervisorPort", "KeyServer", "PhysicalAccess", "TweakMode"]


class KeyServer:
    """AMD's key distribution service as this host reaches it: the public ASK/ARK certificates
    and the chip's VCEK certificate. On real parts these come from AMD over the network, not from
    a PSP command (no SEV or SNP command returns them); here the emulated PSP's identity also plays
    AMD, so the server answers from it. Public certificates only."""

    __slots__ = ("amd_chain", "vcek", "kds_chain")

    def __init__(self, firmware: Callable[[], Any]) -> None:
        self.amd_chain: Callable[[], tuple[bytes, bytes]] = lambda: firmware().export_amd_chain()
        self.vcek: Callable[[], bytes] = lambda: firmware().export_vcek()
        self.kds_chain: Callable[[], tuple[bytes, bytes]] = lambda: firmware().export_kds_chain()


class HypervisorPort:
    """What /dev/kvm and the SEV driver need of the machine (hv.kvm.Kvm holds one)."""

    __slots__ = ("host", "psp", "kds", "model", "host_cpuid", "tweak_mode", "new_npt", "new_cpu", "new_os_cpu",
                 "stats", "rmpupdate", "rmpread", "flush_caches", "_snp", "_tsme")

    def __init__(self, machine) -> None:
        self.host: HostPort = machine.host
        self.psp = machine.psp
        self.kds: KeyServer = machine.kds
        self.model = machine.model
        self.host_cpuid = machine.host_cpuid
        self.tweak_mode: Callable[[], TweakMode] = machine.tweak_mode
        self.new_npt = machine.new_npt
        self.new_cpu = machine.new_cpu
        self.new_os_cpu = machine.new_os_cpu
        self.stats = machine.stats
        self.rmpupdate: Callable[[SPA, RmpEntry], int] = machine.rmpupdate
        self.rmpread: Callable[[SPA], RmpEntry] = machine.rmpread
        self.flush_caches = machine.flush_caches
        self._snp: Callable[[], bool] = lambda: machine.snp_enabled
        self._tsme: bool = machine.tsme

    @property
    def dram_size(self) -> int:
        return self.host.size

    @property
    def tsme(self) -> bool:
        return self._tsme

    @property
    def snp_enabled(self) -> bool:
        return self._snp()


class PhysicalAccess:
    """A physical attacker at the host: a bus-mastering DMA device (the host's view, no guest
    key), the DRAM cells themselves (cold boot), and a second power-on of the same part to read
    frozen cells through its new keys. Not a hypervisor's: granted only when asked for."""

    __slots__ = ("dma", "cold_boot", "_power_cycle")

    def __init__(self, dma: DmaPort, cold_boot: ColdBootPort,
                 power_cycle: Callable[[bytes], bytes]) -> None:
        self.dma = dma
        self.cold_boot = cold_boot
        self._power_cycle = power_cycle

    def power_cycle_read(self, cells: bytes) -> bytes:
        """Write frozen `cells` into a freshly powered machine of the same part (new host key,
        new tweak if per-boot) at SPA 0 and read them back through its host key."""
        return self._power_cycle(cells)

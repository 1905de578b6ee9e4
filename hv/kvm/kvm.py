"""KVM-shaped system, VM and memory-slot objects over the machine.

Kvm is the open /dev/kvm: it owns host physical memory allocation and the ASID space. A Vm has a
type (plain, sev, sev-es, sev-snp), memory slots (GPA range -> host physical memory the Kvm
allocated), a nested page table the hypervisor controls, and vCPUs. Encrypted types get their
keys only through the PSP (hv.kvm.sev); nothing here ever sees one.
"""

from __future__ import annotations

from dataclasses import dataclass

from hv.hw.addr import GPA, SPA
from hv.hw.cpu import GuestControl
from hv.hw.grants import HostPort, HypervisorPort
from hv.hw.machine import Machine
from hv.hw.npt import NPT_RWX
from hv.hw.oscpu import OsCpu
from hv.hw.rmp import RMP_NPF
from hv.kvm.cpuid import cpuid_lookup, guest_cpuid_table
from hv.kvm.errors import KvmError
from hv.kvm.ghcb import MsrProto
from hv.kvm.mode import Mode
from hv.kvm.sev import SevGuest
from hv.kvm.vcpu import MemoryFault, Vcpu

__all__ = ["Kvm", "KvmError", "MemorySlot", "VM_TYPES", "Vm"]

VM_TYPES = tuple(Mode)
_PAGE = 0x1000
HOST_RESERVED = 1 << 20  # the hypervisor's own pages (PSP command buffers, certificates)
_HOST_RING_START = 16    # the host-buffer ring starts past SPA 0 (see alloc_host_buffer)
_NPF_WRITE, _NPF_FETCH = 1 << 1, 1 << 4  # a nested page fault's EXITINFO1 bits


@dataclass(frozen=True)
class MemorySlot:
    slot: int
    gpa: GPA
    size: int
    spa: SPA


class Kvm:
    """/dev/kvm on one machine."""

    def __init__(self, machine: Machine | HypervisorPort):
        # The hypervisor's capabilities, never the machine itself: no DMA device, no DRAM probe,
        # no tweak constants, nothing of the firmware (hv.hw.grants).
        self.machine = machine if isinstance(machine, HypervisorPort) else machine.hypervisor_port()
        self._free = [(HOST_RESERVED, machine.dram_size - HOST_RESERVED)]
        self._host_next = _HOST_RING_START
        self._asids_used: set[int] = set()
        self.vms: list[Vm] = []

    # -- host physical memory --------------------------------------------------------------------------
    def alloc(self, size: int, align: int = _PAGE) -> SPA:
        size = (size + _PAGE - 1) & ~(_PAGE - 1)
        for i, (start, length) in enumerate(self._free):
            a = (start + align - 1) & ~(align - 1)
            if a + size <= start + length:
                rest = []
                if a > start:
                    rest.append((start, a - start))
                if a + size < start + length:
                    rest.append((a + size, start + length - a - size))
                self._free[i:i + 1] = rest
                return SPA(a)
        raise KvmError(f"out of host memory: cannot allocate {size >> 20} MiB "
                       f"(DRAM is {self.machine.dram_size >> 20} MiB)")

    def free(self, spa: SPA, size: int) -> None:
        size = (size + _PAGE - 1) & ~(_PAGE - 1)
        self._free.append((spa, size))
        self._free.sort()
        merged: list[tuple[int, int]] = []
        for s, n in self._free:
            if merged and merged[-1][0] + merged[-1][1] == s:
                merged[-1] = (merged[-1][0], merged[-1][1] + n)
            else:
                merged.append((s, n))
        self._free = merged

    def alloc_host_buffer(self, size: int) -> int:
        """A buffer in the hypervisor's reserved area (command buffers for the PSP), a ring that
        never hands out SPA 0: the PSP reads a zero address as "none" (LAUNCH_START without a
        session, a certificate length query), so a blob put there would silently be ignored."""
        size = (size + 15) & ~15
        if self._host_next + size > HOST_RESERVED:
            self._host_next = _HOST_RING_START
        spa = self._host_next
        self._host_next += size
        return spa

    # -- ASIDs -----------------------------------------------------------------------------------------
    def alloc_asid(self, es: bool) -> int:
        """SEV-ES/SNP guests take ASIDs 1..EDX-1, plain SEV guests EDX..ECX (as KVM does)."""
        model = self.machine.model
        lo, hi = (1, model.min_sev_asid - 1) if es else (model.min_sev_asid, model.max_asid)
        for asid in range(lo, hi + 1):
            if asid not in self._asids_used:
                self._asids_used.add(asid)
                return asid
        raise KvmError(f"no free {'SEV-ES' if es else 'SEV'} ASID ({lo}..{hi} all in use)")

    def free_asid(self, asid: int) -> None:
        self._asids_used.discard(asid)

    # -- VMs -------------------------------------------------------------------------------------------
    def create_vm(self, vm_type: Mode | str = Mode.PLAIN, cbitpos: int | None = None) -> "Vm":
        if vm_type not in VM_TYPES:
            raise KvmError(f"unknown VM type {vm_type!r} (one of {', '.join(VM_TYPES)})")
        vm_type = Mode(vm_type)
        if vm_type.snp and not self.machine.snp_enabled:
            raise KvmError("a sev-snp VM needs SNP enabled first (SNP_INIT: hv.kvm.sev_snp.snp_init)")
        vm = Vm(self, vm_type, self.machine.model.cbitpos if cbitpos is None else cbitpos)
        self.vms.append(vm)
        return vm


class Vm:
    def __init__(self, kvm: Kvm, vm_type: Mode, cbitpos: int):
        if not 32 <= cbitpos <= 51:
            raise KvmError(f"C-bit position {cbitpos} is outside 32..51")
        self.kvm = kvm
        self.type = vm_type
        self.cbitpos = cbitpos
        self.encrypted = vm_type.encrypted
        self.asid = kvm.alloc_asid(vm_type.es) if self.encrypted else 0
        self.npt = kvm.machine.new_npt()
        self.slots: dict[int, MemorySlot] = {}
        self.vcpus: list[Vcpu] = []
        self.cpuid = guest_cpuid_table(kvm.machine.host_cpuid, vm_type, cbitpos)
        self.msrs: dict[int, int] = {}
        self.sev: SevGuest | None = None  # the SEV launch context, for encrypted types
        self.snp = None  # the SNP launch context (hv.kvm.sev_snp), for guest requests

    @property
    def host(self) -> HostPort:
        return self.kvm.machine.host

    # -- memory ----------------------------------------------------------------------------------------
    def set_user_memory_region(self, slot: int, gpa: GPA, size: int) -> MemorySlot:
        """KVM_SET_USER_MEMORY_REGION: back [gpa, gpa+size) with fresh host memory."""
        if gpa % _PAGE or size % _PAGE or size <= 0:
            raise KvmError(f"memory slot {slot}: gpa {gpa:#x} and size {size:#x} must be page-aligned and non-empty")
        if slot in self.slots:
            raise KvmError(f"memory slot {slot} already exists")
        for s in self.slots.values():
            if gpa < s.gpa + s.size and s.gpa < gpa + size:
                raise KvmError(f"memory slot {slot} overlaps slot {s.slot}")
        spa = self.kvm.alloc(size, align=2 << 20)
        ms = self.slots[slot] = MemorySlot(slot, gpa, size, spa)
        self.npt.map(gpa, spa, size, NPT_RWX)
        return ms

    def gpa_to_spa(self, gpa: GPA) -> SPA:
        """Through the memory slots (what user space's mapping of guest RAM is backed by)."""
        for s in self.slots.values():
            if s.gpa <= gpa < s.gpa + s.size:
                return SPA(s.spa + (gpa - s.gpa))
        raise KvmError(f"GPA {gpa:#x} is not in any memory slot")

    def pieces(self, gpa: GPA, length: int) -> list[tuple[SPA, int]]:
        """(spa, length) pieces of a guest range, split where memory slots end."""
        out: list[tuple[SPA, int]] = []
        while length > 0:
            for s in self.slots.values():
                if s.gpa <= gpa < s.gpa + s.size:
                    n = min(length, s.gpa + s.size - gpa)
                    out.append((SPA(s.spa + gpa - s.gpa), n))
                    break
            else:
                raise KvmError(f"GPA {gpa:#x} is not in any memory slot")
            gpa = GPA(gpa + n)
            length -= n
        return out

    def read_gpa(self, gpa: GPA, length: int) -> bytes:
        """Guest memory as the hypervisor sees it: what DRAM stores (ciphertext if private)."""
        return b"".join(self.host.read(spa, n) for spa, n in self.pieces(gpa, length))

    def write_gpa(self, gpa: GPA, data: bytes) -> None:
        pos = 0
        for spa, n in self.pieces(gpa, len(data)):
            self.host.write(spa, data[pos:pos + n])
            pos += n

    def npt_map(self, gpa: GPA, spa: SPA, size: int = _PAGE, perms: int = NPT_RWX) -> None:
        self.npt.map(gpa, spa, size, perms)

    def npt_unmap(self, gpa: GPA, size: int = _PAGE) -> None:
        self.npt.unmap(gpa, size)

    def npt_protect(self, gpa: GPA, size: int, perms: int) -> None:
        self.npt.protect(gpa, size, perms)

    def npt_lookup(self, gpa: GPA) -> tuple[SPA, int] | None:
        hit = self.npt.lookup(gpa)
        return None if hit is None else (SPA(hit[0]), hit[1])

    def memory_faults(self) -> list[MemoryFault]:
        """The nested page faults an operating system's core took through this VM's table since
        the last call, oldest first (KVM_EXIT_MEMORY_FAULT each). That core follows the table
        at its coherence points and has no exit to raise them with (hv.hw.osmem), so they wait
        here; a small guest's vCPU returns its faults as exits instead."""
        posted = list(self.npt.faults)
        self.npt.faults.clear()
        return [MemoryFault(gpa, write=bool(code & _NPF_WRITE), fetch=bool(code & _NPF_FETCH),
                            rmp=bool(code & RMP_NPF)) for gpa, code in posted]

    # -- vCPUs -----------------------------------------------------------------------------------------
    def create_vcpu(self) -> Vcpu:
        es = self.type.es
        control = GuestControl(asid=self.asid, npt=self.npt, sev=self.encrypted, sev_es=es,
                               cbitpos=self.cbitpos, sev_snp=self.type.snp)
        if es:
            # At reset the GHCB MSR holds the SEV_INFO response (protocol versions, C-bit).
            control.ghcb_msr = MsrProto.sev_info(self.cbitpos)
        vcpu = Vcpu(self, self.kvm.machine.new_cpu(control), len(self.vcpus))
        self.vcpus.append(vcpu)
        return vcpu

    def create_os_vcpu(self, pio_in, pio_out, tsc) -> OsCpu:
        """A vCPU for a whole operating system (hv.hw.oscpu), plain, SEV, SEV-ES or SEV-SNP VMs
        with one memory slot at GPA 0: the port devices are in-kernel (`pio_in(port, size) ->
        value`, `pio_out(port, size, value) -> stop?`), CPUID answers from this VM's table. An
        SEV VM's C-bit must be below bit 40 (what the core's MMU implements); an SEV-SNP VM's
        core needs SNP enabled on the machine (SNP_INIT)."""
        if self.type.snp and not self.kvm.machine.snp_enabled:
            raise KvmError("an SEV-SNP VM's vCPU needs SNP enabled first (SNP_INIT)")
        if self.encrypted and self.cbitpos >= 40:
            raise KvmError(f"an operating system's C-bit must be below bit 40, not {self.cbitpos}")
        if len(self.slots) != 1 or self.slots.get(0) is None or self.slots[0].gpa != 0:
            raise KvmError("an operating-system vCPU needs exactly one memory slot, at GPA 0")
        slot = self.slots[0]
        return self.kvm.machine.new_os_cpu(slot.spa, slot.size, asid=self.asid,
                                           cbit=self.cbitpos if self.encrypted else 0,
                                           sev_status=self.type.sev_status,
                                           pio_in=pio_in, pio_out=pio_out,
                                           cpuid=lambda leaf, sub: cpuid_lookup(self.cpuid, leaf, sub),
                                           tsc=tsc, npt=self.npt)

    def destroy(self) -> None:
        for s in self.slots.values():
            self.kvm.free(s.spa, s.size)
        self.slots.clear()
        for v in self.vcpus:
            if v.vmsa_spa is not None:
                self.kvm.free(v.vmsa_spa, _PAGE)
                v.attach_vmsa(None)
        if self.asid:
            self.kvm.free_asid(self.asid)
        if self in self.kvm.vms:
            self.kvm.vms.remove(self)

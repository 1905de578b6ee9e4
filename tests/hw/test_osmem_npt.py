"""An encrypted OS guest's memory following the VM's nested page table (hv.hw.osmem with `npt`):
the hypervisor's remap of a guest page onto another host page takes effect at the next coherence
point, decrypting that host page with its own address's tweak (SEVered's primitive) and sending
the guest page's later write-backs there; under SEV-SNP the RMP check refuses it, the guest keeps
its page and the fault waits in the table for the hypervisor (hv.kvm's Vm.memory_faults).

Known answers as in test_osmem: the engine runs xex-linear with fixed constants and what DRAM
must hold is computed with single-block AES (test_osmem.xex), independently of the engine. The
last tests run test_oscpu's tiny guest over such memory, so the core itself reads the remap.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from unicorn import x86_const as X

from hv.hw.addr import GPA, SPA
from hv.hw.engine import AesEngine, KeySlotPort, TweakMode
from hv.hw.machine import SEV_STATUS
from hv.hw.memctl import PAGE, MemoryController
from hv.hw.npt import NestedPageTable
from hv.hw.oscpu import OsHalt
from hv.hw.osmem import NPF_FINAL, PrivateRam
from hv.hw.rmp import NPF_ENC, RMP_NPF, RmpEntry
from hv.kvm import Kvm, MemoryFault, Mode
from hv.hw.machine import Machine, MachineConfig
from test_engine import CONSTANTS, KEY
from test_oscpu import KCODE, PD, PDPT, PML4, RAM_SIZE, UCODE, Guest
from test_osmem import xex

ASID = 5
SPA0 = 2 << 20
PAGES = 8
X_PAGE, Y_PAGE = 2, 5          # the guest page the hypervisor remaps, and the one it wants
OWN, WANTED = b"X's own plaintext".ljust(PAGE, b"x"), b"Y holds this".ljust(PAGE, b"y")


class Ram:
    """PrivateRam over PAGES pages at SPA0 that follows `npt`, every page mapped private."""

    def __init__(self, snp: bool = False):
        self.engine = AesEngine(15, TweakMode.XEX_LINEAR, CONSTANTS)
        KeySlotPort(self.engine).program_key(ASID, KEY)
        self.mc = MemoryController(4 << 20, self.engine)
        self.npt = NestedPageTable(self.mc.size, self.mc.bump)
        self.npt.map(GPA(0), SPA(SPA0), PAGES * PAGE)   # the memory slot
        if snp:   # an SNP guest's pages: assigned to its ASID at their own GPA, validated
            rmp = self.mc.enable_rmp()
            for g in range(PAGES):
                rmp.firmware_set(self.spa(g), RmpEntry(assigned=True, asid=ASID, gpa=g * PAGE,
                                                       validated=True))
        self.ram = PrivateRam(self.mc, SPA0, PAGES * PAGE, ASID, self.npt)
        self.ram.shared_pages = lambda out: None
        self.write(X_PAGE, OWN)
        self.write(Y_PAGE, WANTED)
        self.before = self.mc.raw_dump()

    def spa(self, page: int) -> int:
        return SPA0 + page * PAGE

    def write(self, page: int, data: bytes) -> None:
        self.ram.buf[page * PAGE:page * PAGE + len(data)] = np.frombuffer(data, np.uint8)
        self.ram.guest_ran()

    def plaintext(self, page: int) -> bytes:
        return self.ram.buf[page * PAGE:(page + 1) * PAGE].tobytes()

    def dram(self, page: int) -> bytes:
        return self.mc.read(self.spa(page), PAGE)

    def runs(self) -> bool:
        """What the core does before the guest runs: True if translated code must go."""
        return self.ram.pending() and self.ram.refresh()


def test_a_remapped_page_reads_the_other_host_page_decrypted_with_its_own_tweak():
    """Scenario: SEVered under SEV: the guest's page X, pointed at the host page of its page Y,
    holds Y's plaintext when the guest runs next (the tweak is the host address's)."""
    r = Ram()
    assert r.dram(Y_PAGE) == xex(WANTED, r.spa(Y_PAGE))
    r.npt.map(GPA(X_PAGE * PAGE), SPA(r.spa(Y_PAGE)), PAGE)
    assert r.plaintext(X_PAGE) == OWN                  # nothing before the coherence point
    assert r.runs()
    assert r.plaintext(X_PAGE) == WANTED
    assert r.dram(X_PAGE) == xex(OWN, r.spa(X_PAGE))   # X's own host page keeps its ciphertext
    assert r.ram.stats["pages_remapped"] == 1 and r.npt.faults == []


def test_a_remapped_pages_writes_go_to_the_host_page_behind_it_and_its_alias_follows():
    r = Ram()
    r.npt.map(GPA(X_PAGE * PAGE), SPA(r.spa(Y_PAGE)), PAGE)
    r.runs()
    new = b"written through X".ljust(PAGE, b"!")
    r.write(X_PAGE, new)
    assert r.dram(Y_PAGE) == xex(new, r.spa(Y_PAGE))   # the host's read made DRAM current
    assert r.dram(X_PAGE) == xex(OWN, r.spa(X_PAGE))
    r.runs()
    assert r.plaintext(Y_PAGE) == new                  # one host page, one plaintext


def test_mapping_the_page_back_gives_the_guest_its_own_page_again():
    r = Ram()
    r.npt.map(GPA(X_PAGE * PAGE), SPA(r.spa(Y_PAGE)), PAGE)
    r.runs()
    r.npt.map(GPA(X_PAGE * PAGE), SPA(r.spa(X_PAGE)), PAGE)
    assert r.runs()
    assert r.plaintext(X_PAGE) == OWN and r.plaintext(Y_PAGE) == WANTED
    assert r.mc.raw_dump() == r.before


def test_a_table_change_that_moves_nothing_changes_nothing():
    r = Ram()
    r.runs()
    assert not r.ram.pending()
    r.npt.protect(GPA(0), PAGES * PAGE, 1)             # permissions: not modelled for this core
    r.npt.map(GPA(Y_PAGE * PAGE), SPA(r.spa(Y_PAGE)), PAGE)  # the same mapping again
    assert r.ram.pending() and not r.ram.refresh()
    assert r.mc.raw_dump() == r.before and r.ram.stats["pages_remapped"] == 0


def test_under_snp_the_rmp_refuses_the_remap_and_the_fault_waits_for_the_hypervisor():
    """Scenario: SEVered under SEV-SNP: the RMP entry of Y's host page names GPA Y, so the CPU's
    check of X's new mapping is a nested page fault with the RMP bit; X keeps its page."""
    r = Ram(snp=True)
    r.npt.map(GPA(X_PAGE * PAGE), SPA(r.spa(Y_PAGE)), PAGE)
    assert not r.runs()
    assert r.plaintext(X_PAGE) == OWN
    [(gpa, code)] = r.npt.faults
    assert gpa == X_PAGE * PAGE and code & RMP_NPF and code & NPF_ENC and code & NPF_FINAL
    r.write(X_PAGE, b"still its own")              # and its write-backs stay there
    assert r.dram(X_PAGE) == xex(r.plaintext(X_PAGE), r.spa(X_PAGE))
    assert r.dram(Y_PAGE) == xex(WANTED, r.spa(Y_PAGE))
    r.npt.map(GPA(X_PAGE * PAGE), SPA(r.spa(X_PAGE)), PAGE)  # mapped back: nothing to refuse
    r.runs()
    assert len(r.npt.faults) == 1


def test_a_page_the_table_no_longer_maps_is_a_plain_nested_page_fault():
    r = Ram()
    r.npt.unmap(GPA(X_PAGE * PAGE), PAGE)
    r.runs()
    assert r.npt.faults == [(X_PAGE * PAGE, NPF_FINAL)]
    assert r.plaintext(X_PAGE) == OWN


def test_the_hypervisor_takes_the_posted_faults_as_kvm_memory_faults():
    kvm = Kvm(Machine(MachineConfig(dram_size=16 << 20)))
    vm = kvm.create_vm(Mode.SEV, cbitpos=39)
    vm.npt.post_fault(0x5000, RMP_NPF | NPF_ENC | NPF_FINAL | 1)
    vm.npt.post_fault(0x6000, NPF_FINAL | 2)
    got = vm.memory_faults()
    assert [(f.gpa, f.write, f.rmp) for f in got] == [(0x5000, False, True), (0x6000, True, False)]
    assert all(isinstance(f, MemoryFault) for f in got) and vm.memory_faults() == []


# -- the core over such memory ----------------------------------------------------------------------
CBIT = 39
C = 1 << CBIT
PT = 0x8000
PRIV = 0x400000


class CoreGuest:
    """test_oscpu's guest over private RAM at 4 MiB of host memory that follows a nested page
    table; PD[0] and the page at PRIV (behind PD[2]) are private."""

    def __init__(self, snp: bool = False):
        self.engine = AesEngine(15, TweakMode.XEX_LINEAR, CONSTANTS)
        KeySlotPort(self.engine).program_key(ASID, KEY)
        self.spa0 = 4 << 20
        self.mc = MemoryController(self.spa0 + RAM_SIZE, self.engine)
        self.npt = NestedPageTable(self.mc.size, self.mc.bump)
        self.npt.map(GPA(0), SPA(self.spa0), RAM_SIZE)
        if snp:
            rmp = self.mc.enable_rmp()
            for g in range(RAM_SIZE // PAGE):
                rmp.firmware_set(self.spa0 + g * PAGE, RmpEntry(assigned=True, asid=ASID, gpa=g * PAGE,
                                                                validated=True))
        self.private = PrivateRam(self.mc, self.spa0, RAM_SIZE, ASID, self.npt)
        g = self.g = Guest(ram=self.private.buf, private=self.private, cbit=CBIT,
                           msrs={SEV_STATUS: (lambda: 1, lambda _v: None)})
        g.write(PML4, struct.pack("<Q", PDPT | 0x7 | C))
        g.write(PDPT, struct.pack("<Q", PD | 0x7 | C))
        g.write(PD, struct.pack("<3Q", 0x83 | C, UCODE | 0x87, PT | 0x7 | C))
        g.write(PT, struct.pack("<Q", PRIV | 0x3 | C))
        g.uc.reg_write(X.UC_X86_REG_CR3, PML4 | C)

    def remap(self, gpa: int, to_gpa: int) -> None:
        """The hypervisor's nested-table change: `gpa` backed by the host page of `to_gpa`."""
        self.npt.map(GPA(gpa), SPA(self.spa0 + to_gpa), PAGE)


@pytest.mark.parametrize("snp", [False, True], ids=["sev", "sev-snp"])
def test_the_guest_reads_the_remapped_page_when_it_runs_next_unless_the_rmp_refuses(snp):
    s = CoreGuest(snp)
    g = s.g
    resume = g.code(KCODE, ("f4", "hlt"))
    end = g.code(resume, ("488b042500004000", "mov rax, qword ptr [0x400000]"), ("f4", "hlt"))
    g.write(PRIV, b"own page")
    g.start(KCODE, rax=0)
    assert g.cpu.run() == OsHalt(interrupts_enabled=False)
    s.remap(PRIV, KCODE)                     # PRIV now backed by the kernel code's host page
    assert g.cpu.run() == OsHalt(interrupts_enabled=False) and g.reg("rip") == end
    got = g.reg("rax").to_bytes(8, "little")
    if snp:
        assert got == b"own page"
        assert [f[0] for f in s.npt.faults] == [PRIV] and s.npt.faults[0][1] & RMP_NPF
    else:
        assert got == bytes.fromhex("f4488b0425000040")   # the code page's first bytes
        assert s.npt.faults == []
    s.remap(PRIV, PRIV)
    g.start(resume, rax=0)
    assert g.cpu.run() == OsHalt(interrupts_enabled=False)
    assert g.reg("rax").to_bytes(8, "little") == b"own page"
    g.cpu.close()

"""The fenced trusted memory region (TMR) against guests, on the bare machine.

The memory controller fences the SEV-ES TMR from every agent but the PSP and the CPU's own
save-area unit, which keep the VMSA integrity values there. The host port and DMA get an
AddressError. A guest is reached through a nested page table the hypervisor owns, so nothing
stops a hypervisor from mapping a TMR page into one of its guests: the fence must hold there
too. As a fenced access on the part, a guest's load or fetch from a TMR page reads all ones and
its store is dropped; the TMR never lands in a plaintext view or behind a raw TLB entry.

The tiny guest of tinyvm.py (its data page remapped onto a TMR page) stands for any guest: plain,
SEV through C=1 and through its C=0 alias, and SEV with TSME, where the PSP's bytes are under the
host key and the guest's C=0 accesses go through the host key's view.
"""

from __future__ import annotations

import struct

import pytest

from hv.hw.errors import AddressError
from hv.hw.exits import IoExit, ShutdownExit
from hv.hw.memctl import ABSENT
from tinyvm import ALIAS_VA, ASID, CODE_GPA, DATA_GPA, PRIVATE_VA, PT, TinyVm

TMR, TMR_LEN = 0x600000, 1 << 20
PAGE = 0x1000
ONES = (1 << 64) - 1
# What the PSP keeps in a slot: the VMSA's address | 1, then its integrity value.
SLOT = struct.pack("<Q", 0x1234000 | 1) + b"integrty"
SLOT_PAGE = TMR + 0x3000
MODES = {
    "plain": dict(encrypted=False),
    "sev": dict(encrypted=True),
    "sev+tsme": dict(encrypted=True, tsme=True),
}


def _fenced_vm(mode: str) -> TinyVm:
    """A guest whose first data page (GPA DATA_GPA) the hypervisor mapped onto a TMR page that
    holds a slot, written as the PSP writes it (raw, or under the host key with TSME)."""
    vm = TinyVm(**MODES[mode])
    vm.mc.fence(TMR, TMR_LEN)
    _psp_write(vm, SLOT_PAGE, SLOT * (PAGE // len(SLOT)))
    vm.npt.map(DATA_GPA, SLOT_PAGE, PAGE)
    return vm


def _psp_write(vm: TinyVm, spa: int, data: bytes) -> None:
    vm.mc.write(spa, data, vm.mc.host_slot(False))


def _stored(vm: TinyVm, spa: int = SLOT_PAGE, length: int = PAGE) -> bytes:
    return vm.mc.read(spa, length, vm.mc.host_slot(False))


def _never_cached(vm: TinyVm, spa: int = SLOT_PAGE) -> None:
    page = spa // PAGE
    for view in vm.mc.views.values():
        assert view.state[page] == ABSENT, f"the TMR page is in the view of slot {view.slot}"
    assert not vm.mc.raw_mapped[page], "a TLB entry maps the TMR page raw"


@pytest.mark.parametrize("va", [PRIVATE_VA, ALIAS_VA], ids=["c1", "c0"])
@pytest.mark.parametrize("mode", MODES)
def test_a_guest_reads_all_ones_from_a_tmr_page(mode, va):
    """Scenario: the hypervisor maps a TMR page into its guest, which reads a slot for it."""
    vm = _fenced_vm(mode)
    assert vm.guest_read(va) == ONES
    assert vm.guest_read(va + 8) == ONES
    _never_cached(vm)


@pytest.mark.parametrize("va", [PRIVATE_VA, ALIAS_VA], ids=["c1", "c0"])
@pytest.mark.parametrize("mode", MODES)
def test_a_guest_write_to_a_tmr_page_is_dropped(mode, va):
    """Scenario: the guest writes a slot for the hypervisor (to forge, erase or replay one)."""
    vm = _fenced_vm(mode)
    before = _stored(vm)
    vm.guest_write(va, 0x4141414141414141)
    vm.guest_write(va + 0x808, 0x4242424242424242)
    assert _stored(vm) == before
    assert vm.guest_read(va) == ONES, "the guest read back what it wrote"
    assert vm.guest_read(va + 0x808) == ONES
    _never_cached(vm)


@pytest.mark.parametrize("mode", ["plain", "sev"])
def test_a_guest_cannot_run_code_from_a_tmr_page(mode):
    """Scenario: the guest jumps into a TMR page holding code (here `out 0x81, al`, put there
    under the guest's key for the SEV guest, whose fetches are private): the fetch reads all
    ones (an invalid opcode), never the bytes stored there."""
    vm = _fenced_vm(mode)
    code = b"\xe6\x81" + b"\xf4"
    vm.mc.write(SLOT_PAGE, code, ASID if mode == "sev" else None)
    vm.cpu.set_regs({"rip": PRIVATE_VA})
    e = vm.cpu.run()
    assert not (isinstance(e, IoExit) and e.port == 0x81), "the guest ran code from the TMR"
    assert isinstance(e, ShutdownExit), e  # #UD, and the tiny guest has no IDT
    assert vm.cpu.code_bytes(PRIVATE_VA, 3) == b"\xff\xff\xff"
    _never_cached(vm)


@pytest.mark.parametrize("mode", ["plain", "sev"])
def test_the_page_walk_does_not_read_a_tmr_page(mode):
    """Scenario: the hypervisor maps the guest's page-table page onto a TMR page holding a copy
    of that table (so a walk that reads it would go on as before): the walker reads all ones,
    and the guest goes no further."""
    vm = _fenced_vm(mode)
    slot = ASID if mode == "sev" else None
    table = vm.mc.read(vm.spa(PT), PAGE, slot)
    vm.mc.write(SLOT_PAGE, table, slot)
    vm.npt.map(PT, SLOT_PAGE, PAGE)
    vm.host.write(vm.spa(0x5000), struct.pack("<QQQ", 1, ALIAS_VA + 0x1000, 0))
    e = vm.cpu.run()
    assert not isinstance(e, IoExit), "the guest walked a page table in the TMR"
    assert isinstance(e, ShutdownExit), e  # an all-ones entry has NX: #PF on the next fetch
    _never_cached(vm)


def test_fencing_drops_cached_copies_and_tlb_entries():
    """Scenario: the hypervisor hands the PSP a TMR over memory a guest has just used (cached in
    its view, in its TLB): from the fence on, the guest reads all ones."""
    vm = TinyVm(encrypted=True)
    target = vm.spa(DATA_GPA)
    vm.guest_write(PRIVATE_VA, 0x5EC12E7)
    assert vm.guest_read(PRIVATE_VA) == 0x5EC12E7
    vm.mc.fence(target & ~(TMR_LEN - 1), TMR_LEN)
    assert vm.guest_read(PRIVATE_VA) == ONES
    assert vm.guest_read(ALIAS_VA) == ONES
    _never_cached(vm, target)


def test_the_rest_of_the_guest_is_untouched():
    """The control: the same guest's own pages next to the fenced one still work."""
    vm = _fenced_vm("sev")
    vm.guest_write(PRIVATE_VA + 0x1000, 0x600DF00D)
    assert vm.guest_read(PRIVATE_VA + 0x1000) == 0x600DF00D
    assert vm.cpu.code_bytes(CODE_GPA, 4) == bytes.fromhex("488b0425")


@pytest.mark.parametrize("mode", MODES)
def test_host_and_dma_accesses_to_the_tmr_are_refused(mode):
    vm = _fenced_vm(mode)
    for spa, n in ((SLOT_PAGE, 16), (TMR - 8, 16), (TMR + TMR_LEN - 8, 16), (TMR, TMR_LEN)):
        with pytest.raises(AddressError):
            vm.host.read(spa, n)
        with pytest.raises(AddressError):
            vm.host.read(spa, n, c_bit=True)
        with pytest.raises(AddressError):
            vm.host.write(spa, bytes(n))
        with pytest.raises(AddressError):
            vm.dma.read(spa, n)
        with pytest.raises(AddressError):
            vm.dma.write(spa, bytes(n))
    assert vm.host.read(TMR - 16, 16) == vm.dma.read(TMR - 16, 16)
    assert vm.host.read(TMR + TMR_LEN, 16) == vm.dma.read(TMR + TMR_LEN, 16)

"""The GHCB Page State Change NAE (VMGEXIT 0x80000010) of SEV-SNP guests: conversions to shared
and back to private change the RMP entry by entry and report their progress in the guest's
buffer; every malformed request gets its documented sw_exit_info_2 (or, for a buffer outside the
GHCB's shared buffer, the GHCB "bad scratch area" answer) and changes nothing in the RMP.

The guest (flat binary, assembled from) runs a list of commands appended to its code, stopping
with HLT after each so the test can look at the RMP and the GHCB (the boot information page,
GPA 0x8000, shared from the start):

        lea   table(%rip), %r12
  next: mov   (%r12), %rax ; cmp $1 -> pval ; cmp $2 -> psc
  stop: hlt ; jmp stop                                         # command 0: the end
  pval: # {1, va, npages, validate}: PVALIDATE each 4 KiB page (RCX = 0, RDX = validate);
        # the OR of the EAX results at 0x8600, the number of CF = 1 answers at 0x8608
        ... ; add $32, %r12 ; hlt ; jmp next
  psc:  # {2, sw_scratch, dst, nbytes, bytes[nbytes] padded to 8}: clear the valid bitmap,
        # copy the bytes to dst (in the GHCB), sw_exit_code 0x80000010, sw_exit_info_1/2 = 0,
        # sw_scratch, valid bits 114..117 (0x3c in bitmap byte 14), protocol version 2, usage 0,
        # the GHCB MSR = 0x8000, VMGEXIT; next command, hlt ; jmp next
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from hv.hw.rmp import RmpEntry, RmpViolation
from hv.kvm import exits as K
from hv.kvm.sev_snp import (PSC_ERR_GENERIC, PSC_ERR_INVALID_ENTRY, PSC_ERR_INVALID_HDR,
                            page_state_change)
from hv.vmm import Vmm, VmmConfig

CODE = bytes.fromhex(
    "4c8d2509010000498b04244883f80174094883f802745df4ebfd4d8b6c24084d8b7424104531ff48c704250086"
    "00000000000048c7042508860000000000004c89e831c9498b542418f20f01ff4983d70048090425008600004981"
    "c50010000049ffce75da4c893c25088600004983c420f4eb9331c048890425f083000048890425f8830000498d74"
    "2420498b7c2410498b4c2418f3a4b810000080488904259083000048c70425988300000000000048c70425a08300"
    "0000000000498b44240848890425a8830000c60425fe8300003c66c70425fa8f00000200c70425fc8f0000000000"
    "00b9300101c0b80080000031d20f30f30f01d9498b4c24184883c1074883e1f84d8d640c20f4e9f7feffff")
assert len(CODE) == 0x110  # the table follows, 8-byte aligned

GUESTS = Path(__file__).resolve().parents[2] / "guests"
GHCB = 0x8000
BUF = GHCB + 0x800  # the GHCB's shared buffer
MEM = 16 << 20
PAGES = [0x200000 + i * 0x1000 for i in range(4)]  # assigned to the guest, not validated
HUGE = 0x400000  # a 2 MiB-aligned range of guest memory
PRIVATE, SHARED, PSMASH, UNSMASH = 1, 2, 3, 4


def entry(gpa: int, op: int, huge: bool = False, cur_page: int = 0, extra: int = 0) -> int:
    return cur_page | (gpa & 0x000F_FFFF_FFFF_F000) | op << 52 | int(huge) << 56 | extra


def psc_buffer(entries: list[int], cur: int = 0, end: int | None = None, rsvd: int = 0) -> bytes:
    end = len(entries) - 1 if end is None else end
    return struct.pack("<HHI", cur, end, rsvd) + b"".join(struct.pack("<Q", e) for e in entries)


def pval(va: int, npages: int = 1, validate: bool = True) -> bytes:
    return struct.pack("<QQQQ", 1, va, npages, int(validate))


def psc(data: bytes, scratch: int = BUF, dst: int = BUF) -> bytes:
    return struct.pack("<QQQQ", 2, scratch, dst, len(data)) + data + bytes(-len(data) % 8)


def guest(*commands: bytes) -> bytes:
    return CODE + b"".join(commands) + bytes(8)


@pytest.fixture
def snp_vm(psp_state):
    """snp_vm(*commands) -> a launched SNP Vmm running the command guest."""
    made = []

    def make(*commands: bytes, vm_type: str = "sev-snp", mem_size: int = MEM) -> Vmm:
        vmm = Vmm(VmmConfig(image=guest(*commands), vm_type=vm_type, mem_size=mem_size,
                            psp_state=psp_state))
        made.append(vmm)
        vmm.load()
        if vmm.vcpu.es is not None:
            # The command guest's code does not register its GHCB, which SNP requires (unit
            # tests of registration: tests/kvm/test_sev_es.py); what it tests is the PSC.
            vmm.vcpu.es.registered_gpa = GHCB
        return vmm

    yield make
    for vmm in made:
        vmm.close()


def step(vmm) -> None:
    """Run the guest to its next HLT (one command)."""
    e = vmm.vcpu.run()
    assert isinstance(e, K.Hlt), e


def rmp(vmm, gpa: int) -> RmpEntry:
    return vmm.machine.rmpread(vmm.vm.gpa_to_spa(gpa))


def rmp_all(vmm) -> list[RmpEntry]:
    return [rmp(vmm, gpa) for gpa in range(0, vmm.config.mem_size, 0x1000)]


def private(vmm, gpa: int, validated: bool = False) -> RmpEntry:
    return RmpEntry(assigned=True, asid=vmm.vm.asid, gpa=gpa, validated=validated)


def answer(vmm) -> tuple[int, int]:
    """sw_exit_info_1, sw_exit_info_2 of the last request."""
    return struct.unpack("<QQ", vmm.vm.read_gpa(GHCB + 0x398, 16))


def header(vmm, at: int = BUF) -> tuple[int, int, int]:
    return struct.unpack("<HHI", vmm.vm.read_gpa(at, 8))


def entries(vmm, n: int, at: int = BUF) -> list[int]:
    return list(struct.unpack(f"<{n}Q", vmm.vm.read_gpa(at + 8, 8 * n)))


def pvalidate_result(vmm) -> tuple[int, int]:
    """(OR of the EAX results, how many answered CF = 1) of the last PVALIDATE command."""
    return struct.unpack("<QQ", vmm.vm.read_gpa(GHCB + 0x600, 16))


# -- conversions ------------------------------------------------------------------------------------
def test_pages_go_shared_and_back_to_private(snp_vm):
    """Scenario: the guest validates four pages, then does what the guest library does to share
    them (rescind, one PSC NAE for all four), then takes them back (PSC NAE to private, then
    validate). The RMP follows each step; the hypervisor can write the pages only while they
    are shared."""
    to_shared = psc_buffer([entry(g, SHARED) for g in PAGES])
    to_private = psc_buffer([entry(g, PRIVATE) for g in PAGES])
    vmm = snp_vm(pval(PAGES[0], 4), pval(PAGES[0], 4, False), psc(to_shared), psc(to_private),
                 pval(PAGES[0], 4))
    assert [rmp(vmm, g) for g in PAGES] == [private(vmm, g) for g in PAGES]

    step(vmm)  # validate
    assert pvalidate_result(vmm) == (0, 0)
    assert [rmp(vmm, g) for g in PAGES] == [private(vmm, g, True) for g in PAGES]

    step(vmm)  # rescind: going shared, the pages are given up first
    assert pvalidate_result(vmm) == (0, 0)
    assert [rmp(vmm, g) for g in PAGES] == [private(vmm, g) for g in PAGES]
    others = rmp_all(vmm)

    step(vmm)  # PSC NAE to shared
    assert answer(vmm) == (0, 0)
    assert header(vmm) == (4, 3, 0)  # cur_entry past end_entry: all done
    assert entries(vmm, 4) == [entry(g, SHARED, cur_page=1) for g in PAGES]
    assert [rmp(vmm, g) for g in PAGES] == [RmpEntry()] * 4
    after = rmp_all(vmm)
    changed = [i << 12 for i, (a, b) in enumerate(zip(others, after)) if a != b]
    assert changed == PAGES  # nothing else moved
    vmm.vm.write_gpa(PAGES[2], b"hypervisor data")  # now the hypervisor's page

    step(vmm)  # PSC NAE to private
    assert answer(vmm) == (0, 0)
    assert header(vmm) == (4, 3, 0)
    assert [rmp(vmm, g) for g in PAGES] == [private(vmm, g) for g in PAGES]
    with pytest.raises(RmpViolation):
        vmm.vm.write_gpa(PAGES[2], b"hypervisor data")

    step(vmm)  # validate again: every page changes (no CF), the guest has them back
    assert pvalidate_result(vmm) == (0, 0)
    assert [rmp(vmm, g) for g in PAGES] == [private(vmm, g, True) for g in PAGES]
    assert vmm.vcpu.es.stats["psc"] == 2


def test_a_2m_entry_is_done_as_512_4k_conversions(snp_vm):
    """Scenario: a 2 MiB entry (pagesize 1). The RMP has 4 KiB entries only, so hv converts
    its 512 pages one by one: cur_page ends at 512, every page changed, the page after it not."""
    vmm = snp_vm(psc(psc_buffer([entry(HUGE, SHARED, huge=True)])),
                 psc(psc_buffer([entry(HUGE, PRIVATE, huge=True)])))
    step(vmm)
    assert answer(vmm) == (0, 0)
    assert header(vmm) == (1, 0, 0) and entries(vmm, 1) == [entry(HUGE, SHARED, True, 512)]
    assert all(not rmp(vmm, HUGE + i * 0x1000).assigned for i in range(512))
    assert rmp(vmm, HUGE + (2 << 20)) == private(vmm, HUGE + (2 << 20))
    assert rmp(vmm, HUGE - 0x1000) == private(vmm, HUGE - 0x1000)
    step(vmm)
    assert answer(vmm) == (0, 0)
    assert all(rmp(vmm, HUGE + i * 0x1000) == private(vmm, HUGE + i * 0x1000) for i in range(512))


def test_a_partly_done_2m_entry_continues_at_cur_page(snp_vm):
    """Scenario: a 2 MiB entry whose first 256 pages the guest says are done: only the other
    256 change."""
    vmm = snp_vm(psc(psc_buffer([entry(HUGE, SHARED, huge=True, cur_page=256)])))
    step(vmm)
    assert answer(vmm) == (0, 0)
    assert entries(vmm, 1) == [entry(HUGE, SHARED, True, 512)]
    assert all(rmp(vmm, HUGE + i * 0x1000).assigned for i in range(256))
    assert not any(rmp(vmm, HUGE + i * 0x1000).assigned for i in range(256, 512))


def test_psmash_and_unsmash_are_finished_without_a_change(snp_vm):
    """Scenario: ops 3 (PSMASH) and 4 (UNSMASH) are no-ops, as in KVM: reported done."""
    vmm = snp_vm(psc(psc_buffer([entry(HUGE, PSMASH, huge=True), entry(PAGES[0], UNSMASH),
                                 entry(PAGES[1], SHARED)])))
    before = rmp_all(vmm)
    step(vmm)
    assert answer(vmm) == (0, 0) and header(vmm) == (3, 2, 0)
    assert entries(vmm, 3) == [entry(HUGE, PSMASH, True, 512), entry(PAGES[0], UNSMASH, cur_page=1),
                               entry(PAGES[1], SHARED, cur_page=1)]
    after = rmp_all(vmm)
    assert [i << 12 for i, (a, b) in enumerate(zip(before, after)) if a != b] == [PAGES[1]]


def test_a_request_of_253_entries_fills_the_shared_buffer(snp_vm):
    """Scenario: the largest request, header and 253 entries = all 2032 bytes."""
    gpas = [0x800000 + i * 0x1000 for i in range(253)]
    vmm = snp_vm(psc(psc_buffer([entry(g, SHARED) for g in gpas])))
    step(vmm)
    assert answer(vmm) == (0, 0) and header(vmm) == (253, 252, 0)
    assert not any(rmp(vmm, g).assigned for g in gpas)
    assert rmp(vmm, gpas[-1] + 0x1000).assigned


# -- partial progress -----------------------------------------------------------------------------
def test_progress_stops_at_the_failing_entry(snp_vm):
    """Scenario: entries 0 and 1 are good, entry 2 names a GFN outside guest memory: the first
    two are done and reported, cur_entry stays on entry 2 (the generic error), entry 3 is not
    touched."""
    bad = 1 << 40
    buf = psc_buffer([entry(PAGES[0], SHARED), entry(PAGES[1], SHARED), entry(bad, SHARED),
                      entry(PAGES[3], SHARED)])
    vmm = snp_vm(psc(buf))
    step(vmm)
    assert answer(vmm) == (0, PSC_ERR_GENERIC)
    assert header(vmm) == (2, 3, 0)
    assert entries(vmm, 4) == [entry(PAGES[0], SHARED, cur_page=1), entry(PAGES[1], SHARED, cur_page=1),
                               entry(bad, SHARED), entry(PAGES[3], SHARED)]
    assert [rmp(vmm, g).assigned for g in PAGES] == [False, False, True, True]


def test_a_refused_page_inside_a_2m_entry_reports_cur_page_and_the_guest_resumes(snp_vm):
    """Scenario: RMPUPDATE refuses page 5 of a 2 MiB entry (an immutable page, here made so by
    hand): pages 0-4 are done, cur_page = 5 and cur_entry stays 0 (the generic error). Once the
    page is mutable again the guest issues the same buffer again and hv continues at page 5."""
    stuck = HUGE + 5 * 0x1000
    vmm = snp_vm(psc(psc_buffer([entry(HUGE, SHARED, huge=True), entry(PAGES[0], SHARED)])),
                 psc(b""))  # the second request re-sends the buffer as hv left it
    spa = vmm.vm.gpa_to_spa(stuck)
    vmm.machine._mc.rmp.firmware_set(spa, RmpEntry(assigned=True, asid=vmm.vm.asid, gpa=stuck,
                                                   immutable=True))
    step(vmm)
    assert answer(vmm) == (0, PSC_ERR_GENERIC)
    assert header(vmm) == (0, 1, 0)
    assert entries(vmm, 2) == [entry(HUGE, SHARED, True, 5), entry(PAGES[0], SHARED)]
    assert [rmp(vmm, HUGE + i * 0x1000).assigned for i in range(7)] == [False] * 5 + [True] * 2
    assert rmp(vmm, PAGES[0]).assigned

    vmm.machine._mc.rmp.firmware_set(spa, private(vmm, stuck))
    step(vmm)
    assert answer(vmm) == (0, 0)
    assert header(vmm) == (2, 1, 0)
    assert entries(vmm, 2) == [entry(HUGE, SHARED, True, 512), entry(PAGES[0], SHARED, cur_page=1)]
    assert not any(rmp(vmm, HUGE + i * 0x1000).assigned for i in range(512))
    assert not rmp(vmm, PAGES[0]).assigned


def test_a_2m_entry_reaching_past_guest_memory_changes_none_of_its_pages(snp_vm):
    """Scenario: the hypervisor adds 1 MiB of memory right after guest memory (a second slot),
    so a 2 MiB entry there is half in guest memory: it is refused whole (the generic error,
    cur_page 0) before any of its pages changes, the entry before it is done."""
    vmm = snp_vm(psc(psc_buffer([GOOD, entry(MEM, PRIVATE, huge=True)])))
    vmm.vm.set_user_memory_region(1, MEM, 1 << 20)
    extra = [MEM + i * 0x1000 for i in range(256)]
    assert all(rmp(vmm, g) == RmpEntry() for g in extra)
    before = rmp_all(vmm)
    step(vmm)
    assert answer(vmm) == (0, PSC_ERR_GENERIC)
    assert header(vmm) == (1, 1, 0) and entries(vmm, 2)[1] == entry(MEM, PRIVATE, huge=True)
    assert [i << 12 for i, (a, b) in enumerate(zip(before, rmp_all(vmm))) if a != b] == [PAGES[0]]
    assert all(rmp(vmm, g) == RmpEntry() for g in extra)


def test_a_resumed_request_skips_the_finished_entries(snp_vm):
    """Scenario: cur_entry = 2 (the guest says 0 and 1 are done): only entries 2 and 3 change."""
    vmm = snp_vm(psc(psc_buffer([entry(g, SHARED) for g in PAGES], cur=2)))
    step(vmm)
    assert answer(vmm) == (0, 0) and header(vmm) == (4, 3, 0)
    assert [rmp(vmm, g).assigned for g in PAGES] == [True, True, False, False]


# -- malformed requests ---------------------------------------------------------------------------
GOOD = entry(PAGES[0], SHARED)


LAST_2M = MEM - (2 << 20)


@pytest.mark.parametrize("buf, info_2, after, changed", [
    (psc_buffer([GOOD], end=253), PSC_ERR_INVALID_HDR, (0, 253, 0), []),    # end_entry >= 253
    (psc_buffer([GOOD], end=0xFFFF), PSC_ERR_INVALID_HDR, (0, 0xFFFF, 0), []),
    (psc_buffer([GOOD], rsvd=1), PSC_ERR_INVALID_HDR, (0, 0, 1), []),       # header reserved word
    (psc_buffer([GOOD, GOOD], cur=2, end=1), 0, (2, 1, 0), []),             # cur > end: nothing to do
    (psc_buffer([GOOD], cur=0xFFFF, end=0), 0, (0xFFFF, 0, 0), []),
    (psc_buffer([entry(PAGES[0], SHARED, extra=1 << 57)]), PSC_ERR_INVALID_ENTRY, (0, 0, 0), []),
    (psc_buffer([entry(PAGES[0], SHARED, extra=1 << 63)]), PSC_ERR_INVALID_ENTRY, (0, 0, 0), []),
    (psc_buffer([entry(PAGES[0], 0)]), PSC_ERR_INVALID_ENTRY, (0, 0, 0), []),  # unknown operations
    (psc_buffer([entry(PAGES[0], 5)]), PSC_ERR_INVALID_ENTRY, (0, 0, 0), []),
    (psc_buffer([entry(PAGES[0], 15)]), PSC_ERR_INVALID_ENTRY, (0, 0, 0), []),
    (psc_buffer([entry(PAGES[0], SHARED, cur_page=2)]), PSC_ERR_INVALID_ENTRY, (0, 0, 0), []),
    (psc_buffer([entry(HUGE, SHARED, True, cur_page=513)]), PSC_ERR_INVALID_ENTRY, (0, 0, 0), []),
    (psc_buffer([entry(HUGE + 0x1000, SHARED, True)]), PSC_ERR_INVALID_ENTRY, (0, 0, 0), []),
    (psc_buffer([entry(MEM, SHARED)]), PSC_ERR_GENERIC, (0, 0, 0), []),      # GFN past guest memory
    (psc_buffer([entry(MEM, SHARED, True)]), PSC_ERR_GENERIC, (0, 0, 0), []),
    (psc_buffer([entry(0xF_FFFF_FFFF_F000, PRIVATE)]), PSC_ERR_GENERIC, (0, 0, 0), []),
    (psc_buffer([entry(GHCB, PRIVATE)]), PSC_ERR_GENERIC, (0, 0, 0), []),    # the GHCB itself
    (psc_buffer([GOOD, entry(PAGES[1], 6)]), PSC_ERR_INVALID_ENTRY, (1, 1, 0), [PAGES[0]]),
    (psc_buffer([entry(LAST_2M, SHARED, True), GOOD]), 0, (2, 1, 0),         # the control: fine
     [LAST_2M + i * 0x1000 for i in range(512)] + [PAGES[0]]),
])
def test_a_malformed_request_gets_its_info_2_and_changes_nothing(snp_vm, buf, info_2, after, changed):
    """Scenario: a hostile guest's PSC buffer: the documented sw_exit_info_2, the header as hv
    leaves it, and nothing in the RMP changed but the entries before the bad one."""
    vmm = snp_vm(psc(buf))
    before = rmp_all(vmm)
    step(vmm)
    assert answer(vmm) == (0, info_2)
    assert header(vmm) == after
    assert sorted(i << 12 for i, (a, b) in enumerate(zip(before, rmp_all(vmm))) if a != b) == sorted(changed)
    assert vmm.vcpu.es.stats["bad_requests"] == 0  # answered in sw_exit_info_2, not as a bad request


@pytest.mark.parametrize("scratch, data", [
    (GHCB + 0x7F8, psc_buffer([GOOD])),          # header starts before the shared buffer
    (GHCB + 0xFF0 - 8, psc_buffer([GOOD])),      # header fits, entry 0 runs past its end
    (GHCB + 0xFF0 - 16, psc_buffer([GOOD, GOOD])),  # entry 1 past the end
    (GHCB + 0xFF0, psc_buffer([GOOD])),          # just after it
    (GHCB, psc_buffer([GOOD])),                  # the GHCB's save area
    (PAGES[0], psc_buffer([GOOD])),              # guest memory outside the GHCB
    (1 << 40, psc_buffer([GOOD])),               # not guest memory at all
    (-1 & 0xFFFF_FFFF_FFFF_FFFF, psc_buffer([GOOD])),
])
def test_a_buffer_outside_the_shared_buffer_is_a_bad_scratch_area(snp_vm, scratch, data):
    """Scenario: sw_scratch does not point at header and entries wholly inside the GHCB's shared
    buffer: sw_exit_info_1 = 2, sw_exit_info_2 = 3 (as for MMIO), nothing done."""
    # The buffer is written where sw_scratch points when that is in the GHCB page, so the header
    # hv would read there is a real one.
    dst = scratch if GHCB <= scratch and scratch + len(data) <= GHCB + 0x1000 else BUF
    vmm = snp_vm(psc(data, scratch=scratch, dst=dst))
    before = rmp_all(vmm)
    step(vmm)
    assert answer(vmm) == (2, 3)
    assert rmp_all(vmm) == before
    assert vmm.vcpu.es.stats["bad_requests"] == 1


def test_without_sw_scratch_the_request_is_a_bad_scratch_area(psp_state):
    """Scenario: sw_scratch not marked valid (only sw_exit_code and info_1/2 are)."""
    code = bytearray(CODE)
    i = code.index(bytes.fromhex("c60425fe8300003c"))
    code[i + 7] = 0x1C  # valid bits 114..116 only
    vmm = Vmm(VmmConfig(image=bytes(code) + psc(psc_buffer([GOOD])) + bytes(8), vm_type="sev-snp",
                        mem_size=MEM, psp_state=psp_state))
    try:
        vmm.load()
        vmm.vcpu.es.registered_gpa = GHCB  # as the snp_vm fixture does
        before = rmp_all(vmm)
        step(vmm)
        assert answer(vmm) == (2, 3)
        assert rmp_all(vmm) == before
    finally:
        vmm.close()


def test_under_sev_es_the_event_is_unknown(snp_vm):
    """Scenario: page state changes are SNP's; an SEV-ES guest asking gets "invalid event"."""
    vmm = snp_vm(psc(psc_buffer([GOOD])), vm_type="sev-es")
    step(vmm)
    assert answer(vmm) == (2, 6)


def test_a_ghcb_made_private_ends_the_guest(snp_vm):
    """Scenario: the GHCB page became private (the guest asked for it over the MSR protocol)
    and the guest exits with it again: the hypervisor cannot write the answer, so the guest is
    terminated (KVM_EXIT_SYSTEM_EVENT) and nothing is converted; hv itself does not fail."""
    from hv.kvm.sev_snp import page_state_change_msr
    vmm = snp_vm(psc(psc_buffer([GOOD])))
    step(vmm)
    assert answer(vmm) == (0, 0) and not rmp(vmm, PAGES[0]).assigned
    assert page_state_change_msr(vmm.vm, PAGES[0] | PRIVATE << 52 | 0x014) == 0x015
    assert page_state_change_msr(vmm.vm, GHCB | PRIVATE << 52 | 0x014) == 0x015
    assert vmm.vcpu.es.control.ghcb_msr == GHCB  # the guest's last VMGEXIT, taken again
    e = vmm.vcpu.es.vmgexit()
    assert isinstance(e, K.SystemEvent) and "not a shared page" in e.detail
    assert rmp(vmm, PAGES[0]).assigned


# -- the handler on its own -----------------------------------------------------------------------
def test_hostile_buffers_never_raise(snp_vm):
    """Scenario: random headers and entries straight into the handler: an answer every time,
    never an exception, and only the four test pages may change."""
    import random
    vmm = snp_vm()
    rng = random.Random(1)
    allowed = set(PAGES)
    before = rmp_all(vmm)
    for _ in range(300):
        n = rng.randrange(1, 6)
        ents = []
        for _ in range(n):
            kind = rng.randrange(4)
            gpa = rng.choice(PAGES) if kind else rng.getrandbits(52) & ~0xFFF
            ents.append(rng.getrandbits(64) if kind == 3 and rng.random() < 0.5 else
                        entry(gpa, rng.randrange(16), huge=kind == 0 and rng.random() < 0.3,
                              cur_page=rng.choice([0, 0, 1, rng.getrandbits(12)])))
        buf = bytearray(psc_buffer(ents, cur=rng.choice([0, 0, rng.getrandbits(16)]),
                                   end=rng.choice([n - 1, n - 1, rng.getrandbits(16) % 260])))
        buf += bytes(8 + 8 * 260 - len(buf))
        r = page_state_change(vmm.vm, buf, 0, ghcb_gpa=GHCB)
        assert r in (0, PSC_ERR_INVALID_HDR, PSC_ERR_INVALID_ENTRY, PSC_ERR_GENERIC)
    after = rmp_all(vmm)
    assert {i << 12 for i, (a, b) in enumerate(zip(before, after)) if a != b} <= allowed


# -- the guest library ----------------------------------------------------------------------------
def test_the_guest_library_shares_several_pages_with_one_nae(psp_state, monkeypatch):
    """Scenario: `secret` with a secret offered: the library shares its marker page and the two
    report pages one NAE each, and the release's two pages (shared_alloc(2)) with one NAE of two
    entries; each is hypervisor-owned afterwards, and the release works."""
    import hv.kvm.sev_snp as sev_snp
    requests = []
    real = sev_snp.page_state_change

    def record(vm, buf, off, ghcb_gpa=None):
        cur, end, _ = struct.unpack_from("<HHI", buf, off)
        ents = struct.unpack_from(f"<{end + 1}Q", buf, off + 8)
        requests.append((cur, end, [e >> 52 & 0xF for e in ents], [e & 0xF_FFFF_FFFF_F000 for e in ents]))
        return real(vm, buf, off, ghcb_gpa)

    monkeypatch.setattr(sev_snp, "page_state_change", record)
    secret = b"released over two shared pages"
    vmm = Vmm(VmmConfig(image=(GUESTS / "secret.img").read_bytes(), vm_type="sev-snp",
                        secret=secret, psp_state=psp_state))
    try:
        result = vmm.run()
        assert result.exit_code == 0, (result.message, result.serial)
        assert f"secret-sha256: {hashlib.sha256(secret).hexdigest()}" in result.serial
        assert vmm.vcpu.es.stats["bad_requests"] == 0
        assert sorted(end for _, end, _, _ in requests) == [0, 0, 0, 1]
        assert all(cur == 0 and ops == [SHARED] * len(ops) for cur, _, ops, _ in requests)
        two = next(gpas for _, end, _, gpas in requests if end == 1)
        assert two[1] == two[0] + 0x1000
        for _, _, _, gpas in requests:
            assert all(rmp(vmm, g) == RmpEntry() for g in gpas)
    finally:
        vmm.close()


def _secret_run(psp_state, monkeypatch, answer_two_entries):
    """Run `secret` with a secret offered; requests of two entries (the release's two pages)
    are answered by `answer_two_entries(real, vm, buf, off, ghcb_gpa, calls)`."""
    import hv.kvm.sev_snp as sev_snp
    real = sev_snp.page_state_change
    calls = []

    def fake(vm, buf, off, ghcb_gpa=None):
        if struct.unpack_from("<H", buf, off + 2)[0] != 1:
            return real(vm, buf, off, ghcb_gpa)
        calls.append(struct.unpack_from("<H", buf, off)[0])
        return answer_two_entries(real, vm, buf, off, ghcb_gpa, calls)

    monkeypatch.setattr(sev_snp, "page_state_change", fake)
    vmm = Vmm(VmmConfig(image=(GUESTS / "secret.img").read_bytes(), vm_type="sev-snp",
                        secret=b"two pages", psp_state=psp_state))
    try:
        return vmm.run(), calls
    finally:
        vmm.close()


def _one_entry_at_a_time(real, vm, buf, off, ghcb_gpa, calls):
    """Do only the entry at cur_entry, as a hypervisor may that stops early."""
    cur = struct.unpack_from("<H", buf, off)[0]
    struct.pack_into("<H", buf, off + 2, cur)
    result = real(vm, buf, off, ghcb_gpa)
    struct.pack_into("<H", buf, off + 2, 1)
    return result


def test_the_guest_library_repeats_the_exit_while_entries_remain(psp_state, monkeypatch):
    """Scenario: the hypervisor finishes one entry per VMGEXIT (info_2 = 0, cur_entry <=
    end_entry): the library exits again until cur_entry passes end_entry, and goes on."""
    result, calls = _secret_run(psp_state, monkeypatch, _one_entry_at_a_time)
    assert result.exit_code == 0, (result.message, result.serial)
    assert calls == [0, 1]
    assert f"secret-sha256: {hashlib.sha256(b'two pages').hexdigest()}" in result.serial


@pytest.mark.parametrize("how", ["error", "backwards", "header"])
def test_the_guest_library_terminates_on_a_failed_nae(psp_state, monkeypatch, how):
    """Scenario: the hypervisor answers the two-page request with an error, moves cur_entry
    backwards, or rewrites end_entry: the library ends the guest (reason set 1, code 8)."""
    def hostile(real, vm, buf, off, ghcb_gpa, calls):
        if how == "error":
            return PSC_ERR_GENERIC
        if how == "header":
            struct.pack_into("<H", buf, off + 2, 0)
            return real(vm, buf, off, ghcb_gpa)
        if len(calls) == 1:
            return _one_entry_at_a_time(real, vm, buf, off, ghcb_gpa, calls)
        struct.pack_into("<H", buf, off, 0)  # progress taken back
        return 0

    result, calls = _secret_run(psp_state, monkeypatch, hostile)
    assert result.exit_reason == "terminated", (result.message, result.serial)
    assert "reason set 1, code 0x8" in result.message
    assert calls == ([0, 1] if how == "backwards" else [0])
    assert "secret-sha256" not in result.serial

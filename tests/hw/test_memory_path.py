"""The memory path through a real CPU: what the guest, the host, DMA and a C=0 alias each see.

Property tests (hypothesis) drive random sequences of guest writes and reads through C=1 and
C=0 mappings (each one a full exit), host reads and writes, and DMA, against a model of what
SEV hardware guarantees:
  (a) the DRAM bytes of a private page never equal its plaintext;
  (b) the guest reads back what it wrote to private memory unless something else wrote that
      16-byte block since, and then it reads the hardware's garbage, never the other writer's
      plaintext;
  (c) two ASIDs writing the same plaintext at the same host address give different ciphertext,
      the same ASID, address and plaintext give the same.
"""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tinyvm import ALIAS_VA, DATA_GPA, DATA_PAGES, PRIVATE_VA, TinyVm

QWORDS = 8  # qwords per page the test touches (2 blocks of each of the first 4 lines)

qword = st.tuples(st.integers(0, DATA_PAGES - 1), st.integers(0, QWORDS - 1))
value = st.integers(1, (1 << 64) - 1)
ops = st.one_of(
    st.tuples(st.just("guest_write"), qword, value),
    st.tuples(st.just("alias_write"), qword, value),
    st.tuples(st.just("guest_read"), qword, st.just(0)),
    st.tuples(st.just("alias_read"), qword, st.just(0)),
    st.tuples(st.just("host_read"), qword, st.just(0)),
    st.tuples(st.just("host_write"), qword, value),
    st.tuples(st.just("dma_read"), qword, st.just(0)),
    st.tuples(st.just("dma_write"), qword, value),
)


def va(base, q):
    page, off = q
    return base + page * 0x1000 + off * 8


def spa(vm, q):
    page, off = q
    return vm.spa(DATA_GPA) + page * 0x1000 + off * 8


def block_qwords(q):
    page, off = q
    first = off & ~1
    return [(page, first), (page, first + 1)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ops, min_size=1, max_size=25))
def test_encrypted_memory_model(sequence):
    vm = TinyVm(encrypted=True)
    known: dict = {}      # qword -> plaintext the guest wrote privately and may read back
    forbidden: dict = {}  # qword -> plaintext another writer put there: must never read back
    for op, q, v in sequence:
        if op == "guest_write":
            vm.guest_write(va(PRIVATE_VA, q), v)
            known[q] = v
            forbidden.pop(q, None)
        elif op == "guest_read":
            got = vm.guest_read(va(PRIVATE_VA, q))
            if q in known:
                assert got == known[q], f"(b) private read of {q} lost the guest's write"
            elif q in forbidden:
                assert got != forbidden[q], "(b) guest read another writer's plaintext"
        elif op in ("alias_write", "host_write", "dma_write"):
            if op == "alias_write":
                vm.guest_write(va(ALIAS_VA, q), v)
            elif op == "host_write":
                vm.host.write(spa(vm, q), struct.pack("<Q", v))
            else:
                vm.dma.write(spa(vm, q), struct.pack("<Q", v))
            for other in block_qwords(q):
                known.pop(other, None)
            forbidden[q] = v
        else:
            if op == "alias_read":
                raw = vm.guest_read(va(ALIAS_VA, q))
            elif op == "host_read":
                raw = struct.unpack("<Q", vm.host.read(spa(vm, q), 8))[0]
            else:
                raw = struct.unpack("<Q", vm.dma.read(spa(vm, q), 8))[0]
            if q in known:
                assert raw != known[q], f"(a) {op} saw the plaintext of a private qword"
    # (a) at the end, after every cache is written back: no private plaintext anywhere in DRAM.
    dram = vm.mc.raw_dump()
    for q, v in known.items():
        a = spa(vm, q)
        assert dram[a:a + 8] != struct.pack("<Q", v)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(qword, value), min_size=1, max_size=10))
def test_plain_guest_and_host_share_plaintext(writes):
    """Without encryption everyone sees the same bytes: the honest baseline."""
    vm = TinyVm(encrypted=False)
    for q, v in writes:
        vm.guest_write(va(PRIVATE_VA, q), v)
        assert struct.unpack("<Q", vm.host.read(spa(vm, q), 8))[0] == v
        assert vm.guest_read(va(ALIAS_VA, q)) == v


def test_two_asids_same_plaintext_same_address_differ():
    """(c) The hypervisor maps the same host page into two guests: same bytes, other ciphertext."""
    a = TinyVm(encrypted=True, asid=3)
    b = TinyVm(encrypted=True, asid=4, engine=a.engine, mc=a.mc, spa_base=0x600000)
    b.npt.map(DATA_GPA, a.spa(DATA_GPA), DATA_PAGES * 0x1000)
    q = (0, 0)
    a.guest_write(va(PRIVATE_VA, q), 0x1122334455667788)
    a.guest_write(va(PRIVATE_VA, (0, 1)), 0x99AABBCCDDEEFF00)
    ct_a = a.host.read(spa(a, q), 16)
    b.guest_write(va(PRIVATE_VA, q), 0x1122334455667788)
    b.guest_write(va(PRIVATE_VA, (0, 1)), 0x99AABBCCDDEEFF00)
    ct_b = b.host.read(spa(a, q), 16)
    assert ct_a != ct_b
    # The same ASID, address and plaintext again: the very same ciphertext (no nonce).
    a.guest_write(va(PRIVATE_VA, q), 0x1122334455667788)
    a.guest_write(va(PRIVATE_VA, (0, 1)), 0x99AABBCCDDEEFF00)
    assert a.host.read(spa(a, q), 16) == ct_a


def test_host_write_gives_garbage_not_host_plaintext():
    vm = TinyVm(encrypted=True)
    q = (1, 2)
    vm.guest_write(va(PRIVATE_VA, q), 42)
    vm.host.write(spa(vm, q), struct.pack("<Q", 0xDEADBEEF))
    got = vm.guest_read(va(PRIVATE_VA, q))
    assert got not in (42, 0xDEADBEEF)
    # Other blocks of the page still decrypt: the controller re-reads them, it does not lose them.
    vm.guest_write(va(PRIVATE_VA, (1, 6)), 7)
    vm.host.write(spa(vm, q), struct.pack("<Q", 1))
    assert vm.guest_read(va(PRIVATE_VA, (1, 6))) == 7


def test_c_bit_alias_reads_ciphertext_of_dirty_private_data():
    """A C=0 alias of a page the guest holds dirty under C=1 sees freshly encrypted bytes."""
    vm = TinyVm(encrypted=True)
    q = (2, 0)
    vm.guest_write(va(PRIVATE_VA, q), 0x5EC12E7)
    alias = vm.guest_read(va(ALIAS_VA, q))
    assert alias != 0x5EC12E7
    assert alias == struct.unpack("<Q", vm.host.read(spa(vm, q), 8))[0]
    assert vm.guest_read(va(PRIVATE_VA, q)) == 0x5EC12E7


def test_tsme_encrypts_shared_pages_in_dram_but_not_for_their_users():
    vm = TinyVm(encrypted=True, tsme=True)
    q = (3, 3)
    vm.guest_write(va(ALIAS_VA, q), 0xC0FFEE)
    assert struct.unpack("<Q", vm.host.read(spa(vm, q), 8))[0] == 0xC0FFEE  # the host's own view
    assert struct.unpack("<Q", vm.dma.read(spa(vm, q), 8))[0] == 0xC0FFEE
    raw = vm.mc.raw_dump(spa(vm, q) & ~15, 16)
    assert 0xC0FFEE.to_bytes(8, "little") not in raw  # a cold-boot reader sees ciphertext


def test_dirty_tracking_costs_only_page_events():
    vm = TinyVm(encrypted=True)
    vm.guest_write(va(PRIVATE_VA, (0, 0)), 1)
    before = dict(vm.mc.stats)
    for i in range(50):
        vm.guest_write(va(PRIVATE_VA, (0, i % QWORDS)), i + 1)
        assert vm.guest_read(va(PRIVATE_VA, (0, i % QWORDS))) == i + 1
    after = vm.mc.stats
    # 100 accesses, 100 exits and 100 host writes of the shared mailbox: no page is decrypted or
    # encrypted again, and no TLB is flushed, once the working set is in the guest's view.
    assert after == before

"""An encrypted OS guest's plaintext and DRAM (hv.hw.osmem.PrivateRam) over a real memory
controller and AES engine: what the guest computed reaches DRAM as ciphertext where it maps the
page private and verbatim where shared; what others write to DRAM comes back decrypted or as it
is; nothing else is rewritten.

The engine runs the xex-linear mode with fixed constants, so the ciphertext DRAM must hold is
computed here with single-block AES from `cryptography` (test_engine's helpers), independently
of the engine. The private RAM starts at 2 MiB of host memory, so a tweak taken from the
guest-physical address instead of the host's would show. The guest's mappings are played by the
test: `classes` says, per page, True (some mapping without the C-bit), False (only with it) or
nothing (unmapped), as OsCpu._shared_pages would.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hv.hw.engine import AesEngine, KeySlotPort, TweakMode
from hv.hw.memctl import PAGE, MemoryController
from hv.hw.osmem import PrivateRam
from test_engine import CONSTANTS, KEY, aes, linear_tweak, xor

ASID = 5
SPA0 = 2 << 20
PAGES = 8


def xex(plain: bytes, spa: int) -> bytes:
    """What the engine must store for `plain` at host address `spa` under KEY."""
    out = []
    for i in range(0, len(plain), 16):
        t = linear_tweak(spa + i)
        out.append(xor(aes(xor(plain[i:i + 16], t)), t))
    return b"".join(out)


def windows(data: bytes) -> set[bytes]:
    return {data[i:i + 16] for i in range(len(data) - 15)}


def cells(r: "Ram") -> bytes:
    """The DRAM cells of the private RAM after a cold boot (the rest of DRAM is never written)."""
    dump = r.mc.raw_dump()
    assert not np.frombuffer(dump[:SPA0] + dump[SPA0 + PAGES * PAGE:], np.uint8).any()
    return dump[SPA0:SPA0 + PAGES * PAGE]


class Ram:
    """PrivateRam over PAGES pages at SPA0, the guest's mappings in `classes`."""

    def __init__(self, classes: dict[int, bool] | None = None):
        self.engine = AesEngine(15, TweakMode.XEX_LINEAR, CONSTANTS)
        KeySlotPort(self.engine).program_key(ASID, KEY)
        self.mc = MemoryController(4 << 20, self.engine)
        self.ram = PrivateRam(self.mc, SPA0, PAGES * PAGE, ASID)
        self.classes = dict(classes or {})
        self.asked = 0
        self.ram.shared_pages = self._shared_pages

    def _shared_pages(self, out: np.ndarray) -> None:
        self.asked += 1
        for page, shared in self.classes.items():
            out[page] = shared

    def spa(self, page: int) -> int:
        return SPA0 + page * PAGE

    def guest_writes(self, page: int, data: bytes, offset: int = 0) -> None:
        a = page * PAGE + offset
        self.ram.buf[a:a + len(data)] = np.frombuffer(data, np.uint8)
        self.ram.guest_ran()

    def plaintext(self, page: int) -> bytes:
        return self.ram.buf[page * PAGE:(page + 1) * PAGE].tobytes()

    def dram(self, page: int) -> bytes:
        """The page as stored, through the controller (which makes it current first)."""
        return self.mc.read(self.spa(page), PAGE)


# -- the guest's writes, seen from outside --------------------------------------------------------------
def test_a_private_page_reaches_dram_as_its_ciphertext_under_the_asid_key():
    r = Ram({3: False})
    secret = os.urandom(PAGE)
    r.guest_writes(3, secret)
    stored = r.dram(3)
    assert stored == xex(secret, r.spa(3))
    assert r.mc.read(r.spa(3), PAGE, slot=ASID) == secret
    assert not windows(secret) & windows(cells(r))
    assert r.ram.stats["pages_encrypted"] == 1


def test_a_shared_page_reaches_dram_verbatim():
    r = Ram({3: True})
    data = os.urandom(PAGE)
    r.guest_writes(3, data)
    assert r.dram(3) == data
    assert r.ram.stats["pages_encrypted"] == 0


def test_a_page_mapped_nowhere_counts_as_private():
    r = Ram()
    secret = os.urandom(PAGE)
    r.guest_writes(6, secret)
    assert r.dram(6) == xex(secret, r.spa(6))


def test_only_the_pages_read_are_made_current():
    r = Ram({1: False, 2: False})
    a, b = os.urandom(PAGE), os.urandom(PAGE)
    r.guest_writes(1, a)
    r.guest_writes(2, b)
    r.mc.read(r.spa(1) + 100, 16)
    assert r.mc.dram[r.spa(2):r.spa(3)].tobytes() == bytes(PAGE)  # not looked at yet
    assert r.ram.stats["pages_encrypted"] == 1
    assert r.dram(2) == xex(b, r.spa(2))


def test_pages_the_guest_did_not_touch_are_not_rewritten():
    r = Ram({p: p % 2 == 0 for p in range(PAGES)})
    left = os.urandom(PAGE)
    r.mc.write(r.spa(5), left)        # say, a launch's leftovers in a page the guest never uses
    r.ram.refresh()
    r.guest_writes(2, os.urandom(PAGE))
    r.guest_writes(3, os.urandom(PAGE))
    before = r.ram.stats["pages_encrypted"]
    dump = r.mc.read(SPA0, PAGES * PAGE)
    assert r.ram.stats["pages_encrypted"] == before + 1      # page 3; page 2 is shared
    assert dump[5 * PAGE:6 * PAGE] == left
    for p in (0, 1, 4, 6, 7):
        assert dump[p * PAGE:(p + 1) * PAGE] == bytes(PAGE), p  # zeros, not encrypted zeros


def test_the_classification_is_asked_again_only_after_the_guest_ran():
    r = Ram({0: False, 1: True})
    r.guest_writes(0, b"x" * 16)
    r.dram(0)
    assert r.asked == 1
    r.ram.buf[PAGE:PAGE + 16] = np.frombuffer(b"y" * 16, np.uint8)  # no run in between
    r.dram(1)
    assert r.asked == 1
    r.guest_writes(0, b"z" * 16)
    r.dram(0)
    assert r.asked == 2


def test_the_class_at_the_time_of_the_look_decides():
    # Linux's set_memory_decrypted: the same page, private while written, shared when looked at.
    r = Ram({4: False})
    first = os.urandom(PAGE)
    r.guest_writes(4, first)
    assert r.dram(4) == xex(first, r.spa(4))
    r.classes[4] = True
    second = os.urandom(PAGE)
    r.guest_writes(4, second)
    assert r.dram(4) == second
    r.classes[4] = False
    third = os.urandom(PAGE)
    r.guest_writes(4, third)
    assert r.dram(4) == xex(third, r.spa(4))


# -- others' writes, seen by the guest -------------------------------------------------------------------
def test_a_host_write_to_a_private_page_is_seen_as_its_decryption_after_refresh():
    r = Ram({2: False})
    r.ram.refresh()
    plain = os.urandom(PAGE)
    r.mc.write(r.spa(2), xex(plain, r.spa(2)))
    assert r.ram.pending()
    assert r.plaintext(2) == bytes(PAGE)     # not before the guest runs again
    assert r.ram.refresh() is True
    assert r.plaintext(2) == plain
    assert not r.ram.pending()
    assert r.ram.stats["pages_decrypted"] == 1


def test_a_host_write_of_plaintext_to_a_private_page_is_garbage_to_the_guest():
    r = Ram({2: False})
    r.ram.refresh()
    planted = b"hypervisor's bytes, not the key's".ljust(64, b".")
    r.mc.write(r.spa(2) + 0x40, planted)
    r.ram.refresh()
    seen = r.plaintext(2)
    assert planted[:16] not in seen
    expected = r.engine.decrypt(ASID, r.spa(2) + 0x40, planted).tobytes()
    assert seen[0x40:0x80] == expected
    assert r.dram(2)[0x40:0x80] == planted  # and DRAM keeps what was written


def test_a_host_write_to_a_shared_page_is_seen_verbatim_after_refresh():
    r = Ram({2: True})
    r.ram.refresh()
    data = os.urandom(100)
    r.mc.write(r.spa(2) + 0x123, data)
    assert r.ram.refresh() is True
    assert r.plaintext(2)[0x123:0x123 + 100] == data
    assert r.ram.stats["pages_decrypted"] == 0


def test_refresh_reports_no_change_when_dram_did_not_change():
    r = Ram({2: False})
    r.ram.refresh()
    r.guest_writes(2, os.urandom(PAGE))
    r.dram(2)
    assert not r.ram.pending()
    r.mc.write(r.spa(2), r.mc.read(r.spa(2), 64))  # the same bytes again
    assert r.ram.pending()
    assert r.ram.refresh() is False


def test_the_guests_own_changes_are_not_lost_to_a_host_write_elsewhere():
    r = Ram({1: False, 2: False})
    r.ram.refresh()
    mine = os.urandom(PAGE)
    r.guest_writes(1, mine)
    r.mc.write(r.spa(2), os.urandom(32))
    r.ram.refresh()
    assert r.plaintext(1) == mine
    assert r.dram(1) == xex(mine, r.spa(1))


@pytest.mark.parametrize("shared", [False, True])
def test_a_page_changed_on_both_sides_takes_dram(shared):
    # The module's rule: what another agent wrote to DRAM wins over the guest's change of the
    # same page since the last look (as a coherent DMA write drops the cached line).
    r = Ram({2: shared})
    r.ram.refresh()
    theirs = os.urandom(PAGE)
    r.mc.write(r.spa(2), theirs)
    r.guest_writes(2, os.urandom(PAGE))  # the guest computed meanwhile (another thread)
    r.ram.refresh()
    assert r.dram(2) == theirs
    assert r.plaintext(2) == (theirs if shared else r.engine.decrypt(ASID, r.spa(2), theirs).tobytes())


def test_a_host_write_also_takes_in_the_guests_changes_first():
    r = Ram({2: False})
    r.ram.refresh()
    mine = os.urandom(PAGE)
    r.guest_writes(2, mine)
    r.mc.write(r.spa(2) + 0x800, b"H" * 16)  # half-page write: the rest must be the guest's
    r.ram.refresh()
    stored = r.dram(2)
    assert stored[:0x800] == xex(mine[:0x800], r.spa(2))
    assert r.plaintext(2)[:0x800] == mine[:0x800]


# -- lifetime ----------------------------------------------------------------------------------------------
def test_close_takes_the_ram_out_of_the_controller():
    r = Ram({0: False})
    assert r.mc.os_caches == [r.ram]
    r.ram.close()
    assert r.mc.os_caches == []
    r.guest_writes(0, b"s" * 16)
    assert r.dram(0) == bytes(PAGE)  # nobody syncs it any more
    r.ram.close()                    # twice is harmless
    assert r.mc.os_caches == []


def test_private_ram_must_be_whole_pages_inside_dram():
    engine = AesEngine(15, TweakMode.XEX_LINEAR, CONSTANTS)
    mc = MemoryController(4 << 20, engine)
    with pytest.raises(ValueError):
        PrivateRam(mc, SPA0 + 16, PAGE, ASID)
    with pytest.raises(ValueError):
        PrivateRam(mc, SPA0, PAGE + 16, ASID)
    with pytest.raises(Exception, match="outside DRAM"):
        PrivateRam(mc, 3 << 20, 2 << 20, ASID)
    assert mc.os_caches == []


# -- the invariant, over sequences ------------------------------------------------------------------------
_OPS = st.lists(st.tuples(st.sampled_from(["guest", "host_read", "host_write", "run"]),
                          st.integers(0, PAGES - 1), st.integers(0, 2**32 - 1)), max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=_OPS, shared=st.lists(st.booleans(), min_size=PAGES, max_size=PAGES))
def test_dram_always_follows_the_plaintext_and_never_holds_a_private_one(ops, shared):
    r = Ram(dict(enumerate(shared)))
    r.ram.refresh()
    secrets, touched = [], set()
    for op, page, seed in ops:
        if op == "guest":
            data = random.Random(f"guest {page} {seed}").randbytes(PAGE)
            r.guest_writes(page, data)
            touched.add(page)
            if not shared[page]:
                secrets.append(data)
        elif op == "host_read":
            r.dram(page)
        elif op == "host_write":
            theirs = random.Random(f"host {seed}").randbytes(256)  # never a guest's bytes
            r.mc.write(r.spa(page) + (seed % 16) * 16, theirs)
            touched.add(page)
        else:
            r.ram.refresh()
    r.ram.refresh()
    dump = r.mc.read(SPA0, PAGES * PAGE)
    for p in range(PAGES):
        stored, plain = dump[p * PAGE:(p + 1) * PAGE], r.plaintext(p)
        if p not in touched:
            assert stored == plain == bytes(PAGE), p  # memory nobody wrote: zeros on both sides
        elif shared[p]:
            assert stored == plain, p
        else:
            assert r.engine.decrypt(ASID, r.spa(p), stored).tobytes() == plain, p
    seen = windows(cells(r))
    assert not any(windows(s) & seen for s in secrets)

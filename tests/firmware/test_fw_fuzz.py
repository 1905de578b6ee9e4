"""A hostile hypervisor at the mailbox: random command ids, random bytes or random field values at
the command buffer, random handles and addresses.  The firmware must answer every command with a
defined status (never raise, never HWERROR_PLATFORM, which would mean a firmware bug), and no
command that does not name the victim guest may change it: its state, its key slot, its memory,
or use its ASID at all.

The default tier runs a few hundred hypothesis examples per test; the fuzz tier (at the end; run
with --fuzz, as .ci/run does) runs 10,000 cases for each command the firmware implements, from a
deterministic generator."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import random
import struct

import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from firmware import HANDLERS, Firmware
from fw_flows import TMR_SPA, init_platform, launch, snp_launch, snp_platform
from fw_support import DRAM_SIZE, MB_BUF, Mailbox, MemPort, SnpMemPort
from sevwire import (BUFFER_FOR_CMD, SNP_POLICY_DEFAULT, Attestation, Cmd, Deactivate, GuestStatus,
                     PlatformState, SevWireError, SnpDbgDecrypt, SnpDbgEncrypt, SnpLaunchStart,
                     SnpLaunchUpdate, SnpPageReclaim, SnpPageType, SnpPolicy, Status)

VICTIM_ASID = 5
VICTIM_SPA = 0x700000
VICTIM_IMAGE = bytes(range(256)) * 16
REPORT_SPA = 0x7F0000

FUZZ_SETTINGS = settings(max_examples=150, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@dataclasses.dataclass
class World:
    fw: Firmware
    port: MemPort
    mb: Mailbox
    victim: int
    victim_key: bytes
    victim_dram: bytes
    victim_status: GuestStatus


def _world(chip) -> World:
    """A WORKING platform with a running victim (handle 1, ASID 5, debuggable policy 0), a guest
    in LUPDATE on ASID 6 (handle 2) and an inactive guest in LSECRET (handle 3)."""
    port = MemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    init_platform(mb)
    victim = launch(mb, VICTIM_ASID, VICTIM_IMAGE, VICTIM_SPA)
    launch(mb, 6, bytes(64), 0x100000, measure=False)
    third = launch(mb, 7, bytes(64), 0x101000, finish=False)
    assert mb.status(Cmd.DEACTIVATE, Deactivate(third.handle)) == Status.SUCCESS
    _, status = mb.call(Cmd.GUEST_STATUS, GuestStatus(victim.handle))
    port.key_log.clear()
    port.guest_log.clear()
    return World(fw, port, mb, victim.handle, port.slots[VICTIM_ASID],
                 port.read(VICTIM_SPA, len(VICTIM_IMAGE)), status)


def _check_victim(w: World, memory_too: bool) -> None:
    assert all(asid != VICTIM_ASID for _, asid in w.port.key_log), w.port.key_log
    assert all(asid != VICTIM_ASID for _, asid, _, _ in w.port.guest_log)
    assert w.port.slots.get(VICTIM_ASID) == w.victim_key
    if memory_too:
        assert w.port.read(VICTIM_SPA, len(VICTIM_IMAGE)) == w.victim_dram
    _, status = w.mb.call(Cmd.GUEST_STATUS, GuestStatus(w.victim))
    assert status == w.victim_status
    status, _ = w.mb.call(Cmd.ATTESTATION, Attestation(w.victim, REPORT_SPA, bytes(16), 208))
    assert status == Status.SUCCESS
    assert w.port.read(REPORT_SPA + 0x10, 32) == hashlib.sha256(VICTIM_IMAGE).digest()


# -- strategies ---------------------------------------------------------------------------------

ALL_IDS = sorted({int(c) for c in Cmd})
cmd_ids = st.one_of(
    st.sampled_from(ALL_IDS),
    st.integers(min_value=-(1 << 40), max_value=1 << 40),
).filter(lambda c: c != Cmd.SHUTDOWN)  # SHUTDOWN legitimately decommissions every guest

# addresses that stay clear of the victim's memory (0x700000..0x701000), or leave DRAM entirely
SAFE_ADDRESSES = st.one_of(
    st.sampled_from([0, 8, 16, 0x1000, 0x10000, 0x100000, 0x100008, 0x101000, 0x180000,
                     DRAM_SIZE - 16, DRAM_SIZE - 1, DRAM_SIZE, 1 << 40, (1 << 63), (1 << 64) - 16,
                     (1 << 64) - 1]),
    st.integers(min_value=0x10000, max_value=0x600000).map(lambda a: a & ~0xF),
    st.integers(min_value=DRAM_SIZE, max_value=(1 << 64) - 1),
)
LENGTHS = st.one_of(
    st.sampled_from([0, 1, 15, 16, 32, 48, 52, 128, 208, 2083, 2084, 4096, 6252, 1 << 20,
                     0x7FFFFFFF, 0xFFFFFFFF]),
    st.integers(min_value=0, max_value=0x10000),
)
HANDLES = st.one_of(st.sampled_from([0, 2, 3, 4, 1000, 0xFFFFFFFF]),
                    st.integers(min_value=0, max_value=0xFFFFFFFF))


def _field_strategy(name: str):
    if name == "handle":
        return HANDLES
    if name.endswith("paddr") or name in ("address", "src", "dst"):
        return SAFE_ADDRESSES
    if name.endswith("len"):
        return LENGTHS
    if name == "asid":
        return st.integers(min_value=0, max_value=20)
    if name == "policy":
        return st.one_of(st.sampled_from([0, 1, 2, 3, 4, 8, 0x40]), st.integers(0, 0xFFFFFFFF))
    if name == "flags":
        return st.integers(min_value=0, max_value=3)
    if name == "mnonce":
        return st.binary(min_size=16, max_size=16)
    return st.integers(min_value=0, max_value=0xFF)


@st.composite
def structured_command(draw):
    """A command id with a well-formed buffer of hostile field values."""
    cmd = draw(st.sampled_from([c for c in BUFFER_FOR_CMD if c != Cmd.SHUTDOWN]))
    layout = BUFFER_FOR_CMD[cmd]
    values = {f.name: draw(_field_strategy(f.name)) for f in dataclasses.fields(layout)}
    return int(cmd), layout(**values).pack()


raw_command = st.tuples(cmd_ids, st.binary(min_size=0, max_size=64))


def _names_victim(w: World, spa: int) -> bool:
    """Whether the buffer the firmware will read at ``spa`` names the victim's handle."""
    if not 0 <= spa <= DRAM_SIZE - 4:
        return False
    return int.from_bytes(w.port.read(spa, 4), "little") == w.victim


def _place(w: World, buf: bytes) -> None:
    w.port.write(MB_BUF, bytes(64))  # no leftovers of an earlier buffer
    w.port.write(MB_BUF, buf)


# -- tests --------------------------------------------------------------------------------------


@FUZZ_SETTINGS
@given(commands=st.lists(raw_command, min_size=1, max_size=4),
       spa=st.one_of(st.just(MB_BUF), st.integers(min_value=-(1 << 8), max_value=(1 << 64) + 8)))
def test_random_bytes_and_ids_never_crash_or_touch_other_guests(chip, commands, spa):
    w = _world(chip)
    for cmd, buf in commands:
        _place(w, buf)
        assume(not _names_victim(w, spa))
        status = w.fw.command(cmd, spa)
        assert isinstance(status, int) and status in {int(s) for s in Status}
        assert status != Status.HWERROR_PLATFORM
    # random bytes may contain any address: the firmware may write hypervisor-directed output
    # there (the hypervisor could write DRAM itself), but never with the victim's key
    _check_victim(w, memory_too=False)


@FUZZ_SETTINGS
@given(commands=st.lists(structured_command(), min_size=1, max_size=5))
def test_hostile_fields_never_crash_or_touch_other_guests(chip, commands):
    w = _world(chip)
    for cmd, buf in commands:
        _place(w, buf)
        assume(not _names_victim(w, MB_BUF))
        status = w.fw.command(cmd, MB_BUF)
        assert status in {int(s) for s in Status}
        assert status != Status.HWERROR_PLATFORM
    _check_victim(w, memory_too=True)


def test_buffer_outside_dram_is_invalid_address(chip):
    w = _world(chip)
    for spa in (DRAM_SIZE - 4, DRAM_SIZE, 1 << 63, (1 << 64) - 1, 1 << 64, -1):
        assert w.fw.command(Cmd.GUEST_STATUS, spa) == Status.INVALID_ADDRESS
    assert w.fw.command(Cmd.DF_FLUSH, -1) == Status.SUCCESS  # takes no buffer
    _check_victim(w, memory_too=True)


def test_non_int_arguments_do_not_raise(chip):
    w = _world(chip)
    assert w.fw.command("INIT", MB_BUF) == Status.INVALID_COMMAND  # type: ignore[arg-type]
    assert w.fw.command(Cmd.GUEST_STATUS, "0x1000") == Status.INVALID_ADDRESS  # type: ignore[arg-type]
    assert w.fw.command(None, None) == Status.INVALID_COMMAND  # type: ignore[arg-type]


def test_port_bug_becomes_hwerror_not_exception(chip):
    """An unexpected exception inside the firmware (here: a broken port) is HWERROR_PLATFORM."""
    w = _world(chip)

    def broken(spa: int, length: int) -> bytes:
        raise RuntimeError("memory controller on fire")

    w.port.read = broken  # type: ignore[method-assign]
    assert w.fw.command(Cmd.GUEST_STATUS, MB_BUF) == Status.HWERROR_PLATFORM


# -- SEV-SNP: the debug commands and page reclaim ----------------------------------------------------
#
# The victim (ASID 1) did not allow debugging; the attacker's guest (ASID 2) did, so the hostile
# hypervisor holds one context that really opens pages. Whatever it names, the victim's key is
# never used, no page of the victim (nor a context page, nor the TMR) changes in DRAM or in the
# RMP, and the attacker's key only ever touches the attacker's own pages, writing only the one
# page it had made Pre-guest.

SNP_VICTIM_GCTX, SNP_VICTIM_PAGES = 0x200000, (0x210000, 0x211000)
SNP_ATTACKER_GCTX, SNP_ATTACKER_PAGES = 0x300000, (0x310000, 0x311000)
SNP_INACTIVE_GCTX = 0x320000
SNP_OUT, SNP_DATA = 0x400000, 0x401000
SNP_PAGES = [*SNP_VICTIM_PAGES, *SNP_ATTACKER_PAGES, SNP_VICTIM_GCTX, SNP_ATTACKER_GCTX,
             SNP_INACTIVE_GCTX, SNP_OUT, SNP_DATA, TMR_SPA, TMR_SPA + 0xFF000, 0, MB_BUF,
             DRAM_SIZE - 0x1000]
SNP_ADDRESSES = st.one_of(
    st.sampled_from(SNP_PAGES),
    st.tuples(st.sampled_from(SNP_PAGES), st.sampled_from([1, 8, 16, 0x800, 0xFFF])).map(sum),
    st.sampled_from([DRAM_SIZE, 1 << 40, (1 << 64) - 0x1000, (1 << 64) - 1]),
    st.integers(min_value=0, max_value=(DRAM_SIZE >> 12) - 1).map(lambda p: p << 12),
    st.integers(min_value=0, max_value=(1 << 64) - 1),
)
# Each field is drawn mostly from the pages its role expects (so the page checks, not only the
# first refusals, are exercised), and otherwise from anywhere.
_GUEST_SIDE = st.sampled_from([*SNP_VICTIM_PAGES, *SNP_ATTACKER_PAGES])
_HOST_SIDE = st.sampled_from([SNP_OUT, SNP_DATA, 0, DRAM_SIZE - 0x1000, TMR_SPA, SNP_VICTIM_GCTX])
_CONTEXT = st.sampled_from([SNP_VICTIM_GCTX, SNP_ATTACKER_GCTX, SNP_INACTIVE_GCTX])


def _mostly(role):
    return st.integers(min_value=0, max_value=3).flatmap(lambda i: role if i else SNP_ADDRESSES)


@dataclasses.dataclass
class SnpWorld:
    fw: Firmware
    port: SnpMemPort
    mb: Mailbox
    victim_key: bytes
    victim_dram: bytes
    protected: dict[int, bytes]
    rmp: dict


def _snp_world(chip) -> SnpWorld:
    port = SnpMemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    snp_platform(mb)
    snp_launch(mb, SNP_VICTIM_GCTX, 1, dict.fromkeys(SNP_VICTIM_PAGES, VICTIM_IMAGE))
    debug = SNP_POLICY_DEFAULT | SnpPolicy.DEBUG
    snp_launch(mb, SNP_ATTACKER_GCTX, 2, dict.fromkeys(SNP_ATTACKER_PAGES, bytes(4096)), debug)
    snp_launch(mb, SNP_INACTIVE_GCTX, 3, {}, debug, activate=False)
    assert port.rmpupdate(SNP_ATTACKER_PAGES[1], True, 2, 0x101000, immutable=True)  # Pre-guest
    port.write(SNP_DATA, b"attacker-chosen!" * 256)
    port.key_log.clear()
    port.guest_log.clear()
    protected = {spa: port.read(spa, 0x1000) for spa in
                 (*SNP_VICTIM_PAGES, SNP_ATTACKER_PAGES[0], SNP_VICTIM_GCTX, SNP_ATTACKER_GCTX,
                  SNP_INACTIVE_GCTX, TMR_SPA, TMR_SPA + 0xFF000)}
    return SnpWorld(fw, port, mb, port.slots[1], port.read(SNP_VICTIM_PAGES[0], 0x2000),
                    protected, port.rmp_snapshot())


@st.composite
def snp_command(draw):
    cmd = draw(st.sampled_from([Cmd.SNP_DBG_DECRYPT, Cmd.SNP_DBG_ENCRYPT, Cmd.SNP_PAGE_RECLAIM]))
    if cmd is Cmd.SNP_PAGE_RECLAIM:
        return cmd, SnpPageReclaim(draw(SNP_ADDRESSES))
    gctx = draw(_mostly(_CONTEXT))
    if cmd is Cmd.SNP_DBG_DECRYPT:
        return cmd, SnpDbgDecrypt(gctx, draw(_mostly(_GUEST_SIDE)), draw(_mostly(_HOST_SIDE)))
    return cmd, SnpDbgEncrypt(gctx, draw(_mostly(_HOST_SIDE)), draw(_mostly(_GUEST_SIDE)))


@FUZZ_SETTINGS
@given(commands=st.lists(snp_command(), min_size=1, max_size=6))
def test_snp_debug_commands_never_reach_another_guest(chip, commands):
    w = _snp_world(chip)
    for cmd, buf in commands:
        status = w.mb.status(cmd, buf)
        assert status in {int(s) for s in Status} and status != Status.HWERROR_PLATFORM
        event(f"{cmd.name}: {Status(status).name}")
    assert all(asid != 1 for _, asid in w.port.key_log)
    assert w.port.slots.get(1) == w.victim_key
    for kind, asid, spa, length in w.port.guest_log:
        assert asid == 2 and length == 0x1000, (kind, asid, spa)
        assert spa == SNP_ATTACKER_PAGES[1] if kind == "write" else spa in SNP_ATTACKER_PAGES
    for spa, before in w.protected.items():
        assert w.port.read(spa, 0x1000) == before, hex(spa)
    rmp = w.port.rmp_snapshot()
    for spa in (*SNP_VICTIM_PAGES, SNP_ATTACKER_PAGES[0], SNP_VICTIM_GCTX, SNP_ATTACKER_GCTX,
                SNP_INACTIVE_GCTX):
        assert rmp.get(spa) == w.rmp.get(spa), hex(spa)
    assert set(rmp) <= set(w.rmp)  # no page became assigned
    # The victim still runs on its own key: its pages decrypt to what it was launched with.
    assert w.port._read_guest(1, SNP_VICTIM_PAGES[0], 0x2000) == VICTIM_IMAGE * 2


# -- the slow tier: 10,000 hostile cases per firmware command -----------------------------------------
#
# A deterministic generator (random.Random with a fixed seed per command), not hypothesis: the
# tier runs 360,000 cases and hypothesis's own bookkeeping would cost more than the firmware.
# SCENARIOS: the SEV world of _world (victim, a launching guest, an inactive one), the SNP world
# of _snp_world plus a new context and a launching guest, and for the platform commands a fresh
# PSP (UNINIT or INIT). The SNP victim's context may be named (it must refuse: no debug policy,
# no VMPCK, RUNNING), except by SNP_DECOMMISSION and SNP_ACTIVATE, which the hypervisor owns.
# SHUTDOWN legitimately ends every guest: after it, no key is left in a slot and DRAM is unchanged.
# Each command runs against a world that lasts WORLD_CASES cases, so earlier cases leave state
# behind for later ones (a guest decommissioned, a context created); a case is one command buffer,
# one of three kinds: fields drawn from pools of addresses, lengths and handles that mean
# something in the world; raw bytes; or a mutation of the last buffer the firmware accepted for
# that command (which walks deeper into a handler than either). After every case: a defined
# status, never HWERROR_PLATFORM, and the victim untouched (key slot, ASID never used, memory,
# state); after every world, the full victim check with ATTESTATION.

SLOW_CASES = 10_000
WORLD_CASES = 200
_STATUSES = frozenset(int(s) for s in Status)
_PLATFORM_CMDS = {Cmd.INIT, Cmd.SHUTDOWN, Cmd.PLATFORM_RESET, Cmd.PEK_GEN, Cmd.PEK_CSR,
                  Cmd.PEK_CERT_IMPORT, Cmd.PDH_GEN, Cmd.SNP_INIT}
"""Run half their cases on a fresh platform (UNINIT or INIT), where they are not refused at once."""
_SEV_POOL = [0, 8, 0x1000, 0x10000, 0x11000, 0x12000, 0x13000, 0x14000, 0x100000, 0x100008,
             0x101000, 0x180000, DRAM_SIZE - 16, DRAM_SIZE - 1, DRAM_SIZE, 1 << 40, 1 << 63,
             (1 << 64) - 16, (1 << 64) - 1]
_LENGTH_POOL = [0, 1, 15, 16, 32, 48, 52, 128, 208, 2083, 2084, 4096, 6252, 1 << 20, 0x7FFFFFFF,
                0xFFFFFFFF]


def _sev_address(rng) -> int:
    """An address clear of the victim (0x700000..0x701000) for any length in _LENGTH_POOL."""
    pick = rng.random()
    if pick < 0.6:
        return rng.choice(_SEV_POOL)
    if pick < 0.9:
        return rng.randrange(0x10000, 0x600000) & ~0xF
    return rng.randrange(DRAM_SIZE, 1 << 64)


# The slow tier's SNP world adds a context just created (for SNP_LAUNCH_START) and a guest still
# launching on ASID 4 with a Pre-guest page (for SNP_LAUNCH_UPDATE and SNP_LAUNCH_FINISH). The
# Pre-guest page holds a CPUID table claiming a C-bit at 51, so an update of it as a CPUID page
# (type 6) is refused and the PSP writes its correction back over the page, in plaintext.
SNP_NEW_GCTX, SNP_LAUNCHING_GCTX = 0x330000, 0x340000
SNP_LAUNCHING_PAGES = (0x350000, 0x351000)
CPUID_CLAIM = (struct.pack("<I12x", 1) + struct.pack("<IIQQIIIIQ", 0x8000001F, 0, 0, 0, 0x1F, 51,
                                                     0, 0, 0)).ljust(0x1000, b"\0")


def _snp_address(rng, role: str) -> int:
    pools = {"gctx": [SNP_VICTIM_GCTX, SNP_ATTACKER_GCTX, SNP_INACTIVE_GCTX, SNP_NEW_GCTX,
                      SNP_LAUNCHING_GCTX],
             "guest": [*SNP_VICTIM_PAGES, *SNP_ATTACKER_PAGES, *SNP_LAUNCHING_PAGES],
             "host": [SNP_OUT, SNP_DATA, 0, DRAM_SIZE - 0x1000, TMR_SPA, SNP_VICTIM_GCTX]}
    pick = rng.random()
    if pick < 0.6:
        return rng.choice(pools[role])
    if pick < 0.75:
        return rng.choice(SNP_PAGES) + rng.choice([0, 1, 8, 16, 0x800, 0xFFF])
    if pick < 0.9:
        return rng.randrange(DRAM_SIZE >> 12) << 12
    return rng.getrandbits(64)


def _field_value(rng, world: str, name: str, default):
    if isinstance(default, bytes):
        return rng.randbytes(len(default))
    if name == "handle":
        return rng.choice([0, 2, 3, 4, 1000, 0xFFFFFFFF, rng.getrandbits(32)])
    if name == "asid":
        return rng.randrange(0, 21)
    if name.endswith("len"):
        return rng.choice(_LENGTH_POOL) if rng.random() < 0.7 else rng.randrange(0x10001)
    if world == "snp" and (name.endswith("paddr") or name.endswith("addr")):
        role = "gctx" if name.startswith(("gctx", "ma_gctx")) else \
            "guest" if name in ("page_paddr", "src_addr") else "host"
        return _snp_address(rng, role)
    if name.endswith("paddr") or name in ("address", "src", "dst"):
        return _sev_address(rng)
    if name == "policy":
        return rng.choice([0, 1, 2, 3, 4, 8, 0x40, SNP_POLICY_DEFAULT,
                           SNP_POLICY_DEFAULT | SnpPolicy.DEBUG, rng.getrandbits(32)])
    if name == "flags":
        return rng.randrange(4) if rng.random() < 0.8 else rng.getrandbits(32)
    return rng.randrange(0x100) if rng.random() < 0.8 else rng.getrandbits(32)


def _pack(layout, values: dict) -> bytes | None:
    try:
        return layout(**values).pack()
    except (SevWireError, ValueError, TypeError, OverflowError):
        return None


@dataclasses.dataclass
class _Case:
    buf: bytes
    spa: int
    structured: bool   # built from the pools: no address in it reaches the victim's memory


def _gen_case(rng, cmd: Cmd, world: str, accepted: bytes | None) -> _Case:
    layout = HANDLERS[cmd][0]
    size = layout.SIZE if layout is not None else 64
    spa = MB_BUF if rng.random() < 0.95 else rng.choice([-1, 0, DRAM_SIZE - 4, DRAM_SIZE, 1 << 64])
    kind = rng.random()
    if layout is not None and accepted and kind < 0.3:
        buf = bytearray(accepted)
        for _ in range(rng.randrange(1, 4)):
            buf[rng.randrange(len(buf))] = rng.randrange(0x100) if rng.random() < 0.5 else 0
        return _Case(bytes(buf), spa, structured=False)
    if layout is not None and kind < 0.85:
        values = {f.name: _field_value(rng, world, f.name, f.default)
                  for f in dataclasses.fields(layout)}
        buf = _pack(layout, values)
        if buf is not None:
            return _Case(buf, spa, structured=True)
    return _Case(rng.randbytes(rng.randrange(size + 17)), spa, structured=False)


def _hostile_guest_message(rng) -> bytes:
    """A request page for SNP_GUEST_REQUEST: a header that mostly passes the format checks
    (so the sequence-number and tag checks run), random elsewhere, under no VMPCK at all."""
    hdr = bytearray(rng.randbytes(0x60))
    if rng.random() < 0.8:
        struct.pack_into("<BBHBBH", hdr, 0x30, 1, 1, 0x60, rng.choice([5, 1, 3, 0, 0xFF]), 1,
                         rng.choice([0x60, 16, 0xFA0, 0xFB0, 0, 0xFFFF]))
        hdr[0x3C] = rng.choice([0, 1, 2, 3, 4, 0xFF])
        struct.pack_into("<Q", hdr, 0x20, rng.choice([1, 2, 0, (1 << 64) - 1, rng.getrandbits(64)]))
    return bytes(hdr) + rng.randbytes(0x1000 - 0x60)


def _names_snp_victim(port: MemPort, spa: int, cmd: Cmd) -> bool:
    """SNP_DECOMMISSION and SNP_ACTIVATE of the victim's context are the hypervisor's to make."""
    if cmd not in (Cmd.SNP_DECOMMISSION, Cmd.SNP_ACTIVATE) or not 0 <= spa <= DRAM_SIZE - 8:
        return False
    return int.from_bytes(port.read(spa, 8), "little") == SNP_VICTIM_GCTX


class _Arena:
    """One world for one command's cases, and the invariants checked after each of them."""

    def __init__(self, chip, world: str, rng):
        self.world = world
        self.cases = 0
        if world == "sev":
            self.w = _world(chip)
            self.port, self.fw = self.w.port, self.w.fw
        elif world == "snp":
            self.w = _snp_world(chip)
            self.port, self.fw = self.w.port, self.w.fw
            snp_launch(self.w.mb, SNP_NEW_GCTX, 0, {}, start=False)
            snp_launch(self.w.mb, SNP_LAUNCHING_GCTX, 4, {SNP_LAUNCHING_PAGES[0]: VICTIM_IMAGE},
                       finish=False)
            self.port.write(SNP_LAUNCHING_PAGES[1], CPUID_CLAIM)
            assert self.port.rmpupdate(SNP_LAUNCHING_PAGES[1], True, 4, 0x200000, immutable=True)
            self.port.key_log.clear()
        else:  # "fresh": a new platform, UNINIT or INIT, with nobody's guest to protect
            self.port = MemPort()
            self.fw = Firmware(self.port, None, chip=chip)
            self.w = None
        self.mb = Mailbox(self.fw, self.port)
        if world == "fresh" and rng.random() < 0.5:
            init_platform(self.mb, flush=False)

    def place(self, case: _Case, cmd: Cmd, rng) -> bool:
        """Write the case's buffer; False if the buffer the firmware will read names the victim."""
        self.port.write(MB_BUF, bytes(64))  # no leftovers of an earlier buffer
        self.port.write(MB_BUF, case.buf)
        if cmd is Cmd.SNP_GUEST_REQUEST:
            self.port.write(SNP_DATA, _hostile_guest_message(rng))
        if self.world == "sev":
            return not _names_victim(self.w, case.spa)
        if self.world == "snp":
            return not _names_snp_victim(self.port, case.spa, cmd)
        return True

    def after_case(self, case: _Case, cmd: Cmd) -> None:
        if self.world == "sev":
            w = self.w
            if cmd is Cmd.SHUTDOWN:
                return self._after_shutdown()
            assert all(asid != VICTIM_ASID for _, asid in w.port.key_log), w.port.key_log
            assert all(asid != VICTIM_ASID for _, asid, _, _ in w.port.guest_log), w.port.guest_log
            assert w.port.slots.get(VICTIM_ASID) == w.victim_key, "the victim's key slot changed"
            if case.structured:
                assert w.port.read(VICTIM_SPA, len(VICTIM_IMAGE)) == w.victim_dram, "victim DRAM"
            else:  # raw bytes may name any address for an output: the hypervisor's own DRAM
                w.victim_dram = w.port.read(VICTIM_SPA, len(VICTIM_IMAGE))
            _, status = w.mb.call(Cmd.GUEST_STATUS, GuestStatus(w.victim))
            assert status == w.victim_status, status
        elif self.world == "snp":
            w = self.w
            assert all(asid != 1 for _, asid in w.port.key_log), w.port.key_log
            assert all(asid != 1 for _, asid, _, _ in w.port.guest_log), w.port.guest_log
            assert w.port.slots.get(1) == w.victim_key, "the victim's key slot changed"
            rmp = w.port.rmp_snapshot()
            for spa in (*SNP_VICTIM_PAGES, SNP_VICTIM_GCTX, TMR_SPA, TMR_SPA + 0xFF000):
                assert w.port.read(spa, 0x1000) == w.protected[spa], hex(spa)
                assert rmp.get(spa) == w.rmp.get(spa), hex(spa)

    def _after_shutdown(self) -> None:
        """SHUTDOWN ends every guest: it must leave no key in a slot, nor plaintext in DRAM."""
        w = self.w
        if self.fw.platform_state == PlatformState.UNINIT:
            assert not w.port.slots, w.port.slots
            assert w.port.read(VICTIM_SPA, len(VICTIM_IMAGE)) == w.victim_dram

    def final(self) -> None:
        if self.world == "sev" and self.fw.platform_state != PlatformState.UNINIT:
            _check_victim(self.w, memory_too=False)
        elif self.world == "snp":
            assert self.w.port._read_guest(1, SNP_VICTIM_PAGES[0], 0x2000) == VICTIM_IMAGE * 2


def _seed(cmd: Cmd) -> bytes | None:
    """A buffer the SNP world accepts, so mutations start deep inside the launch commands. For
    SNP_LAUNCH_UPDATE that is the Pre-guest page as a CPUID page: refused (its table claims
    C-bit 51) and corrected in place the first time, accepted the next; structured cases of type
    1 reach the NORMAL path."""
    if cmd is Cmd.SNP_LAUNCH_START:
        return SnpLaunchStart(SNP_NEW_GCTX, SNP_POLICY_DEFAULT).pack()
    if cmd is Cmd.SNP_LAUNCH_UPDATE:
        flags = SnpLaunchUpdate.make_flags(SnpPageType.CPUID)
        return SnpLaunchUpdate(SNP_LAUNCHING_GCTX, flags, SNP_LAUNCHING_PAGES[1]).pack()
    return None


def _worlds_for(cmd: Cmd) -> list[str]:
    if cmd.name.startswith("SNP_") and cmd is not Cmd.SNP_INIT:
        return ["snp"]
    if cmd in _PLATFORM_CMDS:
        return ["sev", "fresh"]
    return ["sev"]


@pytest.mark.fuzz
@pytest.mark.parametrize("cmd", sorted(HANDLERS, key=int), ids=lambda c: c.name)
def test_ten_thousand_hostile_cases_per_command(chip, cmd):
    rng = random.Random(0x5E7F_0000 + int(cmd))
    worlds = _worlds_for(cmd)
    accepted: dict[str, bytes | None] = dict.fromkeys(worlds, _seed(cmd))
    arena = None
    statuses: collections.Counter[str] = collections.Counter()
    for n in range(SLOW_CASES):
        world = worlds[n * len(worlds) // SLOW_CASES]
        if arena is None or arena.world != world or arena.cases >= WORLD_CASES:
            if arena is not None:
                arena.final()
            arena = _Arena(chip, world, rng)
        arena.cases += 1
        case = _gen_case(rng, cmd, world, accepted[world])
        while not arena.place(case, cmd, rng):
            case = _gen_case(rng, cmd, world, accepted[world])
        arena.port.key_log.clear()
        arena.port.guest_log.clear()
        status = arena.fw.command(int(cmd), case.spa)
        where = f"{cmd.name} case {n} ({world}): spa {case.spa:#x} buffer {case.buf.hex()}"
        assert status in _STATUSES and status != Status.HWERROR_PLATFORM, f"{status}: {where}"
        if status == Status.SUCCESS and HANDLERS[cmd][0] is not None and case.spa == MB_BUF:
            accepted[world] = case.buf
        statuses[Status(status).name] += 1
        try:
            arena.after_case(case, cmd)
        except AssertionError as e:
            raise AssertionError(f"{where}: {e}") from None
    arena.final()
    assert sum(statuses.values()) == SLOW_CASES
    if os.environ.get("HV_FUZZ_STATS"):
        print(f"\n{cmd.name}: {dict(statuses.most_common())}")

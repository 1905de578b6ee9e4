"""SNP_DBG_DECRYPT, SNP_DBG_ENCRYPT and SNP_PAGE_RECLAIM at the mailbox, on a machine double with
an RMP: what each accepts, the status of each malformed buffer, and that a refused command reads
and writes nothing and never uses a guest key."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from firmware import Firmware
from fw_flows import TMR_SPA, SnpLaunched, snp_launch, snp_platform
from fw_support import DRAM_SIZE, Mailbox, SnpMemPort
from sevwire import (SNP_POLICY_DEFAULT, Cmd, SnpDbgDecrypt, SnpDbgEncrypt, SnpPageReclaim,
                     SnpPolicy, Status)

PAGE = 0x1000
DEBUG = SNP_POLICY_DEFAULT | SnpPolicy.DEBUG
A_GCTX, A_PAGES = 0x200000, (0x210000, 0x211000)
B_GCTX, B_PAGES = 0x300000, (0x310000, 0x311000)
OUT, DATA = 0x400000, 0x401000  # hypervisor pages: plaintext out, plaintext in
A_IMAGE = bytes(range(256)) * 16
B_SECRET = b"B-SECRET" * 512
PLAIN = bytes(reversed(range(256))) * 16


@dataclass
class World:
    fw: Firmware
    port: SnpMemPort
    mb: Mailbox
    a: SnpLaunched
    b: SnpLaunched


def _world(chip, a_policy: int = DEBUG, b_policy: int = SNP_POLICY_DEFAULT) -> World:
    """Guest A (ASID 1) and guest B (ASID 2) launched and running, one page each Guest-valid and
    one made Pre-guest again by the hypervisor (the state SNP_DBG_ENCRYPT writes)."""
    port = SnpMemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    snp_platform(mb)
    a = snp_launch(mb, A_GCTX, 1, {A_PAGES[0]: A_IMAGE, A_PAGES[1]: A_IMAGE}, a_policy)
    b = snp_launch(mb, B_GCTX, 2, {B_PAGES[0]: B_SECRET, B_PAGES[1]: B_SECRET}, b_policy)
    for page, asid, gpa in ((A_PAGES[1], 1, a.pages[A_PAGES[1]]), (B_PAGES[1], 2, b.pages[B_PAGES[1]])):
        assert port.rmpupdate(page, True, asid, gpa, immutable=True)
    port.write(DATA, PLAIN)
    port.guest_log.clear()
    return World(fw, port, mb, a, b)


@pytest.fixture()
def world(chip) -> World:
    return _world(chip)


def _refused_without_effect(w: World, cmd: Cmd, buf, status: Status) -> None:
    dram, rmp = bytes(w.port.dram), w.port.rmp_snapshot()
    assert Status(w.mb.status(cmd, buf)) is status
    mb_end = w.mb.buf_spa + PAGE  # the command buffer itself is the one thing that differs
    after = bytes(w.port.dram)
    assert after[:w.mb.buf_spa] == dram[:w.mb.buf_spa] and after[mb_end:] == dram[mb_end:]
    assert w.port.rmp_snapshot() == rmp
    assert w.port.guest_log == []


# -- what is accepted --------------------------------------------------------------------------------


def test_decrypt_gives_the_guest_page_plaintext_through_the_guest_key(world):
    w = world
    assert w.port.read(A_PAGES[0], PAGE) != A_IMAGE  # DRAM holds ciphertext
    assert w.mb.status(Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(A_GCTX, A_PAGES[0], OUT)) == Status.SUCCESS
    assert w.port.read(OUT, PAGE) == A_IMAGE
    assert w.port.guest_log == [("read", 1, A_PAGES[0], PAGE)]
    # A Pre-guest page is still the guest's: it decrypts too, and nothing about it changes.
    rmp = w.port.rmp_snapshot()
    assert w.mb.status(Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(A_GCTX, A_PAGES[1], OUT)) == Status.SUCCESS
    assert w.port.read(OUT, PAGE) == A_IMAGE and w.port.rmp_snapshot() == rmp


def test_encrypt_writes_a_pre_guest_page_with_the_guest_key(world):
    """Known answer: DRAM afterwards is the double's own encryption of the plaintext under the
    key in ASID 1's slot at that address, computed independently of the firmware."""
    w = world
    rmp = w.port.rmp_snapshot()
    assert w.mb.status(Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(A_GCTX, DATA, A_PAGES[1])) == Status.SUCCESS
    assert w.port.read(A_PAGES[1], PAGE) == w.port.encrypt_with(w.port.slots[1], A_PAGES[1], PLAIN)
    assert w.port.rmp_snapshot() == rmp  # still Pre-guest: the hypervisor must reclaim it
    assert w.port.guest_log == [("write", 1, A_PAGES[1], PAGE)]
    assert w.mb.status(Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(A_GCTX, A_PAGES[1], OUT)) == Status.SUCCESS
    assert w.port.read(OUT, PAGE) == PLAIN


def test_encrypt_does_not_reach_validated_memory(world):
    """A Guest-valid page is refused: a debug write always goes through a page the guest must
    validate again, never silently into memory it already accepted."""
    w = world
    _refused_without_effect(w, Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(A_GCTX, DATA, A_PAGES[0]),
                            Status.INVALID_PAGE_STATE)
    assert w.port.rmp_read(A_PAGES[0])[5]  # still validated, contents unchanged (checked above)


# -- the policy and the guest's state ----------------------------------------------------------------


@pytest.mark.parametrize("cmd,buf", [
    (Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(B_GCTX, B_PAGES[0], OUT)),
    (Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(B_GCTX, DATA, B_PAGES[1])),
    (Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(B_GCTX, 3, 5)),           # before any address is looked at
    (Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(B_GCTX, 1 << 63, A_PAGES[1] + 8)),
], ids=["decrypt", "encrypt", "decrypt-bad-addresses", "encrypt-bad-addresses"])
def test_without_debug_in_the_policy_it_is_policy_failure(world, cmd, buf):
    _refused_without_effect(world, cmd, buf, Status.POLICY_FAILURE)


def test_guest_that_was_never_launched_is_invalid_guest_state(world):
    w = world
    snp_launch(w.mb, 0x500000, 3, {}, start=False)
    _refused_without_effect(w, Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(0x500000, A_PAGES[0], OUT),
                            Status.INVALID_GUEST_STATE)


def test_guest_without_its_asid_is_inactive(world):
    w = world
    snp_launch(w.mb, 0x500000, 3, {}, DEBUG, activate=False)
    _refused_without_effect(w, Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(0x500000, A_PAGES[0], OUT),
                            Status.INACTIVE)
    _refused_without_effect(w, Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(0x500000, DATA, A_PAGES[1]),
                            Status.INACTIVE)


def test_snp_commands_before_snp_init_are_invalid_platform_state(mb):
    for cmd, buf in ((Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(A_GCTX, A_PAGES[0], OUT)),
                     (Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(A_GCTX, DATA, A_PAGES[1])),
                     (Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(A_PAGES[0]))):
        assert mb.status(cmd, buf) == Status.INVALID_PLATFORM_STATE


# -- malformed buffers: each changes nothing ----------------------------------------------------------

DECRYPT_CASES = {
    "unknown-context": (SnpDbgDecrypt(0x500000, A_PAGES[0], OUT), Status.INVALID_GUEST),
    "context-is-a-guest-page": (SnpDbgDecrypt(A_PAGES[0], A_PAGES[0], OUT), Status.INVALID_GUEST),
    "context-unaligned": (SnpDbgDecrypt(A_GCTX + 8, A_PAGES[0], OUT), Status.INVALID_GUEST),
    "src-unaligned": (SnpDbgDecrypt(A_GCTX, A_PAGES[0] + 16, OUT), Status.INVALID_ADDRESS),
    "dst-unaligned": (SnpDbgDecrypt(A_GCTX, A_PAGES[0], OUT + 16), Status.INVALID_ADDRESS),
    "src-outside-dram": (SnpDbgDecrypt(A_GCTX, DRAM_SIZE, OUT), Status.INVALID_ADDRESS),
    "dst-outside-dram": (SnpDbgDecrypt(A_GCTX, A_PAGES[0], (1 << 64) - PAGE), Status.INVALID_ADDRESS),
    "dst-in-the-tmr": (SnpDbgDecrypt(A_GCTX, A_PAGES[0], TMR_SPA + PAGE), Status.INVALID_ADDRESS),
    "src-hypervisor-page": (SnpDbgDecrypt(A_GCTX, DATA, OUT), Status.INVALID_PAGE_STATE),
    "src-context-page": (SnpDbgDecrypt(A_GCTX, A_GCTX, OUT), Status.INVALID_PAGE_STATE),
    "src-other-context-page": (SnpDbgDecrypt(A_GCTX, B_GCTX, OUT), Status.INVALID_PAGE_STATE),
    "dst-own-guest-page": (SnpDbgDecrypt(A_GCTX, A_PAGES[0], A_PAGES[1]), Status.INVALID_PAGE_STATE),
    "dst-other-guest-page": (SnpDbgDecrypt(A_GCTX, A_PAGES[0], B_PAGES[0]), Status.INVALID_PAGE_STATE),
    "dst-context-page": (SnpDbgDecrypt(A_GCTX, A_PAGES[0], B_GCTX), Status.INVALID_PAGE_STATE),
    "src-other-guest-page": (SnpDbgDecrypt(A_GCTX, B_PAGES[0], OUT), Status.INVALID_PAGE_OWNER),
    "src-other-guest-pre-guest": (SnpDbgDecrypt(A_GCTX, B_PAGES[1], OUT), Status.INVALID_PAGE_OWNER),
}

ENCRYPT_CASES = {
    "unknown-context": (SnpDbgEncrypt(0x500000, DATA, A_PAGES[1]), Status.INVALID_GUEST),
    "src-unaligned": (SnpDbgEncrypt(A_GCTX, DATA + 16, A_PAGES[1]), Status.INVALID_ADDRESS),
    "dst-unaligned": (SnpDbgEncrypt(A_GCTX, DATA, A_PAGES[1] + 16), Status.INVALID_ADDRESS),
    "src-outside-dram": (SnpDbgEncrypt(A_GCTX, 1 << 40, A_PAGES[1]), Status.INVALID_ADDRESS),
    "dst-outside-dram": (SnpDbgEncrypt(A_GCTX, DATA, DRAM_SIZE), Status.INVALID_ADDRESS),
    "src-in-the-tmr": (SnpDbgEncrypt(A_GCTX, TMR_SPA, A_PAGES[1]), Status.INVALID_ADDRESS),
    "dst-guest-valid": (SnpDbgEncrypt(A_GCTX, DATA, A_PAGES[0]), Status.INVALID_PAGE_STATE),
    "dst-hypervisor-page": (SnpDbgEncrypt(A_GCTX, DATA, OUT), Status.INVALID_PAGE_STATE),
    "dst-context-page": (SnpDbgEncrypt(A_GCTX, DATA, A_GCTX), Status.INVALID_PAGE_STATE),
    "dst-other-guest-valid": (SnpDbgEncrypt(A_GCTX, DATA, B_PAGES[0]), Status.INVALID_PAGE_STATE),
    "dst-other-guest-pre-guest": (SnpDbgEncrypt(A_GCTX, DATA, B_PAGES[1]), Status.INVALID_PAGE_OWNER),
}


@pytest.mark.parametrize("name", DECRYPT_CASES)
def test_malformed_decrypt_is_refused_without_effect(world, name):
    buf, status = DECRYPT_CASES[name]
    _refused_without_effect(world, Cmd.SNP_DBG_DECRYPT, buf, status)


@pytest.mark.parametrize("name", ENCRYPT_CASES)
def test_malformed_encrypt_is_refused_without_effect(world, name):
    buf, status = ENCRYPT_CASES[name]
    _refused_without_effect(world, Cmd.SNP_DBG_ENCRYPT, buf, status)


def test_two_debuggable_guests_never_reach_each_other(chip):
    """Both guests allow debugging; still, each context opens only its own pages, and B's
    plaintext never appears anywhere through A's context (nor A's key on B's pages)."""
    w = _world(chip, DEBUG, DEBUG)
    for src in B_PAGES:
        _refused_without_effect(w, Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(A_GCTX, src, OUT),
                                Status.INVALID_PAGE_OWNER)
    _refused_without_effect(w, Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(A_GCTX, DATA, B_PAGES[1]),
                            Status.INVALID_PAGE_OWNER)
    # B's own context does open B's page: the refusal above was the owner check, nothing else.
    assert w.mb.status(Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(B_GCTX, B_PAGES[0], OUT)) == Status.SUCCESS
    assert w.port.read(OUT, PAGE) == B_SECRET
    assert w.port.guest_log == [("read", 2, B_PAGES[0], PAGE)]


# -- SNP_PAGE_RECLAIM --------------------------------------------------------------------------------


def test_reclaim_gives_a_pre_guest_page_back_unvalidated(world):
    w = world
    gpa = w.a.pages[A_PAGES[1]]
    assert w.port.rmp_read(A_PAGES[1]) == (True, 1, gpa, 0, True, False, False)
    assert w.mb.status(Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(A_PAGES[1])) == Status.SUCCESS
    assert w.port.rmp_read(A_PAGES[1]) == (True, 1, gpa, 0, False, False, False)  # Guest-invalid
    # Mutable now: the hypervisor may RMPUPDATE it again. A second reclaim changes nothing.
    assert w.mb.status(Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(A_PAGES[1])) == Status.SUCCESS
    assert w.port.rmpupdate(A_PAGES[1])


def test_reclaim_of_a_firmware_page(world):
    w = world
    assert w.port.rmpupdate(OUT, True, 0, 0, immutable=True)  # Linux's rmp_mark_pages_firmware
    assert not w.port.rmpupdate(OUT)
    assert w.mb.status(Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(OUT)) == Status.SUCCESS
    assert w.port.rmp_read(OUT) == (True, 0, 0, 0, False, False, False)  # Reclaim
    assert w.port.rmpupdate(OUT)


@pytest.mark.parametrize("paddr,status", [
    (A_GCTX, Status.INVALID_PAGE_STATE),          # a live guest context is not a Firmware page
    (A_PAGES[1] | 0x10, Status.INVALID_PARAM),    # bits 11:1 reserved
    (A_PAGES[1] | 1, Status.INVALID_PAGE_SIZE),   # 2 MiB: the RMP entry is 4 KiB
    (DRAM_SIZE, Status.INVALID_ADDRESS),
])
def test_reclaim_refusals(world, paddr, status):
    _refused_without_effect(world, Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(paddr), status)


def test_reclaim_of_a_mutable_page_is_success_without_change(world):
    w = world
    rmp = w.port.rmp_snapshot()
    for page in (A_PAGES[0], OUT):
        assert w.mb.status(Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(page)) == Status.SUCCESS
    assert w.port.rmp_snapshot() == rmp

"""SNP_LAUNCH_UPDATE of a CPUID page (type 6): the PSP's check of the table against the platform.

The tables are packed here with `struct` at the offsets of Linux's `struct snp_cpuid_table`
(count u32, reserved u32 + u64, then 48-byte entries), not with sevwire's encoder; the expected
corrections are written out by hand from the policy (firmware/_snp_cpuid.py) and the platform's
CPUID (fw_support.HOST_CPUID); the launch digest is hashed here from PAGE_INFO's layout
(es-snp-reference 3.4) and read back from a signed attestation report.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware import Firmware
from firmware._errors import CommandError
from firmware._snp import cmd_snp_launch_update
from fw_flows import new_snp_platform, snp_launch
from fw_support import HOST_CPUID, Mailbox, SnpMemPort
from sevwire import (Cmd, MsgReportReq, MsgReportRsp, MsgType, SnpGuestRequest, SnpLaunchFinish,
                     SnpLaunchUpdate, SnpPageReclaim, SnpPageType, Status, open_guest_message,
                     seal_guest_message)

PAGE = 0x1000
GCTX, ASID = 0x200000, 1
CPUID_SPA, SECRETS_SPA = 0x210000, 0x211000
CPUID_GPA, SECRETS_GPA = 0x5000, 0x6000
REQ, RES = 0x402000, 0x403000
PRE_GUEST = (True, ASID, CPUID_GPA, 0, True, False, False)
GUEST_VALID = (True, ASID, CPUID_GPA, 0, False, True, False)


def entry(eax_in, ecx_in=0, regs=(0, 0, 0, 0), xcr0_in=0, xss_in=0, reserved=0) -> bytes:
    return struct.pack("<IIQQIIIIQ", eax_in, ecx_in, xcr0_in, xss_in, *regs, reserved)


def table(entries: list[bytes], count: int | None = None, reserved: bytes = bytes(12)) -> bytes:
    raw = struct.pack("<I", len(entries) if count is None else count) + reserved + b"".join(entries)
    return raw.ljust(PAGE, b"\0")


def host(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    return HOST_CPUID[(leaf, subleaf)]


def page_info_digest(ld: bytes, page_type: int, gpa: int) -> bytes:
    """One launch-digest step for a page whose contents are measured as zeros: SHA-384 of
    PAGE_INFO = digest[48] | contents[48] = 0 | length 0x70 u16 | type u8 | IMI u8 | VMPL3, 2, 1
    permissions u8 each | reserved u8 | GPA u64."""
    return hashlib.sha384(ld + bytes(48) + struct.pack("<HBBBBBBQ", 0x70, page_type, 0, 0, 0, 0, 0,
                                                       gpa)).digest()


# A table inside the policy: the platform's own values where they must be equal, fewer features
# than it has, the hypervisor bit, and free registers and leaves holding anything.
GOOD = [
    entry(0x0, regs=(0xD, *host(0)[1:])),
    entry(0x1, regs=(host(1)[0], 0xFF0F0800, (host(1)[2] & ~0x8) | 1 << 31, host(1)[3] & ~0x200)),
    entry(0x7, 0, regs=(0x1, host(7, 0)[1] & 0xFF, 0, 0x10)),
    entry(0x7, 1, regs=(0xDEAD, 0, 0, 0)),
    entry(0xB, 1, regs=(1, 2, 0x201, 3)),
    entry(0x40000000, regs=(0x40000001, 0x4B4D564B, 0x564B4D56, 0x4D)),
    entry(0x80000000, regs=(0x8000001F, *host(0x80000000)[1:])),
    entry(0x80000001, regs=(0x12345678, 0xABCD, host(0x80000001)[2], 0)),
    entry(0x80000007, regs=(0xFFFF, 1, 2, 1 << 8)),
    entry(0x80000008, regs=(0xAB002830, 0x1234, 0xFF, 0x77)),
    entry(0x8000001F, regs=(0x1A, 47 | 1 << 6, 5, 7)),
    entry(0x80000026, regs=(1, 2, 3, 4)),  # above the platform's highest leaf: free
]


@dataclass
class Snp:
    fw: Firmware
    port: SnpMemPort
    mb: Mailbox

    @property
    def ld(self) -> bytes:
        return self.fw._ctx.snp_guests[GCTX].ld  # test-only: SNP has no command that shows it

    def update(self, page: bytes, spa: int = CPUID_SPA, gpa: int = CPUID_GPA) -> Status:
        """The hypervisor's part: write the page, make it Pre-guest, SNP_LAUNCH_UPDATE it."""
        self.port.write(spa, page)
        assert self.port.rmpupdate(spa, True, ASID, gpa, immutable=True)
        return Status(self.mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
            GCTX, SnpLaunchUpdate.make_flags(SnpPageType.CPUID), spa)))

    def give_back(self, spa: int = CPUID_SPA) -> None:
        """SNP_PAGE_RECLAIM then RMPUPDATE to the hypervisor, as KVM does after a refusal."""
        assert self.mb.status(Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(spa)) == Status.SUCCESS
        assert self.port.rmpupdate(spa)

    def finish_and_measure(self) -> bytes:
        """Launch the secrets page, finish, and read MEASUREMENT from the guest's signed report."""
        self.port.write(SECRETS_SPA, bytes(PAGE))
        assert self.port.rmpupdate(SECRETS_SPA, True, ASID, SECRETS_GPA, immutable=True)
        assert self.mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
            GCTX, SnpLaunchUpdate.make_flags(SnpPageType.SECRETS), SECRETS_SPA)) == Status.SUCCESS
        assert self.mb.status(Cmd.SNP_LAUNCH_FINISH, SnpLaunchFinish(GCTX)) == Status.SUCCESS
        vmpck0 = self.port.read_guest(ASID, SECRETS_SPA + 0x20, 32)
        self.port.write(REQ, seal_guest_message(vmpck0, 1, MsgType.MSG_REPORT_REQ,
                                                MsgReportReq(bytes(64)).encode()).ljust(PAGE, b"\0"))
        assert self.mb.status(Cmd.SNP_GUEST_REQUEST, SnpGuestRequest(GCTX, REQ, RES)) == Status.SUCCESS
        _hdr, payload = open_guest_message(vmpck0, self.port.read(RES, PAGE))
        return MsgReportRsp.decode(payload).report[0x90:0xC0]


def _snp(chip) -> Snp:
    mb = new_snp_platform(chip)
    snp_launch(mb, GCTX, ASID, {}, finish=False)
    return Snp(mb.fw, mb.port, mb)


@pytest.fixture()
def snp(chip) -> Snp:
    """A guest in LAUNCH on ASID 1, no page launched yet."""
    return _snp(chip)


def test_a_table_within_the_policy_is_accepted_encrypted_and_measured_as_zeros(snp):
    """Scenario: the hypervisor hides features and fills free registers; the PSP takes the page,
    which becomes Guest-valid, holds the table under the guest's key, and is measured as a page
    of type 6 with zero contents at its GPA."""
    page = table(GOOD)
    assert snp.update(page) == Status.SUCCESS
    assert snp.port.rmp_read(CPUID_SPA) == GUEST_VALID
    assert snp.port.read(CPUID_SPA, PAGE) != page  # ciphertext in DRAM
    assert snp.port.read_guest(ASID, CPUID_SPA, PAGE) == page
    expected = page_info_digest(bytes(48), 6, CPUID_GPA)
    assert snp.ld == expected
    assert snp.finish_and_measure() == page_info_digest(expected, 5, SECRETS_GPA)


def test_the_measurement_does_not_depend_on_the_table(chip):
    """Two different acceptable tables at one GPA give one launch digest: the owner learns that a
    CPUID page was launched, the PSP's check vouches for what it holds."""
    digests = []
    for entries in (GOOD, GOOD[:3], []):
        w = _snp(chip)
        assert w.update(table(entries)) == Status.SUCCESS
        digests.append(w.ld)
    assert digests == [page_info_digest(bytes(48), 6, CPUID_GPA)] * 3


def _with(entries: list[bytes], i: int, replacement: bytes) -> list[bytes]:
    return entries[:i] + [replacement] + entries[i + 1:]


# (what the hypervisor claimed, what the PSP writes back in its place), each an entry of GOOD
# changed in one register; the platform's values come from fw_support.HOST_CPUID.
REFUSED = {
    "leaf 1 ECX bit 2 the platform lacks": (
        1, entry(0x1, regs=(host(1)[0], 0, host(1)[2] | 1 << 2 | 1 << 31, 0)),
        entry(0x1, regs=(host(1)[0], 0, host(1)[2] | 1 << 31, 0))),
    "leaf 1 with a subleaf is still leaf 1": (
        1, entry(0x1, 5, regs=(host(1)[0], 0, 0, 0xFFFFFFFF)),
        entry(0x1, 5, regs=(host(1)[0], 0, 0, host(1)[3]))),
    "leaf 1 another family": (
        1, entry(0x1, regs=(0x00B00F10, 0, 0, 0)), entry(0x1, regs=(host(1)[0], 0, 0, 0))),
    "C-bit 51": (
        10, entry(0x8000001F, regs=(0x1A, 51 | 1 << 6, 5, 7)),
        entry(0x8000001F, regs=(0x1A, 47 | 1 << 6, 5, 7))),
    "leaf 0x8000001F EAX bit 5": (
        10, entry(0x8000001F, regs=(0x3A, 47, 0, 0)), entry(0x8000001F, regs=(0x1A, 47, 0, 0))),
    "another vendor": (
        0, entry(0x0, regs=(0xD, 0x756E6547, 0x6C65746E, 0x49656E69)),
        entry(0x0, regs=(0xD, *host(0)[1:]))),
    "a highest leaf above the platform's": (
        0, entry(0x0, regs=(0x20, *host(0)[1:])), entry(0x0, regs=(0x10, *host(0)[1:]))),
    "a highest extended leaf above the platform's": (
        6, entry(0x80000000, regs=(0x80000028, *host(0x80000000)[1:])),
        entry(0x80000000, regs=(0x80000021, *host(0x80000000)[1:]))),
    "leaf 7 EBX bit 1": (
        2, entry(0x7, 0, regs=(0, 0x2, 0, 0)), entry(0x7, 0, regs=(0, 0, 0, 0))),
    "leaf 7 subleaf 1 EDX, which the platform has none of": (
        3, entry(0x7, 1, regs=(0xDEAD, 0, 0, 0x10)), entry(0x7, 1, regs=(0xDEAD, 0, 0, 0))),
    "leaf 0x80000001 ECX bit 31": (
        7, entry(0x80000001, regs=(0, 0, 1 << 31 | 1, 0)), entry(0x80000001, regs=(0, 0, 1, 0))),
    "leaf 0x80000007 EDX bit 9": (
        8, entry(0x80000007, regs=(0, 0, 0, 3 << 8)), entry(0x80000007, regs=(0, 0, 0, 1 << 8))),
    "52 physical address bits": (
        9, entry(0x80000008, regs=(0xAB003034, 0, 0, 0)),
        entry(0x80000008, regs=(0xAB003030, 0, 0, 0))),
    "57 linear address bits": (
        9, entry(0x80000008, regs=(0x3928, 0, 0, 0)), entry(0x80000008, regs=(0x3028, 0, 0, 0))),
    "an entry's reserved field": (
        4, entry(0xB, 1, regs=(1, 2, 0x201, 3), reserved=1), entry(0xB, 1, regs=(1, 2, 0x201, 3))),
}


@pytest.mark.parametrize("case", REFUSED, ids=list(REFUSED))
def test_a_table_the_platform_cannot_honour_is_refused_and_corrected_in_plaintext(snp, case):
    """Scenario: one register claims what the platform lacks. INVALID_PARAM; the page holds the
    table with exactly that register corrected, unencrypted, for the hypervisor to read; the page
    is still Pre-guest, nothing was encrypted or measured, and once given back the hypervisor can
    launch the corrected table."""
    at, claimed, fixed = REFUSED[case]
    snp.port.guest_log.clear()
    assert snp.update(table(_with(GOOD, at, claimed))) == Status.INVALID_PARAM
    corrected = table(_with(GOOD, at, fixed))
    assert snp.port.read(CPUID_SPA, PAGE) == corrected
    assert snp.port.rmp_read(CPUID_SPA) == PRE_GUEST
    assert snp.ld == bytes(48)
    assert not [e for e in snp.port.guest_log if e[0] == "write"]
    snp.give_back()
    assert snp.update(corrected) == Status.SUCCESS
    assert snp.ld == page_info_digest(bytes(48), 6, CPUID_GPA)


def test_the_refusal_names_the_first_correction(snp):
    """The firmware's own reason (not visible through the mailbox) names the first entry it
    corrected, with the value it had and the value it wants."""
    bad = _with(_with(GOOD, 1, REFUSED["leaf 1 ECX bit 2 the platform lacks"][1]),
                10, REFUSED["C-bit 51"][1])
    snp.port.write(CPUID_SPA, table(bad))
    assert snp.port.rmpupdate(CPUID_SPA, True, ASID, CPUID_GPA, immutable=True)
    buf = SnpLaunchUpdate(GCTX, SnpLaunchUpdate.make_flags(SnpPageType.CPUID), CPUID_SPA)
    with pytest.raises(CommandError) as err:
        cmd_snp_launch_update(snp.fw._ctx, buf)
    ecx = host(1)[2] | 1 << 31
    assert err.value.status is Status.INVALID_PARAM
    assert f"leaf 0x1 ECX {ecx | 4:#x} -> {ecx:#x} (and 1 more)" in str(err.value)


def test_a_refused_page_leaves_the_launch_digest_as_it_was(snp):
    """Scenario: a refused CPUID page between two accepted ones. The guest's measurement is that
    of the accepted pages alone, as its signed report shows."""
    ld = page_info_digest(bytes(48), 6, CPUID_GPA)
    assert snp.update(table(GOOD)) == Status.SUCCESS
    other_spa, other_gpa = 0x212000, 0x7000
    snp.port.write(other_spa, table([REFUSED["C-bit 51"][1]]))
    assert snp.port.rmpupdate(other_spa, True, ASID, other_gpa, immutable=True)
    assert snp.mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
        GCTX, SnpLaunchUpdate.make_flags(SnpPageType.CPUID), other_spa)) == Status.INVALID_PARAM
    assert snp.ld == ld
    snp.give_back(other_spa)
    assert snp.update(table([REFUSED["C-bit 51"][2]]), other_spa, other_gpa) == Status.SUCCESS
    ld = page_info_digest(ld, 6, other_gpa)
    assert snp.finish_and_measure() == page_info_digest(ld, 5, SECRETS_GPA)


_LEAF0 = entry(0x0, regs=(0, *host(0)[1:]))  # what an all-zero entry is corrected to


@pytest.mark.parametrize("page,corrected", [
    (table([entry(0x40000000 + i) for i in range(65)]),
     table([entry(0x40000000 + i) for i in range(64)])),
    (table([], count=0xFFFFFFFF), table([_LEAF0] * 64)),
    (table([], count=65), table([_LEAF0] * 64)),
    (table(GOOD, reserved=b"\1" + bytes(11)), table(GOOD)),
    (table(GOOD, reserved=bytes(11) + b"\x80"), table(GOOD)),
    (b"\xff" * PAGE, table([entry(0xFFFFFFFF, 0xFFFFFFFF, (0xFFFFFFFF,) * 4, (1 << 64) - 1,
                                  (1 << 64) - 1)] * 64)),
], ids=["count 65", "count 0xFFFFFFFF", "count 65 of zeros", "reserved u32", "reserved u64",
        "all ones"])
def test_a_malformed_table_is_a_status_never_an_exception(snp, page, corrected):
    """Counts above 64 and set reserved fields are INVALID_PARAM with the table clamped to 64
    entries and the reserved fields zeroed; the firmware reads no further than entry 63."""
    assert snp.update(page) == Status.INVALID_PARAM
    assert snp.port.read(CPUID_SPA, PAGE) == corrected
    assert snp.port.rmp_read(CPUID_SPA) == PRE_GUEST
    assert snp.ld == bytes(48)


def test_a_cpuid_page_must_be_a_4k_pre_guest_page(snp):
    """The page checks of every launch page hold for type 6: a 2 MiB page, a hypervisor page, and
    a page of another ASID are refused before the table is looked at (and nothing is written)."""
    bad = table([REFUSED["C-bit 51"][1]])
    snp.port.write(CPUID_SPA, bad)
    flags = SnpLaunchUpdate.make_flags(SnpPageType.CPUID)
    assert snp.mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
        GCTX, SnpLaunchUpdate.make_flags(SnpPageType.CPUID, page_size=1), CPUID_SPA)) == \
        Status.INVALID_PAGE_SIZE
    assert snp.mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(GCTX, flags, CPUID_SPA)) == \
        Status.INVALID_PAGE_STATE
    assert snp.port.rmpupdate(CPUID_SPA, True, ASID + 1, CPUID_GPA, immutable=True)
    assert snp.mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(GCTX, flags, CPUID_SPA)) == \
        Status.INVALID_PAGE_OWNER
    assert snp.port.read(CPUID_SPA, PAGE) == bad


# -- any page at all ----------------------------------------------------------------------------

_LEAVES = st.sampled_from([0x0, 0x1, 0x7, 0xB, 0xD, 0x40000000, 0x80000000, 0x80000001,
                           0x80000007, 0x80000008, 0x8000001F, 0x80000026, 0xFFFFFFFF])
_U32 = st.one_of(st.sampled_from([0, 1, 0xFFFFFFFF, 1 << 31]), st.integers(0, 0xFFFFFFFF))
_ENTRY = st.builds(lambda leaf, sub, regs, rsvd: entry(leaf, sub, regs, reserved=rsvd),
                   _LEAVES, st.sampled_from([0, 1, 5]), st.tuples(_U32, _U32, _U32, _U32),
                   st.sampled_from([0] * 7 + [1]))
_PAGES = st.one_of(
    st.builds(lambda es, count: table(es, count), st.lists(_ENTRY, max_size=70),
              st.one_of(st.none(), st.sampled_from([0, 64, 65, 85, 0xFFFFFFFF]))),
    st.binary(min_size=PAGE, max_size=PAGE),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(page=_PAGES)
def test_any_page_is_taken_or_corrected_into_one_that_is(chip, page):
    """Whatever the page holds: SUCCESS with the page encrypted as it was, or INVALID_PARAM with
    the page Pre-guest, the digest unchanged and a correction the PSP then accepts."""
    w = _snp(chip)
    status = w.update(page)
    if status == Status.SUCCESS:
        assert w.port.read_guest(ASID, CPUID_SPA, PAGE) == page
        return
    assert status == Status.INVALID_PARAM
    assert w.port.rmp_read(CPUID_SPA) == PRE_GUEST and w.ld == bytes(48)
    corrected = w.port.read(CPUID_SPA, PAGE)
    assert struct.unpack_from("<I", corrected)[0] <= 64
    w.give_back()
    assert w.update(corrected) == Status.SUCCESS


def test_leaves_the_platform_does_not_have_are_free(snp):
    """On a part whose highest extended leaf is 0x80000008, an entry for 0x8000001F is not
    checked (there is nothing to check it against); on this one it is."""
    entries = [entry(0x8000001F, regs=(0xFF, 51, 0, 0))]
    low = dict(HOST_CPUID)
    low[(0x80000000, 0)] = (0x80000008, *host(0x80000000)[1:])
    del low[(0x8000001F, 0)]
    snp.port.host_cpuid = lambda leaf, sub: low.get((leaf, sub if leaf == 7 else 0), (0,) * 4)
    assert snp.update(table(entries)) == Status.SUCCESS
    del snp.port.host_cpuid
    other_spa = 0x212000
    snp.port.write(other_spa, table(entries))
    assert snp.port.rmpupdate(other_spa, True, ASID, 0x7000, immutable=True)
    assert snp.mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
        GCTX, SnpLaunchUpdate.make_flags(SnpPageType.CPUID), other_spa)) == Status.INVALID_PARAM

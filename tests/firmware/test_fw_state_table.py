"""Every command in every platform state, every guest command in every guest state: the status
code and the state afterwards match the SEV state machines (sev-reference 5.1, 5.4, firmware
docstrings for the documented choices)."""

from __future__ import annotations

import pytest

from firmware import Firmware
from fw_flows import OUT_SPA, export_pdh, init_platform, launch, snp_launch, snp_platform, start_guest
from fw_support import SCRATCH, Mailbox, SnpMemPort
from sevwire import (
    SNP_POLICY_DEFAULT,
    Activate,
    Attestation,
    Cmd,
    DbgDecrypt,
    DbgEncrypt,
    Deactivate,
    Decommission,
    GetId,
    GuestState,
    GuestStatus,
    Init,
    LaunchFinish,
    LaunchMeasure,
    LaunchSecret,
    LaunchStart,
    LaunchUpdateData,
    LaunchUpdateVmsa,
    PdhCertExport,
    PekCertImport,
    PekCsr,
    PlatformState,
    PlatformStatus,
    SnpDbgDecrypt,
    SnpDbgEncrypt,
    SnpDecommission,
    SnpPageReclaim,
    SnpPolicy,
    Status,
)

S = Status.SUCCESS
IPS = Status.INVALID_PLATFORM_STATE
IGS = Status.INVALID_GUEST_STATE
U, I, W = PlatformState.UNINIT, PlatformState.INIT, PlatformState.WORKING

IMG = 0x100000  # guest image
DATA = 0x180000  # plaintext for DBG_ENCRYPT / secret destination
HDR, TRANS = SCRATCH + 0x5000, SCRATCH + 0x5100

# (command, buffer for a guest with handle 1, statuses in (UNINIT, INIT, WORKING), states after)
PLATFORM_TABLE = [
    (Cmd.INIT, Init(), (S, IPS, IPS), (I, I, W)),
    (Cmd.SHUTDOWN, None, (S, S, S), (U, U, U)),
    (Cmd.PLATFORM_RESET, None, (S, IPS, IPS), (U, I, W)),
    (Cmd.PLATFORM_STATUS, PlatformStatus(), (S, S, S), (U, I, W)),
    (Cmd.PEK_GEN, None, (IPS, S, IPS), (U, I, W)),
    (Cmd.PEK_CSR, PekCsr(OUT_SPA, 2084), (IPS, S, S), (U, I, W)),
    (Cmd.PEK_CERT_IMPORT, PekCertImport(), (IPS, Status.INVALID_LEN, IPS), (U, I, W)),
    (Cmd.PDH_CERT_EXPORT, PdhCertExport(OUT_SPA, 2084, OUT_SPA + 0x1000, 6252), (IPS, S, S), (U, I, W)),
    (Cmd.PDH_GEN, None, (IPS, S, S), (U, I, W)),
    (Cmd.DF_FLUSH, None, (IPS, S, S), (U, I, W)),
    (Cmd.GET_ID, GetId(OUT_SPA, 64), (S, S, S), (U, I, W)),
    (Cmd.NOP, None, (S, S, S), (U, I, W)),
    (Cmd.LAUNCH_START, LaunchStart(0, 0), (IPS, S, S), (U, W, W)),
    (Cmd.GUEST_STATUS, GuestStatus(1), (IPS, Status.INVALID_GUEST, S), (U, I, W)),
    (Cmd.DECOMMISSION, Decommission(1), (IPS, IPS, S), (U, I, I)),
    (Cmd.ACTIVATE, Activate(1, 5), (IPS, IPS, S), (U, I, W)),
    (Cmd.DEACTIVATE, Deactivate(1), (IPS, IPS, Status.INACTIVE), (U, I, W)),
    (Cmd.LAUNCH_UPDATE_DATA, LaunchUpdateData(1, IMG, 16), (IPS, IPS, Status.INACTIVE), (U, I, W)),
    (Cmd.LAUNCH_UPDATE_VMSA, LaunchUpdateVmsa(1, IMG, 4096), (IPS, IPS, Status.UNSUPPORTED), (U, I, W)),
    (Cmd.LAUNCH_MEASURE, LaunchMeasure(1, OUT_SPA, 48), (IPS, IPS, S), (U, I, W)),
    (Cmd.LAUNCH_SECRET, LaunchSecret(1, HDR, 52, DATA, 16, TRANS, 16), (IPS, IPS, IGS), (U, I, W)),
    (Cmd.LAUNCH_FINISH, LaunchFinish(1), (IPS, IPS, IGS), (U, I, W)),
    (Cmd.ATTESTATION, Attestation(1, OUT_SPA, bytes(16), 208), (IPS, IPS, IGS), (U, I, W)),
    (Cmd.DBG_DECRYPT, DbgDecrypt(1, IMG, OUT_SPA, 16), (IPS, IPS, Status.INACTIVE), (U, I, W)),
    (Cmd.DBG_ENCRYPT, DbgEncrypt(1, DATA, IMG, 16), (IPS, IPS, Status.INACTIVE), (U, I, W)),
]

NOT_IMPLEMENTED = [Cmd.INIT_EX, Cmd.DOWNLOAD_FIRMWARE, Cmd.RING_BUFFER, Cmd.COPY, Cmd.ACTIVATE_EX,
                   Cmd.SWAP_OUT, Cmd.SWAP_IN, 0x00, 0x10, 0x26, 0xFF, 0x1234, -1]


def _to_state(mb, state: PlatformState) -> None:
    if state is U:
        return
    init_platform(mb)
    if state is W:
        handle, _ = start_guest(mb, with_session=False)
        assert handle == 1


@pytest.mark.parametrize("cmd,buf,statuses,after", PLATFORM_TABLE, ids=[r[0].name for r in PLATFORM_TABLE])
@pytest.mark.parametrize("index,state", list(enumerate((U, I, W))), ids=["UNINIT", "INIT", "WORKING"])
def test_platform_command_in_each_platform_state(mb, fw, cmd, buf, statuses, after, index, state):
    _to_state(mb, state)
    assert fw.platform_state is state
    assert Status(mb.status(cmd, buf)) is statuses[index]
    assert fw.platform_state is after[index]


@pytest.mark.parametrize("cmd", NOT_IMPLEMENTED, ids=str)
@pytest.mark.parametrize("state", (U, I, W), ids=["UNINIT", "INIT", "WORKING"])
def test_unknown_and_unimplemented_commands_are_invalid_command(mb, fw, cmd, state):
    _to_state(mb, state)
    assert mb.status(cmd, LaunchStart()) == Status.INVALID_COMMAND
    assert fw.platform_state is state


def test_working_means_at_least_one_guest(mb, fw):
    init_platform(mb)
    first, _ = start_guest(mb, with_session=False)
    second, _ = start_guest(mb, with_session=False)
    assert fw.platform_state is W and fw.guest_count == 2
    assert mb.status(Cmd.DECOMMISSION, Decommission(first)) == S
    assert fw.platform_state is W
    assert mb.status(Cmd.DECOMMISSION, Decommission(second)) == S
    assert fw.platform_state is I
    _, status = mb.call(Cmd.PLATFORM_STATUS, PlatformStatus())
    assert status.guest_count == 0 and status.state == I


# -- guest state machine ------------------------------------------------------------------------

LU, LS, RUN = GuestState.LUPDATE, GuestState.LSECRET, GuestState.RUNNING
SU, RU, SENT = GuestState.SUPDATE, GuestState.RUPDATE, GuestState.SENT
GUEST_STATES = (LU, LS, RUN, SU, RU, SENT)
ATTESTABLE = (LS, RUN, SU, SENT)


def _all(status):
    return {s: status for s in GUEST_STATES}


def _only(states, status, other=IGS):
    return {s: (status if s in states else other) for s in GUEST_STATES}


# command, buffer(handle), {state: status} for an ACTIVE guest, {state: state after success}
GUEST_TABLE_ACTIVE = [
    (Cmd.LAUNCH_UPDATE_DATA, lambda h: LaunchUpdateData(h, IMG, 32), _only((LU,), S), {LU: LU}),
    (Cmd.LAUNCH_UPDATE_VMSA, lambda h: LaunchUpdateVmsa(h, IMG, 4096), _only((LU,), Status.UNSUPPORTED), {}),
    (Cmd.LAUNCH_MEASURE, lambda h: LaunchMeasure(h, OUT_SPA, 48), _only((LU,), S), {LU: LS}),
    (Cmd.LAUNCH_SECRET, lambda h: LaunchSecret(h, HDR, 52, DATA, 16, TRANS, 16),
     _only((LS,), Status.BAD_MEASUREMENT), {}),
    (Cmd.LAUNCH_FINISH, lambda h: LaunchFinish(h), _only((LS,), S), {LS: RUN}),
    (Cmd.ATTESTATION, lambda h: Attestation(h, OUT_SPA, bytes(16), 208), _only(ATTESTABLE, S), {}),
    (Cmd.ACTIVATE, lambda h: Activate(h, 6), _all(Status.ACTIVE), {}),
    (Cmd.DEACTIVATE, lambda h: Deactivate(h), _all(S), {}),
    (Cmd.DECOMMISSION, lambda h: Decommission(h), _all(Status.ACTIVE), {}),
    (Cmd.GUEST_STATUS, lambda h: GuestStatus(h), _all(S), {}),
    (Cmd.DBG_DECRYPT, lambda h: DbgDecrypt(h, IMG, OUT_SPA, 16), _all(S), {}),
    (Cmd.DBG_ENCRYPT, lambda h: DbgEncrypt(h, DATA, IMG, 16), _all(S), {}),
]

# the same for an INACTIVE guest (deactivated, then DF_FLUSHed so its ASID is reusable)
GUEST_TABLE_INACTIVE = [
    (Cmd.LAUNCH_UPDATE_DATA, lambda h: LaunchUpdateData(h, IMG, 32), _only((LU,), Status.INACTIVE), {}),
    (Cmd.LAUNCH_MEASURE, lambda h: LaunchMeasure(h, OUT_SPA, 48), _only((LU,), S), {LU: LS}),
    (Cmd.LAUNCH_SECRET, lambda h: LaunchSecret(h, HDR, 52, DATA, 16, TRANS, 16),
     _only((LS,), Status.INACTIVE), {}),
    (Cmd.LAUNCH_FINISH, lambda h: LaunchFinish(h), _only((LS,), S), {LS: RUN}),
    (Cmd.ACTIVATE, lambda h: Activate(h, 5), _only((LU, LS, RUN, SU, RU), S), {}),
    (Cmd.DEACTIVATE, lambda h: Deactivate(h), _all(Status.INACTIVE), {}),
    (Cmd.DECOMMISSION, lambda h: Decommission(h), _all(S), {}),
    (Cmd.DBG_DECRYPT, lambda h: DbgDecrypt(h, IMG, OUT_SPA, 16), _all(Status.INACTIVE), {}),
    (Cmd.DBG_ENCRYPT, lambda h: DbgEncrypt(h, DATA, IMG, 16), _all(Status.INACTIVE), {}),
]


def _guest_in_state(mb, fw, state: GuestState, active: bool) -> int:
    """A guest (policy 0, with a session) driven to ``state`` through the mailbox.  SUPDATE,
    RUPDATE and SENT are reached through migration (tests/firmware/test_fw_migrate.py); here
    the RUNNING guest's context is set directly (test-only access)."""
    init_platform(mb)
    launched = launch(mb, 5, bytes(range(256)) * 16, IMG, measure=state is not LU,
                      finish=state not in (LU, LS))
    if state in (SU, RU, SENT):
        fw._ctx.guests.lookup(launched.handle).state = state
    if not active:
        assert mb.status(Cmd.DEACTIVATE, Deactivate(launched.handle)) == S
        assert mb.status(Cmd.DF_FLUSH) == S
    _, status = mb.call(Cmd.GUEST_STATUS, GuestStatus(launched.handle))
    assert status.state == state and (status.asid == 5) == active
    return launched.handle


def _guest_cases(table):
    return [(cmd, make, expected[s], s, after.get(s, s)) for cmd, make, expected, after in table
            for s in GUEST_STATES]


def _ids(table):
    return [f"{cmd.name}-{s.name}" for cmd, _, _, _ in table for s in GUEST_STATES]


@pytest.mark.parametrize("cmd,make,expected,state,after", _guest_cases(GUEST_TABLE_ACTIVE),
                         ids=_ids(GUEST_TABLE_ACTIVE))
def test_guest_command_in_each_state_active(mb, fw, cmd, make, expected, state, after):
    handle = _guest_in_state(mb, fw, state, active=True)
    assert Status(mb.status(cmd, make(handle))) is expected
    if cmd is not Cmd.DECOMMISSION or expected is not S:
        _, status = mb.call(Cmd.GUEST_STATUS, GuestStatus(handle))
        assert GuestState(status.state) is (after if expected is S else state)


@pytest.mark.parametrize("cmd,make,expected,state,after", _guest_cases(GUEST_TABLE_INACTIVE),
                         ids=_ids(GUEST_TABLE_INACTIVE))
def test_guest_command_in_each_state_inactive(mb, fw, cmd, make, expected, state, after):
    handle = _guest_in_state(mb, fw, state, active=False)
    assert Status(mb.status(cmd, make(handle))) is expected
    if cmd is Cmd.DECOMMISSION:
        assert mb.status(Cmd.GUEST_STATUS, GuestStatus(handle)) == Status.INVALID_GUEST
        assert fw.platform_state is I
    else:
        _, status = mb.call(Cmd.GUEST_STATUS, GuestStatus(handle))
        assert GuestState(status.state) is (after if expected is S else state)


GUEST_COMMANDS = [row[:2] for row in GUEST_TABLE_ACTIVE]


@pytest.mark.parametrize("cmd,make", GUEST_COMMANDS, ids=[c.name for c, _ in GUEST_COMMANDS])
@pytest.mark.parametrize("handle", [0, 2, 7, 0xFFFFFFFF])
def test_no_context_is_invalid_guest(mb, fw, cmd, make, handle):
    """Guest state UNINIT means "no context": every guest command on that handle is refused."""
    init_platform(mb)
    start_guest(mb, with_session=False)  # handle 1 exists, platform WORKING
    assert Status(mb.status(cmd, make(handle))) is Status.INVALID_GUEST


def test_decommissioned_handle_is_stale(mb, fw):
    init_platform(mb)
    handle, _ = start_guest(mb, with_session=False)
    keep, _ = start_guest(mb, with_session=False)
    assert mb.status(Cmd.DECOMMISSION, Decommission(handle)) == S
    assert mb.status(Cmd.LAUNCH_MEASURE, LaunchMeasure(handle, OUT_SPA, 48)) == Status.INVALID_GUEST
    assert mb.status(Cmd.GUEST_STATUS, GuestStatus(keep)) == S


def test_platform_status_fields(mb, fw):
    status, out = mb.call(Cmd.PLATFORM_STATUS, PlatformStatus())
    assert status == S
    assert (out.api_major, out.api_minor, out.build) == (fw.api_major, fw.api_minor, fw.build) == (0, 24, 15)
    assert (out.state, out.owner, out.config, out.guest_count) == (0, 0, 0, 0)
    assert mb.status(Cmd.INIT, Init(1, 0x600000, 1 << 20)) == S
    start_guest(mb, with_session=False)
    _, out = mb.call(Cmd.PLATFORM_STATUS, PlatformStatus())
    assert (out.state, out.owner, out.config, out.guest_count) == (2, 0, 1, 1)
    # byte-exact: Linux reads bytes 3..6 as a u32 whose bit 8 is CONFIG_ES
    raw = mb.port.read(mb.buf_spa, 12)
    assert int.from_bytes(raw[3:7], "little") & 0x100
    assert raw[:3] == bytes([0, 24, 2]) and raw[8:12] == (1).to_bytes(4, "little")
    export_pdh(mb)


# -- SEV-SNP debug commands in each SNP guest state -----------------------------------------------

SNP_GCTX, SNP_PAGE, SNP_PRE_GUEST = 0x200000, 0x210000, 0x211000
SNP_OUT, SNP_DATA = 0x400000, 0x401000
SNP_DEBUG = SNP_POLICY_DEFAULT | SnpPolicy.DEBUG
INIT0, LAUNCH1, RUNNING2 = 0, 1, 2

# situation: (how the guest is set up, its SNP state afterwards or None when there is no context)
SNP_SITUATIONS = {
    "no-snp-init": None,
    "no-context": None,
    "init": INIT0,
    "launch-inactive": LAUNCH1,
    "launch-active": LAUNCH1,
    "running": RUNNING2,
    "running-no-debug": RUNNING2,
    "decommissioned": None,
}

SNP_TABLE = [
    (Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(SNP_GCTX, SNP_PAGE, SNP_OUT), {
        "no-snp-init": IPS, "no-context": Status.INVALID_GUEST, "init": IGS,
        "launch-inactive": Status.INACTIVE, "launch-active": S, "running": S,
        "running-no-debug": Status.POLICY_FAILURE, "decommissioned": Status.INVALID_GUEST}),
    (Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(SNP_GCTX, SNP_DATA, SNP_PRE_GUEST), {
        "no-snp-init": IPS, "no-context": Status.INVALID_GUEST, "init": IGS,
        "launch-inactive": Status.INACTIVE, "launch-active": S, "running": S,
        "running-no-debug": Status.POLICY_FAILURE, "decommissioned": Status.INVALID_GUEST}),
    # The reclaim names a page, not a guest: only SNP_INIT matters.
    (Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(SNP_PRE_GUEST),
     {name: (IPS if name == "no-snp-init" else S) for name in SNP_SITUATIONS}),
]


def _snp_situation(chip, name: str) -> tuple[Firmware, Mailbox]:
    """A platform with one SNP guest context at SNP_GCTX in the named situation; its page
    SNP_PAGE is Guest-valid once launched and SNP_PRE_GUEST is Pre-guest for ASID 1."""
    port = SnpMemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    port.write(SNP_DATA, b"plaintext" * 455)
    if name == "no-snp-init":
        return fw, mb
    snp_platform(mb)
    if name != "no-context":
        policy = SNP_POLICY_DEFAULT if name == "running-no-debug" else SNP_DEBUG
        snp_launch(mb, SNP_GCTX, 1, {SNP_PAGE: bytes(range(256)) * 16}, policy,
                   start=name != "init", activate=name != "launch-inactive",
                   finish=name in ("running", "running-no-debug", "decommissioned"))
    if name == "decommissioned":
        assert mb.status(Cmd.SNP_DECOMMISSION, SnpDecommission(SNP_GCTX)) == S
    assert port.rmpupdate(SNP_PRE_GUEST, True, 1, 0x180000, immutable=True)
    return fw, mb


def _snp_state(fw: Firmware) -> int | None:
    guest = (fw._ctx.snp_guests or {}).get(SNP_GCTX)  # test-only access: SNP has no GUEST_STATUS here
    return None if guest is None else guest.state


@pytest.mark.parametrize("situation", SNP_SITUATIONS)
@pytest.mark.parametrize("cmd,buf,statuses", SNP_TABLE, ids=[row[0].name for row in SNP_TABLE])
def test_snp_debug_commands_in_each_guest_state(chip, cmd, buf, statuses, situation):
    fw, mb = _snp_situation(chip, situation)
    assert _snp_state(fw) == SNP_SITUATIONS[situation]
    assert Status(mb.status(cmd, buf)) is statuses[situation]
    assert _snp_state(fw) == SNP_SITUATIONS[situation]  # no debug command changes the guest state

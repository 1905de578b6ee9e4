"""The SEV-ES trusted memory region (TMR) against every firmware command that names an address.

The TMR holds the integrity values of saved SEV-ES (and SNP) register state. The machine fences it
from host and device accesses, but not from the PSP, which keeps those values there. So any
address the hypervisor hands the firmware (a command buffer, an output buffer, a certificate, a
launch page, a debug source or destination, an SNP response page) must be refused if it reaches
the TMR: a write there lets the hypervisor forge or erase another guest's integrity value, a read
lets it learn one. Each refusal is INVALID_ADDRESS, and the refused command changes nothing: no
byte of DRAM (but the command buffer), no RMP entry, no key slot, no use of a guest key.

The machine double has no fence, so what the firmware would have done is visible in its DRAM.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from firmware import Firmware
from fw_flows import TMR_SPA, init_platform, launch, snp_launch, snp_platform, start_guest
from fw_support import MB_BUF, Mailbox, MemPort, SnpMemPort
from sevwire import (
    SESSION_BLOB_SIZE,
    SEV_CERT_SIZE,
    SNP_POLICY_DEFAULT,
    Activate,
    Attestation,
    Cmd,
    DbgDecrypt,
    DbgEncrypt,
    GetId,
    Init,
    InitFlags,
    LaunchFinish,
    LaunchMeasure,
    LaunchSecret,
    LaunchStart,
    LaunchUpdateData,
    LaunchUpdateVmsa,
    MsgReportReq,
    MsgType,
    PdhCertExport,
    PekCertImport,
    PekCsr,
    PlatformState,
    PlatformStatus,
    Policy,
    SnpDbgDecrypt,
    SnpDbgEncrypt,
    SnpGctxCreate,
    SnpGuestRequest,
    SnpLaunchFinish,
    SnpLaunchUpdate,
    SnpPageType,
    SnpPolicy,
    Status,
    package_secret,
    seal_guest_message,
)

PAGE = 0x1000
TMR_LEN = 1 << 20
SLOT = TMR_SPA  # the first TMR slot: the victim's VMSA integrity value
FREE = TMR_SPA + 0x1000  # a TMR page holding no slot yet

# -- SEV / SEV-ES ------------------------------------------------------------------------------------

VICTIM_ASID, BUILDER_ASID, DEBUG_ASID, SECRET_ASID = 1, 2, 5, 6
VICTIM_VMSA = 0x200000
BUILDER_SPA = 0x210000
DEBUG_SPA = 0x300000
SECRET_SPA = 0x310000
HDR_SPA, TRANS_SPA = 0x20000, 0x21000
GODH_SPA, SESSION_SPA = 0x22000, 0x23000
PDH_SPA, CHAIN_SPA = 0x24000, 0x25000
OUT, DATA = 0x400000, 0x401000
SECRET = b"sixteen byte key"
CHOSEN = b"chosen by the hv"  # what a hostile hypervisor would like a TMR slot to hold


@dataclass
class Legacy:
    fw: Firmware
    port: MemPort
    mb: Mailbox
    victim: int  # ES, RUNNING, NODBG, its VMSA's integrity value in SLOT
    builder: int  # ES, LUPDATE, active
    debug: int  # plain SEV, RUNNING, debuggable (policy 0)
    secret: int  # plain SEV, LSECRET, active; a valid secret packet waits at HDR_SPA/TRANS_SPA


def _legacy(chip) -> Legacy:
    port = MemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    init_platform(mb, es=True)
    victim, _ = start_guest(mb, int(Policy.ES | Policy.NODBG), with_session=False)
    assert mb.status(Cmd.ACTIVATE, Activate(victim, VICTIM_ASID)) == Status.SUCCESS
    port.write(VICTIM_VMSA, b"V" * PAGE)
    assert mb.status(Cmd.LAUNCH_UPDATE_VMSA, LaunchUpdateVmsa(victim, VICTIM_VMSA, PAGE)) == Status.SUCCESS
    assert mb.status(Cmd.LAUNCH_MEASURE, LaunchMeasure(victim, OUT, 48)) == Status.SUCCESS
    assert mb.status(Cmd.LAUNCH_FINISH, LaunchFinish(victim)) == Status.SUCCESS
    assert int.from_bytes(port.read(SLOT, 8), "little") == VICTIM_VMSA | 1
    builder, _ = start_guest(mb, int(Policy.ES), with_session=False)
    assert mb.status(Cmd.ACTIVATE, Activate(builder, BUILDER_ASID)) == Status.SUCCESS
    debug = launch(mb, DEBUG_ASID, bytes(range(256)), DEBUG_SPA).handle
    secret = launch(mb, SECRET_ASID, bytes(256), SECRET_SPA, finish=False)
    hdr, ct = package_secret(secret.session.tek, secret.session.tik, SECRET, secret.measurement, 0, 24)
    port.write(HDR_SPA, hdr)
    port.write(TRANS_SPA, ct)
    port.write(DATA, CHOSEN * 4)
    port.key_log.clear()
    port.guest_log.clear()
    return Legacy(fw, port, mb, victim, builder, debug, secret.handle)


@pytest.fixture()
def legacy(chip) -> Legacy:
    return _legacy(chip)


def _refused_without_effect(port, fw, cmd: Cmd, buf, status: Status, buf_spa: int = MB_BUF) -> None:
    """`cmd` with `buf` (written at `buf_spa` beforehand) answers `status` and changes nothing."""
    if buf is not None:
        port.write(buf_spa, buf.pack())
    dram = bytes(port.dram)
    rmp = port.rmp_snapshot() if isinstance(port, SnpMemPort) else None
    slots = dict(port.slots)
    port.guest_log.clear()
    assert Status(fw.command(int(cmd), buf_spa)) is status
    after = bytes(port.dram)
    if buf_spa != MB_BUF:
        assert after == dram
    else:  # the command buffer is the one thing that may differ
        assert after[:MB_BUF] == dram[:MB_BUF] and after[MB_BUF + PAGE:] == dram[MB_BUF + PAGE:]
    assert after[TMR_SPA:TMR_SPA + TMR_LEN] == dram[TMR_SPA:TMR_SPA + TMR_LEN]
    if rmp is not None:
        assert port.rmp_snapshot() == rmp
    assert port.slots == slots
    assert port.guest_log == []


# Every command of the SEV API that takes an address, with that address in (or running into) the
# TMR. `who` picks the guest handle the command names.
LEGACY_CASES = {
    # DBG_DECRYPT: plaintext of the debuggable guest written into the victim's slot.
    "dbg-decrypt-dst": ("debug", Cmd.DBG_DECRYPT, lambda h: DbgDecrypt(h, DEBUG_SPA, SLOT, 16)),
    "dbg-decrypt-dst-runs-into-tmr": ("debug", Cmd.DBG_DECRYPT,
                                      lambda h: DbgDecrypt(h, DEBUG_SPA, TMR_SPA - 16, 32)),
    "dbg-decrypt-src": ("debug", Cmd.DBG_DECRYPT, lambda h: DbgDecrypt(h, SLOT, OUT, 16)),
    # DBG_ENCRYPT: the slot read into the guest (to be decrypted out: a leak), or written into.
    "dbg-encrypt-src": ("debug", Cmd.DBG_ENCRYPT, lambda h: DbgEncrypt(h, SLOT, DEBUG_SPA, 16)),
    "dbg-encrypt-dst": ("debug", Cmd.DBG_ENCRYPT, lambda h: DbgEncrypt(h, DATA, SLOT, 16)),
    "dbg-encrypt-dst-runs-into-tmr": ("debug", Cmd.DBG_ENCRYPT,
                                      lambda h: DbgEncrypt(h, DATA, TMR_SPA - 16, 32)),
    # Platform outputs.
    "pek-csr": (None, Cmd.PEK_CSR, lambda h: PekCsr(SLOT, SEV_CERT_SIZE)),
    "pdh-cert-export-pdh": (None, Cmd.PDH_CERT_EXPORT,
                            lambda h: PdhCertExport(SLOT, SEV_CERT_SIZE, CHAIN_SPA, 3 * SEV_CERT_SIZE)),
    "pdh-cert-export-chain": (None, Cmd.PDH_CERT_EXPORT,
                              lambda h: PdhCertExport(PDH_SPA, SEV_CERT_SIZE, SLOT, 3 * SEV_CERT_SIZE)),
    "pdh-cert-export-chain-runs-into-tmr": (None, Cmd.PDH_CERT_EXPORT, lambda h: PdhCertExport(
        PDH_SPA, SEV_CERT_SIZE, TMR_SPA - PAGE, 3 * SEV_CERT_SIZE)),
    "get-id": (None, Cmd.GET_ID, lambda h: GetId(SLOT, 64)),
    # Launch inputs and outputs.
    "launch-start-godh": (None, Cmd.LAUNCH_START, lambda h: LaunchStart(
        0, 0, SLOT, SEV_CERT_SIZE, SESSION_SPA, SESSION_BLOB_SIZE)),
    "launch-start-session": (None, Cmd.LAUNCH_START, lambda h: LaunchStart(
        0, 0, GODH_SPA, SEV_CERT_SIZE, SLOT, SESSION_BLOB_SIZE)),
    "launch-update-data": ("builder", Cmd.LAUNCH_UPDATE_DATA, lambda h: LaunchUpdateData(h, SLOT, PAGE)),
    "launch-update-data-runs-into-tmr": ("builder", Cmd.LAUNCH_UPDATE_DATA,
                                         lambda h: LaunchUpdateData(h, TMR_SPA - PAGE, 2 * PAGE)),
    "launch-update-vmsa": ("builder", Cmd.LAUNCH_UPDATE_VMSA, lambda h: LaunchUpdateVmsa(h, SLOT, PAGE)),
    "launch-update-vmsa-free-tmr-page": ("builder", Cmd.LAUNCH_UPDATE_VMSA,
                                         lambda h: LaunchUpdateVmsa(h, FREE, PAGE)),
    "launch-measure": ("builder", Cmd.LAUNCH_MEASURE, lambda h: LaunchMeasure(h, SLOT, 48)),
    "launch-secret-header": ("secret", Cmd.LAUNCH_SECRET, lambda h: LaunchSecret(
        h, SLOT, 52, SECRET_SPA, len(SECRET), TRANS_SPA, len(SECRET))),
    "launch-secret-packet": ("secret", Cmd.LAUNCH_SECRET, lambda h: LaunchSecret(
        h, HDR_SPA, 52, SECRET_SPA, len(SECRET), SLOT, len(SECRET))),
    "launch-secret-destination": ("secret", Cmd.LAUNCH_SECRET, lambda h: LaunchSecret(
        h, HDR_SPA, 52, SLOT, len(SECRET), TRANS_SPA, len(SECRET))),
    "attestation": ("debug", Cmd.ATTESTATION, lambda h: Attestation(h, SLOT, bytes(16), 208)),
}


@pytest.mark.parametrize("name", LEGACY_CASES)
def test_a_command_naming_the_tmr_is_refused_without_effect(legacy, name):
    who, cmd, make = LEGACY_CASES[name]
    handle = getattr(legacy, who) if who else 0
    _refused_without_effect(legacy.port, legacy.fw, cmd, make(handle), Status.INVALID_ADDRESS)


def test_the_same_commands_succeed_outside_the_tmr(legacy):
    """The control: the refusals above are the TMR check, not a broken setup."""
    w = legacy
    assert w.mb.status(Cmd.DBG_DECRYPT, DbgDecrypt(w.debug, DEBUG_SPA, OUT, 16)) == Status.SUCCESS
    assert w.mb.status(Cmd.DBG_ENCRYPT, DbgEncrypt(w.debug, DATA, DEBUG_SPA, 16)) == Status.SUCCESS
    assert w.mb.status(Cmd.LAUNCH_UPDATE_DATA,
                       LaunchUpdateData(w.builder, BUILDER_SPA, PAGE)) == Status.SUCCESS
    assert w.mb.status(Cmd.LAUNCH_UPDATE_VMSA,
                       LaunchUpdateVmsa(w.builder, BUILDER_SPA + PAGE, PAGE)) == Status.SUCCESS
    assert w.mb.status(Cmd.LAUNCH_SECRET, LaunchSecret(
        w.secret, HDR_SPA, 52, SECRET_SPA, len(SECRET), TRANS_SPA, len(SECRET))) == Status.SUCCESS
    assert w.port.read_guest(SECRET_ASID, SECRET_SPA, len(SECRET)) == SECRET
    assert w.mb.status(Cmd.GET_ID, GetId(TMR_SPA - 64, 64)) == Status.SUCCESS  # ends where the TMR starts
    assert w.mb.status(Cmd.LAUNCH_MEASURE, LaunchMeasure(w.builder, TMR_SPA + TMR_LEN, 48)) == Status.SUCCESS


def test_a_debuggable_guest_cannot_carry_chosen_bytes_into_another_guests_slot(legacy):
    """The hypervisor DBG_ENCRYPTs bytes of its choice into its own debuggable guest, then
    DBG_DECRYPTs them into the SEV-ES victim's TMR slot: a forged integrity value."""
    w = legacy
    slot = w.port.read(SLOT, 16)
    assert w.mb.status(Cmd.DBG_ENCRYPT, DbgEncrypt(w.debug, DATA, DEBUG_SPA, 16)) == Status.SUCCESS
    status = w.mb.status(Cmd.DBG_DECRYPT, DbgDecrypt(w.debug, DEBUG_SPA, SLOT, 16))
    assert w.port.read(SLOT, 16) == slot, "the hypervisor's bytes landed in the TMR"
    assert status == Status.INVALID_ADDRESS


def test_a_debuggable_guest_cannot_carry_a_slot_out_of_the_tmr(legacy):
    """The reverse: DBG_ENCRYPT from the slot into the debuggable guest, DBG_DECRYPT out."""
    w = legacy
    slot = w.port.read(SLOT, 16)
    first = w.mb.status(Cmd.DBG_ENCRYPT, DbgEncrypt(w.debug, SLOT, DEBUG_SPA, 16))
    assert w.mb.status(Cmd.DBG_DECRYPT, DbgDecrypt(w.debug, DEBUG_SPA, OUT, 16)) == Status.SUCCESS
    assert w.port.read(OUT, 16) != slot, "the victim's integrity value reached the hypervisor"
    assert first == Status.INVALID_ADDRESS


@pytest.mark.parametrize("cmd,buf", [
    (Cmd.PLATFORM_STATUS, PlatformStatus()),
    (Cmd.GET_ID, GetId(0, 0)),
], ids=["platform-status", "get-id"])
def test_a_command_buffer_in_the_tmr_is_refused(legacy, cmd, buf):
    """The command buffer itself is read from and written back to the address the hypervisor
    names: in the TMR that would be a read of a slot and a write over it."""
    w = legacy
    _refused_without_effect(w.port, w.fw, cmd, None, Status.INVALID_ADDRESS, buf_spa=SLOT)
    _refused_without_effect(w.port, w.fw, cmd, None, Status.INVALID_ADDRESS, buf_spa=FREE)
    assert Status(w.mb.status(cmd, buf)) in (Status.SUCCESS, Status.INVALID_LEN)


def test_pek_cert_import_does_not_read_the_tmr(chip):
    """PEK_CERT_IMPORT runs in INIT (an SEV-ES platform has its TMR from INIT on)."""
    port = MemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    init_platform(mb, es=True)
    port.write(TMR_SPA + 0x2000, b"integrity values" * 512)
    for buf in (PekCertImport(TMR_SPA + 0x2000, SEV_CERT_SIZE, PDH_SPA, SEV_CERT_SIZE),
                PekCertImport(PDH_SPA, SEV_CERT_SIZE, TMR_SPA + 0x2000, SEV_CERT_SIZE)):
        _refused_without_effect(port, fw, Cmd.PEK_CERT_IMPORT, buf, Status.INVALID_ADDRESS)


def test_without_sev_es_there_is_no_tmr(chip):
    """INIT without SEV-ES has no TMR: the same addresses are ordinary memory."""
    port = MemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    init_platform(mb, es=False)
    assert mb.status(Cmd.GET_ID, GetId(SLOT, 64)) == Status.SUCCESS
    assert fw.command(Cmd.PLATFORM_STATUS, SLOT) == Status.SUCCESS


# -- SEV-SNP -----------------------------------------------------------------------------------------

A_GCTX, A_PAGES = 0x200000, (0x210000, 0x211000)  # debuggable, running; A_PAGES[1] is its secrets page
L_GCTX = 0x300000  # a guest still in LAUNCH (ASID 3)
A_ASID, V_ASID, L_ASID = 1, 2, 3
V_GCTX, V_VMSA = 0x220000, 0x221000  # the victim, its VMSA sealed in SLOT
REQ, RES = 0x402000, 0x403000
DEBUG = SNP_POLICY_DEFAULT | SnpPolicy.DEBUG


@dataclass
class Snp:
    fw: Firmware
    port: SnpMemPort
    mb: Mailbox


def _launch_page(mb: Mailbox, port: SnpMemPort, gctx: int, asid: int, spa: int, gpa: int,
                 kind: SnpPageType, data: bytes = bytes(PAGE)) -> int:
    port.write(spa, data)
    assert port.rmpupdate(spa, True, asid, gpa, immutable=True)
    return mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(gctx, SnpLaunchUpdate.make_flags(kind), spa))


def _snp(chip) -> Snp:
    port = SnpMemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    snp_platform(mb)
    snp_launch(mb, V_GCTX, V_ASID, {}, finish=False)
    status = _launch_page(mb, port, V_GCTX, V_ASID, V_VMSA, 0x1000, SnpPageType.VMSA, b"S" * PAGE)
    assert status == Status.SUCCESS
    assert mb.status(Cmd.SNP_LAUNCH_FINISH, SnpLaunchFinish(V_GCTX)) == Status.SUCCESS
    assert int.from_bytes(port.read(SLOT, 8), "little") == V_VMSA | 1
    snp_launch(mb, A_GCTX, A_ASID, {A_PAGES[0]: bytes(PAGE)}, DEBUG, finish=False)
    status = _launch_page(mb, port, A_GCTX, A_ASID, A_PAGES[1], 0x200000, SnpPageType.SECRETS)
    assert status == Status.SUCCESS
    assert mb.status(Cmd.SNP_LAUNCH_FINISH, SnpLaunchFinish(A_GCTX)) == Status.SUCCESS
    snp_launch(mb, L_GCTX, L_ASID, {}, DEBUG, finish=False)
    port.write(DATA, CHOSEN * 256)
    port.key_log.clear()
    port.guest_log.clear()
    return Snp(fw, port, mb)


@pytest.fixture()
def snp(chip) -> Snp:
    return _snp(chip)


def _report_request(w: Snp) -> None:
    """Guest A's sealed MSG_REPORT_REQ at REQ, as the guest would leave it for the hypervisor."""
    vmpck = w.fw._ctx.snp_guests[A_GCTX].vmpck[0]
    w.port.write(REQ, seal_guest_message(vmpck, 1, MsgType.MSG_REPORT_REQ,
                                         MsgReportReq(b"\x42" * 64).encode()))


def test_snp_guest_request_response_in_the_tmr_is_refused(snp):
    """The hypervisor carries a genuine request and names a TMR page for the response."""
    _report_request(snp)
    _refused_without_effect(snp.port, snp.fw, Cmd.SNP_GUEST_REQUEST,
                            SnpGuestRequest(A_GCTX, REQ, TMR_SPA), Status.INVALID_ADDRESS)
    # The same request, answered where the hypervisor may write, still works (nothing consumed).
    assert snp.mb.status(Cmd.SNP_GUEST_REQUEST, SnpGuestRequest(A_GCTX, REQ, RES)) == Status.SUCCESS


def test_snp_guest_request_from_the_tmr_is_refused(snp):
    _refused_without_effect(snp.port, snp.fw, Cmd.SNP_GUEST_REQUEST,
                            SnpGuestRequest(A_GCTX, TMR_SPA, RES), Status.INVALID_ADDRESS)


def test_snp_gctx_create_in_the_tmr_is_refused(snp):
    """A TMR page is hypervisor-owned in the RMP: as a context page it would be zeroed."""
    for page in (SLOT, FREE):
        _refused_without_effect(snp.port, snp.fw, Cmd.SNP_GCTX_CREATE, SnpGctxCreate(page),
                                Status.INVALID_ADDRESS)


@pytest.mark.parametrize("kind", [SnpPageType.NORMAL, SnpPageType.SECRETS, SnpPageType.ZERO,
                                  SnpPageType.VMSA, SnpPageType.UNMEASURED])
def test_snp_launch_update_of_a_tmr_page_is_refused(snp, kind):
    """The hypervisor RMPUPDATEs a TMR page to Pre-guest: SNP_LAUNCH_UPDATE would measure the
    integrity values (or not) and encrypt the page in place under the guest's key."""
    w = snp
    assert w.port.rmpupdate(SLOT, True, L_ASID, 0x5000, immutable=True)
    ld = w.fw._ctx.snp_guests[L_GCTX].ld
    _refused_without_effect(w.port, w.fw, Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
        L_GCTX, SnpLaunchUpdate.make_flags(kind), SLOT), Status.INVALID_ADDRESS)
    assert w.fw._ctx.snp_guests[L_GCTX].ld == ld


def test_snp_dbg_encrypt_into_a_tmr_page_is_refused(snp):
    """A TMR page made Pre-guest for the debuggable guest: SNP_DBG_ENCRYPT would write it."""
    w = snp
    assert w.port.rmpupdate(SLOT, True, A_ASID, 0x5000, immutable=True)
    _refused_without_effect(w.port, w.fw, Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(A_GCTX, DATA, SLOT),
                            Status.INVALID_ADDRESS)


def test_snp_dbg_decrypt_of_a_tmr_page_is_refused(snp):
    """A TMR page assigned to the debuggable guest: SNP_DBG_DECRYPT would read it."""
    w = snp
    assert w.port.rmpupdate(SLOT, True, A_ASID, 0x5000)
    _refused_without_effect(w.port, w.fw, Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(A_GCTX, SLOT, OUT),
                            Status.INVALID_ADDRESS)


@pytest.mark.parametrize("before_init", ["context-page", "guest-page"])
def test_init_refuses_a_tmr_over_pages_snp_already_gave_out(chip, before_init):
    """With the RMP on, a guest context or a guest's page may exist before INIT: a TMR laid over
    it would let SNP_DECOMMISSION zero it, or the firmware write slots into a guest's memory."""
    port = SnpMemPort()
    fw = Firmware(port, None, chip=chip)
    mb = Mailbox(fw, port)
    assert mb.status(Cmd.SNP_INIT) == Status.SUCCESS
    if before_init == "context-page":
        assert mb.status(Cmd.SNP_GCTX_CREATE, SnpGctxCreate(FREE)) == Status.SUCCESS
    else:
        assert port.rmpupdate(FREE, True, 1, 0x1000)
    status = mb.status(Cmd.INIT, Init(int(InitFlags.SEV_ES), TMR_SPA, TMR_LEN))
    assert status == Status.INVALID_PAGE_STATE
    assert fw.platform_state is PlatformState.UNINIT
    # A TMR elsewhere is fine.
    assert mb.status(Cmd.INIT, Init(int(InitFlags.SEV_ES), TMR_SPA - TMR_LEN, TMR_LEN)) == Status.SUCCESS

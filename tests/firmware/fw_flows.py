"""Launch-flow helpers shared by the firmware tests: each step is a mailbox call that must succeed.

The helpers use only the mailbox and sevwire's owner-side functions (``build_session``,
``package_secret``), never firmware internals, so they exercise what the hypervisor and the guest
owner can really do (``new_snp_platform`` also makes the firmware they talk to).
"""

from __future__ import annotations

from dataclasses import dataclass

from firmware import ChipIdentity, Firmware
from fw_support import SCRATCH, Mailbox, SnpMemPort
from sevwire import (
    SESSION_BLOB_SIZE,
    SEV_CERT_SIZE,
    SNP_POLICY_DEFAULT,
    Activate,
    Cmd,
    Init,
    InitFlags,
    LaunchFinish,
    LaunchMeasure,
    LaunchStart,
    LaunchUpdateData,
    OwnerSession,
    PdhCertExport,
    SnpActivate,
    SnpGctxCreate,
    SnpLaunchFinish,
    SnpLaunchStart,
    SnpLaunchUpdate,
    SnpPageType,
    Status,
    build_session,
)

__all__ = ["Launched", "init_platform", "export_pdh", "start_guest", "launch", "TMR_SPA",
           "GODH_SPA", "SESSION_SPA", "OUT_SPA", "SnpLaunched", "snp_platform", "snp_launch",
           "new_snp_platform"]

TMR_SPA = 0x600000
GODH_SPA = SCRATCH
SESSION_SPA = SCRATCH + 0x1000
OUT_SPA = SCRATCH + 0x2000
PDH_SPA = SCRATCH + 0x3000
CHAIN_SPA = SCRATCH + 0x4000


def ok(status: int, what: str) -> None:
    assert status == Status.SUCCESS, f"{what}: {Status(status).name}"


def init_platform(mb: Mailbox, es: bool = False, flush: bool = True) -> None:
    buf = Init(int(InitFlags.SEV_ES), TMR_SPA, 1 << 20) if es else Init()
    ok(mb.status(Cmd.INIT, buf), "INIT")
    if flush:
        ok(mb.status(Cmd.DF_FLUSH), "DF_FLUSH")


def export_pdh(mb: Mailbox) -> tuple[bytes, bytes]:
    status, _ = mb.call(Cmd.PDH_CERT_EXPORT, PdhCertExport(PDH_SPA, SEV_CERT_SIZE, CHAIN_SPA, 3 * SEV_CERT_SIZE))
    ok(status, "PDH_CERT_EXPORT")
    return mb.port.read(PDH_SPA, SEV_CERT_SIZE), mb.port.read(CHAIN_SPA, 3 * SEV_CERT_SIZE)


def start_guest(mb: Mailbox, policy: int = 0, session: OwnerSession | None = None,
                with_session: bool = True) -> tuple[int, OwnerSession | None]:
    """LAUNCH_START; returns (handle, the owner's session or None for a sessionless launch)."""
    if with_session and session is None:
        pdh, _ = export_pdh(mb)
        session = build_session(pdh, policy)
    if session is not None:
        mb.port.write(GODH_SPA, session.godh_cert)
        mb.port.write(SESSION_SPA, session.blob)
        buf = LaunchStart(0, policy, GODH_SPA, SEV_CERT_SIZE, SESSION_SPA, SESSION_BLOB_SIZE)
    else:
        buf = LaunchStart(0, policy)
    status, out = mb.call(Cmd.LAUNCH_START, buf)
    ok(status, "LAUNCH_START")
    return out.handle, session


@dataclass
class Launched:
    handle: int
    asid: int
    session: OwnerSession | None
    measurement: bytes = b""
    mnonce: bytes = b""


def launch(mb: Mailbox, asid: int, image: bytes, spa: int, policy: int = 0, *,
           measure: bool = True, finish: bool = True, with_session: bool = True) -> Launched:
    """START, ACTIVATE, UPDATE_DATA, then optionally MEASURE and FINISH."""
    handle, session = start_guest(mb, policy, with_session=with_session)
    ok(mb.status(Cmd.ACTIVATE, Activate(handle, asid)), "ACTIVATE")
    mb.port.write(spa, image)
    ok(mb.status(Cmd.LAUNCH_UPDATE_DATA, LaunchUpdateData(handle, spa, len(image))), "LAUNCH_UPDATE_DATA")
    result = Launched(handle, asid, session)
    if measure:
        ok(mb.status(Cmd.LAUNCH_MEASURE, LaunchMeasure(handle, OUT_SPA, 48)), "LAUNCH_MEASURE")
        out = mb.port.read(OUT_SPA, 48)
        result.measurement, result.mnonce = out[:32], out[32:]
        if finish:
            ok(mb.status(Cmd.LAUNCH_FINISH, LaunchFinish(handle)), "LAUNCH_FINISH")
    return result


# -- SEV-SNP (needs an SnpMemPort) ----------------------------------------------------------------

SNP_GPA_BASE = 0x100000


def snp_platform(mb: Mailbox) -> None:
    """SNP_INIT (the RMP on), then INIT with SEV-ES and its TMR, as the hypervisor does."""
    ok(mb.status(Cmd.SNP_INIT), "SNP_INIT")
    init_platform(mb, es=True)


def new_snp_platform(chip: ChipIdentity) -> Mailbox:
    """A new PSP on a new in-memory machine with an RMP, after `snp_platform`; its firmware and
    port are the mailbox's `fw` and `port`."""
    port = SnpMemPort()
    mb = Mailbox(Firmware(port, None, chip=chip), port)
    snp_platform(mb)
    return mb


@dataclass
class SnpLaunched:
    gctx: int
    asid: int
    pages: dict[int, int]
    """Host page -> the GPA it was launched at."""


def snp_launch(mb: Mailbox, gctx: int, asid: int, pages: dict[int, bytes],
               policy: int = SNP_POLICY_DEFAULT, *, start: bool = True, activate: bool = True,
               finish: bool = True) -> SnpLaunched:
    """SNP_GCTX_CREATE, then optionally LAUNCH_START, ACTIVATE, one NORMAL LAUNCH_UPDATE per
    page (each RMPUPDATEd to Pre-guest by the hypervisor first) and LAUNCH_FINISH."""
    port = mb.port
    ok(mb.status(Cmd.SNP_GCTX_CREATE, SnpGctxCreate(gctx)), "SNP_GCTX_CREATE")
    launched = SnpLaunched(gctx, asid, {})
    if not start:
        return launched
    ok(mb.status(Cmd.SNP_LAUNCH_START, SnpLaunchStart(gctx, policy)), "SNP_LAUNCH_START")
    if not activate:
        return launched
    ok(mb.status(Cmd.SNP_ACTIVATE, SnpActivate(gctx, asid)), "SNP_ACTIVATE")
    for i, (spa, data) in enumerate(pages.items()):
        gpa = SNP_GPA_BASE + i * 0x1000
        port.write(spa, data)
        assert port.rmpupdate(spa, True, asid, gpa, immutable=True)  # type: ignore[attr-defined]
        ok(mb.status(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
            gctx, SnpLaunchUpdate.make_flags(SnpPageType.NORMAL), spa)), "SNP_LAUNCH_UPDATE")
        launched.pages[spa] = gpa
    if finish:
        ok(mb.status(Cmd.SNP_LAUNCH_FINISH, SnpLaunchFinish(gctx)), "SNP_LAUNCH_FINISH")
    return launched

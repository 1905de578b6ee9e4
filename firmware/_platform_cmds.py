"""Platform commands (sev-reference 5.1/5.2): INIT, SHUTDOWN, PLATFORM_RESET, PLATFORM_STATUS,
PEK_GEN, PEK_CSR, PEK_CERT_IMPORT, PDH_GEN, PDH_CERT_EXPORT, DF_FLUSH, GET_ID.

Each handler takes the context and its parsed command buffer and returns the buffer to write back
(for in/out fields) or None; a refusal is a ``CommandError``.  Checks run in the order AMD's
firmware runs them (platform state, then buffer fields, then memory) and everything is checked
before anything changes, so a refused command leaves no trace.

Allowed platform states follow AMD's published SEV firmware where it is more precise than the
reference table: PEK_CSR also works in WORKING (it only reads the PEK), SHUTDOWN also in UNINIT
(a no-op), GET_ID and PLATFORM_STATUS anywhere.
"""

from __future__ import annotations

import dataclasses

from sevwire import (
    SEV_CERT_SIZE,
    GetId,
    Init,
    InitFlags,
    PdhCertExport,
    PekCertImport,
    PekCsr,
    PlatformState,
    PlatformStatus,
    Status,
)

from firmware._context import API_MAJOR, API_MINOR, BUILD, PspContext
from firmware._errors import CommandError
from firmware._memory import port_errors
from firmware._snp import PAGE, _rmp

__all__ = [
    "cmd_init",
    "cmd_shutdown",
    "cmd_platform_reset",
    "cmd_platform_status",
    "cmd_pek_gen",
    "cmd_pek_csr",
    "cmd_pek_cert_import",
    "cmd_pdh_gen",
    "cmd_pdh_cert_export",
    "cmd_df_flush",
    "cmd_get_id",
    "cmd_nop",
    "TMR_SIZE",
]

TMR_SIZE = 1 << 20
"""SEV-ES trusted memory region: exactly 1 MiB, 1 MiB aligned (without SNP)."""

_INIT_MBZ = ~int(InitFlags.SEV_ES) & 0xFFFFFFFF


def cmd_init(ctx: PspContext, buf: Init) -> None:
    """UNINIT -> INIT.  Flags other than SEV-ES are INVALID_CONFIG; with SEV-ES the TMR must be
    1 MiB aligned (INVALID_ADDRESS), exactly 1 MiB (INVALID_LEN) and in DRAM, and, with SNP on,
    every page of it must be a hypervisor or a Firmware page in the RMP (INVALID_PAGE_STATE, as
    AMD's firmware checks): an SNP guest context or guest page made before INIT must not end up
    under the TMR, where the firmware would write VMSA slots into it or SNP_DECOMMISSION would
    zero slots.  INIT then has the machine fence the TMR from every agent but the PSP and the
    CPU (host, DMA, guests; with SNP on its pages become Firmware pages), and from INIT on no
    address a command names may reach it (firmware/_memory.py).  Every ASID starts dirty, as on
    real parts: the driver must DF_FLUSH before the first ACTIVATE (Linux does)."""
    ctx.require_state(PlatformState.UNINIT)
    if buf.flags & _INIT_MBZ:
        raise CommandError(Status.INVALID_CONFIG, f"unknown INIT flags 0x{buf.flags:x}")
    es = bool(buf.flags & InitFlags.SEV_ES)
    tmr = None
    if es:
        if buf.tmr_paddr % TMR_SIZE:
            raise CommandError(Status.INVALID_ADDRESS, "TMR is not 1 MiB aligned")
        if buf.tmr_len != TMR_SIZE:
            raise CommandError(Status.INVALID_LEN, "TMR is not 1 MiB")
        ctx.mem.probe(buf.tmr_paddr, buf.tmr_len)
        if ctx.snp_guests is not None:
            for spa in range(buf.tmr_paddr, buf.tmr_paddr + buf.tmr_len, PAGE):
                assigned, asid, _gpa, _size, immutable, validated, _vmsa = _rmp(ctx, spa)
                firmware = asid == 0 and immutable and not validated and spa not in ctx.snp_guests
                if assigned and not firmware:
                    raise CommandError(Status.INVALID_PAGE_STATE,
                                       f"TMR page 0x{spa:x} is assigned in the RMP")
        tmr = (buf.tmr_paddr, buf.tmr_len)
        reserve = getattr(ctx.port, "reserve_tmr", None)  # the firmware tests' double has none
        if reserve is not None:
            with port_errors():
                reserve(*tmr)
    # AMD's firmware also makes a new PDH at every INIT.  Here INIT keeps it: each `hv` command
    # is a new process that INITs the platform, and a guest owner's session, built offline
    # against an exported PDH, must still open in the next process.  PDH_GEN rotates it.
    ctx.config_es = es
    ctx.tmr = tmr
    ctx.dirty_asids = set(range(1, int(ctx.port.max_asid) + 1))
    ctx.state = PlatformState.INIT


def cmd_shutdown(ctx: PspContext, buf: None) -> None:
    """Any state -> UNINIT: decommission every guest, clear every key slot it held.  The
    platform always ends UNINIT with every context wiped; if a key slot refused to clear, the
    answer is HWERROR_UNSAFE (as AMD's firmware answers a failed cleanup)."""
    failed = []
    for guest in ctx.guests:
        if guest.active:
            asid, guest.asid = guest.asid, 0
            try:
                with port_errors():
                    ctx.port.clear_key(asid)
            except CommandError:
                failed.append(asid)
    ctx.guests.clear()
    ctx.dirty_asids.clear()
    ctx.config_es = False
    ctx.tmr = None
    ctx.state = PlatformState.UNINIT
    if failed:
        raise CommandError(Status.HWERROR_UNSAFE, f"key slots {failed} did not clear")


def cmd_platform_reset(ctx: PspContext, buf: None) -> None:
    """UNINIT only: delete the owner identity (OCA, PEK, PDH, ownership) and make a new,
    self-owned one.  The chip's own CEK and id are fused and survive."""
    ctx.require_state(PlatformState.UNINIT)
    ctx.change_identity(ctx.identity.regenerate_owner)


def cmd_platform_status(ctx: PspContext, buf: PlatformStatus) -> PlatformStatus:
    """Any state.  Owner, ES config and guest count read as 0 while UNINIT, as on real parts."""
    initialised = ctx.state is not PlatformState.UNINIT
    return PlatformStatus(
        api_major=API_MAJOR,
        api_minor=API_MINOR,
        state=int(ctx.state),
        owner=int(ctx.identity.owner.externally_owned) if initialised else 0,
        config=int(ctx.config_es) if initialised else 0,
        build=BUILD,
        guest_count=len(ctx.guests) if initialised else 0,
    )


def cmd_pek_gen(ctx: PspContext, buf: None) -> None:
    """INIT only: new OCA (self-signed, so the platform is self-owned again), PEK and PDH."""
    ctx.require_state(PlatformState.INIT)
    ctx.change_identity(ctx.identity.regenerate_owner)


def cmd_pek_csr(ctx: PspContext, buf: PekCsr) -> PekCsr:
    """INIT or WORKING: write the PEK's unsigned body for the owner's OCA to sign."""
    ctx.require_state(PlatformState.INIT, PlatformState.WORKING)
    if buf.len < SEV_CERT_SIZE:
        raise CommandError(Status.INVALID_LEN, "CSR buffer too small",
                           writeback=dataclasses.replace(buf, len=SEV_CERT_SIZE).pack())
    ctx.mem.write(buf.address, ctx.identity.pek_csr())
    return dataclasses.replace(buf, len=SEV_CERT_SIZE)


def cmd_pek_cert_import(ctx: PspContext, buf: PekCertImport) -> None:
    """INIT only, self-owned only (else ALREADY_OWNED): import the OCA and the OCA-signed PEK."""
    ctx.require_state(PlatformState.INIT)
    if ctx.identity.owner.externally_owned:
        raise CommandError(Status.ALREADY_OWNED, "platform is already externally owned")
    if buf.pek_len != SEV_CERT_SIZE or buf.oca_len != SEV_CERT_SIZE:
        raise CommandError(Status.INVALID_LEN, "PEK and OCA certificates are 2084 bytes each")
    pek = ctx.mem.read(buf.pek_paddr, SEV_CERT_SIZE)
    oca = ctx.mem.read(buf.oca_paddr, SEV_CERT_SIZE)

    def take_ownership() -> None:
        if ctx.identity.owner.externally_owned:  # again, on the state as re-read under the lock
            raise CommandError(Status.ALREADY_OWNED, "platform is already externally owned")
        ctx.identity.import_pek(pek, oca)

    ctx.change_identity(take_ownership)


def cmd_pdh_gen(ctx: PspContext, buf: None) -> None:
    """INIT or WORKING: a new PDH (running guests keep their already-derived session keys)."""
    ctx.require_state(PlatformState.INIT, PlatformState.WORKING)
    ctx.change_identity(ctx.identity.regenerate_pdh)


def cmd_pdh_cert_export(ctx: PspContext, buf: PdhCertExport) -> PdhCertExport:
    """INIT or WORKING: write the PDH and the chain PEK || OCA || CEK.  Both lengths are in/out:
    if either is too small nothing is written, both needed lengths are, and the status is
    INVALID_LEN."""
    ctx.require_state(PlatformState.INIT, PlatformState.WORKING)
    pdh, chain = ctx.identity.pdh_chain()
    out = dataclasses.replace(buf, pdh_len=len(pdh), chain_len=len(chain))
    if buf.pdh_len < len(pdh) or buf.chain_len < len(chain):
        raise CommandError(Status.INVALID_LEN, "PDH or chain buffer too small", writeback=out.pack())
    ctx.mem.probe(buf.pdh_paddr, len(pdh))
    ctx.mem.probe(buf.chain_paddr, len(chain))
    ctx.mem.write(buf.pdh_paddr, pdh)
    ctx.mem.write(buf.chain_paddr, chain)
    return out


def cmd_df_flush(ctx: PspContext, buf: None) -> None:
    """INIT or WORKING: every deactivated ASID becomes reusable.  (Real parts also demand a
    WBINVD on every core first; the emulated caches are always coherent, so WBINVD_REQUIRED is
    never returned.)"""
    ctx.require_state(PlatformState.INIT, PlatformState.WORKING)
    ctx.dirty_asids.clear()


def cmd_get_id(ctx: PspContext, buf: GetId) -> GetId:
    """Any state: the 64-byte chip id (one socket).  ``len`` is in/out, INVALID_LEN if small."""
    chip_id = ctx.identity.chip.chip_id
    out = dataclasses.replace(buf, len=len(chip_id))
    if buf.len < len(chip_id):
        raise CommandError(Status.INVALID_LEN, "GET_ID buffer too small", writeback=out.pack())
    ctx.mem.write(buf.address, chip_id)
    return out


def cmd_nop(ctx: PspContext, buf: None) -> None:
    """NOP: any state, does nothing (a driver's liveness probe)."""

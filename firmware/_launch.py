"""The launch flow (sev-reference 5.4, 6): LAUNCH_START, LAUNCH_UPDATE_DATA, LAUNCH_UPDATE_VMSA,
LAUNCH_MEASURE, LAUNCH_SECRET, LAUNCH_FINISH and ATTESTATION.

    UNINIT --LAUNCH_START--> LUPDATE --LAUNCH_MEASURE--> LSECRET --LAUNCH_FINISH--> RUNNING
                   LAUNCH_UPDATE_DATA/VMSA stay in LUPDATE; LAUNCH_SECRET stays in LSECRET

What each step guarantees the guest owner:
- LAUNCH_START gets TEK/TIK only from a session blob whose WRAP_MAC verifies under the PDH, and
  only for the policy POLICY_MAC binds, so the hypervisor can neither read the keys nor relax the
  policy.  Every guest gets a fresh random VEK (or, with a non-zero handle and a policy without
  NOKS, shares the VEK of the guest named, as the spec's key sharing allows).
- LAUNCH_UPDATE_DATA measures exactly the bytes it encrypts: it reads the plaintext once, feeds
  that copy to the digest and writes that same copy back under the guest key.
- LAUNCH_MEASURE MACs the digest under TIK with a fresh MNONCE, so the hypervisor can neither
  forge nor replay a measurement.
- LAUNCH_SECRET checks the packet MAC (which covers the measurement) before it decrypts or writes
  anything: a wrong MAC is BAD_MEASUREMENT with guest memory untouched (AMD's firmware uses the
  same code for every HMAC mismatch).

A launch without a session (``gdh_cert_paddr`` = 0) is allowed, as on real parts: TEK and TIK
are then all zero, so its measurement proves nothing to anyone but the hypervisor itself.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from sevwire import (
    ATTESTATION_REPORT_SIZE,
    SECRET_HEADER_SIZE,
    SESSION_BLOB_SIZE,
    SEV_CERT_SIZE,
    VMSA_SIZE,
    VMSA_TMR_RESERVED,
    VMSA_TMR_SLOT,
    Attestation,
    AttestationReport,
    GuestState,
    LaunchFinish,
    LaunchMeasure,
    LaunchSecret,
    LaunchStart,
    LaunchUpdateData,
    LaunchUpdateVmsa,
    MeasureResult,
    Policy,
    PlatformState,
    SecretFlags,
    SecretHeader,
    Status,
    launch_measure,
    open_secret,
    open_session,
    sign_attestation_report,
    vmsa_integrity,
)

from firmware._context import API_MAJOR, API_MINOR, BUILD, PspContext
from firmware._errors import CommandError
from firmware._guest import GuestContext

__all__ = [
    "cmd_launch_start",
    "cmd_launch_update_data",
    "cmd_launch_update_vmsa",
    "cmd_launch_measure",
    "cmd_launch_secret",
    "cmd_launch_finish",
    "cmd_attestation",
    "SECRET_MAX_LEN",
    "VMSA_SIZE",
    "guest_vek",
    "install_vmsa",
    "vmsa_intact",
]

SECRET_MAX_LEN = 1 << 16
"""Largest LAUNCH_SECRET payload accepted (the real PSP is bounded by its scratch buffer)."""


def cmd_launch_start(ctx: PspContext, buf: LaunchStart) -> LaunchStart:
    """INIT or WORKING -> WORKING; a new guest context in LUPDATE; its handle is written back."""
    ctx.require_state(PlatformState.INIT, PlatformState.WORKING)
    policy = buf.policy
    tek, tik, has_session = bytes(16), bytes(16), False
    if buf.gdh_cert_paddr != 0:
        if buf.session_len != SESSION_BLOB_SIZE:
            raise CommandError(Status.INVALID_LEN, "session blob is 128 bytes")
        blob = ctx.mem.read(buf.session_paddr, SESSION_BLOB_SIZE)
        if buf.gdh_cert_len != SEV_CERT_SIZE:
            raise CommandError(Status.INVALID_LEN, "GODH certificate is 2084 bytes")
        godh = ctx.mem.read(buf.gdh_cert_paddr, SEV_CERT_SIZE)
        # sevwire errors carry their status: CertificateError -> INVALID_CERTIFICATE,
        # WrapMacError -> BAD_MEASUREMENT, PolicyMacError -> POLICY_FAILURE.
        tek, tik = open_session(blob, godh, ctx.identity.owner.pdh_key, policy)
        has_session = True
    return admit_guest(ctx, buf, policy, GuestState.LUPDATE, tek, tik, has_session)


def admit_guest(ctx: PspContext, buf, policy: int, state: GuestState, tek: bytes, tik: bytes,
                has_session: bool):
    """A new guest context in `state` (LAUNCH_START, RECEIVE_START): its VEK (fresh, or shared
    with guest ``buf.handle``), a free handle, the ES policy checked against INIT; the command
    buffer with the new handle, to write back."""
    vek = guest_vek(ctx, buf.handle, policy)
    handle = ctx.guests.free_handle()
    if policy & Policy.ES and not ctx.config_es:
        raise CommandError(Status.UNSUPPORTED, "SEV-ES policy on a platform INITed without SEV-ES")
    guest = GuestContext(handle, policy, state, bytearray(vek), bytearray(tek), bytearray(tik),
                         has_session)
    ctx.guests.add(guest)
    ctx.update_working()
    return dataclasses.replace(buf, handle=handle)


def guest_vek(ctx: PspContext, share_with: int, policy: int) -> bytes:
    """A new guest's VEK: fresh and random for handle 0, else the key of guest ``share_with``,
    which the spec's key sharing allows for the same policy without NOKS (LAUNCH_START and
    RECEIVE_START alike)."""
    if share_with == 0:
        return os.urandom(16)
    shared = ctx.guests.lookup(share_with)
    if shared.policy != policy or policy & Policy.NOKS:
        raise CommandError(Status.POLICY_FAILURE, "key sharing needs the same policy without NOKS")
    return bytes(shared.vek)


def _launching_guest(ctx: PspContext, handle: int, state: GuestState) -> GuestContext:
    ctx.require_state(PlatformState.WORKING)
    guest = ctx.guests.lookup(handle)
    if guest.state is not state:
        raise CommandError(Status.INVALID_GUEST_STATE, f"guest is {guest.state.name}, needs {state.name}")
    return guest


def _encrypt_in_place(ctx: PspContext, guest: GuestContext, paddr: int, length: int) -> None:
    if not guest.active:
        raise CommandError(Status.INACTIVE, "ACTIVATE the guest before loading memory")
    if paddr % 16:
        raise CommandError(Status.INVALID_ADDRESS, "launch data must be 16-byte aligned")
    if length == 0 or length % 16:
        raise CommandError(Status.INVALID_LEN, "launch data length must be a non-zero multiple of 16")
    ctx.mem.probe(paddr, length)
    for spa, size in ctx.mem.chunks(paddr, length):
        plaintext = ctx.mem.read(spa, size)
        guest.ld.update(plaintext)
        ctx.mem.write_guest(guest, spa, plaintext)


def cmd_launch_update_data(ctx: PspContext, buf: LaunchUpdateData) -> None:
    """WORKING, guest LUPDATE and active: measure ``len`` bytes at ``paddr``, encrypt in place."""
    guest = _launching_guest(ctx, buf.handle, GuestState.LUPDATE)
    _encrypt_in_place(ctx, guest, buf.paddr, buf.len)


def cmd_launch_update_vmsa(ctx: PspContext, buf: LaunchUpdateVmsa) -> None:
    """As LAUNCH_UPDATE_DATA for one 4 KiB VMSA page of an SEV-ES guest (UNSUPPORTED for a
    plain SEV policy), plus the firmware's VMSA edits that make the saved state tamper-evident.

    The digest covers the page exactly as the hypervisor wrote it (so the owner can predict it).
    Then, as AMD's SEV-ES firmware does, the page gets 0 at 0x380 and, at 0x388, the address of
    a slot in the TMR holding the page's integrity value; the edited page is encrypted in place.
    The CPU checks that value at every VMRUN and renews it at every #VMEXIT (hv.hw.vmsa), and the
    TMR is fenced off from the hypervisor, so a changed (or replayed) VMSA fails the next entry."""
    guest = _launching_guest(ctx, buf.handle, GuestState.LUPDATE)
    if not guest.es:
        raise CommandError(Status.UNSUPPORTED, "LAUNCH_UPDATE_VMSA needs an SEV-ES policy")
    if buf.len != VMSA_SIZE:
        raise CommandError(Status.INVALID_LEN, "a VMSA is 4096 bytes")
    if not guest.active:
        raise CommandError(Status.INACTIVE, "ACTIVATE the guest before loading its VMSA")
    if buf.paddr % VMSA_SIZE:
        raise CommandError(Status.INVALID_ADDRESS, "a VMSA must be page-aligned")
    if ctx.tmr is None:
        raise CommandError(Status.INVALID_CONFIG, "SEV-ES needs the TMR given at INIT")
    page = bytearray(ctx.mem.read(buf.paddr, VMSA_SIZE))
    guest.ld.update(bytes(page))
    install_vmsa(ctx, guest, buf.paddr, page)


def install_vmsa(ctx: PspContext, guest: GuestContext, spa: int, page: bytearray) -> None:
    """Encrypt the VMSA plaintext `page` into `spa` under the guest's key with its integrity
    value in a TMR slot: the edits of LAUNCH_UPDATE_VMSA, redone by RECEIVE_UPDATE_VMSA."""
    slot = _tmr_slot(ctx, spa)
    page[VMSA_TMR_RESERVED:VMSA_TMR_RESERVED + 8] = bytes(8)
    page[VMSA_TMR_SLOT:VMSA_TMR_SLOT + 8] = slot.to_bytes(8, "little")
    ctx.mem.write_tmr(slot, (spa | 1).to_bytes(8, "little") + vmsa_integrity(page))
    ctx.mem.write_guest(guest, spa, bytes(page))


def vmsa_intact(ctx: PspContext, spa: int, page: bytes) -> bool:
    """Whether the VMSA plaintext `page` at `spa` matches the integrity value in its TMR slot
    (SEND_UPDATE_VMSA re-checks it, so a VMSA the hypervisor altered is never sent)."""
    base, length = ctx.tmr
    slot = int.from_bytes(page[VMSA_TMR_SLOT:VMSA_TMR_SLOT + 8], "little")
    if slot % TMR_ENTRY or not base <= slot <= base + length - TMR_ENTRY:
        return False
    entry = ctx.mem.read_tmr()[slot - base:slot - base + TMR_ENTRY]
    return entry == (spa | 1).to_bytes(8, "little") + vmsa_integrity(page)


TMR_ENTRY = 16
"""A TMR slot: the VMSA's system-physical address | 1 (whose slot it is), then the 8-byte
integrity value. The CPU side of this contract is hv/hw/vmsa.py."""


def _tmr_slot(ctx: PspContext, vmsa_spa: int) -> int:
    """The TMR slot for the VMSA at `vmsa_spa`: the one it had before, else the first free one.
    (INIT has had the machine fence the TMR.)"""
    base, _length = ctx.tmr
    tags = np.frombuffer(ctx.mem.read_tmr(), dtype="<u8")[0::TMR_ENTRY // 8]
    mine = np.flatnonzero(tags == (vmsa_spa | 1))
    free = mine if mine.size else np.flatnonzero(tags == 0)
    if not free.size:
        raise CommandError(Status.RESOURCE_LIMIT, "the TMR has no free VMSA slot")
    return base + int(free[0]) * TMR_ENTRY


def cmd_launch_measure(ctx: PspContext, buf: LaunchMeasure) -> LaunchMeasure:
    """WORKING, guest LUPDATE -> LSECRET: write MEASURE || MNONCE (48 bytes).  ``len`` is in/out:
    below 48 nothing changes, 48 is written back and the status is INVALID_LEN."""
    guest = _launching_guest(ctx, buf.handle, GuestState.LUPDATE)
    out = dataclasses.replace(buf, len=MeasureResult.SIZE)
    if buf.len < MeasureResult.SIZE:
        raise CommandError(Status.INVALID_LEN, "measurement buffer too small", writeback=out.pack())
    ctx.mem.probe(buf.paddr, MeasureResult.SIZE)
    mnonce = os.urandom(16)
    digest = guest.ld.peek()
    measure = launch_measure(bytes(guest.tik), API_MAJOR, API_MINOR, BUILD, guest.policy, digest, mnonce)
    ctx.mem.write(buf.paddr, MeasureResult(measure, mnonce).pack())
    guest.ld.finalize()
    guest.launch_digest = digest
    guest.measurement = measure
    guest.state = GuestState.LSECRET
    return out


def cmd_launch_secret(ctx: PspContext, buf: LaunchSecret) -> None:
    """WORKING, guest LSECRET and active: check the packet MAC, decrypt with TEK, write the
    plaintext at ``guest_paddr`` under the guest key.  Lengths: header 52, guest_len ==
    trans_len, non-zero, up to SECRET_MAX_LEN; compressed packets UNSUPPORTED.

    AMD's firmware also wants the length to be a multiple of 16, so SEV tools pad secrets.
    hv accepts any length (the memory controller merges a partial last block under the guest
    key), so the guest receives exactly the bytes the owner packaged, and padded packets from
    other tools work unchanged."""
    ctx.require_state(PlatformState.WORKING)
    guest = ctx.guests.lookup(buf.handle)
    if buf.guest_paddr % 16:
        raise CommandError(Status.INVALID_ADDRESS, "secret destination must be 16-byte aligned")
    if (buf.hdr_len != SECRET_HEADER_SIZE or buf.guest_len == 0
            or buf.guest_len > SECRET_MAX_LEN or buf.guest_len != buf.trans_len):
        raise CommandError(Status.INVALID_LEN, "bad LAUNCH_SECRET lengths")
    if guest.state is not GuestState.LSECRET:
        raise CommandError(Status.INVALID_GUEST_STATE, f"guest is {guest.state.name}, needs LSECRET")
    if not guest.active:
        raise CommandError(Status.INACTIVE, "ACTIVATE the guest before injecting a secret")
    header = SecretHeader.unpack(ctx.mem.read(buf.hdr_paddr, SECRET_HEADER_SIZE))
    ciphertext = ctx.mem.read(buf.trans_paddr, buf.trans_len)
    ctx.mem.probe_guest(guest, buf.guest_paddr, buf.guest_len)
    # SecretMacError carries BAD_MEASUREMENT; nothing has been written yet.
    plaintext = open_secret(bytes(guest.tek), bytes(guest.tik), header, ciphertext,
                            guest.measurement, API_MAJOR, API_MINOR, guest_len=buf.guest_len)
    if header.flags & SecretFlags.COMPRESSED:
        raise CommandError(Status.UNSUPPORTED, "compressed secrets are not supported")
    ctx.mem.write_guest(guest, buf.guest_paddr, plaintext)


def cmd_launch_finish(ctx: PspContext, buf: LaunchFinish) -> None:
    """WORKING, guest LSECRET -> RUNNING; the transport keys are forgotten."""
    guest = _launching_guest(ctx, buf.handle, GuestState.LSECRET)
    guest.close_channel()
    guest.state = GuestState.RUNNING


_ATTESTABLE = (GuestState.LSECRET, GuestState.RUNNING, GuestState.SUPDATE, GuestState.SENT)


def cmd_attestation(ctx: PspContext, buf: Attestation) -> Attestation:
    """WORKING, guest LSECRET/RUNNING/SUPDATE/SENT: a 208-byte report of the caller's MNONCE,
    the launch digest and the policy, signed by the PEK.  ``len`` is in/out like MEASURE's."""
    ctx.require_state(PlatformState.WORKING)
    guest = ctx.guests.lookup(buf.handle)
    if guest.state not in _ATTESTABLE:
        raise CommandError(Status.INVALID_GUEST_STATE, f"guest is {guest.state.name}, not yet measured")
    out = dataclasses.replace(buf, len=ATTESTATION_REPORT_SIZE)
    if buf.len < ATTESTATION_REPORT_SIZE:
        raise CommandError(Status.INVALID_LEN, "report buffer too small", writeback=out.pack())
    ctx.mem.probe(buf.paddr, ATTESTATION_REPORT_SIZE)
    report = AttestationReport(bytes(buf.mnonce), guest.launch_digest, guest.policy)
    report = sign_attestation_report(report, ctx.identity.owner.pek_key)
    ctx.mem.write(buf.paddr, report.encode())
    return out

"""SEV migration (es-snp-reference 5): SEND_START, SEND_UPDATE_DATA, SEND_UPDATE_VMSA,
SEND_FINISH, SEND_CANCEL, RECEIVE_START, RECEIVE_UPDATE_DATA, RECEIVE_UPDATE_VMSA, RECEIVE_FINISH.

    RUNNING --SEND_START--> SUPDATE --SEND_FINISH--> SENT (then only DEACTIVATE, DECOMMISSION)
                            SUPDATE --SEND_CANCEL--> RUNNING
    (none) --RECEIVE_START--> RUPDATE --RECEIVE_FINISH--> RUNNING
            SEND_UPDATE_* stay in SUPDATE, RECEIVE_UPDATE_* in RUPDATE

What each step guarantees the guest owner:
- SEND_START refuses a guest whose policy has NOSEND (POLICY_FAILURE), and with the policy's SEV
  bit a target whose chain does not lead to this part's AMD root, with its DOMAIN bit a target
  of another platform owner (another OCA). It draws a fresh TEK and TIK and wraps them for the
  target's PDH (ECDH with this PSP's PDH key), so only the target's PSP can read the packets.
- SEND_UPDATE_* read the guest's plaintext under its own key and hand out only TEK ciphertext;
  a VMSA is sent only if it still matches the integrity value in the TMR (else INVALID_PARAM).
- RECEIVE_UPDATE_* check the packet MAC before anything is decrypted or written
  (BAD_MEASUREMENT, memory untouched), then write under the new guest's own key; a VMSA gets a
  fresh TMR slot and integrity value on this platform, as at launch.
- Both sides extend GCTX.LD with the plaintext of every packet in order (the "measurement over
  what was sent"); RECEIVE_FINISH makes it the guest's launch digest, which ATTESTATION on the
  target then reports. The transport keys are forgotten at SEND_FINISH, SEND_CANCEL and
  RECEIVE_FINISH.
"""

from __future__ import annotations

import dataclasses
import os

from sevwire import (
    PACKET_HEADER_SIZE,
    SESSION_BLOB_SIZE,
    SEV_CERT_SIZE,
    GuestState,
    LaunchDigest,
    PacketFlags,
    PacketHeader,
    PlatformState,
    Policy,
    POLICY_RESERVED_MASK,
    ReceiveFinish,
    ReceiveStart,
    ReceiveUpdateData,
    ReceiveUpdateVmsa,
    SendCancel,
    SendFinish,
    SendStart,
    SendUpdateData,
    SendUpdateVmsa,
    SevCert,
    SevWireError,
    Status,
    Usage,
    build_session,
    open_packet,
    open_session,
    policy_api_major,
    policy_api_minor,
    seal_packet,
    split_amd_chain,
    split_cert_chain,
    verify_amd_cert,
    verify_sev_cert,
)

from firmware._context import API_MAJOR, API_MINOR, PspContext
from firmware._errors import CommandError
from firmware._guest import GuestContext
from firmware._launch import VMSA_SIZE, admit_guest, install_vmsa, vmsa_intact

__all__ = [
    "cmd_send_start", "cmd_send_update_data", "cmd_send_update_vmsa", "cmd_send_finish",
    "cmd_send_cancel", "cmd_receive_start", "cmd_receive_update_data", "cmd_receive_update_vmsa",
    "cmd_receive_finish", "PACKET_MAX",
]

PACKET_MAX = 0x5000
"""Largest guest_len of one SEND/RECEIVE_UPDATE_DATA (AMD's firmware bound: five pages)."""


# -- SEND ------------------------------------------------------------------------------------------

def cmd_send_start(ctx: PspContext, buf: SendStart) -> SendStart:
    """WORKING, guest RUNNING -> SUPDATE: wrap a fresh TEK/TIK for the target's PDH into the
    128-byte session at ``session_paddr``; the policy is written back."""
    ctx.require_state(PlatformState.WORKING)
    out = dataclasses.replace(buf, session_len=SESSION_BLOB_SIZE)
    if buf.session_len != SESSION_BLOB_SIZE:
        raise CommandError(Status.INVALID_LEN, "the session buffer is 128 bytes", writeback=out.pack())
    guest = ctx.guests.lookup(buf.handle)
    if guest.state is not GuestState.RUNNING:
        raise CommandError(Status.INVALID_GUEST_STATE, f"guest is {guest.state.name}, needs RUNNING")
    policy = guest.policy
    if policy & Policy.NOSEND:
        raise CommandError(Status.POLICY_FAILURE, "the guest's policy forbids sending (NOSEND)")
    if buf.pdh_cert_len != SEV_CERT_SIZE:
        raise CommandError(Status.INVALID_LEN, "the target's PDH certificate is 2084 bytes")
    pdh = SevCert.decode(ctx.mem.read(buf.pdh_cert_paddr, SEV_CERT_SIZE))
    if policy & (Policy.SEV | Policy.DOMAIN):
        if buf.plat_certs_len != 3 * SEV_CERT_SIZE:
            raise CommandError(Status.INVALID_LEN, "the target's PEK||OCA||CEK is 6252 bytes")
        pek, oca, cek = split_cert_chain(ctx.mem.read(buf.plat_certs_paddr, buf.plat_certs_len))
        if policy & Policy.SEV:
            _check_amd_chain(ctx, buf, pdh, pek, cek, policy)
        if policy & Policy.DOMAIN:
            _check_domain(ctx, pdh, pek, oca)
    ctx.mem.probe(buf.session_paddr, SESSION_BLOB_SIZE)
    tek, tik = os.urandom(16), os.urandom(16)
    session = build_session(pdh, policy, godh_private_key=ctx.identity.owner.pdh_key, tek=tek, tik=tik)
    ctx.mem.write(buf.session_paddr, session.blob)
    guest.tek[:], guest.tik[:], guest.has_session = tek, tik, True
    guest.ld = LaunchDigest()
    guest.state = GuestState.SUPDATE
    return dataclasses.replace(out, policy=policy)


def _check_amd_chain(ctx: PspContext, buf: SendStart, pdh: SevCert, pek: SevCert, cek: SevCert,
                     policy: int) -> None:
    """Policy SEV: the target is a genuine part of this AMD root, and new enough for the policy."""
    try:
        ask, ark = split_amd_chain(ctx.mem.read(buf.amd_certs_paddr, buf.amd_certs_len))
        if ark.encode() != ctx.identity.chip.ark_cert:
            raise CommandError(Status.INVALID_CERTIFICATE, "the target's ARK is not this part's AMD root")
        verify_amd_cert(ark, ark)
        verify_amd_cert(ask, ark)
        verify_sev_cert(cek, ask)
        verify_sev_cert(pek, cek)
        verify_sev_cert(pdh, pek)
        if (cek.pubkey_usage, pek.pubkey_usage, pdh.pubkey_usage) != (Usage.CEK, Usage.PEK, Usage.PDH):
            raise CommandError(Status.INVALID_CERTIFICATE, "the target's chain has a wrong usage")
    except (SevWireError, ValueError) as err:
        raise CommandError(Status.INVALID_CERTIFICATE, f"the target's chain does not verify: {err}") from None
    if (pek.api_major, pek.api_minor) < (policy_api_major(policy), policy_api_minor(policy)):
        raise CommandError(Status.POLICY_FAILURE, "the target's firmware is older than the policy allows")


def _check_domain(ctx: PspContext, pdh: SevCert, pek: SevCert, oca: SevCert) -> None:
    """Policy DOMAIN: the target is owned by this platform's owner (the same OCA)."""
    try:
        verify_sev_cert(oca, oca)
        verify_sev_cert(pek, oca)
        verify_sev_cert(pdh, pek)
    except SevWireError as err:
        raise CommandError(Status.POLICY_FAILURE, f"the target's owner chain does not verify: {err}") from None
    if oca.encode() != ctx.identity.owner.oca_cert:
        raise CommandError(Status.POLICY_FAILURE, "the target has another owner (OCA) than this platform")


def _in_state(ctx: PspContext, handle: int, state: GuestState) -> GuestContext:
    ctx.require_state(PlatformState.WORKING)
    guest = ctx.guests.lookup(handle)
    if guest.state is not state:
        raise CommandError(Status.INVALID_GUEST_STATE, f"guest is {guest.state.name}, needs {state.name}")
    return guest


def _updating(ctx: PspContext, handle: int, state: GuestState) -> GuestContext:
    guest = _in_state(ctx, handle, state)
    if not guest.active:
        raise CommandError(Status.INACTIVE, "the guest has no ASID")
    return guest


def _vmsa_guest(ctx: PspContext, buf: SendUpdateData, name: str, state: GuestState, *,
                receiving: bool) -> GuestContext:
    """The guest of a SEND/RECEIVE_UPDATE_VMSA: updating, SEV-ES, a VMSA-sized packet, a TMR."""
    guest = _updating(ctx, buf.handle, state)
    if not guest.es:
        raise CommandError(Status.UNSUPPORTED, f"{name} needs an SEV-ES guest")
    _check_packet(buf, vmsa=True, receiving=receiving)
    if ctx.tmr is None:
        raise CommandError(Status.INVALID_CONFIG, "SEV-ES needs the TMR given at INIT")
    return guest


def _check_packet(buf: SendUpdateData, *, vmsa: bool, receiving: bool) -> SendUpdateData:
    """The UPDATE rules shared by the four commands; the buffer to write back (hdr_len = 52)."""
    out = dataclasses.replace(buf, hdr_len=PACKET_HEADER_SIZE)
    if buf.hdr_len < PACKET_HEADER_SIZE:
        raise CommandError(Status.INVALID_LEN, "the packet header is 52 bytes", writeback=out.pack())
    limit = VMSA_SIZE if vmsa else PACKET_MAX
    if buf.guest_len == 0 or buf.guest_len % 16 or buf.guest_len > limit or (vmsa and buf.guest_len != VMSA_SIZE):
        raise CommandError(Status.INVALID_LEN, f"guest_len must be a multiple of 16 in 16..{limit:#x}"
                           + (" (a VMSA is 4096)" if vmsa else ""))
    if buf.trans_len < buf.guest_len or (receiving and buf.trans_len != buf.guest_len):
        raise CommandError(Status.INVALID_LEN, "trans_len must " + ("equal" if receiving else "cover") + " guest_len")
    if buf.guest_paddr % (VMSA_SIZE if vmsa else 16):
        raise CommandError(Status.INVALID_ADDRESS, "guest_paddr is misaligned")
    return out


def _send(ctx: PspContext, guest: GuestContext, buf: SendUpdateData, plaintext: bytes) -> SendUpdateData:
    ctx.mem.probe(buf.hdr_paddr, PACKET_HEADER_SIZE)
    ctx.mem.probe(buf.trans_paddr, buf.guest_len)
    header, trans = seal_packet(bytes(guest.tek), bytes(guest.tik), plaintext)
    guest.ld.update(plaintext)
    ctx.mem.write(buf.hdr_paddr, header)
    ctx.mem.write(buf.trans_paddr, trans)
    return dataclasses.replace(buf, hdr_len=PACKET_HEADER_SIZE, trans_len=buf.guest_len)


def cmd_send_update_data(ctx: PspContext, buf: SendUpdateData) -> SendUpdateData:
    """WORKING, guest SUPDATE and active: ``guest_len`` bytes of guest memory into one packet."""
    guest = _updating(ctx, buf.handle, GuestState.SUPDATE)
    _check_packet(buf, vmsa=False, receiving=False)
    return _send(ctx, guest, buf, ctx.mem.read_guest(guest, buf.guest_paddr, buf.guest_len))


def cmd_send_update_vmsa(ctx: PspContext, buf: SendUpdateVmsa) -> SendUpdateVmsa:
    """As SEND_UPDATE_DATA for one SEV-ES VMSA page, which must still pass its integrity check."""
    guest = _vmsa_guest(ctx, buf, "SEND_UPDATE_VMSA", GuestState.SUPDATE, receiving=False)
    page = ctx.mem.read_guest(guest, buf.guest_paddr, VMSA_SIZE)
    if not vmsa_intact(ctx, buf.guest_paddr, page):
        raise CommandError(Status.INVALID_PARAM, "the VMSA fails its integrity check")
    return _send(ctx, guest, buf, page)


def cmd_send_finish(ctx: PspContext, buf: SendFinish) -> None:
    """WORKING, guest SUPDATE -> SENT: the transport keys are forgotten; the guest can never
    run here again (ACTIVATE refuses a SENT guest)."""
    guest = _in_state(ctx, buf.handle, GuestState.SUPDATE)
    guest.ld.finalize()
    guest.close_channel()
    guest.state = GuestState.SENT


def cmd_send_cancel(ctx: PspContext, buf: SendCancel) -> None:
    """WORKING, guest SUPDATE -> RUNNING: the transport keys are forgotten."""
    guest = _in_state(ctx, buf.handle, GuestState.SUPDATE)
    guest.close_channel()
    guest.state = GuestState.RUNNING


# -- RECEIVE ---------------------------------------------------------------------------------------

def cmd_receive_start(ctx: PspContext, buf: ReceiveStart) -> ReceiveStart:
    """INIT or WORKING: a new guest context in RUPDATE with the TEK/TIK the sender wrapped for
    this PSP's PDH; its handle is written back."""
    ctx.require_state(PlatformState.INIT, PlatformState.WORKING)
    policy = buf.policy
    if buf.session_len != SESSION_BLOB_SIZE:
        raise CommandError(Status.INVALID_LEN, "the session is 128 bytes")
    if buf.pdh_cert_len != SEV_CERT_SIZE:
        raise CommandError(Status.INVALID_LEN, "the sender's PDH certificate is 2084 bytes")
    blob = ctx.mem.read(buf.session_paddr, SESSION_BLOB_SIZE)
    sender_pdh = ctx.mem.read(buf.pdh_cert_paddr, SEV_CERT_SIZE)
    # WrapMacError -> BAD_MEASUREMENT, PolicyMacError -> POLICY_FAILURE, a bad PDH ->
    # INVALID_CERTIFICATE: sevwire's errors carry their status.
    tek, tik = open_session(blob, sender_pdh, ctx.identity.owner.pdh_key, policy)
    if policy & POLICY_RESERVED_MASK:
        raise CommandError(Status.POLICY_FAILURE, "the policy sets reserved bits 15:6")
    if (policy_api_major(policy), policy_api_minor(policy)) > (API_MAJOR, API_MINOR):
        raise CommandError(Status.POLICY_FAILURE, "the policy needs a newer firmware API than this one")
    if policy & Policy.ES and not ctx.config_es:
        raise CommandError(Status.UNSUPPORTED, "SEV-ES policy on a platform INITed without SEV-ES")
    return admit_guest(ctx, buf, policy, GuestState.RUPDATE, tek, tik, True)


def _receive(ctx: PspContext, guest: GuestContext, buf: ReceiveUpdateData) -> bytes:
    """Check the packet and return its plaintext; nothing is written on any failure."""
    header = PacketHeader.unpack(ctx.mem.read(buf.hdr_paddr, PACKET_HEADER_SIZE))
    trans = ctx.mem.read(buf.trans_paddr, buf.trans_len)
    ctx.mem.probe_guest(guest, buf.guest_paddr, buf.guest_len)
    # PacketMacError carries BAD_MEASUREMENT.
    plaintext = open_packet(bytes(guest.tek), bytes(guest.tik), header, trans, guest_len=buf.guest_len)
    if header.flags & PacketFlags.COMPRESSED:
        raise CommandError(Status.UNSUPPORTED, "compressed packets are not supported")
    guest.ld.update(plaintext)
    return plaintext


def cmd_receive_update_data(ctx: PspContext, buf: ReceiveUpdateData) -> None:
    """WORKING, guest RUPDATE and active: one packet into guest memory under the guest's key."""
    guest = _updating(ctx, buf.handle, GuestState.RUPDATE)
    _check_packet(buf, vmsa=False, receiving=True)
    ctx.mem.write_guest(guest, buf.guest_paddr, _receive(ctx, guest, buf))


def cmd_receive_update_vmsa(ctx: PspContext, buf: ReceiveUpdateVmsa) -> None:
    """One VMSA packet into the page at ``guest_paddr``, with a new TMR slot on this platform."""
    guest = _vmsa_guest(ctx, buf, "RECEIVE_UPDATE_VMSA", GuestState.RUPDATE, receiving=True)
    install_vmsa(ctx, guest, buf.guest_paddr, bytearray(_receive(ctx, guest, buf)))


def cmd_receive_finish(ctx: PspContext, buf: ReceiveFinish) -> None:
    """WORKING, guest RUPDATE -> RUNNING: what was received becomes the guest's launch digest
    (ATTESTATION reports it); the transport keys are forgotten."""
    guest = _in_state(ctx, buf.handle, GuestState.RUPDATE)
    guest.launch_digest = guest.ld.finalize()
    guest.close_channel()
    guest.state = GuestState.RUNNING

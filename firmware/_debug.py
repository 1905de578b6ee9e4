"""DBG_DECRYPT and DBG_ENCRYPT: the hypervisor's debugger access to a guest that allows it.

They are the one sanctioned way for the hypervisor to read or write a guest's plaintext, so the
policy decides: a guest launched with NODBG gets POLICY_FAILURE whatever else the buffer says
(the check comes right after the handle, before any address is looked at), and the key used is
always the named guest's own ASID, so a debug request can never decrypt another guest's memory
with its key.  Work is in 16-byte blocks, the memory encryption granularity (sev-reference 3):
addresses and length must be 16-byte aligned and the length non-zero.

Neither range may reach the SEV-ES TMR (INVALID_ADDRESS, checked before either range is touched).
The PSP is not fenced from it, so without the check a hypervisor holding any debuggable guest
could DBG_ENCRYPT a TMR slot into that guest and DBG_DECRYPT it out (another guest's VMSA
integrity value), or the reverse (bytes of its choice in that slot): a VMSA replay that VMRUN
accepts. The check is the one firmware/_memory.py applies to every address a command names.
"""

from __future__ import annotations

from sevwire import DbgDecrypt, DbgEncrypt, PlatformState, Status

from firmware._context import PspContext
from firmware._errors import CommandError
from firmware._guest import GuestContext

__all__ = ["cmd_dbg_decrypt", "cmd_dbg_encrypt"]


def _debuggable(ctx: PspContext, buf: DbgDecrypt | DbgEncrypt) -> GuestContext:
    ctx.require_state(PlatformState.WORKING)
    guest = ctx.guests.lookup(buf.handle)
    if guest.nodbg:
        raise CommandError(Status.POLICY_FAILURE, "guest policy has NODBG")
    if not guest.active:
        raise CommandError(Status.INACTIVE, "guest has no ASID")
    if buf.src % 16 or buf.dst % 16:
        raise CommandError(Status.INVALID_ADDRESS, "debug addresses must be 16-byte aligned")
    if buf.len == 0 or buf.len % 16:
        raise CommandError(Status.INVALID_LEN, "debug length must be a non-zero multiple of 16")
    ctx.mem.outside_tmr(buf.src, buf.len)
    ctx.mem.outside_tmr(buf.dst, buf.len)
    return guest


def cmd_dbg_decrypt(ctx: PspContext, buf: DbgDecrypt) -> None:
    """Copy ``len`` bytes from guest-private ``src`` (decrypted with the guest key) to ``dst``
    as plaintext."""
    guest = _debuggable(ctx, buf)
    ctx.mem.probe_guest(guest, buf.src, buf.len)
    ctx.mem.probe(buf.dst, buf.len)
    for offset_spa, size in ctx.mem.chunks(buf.src, buf.len):
        offset = offset_spa - buf.src
        ctx.mem.write(buf.dst + offset, ctx.mem.read_guest(guest, offset_spa, size))


def cmd_dbg_encrypt(ctx: PspContext, buf: DbgEncrypt) -> None:
    """Copy ``len`` plaintext bytes from ``src`` into guest-private ``dst`` (encrypted with the
    guest key)."""
    guest = _debuggable(ctx, buf)
    ctx.mem.probe(buf.src, buf.len)
    ctx.mem.probe_guest(guest, buf.dst, buf.len)
    for offset_spa, size in ctx.mem.chunks(buf.src, buf.len):
        offset = offset_spa - buf.src
        ctx.mem.write_guest(guest, buf.dst + offset, ctx.mem.read(offset_spa, size))

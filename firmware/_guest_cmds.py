"""Guest management commands: DECOMMISSION, ACTIVATE, DEACTIVATE, GUEST_STATUS.

ACTIVATE is where a guest's key meets the hardware: the VEK goes into the memory controller slot
of the chosen ASID and nowhere else.  The checks keep one guest from ever being decrypted with
another's slot, and keep a slot from being reused while the caches may still hold lines tagged
with its previous owner:

- ASID 0 (the host's) and ASIDs above CPUID ECX are INVALID_ASID; so is an ASID from the wrong
  range: SEV-ES policy guests take 1 .. EDX-1, plain SEV guests EDX .. ECX (sev-reference 1);
- an ASID held by another guest is ASID_OWNED; a guest that already has an ASID is ACTIVE;
- an ASID released by DEACTIVATE (or not yet flushed since INIT) is DFFLUSH_REQUIRED until
  DF_FLUSH, the rule KVM's ``sev_flush_asids`` exists for.

Check order follows AMD's firmware (``sev_mcmd_activate``): platform state, handle, ASID
range, ownership, activity, guest state, flush.
"""

from __future__ import annotations

import dataclasses

from sevwire import (
    Activate,
    Deactivate,
    Decommission,
    GuestState,
    GuestStatus,
    PlatformState,
    Status,
)

from firmware._context import PspContext
from firmware._errors import CommandError
from firmware._memory import port_errors
from firmware._snp import snp_asid_owner

__all__ = ["cmd_decommission", "cmd_activate", "cmd_deactivate", "cmd_guest_status"]


def cmd_decommission(ctx: PspContext, buf: Decommission) -> None:
    """WORKING; any guest state; the guest must be inactive (else ACTIVE).  The context and its
    keys are wiped; the last guest takes the platform back to INIT."""
    ctx.require_state(PlatformState.WORKING)
    guest = ctx.guests.lookup(buf.handle)
    if guest.active:
        raise CommandError(Status.ACTIVE, "DEACTIVATE the guest first")
    ctx.guests.remove(guest)
    ctx.update_working()


def cmd_activate(ctx: PspContext, buf: Activate) -> None:
    """WORKING; bind the guest's VEK to ``asid`` (see the module docstring for the rules)."""
    ctx.require_state(PlatformState.WORKING)
    guest = ctx.guests.lookup(buf.handle)
    asid = buf.asid
    es_range, sev_range = ctx.asid_ranges()
    if asid == 0 or asid > int(ctx.port.max_asid):
        raise CommandError(Status.INVALID_ASID, f"ASID {asid} is outside 1..{ctx.port.max_asid}")
    if asid not in (es_range if guest.es else sev_range):
        kind = "SEV-ES" if guest.es else "SEV"
        raise CommandError(Status.INVALID_ASID, f"ASID {asid} is not in the {kind} range")
    holder = ctx.guests.owner_of(asid)
    if holder is not None and holder is not guest:
        raise CommandError(Status.ASID_OWNED, f"ASID {asid} belongs to guest {holder.handle}")
    if snp_asid_owner(ctx, asid) is not None:
        raise CommandError(Status.ASID_OWNED, f"ASID {asid} belongs to an SNP guest")
    if guest.active:
        raise CommandError(Status.ACTIVE, f"guest already active on ASID {guest.asid}")
    if guest.state is GuestState.SENT:
        raise CommandError(Status.INVALID_GUEST_STATE, "a SENT guest cannot be activated")
    if asid in ctx.dirty_asids:
        raise CommandError(Status.DFFLUSH_REQUIRED, f"ASID {asid} needs DF_FLUSH before reuse")
    with port_errors():
        ctx.port.program_key(asid, bytes(guest.vek))
    guest.asid = asid


def cmd_deactivate(ctx: PspContext, buf: Deactivate) -> None:
    """WORKING; unbind the guest from its ASID (INACTIVE if it has none).  The key slot is
    cleared and the ASID is dirty until DF_FLUSH."""
    ctx.require_state(PlatformState.WORKING)
    guest = ctx.guests.lookup(buf.handle)
    if not guest.active:
        raise CommandError(Status.INACTIVE, "guest has no ASID")
    asid = guest.asid
    guest.asid = 0
    ctx.dirty_asids.add(asid)
    with port_errors():
        ctx.port.clear_key(asid)


def cmd_guest_status(ctx: PspContext, buf: GuestStatus) -> GuestStatus:
    """INIT or WORKING: policy, ASID (0 when inactive) and state of a guest.  An unknown handle
    is INVALID_GUEST (AMD's firmware instead reports state 0 with SUCCESS)."""
    ctx.require_state(PlatformState.INIT, PlatformState.WORKING)
    guest = ctx.guests.lookup(buf.handle)
    return dataclasses.replace(buf, policy=guest.policy, asid=guest.asid, state=int(guest.state))

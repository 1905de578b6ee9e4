"""SEV-SNP commands (es-snp-reference 3.3, 3.4): SNP_INIT, SNP_GCTX_CREATE, SNP_LAUNCH_START,
SNP_ACTIVATE, SNP_LAUNCH_UPDATE, SNP_LAUNCH_FINISH, SNP_DECOMMISSION, SNP_PAGE_RECLAIM.

    (no guest) --GCTX_CREATE--> INIT --LAUNCH_START--> LAUNCH --LAUNCH_FINISH--> RUNNING
               LAUNCH_UPDATE stays in LAUNCH; ACTIVATE in LAUNCH or RUNNING; DECOMMISSION any

What SNP adds to SEV-ES, and where it is enforced here:
- the firmware owns the RMP's transitions for launch pages: SNP_LAUNCH_UPDATE takes only a
  Pre-guest page (assigned by the hypervisor to this guest's ASID at one GPA, immutable), encrypts
  it in place, extends the launch digest with its contents, type and RMP GPA, and leaves it
  Guest-valid (validated, mutable). The guest therefore starts with exactly the measured pages
  validated, and any page the hypervisor adds later reaches it unvalidated.
- the guest context page is a Firmware page: the hypervisor can neither read its plaintext nor
  write it.
- SNP_PAGE_RECLAIM is the way back from an immutable page: Firmware -> Reclaim, Pre-guest ->
  Guest-invalid, Pre-swap -> Guest-valid (AMD's 1.55 firmware `snp_mcmd_page_reclaim`). It never
  touches `validated`, and a live guest context page is not reclaimable.
- the 64-bit policy is checked at SNP_LAUNCH_START (reserved bit 17 must be one; unknown bits,
  a migration agent, and SMT disallowed on this SMT platform are POLICY_FAILURE).
- the SEV-ES TMR is in Firmware pages (the machine makes fenced pages so, whichever of SNP_INIT
  and INIT comes first), which RMPUPDATE cannot change; SNP_PAGE_RECLAIM, which could, refuses a
  TMR page while the TMR is live, as every command refuses an address in the TMR
  (INVALID_ADDRESS, firmware/_memory.py): a context page or a launch page there too. INIT
  refuses a TMR over a page the RMP has already given out (INVALID_PAGE_STATE,
  firmware/_platform_cmds.py).

- SNP_LAUNCH_FINISH checks the guest owner's ID block when the hypervisor gives one: its launch
  digest and policy must be the guest's, the ID key must have signed it and, with AUTH_KEY_EN,
  the author key the ID key (ECDSA P-384/SHA-384). The report then carries the keys' digests,
  the family and image IDs and the guest SVN, so the owner can accept any image its ID key
  signed instead of one exact measurement.

- a CPUID page (SNP_LAUNCH_UPDATE type 6) is checked against the platform's own CPUID
  (PlatformPort.host_cpuid) by hv's model of AMD's CPUID policy (firmware/_snp_cpuid.py: vendor
  and family equal, feature bits a subset, highest leaves and address widths at most the
  platform's, the C-bit position equal; the hypervisor's leaves and every other register free).
  An acceptable page is encrypted and measured as zeros like the other unmeasured types. A
  refused one gets the corrected table written back in plaintext, as AMD's firmware does so the
  hypervisor can show what differs, and the command fails with INVALID_PARAM: the RMP entry
  (still Pre-guest) and the launch digest are unchanged.

Not modelled (refused, never silently accepted): 2 MiB pages (INVALID_PAGE_SIZE), VCEK_DISABLED
at LAUNCH_FINISH (there is no VLEK), migration agents (UNSUPPORTED).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sevwire import (
    ID_AUTH_SIZE,
    ID_BLOCK_SIZE,
    ID_KEY_ALGO_ECDSA_P384_SHA384,
    SNP_POLICY_KNOWN,
    VMPL_PERMS_VALID,
    SevWireError,
    SnpActivate,
    SnpDecommission,
    SnpGctxCreate,
    SnpIdAuth,
    SnpIdBlock,
    SnpLaunchFinish,
    SnpLaunchStart,
    SnpLaunchUpdate,
    SnpPageReclaim,
    SnpPageType,
    SnpPolicy,
    VMSA_TMR_RESERVED,
    VMSA_TMR_SLOT,
    Status,
    snp_cpuid_changes,
    snp_extend,
    snp_id_key_digest,
    snp_id_verify,
    vmsa_integrity,
)

from firmware._context import PspContext
from firmware._errors import CommandError
from firmware._launch import _tmr_slot
from firmware._memory import port_errors
from firmware._snp_cpuid import sanitize_cpuid_page

__all__ = ["SNP_ABI_MAJOR", "SNP_ABI_MINOR", "SnpGuest", "cmd_snp_activate",
           "cmd_snp_decommission", "cmd_snp_gctx_create", "cmd_snp_init", "cmd_snp_launch_finish",
           "cmd_snp_launch_start", "cmd_snp_launch_update", "cmd_snp_page_reclaim",
           "snp_asid_owner"]

SNP_ABI_MAJOR, SNP_ABI_MINOR = 1, 55
PLATFORM_SMT = True  # the emulated part runs two threads per core
SNP_INIT_STATE, SNP_LAUNCH, SNP_RUNNING = 0, 1, 2
PAGE = 0x1000
SECRETS_VERSION = 3
RECLAIM_RESERVED = 0xFFE  # SNP_PAGE_RECLAIM: bit 0 is the page size, bits 11:1 must be zero


@dataclass(eq=False)
class SnpGuest:
    """One SNP guest context (its context page is `gctx_paddr`)."""

    gctx_paddr: int
    state: int = SNP_INIT_STATE
    policy: int = 0
    asid: int = 0
    vek: bytearray = field(default_factory=lambda: bytearray(16), repr=False)
    vmpck: list[bytes] = field(default_factory=list, repr=False)
    ld: bytes = field(default=bytes(48), repr=False)
    host_data: bytes = bytes(32)
    gosvw: bytes = bytes(16)
    msg_seqno: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    """Per-VMPCK message counters: a request must carry counter + 1 (SNP_GUEST_REQUEST)."""
    report_id: bytes = field(default_factory=lambda: os.urandom(32))
    # From the ID block at SNP_LAUNCH_FINISH (zeros without one), for the report:
    family_id: bytes = bytes(16)
    image_id: bytes = bytes(16)
    guest_svn: int = 0
    id_key_digest: bytes = bytes(48)
    author_key_digest: bytes = bytes(48)
    author_key_en: bool = False

    def wipe(self) -> None:
        self.vek[:] = bytes(16)
        self.vmpck = []


def _snp(ctx: PspContext) -> dict[int, SnpGuest]:
    if ctx.snp_guests is None:
        raise CommandError(Status.INVALID_PLATFORM_STATE, "SNP_INIT has not run")
    return ctx.snp_guests


def _guest(ctx: PspContext, gctx_paddr: int, *states: int) -> SnpGuest:
    guest = _snp(ctx).get(gctx_paddr)
    if guest is None:
        raise CommandError(Status.INVALID_GUEST, f"no SNP guest context at {gctx_paddr:#x}")
    if states and guest.state not in states:
        raise CommandError(Status.INVALID_GUEST_STATE, f"SNP guest state {guest.state}")
    return guest


def _rmp(ctx: PspContext, spa: int) -> tuple[bool, int, int, int, bool, bool, bool]:
    """(assigned, asid, gpa, page_size, immutable, validated, vmsa) of the page at `spa`."""
    if spa % PAGE:
        raise CommandError(Status.INVALID_ADDRESS, f"{spa:#x} is not page-aligned")
    with port_errors():
        return ctx.port.rmp_read(spa)


def _rmp_set(ctx: PspContext, spa: int, assigned: bool, asid: int, gpa: int, immutable: bool,
             validated: bool, vmsa: bool) -> None:
    with port_errors():
        ctx.port.rmp_write(spa, assigned, asid, gpa, immutable, validated, vmsa)


def snp_asid_owner(ctx: PspContext, asid: int) -> SnpGuest | None:
    """The SNP guest holding `asid`: ACTIVATE of a legacy guest must not take it."""
    for guest in (ctx.snp_guests or {}).values():
        if guest.asid == asid:
            return guest
    return None


def cmd_snp_init(ctx: PspContext, _buf: None) -> None:
    """SNP_INIT: turn the RMP on (every page hypervisor-owned). Once, before any legacy guest."""
    if ctx.snp_guests is not None:
        raise CommandError(Status.INVALID_PLATFORM_STATE, "SNP is already initialised")
    if len(ctx.guests):
        raise CommandError(Status.INVALID_PLATFORM_STATE, "SNP_INIT with live SEV guests")
    enable = getattr(ctx.port, "enable_rmp", None)
    if enable is None:
        raise CommandError(Status.UNSUPPORTED, "this platform has no RMP")
    with port_errors():
        enable()
    ctx.snp_guests = {}


def cmd_snp_gctx_create(ctx: PspContext, buf: SnpGctxCreate) -> None:
    """A hypervisor-owned page becomes the guest context (Firmware state: assigned, ASID 0,
    immutable), so the hypervisor can no longer write it."""
    guests = _snp(ctx)
    assigned, _asid, _gpa, _size, immutable, _v, _vmsa = _rmp(ctx, buf.gctx_paddr)
    if assigned or immutable or buf.gctx_paddr in guests:
        raise CommandError(Status.INVALID_PAGE_STATE, "the context page must be hypervisor-owned")
    ctx.mem.write(buf.gctx_paddr, bytes(PAGE))
    _rmp_set(ctx, buf.gctx_paddr, True, 0, 0, True, False, False)
    guests[buf.gctx_paddr] = SnpGuest(buf.gctx_paddr)


def check_snp_policy(policy: int) -> None:
    """POLICY_FAILURE unless this platform can honour `policy`."""
    if not policy & SnpPolicy.RESERVED_ONE:
        raise CommandError(Status.POLICY_FAILURE, "SNP policy bit 17 must be set")
    if policy & ~SNP_POLICY_KNOWN:
        raise CommandError(Status.POLICY_FAILURE, "unknown SNP policy bits")
    if ((policy >> 8) & 0xFF, policy & 0xFF) > (SNP_ABI_MAJOR, SNP_ABI_MINOR):
        raise CommandError(Status.POLICY_FAILURE, "the policy needs a newer SNP ABI")
    if PLATFORM_SMT and not policy & SnpPolicy.SMT:
        raise CommandError(Status.POLICY_FAILURE, "the policy forbids SMT, which is enabled")


def cmd_snp_launch_start(ctx: PspContext, buf: SnpLaunchStart) -> None:
    guest = _guest(ctx, buf.gctx_paddr, SNP_INIT_STATE)
    check_snp_policy(buf.policy)
    if buf.policy & SnpPolicy.MIGRATE_MA or buf.flags & 1 or buf.ma_gctx_paddr:
        raise CommandError(Status.UNSUPPORTED, "migration agents are not supported")
    guest.policy = buf.policy
    guest.gosvw = buf.gosvw
    guest.vek[:] = os.urandom(16)
    guest.vmpck = [os.urandom(32) for _ in range(4)]
    guest.ld = bytes(48)
    guest.state = SNP_LAUNCH


def cmd_snp_activate(ctx: PspContext, buf: SnpActivate) -> None:
    """Bind the guest's key to an SEV-ES/SNP ASID not held by any other guest."""
    guest = _guest(ctx, buf.gctx_paddr, SNP_LAUNCH, SNP_RUNNING)
    es_range, _sev = ctx.asid_ranges()
    if buf.asid not in es_range:
        raise CommandError(Status.INVALID_ASID, f"ASID {buf.asid} is not an SEV-ES/SNP ASID")
    holder = snp_asid_owner(ctx, buf.asid)
    if (holder is not None and holder is not guest) or ctx.guests.owner_of(buf.asid) is not None:
        raise CommandError(Status.ASID_OWNED, f"ASID {buf.asid} belongs to another guest")
    if guest.asid:
        raise CommandError(Status.ACTIVE, f"guest already active on ASID {guest.asid}")
    if buf.asid in ctx.dirty_asids:
        raise CommandError(Status.DFFLUSH_REQUIRED, f"ASID {buf.asid} needs DF_FLUSH before reuse")
    with port_errors():
        ctx.port.program_key(buf.asid, bytes(guest.vek))
    guest.asid = buf.asid


def _secrets_page(guest: SnpGuest) -> bytes:
    page = bytearray(PAGE)
    page[0:4] = SECRETS_VERSION.to_bytes(4, "little")
    page[0x10:0x20] = guest.gosvw
    for i, key in enumerate(guest.vmpck):
        page[0x20 + 0x20 * i:0x40 + 0x20 * i] = key
    return bytes(page)


def cmd_snp_launch_update(ctx: PspContext, buf: SnpLaunchUpdate) -> None:
    """Measure and encrypt one Pre-guest page; it becomes Guest-valid."""
    guest = _guest(ctx, buf.gctx_paddr, SNP_LAUNCH)
    if not guest.asid:
        raise CommandError(Status.INACTIVE, "SNP_ACTIVATE the guest before loading memory")
    if buf.page_size:
        raise CommandError(Status.INVALID_PAGE_SIZE, "only 4 KiB launch pages are supported")
    try:
        kind = SnpPageType(buf.page_type)
    except ValueError:
        raise CommandError(Status.INVALID_PARAM, f"page type {buf.page_type}") from None
    if buf.flags & 0x10:
        raise CommandError(Status.UNSUPPORTED, "IMI pages are not supported")
    if buf.vmpl_perms & 0xFF or any((buf.vmpl_perms >> s) & 0xFF & ~VMPL_PERMS_VALID
                                    for s in (8, 16, 24)):
        raise CommandError(Status.INVALID_PARAM, "VMPL permission bits 7:5 and the dword's "
                                                 "bits 7:0 are reserved")
    assigned, asid, gpa, size, immutable, validated, _vmsa = _rmp(ctx, buf.page_paddr)
    ctx.mem.outside_tmr(buf.page_paddr, PAGE)  # a TMR page the hypervisor made Pre-guest
    if not assigned or not immutable or validated:
        raise CommandError(Status.INVALID_PAGE_STATE, "the page is not in the Pre-guest state")
    if asid != guest.asid:
        raise CommandError(Status.INVALID_PAGE_OWNER, "the page is assigned to another ASID")
    if size != buf.page_size:
        raise CommandError(Status.INVALID_PAGE_SIZE, "RMP and command page sizes differ")
    if kind in (SnpPageType.NORMAL, SnpPageType.VMSA, SnpPageType.UNMEASURED, SnpPageType.CPUID):
        plain = ctx.mem.read(buf.page_paddr, PAGE)
    elif kind is SnpPageType.SECRETS:
        plain = _secrets_page(guest)
    else:
        plain = bytes(PAGE)
    if kind is SnpPageType.CPUID:
        _check_cpuid_page(ctx, buf.page_paddr, plain)
    # The VMPL1-3 masks are measured (PAGE_INFO) but not kept: this platform's RMP holds no
    # VMPL permissions, and its guests run at VMPL0 only.
    guest.ld = snp_extend(guest.ld, plain, kind, gpa, buf.vmpl_perms)
    if kind is SnpPageType.VMSA:
        plain = _seal_vmsa(ctx, buf.page_paddr, plain)
    ctx.mem.write_guest(guest, buf.page_paddr, plain)  # type: ignore[arg-type]
    _rmp_set(ctx, buf.page_paddr, True, guest.asid, gpa, False, True, kind is SnpPageType.VMSA)


def _check_cpuid_page(ctx: PspContext, spa: int, page: bytes) -> None:
    """INVALID_PARAM unless the CPUID table in `page` keeps to the platform's CPUID policy; the
    corrected table is then written over the page with a plain (C=0) write, and nothing else
    changes: the page stays Pre-guest, for the hypervisor to reclaim and read."""
    with port_errors():
        corrected = sanitize_cpuid_page(page, ctx.port.host_cpuid)
    changes = snp_cpuid_changes(page, corrected)
    if changes:
        ctx.mem.write(spa, corrected)
        more = f" (and {len(changes) - 1} more)" if len(changes) > 1 else ""
        raise CommandError(Status.INVALID_PARAM, f"CPUID page refused: {changes[0]}{more}")


def _seal_vmsa(ctx: PspContext, spa: int, page: bytes) -> bytes:
    """The VMSA edits the CPU's VMRUN check relies on (hv/hw/vmsa.py), as for SEV-ES: a TMR
    slot holding the page's integrity value. On SNP hardware the RMP's VMSA bit and the page's
    guest ownership protect the save area; here both hold (the page is assigned, so host writes
    fail) and the TMR check is kept, so one CPU path serves ES and SNP guests."""
    if ctx.tmr is None:
        raise CommandError(Status.INVALID_CONFIG, "the VMSA needs the TMR given at INIT")
    edited = bytearray(page)
    slot = _tmr_slot(ctx, spa)
    edited[VMSA_TMR_RESERVED:VMSA_TMR_RESERVED + 8] = bytes(8)
    edited[VMSA_TMR_SLOT:VMSA_TMR_SLOT + 8] = slot.to_bytes(8, "little")
    ctx.mem.write_tmr(slot, (spa | 1).to_bytes(8, "little") + vmsa_integrity(edited))
    return bytes(edited)


def cmd_snp_launch_finish(ctx: PspContext, buf: SnpLaunchFinish) -> None:
    """LAUNCH -> RUNNING, after checking the guest owner's ID block when one is given.

    The checks run in the order of AMD's 1.55 firmware (`snp_mcmd_launch_finish`), and all of
    them before anything changes: a refused finish leaves the guest in LAUNCH, and the
    hypervisor may finish it again."""
    if buf.flags & SnpLaunchFinish.RESERVED:
        raise CommandError(Status.INVALID_PARAM, "SNP_LAUNCH_FINISH flag bits 63:3 are reserved")
    guest = _guest(ctx, buf.gctx_paddr, SNP_LAUNCH)
    if buf.vcek_disabled:
        raise CommandError(Status.UNSUPPORTED, "VCEK_DISABLED needs a VLEK, which this platform "
                                               "does not have")
    if buf.auth_key_en and not buf.id_block_en:
        # AMD's firmware would record AUTHOR_KEY_EN with a zero digest: a report claiming an
        # author key nobody checked. Linux never sends it; refused here.
        raise CommandError(Status.INVALID_PARAM, "AUTH_KEY_EN without ID_BLOCK_EN")
    identity = _check_id_block(ctx, guest, buf) if buf.id_block_en else None
    if identity is not None:
        (guest.family_id, guest.image_id, guest.guest_svn, guest.id_key_digest,
         guest.author_key_digest) = identity
    guest.author_key_en = buf.auth_key_en
    guest.host_data = buf.host_data
    guest.state = SNP_RUNNING


def _check_id_block(ctx: PspContext, guest: SnpGuest,
                    buf: SnpLaunchFinish) -> tuple[bytes, bytes, int, bytes, bytes]:
    """The ID block's checks (es-snp-reference 3.6); what the report will carry from it:
    (family_id, image_id, guest_svn, ID_KEY_DIGEST, AUTHOR_KEY_DIGEST). Like AMD's firmware
    this does not check the block's version field (the owner's tools write 1); the signature
    covers it."""
    block_raw = ctx.mem.read(buf.id_block_paddr, ID_BLOCK_SIZE)
    auth_raw = ctx.mem.read(buf.id_auth_paddr, ID_AUTH_SIZE)
    block, auth = SnpIdBlock.decode(block_raw), SnpIdAuth.decode(auth_raw)
    if block.ld != guest.ld:
        raise CommandError(Status.BAD_MEASUREMENT, "the ID block's launch digest is not the "
                                                   "guest's")
    if block.policy != guest.policy:
        raise CommandError(Status.POLICY_FAILURE, f"the ID block's policy 0x{block.policy:x} is "
                                                  f"not the guest's 0x{guest.policy:x}")
    if auth.id_key_algo != ID_KEY_ALGO_ECDSA_P384_SHA384 or (
            buf.auth_key_en and auth.auth_key_algo != ID_KEY_ALGO_ECDSA_P384_SHA384):
        raise CommandError(Status.INVALID_PARAM, "ID and author keys must be ECDSA P-384 with "
                                                 "SHA-384 (algorithm 1)")
    try:
        snp_id_verify(auth.id_key, auth.id_block_sig, block_raw)
    except SevWireError as exc:
        raise CommandError(Status.BAD_SIGNATURE, f"ID block signature: {exc}") from None
    author_digest = bytes(48)
    if buf.auth_key_en:
        try:
            snp_id_verify(auth.author_key, auth.id_key_sig, auth.id_key)
        except SevWireError as exc:
            raise CommandError(Status.BAD_SIGNATURE, f"ID key signature: {exc}") from None
        author_digest = snp_id_key_digest(auth.author_key)
    return (block.family_id, block.image_id, block.guest_svn, snp_id_key_digest(auth.id_key),
            author_digest)


def cmd_snp_decommission(ctx: PspContext, buf: SnpDecommission) -> None:
    """Forget the guest and its key; the context page returns to the hypervisor. The guest's
    pages stay assigned to the (now keyless) ASID until the hypervisor RMPUPDATEs them back,
    which it may, since none is immutable after launch."""
    guest = _guest(ctx, buf.gctx_paddr)
    if guest.asid:
        with port_errors():
            ctx.port.clear_key(guest.asid)
        ctx.dirty_asids.add(guest.asid)
    guest.wipe()
    ctx.mem.write(buf.gctx_paddr, bytes(PAGE))
    _rmp_set(ctx, buf.gctx_paddr, False, 0, 0, False, False, False)
    del _snp(ctx)[buf.gctx_paddr]


def cmd_snp_page_reclaim(ctx: PspContext, buf: SnpPageReclaim) -> None:
    """Clear the immutable bit of a Firmware, Pre-guest or Pre-swap page (nothing else changes:
    a Pre-guest page comes back to its guest unvalidated). An already mutable page is SUCCESS
    with no change; any other immutable page, and a live guest context, is INVALID_PAGE_STATE;
    a page of the live TMR is INVALID_ADDRESS."""
    guests = _snp(ctx)
    if buf.paddr & RECLAIM_RESERVED:
        raise CommandError(Status.INVALID_PARAM, "bits 11:1 of the reclaimed address are reserved")
    spa, page_size = buf.paddr & ~(PAGE - 1), buf.paddr & 1
    ctx.mem.outside_tmr(spa, PAGE)  # the TMR's Firmware pages stay immutable while it is live
    assigned, asid, gpa, size, immutable, validated, vmsa = _rmp(ctx, spa)
    if size != page_size:
        raise CommandError(Status.INVALID_PAGE_SIZE, "RMP and command page sizes differ")
    if not immutable:
        return
    firmware_page = assigned and asid == 0 and not validated and spa not in guests
    pre_guest_or_swap = assigned and asid != 0
    if not (firmware_page or pre_guest_or_swap):
        raise CommandError(Status.INVALID_PAGE_STATE, "not a Firmware, Pre-guest or Pre-swap page")
    _rmp_set(ctx, spa, True, asid, gpa, False, validated, vmsa)

"""SNP_DBG_DECRYPT and SNP_DBG_ENCRYPT: the hypervisor's debugger access to an SNP guest whose
policy allows it (SNP policy bit 19, DEBUG), one 4 KiB page per command.

The buffer is Linux's `sev_data_snp_dbg`: gctx_paddr, src_addr, dst_addr (24 bytes). The checks
follow AMD's 1.55 firmware (`snp_mcmd_dbg_decrypt`, `snp_mcmd_dbg_encrypt`); a refused command
reads and writes nothing.

1. SNP_INIT has run (INVALID_PLATFORM_STATE); `gctx_paddr` is a guest context (INVALID_GUEST).
2. The guest has been launched: a context still in INIT has no policy or key yet
   (INVALID_GUEST_STATE).
3. The policy has DEBUG, else POLICY_FAILURE. As firmware/_debug.py does for the SEV commands,
   this check comes before any address is looked at, so a guest that did not consent gives no
   answer that depends on the pages named. (AMD's firmware checks the pages first; for a request
   it would accept, the outcome is the same.)
4. The guest holds its ASID (INACTIVE).
5. Both addresses are 4 KiB-aligned system-physical pages in DRAM (INVALID_ADDRESS; AMD reports
   the set low bits as INVALID_PARAM, while hv's other SNP commands say INVALID_ADDRESS), and
   neither is in the SEV-ES TMR (INVALID_ADDRESS: firmware/_memory.py's check, the one every
   command applies to the addresses it is given). Then the page states (INVALID_PAGE_STATE), then
   the owner of the guest page (INVALID_PAGE_OWNER).

The guest page is the one the RMP assigns to this guest's ASID, and the key is this guest's own.
So a debug request can never decrypt or encrypt another guest's page, nor a Firmware/context
page, with this guest's key.

- DECRYPT. `src` is assigned to this guest (Pre-guest, Pre-swap, Guest-invalid or Guest-valid).
  `dst` is where the plaintext goes. AMD wants it in the Firmware state: Linux makes the page
  Firmware with RMPUPDATE, runs the command, then SNP_PAGE_RECLAIMs it back. hv instead asks for
  the same as for its other SNP outputs (SNP_GUEST_REQUEST's response page): a hypervisor-owned
  page (unassigned; else INVALID_PAGE_STATE) outside the SEV-ES TMR (INVALID_ADDRESS). Either
  way the firmware writes plaintext only where the host may write anyway: never a guest's page,
  a context page or the VMSA integrity slots. On hardware the Firmware state also stops the
  hypervisor from reassigning the page during the PSP's write. Here the command runs to the end
  before the hypervisor that issued it continues.
- ENCRYPT. `src` is read as the host reads it. Its RMP state is not checked (nor is it by AMD):
  a guest page reads as the ciphertext the host already sees. It must not be in the TMR, which
  the host cannot read (INVALID_ADDRESS). `dst` must be assigned to this guest *and immutable*
  (and, like `src` of DECRYPT, outside the TMR, whatever the RMP says of the page):
  Pre-guest or Pre-swap, as AMD requires and as SNP_LAUNCH_UPDATE requires for the pages it
  encrypts. The RMP entry is left as it is. To get such a page the hypervisor RMPUPDATEs the
  guest's page, which clears `validated`, and afterwards SNP_PAGE_RECLAIMs it (Guest-invalid).
  So even under DEBUG the hypervisor cannot change validated memory behind the guest's back:
  the guest's next access to the page is #VC, and it takes the new contents only by validating
  the page again.

Not modelled: 2 MiB RMP entries (hv has 4 KiB entries only), and the VmsaRegProt XOR that AMD
re-applies when a VMSA page is decrypted (hv never sets VmsaRegProt).
"""

from __future__ import annotations

from sevwire import SnpDbgDecrypt, SnpDbgEncrypt, SnpPolicy, Status

from firmware._context import PspContext
from firmware._errors import CommandError
from firmware._snp import PAGE, SNP_LAUNCH, SNP_RUNNING, SnpGuest, _guest, _rmp

__all__ = ["cmd_snp_dbg_decrypt", "cmd_snp_dbg_encrypt"]


def _debuggable(ctx: PspContext, gctx_paddr: int) -> SnpGuest:
    guest = _guest(ctx, gctx_paddr, SNP_LAUNCH, SNP_RUNNING)
    if not guest.policy & SnpPolicy.DEBUG:
        raise CommandError(Status.POLICY_FAILURE, "the guest policy does not allow debugging")
    if not guest.asid:
        raise CommandError(Status.INACTIVE, "the guest has no ASID")
    return guest


def _guest_page_owner(guest: SnpGuest, asid: int) -> None:
    if asid != guest.asid:
        raise CommandError(Status.INVALID_PAGE_OWNER, "the page belongs to another guest")


def cmd_snp_dbg_decrypt(ctx: PspContext, buf: SnpDbgDecrypt) -> None:
    """The plaintext of this guest's page `src_addr` into the hypervisor page `dst_addr`."""
    guest = _debuggable(ctx, buf.gctx_paddr)
    src_assigned, src_asid, *_ = _rmp(ctx, buf.src_addr)
    dst_assigned, *_ = _rmp(ctx, buf.dst_addr)
    ctx.mem.outside_tmr(buf.src_addr, PAGE)
    ctx.mem.outside_tmr(buf.dst_addr, PAGE)
    if not src_assigned or src_asid == 0:
        raise CommandError(Status.INVALID_PAGE_STATE, "the source is not a guest page")
    if dst_assigned:
        raise CommandError(Status.INVALID_PAGE_STATE, "the destination must be a hypervisor page")
    _guest_page_owner(guest, src_asid)
    plain = ctx.mem.read_guest(guest, buf.src_addr, PAGE)  # type: ignore[arg-type]
    ctx.mem.write(buf.dst_addr, plain)


def cmd_snp_dbg_encrypt(ctx: PspContext, buf: SnpDbgEncrypt) -> None:
    """The plaintext page `src_addr`, encrypted with the guest key, into its Pre-guest page
    `dst_addr`."""
    guest = _debuggable(ctx, buf.gctx_paddr)
    _rmp(ctx, buf.src_addr)
    dst_assigned, dst_asid, _gpa, _size, dst_immutable, *_ = _rmp(ctx, buf.dst_addr)
    ctx.mem.outside_tmr(buf.src_addr, PAGE)
    ctx.mem.outside_tmr(buf.dst_addr, PAGE)
    if not dst_assigned or dst_asid == 0 or not dst_immutable:
        raise CommandError(Status.INVALID_PAGE_STATE,
                           "the destination must be a Pre-guest or Pre-swap page")
    _guest_page_owner(guest, dst_asid)
    plain = ctx.mem.read(buf.src_addr, PAGE)
    ctx.mem.write_guest(guest, buf.dst_addr, plain)  # type: ignore[arg-type]

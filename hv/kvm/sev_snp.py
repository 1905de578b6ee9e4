"""SEV-SNP operations of the hypervisor (KVM_SEV_SNP_*): SNP_INIT, the launch, RMPUPDATE, and
KVM_SEV_DBG_DECRYPT / KVM_SEV_DBG_ENCRYPT for an SNP guest.

The hypervisor's part of SNP integrity is small and visible here: before the PSP may measure a
page, KVM makes it Pre-guest with RMPUPDATE (assigned to the guest's ASID at one GPA, immutable),
then asks for SNP_LAUNCH_UPDATE, which makes it Guest-valid. Everything else it can do to guest
memory is RMPUPDATE, which the machine answers by clearing `validated`: it can take pages away,
never hand them back unnoticed.

A CPUID page (`launch_update_cpuid`) is the one launch page the PSP may refuse for its contents:
it checks the table against the platform's CPUID and, when it refuses, writes the corrected table
into the page in plaintext. KVM then reclaims the page and hands the correction to user space;
here it comes back as CpuidPageRejected.

Debugging (only for a guest whose SNP policy has DEBUG) goes through the PSP one page at a time:
SNP_DBG_DECRYPT writes the plaintext into a hypervisor page; SNP_DBG_ENCRYPT writes only into a
Pre-guest page, so a debug write takes the page away from the guest (RMPUPDATE) and gives it back
unvalidated (SNP_PAGE_RECLAIM): the guest must PVALIDATE it again to use the new contents.
"""

from __future__ import annotations

import struct

from sevwire import (SNP_CPUID_PAGE_SIZE, SNP_POLICY_DEFAULT, Cmd, SnpActivate, SnpDbgDecrypt,
                     SnpDbgEncrypt, SnpDecommission, SnpGctxCreate, SnpGuestRequest,
                     SnpLaunchFinish, SnpLaunchStart, SnpLaunchUpdate, SnpPageReclaim,
                     SnpPageType, Status, snp_cpuid_changes)

from hv.hw.rmp import RmpEntry
from hv.kvm.errors import KvmError
from hv.kvm.sev import FirmwareError, SevDevice

__all__ = ["CpuidPageRejected", "RmpUpdateError", "SnpGuest", "page_state_change",
           "page_state_change_msr", "psc_convert_page", "rmp_make_private", "rmp_make_shared",
           "snp_init"]

_PAGE = 0x1000


class RmpUpdateError(KvmError):
    """RMPUPDATE refused (an immutable page, a bad entry)."""


class CpuidPageRejected(FirmwareError):
    """SNP_LAUNCH_UPDATE refused a CPUID page (INVALID_PARAM): `corrected` is the page as the
    PSP corrected it, `changes` what it changed, one line each; the message lists them all."""

    def __init__(self, corrected: bytes, changes: list[str]):
        super().__init__(Cmd.SNP_LAUNCH_UPDATE, Status.INVALID_PARAM)
        Exception.__init__(self, "the PSP refused the CPUID page: " + "; ".join(changes))
        self.corrected = corrected
        self.changes = tuple(changes)


def snp_init(dev: SevDevice) -> None:
    """SNP_INIT once per machine, before the legacy INIT (as Linux's sev-dev does)."""
    if not dev.kvm.machine.snp_enabled:
        dev.issue(Cmd.SNP_INIT)


def _rmpupdate(machine, spa: int, entry: RmpEntry) -> None:
    status = machine.rmpupdate(spa, entry)
    if status:
        raise RmpUpdateError(f"RMPUPDATE of {spa:#x} failed with status {status}")


def rmp_make_private(machine, spa: int, asid: int, gpa: int, immutable: bool = False) -> None:
    """Assign a host page to a guest at `gpa` (not validated: the guest must PVALIDATE it)."""
    _rmpupdate(machine, spa, RmpEntry(assigned=True, asid=asid, gpa=gpa, immutable=immutable))


def rmp_make_shared(machine, spa: int) -> None:
    """Give a page back to the hypervisor (its contents stay ciphertext)."""
    _rmpupdate(machine, spa, RmpEntry())


class SnpGuest:
    """The KVM_SEV_SNP_LAUNCH_* operations of one sev-snp VM."""

    def __init__(self, vm, dev: SevDevice, policy: int = SNP_POLICY_DEFAULT):
        if not vm.type.snp:
            raise KvmError(f"SNP launch for a VM of type {vm.type}")
        self.vm = vm
        self.dev = dev
        self.policy = policy
        self.gctx = 0
        self._msg_pages: tuple[int, int] | None = None
        self._dbg_page: int | None = None  # a hypervisor page the PSP's debug commands go through
        self.certs: bytes | None = None  # the extended guest request's table, made when first asked

    @property
    def machine(self):
        return self.vm.kvm.machine

    def launch_start(self) -> None:
        """SNP_GCTX_CREATE, SNP_LAUNCH_START, SNP_ACTIVATE."""
        self.gctx = self.vm.kvm.alloc(_PAGE)
        self.dev.issue(Cmd.SNP_GCTX_CREATE, SnpGctxCreate(gctx_paddr=self.gctx))
        self.dev.issue(Cmd.SNP_LAUNCH_START, SnpLaunchStart(gctx_paddr=self.gctx,
                                                            policy=self.policy))
        self.dev.issue(Cmd.SNP_ACTIVATE, SnpActivate(gctx_paddr=self.gctx, asid=self.vm.asid))
        self.vm.snp = self

    def launch_update(self, gpa: int, page_type: int = SnpPageType.NORMAL,
                      spa: int | None = None, vmpl_perms: tuple[int, int, int] = (0, 0, 0)) -> None:
        """RMPUPDATE the page to Pre-guest, then SNP_LAUNCH_UPDATE it (one 4 KiB page).
        `vmpl_perms` = the VMPL1, VMPL2, VMPL3 permission masks (KVM's `vmpl1_perms`...), which
        the PSP measures with the page."""
        if spa is None:
            spa = self.vm.gpa_to_spa(gpa)
        rmp_make_private(self.machine, spa, self.vm.asid, gpa, immutable=True)
        self.dev.issue(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
            gctx_paddr=self.gctx, flags=SnpLaunchUpdate.make_flags(page_type), page_paddr=spa,
            vmpl_perms=SnpLaunchUpdate.make_perms(*vmpl_perms)))

    def launch_update_cpuid(self, gpa: int, page: bytes) -> None:
        """Launch the CPUID page `page` (4 KiB, sevwire.encode_snp_cpuid_page) at `gpa`: write
        it into guest memory, RMPUPDATE it to Pre-guest, SNP_LAUNCH_UPDATE it with type CPUID.

        If the PSP refuses the table (INVALID_PARAM), the page is reclaimed and given back to
        the hypervisor (SNP_PAGE_RECLAIM, then RMPUPDATE to shared, as KVM does), and the
        corrected table the PSP wrote there is raised as CpuidPageRejected. On any other
        failure the page is given back too (if the PSP lets it go) and the FirmwareError
        raised."""
        if len(page) != SNP_CPUID_PAGE_SIZE:
            raise KvmError(f"a CPUID page is {SNP_CPUID_PAGE_SIZE} bytes, not {len(page)}")
        spa = self.vm.gpa_to_spa(gpa)
        self.vm.write_gpa(gpa, page)
        rmp_make_private(self.machine, spa, self.vm.asid, gpa, immutable=True)
        status, _ = self.dev.issue(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
            gctx_paddr=self.gctx, flags=SnpLaunchUpdate.make_flags(SnpPageType.CPUID),
            page_paddr=spa), check=False)
        if status == Status.SUCCESS:
            return
        reclaimed, _ = self.dev.issue(Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(paddr=spa),
                                      check=False)
        if reclaimed != Status.SUCCESS:  # the page stays immutable (KVM leaks it then)
            raise FirmwareError(Cmd.SNP_LAUNCH_UPDATE, status)
        rmp_make_shared(self.machine, spa)
        corrected = self.vm.read_gpa(gpa, _PAGE)  # the PSP wrote it without a key: a host read
        changes = snp_cpuid_changes(page, corrected) if status == Status.INVALID_PARAM else []
        if changes:
            raise CpuidPageRejected(corrected, changes)
        raise FirmwareError(Cmd.SNP_LAUNCH_UPDATE, status)

    def launch_update_range(self, gpa: int, length: int,
                            page_type: int = SnpPageType.NORMAL) -> None:
        for off in range(0, length, _PAGE):
            self.launch_update(gpa + off, page_type)

    def launch_finish(self, host_data: bytes = bytes(32), id_block: bytes | None = None,
                      id_auth: bytes | None = None, auth_key_en: bool = False) -> None:
        """SNP_LAUNCH_FINISH; with the guest owner's ID block (0x60 bytes) and ID authentication
        structure (4 KiB) the PSP checks them first (FirmwareError BAD_MEASUREMENT,
        POLICY_FAILURE, BAD_SIGNATURE...: the guest then stays in LAUNCH). As KVM does, both are
        copied into hypervisor pages for the PSP to read; `auth_key_en` says the structure
        carries an author key."""
        from sevwire import ID_AUTH_SIZE, ID_BLOCK_SIZE

        if id_block is None:
            if id_auth is not None or auth_key_en:
                raise KvmError("an ID authentication structure needs an ID block")
            self.dev.issue(Cmd.SNP_LAUNCH_FINISH, SnpLaunchFinish(gctx_paddr=self.gctx,
                                                                  host_data=host_data))
            return
        if len(id_block) != ID_BLOCK_SIZE or id_auth is None or len(id_auth) != ID_AUTH_SIZE:
            raise KvmError(f"the ID block is {ID_BLOCK_SIZE} bytes and its authentication "
                           f"structure {ID_AUTH_SIZE}")
        host = self.machine.host
        block_spa, auth_spa = self.vm.kvm.alloc(_PAGE), self.vm.kvm.alloc(_PAGE)
        try:
            host.write(block_spa, bytes(id_block).ljust(_PAGE, b"\0"))
            host.write(auth_spa, bytes(id_auth))
            self.dev.issue(Cmd.SNP_LAUNCH_FINISH, SnpLaunchFinish(
                gctx_paddr=self.gctx, id_block_paddr=block_spa, id_auth_paddr=auth_spa,
                flags=SnpLaunchFinish.make_flags(id_block=True, auth_key=auth_key_en),
                host_data=host_data))
        finally:
            for spa in (block_spa, auth_spa):
                host.write(spa, bytes(_PAGE))
                self.vm.kvm.free(spa, _PAGE)

    def guest_request(self, request: bytes) -> tuple[int, bytes]:
        """SNP_GUEST_REQUEST for one guest message (the GHCB exit 0x80000011): copy the
        request into a hypervisor page, run the command, return (fw status, response page).
        The message is sealed with a VMPCK the hypervisor does not hold: it only carries it."""
        if len(request) > _PAGE:
            raise KvmError("a guest request is one page")
        if not self._msg_pages:
            self._msg_pages = (self.vm.kvm.alloc(_PAGE), self.vm.kvm.alloc(_PAGE))
        req, res = self._msg_pages
        host = self.machine.host
        host.write(req, bytes(request).ljust(_PAGE, b"\0"))
        host.write(res, bytes(_PAGE))
        status, _out = self.dev.issue(Cmd.SNP_GUEST_REQUEST, SnpGuestRequest(
            gctx_paddr=self.gctx, req_paddr=req, res_paddr=res), check=False)
        return int(status), host.read(res, _PAGE)

    def certificates(self) -> bytes:
        """The certificate table the extended guest request hands the guest: unless one was
        set, the platform's VCEK, ASK and ARK (SevDevice.snp_certificates)."""
        if self.certs is None:
            self.certs = self.dev.snp_certificates()
        return self.certs

    def pages_shared(self, gpa: int, npages: int) -> bool:
        """[gpa, gpa + npages pages) are page-aligned hypervisor (shared) pages of guest memory."""
        if gpa % _PAGE or npages < 1:
            return False
        try:
            return not any(self.machine.rmpread(self.vm.gpa_to_spa(gpa + i * _PAGE)).assigned
                           for i in range(npages))
        except KvmError:
            return False

    def request_pages_shared(self, req_gpa: int, resp_gpa: int) -> bool:
        """Both guest-request GPAs are distinct, page-aligned hypervisor (shared) pages."""
        if req_gpa % _PAGE or resp_gpa % _PAGE or req_gpa == resp_gpa:
            return False
        try:
            return not any(self.machine.rmpread(self.vm.gpa_to_spa(gpa)).assigned
                           for gpa in (req_gpa, resp_gpa))
        except KvmError:
            return False

    # -- KVM_SEV_DBG_DECRYPT / KVM_SEV_DBG_ENCRYPT -----------------------------------------------
    def dbg_decrypt(self, gpa: int, length: int = _PAGE) -> bytes:
        """The plaintext of guest memory [gpa, gpa+length), one SNP_DBG_DECRYPT per page touched.

        FirmwareError POLICY_FAILURE unless the policy has DEBUG; INVALID_PAGE_STATE for a page
        the RMP does not give to a guest (a shared page: read it with `vm.read_gpa`)."""
        out = bytearray()
        for page, lo, hi in _page_pieces(gpa, length):
            out += self.dbg_decrypt_spa(self.vm.gpa_to_spa(page))[lo:hi]
        return bytes(out)

    def dbg_decrypt_spa(self, spa: int) -> bytes:
        """SNP_DBG_DECRYPT of one host page of this guest, e.g. its VMSA, which no slot maps.
        The hypervisor page the PSP wrote the plaintext into is zeroed again before returning."""
        dst = self._debug_page()
        host = self.machine.host
        try:
            self.dev.issue(Cmd.SNP_DBG_DECRYPT, SnpDbgDecrypt(gctx_paddr=self.gctx, src_addr=spa,
                                                              dst_addr=dst))
            return host.read(dst, _PAGE)
        finally:
            host.write(dst, bytes(_PAGE))

    def dbg_encrypt(self, gpa: int, data: bytes) -> None:
        """Write `data` into private guest memory at `gpa` through the PSP, page by page.

        Each page is first read back with SNP_DBG_DECRYPT (which also makes a guest without
        DEBUG refuse before the RMP is touched), patched, then RMPUPDATEd to Pre-guest,
        SNP_DBG_ENCRYPTed and SNP_PAGE_RECLAIMed: it returns to the guest Guest-invalid, so
        the guest sees the write as a #VC and takes it only by validating the page again."""
        data = bytes(data)
        pieces = [(page, self.vm.gpa_to_spa(page), lo, hi)
                  for page, lo, hi in _page_pieces(gpa, len(data))]
        for page, spa, _lo, _hi in pieces:  # all of them before any page is taken away
            entry = self.machine.rmpread(spa)
            if not (entry.assigned and entry.asid == self.vm.asid and entry.gpa == page):
                raise KvmError(f"GPA {page:#x} is not a private page of this guest")
        for page, spa, lo, hi in pieces:
            plain = bytearray(self.dbg_decrypt_spa(spa))
            plain[lo:hi] = data[page + lo - gpa:page + hi - gpa]
            self._dbg_encrypt_page(page, spa, bytes(plain))

    def _dbg_encrypt_page(self, gpa: int, spa: int, plain: bytes) -> None:
        src = self._debug_page()
        host = self.machine.host
        host.write(src, plain)
        try:
            rmp_make_private(self.machine, spa, self.vm.asid, gpa, immutable=True)
            try:
                status, _ = self.dev.issue(Cmd.SNP_DBG_ENCRYPT, SnpDbgEncrypt(
                    gctx_paddr=self.gctx, src_addr=src, dst_addr=spa), check=False)
            finally:
                reclaimed, _ = self.dev.issue(Cmd.SNP_PAGE_RECLAIM, SnpPageReclaim(paddr=spa),
                                              check=False)
        finally:
            host.write(src, bytes(_PAGE))
        if status != Status.SUCCESS:
            raise FirmwareError(Cmd.SNP_DBG_ENCRYPT, status)
        if reclaimed != Status.SUCCESS:
            raise FirmwareError(Cmd.SNP_PAGE_RECLAIM, reclaimed)

    def _debug_page(self) -> int:
        if self._dbg_page is None:
            self._dbg_page = self.vm.kvm.alloc(_PAGE)
        return self._dbg_page

    def decommission(self) -> None:
        if self._dbg_page is not None:
            self.vm.kvm.free(self._dbg_page, _PAGE)
            self._dbg_page = None
        if self.gctx:
            self.dev.issue(Cmd.SNP_DECOMMISSION, SnpDecommission(gctx_paddr=self.gctx),
                           check=False)
            # The ASID stays dirty until a flush: without one the next guest given it fails
            # SNP_ACTIVATE with DFFLUSH_REQUIRED (KVM flushes before reusing ASIDs too).
            self.dev.issue(Cmd.DF_FLUSH, check=False)
            self.gctx = 0
            if self.vm.snp is self:
                self.vm.snp = None


def _page_pieces(gpa: int, length: int):
    """(page GPA, start, end) of each 4 KiB page the range [gpa, gpa+length) touches."""
    if gpa < 0 or length < 0:
        raise KvmError(f"bad guest range {gpa:#x}+{length:#x}")
    end = gpa + length
    page = gpa & ~(_PAGE - 1)
    while page < end:
        yield page, max(gpa, page) - page, min(end, page + _PAGE) - page
        page += _PAGE


PSC_PRIVATE, PSC_SHARED, PSC_PSMASH, PSC_UNSMASH = 1, 2, 3, 4
PSC_ERR_BAD = 1  # MSR protocol response error: a GFN outside guest memory or an unknown operation


def psc_convert_page(vm, gpa: int, op: int) -> bool:
    """One 4 KiB page-state change, the part the GHCB MSR protocol (0x014) and the Page State
    Change NAE (0x80000010) share: RMPUPDATE the page at `gpa` to shared (hypervisor-owned;
    its contents stay ciphertext) or to private (assigned to the guest at `gpa`, not
    validated: the guest PVALIDATEs it after the change). The nested page table needs no
    change: it maps the GPA to the same host page either way, and which view the guest uses
    is its own page tables' C-bit. False, with nothing changed, when `gpa` is no page of
    guest memory, `op` is neither, or RMPUPDATE refuses (an immutable page)."""
    if gpa % _PAGE or op not in (PSC_PRIVATE, PSC_SHARED):
        return False
    try:
        spa = vm.gpa_to_spa(gpa)
        if op == PSC_SHARED:
            rmp_make_shared(vm.kvm.machine, spa)
        else:
            rmp_make_private(vm.kvm.machine, spa, vm.asid, gpa)
    except KvmError:
        return False
    return True


def page_state_change_msr(vm, msr: int) -> int:
    """The GHCB MSR protocol's page state change (0x014) for one 4 KiB page (GFN [51:12],
    operation [55:52]). Returns the 0x015 response: error code [63:32], 0 = done."""
    gpa = msr & 0x000F_FFFF_FFFF_F000
    op = (msr >> 52) & 0xF
    if not psc_convert_page(vm, gpa, op):
        return PSC_ERR_BAD << 32 | 0x015
    return 0x015


# -- the Page State Change NAE event (VMGEXIT 0x80000010) ------------------------------------------
PSC_HEADER_SIZE = 8  # {u16 cur_entry; u16 end_entry; u32 reserved}
PSC_ENTRY_SIZE = 8
PSC_MAX_ENTRIES = 253  # header + 253 entries fill the GHCB's 2032-byte shared buffer
PSC_OK = 0
PSC_ERR_INVALID_HDR = 1 << 32 | 1
PSC_ERR_INVALID_ENTRY = 1 << 32 | 2
PSC_ERR_GENERIC = 0x100 << 32

_ENTRY_CUR_PAGE = 0xFFF  # [11:0] pages of the entry already done
_ENTRY_GFN_SHIFT, _ENTRY_GFN_MASK = 12, (1 << 40) - 1  # [51:12]
_ENTRY_OP_SHIFT = 52  # [55:52]
_ENTRY_2M = 1 << 56  # [56] pagesize
_ENTRY_RESERVED = ~((1 << 57) - 1) & 0xFFFF_FFFF_FFFF_FFFF  # [63:57]


def page_state_change(vm, buf: bytearray, off: int, ghcb_gpa: int | None = None) -> int:
    """The GHCB Page State Change NAE (0x80000010) on the PSC buffer at buf[off:], a copy of
    guest memory the caller has checked holds the header and entries 0..end_entry; the header
    and entries are updated in `buf` as KVM updates the guest's buffer. Returns sw_exit_info_2.

    Entries cur_entry..end_entry are processed in order. For each: cur_page (the pages of the
    entry already done) and the GFN are checked, then the remaining 4 KiB pages are converted
    one RMPUPDATE at a time (a 2 MiB entry, pagesize = 1, is done as 512 4 KiB conversions: the
    RMP has 4 KiB entries only), cur_page counts them, and cur_entry moves past the entry when
    it is finished. PSMASH (3) and UNSMASH (4) are finished at once without doing anything, as
    in KVM (there are no 2 MiB RMP entries to smash). Processing stops at the first entry that
    cannot be done, with cur_entry on it: cur_page > the entry's pages, a GFN not aligned to
    its size, an unknown operation or reserved bits 63:57 set are a bad entry; a range not
    wholly in guest memory (checked before any of its pages is touched), the GHCB's own page
    made private (the answer could not be written) or an RMPUPDATE refused are the generic
    error. A header with end_entry >= 253 or its reserved word set is a bad header and nothing
    is done; cur_entry > end_entry leaves nothing to do (KVM answers 0)."""
    cur, end, reserved = struct.unpack_from("<HHI", buf, off)
    if end >= PSC_MAX_ENTRIES or reserved:
        return PSC_ERR_INVALID_HDR
    while cur <= end:
        at = off + PSC_HEADER_SIZE + PSC_ENTRY_SIZE * cur
        entry = int.from_bytes(buf[at:at + PSC_ENTRY_SIZE], "little")
        done = entry & _ENTRY_CUR_PAGE
        gfn = (entry >> _ENTRY_GFN_SHIFT) & _ENTRY_GFN_MASK
        op = (entry >> _ENTRY_OP_SHIFT) & 0xF
        npages = 512 if entry & _ENTRY_2M else 1
        if (entry & _ENTRY_RESERVED or done > npages or gfn % npages
                or op not in (PSC_PRIVATE, PSC_SHARED, PSC_PSMASH, PSC_UNSMASH)):
            return PSC_ERR_INVALID_ENTRY
        if op in (PSC_PRIVATE, PSC_SHARED) and done < npages:
            first, last = (gfn + done) << 12, (gfn + npages - 1) << 12
            if not _in_guest_memory(vm, first, last + _PAGE):
                return PSC_ERR_GENERIC
            if (op == PSC_PRIVATE and ghcb_gpa is not None
                    and first <= ghcb_gpa <= last):
                return PSC_ERR_GENERIC
            while done < npages:
                if not psc_convert_page(vm, (gfn + done) << 12, op):
                    return PSC_ERR_GENERIC
                done += 1
                entry = (entry & ~_ENTRY_CUR_PAGE) | done
                buf[at:at + PSC_ENTRY_SIZE] = entry.to_bytes(PSC_ENTRY_SIZE, "little")
        else:  # PSMASH / UNSMASH, or an entry already finished: nothing to do
            entry = (entry & ~_ENTRY_CUR_PAGE) | npages
            buf[at:at + PSC_ENTRY_SIZE] = entry.to_bytes(PSC_ENTRY_SIZE, "little")
        cur += 1
        struct.pack_into("<H", buf, off, cur)
    return PSC_OK


def _in_guest_memory(vm, start: int, end: int) -> bool:
    """[start, end) lies wholly in guest memory (across adjacent slots too)."""
    try:
        return sum(n for _spa, n in vm.pieces(start, end - start)) == end - start
    except KvmError:
        return False

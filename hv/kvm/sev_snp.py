"""SEV-SNP operations of the hypervisor (KVM_SEV_SNP_*): SNP_INIT, the launch, RMPUPDATE, and
KVM_SEV_DBG_DECRYPT / KVM_SEV_DBG_ENCRYPT for an SNP guest.

The hypervisor's part of SNP integrity is small and visible here: before the PSP may measure a
page, KVM makes it Pre-guest with RMPUPDATE (assigned to the guest's ASID at one GPA, immutable),
then asks for SNP_LAUNCH_UPDATE, which makes it Guest-valid. Everything else it can do to guest
memory is RMPUPDATE, which the machine answers by clearing `validated`: it can take pages away,
never hand them back unnoticed.

Debugging (only for a guest whose SNP policy has DEBUG) goes through the PSP one page at a time:
SNP_DBG_DECRYPT writes the plaintext into a hypervisor page; SNP_DBG_ENCRYPT writes only into a
Pre-guest page, so a debug write takes the page away from the guest (RMPUPDATE) and gives it back
unvalidated (SNP_PAGE_RECLAIM): the guest must PVALIDATE it again to use the new contents.
"""

from __future__ import annotations

from sevwire import (SNP_POLICY_DEFAULT, Cmd, SnpActivate, SnpDbgDecrypt, SnpDbgEncrypt,
                     SnpDecommission, SnpGctxCreate, SnpGuestRequest, SnpLaunchFinish,
                     SnpLaunchStart, SnpLaunchUpdate, SnpPageReclaim, SnpPageType, Status)

from hv.hw.rmp import RmpEntry
from hv.kvm.kvm import KvmError
from hv.kvm.sev import FirmwareError, SevDevice

__all__ = ["RmpUpdateError", "SnpGuest", "rmp_make_private", "rmp_make_shared", "snp_init"]

_PAGE = 0x1000


class RmpUpdateError(KvmError):
    """RMPUPDATE refused (an immutable page, a bad entry)."""


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
        if vm.type != "sev-snp":
            raise KvmError(f"SNP launch for a VM of type {vm.type}")
        self.vm = vm
        self.dev = dev
        self.policy = policy
        self.gctx = 0
        self._msg_pages: tuple[int, int] | None = None
        self._dbg_page: int | None = None  # a hypervisor page the PSP's debug commands go through

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
                      spa: int | None = None) -> None:
        """RMPUPDATE the page to Pre-guest, then SNP_LAUNCH_UPDATE it (one 4 KiB page)."""
        if spa is None:
            spa = self.vm.gpa_to_spa(gpa)
        rmp_make_private(self.machine, spa, self.vm.asid, gpa, immutable=True)
        self.dev.issue(Cmd.SNP_LAUNCH_UPDATE, SnpLaunchUpdate(
            gctx_paddr=self.gctx, flags=SnpLaunchUpdate.make_flags(page_type), page_paddr=spa))

    def launch_update_range(self, gpa: int, length: int,
                            page_type: int = SnpPageType.NORMAL) -> None:
        for off in range(0, length, _PAGE):
            self.launch_update(gpa + off, page_type)

    def launch_finish(self, host_data: bytes = bytes(32)) -> None:
        self.dev.issue(Cmd.SNP_LAUNCH_FINISH, SnpLaunchFinish(gctx_paddr=self.gctx,
                                                              host_data=host_data))

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


PSC_PRIVATE, PSC_SHARED = 1, 2
PSC_ERR_BAD = 1  # response error: a GFN outside guest memory or an unknown operation


def page_state_change_msr(vm, msr: int) -> int:
    """The GHCB MSR protocol's page state change (0x014) for one 4 KiB page: RMPUPDATE it to
    shared (hypervisor-owned) or private (assigned to the guest, not validated: the guest
    PVALIDATEs it after the change). Returns the 0x015 response."""
    gpa = msr & 0x000F_FFFF_FFFF_F000
    op = (msr >> 52) & 0xF
    try:
        spa = vm.gpa_to_spa(gpa)
        if op == PSC_SHARED:
            rmp_make_shared(vm.kvm.machine, spa)
        elif op == PSC_PRIVATE:
            rmp_make_private(vm.kvm.machine, spa, vm.asid, gpa)
        else:
            return PSC_ERR_BAD << 32 | 0x015
    except KvmError:
        return PSC_ERR_BAD << 32 | 0x015
    return 0x015

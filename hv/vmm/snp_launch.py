"""The SEV-SNP launch as the VMM performs it (QEMU's sev-snp-guest, KVM_SEV_SNP_LAUNCH_*).

Design: every page of guest memory is assigned to the guest in the RMP before it runs, and only
the launched pages are validated.

1. SNP_INIT before the VM exists (the RMP must be on before an SNP vCPU is created).
2. SNP_GCTX_CREATE, SNP_LAUNCH_START with the SNP policy, SNP_ACTIVATE.
3. The pages of `hv.boot.snp_launch_pages` (boot page tables and image, then the VMSA) are
   written, RMPUPDATEd to Pre-guest and SNP_LAUNCH_UPDATEd: measured and Guest-valid.
4. The rest of guest memory is RMPUPDATEd to assigned-but-not-validated, except the boot
   information page, which stays hypervisor-owned because the hypervisor writes it (shared).
   The guest PVALIDATEs its memory at boot (guests/lib/start.S) and turns the pages it shares
   back over to the hypervisor with page-state changes: its GHCB through the GHCB MSR protocol
   (0x014), shared_alloc pages through the page-state-change NAE (0x80000010).
5. SNP_LAUNCH_FINISH, with the guest owner's ID block and ID authentication structure when
   `hv run --id-block DIR` gave them (`hv owner id-block` makes them): the PSP refuses the launch
   unless the owner's ID key signed a block naming this launch digest and policy.

Assigning everything up front (rather than leaving pages hypervisor-owned until the guest asks
for them) keeps the guest's boot to one PVALIDATE per page and no exits, and leaves nothing the
guest could use while the hypervisor still owns it. There is no LAUNCH_SECRET in SNP: nothing is
injected, and the PSP's secrets page sits where SEV's secret page is. With --secret-file or
--owner-exec the guest asks for its secret after attestation instead (port 0x502,
hv.vmm.secret_release), and the boot information page says so (flags bit 0).
"""

from __future__ import annotations

from typing import Callable

from sevwire import INITIAL_VMSA_GPA, SnpIdAuth, SnpPageType

from hv import boot
from hv.kvm.sev import SevDevice
from hv.kvm.sev_snp import SnpGuest, rmp_make_private, rmp_make_shared, snp_init

__all__ = ["snp_launch", "snp_prepare", "snp_reclaim"]

_PAGE = 0x1000
Pages = list[tuple[int, bytes, int]]  # (GPA, 4 KiB contents, page type) in launch order


def snp_prepare(kvm) -> SevDevice:
    """SNP_INIT, then the legacy INIT with SEV-ES (for the TMR the VMSA check uses)."""
    dev = SevDevice(kvm)
    snp_init(dev)
    dev.ensure_init(es=True)
    return dev


def snp_launch(vmm, dev: SevDevice, rewrite: Callable[[Pages], Pages] | None = None,
               pages: Pages | None = None, keep_shared: tuple[int, ...] = (boot.BOOT_INFO_GPA,)
               ) -> SnpGuest:
    """Launch `vmm`'s guest; returns the launch context (for teardown). `pages` are what to
    launch when it is not the configured image (a kernel's, hv.vmm.linux): NORMAL, SECRETS and
    CPUID pages and the VMSA, in order; `keep_shared` the GPAs left to the hypervisor (the
    image's boot information page; none for a kernel). `rewrite` replaces the pages handed to
    SNP_LAUNCH_UPDATE (the attack lab's hypervisor uses it; hv never does)."""
    cfg, vm = vmm.config, vmm.vm
    machine = vm.kvm.machine
    guest = SnpGuest(vm, dev) if cfg.policy is None else SnpGuest(vm, dev, cfg.policy)
    guest.launch_start()
    launched = set()
    if pages is None:
        pages = boot.snp_launch_pages(cfg.image, cfg.mem_size, vm.cbitpos)
    if rewrite is not None:
        pages = rewrite(pages)
    for gpa, contents, kind in pages:
        if kind == SnpPageType.VMSA:
            spa = vm.kvm.alloc(_PAGE)
            machine.host.write(spa, contents)
            guest.launch_update(INITIAL_VMSA_GPA, SnpPageType.VMSA, spa=spa)
            vmm.vcpu.attach_vmsa(spa)
            continue
        if kind == SnpPageType.CPUID:
            guest.launch_update_cpuid(gpa, contents)  # CpuidPageRejected: the PSP's corrections
        else:
            vm.write_gpa(gpa, contents)
            guest.launch_update(gpa, kind)
        launched.add(gpa)
    for s in vm.slots.values():
        for off in range(0, s.size, _PAGE):
            gpa = s.gpa + off
            if gpa not in launched and gpa not in keep_shared:
                rmp_make_private(machine, s.spa + off, vm.asid, gpa)
    author_key = False
    id_block = getattr(cfg, "id_block", None)
    if id_block is not None:
        author_key = _has_author_key(cfg.id_auth)
        guest.launch_finish(id_block=id_block, id_auth=cfg.id_auth, auth_key_en=author_key)
    else:
        guest.launch_finish()
    digest = boot.snp_pages_digest(pages)  # what the PSP measured
    vmm.launch_info = {"mode": vm.type, "asid": vm.asid, "policy": guest.policy,
                       "digest": digest.hex(), "pages_launched": len(launched) + 1,
                       "secret_injected": False, "id_block": id_block is not None,
                       "author_key": author_key}
    return guest


def _has_author_key(id_auth: bytes | None) -> bool:
    """AUTH_KEY_EN: the ID authentication structure carries an author key (`hv owner id-block
    --author-key` fills the field; without one it stays zero)."""
    return id_auth is not None and any(SnpIdAuth.decode(id_auth).author_key)


def snp_reclaim(vm, guest: SnpGuest) -> None:
    """Teardown: SNP_DECOMMISSION, then every guest page (and the VMSA) back to the hypervisor,
    so the host can reuse the memory."""
    guest.decommission()
    machine = vm.kvm.machine
    for s in vm.slots.values():
        for off in range(0, s.size, _PAGE):
            rmp_make_shared(machine, s.spa + off)
    for v in vm.vcpus:
        if v.vmsa_spa is not None:
            rmp_make_shared(machine, v.vmsa_spa)



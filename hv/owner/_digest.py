"""The expected launch digest of an image or a Linux kernel, computed offline from the files alone.

Which bytes the VMM measures, and in which order, is defined by `hv.boot.launch_regions` (the
same pure function the VMM uses to launch), so the owner and the VMM cannot drift apart; the
digest is SHA-256 over the concatenated plaintext of those regions, as the PSP's LAUNCH_UPDATE_DATA
computes it. With the ES bit in the policy the digest continues over the initial VMSA pages
(`hv.boot.launch_vmsas`, one per vCPU), as LAUNCH_UPDATE_VMSA extends it: the owner thereby
checks the guest's entry registers (RIP = the image's entry point...) as well as its memory.
A kernel's launch is `hv.boot.kernel_plan` (the boot plan `hv run --kernel --sev` loads: entry
page tables with the C-bit at KERNEL_CBITPOS, hv's platform command line before the user's, the
platform's ACPI tables) measured as `hv.boot.kernel_launch_regions` lays it out, and under the
ES policy bit its initial VMSA (`hv.boot.kernel_launch_vmsa`: the 64-bit boot protocol's entry
registers, RIP = the kernel's entry point, RSI = boot_params) after them. Under SEV-SNP the
kernel's launch is `hv.boot.kernel_snp_launch_pages` of the SNP plan (the same writes plus the
validation stub and the CC blob, as whole pages, then the secrets, CPUID and VMSA pages), and the
digest the SHA-384 PAGE_INFO chain over them: the CPUID page's contents are checked by the PSP,
not measured, so the owner predicts the digest without the platform's CPUID table.
`hv.boot` is imported when needed, so the rest of the owner tools work without it.
"""

from __future__ import annotations

import dataclasses

import sevwire
from hv.owner._errors import OwnerInputError
from hv.owner._inputs import parse_size, read_file

__all__ = ["ImageDigest", "KernelDigest", "KernelSnpDigest", "image_digest", "kernel_digest",
           "kernel_files_digest", "kernel_files_snp_digest", "kernel_snp_digest", "load_launch_regions",
           "snp_measurement", "snp_pages"]


@dataclasses.dataclass(frozen=True)
class ImageDigest:
    digest: bytes
    regions: tuple[tuple[int, int], ...]  # (gpa, length) in measurement order
    vmsas: int = 0  # initial VMSA pages measured after the regions (SEV-ES)


@dataclasses.dataclass(frozen=True)
class KernelDigest:
    digest: bytes
    regions: tuple[tuple[int, int], ...]  # (gpa, length) in measurement order
    cmdline: str  # the whole command line the kernel gets (and the launch measures)
    mem_size: int
    cbitpos: int
    vmsas: int = 0  # initial VMSA pages measured after the regions (SEV-ES)


@dataclasses.dataclass(frozen=True)
class KernelSnpDigest:
    digest: bytes  # 48 bytes: the report's measurement
    pages: tuple[tuple[int, int], ...]  # (gpa, page type) in SNP_LAUNCH_UPDATE order
    cmdline: str  # the whole command line the kernel gets (and the launch measures)
    mem_size: int
    cbitpos: int


def load_launch_regions():
    """hv.boot.launch_regions, or an OwnerInputError saying it is not available."""
    try:
        from hv.boot import launch_regions
    except ImportError as exc:
        raise OwnerInputError(f"the launch layout (hv.boot.launch_regions) is not available: {exc}") from None
    return launch_regions


def image_digest(image: bytes, mem_size: int, cbitpos: int, policy: int = 0) -> ImageDigest:
    """SHA-256 over the plaintext of every measured region, in launch order."""
    launch_regions = load_launch_regions()
    es = bool(int(policy) & sevwire.Policy.ES)
    try:
        regions = launch_regions(image, mem_size, cbitpos)
        vmsas = _load_launch_vmsas()(image, mem_size) if es else []
    except (ValueError, TypeError) as exc:
        raise OwnerInputError(f"image: {exc}") from None
    digest = sevwire.LaunchDigest()
    for _, data in regions:
        digest.update(bytes(data))
    for page in vmsas:
        digest.update(bytes(page))
    return ImageDigest(digest.finalize(), tuple((int(gpa), len(data)) for gpa, data in regions), len(vmsas))


def _load_launch_vmsas():
    try:
        from hv.boot import launch_vmsas
    except ImportError as exc:
        raise OwnerInputError(f"the SEV-ES VMSA layout (hv.boot.launch_vmsas) is not available: {exc}") from None
    return launch_vmsas


def snp_pages(image: bytes, mem_size: int, cbitpos: int) -> list[tuple[int, bytes, int]]:
    """hv.boot.snp_launch_pages: (gpa, contents, page type) in SNP_LAUNCH_UPDATE order."""
    try:
        from hv.boot import snp_launch_pages
    except ImportError as exc:
        raise OwnerInputError(f"the SNP launch layout (hv.boot.snp_launch_pages) is not available: {exc}") from None
    try:
        return snp_launch_pages(image, mem_size, cbitpos)
    except (ValueError, TypeError) as exc:
        raise OwnerInputError(f"image: {exc}") from None


def snp_measurement(image: bytes, mem_size: int, cbitpos: int) -> bytes:
    """The 48-byte SNP launch digest of `image` (what the report's measurement must be)."""
    ld = bytes(48)
    for gpa, contents, kind in snp_pages(image, mem_size, cbitpos):
        ld = sevwire.snp_extend(ld, contents, kind, gpa)
    return ld


def _load_boot():
    """The hv.boot package (a kernel's boot plan and launch layout), or an OwnerInputError saying
    it is not available."""
    try:
        import hv.boot
        import hv.boot.bzimage
        import hv.boot.linux
    except ImportError as exc:
        raise OwnerInputError(f"the kernel boot plan (hv.boot.kernel_plan) is not available: {exc}") from None
    return hv.boot


def _kernel_plan(kernel: bytes, initrd: bytes | None, append: str, mem_size: int | None,
                 cbitpos: int | None, what: str, snp: bool):
    """(hv.boot, the plan `hv run --kernel` makes for an encrypted launch, the memory size it
    was made for: `mem_size` or, for None, the default). An OwnerInputError for a `cbitpos`
    other than KERNEL_CBITPOS (a kernel's C-bit is fixed) or a file that is no bzImage or does
    not fit."""
    boot = _load_boot()
    if cbitpos is not None and cbitpos != boot.KERNEL_CBITPOS:
        raise OwnerInputError(f"--cbitpos: hv launches a kernel with its C-bit at {boot.KERNEL_CBITPOS}, "
                              f"not {cbitpos}")
    if mem_size is None:
        mem_size = boot.linux.KERNEL_DEFAULT_MEM
    try:
        return boot, boot.kernel_plan(kernel, initrd, append, mem_size, encrypted=True, snp=snp), mem_size
    except boot.bzimage.BzImageError as exc:
        raise OwnerInputError(f"{what}: {exc}") from None


def kernel_digest(kernel: bytes, initrd: bytes | None, append: str, mem_size: int | None = None,
                  policy: int = 0, cbitpos: int | None = None, what: str = "kernel") -> KernelDigest:
    """The SEV launch digest of `kernel` (a bzImage) with `initrd` and `append` in `mem_size`
    bytes (None: `hv run --kernel`'s default): SHA-256 over every measured region in launch
    order and, with the ES policy bit, over the initial VMSA page after them (as `hv run --kernel
    --sev-es` measures). The C-bit is the kernel's (KERNEL_CBITPOS); a different `cbitpos` is
    refused. `what` names the kernel in the one-line error a file that is no bzImage (or does
    not fit) gives."""
    es = bool(int(policy) & sevwire.Policy.ES)
    boot, plan, mem_size = _kernel_plan(kernel, initrd, append, mem_size, cbitpos, what, snp=False)
    regions = tuple((gpa, len(data)) for gpa, data in boot.kernel_launch_regions(plan))
    return KernelDigest(boot.kernel_launch_digest(plan, es=es), regions, plan.cmdline, mem_size, plan.cbit,
                        vmsas=1 if es else 0)


def kernel_snp_digest(kernel: bytes, initrd: bytes | None, append: str, mem_size: int | None = None,
                      cbitpos: int | None = None, what: str = "kernel") -> KernelSnpDigest:
    """The SEV-SNP launch digest of `kernel` with `initrd` and `append` in `mem_size` bytes, as
    `hv run --kernel --sev-snp` launches it: the PAGE_INFO chain over its SNP_LAUNCH_UPDATE
    pages. The guest policy does not enter it (the report carries the policy beside it), and
    the CPUID page is measured by its type and GPA only. `cbitpos` and `what` as kernel_digest."""
    boot, plan, mem_size = _kernel_plan(kernel, initrd, append, mem_size, cbitpos, what, snp=True)
    pages = boot.kernel_snp_launch_pages(plan)
    return KernelSnpDigest(boot.snp_pages_digest(pages), tuple((gpa, kind) for gpa, _c, kind in pages),
                           plan.cmdline, mem_size, plan.cbit)


def _kernel_files(kernel: str, initrd: str | None, append: str | None, mem: str | None):
    """The kernel's and the initrd's bytes, the append string and the memory size as the user
    spelled them (None: `hv run --kernel`'s default): what `--kernel --initrd --append --mem`
    give, as kernel_digest's and kernel_snp_digest's first four arguments."""
    return (read_file(kernel, "kernel"), read_file(initrd, "initrd") if initrd is not None else None,
            append or "", parse_size(mem) if mem is not None else None)


def kernel_files_digest(kernel: str, initrd: str | None, append: str | None, mem: str | None,
                        policy: int = 0, cbitpos: int | None = None) -> KernelDigest:
    """kernel_digest of the files at these paths (`--kernel --initrd --append --mem`)."""
    return kernel_digest(*_kernel_files(kernel, initrd, append, mem), policy, cbitpos, what=f"kernel {kernel}")


def kernel_files_snp_digest(kernel: str, initrd: str | None, append: str | None, mem: str | None,
                            cbitpos: int | None = None) -> KernelSnpDigest:
    """kernel_snp_digest of the files at these paths (`--kernel --initrd --append --mem`)."""
    return kernel_snp_digest(*_kernel_files(kernel, initrd, append, mem), cbitpos, what=f"kernel {kernel}")

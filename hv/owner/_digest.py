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
registers, RIP = the kernel's entry point, RSI = boot_params) after them.
`hv.boot` is imported when needed, so the rest of the owner tools work without it.
"""

from __future__ import annotations

import dataclasses

import sevwire
from hv.owner._errors import OwnerInputError
from hv.owner._inputs import parse_size, read_file

__all__ = ["ImageDigest", "KernelDigest", "image_digest", "kernel_digest", "kernel_files_digest",
           "load_launch_regions", "snp_measurement", "snp_pages"]


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


def kernel_digest(kernel: bytes, initrd: bytes | None, append: str, mem_size: int | None = None,
                  policy: int = 0, cbitpos: int | None = None, what: str = "kernel") -> KernelDigest:
    """The SEV launch digest of `kernel` (a bzImage) with `initrd` and `append` in `mem_size`
    bytes (None: `hv run --kernel`'s default): SHA-256 over every measured region in launch
    order and, with the ES policy bit, over the initial VMSA page after them (as `hv run --kernel
    --sev-es` measures). The C-bit is the kernel's (KERNEL_CBITPOS); a different `cbitpos` is
    refused. `what` names the kernel in the one-line error a file that is no bzImage (or does
    not fit) gives."""
    es = bool(int(policy) & sevwire.Policy.ES)
    try:
        from hv.boot import KERNEL_CBITPOS, kernel_launch_digest, kernel_launch_regions, kernel_plan
        from hv.boot.bzimage import BzImageError
        from hv.boot.linux import KERNEL_DEFAULT_MEM
    except ImportError as exc:
        raise OwnerInputError(f"the kernel boot plan (hv.boot.kernel_plan) is not available: {exc}") from None
    if cbitpos is not None and cbitpos != KERNEL_CBITPOS:
        raise OwnerInputError(f"--cbitpos: hv launches a kernel with its C-bit at {KERNEL_CBITPOS}, not {cbitpos}")
    if mem_size is None:
        mem_size = KERNEL_DEFAULT_MEM
    try:
        plan = kernel_plan(kernel, initrd, append, mem_size, encrypted=True)
    except BzImageError as exc:
        raise OwnerInputError(f"{what}: {exc}") from None
    regions = tuple((gpa, len(data)) for gpa, data in kernel_launch_regions(plan))
    return KernelDigest(kernel_launch_digest(plan, es=es), regions, plan.cmdline, mem_size, KERNEL_CBITPOS,
                        vmsas=1 if es else 0)


def kernel_files_digest(kernel: str, initrd: str | None, append: str | None, mem: str | None,
                        policy: int = 0, cbitpos: int | None = None) -> KernelDigest:
    """kernel_digest of the files at these paths, with the memory size as the user spelled it
    (None: `hv run --kernel`'s default): what `--kernel --initrd --append --mem` give."""
    return kernel_digest(read_file(kernel, "kernel"), read_file(initrd, "initrd") if initrd is not None else None,
                         append or "", parse_size(mem) if mem is not None else None, policy, cbitpos,
                         what=f"kernel {kernel}")

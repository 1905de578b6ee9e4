"""The SEV-SNP launch layout and its digest, as pure functions of the image.

SNP measures whole 4 KiB pages (SNP_LAUNCH_UPDATE), each bound to its type and GPA, so the SEV
launch regions (16-byte granular) are widened here to the pages that hold them: every page that
any launch region touches is launched once, as NORMAL, in the order the regions first touch it,
with the contents memory holds there after all regions are written (zeros elsewhere). The boot
vCPU's VMSA follows as a VMSA page at INITIAL_VMSA_GPA, after the PSP's secrets page at 0x9000. Everything else of guest memory is not
launched: the guest validates it itself (PVALIDATE) before use.

The VMM launches exactly `snp_launch_pages`; the guest owner predicts `snp_launch_digest` from
the image file alone (`hv owner measure --snp`).
"""

from __future__ import annotations

from sevwire import INITIAL_VMSA_GPA, SnpPageType, snp_extend

from hv.boot._layout import PAGE, launch_regions
from hv.boot._vmsa import SEV_FEATURES_SNP, initial_vmsa, kernel_launch_vmsa
from hv.boot.linux import SNP_CPUID_GPA, SNP_SECRETS_GPA as KERNEL_SECRETS_GPA, LinuxBoot

__all__ = ["SEV_FEATURES_SNP", "kernel_snp_launch_digest", "kernel_snp_launch_pages",
           "snp_launch_digest", "snp_launch_pages", "snp_pages_digest"]

SNP_SECRETS_GPA = 0x9000
"""The secrets page (VMPCKs for guest messages), launched as SECRETS where SEV keeps its
LAUNCH_SECRET page, which SNP guests do not use. Its contents are the PSP's, measured as zeros."""


def snp_launch_pages(image: bytes, mem_size: int, cbitpos: int) -> list[tuple[int, bytes, int]]:
    """(gpa, 4 KiB contents, page type) in SNP_LAUNCH_UPDATE order; the VMSA last."""
    out = _normal_pages(launch_regions(image, mem_size, cbitpos))
    if all(gpa != SNP_SECRETS_GPA for gpa, _c, _k in out):
        out.append((SNP_SECRETS_GPA, bytes(PAGE), int(SnpPageType.SECRETS)))
    vmsa = initial_vmsa(image, mem_size, SEV_FEATURES_SNP)
    out.append((INITIAL_VMSA_GPA, vmsa, int(SnpPageType.VMSA)))
    return out


def _normal_pages(regions: list[tuple[int, bytes]]) -> list[tuple[int, bytes, int]]:
    """The pages `regions` touch, as NORMAL pages in the order the regions first touch them,
    each with what memory holds there after every region is written (zeros elsewhere)."""
    pages: dict[int, bytearray] = {}
    for gpa, data in regions:
        pos = 0
        while pos < len(data):
            a = gpa + pos
            page = a & ~(PAGE - 1)
            n = min(len(data) - pos, page + PAGE - a)
            buf = pages.setdefault(page, bytearray(PAGE))
            buf[a - page:a - page + n] = data[pos:pos + n]
            pos += n
    return [(gpa, bytes(buf), int(SnpPageType.NORMAL)) for gpa, buf in pages.items()]


def kernel_snp_launch_pages(plan: LinuxBoot, cpuid_page: bytes = bytes(PAGE)
                            ) -> list[tuple[int, bytes, int]]:
    """What `hv run --kernel --sev-snp` launches for an SNP plan (hv.boot.linux.kernel_plan with
    snp=True), in SNP_LAUNCH_UPDATE order: the pages the plan's writes touch (kernel, initrd,
    boot_params, command line, ACPI tables, entry page tables and GDT, the validation stub and
    the CC blob) as NORMAL pages in write order; the secrets page (SECRETS) and the CPUID page
    (CPUID, `cpuid_page`, which the VMM builds from the VM's CPUID table: its contents are
    checked by the PSP, not measured); the boot vCPU's VMSA, which starts in the stub."""
    if not plan.snp:
        raise ValueError("an SEV-SNP launch needs a plan made with snp=True")
    out = _normal_pages(plan.writes)
    out.append((KERNEL_SECRETS_GPA, bytes(PAGE), int(SnpPageType.SECRETS)))
    out.append((SNP_CPUID_GPA, bytes(cpuid_page), int(SnpPageType.CPUID)))
    out.append((INITIAL_VMSA_GPA, kernel_launch_vmsa(plan), int(SnpPageType.VMSA)))
    return out


def kernel_snp_launch_digest(plan: LinuxBoot) -> bytes:
    """The SHA-384 launch digest of kernel_snp_launch_pages(plan): the owner's prediction (the
    CPUID page's contents are not part of it)."""
    return snp_pages_digest(kernel_snp_launch_pages(plan))


def snp_launch_digest(image: bytes, mem_size: int, cbitpos: int) -> bytes:
    """The 48-byte SHA-384 launch digest the PSP computes for an SNP launch of `image`."""
    return snp_pages_digest(snp_launch_pages(image, mem_size, cbitpos))


def snp_pages_digest(pages: list[tuple[int, bytes, int]]) -> bytes:
    """The launch digest of SNP_LAUNCH_UPDATEs of `pages` (gpa, contents, type), in order."""
    ld = bytes(48)
    for gpa, contents, kind in pages:
        ld = snp_extend(ld, contents, kind, gpa)
    return ld

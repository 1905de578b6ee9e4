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
from hv.boot._vmsa import initial_vmsa

__all__ = ["SEV_FEATURES_SNP", "snp_launch_digest", "snp_launch_pages", "snp_pages_digest"]

SEV_FEATURES_SNP = 1  # VMSA SEV_FEATURES bit 0: SNPActive
SNP_SECRETS_GPA = 0x9000
"""The secrets page (VMPCKs for guest messages), launched as SECRETS where SEV keeps its
LAUNCH_SECRET page, which SNP guests do not use. Its contents are the PSP's, measured as zeros."""


def snp_launch_pages(image: bytes, mem_size: int, cbitpos: int) -> list[tuple[int, bytes, int]]:
    """(gpa, 4 KiB contents, page type) in SNP_LAUNCH_UPDATE order; the VMSA last."""
    pages: dict[int, bytearray] = {}
    for gpa, data in launch_regions(image, mem_size, cbitpos):
        pos = 0
        while pos < len(data):
            a = gpa + pos
            page = a & ~(PAGE - 1)
            n = min(len(data) - pos, page + PAGE - a)
            buf = pages.setdefault(page, bytearray(PAGE))
            buf[a - page:a - page + n] = data[pos:pos + n]
            pos += n
    out = [(gpa, bytes(buf), int(SnpPageType.NORMAL)) for gpa, buf in pages.items()]
    if SNP_SECRETS_GPA not in pages:
        out.append((SNP_SECRETS_GPA, bytes(PAGE), int(SnpPageType.SECRETS)))
    vmsa = initial_vmsa(image, mem_size, SEV_FEATURES_SNP)
    out.append((INITIAL_VMSA_GPA, vmsa, int(SnpPageType.VMSA)))
    return out


def snp_launch_digest(image: bytes, mem_size: int, cbitpos: int) -> bytes:
    """The 48-byte SHA-384 launch digest the PSP computes for an SNP launch of `image`."""
    return snp_pages_digest(snp_launch_pages(image, mem_size, cbitpos))


def snp_pages_digest(pages: list[tuple[int, bytes, int]]) -> bytes:
    """The launch digest of SNP_LAUNCH_UPDATEs of `pages` (gpa, contents, type), in order."""
    ld = bytes(48)
    for gpa, contents, kind in pages:
        ld = snp_extend(ld, contents, kind, gpa)
    return ld

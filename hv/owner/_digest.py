"""The expected launch digest of an image, computed offline from the image file alone.

Which bytes the VMM measures, and in which order, is defined by `hv.boot.launch_regions` (the
same pure function the VMM uses to launch), so the owner and the VMM cannot drift apart; the
digest is SHA-256 over the concatenated plaintext of those regions, as the PSP's LAUNCH_UPDATE_DATA
computes it. With the ES bit in the policy the digest continues over the initial VMSA pages
(`hv.boot.launch_vmsas`, one per vCPU), as LAUNCH_UPDATE_VMSA extends it: the owner thereby
checks the guest's entry registers (RIP = the image's entry point...) as well as its memory.
`hv.boot` is imported when needed, so the rest of the owner tools work without it.
"""

from __future__ import annotations

import dataclasses

import sevwire
from hv.owner._errors import OwnerInputError

__all__ = ["ImageDigest", "image_digest", "load_launch_regions", "snp_measurement", "snp_pages"]


@dataclasses.dataclass(frozen=True)
class ImageDigest:
    digest: bytes
    regions: tuple[tuple[int, int], ...]  # (gpa, length) in measurement order
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

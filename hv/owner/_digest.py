"""The expected launch digest of an image, computed offline from the image file alone.

Which bytes the VMM measures, and in which order, is defined by `hv.boot.launch_regions` (the
same pure function the VMM uses to launch), so the owner and the VMM cannot drift apart; the
digest is SHA-256 over the concatenated plaintext of those regions, as the PSP's LAUNCH_UPDATE_DATA
computes it. `hv.boot` is imported when needed, so the rest of the owner tools work without it.
"""

from __future__ import annotations

import dataclasses

import sevwire
from hv.owner._errors import OwnerInputError

__all__ = ["ImageDigest", "image_digest", "load_launch_regions"]


@dataclasses.dataclass(frozen=True)
class ImageDigest:
    digest: bytes
    regions: tuple[tuple[int, int], ...]  # (gpa, length) in measurement order


def load_launch_regions():
    """hv.boot.launch_regions, or an OwnerInputError saying it is not available."""
    try:
        from hv.boot import launch_regions
    except ImportError as exc:
        raise OwnerInputError(f"the launch layout (hv.boot.launch_regions) is not available: {exc}") from None
    return launch_regions


def image_digest(image: bytes, mem_size: int, cbitpos: int, policy: int = 0) -> ImageDigest:
    """SHA-256 over the plaintext of every measured region, in launch order."""
    if int(policy) & sevwire.Policy.ES:
        raise OwnerInputError("SEV-ES launch digests (VMSA pages) are not computed by the owner tools")
    launch_regions = load_launch_regions()
    try:
        regions = launch_regions(image, mem_size, cbitpos)
    except (ValueError, TypeError) as exc:
        raise OwnerInputError(f"image: {exc}") from None
    digest = sevwire.LaunchDigest()
    for _, data in regions:
        digest.update(bytes(data))
    return ImageDigest(digest.finalize(), tuple((int(gpa), len(data)) for gpa, data in regions))

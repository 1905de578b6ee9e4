"""The SEV and SEV-ES launch digest of an image or of a Linux kernel: what the guest owner expects
the PSP to measure.

It sits above both halves of the launch it covers, the memory layout (hv.boot._layout,
hv.boot.linux) and the initial register state (hv.boot._vmsa); the SEV-SNP digest is
hv.boot._snp's.
"""

from __future__ import annotations

import hashlib

from hv.boot._layout import launch_regions
from hv.boot._vmsa import kernel_launch_vmsa, launch_vmsas
from hv.boot.linux import LinuxBoot, kernel_launch_regions

__all__ = ["kernel_launch_digest", "launch_digest"]


def launch_digest(image: bytes, mem_size: int, cbitpos: int, es: bool = False) -> bytes:
    """GCTX.LD of a launch of `image`: SHA-256 over every measured byte in order.

    For SEV-ES (`es`) the digest continues over the initial VMSA pages after the image, as
    LAUNCH_UPDATE_VMSA extends it on hardware (hv.boot._vmsa.launch_vmsas)."""
    h = hashlib.sha256()
    for _gpa, data in launch_regions(image, mem_size, cbitpos):
        h.update(data)
    if es:
        for page in launch_vmsas(image, mem_size):
            h.update(page)
    return h.digest()


def kernel_launch_digest(plan: LinuxBoot, es: bool = False) -> bytes:
    """GCTX.LD of an SEV launch of a kernel plan (hv.boot.linux.kernel_plan): SHA-256 over
    kernel_launch_regions in order. For SEV-ES (`es`) the digest continues over the kernel's
    initial VMSA page (hv.boot._vmsa.kernel_launch_vmsa), which LAUNCH_UPDATE_VMSA measures
    after the memory."""
    h = hashlib.sha256()
    for _gpa, data in kernel_launch_regions(plan):
        h.update(data)
    if es:
        h.update(kernel_launch_vmsa(plan))
    return h.digest()

"""hv's boot protocol: what a guest finds in memory at entry, as pure functions of the image.

This module is shared by the VMM (which loads guests) and the guest owner (who predicts the
launch measurement from the image file alone), so it holds no state, no keys and touches no
machine. docs/guest-abi.md is the human-readable form of the constants here.
"""

from hv.boot._image import ImageError, LoadedImage, Segment, parse_image
from hv.boot._vmsa import initial_vmsa, kernel_launch_vmsa, launch_vmsas
from hv.boot._snp import (SEV_FEATURES_SNP, kernel_snp_launch_digest, kernel_snp_launch_pages,
                          snp_launch_digest, snp_launch_pages, snp_pages_digest)
from hv.boot._layout import (
    BOOT_INFO_GPA,
    BOOT_INFO_MAGIC,
    BOOT_INFO_SECRET_RELEASE,
    BOOT_STACK_TOP,
    IMAGE_BASE,
    MAX_MEM,
    MIN_MEM,
    PAGE_TABLES_GPA,
    SECRET_GPA,
    SECRET_MAX,
    boot_info,
    boot_page_tables,
    check_mem,
    image_regions,
    launch_regions,
)
from hv.boot._digest import kernel_launch_digest, launch_digest
from hv.boot.linux import KERNEL_CBITPOS, kernel_launch_regions, kernel_plan

__all__ = [
    "BOOT_INFO_GPA",
    "BOOT_INFO_MAGIC",
    "BOOT_INFO_SECRET_RELEASE",
    "BOOT_STACK_TOP",
    "IMAGE_BASE",
    "KERNEL_CBITPOS",
    "ImageError",
    "LoadedImage",
    "MAX_MEM",
    "MIN_MEM",
    "PAGE_TABLES_GPA",
    "SECRET_GPA",
    "SECRET_MAX",
    "Segment",
    "initial_vmsa",
    "launch_vmsas",
    "boot_info",
    "boot_page_tables",
    "check_mem",
    "image_regions",
    "kernel_launch_digest",
    "kernel_launch_regions",
    "kernel_launch_vmsa",
    "kernel_plan",
    "kernel_snp_launch_digest",
    "kernel_snp_launch_pages",
    "launch_digest",
    "launch_regions",
    "parse_image",
    "SEV_FEATURES_SNP",
    "snp_launch_digest",
    "snp_pages_digest",
    "snp_launch_pages",
]

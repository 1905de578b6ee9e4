"""SEV-SNP wire formats (es-snp-reference 3.3, 3.4): command buffers, page types, the guest
policy and the page-granular SHA-384 launch digest.

The launch digest is the one thing the guest owner and the PSP must compute byte for byte alike,
so it lives here, pure: the firmware extends it at every SNP_LAUNCH_UPDATE and the owner (through
hv.boot) predicts it offline. Each step hashes PAGE_INFO, which binds the previous digest, the
page's contents (SHA-384 of its 4 KiB for NORMAL and VMSA pages, zeros for the others), its page
type and the GPA it is launched at: moving, retyping or changing any page changes the digest.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import struct
from typing import ClassVar

from sevwire._buffers import CommandBuffer

__all__ = [
    "INITIAL_VMSA_GPA", "PAGE_INFO_SIZE", "SNP_POLICY_DEFAULT", "SNP_POLICY_KNOWN", "SnpActivate", "SnpDecommission", "SnpGctxCreate",
    "SnpDbgDecrypt", "SnpDbgEncrypt", "SnpGuestRequest", "SnpLaunchFinish", "SnpLaunchStart",
    "SnpLaunchUpdate", "SnpPageReclaim", "SnpPageType", "SnpPolicy", "VMPL_PERMS_VALID",
    "VMPL_PERM_EXEC_SUPERVISOR", "VMPL_PERM_EXEC_USER", "VMPL_PERM_READ", "VMPL_PERM_SSS",
    "VMPL_PERM_WRITE", "snp_page_info", "snp_extend",
]

INITIAL_VMSA_GPA = 0xFFFFFFFFF000
"""The RMP GPA (and digest GPA) of an initial VMSA page."""
PAGE_INFO_SIZE = 0x70
DIGEST_SIZE = 48


class SnpPageType(enum.IntEnum):
    """SNP_LAUNCH_UPDATE page_type."""

    NORMAL = 1
    VMSA = 2
    ZERO = 3
    UNMEASURED = 4
    SECRETS = 5
    CPUID = 6


class SnpPolicy(enum.IntFlag):
    """The 64-bit SNP guest policy (bits 7:0 ABI minor, 15:8 ABI major)."""

    SMT = 1 << 16
    RESERVED_ONE = 1 << 17  # must be 1
    MIGRATE_MA = 1 << 18
    DEBUG = 1 << 19
    SINGLE_SOCKET = 1 << 20


SNP_POLICY_DEFAULT = int(SnpPolicy.SMT | SnpPolicy.RESERVED_ONE)  # 0x30000
SNP_POLICY_KNOWN = (1 << 21) - 1  # bits above SINGLE_SOCKET are refused by this firmware


@dataclasses.dataclass(frozen=True)
class SnpGctxCreate(CommandBuffer):
    """SNP_GCTX_CREATE: turn a hypervisor page into the guest context page (Firmware state)."""

    FORMAT = "<Q"
    SPEC_SIZE = 8
    gctx_paddr: int = 0


@dataclasses.dataclass(frozen=True)
class SnpDecommission(CommandBuffer):
    """SNP_DECOMMISSION: forget the guest; its context page goes back to the hypervisor."""

    FORMAT = "<Q"
    SPEC_SIZE = 8
    gctx_paddr: int = 0


@dataclasses.dataclass(frozen=True)
class SnpActivate(CommandBuffer):
    """SNP_ACTIVATE: load the guest's key into an SEV-ES/SNP ASID."""

    FORMAT = "<QI"
    SPEC_SIZE = 12
    gctx_paddr: int = 0
    asid: int = 0


@dataclasses.dataclass(frozen=True)
class SnpLaunchStart(CommandBuffer):
    """SNP_LAUNCH_START: the policy, migration agent (unsupported here) and GOSVW."""

    FORMAT = "<QQQII16s"
    SPEC_SIZE = 0x30
    gctx_paddr: int = 0
    policy: int = SNP_POLICY_DEFAULT
    ma_gctx_paddr: int = 0
    flags: int = 0  # ma_en [0], imi_en [1]
    desired_tsc_khz: int = 0
    gosvw: bytes = bytes(16)


@dataclasses.dataclass(frozen=True)
class SnpLaunchUpdate(CommandBuffer):
    """SNP_LAUNCH_UPDATE: one Pre-guest page, encrypted in place, measured, made Guest-valid.

    `flags` = page_size [0] | page_type [3:1] | imi_page [4]; `vmpl_perms` = VMPL1..3 bytes."""

    FORMAT = "<QI4xQI4x"
    SPEC_SIZE = 0x20
    gctx_paddr: int = 0
    flags: int = 0
    page_paddr: int = 0
    vmpl_perms: int = 0

    @staticmethod
    def make_flags(page_type: int, page_size: int = 0, imi: bool = False) -> int:
        return (page_size & 1) | (page_type & 7) << 1 | (1 << 4 if imi else 0)

    @staticmethod
    def make_perms(vmpl1: int = 0, vmpl2: int = 0, vmpl3: int = 0) -> int:
        """The command's permission dword: bits 7:0 reserved, then VMPL1, VMPL2, VMPL3."""
        return (vmpl1 & 0xFF) << 8 | (vmpl2 & 0xFF) << 16 | (vmpl3 & 0xFF) << 24

    @property
    def page_type(self) -> int:
        return (self.flags >> 1) & 7

    @property
    def page_size(self) -> int:
        return self.flags & 1


@dataclasses.dataclass(frozen=True)
class SnpLaunchFinish(CommandBuffer):
    """SNP_LAUNCH_FINISH (Linux `sev_data_snp_launch_finish`, AMD `snp_mcmd_launch_finish_t`):
    the guest context, the addresses of the ID block (0x60 bytes) and of the ID authentication
    structure (4 KiB), a u64 of flags (id_block_en [0], auth_key_en [1], vcek_disabled [2];
    bits 63:3 reserved, must be zero) and 32 bytes of host data."""

    FORMAT = "<QQQQ32s"
    SPEC_SIZE = 0x40
    gctx_paddr: int = 0
    id_block_paddr: int = 0
    id_auth_paddr: int = 0
    flags: int = 0
    host_data: bytes = bytes(32)

    ID_BLOCK_EN: ClassVar[int] = 1 << 0
    AUTH_KEY_EN: ClassVar[int] = 1 << 1
    VCEK_DISABLED: ClassVar[int] = 1 << 2
    RESERVED: ClassVar[int] = ~0x7 & 0xFFFF_FFFF_FFFF_FFFF

    @staticmethod
    def make_flags(id_block: bool = False, auth_key: bool = False,
                   vcek_disabled: bool = False) -> int:
        return (1 if id_block else 0) | (2 if auth_key else 0) | (4 if vcek_disabled else 0)

    @property
    def id_block_en(self) -> bool:
        return bool(self.flags & self.ID_BLOCK_EN)

    @property
    def auth_key_en(self) -> bool:
        return bool(self.flags & self.AUTH_KEY_EN)

    @property
    def vcek_disabled(self) -> bool:
        return bool(self.flags & self.VCEK_DISABLED)


@dataclasses.dataclass(frozen=True)
class SnpGuestRequest(CommandBuffer):
    """SNP_GUEST_REQUEST: one encrypted guest message page in, one response page out."""

    FORMAT = "<QQQ"
    SPEC_SIZE = 0x18
    gctx_paddr: int = 0
    req_paddr: int = 0
    res_paddr: int = 0


@dataclasses.dataclass(frozen=True)
class SnpDbgDecrypt(CommandBuffer):
    """SNP_DBG_DECRYPT: one 4 KiB guest page `src_addr`, decrypted with the guest's key, into
    the page `dst_addr` (Linux `sev_data_snp_dbg`). Refused unless the policy has DEBUG."""

    FORMAT = "<QQQ"
    SPEC_SIZE = 0x18
    gctx_paddr: int = 0
    src_addr: int = 0
    dst_addr: int = 0


@dataclasses.dataclass(frozen=True)
class SnpDbgEncrypt(SnpDbgDecrypt):
    """SNP_DBG_ENCRYPT: one 4 KiB plaintext page `src_addr`, encrypted with the guest's key, into
    the guest page `dst_addr` (the same `sev_data_snp_dbg` layout). Refused unless DEBUG."""


@dataclasses.dataclass(frozen=True)
class SnpPageReclaim(CommandBuffer):
    """SNP_PAGE_RECLAIM: clear the immutable bit of a Firmware, Pre-guest or Pre-swap page so the
    hypervisor can RMPUPDATE it again. `paddr` = page address | page size [0] (Linux
    `sev_data_snp_page_reclaim`)."""

    FORMAT = "<Q"
    SPEC_SIZE = 8
    paddr: int = 0


VMPL_PERM_READ = 1 << 0
VMPL_PERM_WRITE = 1 << 1
VMPL_PERM_EXEC_USER = 1 << 2
VMPL_PERM_EXEC_SUPERVISOR = 1 << 3
VMPL_PERM_SSS = 1 << 4  # supervisor shadow stack
VMPL_PERMS_VALID = 0x1F
"""The bits of one VMPL permission mask (AMD's `vmpl_perm_mask_t`, es-snp-reference 3.1); bits
7:5 are reserved."""


def snp_page_info(digest: bytes, contents: bytes, page_type: int, gpa: int,
                  imi: bool = False, vmpl_perms: int = 0) -> bytes:
    """PAGE_INFO (0x70 bytes) for one 4 KiB page. `contents` is the page's plaintext for NORMAL
    and VMSA pages; for the other types it is ignored and the contents field is zeros.
    `vmpl_perms` is SNP_LAUNCH_UPDATE's permission dword (SnpLaunchUpdate.make_perms).

    Bytes 0x60-0x6F follow the table "PAGE_INFO Structure" of AMD's SEV-SNP Firmware ABI
    specification (publication 56860): 0x60 LENGTH (u16), 0x62 PAGE_TYPE, 0x63 IMI_PAGE (bit 0),
    0x64 VMPL3_PERMS, 0x65 VMPL2_PERMS, 0x66 VMPL1_PERMS, 0x67 reserved, 0x68 GPA (u64). VirTEE's
    sev-snp-measure (`gctx.py`) and `sev` crate write the same order. AMD's published Genoa
    firmware source (AMD-ASPFW `sev_mcmd.h`, `snp_mcmd_launch_update_page_info_t`) declares the
    four bytes the other way round (reserved, VMPL1, VMPL2, VMPL3); the two agree whenever all
    masks are zero, which is how every launch by KVM and QEMU is measured."""
    if len(digest) != DIGEST_SIZE:
        raise ValueError("the launch digest is 48 bytes")
    if page_type in (SnpPageType.NORMAL, SnpPageType.VMSA):
        if len(contents) != 0x1000:
            raise ValueError("a measured page is 4096 bytes")
        measured = hashlib.sha384(contents).digest()
    else:
        measured = bytes(DIGEST_SIZE)
    vmpl1, vmpl2, vmpl3 = ((vmpl_perms >> 8) & 0xFF, (vmpl_perms >> 16) & 0xFF,
                           (vmpl_perms >> 24) & 0xFF)
    return (digest + measured +
            struct.pack("<HBBBBBBQ", PAGE_INFO_SIZE, page_type, 1 if imi else 0,
                        vmpl3, vmpl2, vmpl1, 0, gpa))


def snp_extend(digest: bytes, contents: bytes, page_type: int, gpa: int,
               vmpl_perms: int = 0) -> bytes:
    """The launch digest after one page: SHA-384(PAGE_INFO)."""
    return hashlib.sha384(snp_page_info(digest, contents, page_type, gpa,
                                        vmpl_perms=vmpl_perms)).digest()

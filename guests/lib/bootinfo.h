/* The boot information page and the fixed parts of the guest physical memory map
 * (docs/guest-abi.md is the contract these constants come from). */
#ifndef HV_GUEST_BOOTINFO_H
#define HV_GUEST_BOOTINFO_H

#include <stdint.h>

#define HV_BOOT_INFO_GPA     0x8000UL
#define HV_SECRET_GPA        0x9000UL
#define HV_IMAGE_BASE        0x100000UL
#define HV_BOOT_INFO_MAGIC   0x49425648u /* "HVBI" */
#define HV_BOOT_INFO_VERSION 1u

/* flags bit 0 (SEV-SNP): a guest owner will release a secret after attestation. */
#define HV_BOOT_FLAG_SECRET_RELEASE (1u << 0)

/* The hypervisor may lie in this page: it is shared and not measured. */
#define HV_SECRET_MAX        4096u
#define HV_MEM_MAX           (4UL << 30)

#define HV_PORT_COM1         0x3f8
#define HV_PORT_DEBUG_EXIT   0x501
#define HV_PORT_POST         0x80

struct hv_boot_info {
    uint32_t magic;
    uint32_t version;
    uint64_t mem_size;
    uint64_t secret_gpa;
    uint32_t secret_len;
    uint32_t flags;
};

_Static_assert(sizeof(struct hv_boot_info) == 0x20, "boot info layout");
_Static_assert(__builtin_offsetof(struct hv_boot_info, secret_len) == 0x18, "boot info layout");

/* One read of every field. The hypervisor may rewrite the page at any exit, so a guest copies it
 * once and then checks and uses only the copy (no check-then-use on the shared page). */
static inline struct hv_boot_info boot_info_read(const struct hv_boot_info *bi)
{
    const volatile struct hv_boot_info *v = bi;
    struct hv_boot_info copy;

    copy.magic = v->magic;
    copy.version = v->version;
    copy.mem_size = v->mem_size;
    copy.secret_gpa = v->secret_gpa;
    copy.secret_len = v->secret_len;
    copy.flags = v->flags;
    return copy;
}

/* True when the copy carries the expected magic and version. */
static inline int boot_info_valid(const struct hv_boot_info *info)
{
    return info->magic == HV_BOOT_INFO_MAGIC && info->version == HV_BOOT_INFO_VERSION;
}

#endif

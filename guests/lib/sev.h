/* SEV detection, done the way Linux's early boot code does it (sev_enable()):
 *   1. CPUID 0x80000000: EAX is the highest extended leaf; it must reach 0x8000001f.
 *   2. CPUID 0x8000001f: EAX bit 1 = SEV supported, EBX[5:0] = C-bit position.
 *   3. Only then RDMSR 0xc0010131 (SEV_STATUS): bit 0 SEV, bit 1 SEV-ES, bit 2 SEV-SNP.
 * The MSR is read only when CPUID advertises SEV: on hardware without it the read faults. */
#ifndef HV_GUEST_SEV_H
#define HV_GUEST_SEV_H

#include <stdint.h>

#define CPUID_EXT_MAX          0x80000000u
#define CPUID_AMD_MEM_ENCRYPT  0x8000001fu
#define CPUID_SEV_BIT          (1u << 1)
#define MSR_AMD64_SEV_STATUS   0xc0010131u
#define SEV_STATUS_SEV         (1ull << 0)
#define SEV_STATUS_SEV_ES      (1ull << 1)
#define SEV_STATUS_SEV_SNP     (1ull << 2)

enum sev_mode {
    SEV_MODE_PLAIN,
    SEV_MODE_SEV,
    SEV_MODE_SEV_ES,
    SEV_MODE_SEV_SNP,
};

struct sev_info {
    enum sev_mode mode;
    int cbit_pos;        /* from CPUID, -1 when CPUID does not advertise SEV */
    uint64_t sev_status; /* the MSR, 0 when it was not read */
    uint64_t cbit_mask;  /* 1 << cbit_pos when the guest runs encrypted, else 0 */
};

void sev_detect(struct sev_info *out);

/* Run the detection once and keep the result (hv_lib_init calls it). */
void sev_init(void);

/* The result of the detection hv_lib_init ran. */
const struct sev_info *sev_info(void);

/* "plain", "sev", "sev-es" or "sev-snp". */
const char *sev_mode_name(enum sev_mode mode);

#endif

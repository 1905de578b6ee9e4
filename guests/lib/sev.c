#include "sev.h"
#include "x86.h"

static struct sev_info detected;

void sev_detect(struct sev_info *out)
{
    out->mode = SEV_MODE_PLAIN;
    out->cbit_pos = -1;
    out->sev_status = 0;
    out->cbit_mask = 0;

    if (cpuid(CPUID_EXT_MAX, 0).eax < CPUID_AMD_MEM_ENCRYPT)
        return;

    struct cpuid_regs r = cpuid(CPUID_AMD_MEM_ENCRYPT, 0);

    if (!(r.eax & CPUID_SEV_BIT))
        return;
    out->cbit_pos = (int)(r.ebx & 0x3f);
    out->sev_status = rdmsr(MSR_AMD64_SEV_STATUS);
    if (!(out->sev_status & SEV_STATUS_SEV))
        return;

    out->cbit_mask = 1ull << out->cbit_pos;
    if (out->sev_status & SEV_STATUS_SEV_SNP)
        out->mode = SEV_MODE_SEV_SNP;
    else if (out->sev_status & SEV_STATUS_SEV_ES)
        out->mode = SEV_MODE_SEV_ES;
    else
        out->mode = SEV_MODE_SEV;
}

void sev_init(void)
{
    sev_detect(&detected);
}

const struct sev_info *sev_info(void)
{
    return &detected;
}

const char *sev_mode_name(enum sev_mode mode)
{
    switch (mode) {
    case SEV_MODE_SEV:
        return "sev";
    case SEV_MODE_SEV_ES:
        return "sev-es";
    case SEV_MODE_SEV_SNP:
        return "sev-snp";
    case SEV_MODE_PLAIN:
    default:
        return "plain";
    }
}

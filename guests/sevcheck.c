/* sevcheck: report what the guest can see of memory encryption, the way Linux detects it.
 *
 *   mode: plain | sev | sev-es | sev-snp     (from SEV_STATUS bits 0, 1, 2)
 *   c-bit: 47 | none                         (CPUID 0x8000001f EBX[5:0]; none: SEV not advertised)
 *   sev_status: 0x1                          (MSR 0xc0010131; 0x0 when it was not read)
 */
#include "hvguest.h"

int main(const struct hv_boot_info *bi)
{
    const struct sev_info *sev = sev_info();

    (void)bi;
    printf("mode: %s\n", sev_mode_name(sev->mode));
    if (sev->cbit_pos >= 0)
        printf("c-bit: %d\n", sev->cbit_pos);
    else
        printf("c-bit: none\n");
    printf("sev_status: 0x%lx\n", sev->sev_status);
    return 0;
}

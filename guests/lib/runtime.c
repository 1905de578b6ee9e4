#include "hvguest.h"

/* From guest.ld: the first page after the image (the end of .bss, page-aligned). */
extern char _end[];

void hv_lib_init(const struct hv_boot_info *bi)
{
    struct hv_boot_info info = boot_info_read(bi);
    uintptr_t limit = 0;

    sev_init();
    if (sev_info()->mode == SEV_MODE_SEV_ES || sev_info()->mode == SEV_MODE_SEV_SNP)
        ghcb_init(); /* from here on #VC can reach the hypervisor for I/O and MSRs */
    if (boot_info_valid(&info)) {
        /* mem_size comes from the hypervisor, unmeasured: bound it by what the ABI allows. */
        limit = info.mem_size < HV_MEM_MAX ? info.mem_size : HV_MEM_MAX;
    }
    heap_init((uintptr_t)_end, limit);
}

void guest_exit(int code)
{
    outl(HV_PORT_DEBUG_EXIT, (uint32_t)code);
    halt_forever();
}

/* Everything a sample guest needs: include this one header. */
#ifndef HV_GUEST_H
#define HV_GUEST_H

#include <stddef.h>
#include <stdint.h>

#include "bootinfo.h"
#include "ghcb.h"
#include "heap.h"
#include "mem.h"
#include "paging.h"
#include "printf.h"
#include "sev.h"
#include "sha256.h"
#include "vc.h"
#include "x86.h"

/* Set up the library (heap bounds, SEV detection); start.S calls it before main. */
void hv_lib_init(const struct hv_boot_info *bi);

/* Stop the guest: write code to the debug-exit port, then halt for good. */
__attribute__((noreturn)) void guest_exit(int code);

int main(const struct hv_boot_info *bi);

#endif

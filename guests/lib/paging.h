/* The current page tables (CR3), and pages shared with the hypervisor.
 *
 * The guest runs identity-mapped, so a table's physical address is also where the guest can
 * read it. In an encrypted guest every entry carries the C-bit, which is not an address bit:
 * it is masked off before an entry is followed. */
#ifndef HV_GUEST_PAGING_H
#define HV_GUEST_PAGING_H

#include <stddef.h>
#include <stdint.h>

#define PAGE_SIZE     4096UL
#define PTE_PRESENT   (1ull << 0)
#define PTE_WRITABLE  (1ull << 1)
#define PTE_PS        (1ull << 7)  /* large page, in a PDPTE or PDE */
#define PTE_ADDR_MASK 0x000ffffffffff000ull

/* Pages reserved in .bss for shared_alloc: all inside the 4 KiB-mapped first 2 MiB. */
#define SHARED_POOL_PAGES 8

/* The leaf entry mapping va and its level: 1 = 4 KiB page, 2 = 2 MiB, 3 = 1 GiB.
 * NULL when va is not mapped. */
volatile uint64_t *pt_walk(uintptr_t va, int *level);

/* The guest-physical address va maps to (C-bit removed), or -1 when it is not mapped. */
uint64_t pt_translate(uintptr_t va);

/* npages consecutive 4 KiB pages from the shared pool, mapped with the C-bit clear (shared with
 * the hypervisor) and zeroed through that mapping; NULL when the pool is exhausted or a page is
 * not mapped by a 4 KiB entry. In a plain guest the pages are ordinary memory. */
void *shared_alloc(size_t npages);

/* True when va is currently mapped with the C-bit clear (or the guest is not encrypted). */
int pt_is_shared(uintptr_t va);

#endif

#include "ghcb.h"
#include "mem.h"
#include "paging.h"
#include "sev.h"
#include "x86.h"

static uint8_t shared_pool[SHARED_POOL_PAGES][PAGE_SIZE]
    __attribute__((aligned(PAGE_SIZE), section(".bss.shared_pool")));
static size_t shared_used;

static uint64_t addr_mask(void)
{
    return PTE_ADDR_MASK & ~sev_info()->cbit_mask;
}

volatile uint64_t *pt_walk(uintptr_t va, int *level)
{
    uint64_t mask = addr_mask();
    uint64_t table = read_cr3() & mask;

    for (int lvl = 4; lvl >= 1; lvl--) {
        unsigned idx = (va >> (12 + 9 * (lvl - 1))) & 511;
        volatile uint64_t *entry = (volatile uint64_t *)(uintptr_t)(table + 8 * idx);
        uint64_t e = *entry;

        if (!(e & PTE_PRESENT))
            return NULL;
        if (lvl == 1 || ((lvl == 2 || lvl == 3) && (e & PTE_PS))) {
            if (level)
                *level = lvl;
            return entry;
        }
        table = e & mask;
    }
    return NULL;
}

uint64_t pt_translate(uintptr_t va)
{
    int level;
    volatile uint64_t *e = pt_walk(va, &level);

    if (!e)
        return (uint64_t)-1;

    uint64_t offset_mask = (1ull << (12 + 9 * (level - 1))) - 1;

    return ((*e & addr_mask()) & ~offset_mask) | (va & offset_mask);
}

int pt_is_shared(uintptr_t va)
{
    volatile uint64_t *e = pt_walk(va, NULL);

    return e && !(*e & sev_info()->cbit_mask);
}

/* Write back and drop the page's cache lines before its encryption attribute changes:
 * lines cached under the guest key are not coherent with the C=0 view (what Linux does
 * before it flips the bit, unless the CPU reports SME_COHERENT). */
static void flush_page(void *page)
{
    struct cpuid_regs r = cpuid(1, 0);

    if (!(r.edx & (1u << 19))) /* CLFSH */
        return;

    unsigned line = ((r.ebx >> 8) & 0xff) * 8;

    if (line == 0)
        line = 64;
    for (uintptr_t p = (uintptr_t)page; p < (uintptr_t)page + PAGE_SIZE; p += line)
        clflush((void *)p);
    mfence();
}

void *shared_alloc(size_t npages)
{
    if (npages == 0 || npages > SHARED_POOL_PAGES - shared_used)
        return NULL;

    uint8_t *first = shared_pool[shared_used];

    /* Check every page before touching any, so a failure leaves the pool as it was. */
    for (size_t i = 0; i < npages; i++) {
        int level;

        if (!pt_walk((uintptr_t)(first + i * PAGE_SIZE), &level) || level != 1)
            return NULL;
    }

    uint64_t cbit = sev_info()->cbit_mask;

    for (size_t i = 0; i < npages; i++)
        flush_page(first + i * PAGE_SIZE);
    /* SEV-SNP: rescind every page, then one page-state change for all of them. */
    snp_pages_make_shared(first, npages);
    for (size_t i = 0; i < npages; i++) {
        uint8_t *page = first + i * PAGE_SIZE;
        volatile uint64_t *pte = pt_walk((uintptr_t)page, NULL);

        *pte &= ~cbit;
        invlpg(page);
        /* Through the new mapping the old contents read as ciphertext: clear them. */
        memset(page, 0, PAGE_SIZE);
    }
    shared_used += npages;
    return first;
}

#include "ghcb.h"
#include "mem.h"
#include "paging.h"
#include "sev.h"
#include "x86.h"

/* The GHCB: one page-aligned page in .bss, below 2 MiB, so a 4 KiB entry maps it and its C-bit
 * can be cleared alone. Not from shared_alloc's pool, which the guests keep for themselves. */
static uint8_t ghcb_storage[PAGE_SIZE] __attribute__((aligned(PAGE_SIZE), section(".bss.ghcb")));
static volatile struct ghcb *ghcb_ready;

static inline void wrmsr64(uint32_t msr, uint64_t v)
{
    __asm__ volatile("wrmsr" : : "c"(msr), "a"((uint32_t)v), "d"((uint32_t)(v >> 32)) : "memory");
}

static inline void vmgexit(void)
{
    __asm__ volatile("rep; vmmcall" : : : "memory");
}

uint64_t ghcb_msr_call(uint64_t request)
{
    wrmsr64(MSR_AMD64_SEV_ES_GHCB, request);
    vmgexit();
    return rdmsr(MSR_AMD64_SEV_ES_GHCB);
}

__attribute__((noreturn)) void ghcb_terminate(unsigned set, unsigned reason)
{
    for (;;)
        ghcb_msr_call(GHCB_MSR_TERM_REQ | (uint64_t)(set & 0xf) << 12 | (uint64_t)(reason & 0xff) << 16);
}

uint32_t ghcb_msr_cpuid(uint32_t fn, unsigned reg)
{
    uint64_t v = ghcb_msr_call((uint64_t)fn << 32 | (uint64_t)(reg & 3) << 30 | GHCB_MSR_CPUID_REQ);

    if ((v & GHCB_MSR_INFO_MASK) != GHCB_MSR_CPUID_RESP)
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_GHCB_ERROR);
    return (uint32_t)(v >> 32);
}

volatile struct ghcb *ghcb_page(void)
{
    return ghcb_ready;
}

void ghcb_begin(volatile struct ghcb *g)
{
    for (unsigned i = 0; i < sizeof(g->valid_bitmap); i++)
        g->valid_bitmap[i] = 0;
    g->sw_exit_code = 0;
}

void ghcb_set_valid(volatile struct ghcb *g, unsigned off)
{
    unsigned bit = off / 8;

    g->valid_bitmap[bit / 8] |= (uint8_t)(1u << (bit % 8));
}

int ghcb_is_valid(volatile struct ghcb *g, unsigned off)
{
    unsigned bit = off / 8;

    return (g->valid_bitmap[bit / 8] >> (bit % 8)) & 1;
}

uint32_t ghcb_call(volatile struct ghcb *g, uint64_t exit_code, uint64_t info_1, uint64_t info_2)
{
    g->sw_exit_code = exit_code;
    g->sw_exit_info_1 = info_1;
    g->sw_exit_info_2 = info_2;
    ghcb_set_valid(g, __builtin_offsetof(struct ghcb, sw_exit_code));
    ghcb_set_valid(g, __builtin_offsetof(struct ghcb, sw_exit_info_1));
    ghcb_set_valid(g, __builtin_offsetof(struct ghcb, sw_exit_info_2));
    g->protocol_version = GHCB_PROTOCOL_VERSION;
    g->ghcb_usage = 0;
    wrmsr64(MSR_AMD64_SEV_ES_GHCB, (uint64_t)(uintptr_t)g);
    vmgexit();

    uint32_t result = (uint32_t)g->sw_exit_info_1;

    if (result == 2)
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_GHCB_ERROR);
    return result;
}

static void pvalidate_rescind(void *page)
{
    uint32_t ret;

    /* Rescind first: a page must never be validated while the hypervisor owns it, or the
     * hypervisor could hand it back later as if it were still the guest's. */
    __asm__ volatile(".byte 0xf2, 0x0f, 0x01, 0xff" /* PVALIDATE */
                     : "=a"(ret) : "a"((uintptr_t)page), "c"(0), "d"(0) : "memory", "cc");
    if (ret != 0)
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_PSC);
}

static void psc_msr(uint64_t gpa, uint64_t op)
{
    uint64_t resp = ghcb_msr_call((gpa & PTE_ADDR_MASK) | op << 52 | GHCB_MSR_PSC_REQ);

    if ((resp & GHCB_MSR_INFO_MASK) != GHCB_MSR_PSC_RESP || (resp >> 32) != 0)
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_PSC);
}

/* One Page State Change NAE for the n (<= PSC_MAX_ENTRIES) entries already in the buffer,
 * repeated while the hypervisor reports progress, as Linux's vmgexit_psc does. Every answer is
 * checked: sw_exit_info_1 and _2 must be 0, the header's end_entry and reserved word unchanged,
 * and cur_entry may only move forward. */
static void psc_nae(volatile struct ghcb *g, volatile struct psc_desc *psc, unsigned n)
{
    unsigned cur = 0, end = n - 1;

    psc->cur_entry = 0;
    psc->end_entry = (uint16_t)end;
    psc->reserved = 0;
    while (cur <= end) {
        ghcb_begin(g);
        g->sw_scratch = (uint64_t)(uintptr_t)psc; /* identity-mapped: the VA is the GPA */
        ghcb_set_valid(g, __builtin_offsetof(struct ghcb, sw_scratch));
        if (ghcb_call(g, SVM_VMGEXIT_PSC, 0, 0) != 0 || g->sw_exit_info_2 != 0)
            ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_PSC_NAE);

        unsigned now = psc->cur_entry;

        if (psc->end_entry != end || psc->reserved != 0 || now < cur)
            ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_PSC_NAE);
        cur = now;
    }
}

void snp_pages_make_shared(void *first, unsigned long npages)
{
    if (sev_info()->mode != SEV_MODE_SEV_SNP)
        return;

    uint8_t *base = first;

    for (unsigned long i = 0; i < npages; i++) {
        if (pt_translate((uintptr_t)(base + i * PAGE_SIZE)) == (uint64_t)-1)
            ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_PSC);
    }
    for (unsigned long i = 0; i < npages; i++)
        pvalidate_rescind(base + i * PAGE_SIZE);

    volatile struct ghcb *g = ghcb_ready;

    if (!g) { /* before the GHCB exists (the GHCB page itself): the MSR protocol */
        for (unsigned long i = 0; i < npages; i++)
            psc_msr(pt_translate((uintptr_t)(base + i * PAGE_SIZE)), GHCB_PSC_OP_SHARED);
        return;
    }

    volatile struct psc_desc *psc = (volatile struct psc_desc *)g->shared_buffer;

    for (unsigned long done = 0; done < npages;) {
        unsigned n = npages - done > PSC_MAX_ENTRIES ? PSC_MAX_ENTRIES : (unsigned)(npages - done);

        for (unsigned i = 0; i < n; i++) {
            uint64_t gpa = pt_translate((uintptr_t)(base + (done + i) * PAGE_SIZE));

            psc->entries[i] = (gpa & PSC_ENTRY_GFN_MASK) | GHCB_PSC_OP_SHARED << PSC_ENTRY_OP_SHIFT;
        }
        psc_nae(g, psc, n);
        done += n;
    }
}

void snp_page_make_shared(void *page)
{
    snp_pages_make_shared(page, 1);
}

void ghcb_init(void)
{
    /* Protocol version: the hypervisor's range must include ours. */
    uint64_t info = ghcb_msr_call(GHCB_MSR_SEV_INFO_REQ);
    unsigned max = (unsigned)(info >> 48) & 0xffff, min = (unsigned)(info >> 32) & 0xffff;

    if ((info & GHCB_MSR_INFO_MASK) != GHCB_MSR_SEV_INFO_RESP || min > GHCB_PROTOCOL_VERSION ||
        max < GHCB_PROTOCOL_VERSION)
        ghcb_terminate(GHCB_TERM_SET_GENERAL, GHCB_TERM_PROTOCOL);

    /* Share the page: clear its C-bit, drop the stale translation, then zero it through the
     * shared mapping (its old contents read as ciphertext). */
    volatile uint64_t *pte = pt_walk((uintptr_t)ghcb_storage, 0);

    if (!pte)
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_REGISTER);
    snp_page_make_shared(ghcb_storage);
    *pte &= ~sev_info()->cbit_mask;
    invlpg(ghcb_storage);
    memset(ghcb_storage, 0, sizeof(ghcb_storage));

    uint64_t gpa = (uint64_t)(uintptr_t)ghcb_storage;
    uint64_t resp = ghcb_msr_call(gpa | GHCB_MSR_REG_GPA_REQ);

    if ((resp & GHCB_MSR_INFO_MASK) != GHCB_MSR_REG_GPA_RESP || (resp & ~GHCB_MSR_INFO_MASK) != gpa)
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_REGISTER);
    ghcb_ready = (volatile struct ghcb *)ghcb_storage;
}

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

void snp_page_make_shared(void *page)
{
    if (sev_info()->mode != SEV_MODE_SEV_SNP)
        return;

    uint64_t gpa = pt_translate((uintptr_t)page);
    uint32_t ret;

    /* Rescind first: a page must never be validated while the hypervisor owns it, or the
     * hypervisor could hand it back later as if it were still the guest's. */
    __asm__ volatile(".byte 0xf2, 0x0f, 0x01, 0xff" /* PVALIDATE */
                     : "=a"(ret) : "a"((uintptr_t)page), "c"(0), "d"(0) : "memory", "cc");
    if (ret != 0 || gpa == (uint64_t)-1)
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_PSC);

    uint64_t resp = ghcb_msr_call((gpa & PTE_ADDR_MASK) | GHCB_PSC_OP_SHARED << 52 | GHCB_MSR_PSC_REQ);

    if ((resp & GHCB_MSR_INFO_MASK) != GHCB_MSR_PSC_RESP || (resp >> 32) != 0)
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_PSC);
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

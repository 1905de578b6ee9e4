#include "ghcb.h"
#include "vc.h"

/* 64-bit code and data descriptors: an IRETQ from the handler reloads CS and SS from here. */
#define GDT_CODE64 0x08
#define GDT_DATA   0x10

static const uint64_t gdt[] __attribute__((aligned(16))) = {
    0,
    0x00af9b000000ffffull, /* 0x08: code, long mode, DPL 0 */
    0x00cf93000000ffffull, /* 0x10: data */
};

struct idt_gate {
    uint16_t offset_lo, selector;
    uint8_t ist, attr;
    uint16_t offset_mid;
    uint32_t offset_hi, reserved;
} __attribute__((packed));

static struct idt_gate idt[32] __attribute__((aligned(16)));

struct table_ptr {
    uint16_t limit;
    uint64_t base;
} __attribute__((packed));

extern char vc_entry[];

void idt_init(void)
{
    struct table_ptr g = {sizeof(gdt) - 1, (uint64_t)(uintptr_t)gdt};
    uintptr_t h = (uintptr_t)vc_entry;

    __asm__ volatile("lgdt %0\n\t"
                     "pushq %1\n\t"
                     "leaq 1f(%%rip), %%rax\n\t"
                     "pushq %%rax\n\t"
                     "lretq\n"
                     "1:\n\t"
                     "movl %2, %%eax\n\t"
                     "movl %%eax, %%ds\n\t"
                     "movl %%eax, %%es\n\t"
                     "movl %%eax, %%ss"
                     : : "m"(g), "i"(GDT_CODE64), "i"(GDT_DATA) : "rax", "memory");

    for (unsigned i = 0; i < sizeof(idt) / sizeof(idt[0]); i++)
        idt[i] = (struct idt_gate){0};
    idt[X86_TRAP_VC] = (struct idt_gate){
        .offset_lo = (uint16_t)h, .selector = GDT_CODE64, .ist = 0,
        .attr = 0x8e, /* present, DPL 0, 64-bit interrupt gate */
        .offset_mid = (uint16_t)(h >> 16), .offset_hi = (uint32_t)(h >> 32),
    };

    struct table_ptr i = {sizeof(idt) - 1, (uint64_t)(uintptr_t)idt};

    __asm__ volatile("lidt %0" : : "m"(i) : "memory");
}

#define OFF(field) __builtin_offsetof(struct ghcb, field)

static volatile struct ghcb *need_ghcb(void)
{
    volatile struct ghcb *g = ghcb_page();

    if (!g)
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_NO_GHCB);
    ghcb_begin(g);
    return g;
}

/* A #GP (or anything else) the hypervisor asks to raise: this library has no handler for it. */
static void check_done(uint32_t result)
{
    if (result != 0)
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_GHCB_ERROR);
}

static void vc_cpuid(struct vc_regs *r)
{
    uint32_t leaf = (uint32_t)r->rax, subleaf = (uint32_t)r->rcx;
    volatile struct ghcb *g = ghcb_page();

    if (!g) {
        /* Before the GHCB exists (SEV detection runs CPUID first): the MSR protocol, which
         * knows subleaf 0 only. */
        r->rax = ghcb_msr_cpuid(leaf, 0);
        r->rbx = ghcb_msr_cpuid(leaf, 1);
        r->rcx = ghcb_msr_cpuid(leaf, 2);
        r->rdx = ghcb_msr_cpuid(leaf, 3);
        return;
    }
    ghcb_begin(g);
    g->rax = leaf;
    g->rcx = subleaf;
    g->xcr0 = 1;
    ghcb_set_valid(g, OFF(rax));
    ghcb_set_valid(g, OFF(rcx));
    ghcb_set_valid(g, OFF(xcr0));
    check_done(ghcb_call(g, SVM_EXIT_CPUID, 0, 0));
    if (!ghcb_is_valid(g, OFF(rax)) || !ghcb_is_valid(g, OFF(rbx)) || !ghcb_is_valid(g, OFF(rcx)) ||
        !ghcb_is_valid(g, OFF(rdx)))
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_GHCB_ERROR);
    r->rax = (uint32_t)g->rax;
    r->rbx = (uint32_t)g->rbx;
    r->rcx = (uint32_t)g->rcx;
    r->rdx = (uint32_t)g->rdx;
}

/* Returns the instruction length. */
static unsigned vc_ioio(struct vc_regs *r, const uint8_t *ip)
{
    unsigned len = 0, size = 4;

    if (ip[0] == 0x66) {
        size = 2;
        len = 1;
    }

    uint8_t op = ip[len++];
    unsigned port;

    switch (op) {
    case 0xe4: case 0xe5: case 0xe6: case 0xe7:
        port = ip[len++];
        break;
    case 0xec: case 0xed: case 0xee: case 0xef:
        port = (uint16_t)r->rdx;
        break;
    default:
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_VC_INSN);
    }
    if (!(op & 1))
        size = 1;

    int in = op == 0xe4 || op == 0xe5 || op == 0xec || op == 0xed;
    uint64_t mask = size == 4 ? 0xffffffffull : size == 2 ? 0xffffull : 0xffull;
    uint64_t info = (uint64_t)port << 16 | IOIO_ADDR_64 |
                    (size == 1 ? IOIO_DATA_8 : size == 2 ? IOIO_DATA_16 : IOIO_DATA_32) |
                    (in ? IOIO_TYPE_IN : 0);
    volatile struct ghcb *g = need_ghcb();

    if (!in) {
        g->rax = r->rax & mask;
        ghcb_set_valid(g, OFF(rax));
    }
    check_done(ghcb_call(g, SVM_EXIT_IOIO, info, 0));
    if (in) {
        if (!ghcb_is_valid(g, OFF(rax)))
            ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_GHCB_ERROR);
        if (size == 4)
            r->rax = g->rax & mask; /* a 32-bit destination clears the upper half */
        else
            r->rax = (r->rax & ~mask) | (g->rax & mask);
    }
    return len;
}

static void vc_msr(struct vc_regs *r, int write)
{
    volatile struct ghcb *g = need_ghcb();

    g->rcx = (uint32_t)r->rcx;
    ghcb_set_valid(g, OFF(rcx));
    if (write) {
        g->rax = (uint32_t)r->rax;
        g->rdx = (uint32_t)r->rdx;
        ghcb_set_valid(g, OFF(rax));
        ghcb_set_valid(g, OFF(rdx));
    }
    check_done(ghcb_call(g, SVM_EXIT_MSR, write ? 1 : 0, 0));
    if (!write) {
        if (!ghcb_is_valid(g, OFF(rax)) || !ghcb_is_valid(g, OFF(rdx)))
            ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_GHCB_ERROR);
        r->rax = (uint32_t)g->rax;
        r->rdx = (uint32_t)g->rdx;
    }
}

static void vc_vmmcall(struct vc_regs *r)
{
    volatile struct ghcb *g = need_ghcb();

    g->rax = r->rax;
    g->rbx = r->rbx;
    g->rcx = r->rcx;
    g->rdx = r->rdx;
    g->cpl = 0;
    ghcb_set_valid(g, OFF(rax));
    ghcb_set_valid(g, OFF(rbx));
    ghcb_set_valid(g, OFF(rcx));
    ghcb_set_valid(g, OFF(rdx));
    ghcb_set_valid(g, OFF(cpl));
    check_done(ghcb_call(g, SVM_EXIT_VMMCALL, 0, 0));
    if (!ghcb_is_valid(g, OFF(rax)))
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_GHCB_ERROR);
    r->rax = g->rax;
}

void vc_handler(struct vc_regs *r)
{
    const uint8_t *ip = (const uint8_t *)(uintptr_t)r->rip;
    unsigned len;

    switch (r->error_code) {
    case SVM_EXIT_CPUID:
        if (ip[0] != 0x0f || ip[1] != 0xa2)
            ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_VC_INSN);
        vc_cpuid(r);
        len = 2;
        break;
    case SVM_EXIT_IOIO:
        len = vc_ioio(r, ip);
        break;
    case SVM_EXIT_MSR:
        if (ip[0] != 0x0f || (ip[1] != 0x30 && ip[1] != 0x32))
            ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_VC_INSN);
        vc_msr(r, ip[1] == 0x30);
        len = 2;
        break;
    case SVM_EXIT_VMMCALL:
        if (ip[0] != 0x0f || ip[1] != 0x01 || ip[2] != 0xd9)
            ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_VC_INSN);
        vc_vmmcall(r);
        len = 3;
        break;
    case SVM_EXIT_NPF_UNVALIDATED:
        /* SEV-SNP: a page this guest validated is no longer valid at this GPA: the hypervisor
         * took it away and gave something back (replay, remap). Never re-validate: stop. */
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_UNVALIDATED);
    default:
        ghcb_terminate(GHCB_TERM_SET_HVLIB, HVLIB_TERM_VC_CODE);
    }
    r->rip += len;
}

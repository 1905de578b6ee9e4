/* The GHCB (Guest-Hypervisor Communication Block) and the GHCB MSR protocol: how an SEV-ES guest
 * asks the hypervisor for what an intercept used to give it (port I/O, CPUID, MSRs).
 *
 * The GHCB is one page the guest shares with the hypervisor (C-bit clear). The guest writes only
 * the registers a request needs, marks each one valid in valid_bitmap (bit = offset / 8), sets
 * sw_exit_code and sw_exit_info_1/2, writes the page's GPA to the GHCB MSR (0xc0010130) and
 * executes VMGEXIT. The hypervisor answers in the same page: sw_exit_info_1 = 0 done, 1 "raise
 * the exception in sw_exit_info_2", 2 bad request (reason in sw_exit_info_2).
 *
 * Before the page is set up the MSR alone carries small requests (the MSR protocol): the
 * function code in bits 11:0, data above it. The library uses it for CPUID during SEV detection,
 * to negotiate the protocol version, to register the GHCB's GPA and to ask for termination. */
#ifndef HV_GUEST_GHCB_H
#define HV_GUEST_GHCB_H

#include <stdint.h>

#define MSR_AMD64_SEV_ES_GHCB   0xc0010130u

#define GHCB_MSR_INFO_MASK      0xfffull
#define GHCB_MSR_SEV_INFO_RESP  0x001
#define GHCB_MSR_SEV_INFO_REQ   0x002
#define GHCB_MSR_CPUID_REQ      0x004
#define GHCB_MSR_CPUID_RESP     0x005
#define GHCB_MSR_REG_GPA_REQ    0x012
#define GHCB_MSR_REG_GPA_RESP   0x013
#define GHCB_MSR_PSC_REQ        0x014  /* SEV-SNP page state change: GFN [51:12], op [55:52] */
#define GHCB_MSR_PSC_RESP       0x015  /* error code in [63:32], 0 = done */
#define GHCB_PSC_OP_PRIVATE     1ull
#define GHCB_PSC_OP_SHARED      2ull
#define GHCB_MSR_TERM_REQ       0x100

#define GHCB_PROTOCOL_VERSION   2

/* sw_exit_code values (SVM exit codes). */
#define SVM_EXIT_CPUID          0x72
#define SVM_EXIT_IOIO           0x7b
#define SVM_EXIT_MSR            0x7c
#define SVM_EXIT_VMMCALL        0x81
#define SVM_EXIT_NPF_UNVALIDATED 0x404 /* SEV-SNP #VC: access to a page not validated */
#define SVM_VMGEXIT_PSC         0x80000010ull /* SEV-SNP page state change (NAE) */

/* IOIO sw_exit_info_1, the SVM IOIO intercept format. */
#define IOIO_TYPE_IN            (1u << 0)
#define IOIO_DATA_8             (1u << 4)
#define IOIO_DATA_16            (1u << 5)
#define IOIO_DATA_32            (1u << 6)
#define IOIO_ADDR_64            (1u << 9)

/* Termination reasons: set 1 is this library's own ("hv guest library"). */
#define GHCB_TERM_SET_GENERAL   0
#define GHCB_TERM_PROTOCOL      1  /* set 0: protocol version range unsupported */
#define GHCB_TERM_SET_HVLIB     1
#define HVLIB_TERM_VC_CODE      1  /* a #VC exit code the handler does not handle */
#define HVLIB_TERM_VC_INSN      2  /* an instruction form the handler does not decode */
#define HVLIB_TERM_GHCB_ERROR   3  /* the hypervisor refused a GHCB request */
#define HVLIB_TERM_NO_GHCB      4  /* a #VC that needs the GHCB before it was set up */
#define HVLIB_TERM_REGISTER     5  /* the hypervisor did not accept the GHCB's GPA */
#define HVLIB_TERM_PSC          6  /* SEV-SNP: a page could not be made shared */
#define HVLIB_TERM_UNVALIDATED  7  /* SEV-SNP: #VC on a page not validated (moved or replayed) */
#define HVLIB_TERM_PSC_NAE      8  /* SEV-SNP: a page state change NAE failed (sw_exit_info_2 not
                                    * 0, an exception to inject, progress going backwards, the
                                    * header's end_entry or reserved word changed) */

struct ghcb {
    uint8_t  reserved_0[0x0cb];
    uint8_t  cpl;                   /* 0x0cb */
    uint8_t  reserved_1[0x1f8 - 0x0cc];
    uint64_t rax;                   /* 0x1f8 */
    uint8_t  reserved_2[0x308 - 0x200];
    uint64_t rcx;                   /* 0x308 */
    uint64_t rdx;                   /* 0x310 */
    uint64_t rbx;                   /* 0x318 */
    uint8_t  reserved_3[0x390 - 0x320];
    uint64_t sw_exit_code;          /* 0x390 */
    uint64_t sw_exit_info_1;        /* 0x398 */
    uint64_t sw_exit_info_2;        /* 0x3a0 */
    uint64_t sw_scratch;            /* 0x3a8 */
    uint8_t  reserved_4[0x3e8 - 0x3b0];
    uint64_t xcr0;                  /* 0x3e8 */
    uint8_t  valid_bitmap[16];      /* 0x3f0 */
    uint8_t  reserved_5[0x800 - 0x400];
    uint8_t  shared_buffer[2032];   /* 0x800 */
    uint8_t  reserved_6[10];
    uint16_t protocol_version;      /* 0xffa */
    uint32_t ghcb_usage;            /* 0xffc */
} __attribute__((packed));

/* The Page State Change NAE's buffer (sw_scratch), here always the GHCB's shared buffer: a header
 * and at most 253 entries. The hypervisor advances cur_entry past each finished entry and counts
 * an entry's finished 4 KiB pages in its cur_page; the guest repeats the VMGEXIT while
 * cur_entry <= end_entry. */
#define PSC_MAX_ENTRIES         253
#define PSC_ENTRY_GFN_MASK      0x000ffffffffff000ull /* gfn [51:12], i.e. the page's GPA */
#define PSC_ENTRY_OP_SHIFT      52                    /* op [55:52]: 1 private, 2 shared */
#define PSC_ENTRY_2M            (1ull << 56)          /* pagesize [56]: 2 MiB */
#define PSC_ENTRY_CUR_PAGE      0xfffull              /* cur_page [11:0] */

struct psc_desc {
    uint16_t cur_entry;
    uint16_t end_entry;
    uint32_t reserved;
    uint64_t entries[PSC_MAX_ENTRIES];
} __attribute__((packed));

_Static_assert(sizeof(struct ghcb) == 4096, "GHCB layout");
_Static_assert(__builtin_offsetof(struct ghcb, sw_exit_code) == 0x390, "GHCB layout");
_Static_assert(__builtin_offsetof(struct ghcb, protocol_version) == 0xffa, "GHCB layout");
_Static_assert(sizeof(struct psc_desc) == sizeof(((struct ghcb *)0)->shared_buffer), "PSC buffer");

/* Set up the GHCB page (shared), negotiate the protocol and register the page with the
 * hypervisor. hv_lib_init calls it when SEV_STATUS reports SEV-ES; terminates on failure. */
void ghcb_init(void);

/* The GHCB, or NULL before ghcb_init finished (then only the MSR protocol works). */
volatile struct ghcb *ghcb_page(void);

/* Start a request: clear the valid bitmap and the exit fields. */
void ghcb_begin(volatile struct ghcb *g);

/* Mark the field at byte offset `off` valid / test whether it is. */
void ghcb_set_valid(volatile struct ghcb *g, unsigned off);
int ghcb_is_valid(volatile struct ghcb *g, unsigned off);

/* Finish a request: exit fields, protocol version, VMGEXIT. Returns sw_exit_info_1[31:0]
 * (0 = done); terminates the guest when the hypervisor calls the request bad (2). */
uint32_t ghcb_call(volatile struct ghcb *g, uint64_t exit_code, uint64_t info_1, uint64_t info_2);

/* One MSR-protocol exchange: write `request` to the GHCB MSR, VMGEXIT, return the answer. */
uint64_t ghcb_msr_call(uint64_t request);

/* One CPUID register (0 EAX, 1 EBX, 2 ECX, 3 EDX) of leaf `fn` through the MSR protocol. */
uint32_t ghcb_msr_cpuid(uint32_t fn, unsigned reg);

/* Ask the hypervisor to end the guest; does not return. */
__attribute__((noreturn)) void ghcb_terminate(unsigned set, unsigned reason);

/* SEV-SNP: hand npages validated 4 KiB pages (each mapped by its own entry; they need not be
 * physically contiguous) to the hypervisor. Each is rescinded with PVALIDATE first, then the
 * pages change state to shared: once the GHCB is set up with one Page State Change NAE
 * (VMGEXIT 0x80000010, all pages in one buffer of at most 253 entries, repeated while the
 * hypervisor reports progress), before that (the GHCB page itself) with the GHCB MSR protocol,
 * one page at a time. The caller then clears their C-bits. Nothing in other modes.
 * Terminates the guest on any failure (HVLIB_TERM_PSC, HVLIB_TERM_PSC_NAE). */
void snp_pages_make_shared(void *first, unsigned long npages);

/* snp_pages_make_shared for one page. */
void snp_page_make_shared(void *page);

#endif

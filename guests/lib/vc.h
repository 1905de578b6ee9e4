/* The #VC (VMM Communication exception, vector 29) handler of an SEV-ES guest.
 *
 * Under SEV-ES the hypervisor cannot read or write the guest's registers, so instructions it
 * used to intercept (IN/OUT, CPUID, RDMSR/WRMSR, VMMCALL) raise #VC inside the guest instead, with
 * the SVM exit code as the error code and RIP at the instruction. The handler decodes the
 * instruction, hands the hypervisor only the registers that request needs through the GHCB,
 * copies the answer into the saved registers and moves RIP past the instruction.
 *
 * Decoded forms (what the library and the sample guests use):
 *   IN/OUT   e4 e5 e6 e7 (imm8 port), ec ed ee ef (port in DX), 66 prefix for 16-bit
 *   CPUID    0f a2          RDMSR 0f 32     WRMSR 0f 30     VMMCALL 0f 01 d9
 * Anything else (string I/O, MMIO, other exit codes) terminates the guest through the GHCB MSR
 * protocol with reason set 1 (hv guest library) and a reason code from ghcb.h. */
#ifndef HV_GUEST_VC_H
#define HV_GUEST_VC_H

#include <stdint.h>

#define X86_TRAP_VC 29

/* What vc_entry (start.S) saves: general registers, then the CPU's exception frame. */
struct vc_regs {
    uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
    uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
    uint64_t error_code, rip, cs, rflags, rsp, ss;
};

void vc_handler(struct vc_regs *regs);

/* Load the library's GDT and IDT (start.S calls it first thing: a #VC needs both). */
void idt_init(void);

#endif

/* The #VC entry: the CPU pushed SS, RSP, RFLAGS, CS, RIP and the error code (the SVM exit
 * code). Save every general register in the order of struct vc_regs (vc.h), call the C
 * handler with a pointer to them, restore them (with the handler's results) and return past
 * the instruction the handler emulated. */

    .section .text.vc_entry, "ax"
    .globl vc_entry
    .type vc_entry, @function
vc_entry:
    push    %rax
    push    %rbx
    push    %rcx
    push    %rdx
    push    %rsi
    push    %rdi
    push    %rbp
    push    %r8
    push    %r9
    push    %r10
    push    %r11
    push    %r12
    push    %r13
    push    %r14
    push    %r15
    mov     %rsp, %rdi
    mov     %rsp, %rbx              /* callee-saved: the frame, whatever the alignment */
    and     $-16, %rsp              /* the SysV ABI wants a 16-byte aligned stack at a call */
    cld
    call    vc_handler
    mov     %rbx, %rsp
    pop     %r15
    pop     %r14
    pop     %r13
    pop     %r12
    pop     %r11
    pop     %r10
    pop     %r9
    pop     %r8
    pop     %rbp
    pop     %rdi
    pop     %rsi
    pop     %rdx
    pop     %rcx
    pop     %rbx
    pop     %rax
    add     $8, %rsp                /* the error code */
    iretq
    .size vc_entry, . - vc_entry

    .section .note.GNU-stack, "", @progbits

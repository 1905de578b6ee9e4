/* The entry point. hv enters in 64-bit mode with RSP = 0x10000 and RSI = the boot
 * information page; nothing else may be assumed, not even that .bss reads as zero (in an
 * encrypted guest it reads as the decryption of whatever DRAM held). Until idt_init has run
 * no instruction that raises #VC under SEV-ES (IN/OUT, CPUID, RDMSR/WRMSR) may be used. */

    .section .text.start, "ax"
    .globl _start
    .type _start, @function
_start:
    cld
    mov     %rsi, %r12              /* boot info; r12 survives the calls below */

    /* SEV-SNP: only the launched pages are validated. Validate all guest memory before the
     * first store to .bss or the stack (an unvalidated page is #VC, and there is no IDT yet),
     * except page 0 (unmapped) and the boot information page (shared, hypervisor-owned).
     * SEV_STATUS is answered by the CPU itself, so RDMSR raises no #VC here. A hypervisor that
     * lies about mem_size only makes PVALIDATE fault for pages it does not own. */
    mov     $0xc0010131, %ecx
    rdmsr
    test    $4, %eax                /* SEV_STATUS.SNP_Active */
    jz      3f
    mov     8(%r12), %r13           /* boot info mem_size (unmeasured: bounded below) */
    mov     $0x100000000, %rax
    cmp     %rax, %r13
    cmova   %rax, %r13
    mov     $0x1000, %ebx
1:  cmp     $0x8000, %rbx           /* HV_BOOT_INFO_GPA */
    je      2f
    mov     %rbx, %rax
    xor     %ecx, %ecx              /* 4 KiB */
    mov     $1, %edx                /* validate */
    .byte   0xf2, 0x0f, 0x01, 0xff  /* PVALIDATE; CF = 1 for launched pages: already valid */
2:  add     $0x1000, %rbx
    cmp     %r13, %rbx
    jb      1b
3:

    /* Zero .bss: the linker script keeps it 8-byte aligned at both ends. */
    lea     __bss_start(%rip), %rdi
    lea     __bss_end(%rip), %rcx
    sub     %rdi, %rcx
    shr     $3, %rcx
    xor     %eax, %eax
    rep stosq

    and     $-16, %rsp              /* the SysV ABI wants a 16-byte aligned stack at a call */
    xor     %ebp, %ebp              /* end of the frame-pointer chain, for debuggers */

    /* GDT and IDT before anything that may raise #VC: under SEV-ES the first CPUID does. */
    call    idt_init

    mov     %r12, %rdi
    call    hv_lib_init
    mov     %r12, %rdi
    call    main

    /* main returned: its value is the exit status. */
    mov     %eax, %edi
    call    guest_exit
1:  cli
    hlt
    jmp     1b
    .size _start, . - _start

    .section .note.GNU-stack, "", @progbits

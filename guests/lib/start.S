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

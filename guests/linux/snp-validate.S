/* The SEV-SNP boot stub hv launches in front of a Linux kernel (hv/boot/_snp_stub.py holds its
 * bytes; tests/boot/test_snp_stub.py assembles this file and compares).
 *
 * Linux 6.1 expects every page of RAM validated when it starts (lazy acceptance came in 6.5);
 * on real machines the guest firmware (OVMF) does it. This stub is that firmware's one job: it
 * runs first, from the VMSA hv measures, with the boot loader's state (long mode, the entry
 * page tables mapping [0, 4 GiB) privately, RSI = boot_params), PVALIDATEs every 4 KiB page of
 * guest memory [0, mem_end) (pages the launch already validated answer "no change", CF = 1,
 * which is fine), then jumps to the kernel's 64-bit entry point. Both addresses are the
 * quadwords at the end, measured with the code. A PVALIDATE that fails ends the guest through
 * the GHCB MSR protocol's termination request (reason set 1, the status as the code).
 *
 *   as --64 -o snp-validate.o snp-validate.S && objcopy -O binary -j .text snp-validate.o stub.bin
 */
    .intel_syntax noprefix
    .code64
start:
    mov r8, [rip + mem_end]
    mov r9, [rip + entry]
    xor r10d, r10d              /* the page being validated */
1:  mov rax, r10                /* its virtual address: the entry tables map it 1:1 */
    xor ecx, ecx                /* 4 KiB */
    mov edx, 1                  /* validate */
    pvalidate
    test eax, eax
    jnz 2f
    add r10, 0x1000
    cmp r10, r8
    jb 1b
    xor eax, eax
    xor edx, edx
    xor r8d, r8d
    xor r10d, r10d
    jmp r9                      /* the kernel, RSI still boot_params */
2:  shl eax, 16                 /* GHCB MSR termination request: code [23:16], set [15:12] */
    or eax, 0x1100
    xor edx, edx
    mov ecx, 0xC0010130         /* the GHCB MSR */
    wrmsr
    .byte 0xf3, 0x0f, 0x01, 0xd9  /* VMGEXIT (REP VMMCALL) */
3:  hlt
    jmp 3b
    .balign 8
mem_end: .quad 0
entry: .quad 0

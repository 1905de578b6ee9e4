"""A guest crash explained: exit reason, registers, and the code around RIP."""

from __future__ import annotations

import capstone

__all__ = ["crash_report"]

_ORDER = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
          "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")


def crash_report(reason: str, regs: dict[str, int] | None, sregs: dict | None,
                 code: bytes | None, rip: int | None) -> str:
    lines = [f"guest crashed: {reason}"]
    if regs is None:
        lines.append("  registers: not visible to the hypervisor (encrypted register state)")
    else:
        for i in range(0, len(_ORDER), 4):
            lines.append("  " + "  ".join(f"{n.upper():>6}={regs[n]:016x}" for n in _ORDER[i:i + 4] if n in regs))
    if sregs:
        lines.append("  " + "  ".join(f"{n.upper()}={int(sregs[n]):#x}" for n in ("cr0", "cr2", "cr3", "cr4", "efer")
                                      if n in sregs))
    if code is None:
        lines.append("  code: guest memory is encrypted; the hypervisor cannot disassemble it")
    elif rip is not None and code:
        cs = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        shown = 0
        for insn in cs.disasm(code, rip):
            marker = "=>" if insn.address == rip else "  "
            lines.append(f"  {marker} {insn.address:#014x}: {insn.bytes.hex():<20} {insn.mnemonic} {insn.op_str}")
            shown += 1
            if shown >= 6:
                break
        if not shown:
            lines.append(f"  => {rip:#014x}: {code[:16].hex()} (does not decode)")
    return "\n".join(lines)

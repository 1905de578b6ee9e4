"""Decode assist: the exact address a faulting instruction touched.

Unicorn's TLB fill hook sees only the page. The architecture reports the byte address (CR2 for
#PF, EXITINFO2 for #NPF), and MMIO emulation needs it, so the CPU decodes the instruction at RIP
and computes its memory operand's effective address, as the hardware's decode assist does.
"""

from __future__ import annotations

from typing import Callable

import capstone
from capstone import x86_const as CX

__all__ = ["fault_address"]

_CS = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
_CS.detail = True
_STACK_OPS = {CX.X86_INS_PUSH, CX.X86_INS_CALL, CX.X86_INS_PUSHFQ}


# A SIB byte with index 100b names no register: capstone calls it riz (eiz with a 0x67 prefix).
_NO_INDEX = {CX.X86_REG_RIZ, CX.X86_REG_EIZ}
_ADDR32 = 0x67


def fault_address(code: bytes, rip: int, reg: Callable[[str], int], page: int) -> int:
    """The address on `page` the instruction at `rip` accessed, or `page` when unknown.

    `reg(name)` reads a register by capstone's name (rax, eax, r8d, fs_base ...); a name it does
    not know (LookupError) makes the address unknown, never a crash: the guest chose the bytes."""
    try:
        insn = next(_CS.disasm(code, rip, 1))
    except StopIteration:
        return page
    mask = 0xFFFF_FFFF if _ADDR32 in insn.prefix else 0xFFFF_FFFF_FFFF_FFFF
    candidates = []
    try:
        for op in insn.operands:
            if op.type != CX.X86_OP_MEM:
                continue
            m = op.mem
            ea = m.disp
            if m.base in (CX.X86_REG_RIP, CX.X86_REG_EIP):
                ea += rip + insn.size
            elif m.base:
                ea += reg(insn.reg_name(m.base))
            if m.index and m.index not in _NO_INDEX:
                ea += reg(insn.reg_name(m.index)) * m.scale
            ea &= mask  # the effective address wraps at the address size; the segment base not
            if m.segment in (CX.X86_REG_FS, CX.X86_REG_GS):
                ea += reg(insn.reg_name(m.segment) + "_base")
            candidates.append((ea & 0xFFFF_FFFF_FFFF_FFFF, op.size))
    except LookupError:
        return page
    if insn.id in _STACK_OPS:
        candidates.append(((reg("rsp") - 8) & 0xFFFF_FFFF_FFFF_FFFF, 8))
    for ea, size in candidates:
        if ea & ~0xFFF == page & ~0xFFF:
            return ea
        if (ea + max(size, 1) - 1) & ~0xFFF == page & ~0xFFF:
            return page & ~0xFFF  # the access crossed into this page at its first byte
    return page

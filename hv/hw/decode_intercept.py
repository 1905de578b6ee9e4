"""Which intercepted instruction the bytes at RIP are: a pure decoder, no CPU state.

The CPU places a code hook on every address where an intercepted instruction may begin
(intercepts.py); when one fires, these bytes (up to 15, fewer where the next page is not mapped)
decide whether it is IN/OUT, CPUID, RDMSR/WRMSR, VMMCALL, VMGEXIT or PVALIDATE, and how long it
is (next-RIP). Register operands (the port in DX, the MSR in ECX, the value in EAX) are the
CPU's to read: they are not in the bytes.

The encodings (AMD64 APM vol. 3, Intel SDM vol. 2):
- legacy prefixes, any number, any order: 66 (operand size: 16-bit for IN/OUT eAX), F3 (REP:
  makes 0F 01 D9 VMGEXIT), F2 (REPNE: makes 0F 01 FF PVALIDATE), F0 (LOCK: #UD on all of
  these), segment overrides and 67 (no effect here);
- REX bytes (40-4F): IN/OUT have no 64-bit form and the other instructions no operands in
  the bytes, so a REX changes nothing, whether it directly precedes the opcode (where it
  counts) or stands before a legacy prefix (where the CPU ignores it);
- IN AL/eAX,imm8 E4/E5 ib; OUT imm8,AL/eAX E6/E7 ib; IN AL/eAX,DX EC/ED; OUT DX,AL/eAX EE/EF;
  CPUID 0F A2; WRMSR 0F 30; RDMSR 0F 32; VMMCALL 0F 01 D9; VMGEXIT F3 0F 01 D9;
  PVALIDATE F2 0F 01 FF.
Anything else, a LOCK prefix, an instruction longer than 15 bytes or one cut short by the end
of what could be fetched decodes to None: the CPU leaves it to Unicorn, which raises #UD, #GP
or the fetch's page fault itself.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

__all__ = ["Decoded", "Insn", "LEGACY_PREFIXES", "MAX_INSN_BYTES", "decode_intercept"]

MAX_INSN_BYTES = 15
LEGACY_PREFIXES = frozenset({0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0x66, 0x67, 0xF0, 0xF2, 0xF3})
_OPSIZE, _REP, _REPNE, _LOCK = 0x66, 0xF3, 0xF2, 0xF0
_REX_FIRST, _REX_LAST = 0x40, 0x4F
_IN_IMM, _IN_DX = (0xE4, 0xE5), (0xEC, 0xED)
_OUT_IMM, _OUT_DX = (0xE6, 0xE7), (0xEE, 0xEF)


class Insn(enum.Enum):
    """The intercepted instructions, by their mnemonics."""

    IN = "in"
    OUT = "out"
    CPUID = "cpuid"
    RDMSR = "rdmsr"
    WRMSR = "wrmsr"
    VMMCALL = "vmmcall"
    VMGEXIT = "vmgexit"
    PVALIDATE = "pvalidate"


@dataclass(frozen=True, slots=True)
class Decoded:
    """One intercepted instruction: what it is and its length in bytes (prefixes included).
    IN/OUT also carry the operand size in bytes and the port of the imm8 forms (None: DX)."""

    insn: Insn
    length: int
    size: int = 0
    port: int | None = None


@functools.lru_cache(maxsize=4096)  # pure: a hook that fires again decodes in a dict lookup
def decode_intercept(code: bytes) -> Decoded | None:
    """The intercepted instruction that `code` begins with, or None (see the module's notes)."""
    code = code[:MAX_INSN_BYTES]  # a longer instruction is #GP: the bytes past 15 never count
    i, opsize = 0, 4
    rep = repne = False
    while i < len(code) and (code[i] in LEGACY_PREFIXES or _REX_FIRST <= code[i] <= _REX_LAST):
        if code[i] == _OPSIZE:
            opsize = 2
        elif code[i] == _REP:
            rep = True
        elif code[i] == _REPNE:
            repne = True
        elif code[i] == _LOCK:
            return None
        i += 1  # a REX byte: no meaning for these instructions, wherever it stands
    if i >= len(code):
        return None
    op = code[i]
    if op in _IN_IMM or op in _OUT_IMM or op in _IN_DX or op in _OUT_DX:
        insn = Insn.IN if op in _IN_IMM or op in _IN_DX else Insn.OUT
        size = 1 if op in (_IN_IMM[0], _OUT_IMM[0], _IN_DX[0], _OUT_DX[0]) else opsize
        if op in _IN_DX or op in _OUT_DX:
            return Decoded(insn, i + 1, size)
        if len(code) < i + 2:
            return None  # the port byte is not mapped
        return Decoded(insn, i + 2, size, code[i + 1])
    if op != 0x0F or len(code) <= i + 1:
        return None
    op2 = code[i + 1]
    if op2 == 0xA2:
        return Decoded(Insn.CPUID, i + 2)
    if op2 == 0x30:
        return Decoded(Insn.WRMSR, i + 2)
    if op2 == 0x32:
        return Decoded(Insn.RDMSR, i + 2)
    if op2 == 0x01 and code[i + 2:i + 3] == b"\xff" and repne:
        return Decoded(Insn.PVALIDATE, i + 3)
    if op2 == 0x01 and code[i + 2:i + 3] == b"\xd9":
        return Decoded(Insn.VMGEXIT if rep else Insn.VMMCALL, i + 3)
    return None

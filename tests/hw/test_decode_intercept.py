"""The intercept decoder over byte strings (hv.hw.decode_intercept).

Every expectation is read off the opcode tables of the AMD64 APM vol. 3 and the Intel SDM vol. 2
(IN, OUT, CPUID, RDMSR, WRMSR, VMMCALL, VMGEXIT, PVALIDATE; prefixes in APM vol. 3 1.2 and SDM
vol. 2 2.1-2.2), not from the code: the length is next-RIP minus RIP, the size the operand size in
bytes, the port the imm8 when the encoding carries one.
"""

import pytest

from hv.hw.decode_intercept import Decoded, Insn, decode_intercept


def decode(hexbytes: str) -> Decoded | None:
    return decode_intercept(bytes.fromhex(hexbytes))


@pytest.mark.parametrize("code, insn, length, size, port", [
    ("e4 60", Insn.IN, 2, 1, 0x60),              # IN AL, imm8
    ("e5 71", Insn.IN, 2, 4, 0x71),              # IN eAX, imm8: 32-bit without 66h
    ("66 e5 71", Insn.IN, 3, 2, 0x71),           # IN AX, imm8
    ("e6 80", Insn.OUT, 2, 1, 0x80),             # OUT imm8, AL
    ("e7 f4", Insn.OUT, 2, 4, 0xF4),             # OUT imm8, eAX
    ("66 e7 f4", Insn.OUT, 3, 2, 0xF4),          # OUT imm8, AX
    ("ec", Insn.IN, 1, 1, None),                 # IN AL, DX
    ("ed", Insn.IN, 1, 4, None),                 # IN eAX, DX
    ("66 ed", Insn.IN, 2, 2, None),              # IN AX, DX
    ("ee", Insn.OUT, 1, 1, None),                # OUT DX, AL
    ("ef", Insn.OUT, 1, 4, None),                # OUT DX, eAX
    ("66 ef", Insn.OUT, 2, 2, None),             # OUT DX, AX
])
def test_port_io_forms(code, insn, length, size, port):
    assert decode(code) == Decoded(insn, length, size, port)


def test_the_imm8_port_is_the_byte_after_the_opcode_whatever_its_value():
    assert decode("e4 ff") == Decoded(Insn.IN, 2, 1, 0xFF)
    assert decode("e6 00") == Decoded(Insn.OUT, 2, 1, 0x00)
    assert decode("e4 ec 90") == Decoded(Insn.IN, 2, 1, 0xEC)  # an opcode-like port byte is data


@pytest.mark.parametrize("code, expected", [
    ("2e ec", Decoded(Insn.IN, 2, 1)),           # segment override: no effect on IN
    ("67 e4 60", Decoded(Insn.IN, 3, 1, 0x60)),  # address size: no memory operand
    ("f3 ec", Decoded(Insn.IN, 2, 1)),           # REP on IN (not INS): ignored
    ("64 65 66 ed", Decoded(Insn.IN, 4, 2)),     # prefixes in any order and number
    ("66 66 ef", Decoded(Insn.OUT, 3, 2)),       # a repeated prefix
])
def test_legacy_prefixes_count_in_the_length_and_only_66h_changes_the_size(code, expected):
    assert decode(code) == expected


@pytest.mark.parametrize("code, expected", [
    ("41 e4 60", Decoded(Insn.IN, 3, 1, 0x60)),  # REX.B: IN has no register operand to extend
    ("48 ed", Decoded(Insn.IN, 2, 4)),           # REX.W: IN has no 64-bit form (eAX stays 32)
    ("66 40 ed", Decoded(Insn.IN, 3, 2)),        # a REX without W leaves 66h's 16 bits
    ("48 66 ed", Decoded(Insn.IN, 3, 2)),        # a REX before a legacy prefix is ignored
    ("48 0f 32", Decoded(Insn.RDMSR, 3)),
    ("4f 0f a2", Decoded(Insn.CPUID, 3)),
])
def test_rex(code, expected):
    assert decode(code) == expected


@pytest.mark.parametrize("code, expected", [
    ("0f a2", Decoded(Insn.CPUID, 2)),
    ("0f 30", Decoded(Insn.WRMSR, 2)),
    ("0f 32", Decoded(Insn.RDMSR, 2)),
    ("66 0f a2", Decoded(Insn.CPUID, 3)),        # operand size: no operand, no effect
    ("0f 01 d9", Decoded(Insn.VMMCALL, 3)),
    ("f3 0f 01 d9", Decoded(Insn.VMGEXIT, 4)),   # VMGEXIT is REP VMMCALL
    ("f2 0f 01 ff", Decoded(Insn.PVALIDATE, 4)),
    ("f2 0f 01 d9", Decoded(Insn.VMMCALL, 4)),   # F2 is no part of VMMCALL or VMGEXIT
])
def test_two_and_three_byte_opcodes(code, expected):
    assert decode(code) == expected


@pytest.mark.parametrize("code", [
    "0f 01 ff",      # PVALIDATE's opcode without its F2: not an instruction
    "f3 0f 01 ff",   # nor with F3
    "0f 01 d8",      # VMRUN: not intercepted here
    "0f 05",         # SYSCALL
    "f4",            # HLT: ends the run by itself, no hook
    "90",
    "c3",
])
def test_other_instructions_are_not_intercepts(code):
    assert decode(code) is None


@pytest.mark.parametrize("code", ["f0 ec", "f0 0f a2", "66 f0 e5 10", "f0 0f 32", "f0 0f 01 d9"])
def test_lock_makes_every_one_of_them_invalid(code):
    """LOCK on an instruction that is not a read-modify-write of memory is #UD (APM vol. 3 1.2.5,
    SDM vol. 2 LOCK): no exit, Unicorn raises #UD."""
    assert decode(code) is None


def test_an_instruction_may_be_15_bytes_and_no_longer():
    """More than 15 bytes is #GP (APM vol. 3 1.1, SDM vol. 2 2.3.11), prefixes and REX included."""
    assert decode("2e" * 14 + "ec") == Decoded(Insn.IN, 15, 1)
    assert decode("2e" * 13 + "48 ec") == Decoded(Insn.IN, 15, 1)
    assert decode("2e" * 13 + "e4 60") == Decoded(Insn.IN, 15, 1, 0x60)
    assert decode("2e" * 15 + "ec") is None
    assert decode("2e" * 14 + "48 ec") is None
    assert decode("2e" * 14 + "e4 60") is None  # the port byte would be the 16th
    assert decode("2e" * 12 + "0f 01 d9") == Decoded(Insn.VMMCALL, 15)
    assert decode("2e" * 13 + "0f 01 d9") is None


@pytest.mark.parametrize("code", [
    "", "66", "f3", "48", "e4", "66 e5", "0f", "0f 01", "f3 0f 01", "f2 0f 01", "66 48 0f",
])
def test_bytes_cut_short_by_the_end_of_the_fetchable_bytes_decode_to_nothing(code):
    """The next page is not mapped: the fetch faults in Unicorn, at the instruction."""
    assert decode(code) is None


def test_bytes_after_the_instruction_do_not_matter():
    assert decode("ec 0f 01 d9") == Decoded(Insn.IN, 1, 1)
    assert decode("0f a2 f4 f4 f4") == Decoded(Insn.CPUID, 2)

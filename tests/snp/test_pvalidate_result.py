"""PVALIDATE's status is EAX: written zero-extended into RAX, never merged with RAX's old bits."""

from __future__ import annotations

import struct

import pytest

from hv.hw.exits import IoExit
from hv.hw.rmp import FAIL_INPUT, FAIL_SIZEMISMATCH
from snpvm import PVALIDATE_GPA, SnpVm
from tinyvm import MAILBOX_GPA, PRIVATE_VA

HIGH = 0xFFFF_8000_0000_0000  # a canonical upper-half address: RAX bits 63:32 all set


def _pvalidate_rax(vm: SnpVm, va: int, size: int) -> int:
    """The whole of RAX after PVALIDATE (the stub stores it to the mailbox at +0x18)."""
    vm.host.write(vm.spa(MAILBOX_GPA), struct.pack("<QQQ", va, size, 1))
    vm.cpu.set_regs({"rip": PVALIDATE_GPA})
    e = vm.cpu.run()
    assert isinstance(e, IoExit) and e.port == 0x80, e
    return struct.unpack("<Q", vm.host.read(vm.spa(MAILBOX_GPA) + 0x18, 8))[0]


@pytest.mark.parametrize("size, status", [(1, FAIL_SIZEMISMATCH), (2, FAIL_INPUT),
                                          (0xFFFF_FFFF, FAIL_INPUT)])
def test_failure_status_is_zero_extended_into_rax(size, status):
    """Scenario: an SNP guest validates an upper-half address with a size the CPU refuses; a
    guest that checks `test rax, rax` (or compares RAX to the status) must see only the status."""
    vm = SnpVm()
    assert _pvalidate_rax(vm, HIGH | PRIVATE_VA, size) == status


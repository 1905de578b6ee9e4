"""The serial console's memory is bounded: hv keeps the last SERIAL_TAIL bytes for summaries,
while the stream (hv run's stdout) still gets every byte."""

from __future__ import annotations

import struct

import pytest

from hv.vmm import Vmm, VmmConfig
from hv.vmm.devices import SERIAL_TAIL, Uart16550


def _printer(count: int) -> bytes:
    """A flat guest writing `count` bytes to COM1, byte i being chr(0x30 + ((count - i) & 0x3f)),
    then exiting with status 0 through port 0x501."""
    return (bytes.fromhex("66baf803") + b"\xb9" + struct.pack("<I", count)  # mov dx,0x3f8; mov ecx,n
            + bytes.fromhex("89c8" "243f" "0430" "ee" "ffc9" "75f5")  # mov eax,ecx; and al,0x3f;
            #                                  add al,0x30; out dx,al; dec ecx; jnz back
            + bytes.fromhex("66ba0105" "31c0" "ee"))                   # mov dx,0x501; out dx,al


def _expected(count: int) -> bytes:
    return bytes(0x30 + ((count - i) & 0x3F) for i in range(count))


def test_uart_keeps_only_its_tail():
    """Scenario: a guest writes several times what the UART keeps; it holds the newest bytes,
    and never more than twice the tail in memory."""
    uart = Uart16550(lambda b: None, keep=1000)
    data = bytes(range(256)) * 20
    for i, b in enumerate(data):
        uart.write(0, 1, b)
        assert len(uart._tail) <= 2000, i
    assert uart.transmitted == data[-1000:]
    assert uart.sent == len(data) and uart.dropped == len(data) - 1000


def test_uart_default_tail_is_one_mib():
    """Scenario: 3 MiB written straight to the UART (no guest, so it is quick)."""
    uart = Uart16550(lambda b: None)
    assert SERIAL_TAIL == 1 << 20
    for _ in range(3 * SERIAL_TAIL):
        uart.write(0, 1, 0x41)
    uart.write(0, 1, 0x42)
    assert len(uart.transmitted) == SERIAL_TAIL and uart.transmitted.endswith(b"AB")
    assert uart.dropped == 2 * SERIAL_TAIL + 1


@pytest.mark.slow
def test_guest_printing_more_than_the_tail():
    """Scenario: a guest prints more than 1 MiB (about 15 s: every byte is an exit). The run's
    summary holds the last SERIAL_TAIL bytes and says how many it dropped; the stream got all."""
    count = SERIAL_TAIL + 100_000
    streamed = bytearray()
    vmm = Vmm(VmmConfig(image=_printer(count), serial_out=streamed.extend))
    result = vmm.run()
    assert (result.exit_reason, result.exit_code) == ("exit", 0)
    expected = _expected(count)
    assert streamed == expected
    assert result.serial.encode() == expected[-SERIAL_TAIL:] == vmm.serial
    assert result.serial_dropped == 100_000
    summary = result.to_json()
    assert len(summary["serial"]) == SERIAL_TAIL and summary["serial_dropped"] == 100_000

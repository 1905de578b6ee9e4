"""A debugger cannot grow the gdb stub without limit: a packet is at most PacketSize payload
bytes, packets sent without waiting for replies are bounded too, and the bytes are scanned in
linear time. A client that breaks a bound is disconnected with one warning, and the guest runs on
as when a debugger goes away (docs/debugging.md)."""

from __future__ import annotations

import socket
import threading
import time
import tracemalloc

import pytest

from hv.vmm import Vmm, VmmConfig
from hv.vmm.gdbstub import DebuggerKilled, GdbStub, PacketReader, ProtocolAbuse
from test_gdbstub_protocol import ENTRY, LOOP, Client

FLOOD = 64 << 20
CHUNK = b"a" * (64 << 10)


@pytest.fixture
def served():
    """A looping guest run by the VMM on a thread, a stub on a free port, its warnings."""
    vmm = Vmm(VmmConfig(image=LOOP))
    warnings: list[str] = []
    stub = GdbStub(vmm, "tcp::0", warnings.append)
    stub.listen()
    over = threading.Event()

    def on_exit(v, e):
        if over.is_set():
            raise DebuggerKilled("the test is over")
        stub.on_exit(v, e)

    vmm.config.on_exit = on_exit
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = vmm.run()
        except DebuggerKilled:
            pass  # the fixture ended the run

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield vmm, stub, warnings, thread, outcome
    over.set()
    stub.close()
    vmm.vcpu.kick()
    thread.join(10)


def _disconnected_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the stub closes `sock`; fails the test after `seconds`."""
    start = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the stub still reads from the client after {seconds} s")
    return time.monotonic() - start


def _flood(sock: socket.socket, prefix: bytes, total: int) -> threading.Thread:
    def send():
        try:
            sock.sendall(prefix)
            for _ in range(total // len(CHUNK)):
                sock.sendall(CHUNK)
        except OSError:
            pass  # the stub hung up, as it should

    t = threading.Thread(target=send, daemon=True)
    t.start()
    return t


def _runs_on_and_serves_another(vmm, stub, thread, outcome) -> None:
    assert thread.is_alive() and not outcome   # the guest was not stopped for good, hv still runs
    deadline = time.monotonic() + 60           # the old connection is detached at the next stop
    while True:
        try:
            again = Client(stub.port)
            assert again.ask("?").startswith("T05")
            break
        except (OSError, ConnectionError):
            if time.monotonic() > deadline:
                pytest.fail("could not attach again")
            time.sleep(0.05)
    assert again.ask(f"m{ENTRY:x},5") == LOOP.hex()
    again.send("D")
    assert again._recv_packet() == "OK"


def test_64_mib_without_a_terminator_is_cut_off_at_packetsize(served):
    """Scenario: a client sends '$' and 64 MiB without '#' (the old stub buffered it all and
    scanned it quadratically: 355 s). It is disconnected at once, memory stays flat, one warning."""
    vmm, stub, warnings, thread, outcome = served
    c = Client(stub.port)
    assert c.ask("?").startswith("T05")
    features = dict(f.split("=", 1) for f in c.ask("qSupported").split(";") if "=" in f)
    assert int(features["PacketSize"], 16) == 0x4000
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        sender = _flood(c.sock, b"$", FLOOD)
        took = _disconnected_within(c.sock, 10)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    sender.join(10)
    assert took < 3, took
    assert peak < 2 << 20, peak
    assert len(warnings) == 1 and "PacketSize" in warnings[0] and "\n" not in warnings[0], warnings
    _runs_on_and_serves_another(vmm, stub, thread, outcome)
    assert len(warnings) == 1


def test_a_packet_of_packetsize_is_served_and_one_byte_more_is_not(served):
    vmm, stub, warnings, thread, outcome = served
    c = Client(stub.port)
    c.ask("?")
    longest = "qSupported:" + "x" * (0x4000 - len("qSupported:"))
    assert "PacketSize=4000" in c.ask(longest)
    assert warnings == []
    c.send(longest + "x")
    _disconnected_within(c.sock, 10)
    assert len(warnings) == 1 and "PacketSize" in warnings[0]
    _runs_on_and_serves_another(vmm, stub, thread, outcome)


def test_packets_sent_without_waiting_for_replies_are_bounded(served):
    """Scenario: the guest runs (`c`), and the client pours in ten thousand '?' packets that
    nobody answers until the next stop. It is disconnected with one warning; the guest runs on."""
    vmm, stub, warnings, thread, outcome = served
    c = Client(stub.port)
    c.ask("?")
    c.send("c")
    c.sock.sendall(b"$?#3f" * 10_000)
    _disconnected_within(c.sock, 10)
    assert len(warnings) == 1 and "packets" in warnings[0], warnings
    _runs_on_and_serves_another(vmm, stub, thread, outcome)


def test_framing_is_linear_and_survives_any_split():
    """Scenario: 64 MiB of bytes outside any packet are dropped in linear time; a packet split
    at every byte still arrives whole; Ctrl-C counts only outside a packet."""
    reader = PacketReader()
    start = time.monotonic()
    for _ in range(FLOOD // len(CHUNK)):
        assert list(reader.feed(CHUNK)) == []
    assert time.monotonic() - start < 3
    stream = b"+-junk\x03$m10,4#8c$a\x03b#00"
    frames = [f for i in range(len(stream)) for f in reader.feed(stream[i:i + 1])]
    assert frames == [("interrupt", b"", b""), ("packet", b"m10,4", b"8c"),
                      ("packet", b"a\x03b", b"00")]
    with pytest.raises(ProtocolAbuse):
        for _ in range(4):
            list(reader.feed(b"$" + b"y" * 0x1000))  # '$' inside a packet is payload


def test_register_numbers_and_widths_are_checked(served):
    """Scenario: `p-1` named the last register through a negative index, and `P10=` with an
    empty or over-long value set RIP to 0 or to a truncated number; now they are refused."""
    vmm, stub, warnings, thread, outcome = served
    c = Client(stub.port)
    c.ask("?")
    before = c.ask("p10")
    assert c.ask("p-1") == "E45" and c.ask("P-1=0000") == "E45"
    assert c.ask("P10=") == "E01" and c.ask("P10=" + "ff" * 9) == "E01"
    assert c.ask("p10") == before
    c.send("D")
    assert c._recv_packet() == "OK"

"""The stub's remote-protocol behaviour, driven over a raw localhost socket: breakpoints are hooks
that leave guest memory untouched, continue from a breakpoint does not stop at once, Ctrl-C
interrupts a running guest, a step moves exactly one instruction, `k` ends the run."""

import socket
import threading
import time

import pytest

from hv.kvm import exits as K
from hv.vmm import Vmm, VmmConfig
from hv.vmm.gdbstub import DebuggerKilled, GdbError, GdbStub, parse_gdb_address

ENTRY = 0x100000
LOOP = bytes.fromhex("90 90 90 eb fe")  # nop; nop; nop; jmp $


class Client:
    def __init__(self, port: int):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""

    def _recv_packet(self) -> str:
        while True:
            start = self.buf.find(b"$")
            end = self.buf.find(b"#", start)
            if start >= 0 and end >= 0 and len(self.buf) >= end + 3:
                payload = self.buf[start + 1:end]
                assert self.buf[end + 1:end + 3] == b"%02x" % (sum(payload) & 0xFF)
                self.buf = self.buf[end + 3:]
                self.sock.sendall(b"+")
                return payload.decode()
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("the stub closed the connection")
            self.buf += data

    def send(self, payload: str) -> None:
        p = payload.encode()
        self.sock.sendall(b"$" + p + b"#%02x" % (sum(p) & 0xFF))

    def ask(self, payload: str) -> str:
        self.send(payload)
        return self._recv_packet()

    def wait_stop(self) -> str:
        return self._recv_packet()


@pytest.fixture
def guest():
    """A looping flat guest run by the VMM on a thread, with a stub on a free port."""
    vmm = Vmm(VmmConfig(image=LOOP))
    warnings = []
    stub = GdbStub(vmm, "tcp::0", warnings.append)
    stub.listen()
    over = threading.Event()

    def on_exit(v, e):
        if over.is_set():
            raise DebuggerKilled("the test is over")  # ends the VMM's loop on its next exit
        stub.on_exit(v, e)

    vmm.config.on_exit = on_exit
    outcome = {}

    def run():
        try:
            outcome["result"] = vmm.run()
        except DebuggerKilled as e:
            outcome["killed"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    yield vmm, Client(stub.port), outcome, t
    over.set()
    stub.close()
    vmm.vcpu.kick()
    t.join(10)


def rip(client: Client) -> int:
    regs = client.ask("g")
    return int.from_bytes(bytes.fromhex(regs[16 * 16:17 * 16]), "little")


def test_breakpoint_leaves_memory_alone_and_interrupt_stops(guest):
    vmm, c, outcome, thread = guest
    assert c.ask("?").startswith("T05")             # attaching stops the running guest
    assert c.ask("qAttached") == "1"
    assert c.ask(f"m{ENTRY:x},5") == LOOP.hex()
    assert c.ask(f"Z0,{ENTRY + 3:x},1") == "OK"
    assert c.ask(f"m{ENTRY:x},5") == LOOP.hex()     # no 0xCC anywhere
    c.send("c")
    assert c.wait_stop().startswith("T05")
    assert rip(c) == ENTRY + 3
    c.send("c")                                      # from the breakpoint: runs the jmp, hits again
    assert c.wait_stop().startswith("T05") and rip(c) == ENTRY + 3
    assert c.ask(f"z0,{ENTRY + 3:x},1") == "OK"
    c.send("c")
    c.sock.sendall(b"\x03")
    assert c.wait_stop().startswith("T02")           # SIGINT: interrupted by the debugger
    c.send("k")
    thread.join(10)
    assert "killed" in outcome
    assert vmm.vcpu.exit_counts["INTR"] >= 4


def test_single_step_moves_one_instruction(guest):
    vmm, c, outcome, thread = guest
    c.ask("?")
    regs = c.ask("g")
    rbx = (0x1122334455667788).to_bytes(8, "little").hex()
    assert c.ask("G" + regs[:16] + rbx + regs[32:]) == "OK"   # the whole file back, RBX changed
    assert vmm.vcpu.get_regs()["rbx"] == 0x1122334455667788
    assert c.ask(f"P10={ENTRY.to_bytes(8, 'little').hex()}") == "OK"  # register 16 is RIP
    assert rip(c) == ENTRY
    for expected in (ENTRY + 1, ENTRY + 2, ENTRY + 3):
        c.send("s")
        assert c.wait_stop().startswith("T05")
        assert rip(c) == expected
    c.send("D")
    assert c._recv_packet() == "OK"


def test_target_description_and_threads(guest):
    _vmm, c, _outcome, _thread = guest
    c.ask("?")
    assert "qXfer:features:read+" in c.ask("qSupported:multiprocess+;swbreak+")
    xml = c.ask("qXfer:features:read:target.xml:0,3fff")
    assert xml.startswith("l") and "<architecture>i386:x86-64</architecture>" in xml
    assert c.ask("qfThreadInfo") == "m01" and c.ask("qsThreadInfo") == "l"
    assert c.ask("qC") == "QC01"
    assert c.ask("vCont?").startswith("vCont;")
    assert c.ask("p10") == rip(c).to_bytes(8, "little").hex()
    assert c.ask("m0,10") == "E14"                       # page 0 is not mapped
    assert c.ask("mzz") == "E01"                         # malformed: refused, still serving
    c.send("k")


@pytest.mark.parametrize("spec", ["1234", "tcp:0.0.0.0:1234", "udp::1", "tcp::99999", "tcp::x"])
def test_bad_addresses_are_refused(spec):
    with pytest.raises(GdbError):
        parse_gdb_address(spec)


def test_addresses_are_localhost():
    assert parse_gdb_address("tcp::1234") == ("127.0.0.1", 1234)
    assert parse_gdb_address("tcp:localhost:0") == ("127.0.0.1", 0)



def test_a_vanished_debugger_is_detached_and_another_can_attach(guest):
    vmm, c, outcome, thread = guest
    assert c.ask("?").startswith("T05")
    assert c.ask(f"Z0,{ENTRY + 3:x},1") == "OK"
    c.send("c")
    assert c.wait_stop().startswith("T05")
    c.send("c")
    c.sock.close()                       # gone while the guest runs: detached at the next stop
    deadline = time.monotonic() + 60     # generous: the machines running CI are shared
    while True:
        try:
            again = Client(c.port)
            assert again.ask("?").startswith("T05")
            break
        except (OSError, ConnectionError):
            if time.monotonic() > deadline:
                pytest.fail("could not attach again")
            time.sleep(0.05)             # the old connection is not yet detached: one at a time
    assert ENTRY <= rip(again) < ENTRY + len(LOOP)
    assert again.ask(f"m{ENTRY:x},5") == LOOP.hex()
    again.send("k")
    thread.join(10)
    assert "killed" in outcome

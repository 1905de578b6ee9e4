"""A GDB remote-serial-protocol stub: `hv run --gdb tcp::PORT [-S]`, QEMU's spelling.

The stub is a VMM component, so it sees what the hypervisor sees (hv.vmm.debugview): memory
through the PSP's DBG_DECRYPT for private pages, ciphertext under the NODBG policy.

Threads. The vCPU runs on the VMM's thread. Once the guest is launched (`listen`: a debugger
that connected during the launch would wait for replies past gdb's timeout), a listener thread
accepts one debugger at a time and a reader thread per connection parses packets into a queue;
a Ctrl-C byte (0x03) from a running debugger kicks the vCPU. Every packet is answered on the VMM's thread while the guest is stopped,
inside the VMM's exit hook (`on_exit`): a stop is a kick (KVM_EXIT_INTR) that the stub asked for,
and the hook returns only when the debugger resumes (c, s, D). So the run loop is the VMM's own
and the guest pays nothing for a debugger that is not stopping it.

Breakpoints (Z0/Z1) are vCPU code hooks at guest-virtual addresses, never 0xCC bytes: the
guest's memory and its launch measurement stay untouched. A single step (s) is a hook on every
instruction that stops at the first instruction boundary at another address than the one the
step started from (so `jmp .` steps forever, and a `rep` string instruction steps whole).

Bounds. The debugger is a local client, but nothing it sends may grow hv without limit: a packet
is at most PacketSize (advertised in qSupported) payload bytes, at most _MAX_QUEUED packets wait
for the VMM's thread, and the bytes are scanned once each. A client that breaks a bound is
disconnected with one warning and treated as a debugger that went away: the guest runs on.
"""

from __future__ import annotations

import queue
import re
import socket
import threading
from typing import Callable

from hv.kvm import exits as K
from hv.vmm.debugview import REGISTERS, DebugView

__all__ = ["DebuggerKilled", "GdbError", "GdbStub", "PacketReader", "ProtocolAbuse", "parse_gdb_address"]

_SIGINT, _SIGTRAP = 2, 5
_MAX_PACKET = 0x4000   # payload bytes between '$' and '#': what qSupported's PacketSize says
_MAX_QUEUED = 64       # packets waiting to be answered; gdb sends one and waits for its reply
_RECV = 0x10000
_FRAME_START = re.compile(rb"[$\x03]")  # outside a packet only these two bytes mean anything
_SEGMENTS = {"cs", "ss", "ds", "es", "fs", "gs"}
# GDB's i386:x86-64 core registers after the 24 in REGISTERS: st0-7 (10 bytes), fctrl..fop (4).
# hv does not model the x87 unit for a debugger; they are reported unavailable ('x').
_UNAVAILABLE = [10] * 8 + [4] * 8
_WIDTH = {n: (4 if n in _SEGMENTS or n == "rflags" else 8) for n in REGISTERS}
_TARGET_XML = """<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
<architecture>i386:x86-64</architecture>
<feature name="org.gnu.gdb.i386.core">
{regs}
</feature>
</target>
"""


def _target_xml() -> str:
    types = {"rbp": "data_ptr", "rsp": "data_ptr", "rip": "code_ptr"}
    lines = []
    for n in REGISTERS:
        name = "eflags" if n == "rflags" else n
        bits = 8 * _WIDTH[n]
        lines.append(f'<reg name="{name}" bitsize="{bits}" type="{types.get(n, f"int{bits}")}"/>')
    for i in range(8):
        lines.append(f'<reg name="st{i}" bitsize="80" type="i387_ext" group="float"/>')
    for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"):
        lines.append(f'<reg name="{n}" bitsize="32" type="int" group="float"/>')
    return _TARGET_XML.format(regs="\n".join(lines))


class GdbError(Exception):
    """Bad --gdb address, or the port cannot be opened."""


class DebuggerKilled(Exception):
    """The debugger sent `k`: hv stops the guest and ends, as QEMU does."""


def parse_gdb_address(spec: str) -> tuple[str, int]:
    """`tcp::PORT` or `tcp:localhost:PORT` (QEMU's -gdb syntax); only localhost is served."""
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] != "tcp" or not parts[2].isdigit():
        raise GdbError(f"--gdb {spec!r}: expected tcp::PORT or tcp:localhost:PORT")
    host = parts[1] or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost"):
        raise GdbError(f"--gdb {spec!r}: the stub listens on localhost only (it exposes the guest)")
    port = int(parts[2])
    if port > 65535:
        raise GdbError(f"--gdb {spec!r}: port {port} is out of range")
    return "127.0.0.1", port


def _checksum(payload: bytes) -> bytes:
    return b"%02x" % (sum(payload) & 0xFF)


def _le_hex(value: int, width: int) -> str:
    return (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little").hex()


class ProtocolAbuse(Exception):
    """The debugger broke one of the stub's bounds (docs/debugging.md)."""


class PacketReader:
    """Remote-protocol framing, fed with bytes as they arrive, in time linear in their number.

    Yields ("interrupt", b"", b"") for a Ctrl-C byte outside a packet and ("packet", payload,
    checksum) for `$payload#cs`; '+', '-' and stray bytes between packets are dropped. Only the
    packet being read is kept, so memory stays within PacketSize; ProtocolAbuse past it."""

    def __init__(self, max_payload: int = _MAX_PACKET):
        self._max = max_payload
        self._payload = bytearray()
        self._check = bytearray()
        self._state = "idle"   # idle -> payload ('$' seen) -> checksum ('#' seen) -> idle

    def feed(self, data: bytes):
        i, n = 0, len(data)
        while i < n:
            if self._state == "idle":
                m = _FRAME_START.search(data, i)
                if m is None:
                    return
                i = m.end()
                if m.group() == b"\x03":
                    yield "interrupt", b"", b""
                else:
                    self._payload.clear()
                    self._state = "payload"
            elif self._state == "payload":
                end = data.find(b"#", i)
                stop = n if end < 0 else end
                if len(self._payload) + stop - i > self._max:
                    raise ProtocolAbuse(f"a packet longer than PacketSize ({self._max} bytes)")
                self._payload += data[i:stop]
                if end < 0:
                    return
                i = end + 1
                self._check.clear()
                self._state = "checksum"
            else:
                take = min(2 - len(self._check), n - i)
                self._check += data[i:i + take]
                i += take
                if len(self._check) == 2:
                    self._state = "idle"
                    yield "packet", bytes(self._payload), bytes(self._check)


class _Connection:
    """One debugger's socket: a reader thread turns bytes into packets and interrupts."""

    def __init__(self, sock: socket.socket, on_interrupt: Callable[[], None],
                 on_closed: Callable[[], None], warn: Callable[[str], None]):
        self.sock = sock
        # Unbounded as a type, bounded by _read: "closed" must always find room.
        self.inbox: queue.Queue[tuple[str, str]] = queue.Queue()
        self.acks = True
        self._on_interrupt = on_interrupt
        self._on_closed = on_closed
        self._warn = warn
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        reader = PacketReader()
        while True:
            try:
                data = self.sock.recv(_RECV)
            except OSError:
                data = b""
            if data:
                try:
                    self._dispatch(reader.feed(data))
                except ProtocolAbuse as e:
                    self._warn(f"warning: gdb stub: {e}: debugger disconnected")
                    self._drop_queued()
                    self.close()
                    data = b""
            if not data:
                self.inbox.put(("closed", ""))
                self._on_closed()
                return

    def _dispatch(self, frames) -> None:
        for kind, payload, check in frames:
            if kind == "interrupt":
                self._on_interrupt()
            elif _checksum(payload) == check.lower() or not self.acks:
                if self.inbox.qsize() >= _MAX_QUEUED:
                    raise ProtocolAbuse(f"more than {_MAX_QUEUED} packets sent without waiting "
                                        "for replies")
                self.inbox.put(("packet", payload.decode("latin-1")))
            else:
                self.send_raw(b"-")

    def _drop_queued(self) -> None:
        """A disconnected abuser's queued packets are not answered (nor obeyed)."""
        try:
            while True:
                self.inbox.get_nowait()
        except queue.Empty:
            pass

    def send_raw(self, data: bytes) -> None:
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                pass  # the debugger went away; the reader reports it

    def send(self, payload: str) -> None:
        p = payload.encode("latin-1")
        self.send_raw(b"$" + p + b"#" + _checksum(p))

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


class GdbStub:
    """Serve one guest's vCPU to GDB. Install `on_exit` as the VMM's exit hook."""

    def __init__(self, vmm, spec: str, warn: Callable[[str], None], wait: bool = False):
        host, port = parse_gdb_address(spec)
        # Bound now, so a port in use is refused before the launch; listening only from
        # `listen()`, once the guest can be served (see there).
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
        except OSError as e:
            self._listener.close()
            raise GdbError(f"--gdb {spec}: cannot listen on {host}:{port}: {e.strerror}") from None
        self.port = self._listener.getsockname()[1]
        self._vmm = vmm
        self._vcpu = vmm.vcpu
        self._warn = warn
        self._view = DebugView(vmm, warn)
        self._conn: _Connection | None = None
        self._connected = threading.Event()
        self._stop: int | None = None   # signal of a stop the stub asked for
        self._owed = False               # the debugger waits for a stop reply (after c or s)
        self._breakpoints: dict[int, object] = {}
        self._skip: int | None = None    # resuming at a breakpoint: do not stop there at once
        self._step_hook = None
        self._step_from: int | None = None
        self._last_signal = _SIGTRAP
        self._closed = False
        self._waiting = wait            # -S: the first debugger finds the guest not yet started

    def listen(self) -> None:
        """Accept debuggers from now on. Call it once the guest is launched: gdb gives each
        reply remote_timeout (2 s) three times, and a debugger accepted during a slow launch
        would take the late reply to qSupported for the reply to its next packet
        (vMustReplyEmpty) and give up."""
        try:
            self._listener.listen()
        except OSError as e:
            raise GdbError(f"--gdb: cannot listen on 127.0.0.1:{self.port}: {e.strerror}") from None
        threading.Thread(target=self._accept, daemon=True).start()

    # -- connections -------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._closed:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            if self._conn is not None:
                sock.close()  # one debugger at a time
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # A debugger that goes away while the guest runs is detached at the next stop.
            self._conn = _Connection(sock, self._interrupt, lambda: self._request_stop(_SIGTRAP),
                                     self._warn)
            if not self._waiting:
                self._request_stop(_SIGTRAP)  # a running guest stops when a debugger attaches
            self._connected.set()

    def _interrupt(self) -> None:
        # gdb sends Ctrl-C only after resuming; if the resume packet is still queued, the kick
        # stays pending in the vCPU and the guest stops as soon as it has resumed.
        self._request_stop(_SIGINT)

    def _request_stop(self, signal: int) -> None:
        if self._stop is None:
            self._stop = signal
        self._vcpu.kick()

    def wait_attach(self) -> None:
        """-S: wait for a debugger before the first instruction and serve it until it resumes."""
        self._connected.wait()
        self._waiting = False
        self._serve(_SIGTRAP)

    # -- the VMM's exit hook -------------------------------------------------------------------------
    def on_exit(self, _vmm, exit_) -> None:
        if isinstance(exit_, K.Intr) and self._stop is not None and self._conn is not None:
            signal, self._stop = self._stop, None
            self._serve(signal)

    def finish(self, exit_code: int, crashed: bool) -> None:
        """The guest is gone: tell a waiting debugger (W: exited, X: killed by a signal)."""
        conn = self._conn
        if conn is not None and self._owed:
            conn.send(f"X{11:02x}" if crashed else f"W{exit_code & 0xFF:02x}")
        self.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- stopped: answer packets until the debugger resumes -----------------------------------------
    def _serve(self, signal: int) -> None:
        self._clear_step()
        self._last_signal = signal
        conn = self._conn
        if conn is None:
            return
        if self._owed:
            self._owed = False
            conn.send(self._stop_reply())
        while True:
            kind, packet = conn.inbox.get()
            if kind == "closed":
                self._detach()  # a debugger that goes away leaves the guest running
                return
            if conn.acks:
                conn.send_raw(b"+")
            try:
                reply, resume = self._handle(packet)
            except (ValueError, IndexError):
                reply, resume = "E01", False  # a malformed packet: refuse it, keep serving
            if reply is not None:
                conn.send(reply)
            if packet == "QStartNoAckMode":
                conn.acks = False
            if packet[:1] == "D":
                self._detach()
            if resume:
                return

    def _stop_reply(self) -> str:
        return f"T{self._last_signal:02x}thread:01;"

    def _handle(self, p: str) -> tuple[str | None, bool]:
        """One packet: (reply or None, whether the guest resumes)."""
        if p.startswith("qSupported"):
            return f"PacketSize={_MAX_PACKET:x};qXfer:features:read+;QStartNoAckMode+", False
        if p.startswith("qXfer:features:read:target.xml:"):
            return self._xfer(p.rsplit(":", 1)[1]), False
        if p in ("QStartNoAckMode", "qSymbol::") or p[:1] == "H" or p[:1] == "T":
            return "OK", False
        if p == "?":
            return self._stop_reply(), False
        if p == "qAttached" or p.startswith("qAttached:"):
            return "1", False   # gdb detaches (not kills) when it quits, as with QEMU
        if p == "qC":
            return "QC01", False
        if p == "qfThreadInfo":
            return "m01", False
        if p == "qsThreadInfo":
            return "l", False
        if p == "g":
            return self._read_registers(), False
        if p[:1] == "G":
            return self._write_registers(p[1:]), False
        if p[:1] == "p":
            return self._read_register(int(p[1:], 16)), False
        if p[:1] == "P":
            n, value = p[1:].split("=", 1)
            return self._write_register(int(n, 16), value), False
        if p[:1] == "m":
            return self._read_memory(p[1:]), False
        if p[:1] == "M":
            return self._write_memory(p[1:]), False
        if p[:2] in ("Z0", "Z1", "z0", "z1"):
            return self._breakpoint(p[0] == "Z", int(p.split(",")[1], 16)), False
        if p[:1] in ("c", "s"):
            return self._resume(p[0], p[1:]), True
        if p == "vCont?":
            return "vCont;c;C;s;S", False
        if p.startswith("vCont;"):
            action = p.split(";")[1][:1].lower()   # one thread: its action is the first
            return self._resume(action, ""), True
        if p[:1] == "D":
            return "OK", True  # _serve detaches once the reply is out
        if p == "k" or p.startswith("vKill"):
            if p != "k":
                self._conn.send("OK")  # vKill is answered; k is not
            self.close()
            raise DebuggerKilled("the debugger killed the guest")
        return "", False  # not supported: gdb falls back

    # -- packets -----------------------------------------------------------------------------------
    def _xfer(self, window: str) -> str:
        offset, length = (int(x, 16) for x in window.split(","))
        xml = _target_xml()
        chunk = xml[offset:offset + length]
        return ("l" if offset + length >= len(xml) else "m") + chunk

    def _read_registers(self) -> str:
        regs = self._view.registers()
        out = "".join(_le_hex(regs.get(n, 0), _WIDTH[n]) for n in REGISTERS)
        return out + "".join("xx" * w for w in _UNAVAILABLE)

    def _write_registers(self, data: str) -> str:
        values, pos = {}, 0
        for n in REGISTERS:
            field = data[pos:pos + 2 * _WIDTH[n]]
            pos += 2 * _WIDTH[n]
            if len(field) == 2 * _WIDTH[n] and "x" not in field:
                values[n] = int.from_bytes(bytes.fromhex(field), "little")
        return "OK" if self._view.set_registers(values) else "E01"

    def _read_register(self, n: int) -> str:
        if n < 0:
            return "E45"
        if n < len(REGISTERS):
            name = REGISTERS[n]
            return _le_hex(self._view.registers().get(name, 0), _WIDTH[name])
        if n < len(REGISTERS) + len(_UNAVAILABLE):
            return "xx" * _UNAVAILABLE[n - len(REGISTERS)]
        return "E45"

    def _write_register(self, n: int, value: str) -> str:
        if not 0 <= n < len(REGISTERS):
            return "E45"
        if len(value) != 2 * _WIDTH[REGISTERS[n]]:
            return "E01"  # gdb sends the register's whole width; anything else is malformed
        v = int.from_bytes(bytes.fromhex(value), "little")
        return "OK" if self._view.set_registers({REGISTERS[n]: v}) else "E01"

    def _read_memory(self, args: str) -> str:
        addr, length = (int(x, 16) for x in args.split(","))
        data = self._view.read(addr, min(length, _MAX_PACKET // 2 - 8))
        return data.hex() if data or not length else "E14"

    def _write_memory(self, args: str) -> str:
        where, data = args.split(":", 1)
        addr, _length = (int(x, 16) for x in where.split(","))
        return "OK" if self._view.write(addr, bytes.fromhex(data)) else "E14"

    def _breakpoint(self, insert: bool, addr: int) -> str:
        if insert and addr not in self._breakpoints:
            self._breakpoints[addr] = self._vcpu.add_code_hook(self._on_breakpoint, addr)
        elif not insert and addr in self._breakpoints:
            self._vcpu.remove_code_hook(self._breakpoints.pop(addr))
        return "OK"

    def _resume(self, action: str, addr: str) -> None:  # no reply until the guest stops
        if addr:
            self._view.set_registers({"rip": int(addr, 16)})
        rip = self._view.registers()["rip"]
        self._skip = rip if rip in self._breakpoints else None
        if action == "s":
            self._step_from = rip
            self._step_hook = self._vcpu.add_code_hook(self._on_step)
        self._owed = True
        return None

    def _detach(self) -> None:
        for handle in self._breakpoints.values():
            self._vcpu.remove_code_hook(handle)
        self._breakpoints.clear()
        self._clear_step()
        self._skip = None
        self._owed = False
        self._stop = None
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    # -- hooks (on the vCPU's thread, inside the guest's instruction stream) -------------------------
    def _on_breakpoint(self, addr: int, _size: int) -> None:
        if addr == self._skip:
            self._skip = None
            return
        self._request_stop(_SIGTRAP)

    def _on_step(self, addr: int, _size: int) -> None:
        if addr != self._step_from:
            self._skip = None
            self._request_stop(_SIGTRAP)

    def _clear_step(self) -> None:
        if self._step_hook is not None:
            self._vcpu.remove_code_hook(self._step_hook)
            self._step_hook = None
            self._step_from = None

"""When `hv run --gdb` starts answering: a debugger must find the guest launched and the stub
ready to reply at once. gdb waits remote_timeout (2 s) three times for each reply; one that
connected during a slow launch (an SEV launch on a loaded machine) took the late reply to
qSupported for the reply to vMustReplyEmpty and gave up."""

import socket

from click.testing import CliRunner

from hv.cli import main
from hv.vmm import gdbstub
from hv.vmm import Vmm, VmmConfig

from seeing_support import HELLO


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_the_port_is_bound_at_once_but_accepts_only_from_listen():
    """Scenario: a stub is made before the launch and told to listen after it."""
    stub = gdbstub.GdbStub(Vmm(VmmConfig(image=HELLO.read_bytes())), "tcp::0", print)
    try:
        assert stub.port and _refused(stub.port)   # bound: a port in use fails before the launch
        stub.listen()
        assert not _refused(stub.port)
    finally:
        stub.close()


def test_hv_run_listens_only_once_the_guest_is_launched(monkeypatch, psp_state):
    """Scenario: `hv run --gdb tcp::0 --sev` with a debugger knocking during the launch."""
    stubs, knocks = [], []
    real_init, real_load = gdbstub.GdbStub.__init__, Vmm.load

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        stubs.append(self)

    def load(self, *args, **kwargs):
        knocks.append(_refused(stubs[0].port))
        real_load(self, *args, **kwargs)

    monkeypatch.setattr(gdbstub.GdbStub, "__init__", init)
    monkeypatch.setattr(Vmm, "load", load)
    r = CliRunner().invoke(main, ["run", str(HELLO), "--sev", "-q", "--gdb", "tcp::0",
                                  "--psp-state", psp_state])
    assert r.exit_code == 0, r.output
    assert knocks == [True]   # no debugger is accepted while the launch runs
    assert "gdb stub listening on 127.0.0.1:" in r.output

"""guests/linux/hv-report, the test initramfs's attestation client: rebuilt bit for bit, and run
on this machine with its /dev/sev-guest requests answered by a tracer.

No SEV-SNP kernel is needed: the tracer (ptrace, PTRACE_SYSCALL) lets every system call through
except the client's open of /dev/sev-guest, its ioctls and its close, which it answers itself. It
reads the ioctl's structures out of the client's memory and writes a MSG_REPORT_RSP (and, for
SNP_GET_EXT_REPORT, hv's certificate table from sevwire) back, as Linux 6.1's sev-guest driver
would. The structure sizes and ioctl numbers below come from include/uapi/linux/sev-guest.h and
the kernel's _IOC encoding, not from the client's source.
"""

from __future__ import annotations

import ctypes
import os
import platform
import signal
import struct
import subprocess
from pathlib import Path

import pytest

import sevwire
from hv.owner._snp_report import read_report
from tests.guests.test_images import _toolchain_skip_reason, build_guests

REPO = Path(__file__).resolve().parents[2]
CLIENT = REPO / "guests" / "linux" / "hv-report"

# _IOWR('S', nr, struct snp_guest_request_ioctl): dir 3 << 30 | size 32 << 16 | 'S' << 8 | nr.
SNP_GET_REPORT = 0xC0205300
SNP_GET_EXT_REPORT = 0xC0205302
IOCTL_ARG = struct.Struct("<B7xQQQ")  # msg_version, req_data, resp_data, fw_err: 32 bytes
REPORT_REQ_SIZE = 96                  # user_data[64], vmpl u32, rsvd[28]
EXT_REQ = struct.Struct("<96sQI4x")    # data, certs_address, certs_len: 112 bytes
RESP_SIZE = 4000
CERTS_LEN = 16384
FAKE_FD = 77

NONCE = bytes(range(0x40, 0x80))
_PATTERN = bytes((i * 7 + 3) & 0xFF for i in range(0x4A0))
REPORT = _PATTERN[:0x50] + NONCE + _PATTERN[0x90:]  # report_data at 0x50
CERTS = [(sevwire.SNP_CERT_VCEK_GUID, b"\x30\x82vcek" * 50), (sevwire.SNP_CERT_ASK_GUID, b"ask" * 9),
         (sevwire.SNP_CERT_ARK_GUID, b"\x01")]


def _native_x86_64_linux() -> bool:
    return platform.system() == "Linux" and platform.machine() == "x86_64"


needs_x86_64 = pytest.mark.skipif(not _native_x86_64_linux(), reason="runs an x86-64 Linux binary")


def test_committed_client_rebuilds_bit_for_bit(tmp_path):
    """Scenario: anyone with the recorded gcc/binutils rebuilds exactly the committed client."""
    reason = _toolchain_skip_reason()
    if reason:
        pytest.skip(reason)
    fresh = build_guests.build_linux_client(tmp_path).read_bytes()
    assert fresh == CLIENT.read_bytes(), "hv-report differs from a rebuild: run tools/build_guests.py"
    for leak in (str(REPO), str(tmp_path)):
        assert leak.encode() not in fresh


def test_client_is_a_small_static_executable():
    """Scenario: busybox's initramfs has no dynamic loader, so the client must need none."""
    data = CLIENT.read_bytes()
    assert os.access(CLIENT, os.X_OK)
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1  # ELF64, little-endian
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    assert (e_type, e_machine) == (2, 62)  # ET_EXEC, EM_X86_64
    phoff, phentsize, phnum = struct.unpack_from("<Q", data, 32)[0], *struct.unpack_from("<HH", data, 54)
    types = {struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)}
    assert 3 not in types and 2 not in types, "PT_INTERP or PT_DYNAMIC: not a static executable"
    assert 4 not in types, "PT_NOTE: a build id or property note reached the binary"
    assert b"GCC:" not in data and len(data) < 32768


# -- running the client ---------------------------------------------------------------------------


@needs_x86_64
@pytest.mark.parametrize("args", [[], ["00" * 64, "x"], ["0" * 127], ["0" * 129], ["g" * 128],
                                  ["--ext"], ["--EXT", "00" * 64], ["--ext", "00" * 63]])
def test_bad_usage_exits_2(args):
    r = subprocess.run([str(CLIENT), *args], capture_output=True, text=True, timeout=10)
    assert (r.returncode, r.stdout) == (2, "")
    assert r.stderr.startswith("usage: hv-report [--ext] NONCE_HEX") and r.stderr.count("\n") == 1


@needs_x86_64
@pytest.mark.skipif(os.path.exists("/dev/sev-guest"), reason="this machine has a /dev/sev-guest")
def test_no_device_is_one_line():
    r = subprocess.run([str(CLIENT), "Ab" * 64], capture_output=True, text=True, timeout=10)
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == "hv-report: open /dev/sev-guest failed (errno 2, fw_err 0x0)\n"


class _Regs(ctypes.Structure):
    """struct user_regs_struct (x86-64), as PTRACE_GETREGS fills it."""
    _fields_ = [(n, ctypes.c_ulonglong) for n in (
        "r15 r14 r13 r12 rbp rbx r11 r10 r9 r8 rax rcx rdx rsi rdi orig_rax rip cs eflags rsp ss "
        "fs_base gs_base ds es fs gs").split()]


PTRACE_TRACEME, PTRACE_GETREGS, PTRACE_SETREGS, PTRACE_SYSCALL, PTRACE_SETOPTIONS = 0, 12, 13, 24, 0x4200
PTRACE_O_TRACESYSGOOD, PTRACE_O_EXITKILL = 1, 0x100000
SYS_OPEN, SYS_CLOSE, SYS_IOCTL = 2, 3, 16


def run_traced(tmp_path: Path, args: list[str], answer) -> tuple[int, str, str, list]:
    """Run the client with its ioctls answered by `answer(cmd, request bytes)`, which returns
    (result, fw_err, response, certs): the ioctl's return value (0 or -errno), the fw_err to
    store and the bytes to write at resp_data and certs_address (None: nothing). The exit
    status, stdout, stderr and the (cmd, msg_version, request bytes) of every ioctl."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    libc.ptrace.restype = ctypes.c_long
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    def trace_me():
        if libc.ptrace(PTRACE_TRACEME, 0, None, None) != 0:
            raise OSError(ctypes.get_errno(), "PTRACE_TRACEME")

    with out.open("wb") as fo, err.open("wb") as fe:
        try:
            proc = subprocess.Popen([str(CLIENT), *args], stdout=fo, stderr=fe, preexec_fn=trace_me)
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.skip(f"cannot trace a process here: {exc}")
    pid, calls, pending = proc.pid, [], None
    try:
        _, status = os.waitpid(pid, 0)  # stopped at the execve's SIGTRAP
        assert os.WIFSTOPPED(status)
        libc.ptrace(PTRACE_SETOPTIONS, pid, None, PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL)
        mem = os.open(f"/proc/{pid}/mem", os.O_RDWR)
        regs = _Regs()
        while True:
            assert libc.ptrace(PTRACE_SYSCALL, pid, None, None) == 0
            _, status = os.waitpid(pid, 0)
            if os.WIFEXITED(status):
                proc.returncode = os.WEXITSTATUS(status)
                break
            assert os.WIFSTOPPED(status) and os.WSTOPSIG(status) == signal.SIGTRAP | 0x80, status
            libc.ptrace(PTRACE_GETREGS, pid, None, ctypes.byref(regs))
            if pending is not None:  # the exit of a call answered here: its result
                regs.rax, pending = pending & 0xFFFFFFFFFFFFFFFF, None
            elif regs.orig_rax == SYS_OPEN and os.pread(mem, 15, regs.rdi) == b"/dev/sev-guest\0":
                regs.orig_rax, pending = -1 & 0xFFFFFFFFFFFFFFFF, FAKE_FD  # skip the real call
            elif regs.orig_rax == SYS_CLOSE and regs.rdi == FAKE_FD:
                regs.orig_rax, pending = -1 & 0xFFFFFFFFFFFFFFFF, 0
            elif regs.orig_rax == SYS_IOCTL and regs.rdi == FAKE_FD:
                version, req_data, resp_data, _ = IOCTL_ARG.unpack(os.pread(mem, 32, regs.rdx))
                size = EXT_REQ.size if regs.rsi == SNP_GET_EXT_REPORT else REPORT_REQ_SIZE
                req = os.pread(mem, size, req_data)
                calls.append((regs.rsi, version, req))
                result, fw_err, resp, certs = answer(regs.rsi, req)
                if resp is not None:
                    os.pwrite(mem, resp.ljust(RESP_SIZE, b"\0"), resp_data)
                if certs is not None:
                    os.pwrite(mem, certs.ljust(CERTS_LEN, b"\0"), EXT_REQ.unpack(req)[1])
                os.pwrite(mem, struct.pack("<Q", fw_err), regs.rdx + 24)
                regs.orig_rax, pending = -1 & 0xFFFFFFFFFFFFFFFF, result
            else:
                continue
            libc.ptrace(PTRACE_SETREGS, pid, None, ctypes.byref(regs))
        os.close(mem)
    finally:
        if proc.returncode is None:
            proc.kill()
            os.waitpid(pid, 0)
            proc.returncode = -9
    return proc.returncode, out.read_text(), err.read_text(), calls


def msg_report_rsp(report: bytes = REPORT, status: int = 0, size: int = 0x4A0) -> bytes:
    """MSG_REPORT_RSP: status u32, report_size u32, 24 reserved bytes, the report."""
    return struct.pack("<II24x", status, size) + report


def honest(cmd, req):
    certs = sevwire.snp_cert_table(CERTS) if cmd == SNP_GET_EXT_REPORT else None
    return 0, 0, msg_report_rsp(), certs


traced = pytest.mark.skipif(not _native_x86_64_linux(), reason="traces an x86-64 Linux process")


@traced
def test_report_request_and_output(tmp_path):
    """Scenario: SNP_GET_REPORT with the nonce as user_data at VMPL 0; the output is the nonce
    and the report, and hv's owner tools read the report back from it."""
    status, out, err, calls = run_traced(tmp_path, [NONCE.hex().upper()], honest)
    assert (status, err) == (0, "")
    assert calls == [(SNP_GET_REPORT, 1, NONCE + bytes(32))]  # vmpl 0, rsvd zero
    assert out == f"report_data: {NONCE.hex()}\nreport: {REPORT.hex()}\n"
    log = tmp_path / "serial.log"
    log.write_bytes(b"[    1.0] boot noise\n" + out.encode() + b"hv-init: powering off\n")
    assert read_report(log) == REPORT


@traced
def test_ext_report_prints_each_certificate(tmp_path):
    """Scenario: SNP_GET_EXT_REPORT with a 16 KiB page-aligned buffer; each entry of hv's
    certificate table (sevwire's encoding) is printed with its GUID, length and bytes."""
    status, out, err, calls = run_traced(tmp_path, ["--ext", NONCE.hex()], honest)
    assert (status, err) == (0, "")
    [(cmd, version, req)] = calls
    data, certs_address, certs_len = EXT_REQ.unpack(req)
    assert (cmd, version, data, certs_len) == (SNP_GET_EXT_REPORT, 1, NONCE + bytes(32), CERTS_LEN)
    assert certs_address % 4096 == 0
    lines = [f"report_data: {NONCE.hex()}", f"report: {REPORT.hex()}"]
    for guid, cert in CERTS:
        lines += [f"cert: {guid} {len(cert)}", f"cert_data: {guid} {cert.hex()}"]
    assert out == "\n".join(lines) + "\n"


@traced
def test_ext_report_with_no_certificates(tmp_path):
    status, out, _, _ = run_traced(tmp_path, ["--ext", NONCE.hex()],
                                   lambda cmd, req: (0, 0, msg_report_rsp(), bytes(24)))
    assert status == 0 and out == f"report_data: {NONCE.hex()}\nreport: {REPORT.hex()}\n"


BAD_TABLE = struct.pack("<16sII", b"\x11" * 16, CERTS_LEN - 4, 8) + bytes(24)
ENDLESS_TABLE = struct.pack("<16sII", b"\x22" * 16, 0, 0) * (CERTS_LEN // 24)  # no terminator


@traced
@pytest.mark.parametrize("args, answer, message", [
    ([NONCE.hex()], lambda c, r: (-5, 0x1_0000_0000, None, None),
     "ioctl SNP_GET_REPORT failed (errno 5, fw_err 0x100000000)"),
    (["--ext", NONCE.hex()], lambda c, r: (-22, 0x16, None, None),
     "ioctl SNP_GET_EXT_REPORT failed (errno 22, fw_err 0x16)"),
    ([NONCE.hex()], lambda c, r: (0, 0, msg_report_rsp(status=0x16), None),
     "the report response's status is not 0 (errno 0, fw_err 0x16)"),
    ([NONCE.hex()], lambda c, r: (0, 0, msg_report_rsp(size=0x4A1), None),
     "the report response's report_size is not 0x4a0 (errno 0, fw_err 0x0)"),
    ([NONCE.hex()], lambda c, r: (0, 0, msg_report_rsp(bytes(0x4A0)), None),
     "the report's report_data is not the nonce (errno 0, fw_err 0x0)"),
    (["--ext", NONCE.hex()], lambda c, r: (0, 0, msg_report_rsp(), BAD_TABLE),
     "certificate table entry points past the buffer (errno 0, fw_err 0x0)"),
    (["--ext", NONCE.hex()], lambda c, r: (0, 0, msg_report_rsp(), ENDLESS_TABLE),
     "certificate table has no terminating entry (errno 0, fw_err 0x0)"),
], ids=["ioctl", "ext-ioctl", "status", "size", "report-data", "table-bounds", "table-end"])
def test_failures_are_one_line_and_print_nothing(tmp_path, args, answer, message):
    """Scenario: a refused request, a malformed response or a lying certificate table ends
    the client with status 1 and one line, before any report line reaches the console."""
    status, out, err, _ = run_traced(tmp_path, args, answer)
    assert (status, out, err) == (1, "", f"hv-report: {message}\n")

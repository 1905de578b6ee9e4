"""The guest owner as a command (`hv run --owner-exec CMD`): one JSON object in on stdin, one
JSON object out on stdout (README, "The guest owner"; docs/guest-abi.md, "Secret release").

The owner is another party, and nothing its command does may crash, hang or exhaust hv:

- The command runs in a session of its own, whose process group is killed (SIGKILL) when hv is
  done with it, on every path: an answer, a bad answer, a timeout, an exception in hv. hv waits
  for the command itself to exit, not for end-of-file on stdout, so a child left in the
  background can neither outlive the request nor hold a finished answer back. The group is
  killed while its leader is still an unreaped zombie, so its id cannot have been reused.
  (A process that deliberately leaves the session, with setsid or a process group of its own,
  escapes this; containing that takes a cgroup.)
- It has until a deadline: what the caller has left of `--timeout`, or DEFAULT_TIMEOUT.
- stdout is read as it arrives and refused past MAX_ANSWER bytes, so an owner that writes without
  end costs hv at most that much memory; of stderr only the last STDERR_TAIL bytes are kept, for
  the error message.
- A secret counts only when the command exited with status 0: a non-zero status means the owner
  failed, whatever it printed before. A refusal ({"refuse": reason}) stands whatever the status
  (`python -m hv.owner.exec` exits 1 with one): it releases nothing.
- Every failure is an OwnerExecError whose message is one printable line; what the command wrote
  appears only as a short excerpt with anything unprintable escaped (no terminal escapes, no
  line breaks, nothing long).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time

__all__ = ["DEFAULT_TIMEOUT", "MAX_ANSWER", "STDERR_TAIL", "OwnerExecError", "run_owner"]

DEFAULT_TIMEOUT = 120.0   # seconds, when `hv run` has no --timeout
MAX_ANSWER = 1 << 20      # bytes on stdout; the largest real answer is under 10 KiB
STDERR_TAIL = 4096        # bytes of stderr kept for the message

_CHUNK = 1 << 16
_POLL = 0.02              # how often to look for the command's exit without a pidfd
_EXCERPT = 60             # characters of the command's output quoted in a message


class OwnerExecError(Exception):
    """The owner's command gave no usable answer. The message is one printable line."""


def run_owner(command: str, request: dict, fields: tuple[str, ...],
              timeout: float | None = None) -> dict:
    """Run `command` with `request` on stdin and return its answer: a dict holding every name in
    `fields` as a string (the caller checks the hex and the sizes) or {"refuse": reason}, reason a
    printable string. `timeout` is what is left of hv's --timeout (None: DEFAULT_TIMEOUT)."""
    budget = DEFAULT_TIMEOUT if timeout is None else timeout
    if budget <= 0:
        raise OwnerExecError("--owner-exec not run: nothing is left of --timeout")
    where = "what was left of --timeout" if timeout is not None else "the default without --timeout"
    status, out, err = _Exchange(command, json.dumps(request).encode(), budget, where).run()
    return _parse(out, status, err, fields)


class _Exchange:
    """One run of the command: request in, output collected, every process of its group gone."""

    def __init__(self, command: str, request: bytes, budget: float, where: str):
        self.command = command
        self.request = memoryview(request)
        self.budget = budget
        self.where = where
        self.out = bytearray()
        self.err = bytearray()
        self.proc: subprocess.Popen | None = None

    def run(self) -> tuple[int, bytes, bytes]:
        deadline = time.monotonic() + self.budget
        try:
            self.proc = proc = subprocess.Popen(
                self.command, shell=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, start_new_session=True)
        except OSError as e:
            raise OwnerExecError(f"--owner-exec could not be started: {e.strerror}") from None
        sel = selectors.DefaultSelector()
        pidfd = None
        try:
            for f in (proc.stdin, proc.stdout, proc.stderr):
                os.set_blocking(f.fileno(), False)
            sel.register(proc.stdin.fileno(), selectors.EVENT_WRITE, self._write)
            sel.register(proc.stdout.fileno(), selectors.EVENT_READ, self._read_out)
            sel.register(proc.stderr.fileno(), selectors.EVENT_READ, self._read_err)
            pidfd = _pidfd(proc.pid)
            if pidfd is not None:
                sel.register(pidfd, selectors.EVENT_READ, None)  # readable once it has exited
            while not _exited(proc.pid):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise OwnerExecError(f"--owner-exec did not answer within {self.budget:.3g} s "
                                         f"({self.where}): stopped")
                for key, _ in sel.select(left if pidfd is not None else min(left, _POLL)):
                    if key.data is not None:
                        key.data(sel, key.fd)
            # The command has exited; what it wrote is in the pipes. Stop its group first, then
            # take what is there without waiting for end-of-file, which a child could withhold.
            # No more than a pipe can hold: a process that escaped the group may write on.
            _kill_group(proc.pid)
            for fd, read in ((proc.stdout.fileno(), self._read_out),
                             (proc.stderr.fileno(), self._read_err)):
                taken = 0
                while fd in sel.get_map() and taken <= MAX_ANSWER:
                    n = read(sel, fd)
                    if not n:
                        break
                    taken += n
        finally:
            _kill_group(proc.pid)
            sel.close()
            if pidfd is not None:
                os.close(pidfd)
            for f in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    f.close()
                except OSError:
                    pass  # nothing is buffered (os.write above); the leader must still be reaped
            proc.wait()
        return proc.returncode, bytes(self.out), bytes(self.err)

    # -- selector callbacks; the readers return how many bytes they got ------------------------------
    def _write(self, sel, fd: int) -> None:
        try:
            n = os.write(fd, self.request[:_CHUNK])
        except BlockingIOError:
            return
        except BrokenPipeError:
            n = len(self.request)  # the command does not read its request: its answer will tell
        self.request = self.request[n:]
        if not self.request:
            sel.unregister(fd)
            self.proc.stdin.close()  # end-of-file for the command

    def _read_out(self, sel, fd: int) -> int:
        data = _read(sel, fd)
        self.out += data
        if len(self.out) > MAX_ANSWER:
            raise OwnerExecError(f"--owner-exec wrote more than {MAX_ANSWER} bytes on stdout: refused")
        return len(data)

    def _read_err(self, sel, fd: int) -> int:
        data = _read(sel, fd)
        self.err += data
        del self.err[:-STDERR_TAIL]
        return len(data)


def _read(sel, fd: int) -> bytes:
    """Up to one chunk from `fd`: b"" when there is nothing now, or at end-of-file (and then
    `fd` is no longer watched)."""
    try:
        data = os.read(fd, _CHUNK)
    except BlockingIOError:
        return b""
    if not data:
        sel.unregister(fd)
    return data


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when `pid` exits (Linux 5.3+), or None: then poll."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _exited(pid: int) -> bool:
    """Whether `pid` has exited, leaving it unreaped (WNOWAIT): while it is a zombie its process
    group id cannot be given to anyone else, so killing that group stays safe."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # nobody left in it


# -- the answer --------------------------------------------------------------------------------------
def _parse(out: bytes, status: int, err: bytes, fields: tuple[str, ...]) -> dict:
    answer, garbage = None, False
    if out.strip():
        try:
            answer = json.loads(out)
        except (ValueError, RecursionError):  # not UTF-8, not JSON, too deep, too long a number
            garbage = True
    if isinstance(answer, dict) and "refuse" in answer:
        reason = answer["refuse"]
        if not isinstance(reason, str):
            raise OwnerExecError(f'--owner-exec answer: "refuse" must be a string, not '
                                 f"{_json_type(reason)}")
        return {"refuse": _printable(reason, 200)}
    if status != 0:
        counts = "; what it wrote does not count" if out.strip() else ""
        raise OwnerExecError(f"--owner-exec {_status(status)}{counts}{_last_line(err)}")
    if not out.strip():
        raise OwnerExecError(f"--owner-exec gave no answer on stdout{_last_line(err)}")
    if garbage:
        raise OwnerExecError(f"--owner-exec gave no JSON answer: its output begins {_excerpt(out)}")
    if not isinstance(answer, dict) or not set(fields) <= answer.keys():
        shape = ", ".join(f'"{f}": ...' for f in fields)
        raise OwnerExecError(f'--owner-exec answer must be {{{shape}}} or {{"refuse": ...}}, '
                             f"not {_excerpt(out)}")
    for name in fields:
        if not isinstance(answer[name], str):
            raise OwnerExecError(f'--owner-exec answer: "{name}" must be a hex string, not '
                                 f"{_json_type(answer[name])}")
    return answer


def _status(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def _last_line(err: bytes) -> str:
    lines = err.decode("utf-8", "replace").strip().splitlines()
    return f" (stderr: {_excerpt(lines[-1], 120)})" if lines else ""


def _json_type(value: object) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", list: "a list", dict: "an object",
            type(None): "null"}.get(type(value), type(value).__name__)


def _excerpt(data: bytes | str, limit: int = _EXCERPT) -> str:
    """The start of what the command wrote, quoted and safe for a one-line message."""
    return f'"{_printable(data, limit)}"'


def _printable(data: bytes | str, limit: int) -> str:
    """At most `limit` characters of `data`, anything unprintable escaped (control characters,
    terminal escapes, line breaks, bidi overrides), "..." when cut."""
    cut = isinstance(data, bytes) and len(data) > 4 * limit
    text = data[:4 * limit].decode("utf-8", "replace") if isinstance(data, bytes) else data
    safe = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text[:limit])
    return safe + ("..." if cut or len(text) > limit else "")

"""Shared by the tests of `hv run --gdb`, `--trace` and `hv memmap`: the committed guests, their
symbols, and an `hv run` subprocess with a GDB stub on a free localhost port."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

from elftools.elf.elffile import ELFFile

ROOT = Path(__file__).resolve().parents[2]
SECRET = ROOT / "guests" / "secret.img"
HELLO = ROOT / "guests" / "hello.img"
DEFAULT_SECRET = b"HV-DEFAULT-SECRET-0123456789abcd"


def symbol(image: Path, name: str) -> int:
    """Address of `name` in a guest image's symbol table (the images keep their symbols)."""
    with image.open("rb") as f:
        for sym in ELFFile(f).get_section_by_name(".symtab").iter_symbols():
            if sym.name == name:
                return sym["st_value"]
    raise LookupError(f"{image.name} has no symbol {name}")


class HvWithStub:
    """`hv run IMAGE --gdb tcp::0 -S ARGS` in a subprocess; `port` is what the stub printed."""

    def __init__(self, image: Path, args: list[str], psp_state: str, tmp: Path):
        self.err_path = tmp / "hv.err"
        env = dict(os.environ, HV_PSP_STATE=psp_state, PYTHONPATH=str(ROOT))
        self._err = self.err_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "hv", "run", str(image), "-q", "--gdb", "tcp::0", "-S", *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._err, text=True)
        self.port = self._wait_port()

    def _wait_port(self, timeout: float = 20.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(r"listening on 127\.0\.0\.1:(\d+)", self.err_path.read_text())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"hv ended before listening: {self.err_path.read_text()}")
            time.sleep(0.05)
        self.proc.kill()
        raise AssertionError("hv did not open its GDB port in time")

    def finish(self, timeout: float = 30.0) -> tuple[int, str]:
        try:
            self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._err.close()
        return self.proc.returncode, self.err_path.read_text()

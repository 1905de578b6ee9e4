"""Files hv writes on the host: a path hv cannot use is one line and status 2 before the guest
runs; a write that fails after the guest ran is one line and the guest keeps its status; a
platform command that cannot save its state is one line, status 3, and the old state stays."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hv.cli import main

HELLO = Path(__file__).resolve().parents[2] / "guests" / "hello.img"
GREETING = "Hello from an hv guest!"


@pytest.fixture
def state(psp_state, tmp_path):
    path = tmp_path / "psp.json"
    shutil.copy(psp_state, path)
    return path


@pytest.fixture
def not_a_dir(tmp_path):
    """A regular file: nothing can be created under it, even by root."""
    path = tmp_path / "plain-file"
    path.write_text("")
    return path


def _invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


def _one_line(result) -> str:
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("command", ["run", "memmap"])
def test_uncreatable_state_directory_is_one_line_before_the_guest_runs(not_a_dir, command):
    r = _invoke(command, HELLO, "--sev", "--psp-state", not_a_dir / "hv" / "psp.json")
    assert r.exit_code == 2
    assert _one_line(r) == (f"hv: cannot create the PSP state directory {not_a_dir / 'hv'}: Not a "
                            "directory (choose a state file with --psp-state or $HV_PSP_STATE)")
    assert GREETING not in r.stdout


@pytest.mark.parametrize("args", [["run", HELLO, "--sev"], ["ok"]], ids=["run", "ok"])
def test_unwritable_home_is_one_line(not_a_dir, args):
    r = _invoke(*args, env={"HOME": str(not_a_dir), "XDG_DATA_HOME": None, "HV_PSP_STATE": None})
    assert r.exit_code == 2
    assert _one_line(r).startswith(f"hv: cannot create the PSP state directory {not_a_dir}/")


@pytest.mark.parametrize("option", ["--dump-dram", "--trace"])
def test_unwritable_output_is_refused_before_the_guest_runs(not_a_dir, option):
    r = _invoke("run", HELLO, option, not_a_dir / "out")
    assert r.exit_code == 2
    assert _one_line(r) == f"hv: cannot write {option} {not_a_dir / 'out'}: Not a directory"
    assert GREETING not in r.stdout


@pytest.mark.parametrize("option,message", [
    ("--dump-dram", "hv: cannot write --dump-dram /dev/full: No space left on device"),
    ("--trace", "hv: --trace /dev/full is incomplete: No space left on device"),
])
def test_output_failing_after_the_run_keeps_the_guests_status(option, message):
    r = _invoke("run", HELLO, option, "/dev/full")  # every write to /dev/full is ENOSPC
    assert r.exit_code == 0  # hello's own status
    assert GREETING in r.stdout
    assert _one_line(r) == message


def test_a_refused_run_leaves_no_output_behind(tmp_path, not_a_dir):
    """--dump-dram is checked (created and removed) before --trace is refused."""
    dump = tmp_path / "dram.bin"
    r = _invoke("run", HELLO, "--dump-dram", dump, "--trace", not_a_dir / "t.jsonl")
    assert r.exit_code == 2
    assert _one_line(r).startswith("hv: cannot write --trace")
    assert not dump.exists()


def test_fifo_state_file_is_refused_not_waited_on(tmp_path):
    fifo = tmp_path / "psp.json"
    os.mkfifo(fifo)
    for args in (["run", str(HELLO), "--sev"], ["psp", "status"]):
        try:
            p = subprocess.run([sys.executable, "-m", "hv", *args, "--psp-state", str(fifo)],
                               capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail(f"hv {args[0]} waited on a FIFO as the state file")
        prefix = "hv" if args[0] == "run" else "hv psp"
        assert p.returncode == 2
        assert p.stderr.splitlines() == [f"{prefix}: PSP state file {fifo} is not a regular file"]


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _read_only(real_open):
    def open_(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)
    return open_


@pytest.mark.parametrize("command,cmd_name", [("rotate", "PDH_GEN"), ("reset", "PLATFORM_RESET")])
@pytest.mark.parametrize("storage", ["full disk", "read-only"])
def test_platform_command_that_cannot_save_changes_nothing(state, monkeypatch, command, cmd_name, storage):
    before = state.read_bytes()
    status = _invoke("psp", "status", "--json", "--psp-state", state)
    assert status.exit_code == 0
    if storage == "full disk":
        monkeypatch.setattr("firmware._nvstore.os.write", _enospc)
        why = "No space left on device"
    else:  # root ignores permission bits: a read-only filesystem refuses every new file
        monkeypatch.setattr("firmware._nvstore.os.open", _read_only(os.open))
        why = "Read-only file system"
    r = _invoke("psp", command, "--psp-state", state)
    assert r.exit_code == 3
    assert _one_line(r) == (f"hv psp: {cmd_name} did not take effect: cannot write PSP state file "
                            f"{state}: {why}; the old state is intact")
    assert r.stdout == ""
    assert state.read_bytes() == before
    assert sorted(p.name for p in state.parent.iterdir()) == sorted({state.name, state.name + ".lock"})
    monkeypatch.undo()
    assert _invoke("psp", "status", "--json", "--psp-state", state).output == status.output


def test_memmap_output_that_cannot_be_written_is_refused_before_the_guest_runs(not_a_dir):
    r = _invoke("memmap", HELLO, "-o", not_a_dir / "map.png")
    assert r.exit_code == 2
    assert _one_line(r) == f"hv: cannot write -o {not_a_dir / 'map.png'}: Not a directory"


def test_memmap_output_failing_after_the_run_keeps_the_table_and_the_status():
    r = _invoke("memmap", HELLO, "-o", "/dev/full")
    assert r.exit_code == 0
    assert "pages: 16384" in r.stdout  # the table was printed before the write failed
    assert _one_line(r) == "hv: cannot write -o /dev/full: No space left on device"

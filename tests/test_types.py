"""The type checker over the machine, the hypervisor and the attack lab (pyproject's [tool.mypy]).

Guest-physical, system-physical and guest-virtual addresses are distinct types (hv.hw.addr): the
memory encryption tweak is keyed by the system-physical address, so handing one kind where the
other belongs is the bug this check exists to stop.
"""

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def mypy(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", "/dev/null", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_checker_covers_the_machine_the_hypervisor_and_the_lab():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert {"hv/hw", "hv/kvm", "hv/attacks"} <= set(config["files"])
    assert config["check_untyped_defs"] is True


def test_hv_hw_kvm_and_attacks_type_check():
    r = mypy()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout


def test_a_guest_physical_address_where_a_system_physical_one_belongs_is_refused(tmp_path):
    """Scenario: code maps a GPA onto a GPA, reads host memory at a GPA and guest memory at an
    SPA; each is an error, while the same code with the right kinds checks clean."""
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("""\
        from hv.hw.addr import GPA, SPA
        from hv.kvm.kvm import Vm

        def mixes(vm: Vm) -> None:
            vm.npt_map(GPA(0x1000), GPA(0x2000))
            vm.host.read(GPA(0x1000), 16)
            vm.read_gpa(vm.gpa_to_spa(GPA(0)), 16)

        def right(vm: Vm) -> None:
            vm.npt_map(GPA(0x1000), SPA(0x200000))
            vm.host.read(vm.gpa_to_spa(GPA(0x1000)), 16)
            vm.read_gpa(GPA(0), 16)
        """))
    r = mypy("--follow-imports=silent", "--ignore-missing-imports", str(bad), cwd=ROOT)
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [line for line in r.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 3, r.stdout
    assert 'Argument 2 to "npt_map" of "Vm" has incompatible type "GPA"; expected "SPA"' in errors[0]
    assert 'Argument 1 to "read" of "HostPort" has incompatible type "GPA"; expected "SPA"' in errors[1]
    assert 'Argument 1 to "read_gpa" of "Vm" has incompatible type "SPA"; expected "GPA"' in errors[2]
    assert [e.split(":")[1] for e in errors] == ["5", "6", "7"]

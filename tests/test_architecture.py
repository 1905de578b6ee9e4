"""The trust boundaries, checked by import-linter with the contracts in pyproject.toml."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint(cwd: Path, env_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(env_path))
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_contracts_are_kept():
    r = lint(ROOT, ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout
    assert r.stdout.count("KEPT") == 8


def lint_tree(tmp_path: Path, broken: dict[str, str]) -> subprocess.CompletedProcess:
    """The project's contracts over a tiny tree with every module they name, plus `broken`."""
    pkgs = {
        "hv/__init__.py": "", "hv/cli.py": "", "hv/sizes.py": "", "hv/images.py": "",
        "hv/hw/__init__.py": "", "hv/hw/engine.py": "",
        "hv/hw/memctl.py": "", "hv/hw/mmu.py": "", "hv/hw/ports.py": "",
        "hv/hw/cpu.py": "", "hv/hw/psp.py": "", "hv/hw/vmsa.py": "",
        "hv/hw/machine.py": "", "hv/hw/inspect.py": "",
        "hv/kvm/__init__.py": "", "hv/vmm/__init__.py": "", "hv/attacks/__init__.py": "",
        "hv/owner/__init__.py": "", "hv/boot/__init__.py": "",
        "firmware/__init__.py": "", "sevwire/__init__.py": "",
    }
    pkgs.update(broken)
    for name, text in pkgs.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    config = (ROOT / "pyproject.toml").read_text()
    start = config.index("[tool.importlinter]")
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(config[start:]))
    return lint(tmp_path, tmp_path)


def test_a_firmware_import_from_the_hypervisor_breaks_a_contract(tmp_path):
    """The contracts catch what they promise to: copy them onto a tiny tree that breaks them."""
    r = lint_tree(tmp_path, {
        "hv/kvm/__init__.py": "import firmware\n",        # the hypervisor reaching the PSP's code
        "hv/attacks/__init__.py": "from hv.hw import memctl\n",
    })
    assert r.returncode != 0
    assert "hv.kvm -> firmware" in r.stdout
    assert "hv.attacks -> hv.hw.memctl" in r.stdout


@pytest.mark.parametrize("cheat,arrow", [
    ("from hv.hw.machine import Machine\n", "hv.attacks.a99_cheat -> hv.hw.machine"),
    ("from hv.hw import inspect\n", "hv.attacks.a99_cheat -> hv.hw.inspect"),
    ("import hv.hw.inspect\n", "hv.attacks.a99_cheat -> hv.hw.inspect"),
])
def test_the_attack_lab_importing_the_machine_or_its_probe_breaks_a_contract(tmp_path, cheat, arrow):
    """The machine (tweak constants, the DMA and cold-boot ports, the PSP firmware behind it) and
    its probe (which reads through guest key slots) are not a hypervisor's: an attack module that
    imports either breaks the attack lab's contract. Reaching them through an object instead
    (`lab.vmm.machine`, `.psp_firmware`) is what tests/security/test_attack_boundaries.py scans for."""
    r = lint_tree(tmp_path, {"hv/attacks/__init__.py": "", "hv/attacks/a99_cheat.py": cheat})
    assert r.returncode != 0
    assert "The attack lab uses only what a hypervisor has" in r.stdout and "BROKEN" in r.stdout
    assert arrow in r.stdout


def test_an_upward_import_breaks_the_layers(tmp_path):
    """The VMM reaching up into the CLI (as it once did for the default PSP state path), the
    machine or the hypervisor reaching the boot protocol (the VMSA layout once lived there), and
    the boot protocol reaching the firmware all break a contract."""
    r = lint_tree(tmp_path, {
        "hv/vmm/__init__.py": "import hv.cli\n",
        "hv/hw/vmsa.py": "import hv.boot\n",
        "hv/kvm/__init__.py": "import hv.boot\n",
        "hv/boot/__init__.py": "import firmware\n",
    })
    assert r.returncode != 0
    assert "Layers: CLI over attack lab" in r.stdout and "BROKEN" in r.stdout
    assert "hv.vmm -> hv.cli" in r.stdout
    assert "The machine and the hypervisor run no boot protocol" in r.stdout
    assert "hv.hw.vmsa -> hv.boot" in r.stdout and "hv.kvm -> hv.boot" in r.stdout
    assert "hv.boot -> firmware" in r.stdout


def test_an_import_cycle_breaks_a_contract(tmp_path):
    """Two modules of one package that import each other (as hv.boot._layout and _vmsa did) form
    a cycle no layer sees; the acyclic contract does, in hv, the firmware and the wire formats."""
    for root in ("hv/kvm", "firmware", "sevwire"):
        pkg = root.replace("/", ".")
        r = lint_tree(tmp_path / pkg, {f"{root}/a.py": f"import {pkg}.b\n", f"{root}/b.py": f"import {pkg}.a\n"})
        assert r.returncode != 0, pkg
        assert "No import cycles" in r.stdout and "BROKEN" in r.stdout, pkg
        assert f"No cycles are allowed in {pkg}." in r.stdout, pkg
        assert ".b -> .a" in r.stdout or ".a -> .b" in r.stdout, pkg


def test_the_tree_without_breaks_keeps_every_contract(tmp_path):
    """The tiny tree itself keeps every contract, so the failures above come from their breaks."""
    r = lint_tree(tmp_path, {})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("KEPT") == 8

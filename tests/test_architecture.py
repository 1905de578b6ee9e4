"""The trust boundaries, checked by import-linter with the contracts in pyproject.toml."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def lint(cwd: Path, env_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(env_path))
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True)


def test_contracts_are_kept():
    r = lint(ROOT, ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout
    assert r.stdout.count("KEPT") == 6


def test_a_firmware_import_from_the_hypervisor_breaks_a_contract(tmp_path):
    """The contracts catch what they promise to: copy them onto a tiny tree that breaks them."""
    pkgs = {
        "hv/__init__.py": "", "hv/hw/__init__.py": "", "hv/hw/engine.py": "",
        "hv/hw/memctl.py": "", "hv/hw/mmu.py": "", "hv/hw/ports.py": "",
        "hv/hw/cpu.py": "", "hv/hw/psp.py": "", "hv/hw/vmsa.py": "",
        "hv/kvm/__init__.py": "import firmware\n",        # the hypervisor reaching the PSP's code
        "hv/vmm/__init__.py": "", "hv/attacks/__init__.py": "from hv.hw import memctl\n",
        "hv/owner/__init__.py": "",
        "firmware/__init__.py": "", "sevwire/__init__.py": "",
    }
    for name, text in pkgs.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    config = (ROOT / "pyproject.toml").read_text()
    start = config.index("[tool.importlinter]")
    (tmp_path / "pyproject.toml").write_text(textwrap.dedent(config[start:]))
    r = lint(tmp_path, tmp_path)
    assert r.returncode != 0
    assert "hv.kvm -> firmware" in r.stdout
    assert "hv.attacks -> hv.hw.memctl" in r.stdout

"""The attack lab is a hypervisor: it must never reach a key or a private plaintext view.

Checked on the source itself (an AST scan of every module in hv/attacks): no import of the
machine's key-holding or plaintext-view internals or of the PSP firmware, and no access to a
private attribute (`._x`) of any object but the module's own `self`. The scan is shown to fail
on code that cheats, so it can fail."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hv.attacks

pytestmark = pytest.mark.security

ATTACKS_DIR = Path(hv.attacks.__file__).parent
FORBIDDEN = ("hv.hw.memctl", "hv.hw.engine", "hv.hw.mmu", "hv.hw.cpu", "hv.hw.ports", "hv.hw.psp", "firmware")


def violations(source: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            names = []
        for n in names:
            if any(n == f or n.startswith(f + ".") for f in FORBIDDEN):
                out.append(f"line {node.lineno}: imports {n}")
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id == "self"):
                out.append(f"line {node.lineno}: touches private attribute .{node.attr}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "vars", "__import__"):
            out.append(f"line {node.lineno}: {node.func.id}() can reach anything")
    return out


def test_every_attack_module_stays_above_the_hardware_line():
    """Scenario: a reviewer wants proof the attacks use only what a hypervisor has."""
    files = sorted(ATTACKS_DIR.glob("*.py"))
    assert len(files) >= 12
    found = {f.name: violations(f.read_text()) for f in files}
    assert {k: v for k, v in found.items() if v} == {}


@pytest.mark.parametrize("cheat", [
    "from hv.hw.memctl import MemoryController\n",
    "import firmware\n",
    "from hv.hw import engine\n",
    "def f(lab):\n    return lab.machine._mc.views\n",
    "def f(m):\n    return m._keys\n",
    "def f(v):\n    return v._cpu.reg('rip')\n",
    "def f(m):\n    return getattr(m, '_mc')\n",
])
def test_the_scan_catches_a_cheating_attack(cheat):
    """Scenario: an attack that reads keys or plaintext views is rejected by the scan."""
    assert violations(cheat)

"""The README's command blocks run as written, so the README cannot drift from the code.

Conventions (what a README author may rely on, and must keep to):
- Every ```sh and ```python block runs, in the README's order, in one scratch directory that
  stands for the checkout: it holds a symlink `guests` to the checkout's guests/, and HOME,
  XDG_DATA_HOME and HV_PSP_STATE point inside it (a fresh platform, as on a new machine; blocks
  share the files earlier blocks wrote, e.g. scratch/s.bin and scratch/certs). A ```sh block runs
  under `bash -e -o pipefail`: every command must end with status 0. Blocks without a language
  (diagrams) do not run.
- `# ...` is a shell comment: text after it, or a line that is only a comment, never runs.
- Placeholders (`...`, `<FILE>`, `PORT`) have no place in a ```sh block: write them in prose or in
  a block without a language. A block that holds one fails here.
- The exceptions are the rules in RULES, each with its reason: `pip install` is what put this
  test where it is (the rest of such a line runs), `python -m pytest` is this very suite, `hv
  demo` and `hv attack matrix` take minutes (the slow tier runs them), a line that needs a tool
  this machine lacks (openssl, zsh) is skipped with that reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


@dataclass(frozen=True)
class Block:
    lang: str
    line: int      # the README line of its first command
    text: str


def blocks() -> list[Block]:
    out = []
    for m in re.finditer(r"^```(sh|python)\n(.*?)^```", README, re.M | re.S):
        out.append(Block(m.group(1), README.count("\n", 0, m.start(2)) + 1, m.group(2)))
    return out


# (pattern, action, reason): action "skip" drops the command, "strip" drops the matched part and
# runs the rest, "slow" puts the block in the slow tier, "needs:TOOL" skips it without TOOL,
# "zsh" runs it under zsh (it is zsh's start-up code).
RULES = [
    (r"^pip install [^&]*(&&\s*|$)", "strip", "the package is installed: this test runs in it"),
    (r"^python -m pytest\b", "skip", "the test suite itself"),
    (r"^hv demo\b", "slow", "boots four guests and runs three attacks in each mode"),
    (r"^hv attack matrix\b", "slow", "runs every attack in four modes"),
    (r"^hv run --kernel\b", "skip", "boots Debian's kernel from build/linux: tests/linux_boot runs "
                                    "it (.ci/run fetches the kernel first)"),
    (r"^openssl\b", "needs:openssl", "openssl is not installed"),
    (r"zsh_source", "zsh", "zsh start-up code"),
]


def commands(text: str) -> list[str]:
    """Logical command lines: backslash continuations joined, comment-only lines dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        if cur == "" and (not line.strip() or line.lstrip().startswith("#")):
            continue
        cur += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(cur)
            cur = ""
    return out


def plan(block: Block) -> tuple[str, bool, list[str]]:
    """(the script to run, whether it is slow, what was skipped and why)."""
    script, slow, skipped = [], False, []
    for cmd in commands(block.text):
        for pattern, action, reason in RULES:
            m = re.search(pattern, cmd)
            if not m:
                continue
            if action == "strip":
                cmd = cmd[m.end():]
            elif action == "skip":
                skipped.append(f"{cmd!r}: {reason}")
                cmd = ""
            elif action == "slow":
                slow = True
            elif action.startswith("needs:") and shutil.which(action[6:]) is None:
                skipped.append(f"{cmd!r}: {reason}")
                cmd = ""
            elif action == "zsh":
                if shutil.which("zsh") is None:
                    skipped.append(f"{cmd!r}: zsh is not installed")
                    cmd = ""
                else:
                    cmd = "zsh -c " + _quote(cmd)
            if not cmd.strip():
                break
        if cmd.strip():
            script.append(cmd)
    return "\n".join(script), slow, skipped


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """The stand-in checkout every block runs in, with a PATH where `hv` and `python` are this
    interpreter's."""
    hv = shutil.which("hv") or pytest.skip("the hv command is not installed (pip install -e .)")
    work = tmp_path_factory.mktemp("readme")
    (work / "guests").symlink_to(ROOT / "guests")
    home = work / "home"
    home.mkdir()
    env = dict(os.environ, HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"),
               HV_PSP_STATE=str(home / "psp-state.json"),
               PATH=os.pathsep.join([str(Path(sys.executable).parent), str(Path(hv).parent),
                                     os.environ.get("PATH", "")]))
    env.pop("PYTHONPATH", None)
    return work, env


def _params():
    out = []
    for b in blocks():
        _script, slow, _skipped = plan(b)
        marks = [pytest.mark.slow] if slow else []
        out.append(pytest.param(b, marks=marks, id=f"{b.lang}-line{b.line}"))
    return out


def test_the_readme_has_blocks_and_no_placeholders():
    found = blocks()
    assert len(found) >= 8   # the README's examples; fewer means the extraction broke
    for b in found:
        for cmd in commands(b.text) if b.lang == "sh" else []:
            code = cmd.split(" #")[0]
            assert "..." not in code and not re.search(r"<[A-Z_]+>", code), \
                f"README line {b.line}: a placeholder in a runnable block: {cmd}"


@pytest.mark.parametrize("block", _params())
def test_readme_block_runs_as_written(block: Block, scratch):
    """Scenario: a newcomer pastes the README's block into a shell in a fresh checkout."""
    work, env = scratch
    if block.lang == "python":
        argv, script = [sys.executable, "-c", block.text], block.text
    else:
        script, _slow, skipped = plan(block)
        if not script:
            pytest.skip("; ".join(skipped))
        argv = ["bash", "-e", "-o", "pipefail", "-x", "-c", script]
    p = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, (f"README block at line {block.line} failed with status "
                               f"{p.returncode}:\n{script}\n--- stdout\n{p.stdout[-3000:]}\n"
                               f"--- stderr\n{p.stderr[-3000:]}")

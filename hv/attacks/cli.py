"""`hv attack`: list the attacks, run one, or run the whole matrix (attack x mode)."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import click

from hv.attacks.kernel_lab import KernelFiles
from hv.attacks.outcome import MODES, Outcome
from hv.kvm import Mode
from hv.attacks.registry import ATTACKS, KERNEL_ATTACKS, PRIMITIVE_CODES, by_id, run_matrix
from hv.vmm.initramfs import InitramfsError

__all__ = ["attack", "one_mode"]

_STYLE = {"succeeded": "bold red", "failed": "bold green", "n/a": "dim", "error": "bold yellow reverse"}
EXIT_ERROR_CELL = 1  # the run finished, but at least one experiment broke: no verdict there
_LEGEND_TITLE = "Primitive codes (what the hypervisor does):"


def _legend() -> list[str]:
    return [f"  {code:<5} {meaning}" for code, meaning in PRIMITIVE_CODES.items()]


def one_mode(**flags: bool) -> str:
    """The one mode the flags name (plain when none). Two at once are refused (status 2)
    rather than letting the last one win: `--sev-snp --sev-es` would quietly attack the weaker
    SEV-ES guest and report SEV-ES's verdict under the name the user asked for."""
    given = [name.replace("_", "-") for name, on in flags.items() if on]
    if len(given) > 1:
        raise click.UsageError(" and ".join(f"--{m}" for m in given) + " exclude each other: give one mode")
    return given[0] if given else Mode.PLAIN


@click.group()
def attack() -> None:
    """The attack lab: a malicious hypervisor against plain, SEV, SEV-ES and SEV-SNP guests.

    "succeeded" means the hypervisor got what the attack is after; "failed" means a defence
    held; "error" means the experiment broke (no verdict; status 1). Where the literature says
    an attack beats SEV, it succeeds here too. The lab alone holds each guest's secret and judges.
    """


@attack.command("list", help="The implemented attacks: id, name, primitives, paper.\n\n"
                + _LEGEND_TITLE + "\n\n\b\n" + "\n".join(_legend()))
@click.option("--json", "as_json", is_flag=True, help='One JSON object: {"attacks": [...], "primitive_codes": {...}}.')
def list_(as_json: bool) -> None:
    rows = [{"attack": a.ID, "name": a.NAME, "primitives": list(a.PRIMITIVES), "paper": a.PAPER} for a in ATTACKS]
    if as_json:
        click.echo(json.dumps({"attacks": rows, "primitive_codes": PRIMITIVE_CODES}, indent=2))
        return
    for r in rows:
        prims = f"[{' '.join(r['primitives'])}]"
        click.echo(f"{r['attack']}  {r['name']:<30} {prims:<10} {r['paper']}")
    click.echo(f"\n{_LEGEND_TITLE}")
    for line in _legend():
        click.echo(line)


@attack.command()
@click.argument("name")
@click.option("--sev", is_flag=True, help="Against an SEV guest.")
@click.option("--sev-es", is_flag=True, help="Against an SEV-ES guest.")
@click.option("--sev-snp", is_flag=True, help="Against an SEV-SNP guest. The modes exclude each other.")
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Attack a Linux guest booted from this bzImage instead (A01-A05, A07; plain, "
                   "--sev, --sev-es or --sev-snp). The secret looked for is the initramfs's "
                   "/etc/hv-secret (A04: the kernel's RIP, RSP and CR3 at its last exit; A05 and "
                   "A07: an effect on the kernel's own memory, which the judge sees in its plaintext).")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --kernel: the initramfs holding /etc/hv-secret (python tools/linux.py fetch).")
@click.option("--append", default="", help="With --kernel: more kernel command line (the lab adds hv.init=poweroff).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def run(name: str, sev: bool, sev_es: bool, sev_snp: bool, kernel: str | None, initrd: str | None,
        append: str, as_json: bool) -> None:
    """Run attack NAME (e.g. A07) against a plain guest, or --sev / --sev-es / --sev-snp.
    With --kernel and --initrd the guest is a Linux kernel (the memory attacks A01-A03, A04,
    A05 replay and A07 SEVered).
    Status 1 when the experiment broke (an "error" outcome: no verdict)."""
    mode = one_mode(sev=sev, sev_es=sev_es, sev_snp=sev_snp)
    try:
        a = by_id(name)
    except KeyError as e:
        raise click.BadParameter(str(e.args[0]), param_hint="NAME") from None
    out = _run_kernel(a, Mode(mode), kernel, initrd, append) if (kernel or initrd or append) else a.run(mode)
    if as_json:
        click.echo(json.dumps(out.to_json(), indent=2))
    else:
        click.echo(f"{out.attack} {a.NAME} [{out.mode}]: {out.outcome}\n  {out.evidence}")
    if out.outcome == "error":
        click.echo(f"hv attack: {out.attack} {out.mode}: the experiment broke, no verdict", err=True)
        sys.exit(EXIT_ERROR_CELL)


def _run_kernel(a, mode: Mode, kernel: str | None, initrd: str | None, append: str) -> Outcome:
    """Attack `a` against a kernel guest, after refusing what cannot be judged (status 2)."""
    if not kernel:
        raise click.UsageError("--initrd and --append go with --kernel")
    if not initrd:
        raise click.UsageError("--kernel needs --initrd: the lab looks for the initramfs's /etc/hv-secret")
    if a not in KERNEL_ATTACKS:
        raise click.UsageError(f"{a.ID} does not take --kernel: against a kernel the lab runs "
                               + ", ".join(k.ID for k in KERNEL_ATTACKS))
    files = KernelFiles.read(kernel, initrd, append)
    try:
        return a.run_kernel(mode, files)
    except InitramfsError as e:
        raise click.BadParameter(str(e), param_hint="--initrd") from None


@attack.command()
@click.option("--json", "as_json", is_flag=True,
              help='{"cells": [{"attack", "mode", "outcome", "evidence", "findings"}]}')
def matrix(as_json: bool) -> None:
    """Every attack against every mode, each cell a real run (a minute or two). Progress goes
    to stderr, a line per cell as it ends (a bar on a terminal); stdout gets only the table, or
    the JSON. A cell whose experiment broke is an "error" cell, and the status is then 1."""
    with _progress(sys.stderr.isatty()) as report:
        cells = run_matrix(progress=report)
    if as_json:
        click.echo(json.dumps({"cells": [c.to_json() for c in cells]}, indent=2))
    else:
        _table(cells)
    errors = [f"{c.attack} {c.mode}" for c in cells if c.outcome == "error"]
    if errors:
        click.echo(f"hv attack matrix: no verdict (the experiment broke) in {', '.join(errors)}", err=True)
        sys.exit(EXIT_ERROR_CELL)


@contextmanager
def _progress(terminal: bool) -> Iterator[Callable[[int, int, str, str, Outcome], None]]:
    """The matrix's progress reporter on stderr: a rich bar on a terminal, else one plain line
    per cell (what logs and tests read), with the cell's time."""
    last = [time.perf_counter()]

    def line(done: int, total: int, attack_id: str, mode: str, result: Outcome) -> str:
        now = time.perf_counter()
        took, last[0] = now - last[0], now
        return f"[{done:>{len(str(total))}}/{total}] {attack_id} {mode}: {result.outcome} ({took:.1f} s)"

    if not terminal:
        yield lambda *cell: click.echo(line(*cell), err=True)
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("hv attack matrix"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TextColumn("{task.description}"),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task("", total=None)

        def report(done: int, total: int, attack_id: str, mode: str, result: Outcome) -> None:
            bar.update(task, completed=done, total=total,
                       description=line(done, total, attack_id, mode, result).split("] ", 1)[1])

        yield report


def _table(cells: list[Outcome]) -> None:
    from rich.console import Console
    from rich.table import Table

    modes = [m for m in MODES if any(c.mode == m for c in cells)]
    table = Table(title="hv attack matrix (red: the hypervisor won, green: the defence held, "
                        "error: the experiment broke)")
    table.add_column("attack")
    for m in modes:
        table.add_column(m)
    by = {(c.attack, c.mode): c for c in cells}
    for a in ATTACKS:
        row = [f"{a.ID} {a.NAME}"]
        for m in modes:
            c = by.get((a.ID, m))
            row.append(f"[{_STYLE[c.outcome]}]{c.outcome}[/]" if c else "-")
        table.add_row(*row)
    console = Console()
    console.print(table)
    for c in cells:
        console.print(f"[bold]{c.attack} {c.mode}[/]: {c.evidence}", highlight=False)

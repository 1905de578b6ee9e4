"""`hv attack`: list the attacks, run one, or run the whole matrix (attack x mode)."""

from __future__ import annotations

import json
import sys

import click

from hv.attacks.outcome import MODES, ModeUnavailable, Outcome
from hv.attacks.registry import ATTACKS, by_id, run_matrix

__all__ = ["attack"]

_STYLE = {"succeeded": "bold red", "failed": "bold green", "n/a": "dim"}


@click.group()
def attack() -> None:
    """The attack lab: a malicious hypervisor against plain, SEV, SEV-ES and SEV-SNP guests.

    "succeeded" means the hypervisor got what the attack is after; "failed" means a defence
    held. Where the literature says an attack beats SEV, it succeeds here too.
    """


@attack.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def list_(as_json: bool) -> None:
    """The implemented attacks: id, name, primitives, paper."""
    rows = [{"attack": a.ID, "name": a.NAME, "primitives": list(a.PRIMITIVES), "paper": a.PAPER} for a in ATTACKS]
    if as_json:
        click.echo(json.dumps({"attacks": rows}, indent=2))
        return
    for r in rows:
        click.echo(f"{r['attack']}  {r['name']:<30} [{' '.join(r['primitives'])}]  {r['paper']}")


@attack.command()
@click.argument("name")
@click.option("--sev", "mode", flag_value="sev", help="Against an SEV guest.")
@click.option("--sev-es", "mode", flag_value="sev-es", help="Against an SEV-ES guest.")
@click.option("--sev-snp", "mode", flag_value="sev-snp", help="Against an SEV-SNP guest.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def run(name: str, mode: str | None, as_json: bool) -> None:
    """Run attack NAME (e.g. A07) against a plain guest, or --sev / --sev-es / --sev-snp."""
    try:
        a = by_id(name)
    except KeyError as e:
        raise click.BadParameter(str(e.args[0]), param_hint="NAME") from None
    try:
        out = a.run(mode or "plain")
    except ModeUnavailable as e:
        click.echo(f"hv attack: {e}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(out.to_json(), indent=2))
    else:
        click.echo(f"{out.attack} {a.NAME} [{out.mode}]: {out.outcome}\n  {out.evidence}")


@attack.command()
@click.option("--json", "as_json", is_flag=True, help='{"cells": [{"attack", "mode", "outcome", "evidence"}]}')
def matrix(as_json: bool) -> None:
    """Every attack against every mode this hv can launch, each cell a real run."""
    cells, skipped = run_matrix()
    if as_json:
        out = {"cells": [c.to_json() for c in cells]}
        if skipped:
            out["skipped"] = skipped
        click.echo(json.dumps(out, indent=2))
        return
    _table(cells, skipped)


def _table(cells: list[Outcome], skipped: dict[str, str]) -> None:
    from rich.console import Console
    from rich.table import Table

    modes = [m for m in MODES if any(c.mode == m for c in cells)]
    table = Table(title="hv attack matrix (red: the hypervisor won, green: the defence held)")
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
    for what, why in skipped.items():
        console.print(f"[dim]not run: {what}: {why}[/]")

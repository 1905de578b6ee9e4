"""`hv demo`: one minute that shows what memory encryption does and does not hide.

The same guest (guests/secret.c, holding a fresh secret in private memory and a non-secret
marker in the one page it shares with the hypervisor) boots plain, then under SEV, SEV-ES and
SEV-SNP (where the guest owner releases the secret only after checking an attestation report).
Each time the hypervisor pauses it while the secret is live and reads all of its memory, exactly
as A01 does; then it runs three attacks in every mode: registers at exits (SEV-ES stops it),
SEVered remapping (SEV-SNP stops it) and the page-fault channel (nothing stops it). One table
ends it, the modes side by side; --json gives the same as one object.
"""

from __future__ import annotations

import hashlib
import json
import time

import click

from hv.attacks import a04_registers, a07_severed, a14_page_faults
from hv.attacks.evidence import find_all, find_windows, hexs
from hv.attacks.lab import SHARED_MARKER, Lab
from hv.attacks.outcome import MODES
from hv.kvm import Mode
from hv.attacks.snoop import snoop
from hv.attacks.verdict import GroundTruth, Trial

__all__ = ["demo"]

SHOWN_ATTACKS = (a04_registers, a07_severed, a14_page_faults)
_TITLES = {m: m.label for m in Mode}
_WON, _HELD, _NEUTRAL = "bold red", "bold green", "dim"

_INTRO = """\
hv demo: can a malicious hypervisor read its guest's secret?

A guest holds a secret (32 fresh random bytes) in its private memory, and puts a harmless marker,
HV-SHARED-MARKER, in one page it deliberately shares with the hypervisor (as real guests share
I/O buffers). The hypervisor pauses the guest while the secret is in use and reads all of its
memory. We do this four ways: a plain VM, an SEV VM (memory encrypted with a key only the
emulated AMD Secure Processor holds), SEV-ES (registers encrypted too) and SEV-SNP (the guest's
pages are also bound to it in a reverse map table, and its secret arrives after attestation).
"""


# -- the four boots ----------------------------------------------------------------------------------
def _boot(mode: str) -> dict:
    """Boot the secret guest in `mode`, snoop it at round 32: what the hypervisor found. The
    demo is the lab's presenter: it holds the ground truth, to show it and to look for it."""
    truth = GroundTruth()
    secret = truth.secret
    try:
        dump, lab = snoop(Trial(mode, truth), lambda lab: lab.vmm.dump_guest_memory())
    except Exception as e:  # noqa: BLE001 - shown as a boot that broke, as the matrix's error cells
        return {"mode": mode, "run": False, "why": " ".join(str(e).split()) or type(e).__name__}
    hits, marker = find_windows(dump, secret), find_all(dump, SHARED_MARKER)
    boot = {
        "mode": mode, "run": True, "secret": secret.hex(),
        "outcome": "secret found" if hits else "secret hidden",
        "guest_has_secret": _guest_has(lab, secret),
        "dump_bytes": len(dump), "secret_found_at": hits, "marker_found_at": marker,
        "secret_page_sample": dump[0x9000:0x9010].hex(),
    }
    if mode == Mode.SEV_SNP:
        boot["attestation"] = _attestation(lab)
    return boot


def _guest_has(lab: Lab, secret: bytes) -> bool:
    """The guest prints the SHA-256 of the secret it holds: did the right one reach it?"""
    return f"secret-sha256: {hashlib.sha256(secret).hexdigest()}" in lab.serial()


def _attestation(lab: Lab) -> dict:
    """The SEV-SNP secret release as the VMM recorded it: the guest handed its attestation report
    to the owner, who checked the signature chain (ARK, ASK, VCEK), the launch digest and the
    policy, and only then encrypted the secret to the key in the report."""
    info = lab.vmm.launch_info or {}
    release = info.get("secret_release", {})
    last = (release.get("outcomes") or [{}])[-1]
    released = bool(release.get("released"))
    return {"reports": release.get("requests", 0), "report_verified": released,
            "secret_released": released, "owner_answer": last.get("reason", last.get("result", "none")),
            "launch_digest": info.get("digest", "")}


def _show_boot(b: dict) -> None:
    mode = b["mode"]
    if not b["run"]:
        click.echo(f"\n[{mode}] not run: {b['why']}")
        return
    if mode == Mode.SEV_SNP:
        click.echo(f"\n[{mode}] the guest's secret is {b['secret']} (the owner keeps it until attestation)")
        _show_attestation(b["attestation"], b["guest_has_secret"])
    else:
        click.echo(f"\n[{mode}] the guest's secret is {b['secret']}")
    hits = b["secret_found_at"]
    if hits:
        click.echo(f"  hypervisor found the secret in plaintext at GPA {hexs(hits)}")
        click.echo("  -> nothing protects a plain VM's memory from its hypervisor")
    else:
        page = "the PSP's secrets page" if mode == Mode.SEV_SNP else "the secret's page"
        click.echo(f"  hypervisor searched {b['dump_bytes'] >> 20} MiB: no 16 bytes of the secret anywhere")
        click.echo(f"  {page} (GPA 0x9000) reads as ciphertext: {b['secret_page_sample']}...")
    marker = b["marker_found_at"]
    click.echo(f"  honest control: the shared marker is readable at GPA {hexs(marker)}" if marker
               else "  honest control FAILED: the shared marker was not found")


def _show_attestation(a: dict, guest_has_secret: bool) -> None:
    click.echo(f"  attestation: the guest sent its owner a signed report (launch digest "
               f"{a['launch_digest'][:16]}...)")
    if a["secret_released"]:
        click.echo("  the owner checked it (signature chain ARK -> ASK -> VCEK, launch digest, policy): "
                   "verified, so it released the secret, encrypted to a key only the guest holds")
    else:
        click.echo(f"  the owner refused: {a['owner_answer']}")
    click.echo("  the guest's console shows the SHA-256 of the secret it got: "
               + ("it matches" if guest_has_secret else "it does NOT match"))


# -- the attacks -------------------------------------------------------------------------------------
def _attack(attack, mode: str) -> dict:
    out = attack.run(mode)
    return {"attack": attack.ID, "name": attack.NAME, **out.to_json()}


def _show_attack(c: dict) -> None:
    click.echo(f"  {c['attack']} {c['name']} [{c['mode']}]: {c['outcome']} - {c['evidence']}")


# -- side by side ------------------------------------------------------------------------------------
_ROW_NAMES = {"A04": "A04 registers", "A07": "A07 remapping", "A14": "A14 page faults"}


def _table(boots: list[dict], cells: list[dict]) -> None:
    """One row per finding, one column per mode: red where the hypervisor won. Short words, so
    the four modes fit side by side in 80 columns."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Side by side (red: the hypervisor won, green: the defence held)",
                  box=box.SIMPLE_HEAD)
    table.add_column("")
    for m in MODES:
        table.add_column(_TITLES[m])
    by_mode = {b["mode"]: b for b in boots}

    def boot_row(label: str, cell) -> None:
        row = [label]
        for m in MODES:
            b = by_mode.get(m)
            row.append(cell(b) if b and b["run"] else f"[{_NEUTRAL}]not run[/]")
        table.add_row(*row)

    boot_row("secret in the dump", lambda b: f"[{_WON}]found[/]" if b["secret_found_at"]
             else f"[{_HELD}]not found[/]")
    boot_row("shared page read", lambda b: "yes" if b["marker_found_at"] else "NO")
    boot_row("secret delivered", _delivery)
    boot_row("attestation report", lambda b: f"[{_NEUTRAL}]-[/]" if "attestation" not in b
             else f"[{_HELD}]verified[/]" if b["attestation"]["report_verified"] else f"[{_WON}]refused[/]")
    for attack in SHOWN_ATTACKS:
        row = [_ROW_NAMES.get(attack.ID, f"{attack.ID} {attack.NAME}")]
        for m in MODES:
            c = next((c for c in cells if c["attack"] == attack.ID and c["mode"] == m), None)
            if c is None:
                row.append(f"[{_NEUTRAL}]not run[/]")
            else:
                style = {"succeeded": _WON, "failed": _HELD, "error": "bold yellow reverse"}.get(c["outcome"], _NEUTRAL)
                row.append(f"[{style}]{c['outcome']}[/]")
        table.add_row(*row)
    click.echo()
    Console().print(table)


def _delivery(b: dict) -> str:
    if b["mode"] == Mode.PLAIN:
        return "by hv"
    if b["mode"] != Mode.SEV_SNP:
        return "LAUNCH_SECRET"
    return "released" if b["attestation"]["secret_released"] else f"[{_WON}]none[/]"


@click.command()
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object: {"boots": [...], "attacks": [...], "wall_time"}; each boot '
                   "says what the hypervisor found, the SEV-SNP one its attestation step.")
def demo(as_json: bool) -> None:
    """Boot a guest plain, under SEV, SEV-ES and SEV-SNP; snoop each; attack each; one table."""
    t0 = time.perf_counter()
    if not as_json:
        click.echo(_INTRO)
    boots = []
    for mode in MODES:
        boots.append(_boot(mode))
        if not as_json:
            _show_boot(boots[-1])
    if not as_json:
        click.echo("\nEncryption hides the contents of memory. It does not stop a hypervisor that")
        click.echo("reads registers at exits (SEV-ES encrypts them), nor one that remaps the guest's")
        click.echo("pages (SEV-SNP's reverse map table does), and nothing stops one that watches which")
        click.echo("pages the guest touches:")
    cells = []
    for attack in SHOWN_ATTACKS:
        for mode in MODES:
            cells.append(_attack(attack, mode))
            if not as_json:
                _show_attack(cells[-1])
    if as_json:
        click.echo(json.dumps({"boots": boots, "attacks": cells,
                               "wall_time": round(time.perf_counter() - t0, 1)}, indent=2))
        return
    _table(boots, cells)
    click.echo("\nThe whole matrix, attack by attack and mode by mode: hv attack matrix")
    click.echo(f"(demo took {time.perf_counter() - t0:.1f} s)")

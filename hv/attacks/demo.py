"""`hv demo`: one minute that shows what memory encryption does and does not hide.

The same guest (guests/secret.c, holding a fresh secret in private memory and a non-secret
marker in the one page it shares with the hypervisor) boots plain, then under SEV, SEV-ES and
SEV-SNP (where the guest owner releases the secret only after checking an attestation report). Each time the hypervisor pauses it while the secret is live and reads all
of its memory, exactly as A01 does; then it runs two attacks SEV is known not to stop.
"""

from __future__ import annotations

import time

import click

from hv.attacks import a07_severed, a14_page_faults
from hv.attacks.evidence import find_all, find_windows, hexs
from hv.attacks.lab import SHARED_MARKER
from hv.attacks.outcome import MODES, ModeUnavailable
from hv.attacks.snoop import snoop

__all__ = ["demo"]

_INTRO = """\
hv demo: can a malicious hypervisor read its guest's secret?

A guest holds a secret (a fresh random string) in its private memory, and puts a harmless marker,
HV-SHARED-MARKER, in one page it deliberately shares with the hypervisor (as real guests share
I/O buffers). The hypervisor pauses the guest while the secret is in use and reads all of its
memory. We do this four ways: a plain VM, an SEV VM (memory encrypted with a key only the
emulated AMD Secure Processor holds), SEV-ES (registers encrypted too) and SEV-SNP (the guest's
pages are also bound to it in a reverse map table, and its secret arrives after attestation).
"""


def _show(mode: str) -> bool:
    try:
        dump, _lab, secret = snoop(mode, lambda lab: lab.vmm.dump_guest_memory())
    except ModeUnavailable as e:
        click.echo(f"\n[{mode}] not run: {e}")
        return False
    hits, marker = find_windows(dump, secret), find_all(dump, SHARED_MARKER)
    click.echo(f"\n[{mode}] the guest's secret is {secret.decode()}")
    if hits:
        click.echo(f"  hypervisor found the secret in plaintext at GPA {hexs(hits)}")
        click.echo(f"  -> nothing protects a plain VM's memory from its hypervisor")
    else:
        sample = dump[0x9000:0x9010].hex()
        page = "the PSP's secrets page" if mode == "sev-snp" else "the secret's page"
        click.echo(f"  hypervisor searched {len(dump) >> 20} MiB: no 16 bytes of the secret anywhere")
        click.echo(f"  {page} (GPA 0x9000) reads as ciphertext: {sample}...")
    click.echo(f"  honest control: the shared marker is readable at GPA {hexs(marker)}" if marker
               else "  honest control FAILED: the shared marker was not found")
    return True


@click.command()
def demo() -> None:
    """Boot a guest plain, under SEV, SEV-ES and SEV-SNP; snoop each; show what the hypervisor sees."""
    t0 = time.perf_counter()
    click.echo(_INTRO)
    for mode in MODES:
        _show(mode)
    click.echo("\nEncryption hides the contents of memory. Alone it does not stop a hypervisor that")
    click.echo("remaps the guest's pages (SEV-SNP's reverse map table does), and nothing stops one")
    click.echo("that watches which pages the guest touches:")
    for attack, mode in ((a07_severed, "sev"), (a07_severed, "sev-snp"), (a14_page_faults, "sev-snp")):
        try:
            out = attack.run(mode)
        except ModeUnavailable as e:
            click.echo(f"  {attack.ID} {attack.NAME} [{mode}]: not run: {e}")
            continue
        click.echo(f"  {attack.ID} {attack.NAME} [{mode}]: {out.outcome} - {out.evidence}")
    click.echo("\nThe whole matrix, attack by attack and mode by mode: hv attack matrix")
    click.echo(f"(demo took {time.perf_counter() - t0:.1f} s)")

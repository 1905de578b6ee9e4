"""`hv run`'s options for moving a guest (docs/migration.md), checked and carried out here so
the run command only asks three things: which VMM to run, which exit hook to give it, and what
to say when the run is over.

    hv run IMAGE --sev|--sev-es --migrate-to PDH.cert --migrate-out DIR --migrate-after-exits N
    hv run --incoming DIR                       (on the target, with its own --psp-state)
    hv run IMAGE --sev|--sev-es --save FILE --migrate-after-exits N
    hv run --restore FILE                       (on the same platform)
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from hv.kvm import Mode
from hv.vmm.hostfiles import check_writable, default_psp_state, prepare_psp_state
from hv.vmm.migrate import MigrationError, Stream, receive, send_after, target_from_export
from hv.vmm.vmm import Vmm, VmmConfig

__all__ = ["MigrationError", "Moves", "migration_options"]

_SEND_ONLY = ("secret_file", "session_dir", "owner_exec", "id_block_dir", "policy", "cbitpos")


def migration_options(command):
    """The six options, in --help order."""
    for decorator in reversed((
        click.option("--migrate-to", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="SEV, SEV-ES: send the guest to the platform of this PDH certificate, from its "
                          "`hv psp export` directory, whose whole chain must verify first."),
        click.option("--migrate-out", type=click.Path(file_okay=False), default=None,
                     help="With --migrate-to: the directory the migration stream (packets as files) "
                          "is written to."),
        click.option("--migrate-after-exits", type=click.IntRange(1), default=None,
                     help="With --migrate-to or --save: send the guest at its N-th VM exit (as "
                          "--json counts them; the first port I/O exit from there), then end with status 0."),
        click.option("--incoming", type=click.Path(exists=True, file_okay=False), default=None,
                     help="Receive a guest from a migration stream (no IMAGE) on this platform and run it "
                          "to its end."),
        click.option("--save", type=click.Path(dir_okay=False), default=None,
                     help="SEV, SEV-ES: with --migrate-after-exits, save the guest into FILE, a snapshot "
                          "only this platform's PSP can read."),
        click.option("--restore", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Continue a guest from a --save snapshot (no IMAGE) on the same platform."),
    )):
        command = decorator(command)
    return command


@dataclass
class Moves:
    """What the migration options ask for, checked against the rest of the command line."""

    migrate_to: str | None = None
    migrate_out: str | None = None
    migrate_after_exits: int | None = None
    incoming: str | None = None
    save: str | None = None
    restore: str | None = None
    psp_state: str | None = None

    @classmethod
    def from_options(cls, options: dict, *, image: str | None, mode: Mode, psp_state: str | None,
                     others: dict) -> "Moves":
        """`options` are the six options' values; `others` the run options that only a launch
        takes (a received guest brings its own). click.UsageError on any bad combination."""
        m = cls(**options, psp_state=psp_state)
        encrypted, snp = mode.encrypted, mode.snp
        source = m.incoming or m.restore
        if m.incoming and m.restore:
            raise click.UsageError("--incoming and --restore exclude each other")
        if source:
            given = [f"--{n.replace('_', '-')}" for n, v in others.items() if v]
            if image or encrypted or given or m.sending:
                extra = (["IMAGE"] if image else []) + (["a mode"] if encrypted else []) + given
                raise click.UsageError(f"{'--incoming' if m.incoming else '--restore'} takes the guest, its "
                                       f"mode and policy from the stream: not with {', '.join(extra) or 'sending'}")
            return m
        if image is None:
            raise click.UsageError("Missing argument 'IMAGE' (or --kernel BZIMAGE, --incoming DIR, "
                                   "--restore FILE)")
        if m.save and (m.migrate_to or m.migrate_out):
            raise click.UsageError("--save (a snapshot of this platform) excludes --migrate-to and --migrate-out")
        if not m.save and (m.migrate_to or m.migrate_out or m.migrate_after_exits) and not (
                m.migrate_to and m.migrate_out and m.migrate_after_exits):
            raise click.UsageError("--migrate-to, --migrate-out and --migrate-after-exits go together")
        if m.save and not m.migrate_after_exits:
            raise click.UsageError("--save needs --migrate-after-exits N: when to take the snapshot")
        if m.sending and snp:
            raise click.UsageError("an SEV-SNP guest cannot be migrated or saved: it needs a migration "
                                   "agent inside the guest, which hv does not offer (use --sev or --sev-es)")
        if m.sending and not encrypted:
            raise click.UsageError("--migrate-to and --save are for --sev and --sev-es guests")
        return m

    @property
    def sending(self) -> bool:
        return bool(self.migrate_to or self.save or self.migrate_after_exits)

    @property
    def receiving(self) -> bool:
        return bool(self.incoming or self.restore)

    def exit_hook(self):
        """The VMM exit hook that sends the guest, or None. The target's chain is checked first
        (MigrationError), before the guest is even launched."""
        if not self.sending:
            return None
        target = target_from_export(self.migrate_to) if self.migrate_to else None
        if self.save:
            check_writable(self.save, "--save")
        where = self.save or self.migrate_out
        return send_after(self.migrate_after_exits, where, single_file=bool(self.save), target=target)

    def make_vmm(self, config: VmmConfig) -> Vmm:
        """The VMM to run: a new guest from `config`, or the received one on this platform."""
        if not self.receiving:
            return Vmm(config)
        config.psp_state = self.psp_state or default_psp_state()
        prepare_psp_state(config.psp_state)
        stream = Stream.read(self.incoming or self.restore)
        return receive(stream, config)

    def report(self, result) -> None:
        """After the run: say so when the guest ended before it could be sent."""
        if self.sending and result.exit_reason != "migrated":
            click.echo(f"hv: the guest ended before its exit {self.migrate_after_exits}: nothing was "
                       f"{'saved' if self.save else 'sent'}", err=True)

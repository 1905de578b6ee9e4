"""The `hv` command line. Errors become a one-line message and an exit status here, and only here.

Exit status of `hv run`: the guest's own exit code (port 0x501), or
  2    bad usage or a bad image          3    the launch failed (firmware error, owner refused)
  124  --timeout or --max-insns reached  125  the guest crashed (report on stderr)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from hv import __version__
from hv.boot import ImageError, check_mem
from hv.hw.machine import TweakMode
from hv.attacks.cli import attack
from hv.attacks.demo import demo
from hv.owner.cli import owner
from hv.vmm.okcheck import ok
from hv.vmm.pspctl import psp
from hv.vmm import EXIT_LAUNCH, EXIT_USAGE, LaunchError, Vmm, VmmConfig
from hv.sizes import parse_int, parse_size

__all__ = ["main"]


class _HvGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ImageError as e:
            click.echo(f"hv: bad image: {e}", err=True)
            ctx.exit(EXIT_USAGE)
        except LaunchError as e:
            click.echo(f"hv: launch failed: {e}", err=True)
            ctx.exit(EXIT_LAUNCH)


@click.group(cls=_HvGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hv")
def main() -> None:
    """hv: an emulated KVM-style hypervisor with AMD SEV-style memory encryption.

    Guests run on a real x86-64 CPU (Unicorn); every access goes through an emulated memory
    controller that encrypts private pages with a per-guest key held only by the emulated PSP.
    """


def _size(ctx, param, value):
    try:
        size = parse_size(value)
        check_mem(size)
        return size
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _int(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_int(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def default_psp_state() -> str:
    """The PSP's non-volatile storage: $HV_PSP_STATE, else the user's data directory."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "hv", "psp-state.json")


psp_state_option = click.option(
    "--psp-state", envvar="HV_PSP_STATE", type=click.Path(dir_okay=False), default=None,
    help="The PSP's state file (platform identity). Default: $HV_PSP_STATE, else "
         "$XDG_DATA_HOME/hv/psp-state.json.")


@main.command()
@click.argument("image", type=click.Path(exists=True, dir_okay=False))
@click.option("--mem", default="64M", callback=_size, show_default=True,
              help="Guest memory (K/M/G suffixes; a multiple of 2M, 4M..4G).")
@click.option("--sev", "mode", flag_value="sev", help="Run as an SEV guest (measured launch through the PSP).")
@click.option("--sev-es", "mode", flag_value="sev-es", help="SEV-ES: encrypted register state (not yet available).")
@click.option("--sev-snp", "mode", flag_value="sev-snp", help="SEV-SNP integrity (not yet available).")
@click.option("--policy", callback=_int, default=None,
              help="Guest policy for encrypted modes (e.g. 0x1 = NODBG, the default; 0x0 allows debugging).")
@click.option("--cbitpos", type=click.IntRange(32, 51), default=None, help="C-bit position (default 47).")
@click.option("--tweak", type=click.Choice([t.value for t in TweakMode]), default="xex-random",
              show_default=True, help="Memory encryption tweak mode of the emulated part.")
@click.option("--tsme", is_flag=True, help="Transparent SME: all other memory encrypted with the host key.")
@click.option("--max-insns", type=click.IntRange(1), default=None,
              help="Stop after this many guest instructions (turns on counting, which is slow).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop the guest after this many seconds of wall-clock time.")
@click.option("-q", "--quiet", is_flag=True, help="Do not copy the serial console to stdout.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary object on stdout at the end.")
@click.option("--dump-dram", type=click.Path(dir_okay=False, writable=True), default=None,
              help="When the guest stops, write its memory as the hypervisor sees it, in GPA order.")
@click.option("--secret-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Launch secret for the guest (plain: written directly; SEV: injected through the PSP).")
@click.option("--session", "session_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The guest owner's launch_blob.bin and godh.cert (from `hv owner session`).")
@click.option("--owner-exec", default=None,
              help="Command that answers the launch measurement (JSON on stdin) with a secret packet.")
@psp_state_option
def run(image, mem, mode, policy, cbitpos, tweak, tsme, max_insns, timeout, quiet, as_json,
        dump_dram, secret_file, session_dir, owner_exec, psp_state):
    """Boot IMAGE (ELF64 or flat binary) and run it; the guest's serial console goes to stdout."""
    data = Path(image).read_bytes()
    secret = Path(secret_file).read_bytes() if secret_file else None
    if (session_dir or owner_exec) and not mode:
        raise click.UsageError("--session and --owner-exec need an encrypted mode (--sev)")
    stream = None if (quiet or as_json) else _stdout_writer()
    config = VmmConfig(
        image=data, mem_size=mem, vm_type=mode or "plain", policy=policy, cbitpos=cbitpos,
        tweak=TweakMode(tweak), tsme=tsme, max_insns=max_insns, timeout=timeout, secret=secret,
        session_dir=session_dir, owner_exec=owner_exec,
        psp_state=psp_state or (default_psp_state() if mode else None),
        serial_out=stream, image_name=Path(image).name)
    if config.psp_state:
        Path(config.psp_state).parent.mkdir(parents=True, exist_ok=True)
    vmm = Vmm(config)
    result = vmm.run()
    if dump_dram:
        Path(dump_dram).write_bytes(vmm.dump_guest_memory())
    if result.message:
        click.echo(f"hv: {result.message}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    sys.exit(result.exit_code)


def _stdout_writer():
    out = sys.stdout.buffer if hasattr(sys.stdout, "buffer") else None

    def write(b: bytes) -> None:
        if out is not None:
            out.write(b)
            if b == b"\n":
                out.flush()
        else:
            sys.stdout.write(b.decode("latin-1"))

    return write


main.add_command(owner)
main.add_command(psp)
main.add_command(ok)
main.add_command(attack)
main.add_command(demo)


if __name__ == "__main__":
    main()

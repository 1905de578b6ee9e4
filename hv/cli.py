"""The `hv` command line. Errors become a one-line message and an exit status here, and only here.

Exit status of `hv run`: the guest's own exit code (port 0x501), or
  2    bad usage, a bad image or a path  3    the launch failed (firmware error, owner refused)
       hv cannot use
  124  --timeout or --max-insns reached  125  the guest crashed (report on stderr)
  130  interrupted (SIGINT, Ctrl-C)
Paths are checked before the guest runs (hv/vmm/hostfiles.py); a --dump-dram or --trace write that
fails after it ran is one line on stderr and keeps the guest's status.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import click
from sevwire import ID_AUTH_SIZE, ID_BLOCK_SIZE

from hv import __version__
from hv.boot import SECRET_MAX, ImageError, check_mem
from hv.hw.machine import TweakMode
from hv.kvm import Mode
from hv.attacks.cli import attack
from hv.attacks.demo import demo
from hv.owner.cli import owner
from hv.vmm.okcheck import ok
from hv.vmm.hostfiles import TraceSink, check_writable, default_psp_state, prepare_psp_state
from hv.vmm.pspctl import psp
from hv.vmm.migrate_cli import MigrationError, Moves, migration_options
from hv.vmm import EXIT_INTERRUPTED, EXIT_LAUNCH, EXIT_USAGE, LaunchError, Vmm, VmmConfig
from hv.sizes import parse_int, parse_size

__all__ = ["main"]


class _UsageLine(click.ClickException):
    """Bad usage in one line, ``hv: <message> (see 'hv run --help')``, and status 2, whichever
    command it came from (click's own form is three lines: usage, a hint and the error)."""

    exit_code = EXIT_USAGE

    def __init__(self, error: click.UsageError) -> None:
        super().__init__(error.format_message())
        names = []
        ctx = error.ctx
        while ctx is not None and ctx.parent is not None:  # the root's name is the program's
            names.insert(0, ctx.info_name)
            ctx = ctx.parent
        # Named like the group's own errors: "hv psp: ...", "hv owner: ...", else "hv: ...".
        group = error.ctx is not None and len(names) > 1
        self.prefix = f"hv {names[0]}" if group else "hv"
        self.hint = f" (see 'hv {' '.join(names)} --help')" if names else " (see 'hv --help')"

    def show(self, file=None) -> None:
        click.echo(f"{self.prefix}: {self.format_message()}{self.hint}", err=True, file=file)


class _HvGroup(click.Group):
    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            raise _UsageLine(e) from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise _UsageLine(e) from None
        except ImageError as e:
            click.echo(f"hv: bad image: {e}", err=True)
            ctx.exit(EXIT_USAGE)
        except MigrationError as e:
            click.echo(f"hv: migration failed: {e}", err=True)
            ctx.exit(EXIT_LAUNCH)
        except LaunchError as e:
            click.echo(f"hv: launch failed: {e}", err=True)
            ctx.exit(EXIT_LAUNCH)
        except KeyboardInterrupt:
            click.echo("hv: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_HvGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hv")
def main() -> None:
    """hv: an emulated KVM-style hypervisor with AMD SEV-style memory encryption.

    Guests run on a real x86-64 CPU (Unicorn); every access goes through an emulated memory
    controller that encrypts private pages with a per-guest key held only by the emulated PSP.
    """


def _size(ctx, param, value):
    if value is None:
        return None
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


psp_state_option = click.option(
    "--psp-state", envvar="HV_PSP_STATE", type=click.Path(dir_okay=False), default=None,
    help="The PSP's state file (platform identity). Default: $HV_PSP_STATE, else "
         "$XDG_DATA_HOME/hv/psp-state.json.")


@main.command()
@click.argument("image", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Boot a Linux bzImage through the 64-bit boot protocol instead of IMAGE: plain, "
                   "--sev or --sev-es (docs/linux.md).")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --kernel: the initramfs (a cpio archive, compressed or not).")
@click.option("--append", default="", help="With --kernel: the kernel command line, after the "
                                          "options hv's platform needs (listed in --json).")
@click.option("--mem", default=None, callback=_size,
              help="Guest memory (K/M/G suffixes; a multiple of 2M, 4M..4G). [default: 64M; "
                   "256M with --kernel]")
@click.option("--sev", is_flag=True, help="Run as an SEV guest (measured launch through the PSP).")
@click.option("--sev-es", is_flag=True, help="SEV-ES: encrypted register state as well (VMSA; exits through the GHCB).")
@click.option("--sev-snp", is_flag=True, help="SEV-SNP: SEV-ES plus the RMP's memory integrity; the guest attests itself and "
                   "gets its secret after attestation. The modes exclude each other.")
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
              help="Secret for the guest, 1..4096 bytes (plain: written directly; SEV, SEV-ES: injected "
                   "through the PSP; SEV-SNP: released to the attested guest on request). hv plays "
                   "the guest owner, so not with --session or --owner-exec.")
@click.option("--session", "session_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="The guest owner's launch_blob.bin and godh.cert (from `hv owner session`; "
                   "SEV and SEV-ES only).")
@click.option("--owner-exec", default=None,
              help="Command playing the guest owner, JSON on stdin and stdout: it answers the launch "
                   "measurement with a secret packet (SEV, SEV-ES) or the guest's attestation report "
                   "with the encrypted secret (SEV-SNP). It gets what is left of --timeout (120 s "
                   "without it) and at most 1 MiB of output; its answer counts only with exit status "
                   "0, and its whole process group is killed when it is done.")
@click.option("--id-block", "id_block_dir", type=click.Path(exists=True, file_okay=False), default=None,
              help="SEV-SNP: the guest owner's id_block.bin and id_auth.bin (from `hv owner "
                   "id-block`), checked by the PSP at SNP_LAUNCH_FINISH; a mismatch fails the launch.")
@click.option("--gdb", default=None, metavar="tcp::PORT",
              help="Serve the GDB remote protocol on localhost:PORT (0: a free port, printed on "
                   "stderr). Private memory of an encrypted guest reads as plaintext only when "
                   "its policy allows debugging.")
@click.option("-S", "gdb_wait", is_flag=True, help="With --gdb: wait for the debugger before the first instruction.")
@click.option("--trace", "trace_file", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write a JSON Lines trace: exits, TLB fills, page encryptions/decryptions, PSP commands.")
@click.option("--trace-insn", is_flag=True, help="Add every instruction to --trace (capstone; slow).")
@psp_state_option
@migration_options
def run(image, kernel, initrd, append, mem, sev, sev_es, sev_snp, policy, cbitpos, tweak, tsme,
        max_insns, timeout, quiet, as_json, dump_dram, secret_file, session_dir, owner_exec,
        id_block_dir, gdb, gdb_wait, trace_file, trace_insn, psp_state, **migration):
    """Boot IMAGE (ELF64 or flat binary) and run it; the guest's serial console goes to stdout.
    With --kernel, boot a Linux kernel instead (the terminal is its console; Ctrl-A x quits).
    With --incoming or --restore, receive a moved guest instead and run it to its end."""
    mode = _one_mode(sev=sev, sev_es=sev_es, sev_snp=sev_snp)
    if kernel or initrd or append:
        _check_debug_options(gdb, gdb_wait, trace_file, trace_insn)
        _run_kernel(image, kernel, initrd, append, mem, mode, timeout, quiet, as_json, dump_dram,
                    max_insns, trace_file, gdb, gdb_wait, {"--secret-file": secret_file,
                     "--id-block": id_block_dir, "--trace-insn": trace_insn,
                     "--cbitpos": cbitpos is not None, "--tsme": tsme,
                     **{f"--{k.replace('_', '-')}": v for k, v in migration.items()}},
                    dict(policy=policy, session_dir=session_dir, owner_exec=owner_exec,
                         psp_state=(psp_state or default_psp_state()) if mode.encrypted else None))
    mem = mem or (64 << 20)
    _check_debug_options(gdb, gdb_wait, trace_file, trace_insn)
    moves = Moves.from_options(migration, image=image, mode=mode, psp_state=psp_state, others=dict(
        secret_file=secret_file, session_dir=session_dir, owner_exec=owner_exec,
        id_block=id_block_dir, policy=policy is not None, cbitpos=cbitpos is not None,
        gdb=gdb, trace=trace_file))
    data = Path(image).read_bytes() if image else b""
    secret = _read_secret(secret_file, mode) if secret_file else None
    if (session_dir or owner_exec) and not mode.encrypted:
        raise click.UsageError("--session and --owner-exec need an encrypted mode (--sev)")
    if session_dir and mode.snp:
        raise click.UsageError("--session is for --sev and --sev-es: SEV-SNP has no launch session "
                               "blob (use --secret-file or --owner-exec)")
    if secret_file and owner_exec:
        raise click.UsageError("give --secret-file (hv plays the guest owner) or --owner-exec "
                               "(the owner answers), not both")
    if secret_file and session_dir:
        raise click.UsageError("--secret-file cannot go with --session: only the guest owner holds "
                               "that session's transport keys (its --owner-exec sends the secret)")
    id_block = id_auth = None
    if id_block_dir:
        if not mode.snp:
            raise click.UsageError("--id-block is for --sev-snp")
        id_block, id_auth = _read_id_block(Path(id_block_dir))
    stream = None if (quiet or as_json) else _stdout_writer()
    config = VmmConfig(
        image=data, mem_size=mem, vm_type=mode, policy=policy, cbitpos=cbitpos,
        tweak=TweakMode(tweak), tsme=tsme, max_insns=max_insns, timeout=timeout, secret=secret,
        session_dir=session_dir, owner_exec=owner_exec, id_block=id_block, id_auth=id_auth,
        psp_state=(psp_state or default_psp_state()) if mode.encrypted else None,
        serial_out=stream, image_name=Path(image).name if image else "guest")
    if config.psp_state:
        prepare_psp_state(config.psp_state)
    for option, path in (("--dump-dram", dump_dram), ("--trace", trace_file)):
        if path:
            check_writable(path, option)
    config.on_exit = moves.exit_hook()
    vmm = moves.make_vmm(config)
    with _sigint_stops(vmm):
        result = (_run_observed(vmm, gdb, gdb_wait, trace_file, trace_insn) if (gdb or trace_file)
                  else vmm.run(load=not moves.receiving))
    if dump_dram:
        try:
            Path(dump_dram).write_bytes(vmm.dump_guest_memory())
        except OSError as e:  # after the run: say so, and keep the guest's status
            click.echo(f"hv: cannot write --dump-dram {dump_dram}: {e.strerror}", err=True)
    if result.message:
        click.echo(f"hv: {result.message}", err=True)
    moves.report(result)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    sys.exit(result.exit_code)


def _run_kernel(image, kernel, initrd, append, mem, mode, timeout, quiet, as_json, dump_dram,
                max_insns, trace_file, gdb, gdb_wait, others, launch) -> None:
    from hv.vmm.linux_cli import KERNEL_DEFAULT_MEM, KERNEL_MODES, refuse_with_kernel, run_kernel

    if not kernel:
        raise click.UsageError("--initrd and --append go with --kernel")
    if image:
        raise click.UsageError("give IMAGE or --kernel, not both")
    if mode not in KERNEL_MODES:
        raise click.UsageError(f"--kernel does not run --{mode.value} guests")
    if (launch["session_dir"] or launch["owner_exec"]) and mode not in (Mode.SEV, Mode.SEV_ES):
        raise click.UsageError("--session and --owner-exec go with --sev and --sev-es (an SEV-SNP "
                               "kernel attests itself: /dev/sev-guest, hv owner verify-report)"
                               if mode.snp else "--session and --owner-exec need --sev or --sev-es")
    if launch["policy"] is not None and not mode.encrypted:
        raise click.UsageError("--policy needs an encrypted mode (--sev, --sev-es or --sev-snp)")
    if gdb and mode.es:
        raise click.UsageError(f"--gdb does not work with --kernel under --{mode.value}: the "
                               "kernel's registers are in its encrypted save area")
    refuse_with_kernel(others)
    for option, path in (("--dump-dram", dump_dram), ("--trace", trace_file)):
        if path:
            check_writable(path, option)
    vmm, result = run_kernel(kernel, initrd, append, mem or KERNEL_DEFAULT_MEM, timeout,
                             max_insns, quiet or as_json, _sigint_stops, trace_file, gdb, gdb_wait,
                             mode=mode, **launch)
    if dump_dram:
        try:
            Path(dump_dram).write_bytes(vmm.dump_guest_memory())
        except OSError as e:
            click.echo(f"hv: cannot write --dump-dram {dump_dram}: {e.strerror}", err=True)
    if result.message:
        click.echo(f"hv: {result.message}", err=True)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
    sys.exit(result.exit_code)


def _one_mode(**flags: bool) -> Mode:
    """The one encryption mode given (SEV, SEV-ES, SEV-SNP), else plain.  Two
    modes at once are refused rather than letting the last one win: `--sev-snp --sev-es` would
    otherwise quietly run the weaker SEV-ES."""
    given = [name.replace("_", "-") for name, on in flags.items() if on]
    if len(given) > 1:
        raise click.UsageError(" and ".join(f"--{m}" for m in given) + " exclude each other: give one mode")
    return Mode(given[0]) if given else Mode.PLAIN


def _read_secret(path: str, mode: Mode) -> bytes:
    """The --secret-file's bytes: 1..4096 in every mode, as the guest's secret page holds 4 KiB
    (SEV-SNP releases the same range); an empty file is a mistake, not "no secret"."""
    try:
        secret = Path(path).read_bytes()
    except OSError as e:
        raise click.BadParameter(f"{path}: {e.strerror}", param_hint="--secret-file") from None
    if not 1 <= len(secret) <= SECRET_MAX:
        raise click.BadParameter(f"{path} holds {len(secret)} bytes; a secret is 1..{SECRET_MAX} "
                                 f"bytes, the guest's secret page", param_hint="--secret-file")
    return secret


def _read_id_block(directory: Path) -> tuple[bytes, bytes]:
    """id_block.bin (0x60 bytes) and id_auth.bin (4 KiB) from DIR, exactly those sizes."""
    out = []
    for name, size in (("id_block.bin", ID_BLOCK_SIZE), ("id_auth.bin", ID_AUTH_SIZE)):
        path = directory / name
        try:
            data = path.read_bytes()
        except OSError as e:
            raise click.BadParameter(f"{path}: {e.strerror}", param_hint="--id-block") from None
        if len(data) != size:
            raise click.BadParameter(f"{path}: expected {size} bytes, got {len(data)}",
                                     param_hint="--id-block")
        out.append(data)
    return out[0], out[1]


def _check_debug_options(gdb, gdb_wait, trace_file, trace_insn) -> None:
    from hv.vmm.gdbstub import GdbError, parse_gdb_address

    if gdb_wait and not gdb:
        raise click.UsageError("-S needs --gdb")
    if trace_insn and not trace_file:
        raise click.UsageError("--trace-insn needs --trace FILE")
    if gdb:
        try:
            parse_gdb_address(gdb)
        except GdbError as e:
            raise click.BadParameter(str(e), param_hint="--gdb") from None


def _run_observed(vmm, gdb, gdb_wait, trace_file, trace_insn):
    """Run with a tracer and/or a GDB stub hooked into the VMM's exits (docs/debugging.md)."""
    from hv.vmm.gdbstub import DebuggerKilled, GdbError, GdbStub
    from hv.vmm.trace import Tracer

    def warn(message: str) -> None:
        click.echo(f"hv: {message}", err=True)

    hooks, tracer, stub, result = [], None, None, None
    out = TraceSink.open(trace_file) if trace_file else None
    try:
        if out is not None:
            tracer = Tracer(vmm, out, warn, instructions=trace_insn)
            tracer.attach()
            hooks.append(tracer.on_exit)
        if gdb:
            try:
                stub = GdbStub(vmm, gdb, warn, wait=gdb_wait)
            except GdbError as e:
                raise click.UsageError(str(e)) from None
            hooks.append(stub.on_exit)
        vmm.config.on_exit = _chain(hooks)
        vmm.load()
        if stub is not None:
            stub.listen()  # after the launch: from here on every packet is answered at once
            warn(f"gdb stub listening on 127.0.0.1:{stub.port}")
        if stub is not None and gdb_wait:
            stub.wait_attach()
        result = vmm.run(load=False)
    except DebuggerKilled:
        warn("terminated by the debugger")  # as QEMU's stub does on `k`: status 0
    finally:
        if stub is not None:
            stub.finish(result.exit_code if result else 0,
                        result is not None and result.exit_reason in ("crash", "shutdown"))
        if tracer is not None:
            tracer.close(result)
        if out is not None:
            out.close()
            if out.error is not None:  # the guest's status stands; the trace is cut short
                warn(f"--trace {trace_file} is incomplete: {out.error.strerror}")
    if result is None:
        sys.exit(0)
    return result


@main.command()
@click.argument("image", required=False, type=click.Path(exists=True, dir_okay=False))
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Map a Linux guest instead of IMAGE: its bzImage (see hv run --kernel).")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False), default=None,
              help="With --kernel: the initramfs.")
@click.option("--append", default="", help="With --kernel: the kernel command line.")
@click.option("--mem", default=None, callback=_size,
              help="Guest memory. [default: 64M; 256M with --kernel]")
@click.option("--sev", is_flag=True, help="Run as an SEV guest.")
@click.option("--sev-es", is_flag=True, help="Run as an SEV-ES guest (not with --sev).")
@click.option("--policy", callback=_int, default=None, help="Guest policy for encrypted modes (default 0x1).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop the guest after this many seconds, then map what it left.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the picture here (PNG).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the map as one JSON object (every run of like pages) instead of the table.")
@psp_state_option
def memmap(image, kernel, initrd, append, mem, sev, sev_es, policy, timeout, output, as_json,
           psp_state):
    """Run IMAGE (or a Linux --kernel) to its end, then map its memory page by page: private or
    shared in the guest's own page tables, and the byte entropy of DRAM (what the hypervisor
    sees) against that of the guest's plaintext. A lab instrument: it reads the machine the way a
    hardware probe would."""
    from hv.hw.inspect import KIND_NAMES, MemoryProbe
    from hv.vmm.memmap import map_json, render_png, render_table

    mode = _one_mode(sev=sev, sev_es=sev_es)
    if output:
        check_writable(output, "-o")
    if kernel or initrd or append:
        from hv.vmm.linux_cli import KERNEL_DEFAULT_MEM, run_kernel
        if not kernel:
            raise click.UsageError("--initrd and --append go with --kernel")
        if image:
            raise click.UsageError("give IMAGE or --kernel, not both")
        if mode.encrypted or policy is not None:
            raise click.UsageError(f"--kernel runs plain guests for now, not --{mode.value}")
        mem = mem or KERNEL_DEFAULT_MEM
        vmm, result = run_kernel(kernel, initrd, append, mem, timeout, None, True, _sigint_stops)
        name, cr3 = Path(kernel).name, vmm.cr3()
        probe = MemoryProbe(vmm.machine)
        vm = vmm.vm
    else:
        if not image:
            raise click.UsageError("Missing argument 'IMAGE' (or --kernel BZIMAGE)")
        mem = mem or (64 << 20)
        config = VmmConfig(image=Path(image).read_bytes(), mem_size=mem, vm_type=mode,
                           policy=policy, timeout=timeout,
                           psp_state=(psp_state or default_psp_state()) if mode.encrypted else None,
                           image_name=Path(image).name)
        if config.psp_state:
            prepare_psp_state(config.psp_state)
        vmm = Vmm(config)
        result = vmm.run()
        vcpu, vm, name = vmm.vcpu, vmm.vm, Path(image).name
        probe = MemoryProbe(vmm.machine)
        cr3 = probe.guest_cr3(None if vcpu.guest_state_protected else vcpu.get_sregs()["cr3"],
                              vcpu.vmsa_spa if vcpu.guest_state_protected else None, vm.asid)
    if result.message:
        click.echo(f"hv: {result.message}", err=True)
    mm = probe.memory_map(npt=vm.npt, asid=vm.asid, encrypted=vm.encrypted, cbitpos=vm.cbitpos,
                          cr3=cr3, mem_size=mem)
    written = None
    if output:
        title = f"HV MEMMAP {name} {mode.upper()} {mem >> 20} MIB"
        try:
            Path(output).write_bytes(render_png(mm, KIND_NAMES, title))
        except OSError as e:  # a full disk after the run: the map stands, the status too
            click.echo(f"hv: cannot write -o {output}: {e.strerror}", err=True)
        else:
            written = output
    if as_json:
        click.echo(json.dumps(dict(map_json(mm, KIND_NAMES), image=name,
                                   mode=mode, mem_size=mem, exit_reason=result.exit_reason,
                                   exit_code=result.exit_code, png=written), indent=2))
    else:
        click.echo(render_table(mm, KIND_NAMES))
        if written:
            click.echo(f"memory map written to {written}")
    sys.exit(result.exit_code)


@contextmanager
def _sigint_stops(vmm):
    """Ctrl-C ends the run with status 130, keeping what the guest wrote and the summary.

    Python runs a signal handler only between bytecodes of the main thread, which sits inside
    Unicorn's emu_start for as long as the guest computes; but the C-level handler writes the
    signal's number to the wakeup fd at once, so a thread blocked on that pipe stops the vCPU.
    Before and after the guest runs the main thread is Python: there Ctrl-C raises
    KeyboardInterrupt as usual (never inside a Unicorn callback, which would swallow it)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set signal handlers
        return
    r, w = os.pipe()
    os.set_blocking(w, False)

    def on_sigint(signum, frame):
        if not vmm.running:
            raise KeyboardInterrupt

    def watch() -> None:
        while data := os.read(r, 64):
            if signal.SIGINT in data:
                vmm.interrupt()

    old_handler = signal.signal(signal.SIGINT, on_sigint)
    old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="hv-sigint", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        signal.signal(signal.SIGINT, old_handler)
        os.close(w)  # the watcher reads end-of-file and returns
        watcher.join()
        os.close(r)


def _chain(hooks):
    """One VMM exit hook calling each of `hooks`; the exit is handled if any of them handled it."""
    if len(hooks) == 1:
        return hooks[0]

    def on_exit(vmm, exit_):
        handled = False
        for hook in hooks:
            handled = bool(hook(vmm, exit_)) or handled
        return handled
    return on_exit


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

"""`hv psp ...`: the platform owner's commands, in sevctl's style, through /dev/sev.

Each hv process is one power-on of the machine: the platform's identity lives in the PSP's state
file (--psp-state / $HV_PSP_STATE), so what `rotate` or `import` changes is there next time.
Commands may run at the same time on one state file: the firmware makes each change under the
file's lock, on the state as it is then, so a change that was acknowledged stays in force until a
later one replaces it.

Exit status: 0 done; 2 bad usage or a path hv cannot use (the state file's directory cannot be
made, the state file is not a regular file, an output cannot be written); 3 the PSP refused or
failed the command: a firmware status, a corrupt state file, or a change that could not be saved
(a full disk, a read-only directory), which then did not take effect: the state file keeps the
old state.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from hv.hw.machine import Machine, MachineConfig
from hv.kvm import Kvm
from hv.kvm.sev import FirmwareError, SevDevice
from hv.vmm.hostfiles import default_psp_state, prepare_psp_state
from hv.vmm.oca import OcaError, sign_pek_csr

__all__ = ["psp"]

_STATES = {0: "UNINIT", 1: "INIT", 2: "WORKING"}
_MACHINE = "hv.psp.machine"  # click context meta: the machine whose PSP ran the command
_JSON = "hv.psp.json"  # click context meta: --json was given


class _PspGroup(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FirmwareError as e:
            machine = ctx.meta.get(_MACHINE)
            fault = machine.psp_firmware.nv_fault if machine is not None and e.status else None
            _fail(ctx, str(fault or e), 3)  # the PSP's own reason, when it has one
        except OcaError as e:
            _fail(ctx, str(e), 2)
        except OSError as e:
            _fail(ctx, f"{e.strerror}: {e.filename}", 2)


def _fail(ctx: click.Context, message: str, status: int) -> None:
    """One line on stderr and the status; with --json also `{"ok": false, "error"}` on stdout."""
    if ctx.meta.get(_JSON):
        click.echo(json.dumps({"ok": False, "error": message}, indent=2))
    click.echo(f"hv psp: {message}", err=True)
    ctx.exit(status)


def _device(psp_state: str | None) -> SevDevice:
    path = prepare_psp_state(psp_state or default_psp_state(), prefix="hv psp")
    machine = Machine(MachineConfig(dram_size=8 << 20, psp_state=path))
    click.get_current_context().meta[_MACHINE] = machine
    return SevDevice(Kvm(machine))


def _emit(as_json: bool, payload: dict, lines: list[str]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2))
    else:
        for line in lines:
            click.echo(line)


_state_opt = click.option("--psp-state", envvar="HV_PSP_STATE", type=click.Path(dir_okay=False),
                          default=None, help="The PSP's state file (default: $HV_PSP_STATE, else "
                                             "$XDG_DATA_HOME/hv/psp-state.json).")
def _note_json(ctx: click.Context, _param, value: bool) -> bool:
    ctx.meta[_JSON] = value  # for _fail, which runs where the command's arguments are out of reach
    return value


_json_opt = click.option("--json", "as_json", is_flag=True, callback=_note_json,
                         help="Machine-readable output (on failure: ok false and the error).")


@click.group(cls=_PspGroup)
def psp() -> None:
    """Platform owner commands (sevctl-like): status, export, pek-csr, oca-sign, import, reset,
    rotate."""


@psp.command()
@_state_opt
@_json_opt
def status(psp_state, as_json):
    """Firmware API version, platform state, owner and SEV-ES configuration."""
    dev = _device(psp_state)
    dev.ensure_init(es=True)
    st = dev.platform_status()
    chip = dev.get_id()
    payload = {"api_major": st.api_major, "api_minor": st.api_minor, "build": st.build,
               "state": _STATES.get(st.state, st.state), "owner": "external" if st.owner & 1 else "self",
               "es_initialized": bool(st.config & 1), "guest_count": st.guest_count,
               "chip_id_sha256": hashlib.sha256(chip).hexdigest()}
    _emit(as_json, payload, [
        f"firmware API:  {st.api_major}.{st.api_minor} build {st.build}",
        f"platform:      {payload['state']}, {'externally owned' if st.owner & 1 else 'self-owned'}",
        f"SEV-ES:        {'initialised' if payload['es_initialized'] else 'not initialised'}",
        f"guests:        {st.guest_count}",
        f"chip id:       sha256 {payload['chip_id_sha256'][:16]}...",
    ])


def _kds_files(dev: SevDevice, vcek_der: bytes) -> dict[str, bytes]:
    """The X.509 files of AMD's key distribution service: ark.pem and ask.pem (the keys of
    ark.cert and ask.cert), cert_chain.pem (ASK then ARK, as the KDS serves it) and vcek.pem."""
    ask, ark = (x509.load_der_x509_certificate(der).public_bytes(Encoding.PEM)
                for der in dev.kds_chain())
    vcek = x509.load_der_x509_certificate(vcek_der).public_bytes(Encoding.PEM)
    return {"ark.pem": ark, "ask.pem": ask, "cert_chain.pem": ask + ark, "vcek.pem": vcek}


@psp.command()
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for pdh.cert pek.cert oca.cert cek.cert ask.cert ark.cert vcek.der "
                   "and, in X.509 as AMD's key server serves them, ark.pem ask.pem cert_chain.pem "
                   "vcek.pem.")
@_state_opt
@_json_opt
def export(out_dir, psp_state, as_json):
    """Export the platform's certificate chain (the names sevctl export uses), and the SNP
    chain in the form of AMD's key server: cert_chain.pem (ASK then ARK) and vcek.pem."""
    dev = _device(psp_state)
    dev.ensure_init(es=True)
    files = dev.export_certificates()
    files.update(_kds_files(dev, files["vcek.der"]))
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (d / name).write_bytes(data)
    _emit(as_json, {"directory": str(d), "files": {n: len(b) for n, b in files.items()}},
          [f"wrote {d / n} ({len(b)} bytes)" for n, b in files.items()])


@psp.command("pek-csr")
@click.option("-o", "--out", "out_file", required=True, type=click.Path(dir_okay=False),
              help="Where to write the PEK certificate signing request (2084 bytes).")
@_state_opt
@_json_opt
def pek_csr(out_file, psp_state, as_json):
    """Generate a PEK signing request for an external owner's OCA to sign."""
    dev = _device(psp_state)
    dev.ensure_init(es=True)
    csr = dev.pek_csr()
    Path(out_file).write_bytes(csr)
    _emit(as_json, {"file": out_file, "bytes": len(csr)}, [f"wrote {out_file} ({len(csr)} bytes)"])


@psp.command("oca-sign")
@click.argument("csr", type=click.Path(dir_okay=False))
@click.option("--oca-key", required=True, type=click.Path(dir_okay=False),
              help="The OCA's private key: ECDSA P-384, PEM (PKCS#8 or SEC1), unencrypted.")
@click.option("--new-key", is_flag=True,
              help="Make a new OCA key and write it to --oca-key (mode 0600; never over an existing file).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for pek.cert (the signed PEK) and oca.cert (the self-signed OCA).")
@_json_opt
def oca_sign(csr, oca_key, new_key, out_dir, as_json):
    """Sign a PEK CSR (from `pek-csr`) with the platform owner's OCA key, as the owner's
    certificate authority does: writes pek.cert and the self-signed oca.cert for `import`.
    Offline: it needs no PSP, only the CSR and the key."""
    signed = sign_pek_csr(Path(csr), Path(oca_key), new_key=new_key)
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    files = {"pek.cert": signed.pek_cert, "oca.cert": signed.oca_cert}
    for name, data in files.items():
        (d / name).write_bytes(data)
    payload = {"files": [str(d / n) for n in files], "oca_key": oca_key, "new_key": new_key,
               "oca_sha256": hashlib.sha256(signed.oca_cert).hexdigest()}
    _emit(as_json, payload, ([f"wrote {oca_key} (new OCA key, keep it secret)"] if new_key else [])
          + [f"wrote {d / n} ({len(b)} bytes)" for n, b in files.items()]
          + [f"OCA sha256 {payload['oca_sha256'][:16]}...; next: hv psp import "
             f"{d / 'pek.cert'} {d / 'oca.cert'}"])


@psp.command("import")
@click.argument("pek_cert", type=click.Path(exists=True, dir_okay=False))
@click.argument("oca_cert", type=click.Path(exists=True, dir_okay=False))
@_state_opt
@_json_opt
def import_(pek_cert, oca_cert, psp_state, as_json):
    """Take ownership: import the OCA-signed PEK and the OCA certificate."""
    dev = _device(psp_state)
    dev.ensure_init(es=True)
    dev.pek_cert_import(Path(pek_cert).read_bytes(), Path(oca_cert).read_bytes())
    _emit(as_json, {"owner": "external"}, ["imported: the platform is now externally owned"])


@psp.command()
@_state_opt
@_json_opt
def reset(psp_state, as_json):
    """Factory reset: new OCA, PEK and PDH; ownership returns to the platform."""
    dev = _device(psp_state)
    if dev.platform_status().state != 0:
        dev.shutdown()
    dev.platform_reset()
    dev.ensure_init(es=True)
    digest = hashlib.sha256(dev.pdh_cert_export()[0]).hexdigest()
    _emit(as_json, {"reset": True, "pdh_sha256": digest},
          [f"platform reset: new OCA, PEK and PDH (PDH sha256 {digest[:16]}...)"])


@psp.command()
@_state_opt
@_json_opt
def rotate(psp_state, as_json):
    """Rotate the PDH (PDH_GEN): sessions made for the old PDH no longer open."""
    dev = _device(psp_state)
    dev.ensure_init(es=True)
    dev.pdh_gen()
    pdh, _chain = dev.pdh_cert_export()
    digest = hashlib.sha256(pdh).hexdigest()
    _emit(as_json, {"pdh_sha256": digest}, [f"new PDH: sha256 {digest[:16]}..."])

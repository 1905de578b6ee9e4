"""`hv owner ...`: the guest owner's offline tools (trusted domain; never talks to a hypervisor).

verify-chain  check ARK -> ASK -> CEK -> PEK -> PDH and OCA -> PEK from exported certificates
session       make LAUNCH_START's GODH certificate and session blob for a platform's PDH
measure       the expected launch digest of an image or a Linux kernel (--kernel)
verify        recompute a reported launch measurement and compare
secret        package a LAUNCH_SECRET for a verified launch
verify-report check an SEV-SNP attestation report against VCEK <- ASK <- ARK and expectations
id-block      sign an SEV-SNP ID block for an image (checked by the PSP at SNP_LAUNCH_FINISH)

Exit status: 0 success, 1 a check failed, 2 bad input (one line on stderr). Every command takes
--json for machine-readable output on stdout, `{"ok": false, "error": ...}` when it fails. The
default guest policy is 0x1 (NODBG), the one `hv run` launches with.
"""

from __future__ import annotations

import json

import click

import sevwire
from hv.owner._chain import verify_chain
from hv.owner._digest import (image_digest, kernel_files_digest, kernel_files_snp_digest, snp_measurement,
                              snp_pages)
from hv.owner._errors import OwnerCheckFailed, OwnerError, OwnerInputError
from hv.owner._id_block import key_digest, make_id_block, read_p384_key
from hv.owner._inputs import (
    DEFAULT_CBITPOS,
    DEFAULT_MEM,
    parse_hex,
    parse_int,
    parse_size,
    read_file,
    read_sev_cert,
    read_tk,
    write_outputs,
)
from hv.owner._respond import MAX_SECRET

DEFAULT_POLICY = int(sevwire.Policy.NODBG)
"""The guest policy `hv run --sev` launches with when given none: the owner's default must be the
same, or a session made without --policy fails LAUNCH_START and `verify` fails the measurement."""
from hv.owner._snp_report import verify_snp_report_chain

__all__ = ["owner"]


_JSON, _EMITTED = "hv.owner.json", "hv.owner.emitted"  # click context meta


class _OwnerGroup(click.Group):
    """Turns every owner and wire error into one stderr line and its exit status, in one place;
    with --json stdout gets `{"ok": false, "error": ...}` too, so a script never reads nothing."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except OwnerError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except sevwire.SevWireError as exc:
            _fail(ctx, str(exc), 2)


def _fail(ctx: click.Context, message: str, status: int) -> None:
    if ctx.meta.get(_JSON) and not ctx.meta.get(_EMITTED):
        click.echo(json.dumps({"error": message, "ok": False}, indent=2, sort_keys=True))
    click.echo(f"hv owner: {message}", err=True)
    ctx.exit(status)


def _emit(as_json: bool, payload: dict, lines: list[str]) -> None:
    click.get_current_context().meta[_EMITTED] = True
    if as_json:
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        for line in lines:
            click.echo(line)


def _note_json(ctx: click.Context, _param, value: bool) -> bool:
    ctx.meta[_JSON] = value  # for _fail, which runs where the command's arguments are out of reach
    return value


def _policy(value: str) -> int:
    try:
        return int(sevwire.parse_policy(value))
    except sevwire.PolicyError as exc:
        raise OwnerInputError(f"--policy: {exc}") from None


json_option = click.option("--json", "as_json", is_flag=True, callback=_note_json,
                           help="Print machine-readable JSON on stdout (on failure: ok false and the error).")
policy_option = click.option("--policy", "policy", default=hex(DEFAULT_POLICY), show_default=True,
                             help="Guest policy: an integer, hex (0x..) or flag names (NODBG|NOKS); "
                                  "the default is `hv run`'s.")
mem_option = click.option("--mem", "mem", default=str(DEFAULT_MEM >> 20) + "M", show_default=True,
                          help="Guest memory size (64M, 1G, 0x4000000), as given to `hv run --mem`.")
cbitpos_option = click.option("--cbitpos", default=DEFAULT_CBITPOS, show_default=True, type=int,
                              help="C-bit position the guest's page tables use (CPUID 0x8000001F).")
# measure, verify and verify-report take an image or a kernel, whose default memory sizes differ.
launch_mem_option = click.option("--mem", "mem", default=None,
                                 help="Guest memory size (64M, 1G, 0x4000000), as given to `hv run --mem` "
                                      f"[default: {DEFAULT_MEM >> 20}M for an image, 256M for a kernel].")


def _kernel_options(kernel_help: str):
    """--kernel (with `kernel_help`), --initrd and --append, for a command that measures a kernel."""
    options = (
        click.option("--kernel", default=None, type=click.Path(dir_okay=False), help=kernel_help),
        click.option("--initrd", default=None, type=click.Path(dir_okay=False), help="With --kernel: its initrd."),
        click.option("--append", default=None,
                     help="With --kernel: the command line after hv's own (both are measured)."),
    )

    def decorate(command):
        for option in reversed(options):
            command = option(command)
        return command
    return decorate


_SEV_KERNEL_HELP = ("Or: a Linux bzImage, as `hv run --kernel ... --sev` (or --sev-es, with the ES policy bit) "
                    "launches it (C-bit 39).")


def _cbitpos_given(ctx: click.Context) -> bool:
    return ctx.get_parameter_source("cbitpos") is not click.core.ParameterSource.DEFAULT


@click.group(cls=_OwnerGroup)
def owner() -> None:
    """Guest owner tools: certificate chain, launch session, measurement, secret, SNP reports and
    ID blocks (offline)."""


@owner.command("verify-chain")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--ark", "trusted_ark", type=click.Path(dir_okay=False), default=None,
              help="The ARK obtained from AMD; the exported ark.cert must be identical to it.")
@json_option
def verify_chain_cmd(directory: str, trusted_ark: str | None, as_json: bool) -> None:
    """Verify ark/ask/cek/pek/oca/pdh.cert in DIRECTORY (sevctl export names), one line per link."""
    report = verify_chain(directory, trusted_ark)
    lines = [f"{'PASS' if link.ok else 'FAIL'}  {link.name}" + (f": {link.reason}" if link.reason else "")
             for link in report.links]
    lines.append(f"ARK sha256 {report.ark_sha256}" + ("" if trusted_ark else " (not pinned: compare with AMD's)"))
    payload = {"ok": report.ok, "ark_sha256": report.ark_sha256, "ark_pinned": trusted_ark is not None,
               "links": [{"link": link.name, "ok": link.ok, "reason": link.reason or None} for link in report.links]}
    _emit(as_json, payload, lines)
    if not report.ok:
        failed = next(link for link in report.links if not link.ok)
        raise OwnerCheckFailed(f"certificate chain FAILED at {failed.name}: {failed.reason}")


@owner.command("session")
@click.argument("pdh_cert", type=click.Path(dir_okay=False))
@policy_option
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for launch_blob.bin, godh.cert and tmp_tk.bin.")
@json_option
def session_cmd(pdh_cert: str, policy: str, out_dir: str, as_json: bool) -> None:
    """Make the LAUNCH_START session for PDH_CERT: launch_blob.bin (128 B), godh.cert (2084 B)
    and tmp_tk.bin (TEK||TIK, keep it secret; mode 0600). Verify the PDH's chain first."""
    pol = _policy(policy)
    pdh = read_sev_cert(pdh_cert, "PDH certificate")
    try:
        session = sevwire.build_session(pdh, pol)
    except sevwire.SevWireError as exc:
        raise OwnerInputError(f"PDH certificate {pdh_cert}: {exc}") from None
    files = {"launch_blob.bin": session.blob, "godh.cert": session.godh_cert,
             "tmp_tk.bin": session.tek + session.tik}
    written = write_outputs(out_dir, files, secret=("tmp_tk.bin",))
    _emit(as_json, {"policy": pol, "files": written},
          [f"policy 0x{pol:08x}"] + [f"wrote {path}" for path in written])


@owner.command("measure")
@click.argument("image", required=False, type=click.Path(dir_okay=False))
@_kernel_options("Or: a Linux bzImage, as `hv run --kernel ... --sev` (or --sev-es, with the ES policy bit; "
                 "--sev-snp, with --snp) launches it (C-bit 39).")
@policy_option
@launch_mem_option
@cbitpos_option
@click.option("--snp", is_flag=True,
              help="The SEV-SNP launch digest (SHA-384 over launched pages). The policy is not part of it: "
                   "--policy is ignored (`verify-report --policy` checks the report's).")
@json_option
def measure_cmd(image: str | None, kernel: str | None, initrd: str | None, append: str | None, policy: str,
                mem: str | None, cbitpos: int, snp: bool, as_json: bool) -> None:
    """Print the expected launch digest (SHA-256, hex) of IMAGE as hv launches it (with the ES
    policy bit, 0x4: the digest also covers the initial VMSA page, as `hv run --sev-es` measures).
    With --snp: the SHA-384 digest SNP_LAUNCH_UPDATE builds (pages, their types and GPAs).
    With --kernel instead of IMAGE: the launch digest of that kernel, its initrd and its whole
    command line, as `hv run --kernel ... --sev` measures them (with the ES bit: and the kernel's
    initial VMSA, as `--sev-es` does; with --snp: the SHA-384 digest of `--sev-snp`'s pages)."""
    _image_or_kernel(image, kernel, initrd, append, "IMAGE")
    if kernel is not None:
        cbit = cbitpos if _cbitpos_given(click.get_current_context()) else None
        if snp:
            ks = kernel_files_snp_digest(kernel, initrd, append, mem, cbit)
            _emit(as_json, {"digest": ks.digest.hex(), "kernel": kernel, "initrd": initrd, "cmdline": ks.cmdline,
                            "mem_size": ks.mem_size, "cbitpos": ks.cbitpos, "snp": True,
                            "pages": [{"gpa": gpa, "type": kind} for gpa, kind in ks.pages]},
                  [ks.digest.hex()])
            return
        pol = _policy(policy)
        k = kernel_files_digest(kernel, initrd, append, mem, pol, cbit)
        _emit(as_json, {"digest": k.digest.hex(), "kernel": kernel, "initrd": initrd, "cmdline": k.cmdline,
                        "mem_size": k.mem_size, "cbitpos": k.cbitpos, "policy": pol,
                        "regions": [{"gpa": gpa, "len": length} for gpa, length in k.regions],
                        "vmsas": k.vmsas},
              [k.digest.hex()])
        return
    mem_size = parse_size(mem if mem is not None else DEFAULT_MEM)
    if snp:
        pages = snp_pages(read_file(image, "image"), mem_size, cbitpos)
        ld = bytes(48)
        for gpa, contents, kind in pages:
            ld = sevwire.snp_extend(ld, contents, kind, gpa)
        _emit(as_json, {"digest": ld.hex(), "image": image, "mem_size": mem_size, "cbitpos": cbitpos,
                        "snp": True, "pages": [{"gpa": gpa, "type": kind} for gpa, _c, kind in pages]},
              [ld.hex()])
        return
    pol = _policy(policy)
    result = image_digest(read_file(image, "image"), mem_size, cbitpos, pol)
    payload = {"digest": result.digest.hex(), "image": image, "mem_size": mem_size, "cbitpos": cbitpos,
               "policy": pol, "regions": [{"gpa": gpa, "len": length} for gpa, length in result.regions],
               "vmsas": result.vmsas}
    _emit(as_json, payload, [result.digest.hex()])


def _image_or_kernel(image: str | None, kernel: str | None, initrd: str | None, append: str | None,
                     image_name: str) -> None:
    """Refuse anything but exactly one of an image and a kernel, and kernel options without one."""
    if (image is None) == (kernel is None):
        raise OwnerInputError(f"give {image_name} or --kernel" + (", not both" if image else ""))
    _kernel_only(kernel, initrd, append)


def _kernel_only(kernel: str | None, initrd: str | None, append: str | None) -> None:
    if kernel is None and (initrd is not None or append is not None):
        raise OwnerInputError("--initrd and --append go with --kernel")


@owner.command("verify")
@click.option("--measurement", required=True, help="MEASURE from LAUNCH_MEASURE (32 bytes, hex).")
@click.option("--mnonce", required=True, help="MNONCE from LAUNCH_MEASURE (16 bytes, hex).")
@click.option("--tk", "tk_path", required=True, type=click.Path(dir_okay=False), help="tmp_tk.bin from `session`.")
@click.option("--digest", default=None, help="Expected launch digest (32 bytes, hex).")
@click.option("--image", default=None, type=click.Path(dir_okay=False), help="Or: the image to compute it from.")
@_kernel_options(_SEV_KERNEL_HELP)
@policy_option
@click.option("--api-major", required=True, help="Firmware API major (PLATFORM_STATUS).")
@click.option("--api-minor", required=True, help="Firmware API minor (PLATFORM_STATUS).")
@click.option("--build", required=True, help="Firmware build (PLATFORM_STATUS).")
@launch_mem_option
@cbitpos_option
@json_option
def verify_cmd(measurement: str, mnonce: str, tk_path: str, digest: str | None, image: str | None,
               kernel: str | None, initrd: str | None, append: str | None, policy: str,
               api_major: str, api_minor: str, build: str, mem: str | None, cbitpos: int, as_json: bool) -> None:
    """Recompute the launch measurement with TIK and compare; exit 1 on mismatch."""
    if sum(x is not None for x in (digest, image, kernel)) != 1:
        raise OwnerInputError("give exactly one of --digest, --image and --kernel")
    _kernel_only(kernel, initrd, append)
    pol = _policy(policy)
    meas = parse_hex(measurement, 32, "--measurement")
    nonce = parse_hex(mnonce, 16, "--mnonce")
    keys = read_tk(tk_path)
    major = parse_int(api_major, "--api-major", 8)
    minor = parse_int(api_minor, "--api-minor", 8)
    bld = parse_int(build, "--build", 8)
    if digest is not None:
        ld = parse_hex(digest, 32, "--digest")
    elif kernel is not None:
        cbit = cbitpos if _cbitpos_given(click.get_current_context()) else None
        ld = kernel_files_digest(kernel, initrd, append, mem, pol, cbit).digest
    else:
        ld = image_digest(read_file(image, "image"), parse_size(mem if mem is not None else DEFAULT_MEM),
                          cbitpos, pol).digest
    expected = sevwire.launch_measure(keys.tik, major, minor, bld, pol, ld, nonce)
    ok = expected == meas
    _emit(as_json, {"ok": ok, "digest": ld.hex(), "expected_measurement": expected.hex(), "measurement": meas.hex()},
          [f"{'PASS' if ok else 'FAIL'}  launch measurement (digest {ld.hex()})"])
    if not ok:
        raise OwnerCheckFailed("launch measurement does not match the expected image, policy and firmware")


@owner.command("secret")
@click.option("--tk", "tk_path", required=True, type=click.Path(dir_okay=False), help="tmp_tk.bin from `session`.")
@click.option("--measurement", required=True, help="The verified MEASURE (32 bytes, hex).")
@click.option("--in", "secret_path", required=True, type=click.Path(dir_okay=False), help="The secret to inject.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for header.bin (52 B) and data.bin.")
@click.option("--api-major", default="0", show_default=True, help="Firmware API major.")
@click.option("--api-minor", default="24", show_default=True,
              help="Firmware API minor (from 17 on, the MAC covers the measurement).")
@json_option
def secret_cmd(tk_path: str, measurement: str, secret_path: str, out_dir: str, api_major: str, api_minor: str,
               as_json: bool) -> None:
    """Package SECRET_FILE for LAUNCH_SECRET: header.bin (FLAGS||IV||MAC) and data.bin (AES-128-CTR).
    Only run this after `verify` passed for the same measurement."""
    keys = read_tk(tk_path)
    meas = parse_hex(measurement, 32, "--measurement")
    secret = read_file(secret_path, "secret")
    if len(secret) > MAX_SECRET:
        raise OwnerInputError(f"secret {secret_path}: {len(secret)} bytes; the guest's secret page holds {MAX_SECRET}")
    header, data = sevwire.package_secret(keys.tek, keys.tik, secret, meas, parse_int(api_major, "--api-major", 8),
                                          parse_int(api_minor, "--api-minor", 8))
    written = write_outputs(out_dir, {"header.bin": header, "data.bin": data})
    _emit(as_json, {"files": written, "secret_len": len(secret)}, [f"wrote {path}" for path in written])


@owner.command("verify-report")
@click.argument("report", type=click.Path(dir_okay=False))
@click.option("--chain", "chain_dir", required=True, type=click.Path(file_okay=False),
              help="Directory holding ark.cert, ask.cert and vcek.der (`hv psp export`), or, "
                   "without ark.cert, cert_chain.pem (ASK then ARK, as AMD's key server serves "
                   "them) and vcek.pem or vcek.der.")
@click.option("--image", default=None, type=click.Path(dir_okay=False),
              help="Expect the SNP launch digest of this image (as `measure --snp`).")
@_kernel_options("Or: expect the SNP launch digest of this Linux bzImage, as `hv run --kernel ... --sev-snp` "
                 "launches it (as `measure --snp --kernel`).")
@click.option("--measurement", default=None, help="Or: the expected measurement (48 bytes, hex).")
@click.option("--policy", "snp_policy", default=None, help="Expected SNP guest policy (e.g. 0x30000).")
@click.option("--report-data", "report_data", default=None, help="Expected report_data (64 bytes, hex).")
@click.option("--id-key", "id_key", default=None, type=click.Path(dir_okay=False),
              help="Expect an ID block signed by this P-384 key (PEM, public or private): "
                   "checks ID_KEY_DIGEST.")
@click.option("--author-key", "author_key", default=None, type=click.Path(dir_okay=False),
              help="Expect this author key (PEM) to have signed the ID key: checks AUTHOR_KEY_DIGEST.")
@click.option("--family-id", "family_id", default=None, help="Expected family_id (16 bytes, hex).")
@click.option("--image-id", "image_id", default=None, help="Expected image_id (16 bytes, hex).")
@click.option("--svn", "svn", default=None, help="Expected guest SVN of the ID block (u32).")
@launch_mem_option
@cbitpos_option
@json_option
def verify_report_cmd(report: str, chain_dir: str, image: str | None, kernel: str | None, initrd: str | None,
                      append: str | None, measurement: str | None, snp_policy: str | None,
                      report_data: str | None, id_key: str | None, author_key: str | None,
                      family_id: str | None, image_id: str | None, svn: str | None, mem: str | None,
                      cbitpos: int, as_json: bool) -> None:
    """Verify an SEV-SNP attestation REPORT (1184 bytes, raw or hex): VCEK <- ASK <- ARK, the
    VCEK's signature, and the expected measurement (given, or predicted from --image or
    --kernel), policy and report_data, and with an ID block the ID and author keys, family and
    image ID and guest SVN; exit 1 on failure."""
    if sum(x is not None for x in (image, kernel, measurement)) > 1:
        raise OwnerInputError("give at most one of --image, --kernel and --measurement")
    _kernel_only(kernel, initrd, append)
    expected = parse_hex(measurement, 48, "--measurement") if measurement is not None else None
    if image is not None:
        expected = snp_measurement(read_file(image, "image"), parse_size(mem if mem is not None else DEFAULT_MEM),
                                   cbitpos)
    elif kernel is not None:
        cbit = cbitpos if _cbitpos_given(click.get_current_context()) else None
        expected = kernel_files_snp_digest(kernel, initrd, append, mem, cbit).digest
    pol = parse_int(snp_policy, "--policy", 64) if snp_policy is not None else None
    rdata = parse_hex(report_data, 64, "--report-data") if report_data is not None else None
    id_digest = key_digest(read_p384_key(id_key, "--id-key")) if id_key is not None else None
    author_digest = (key_digest(read_p384_key(author_key, "--author-key"))
                     if author_key is not None else None)
    result = verify_snp_report_chain(
        report, chain_dir, measurement=expected, policy=pol, report_data=rdata,
        id_key_digest=id_digest, author_key_digest=author_digest,
        family_id=parse_hex(family_id, 16, "--family-id") if family_id is not None else None,
        image_id=parse_hex(image_id, 16, "--image-id") if image_id is not None else None,
        guest_svn=parse_int(svn, "--svn", 32) if svn is not None else None)
    rep = result.report
    _emit(as_json, {"ok": True, "checks": list(result.passed), "measurement": rep.measurement.hex(),
                    "policy": rep.policy, "report_data": rep.report_data.hex(),
                    "chip_id": rep.chip_id.hex(), "reported_tcb": rep.reported_tcb,
                    "id_key_digest": rep.id_key_digest.hex(),
                    "author_key_digest": rep.author_key_digest.hex(),
                    "family_id": rep.family_id.hex(), "image_id": rep.image_id.hex(),
                    "guest_svn": rep.guest_svn},
          [f"PASS  {name}" for name in result.passed]
          + [f"measurement {rep.measurement.hex()}", f"report_data {rep.report_data.hex()}"])


@owner.command("id-block")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--id-key", "id_key", required=True, type=click.Path(dir_okay=False),
              help="The ID key: an unencrypted ECDSA P-384 private key (PEM or DER).")
@click.option("--author-key", "author_key", default=None, type=click.Path(dir_okay=False),
              help="An author key (P-384 private key) that signs the ID key.")
@click.option("--family-id", "family_id", default="00" * 16, show_default=True,
              help="family_id (16 bytes, hex), copied into the report.")
@click.option("--image-id", "image_id", default="00" * 16, show_default=True,
              help="image_id (16 bytes, hex), copied into the report.")
@click.option("--svn", "svn", default="0", show_default=True, help="The guest SVN (u32).")
@click.option("--policy", "snp_policy", default=hex(sevwire.SNP_POLICY_DEFAULT), show_default=True,
              help="The SNP guest policy the guest is launched with (`hv run --policy`).")
@mem_option
@cbitpos_option
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Directory for id_block.bin (96 B) and id_auth.bin (4096 B).")
@json_option
def id_block_cmd(image: str, id_key: str, author_key: str | None, family_id: str, image_id: str,
                 svn: str, snp_policy: str, mem: str, cbitpos: int, out_dir: str,
                 as_json: bool) -> None:
    """Sign an SEV-SNP ID block for IMAGE: its launch digest (as `measure --snp`), the policy,
    family and image ID and SVN, signed with the ID key (and the ID key with the author key).
    Pass the output directory to `hv run --sev-snp --id-block DIR`: the PSP refuses the launch
    unless the digest and policy are the guest's and the signatures hold."""
    fam = parse_hex(family_id, 16, "--family-id")
    img = parse_hex(image_id, 16, "--image-id")
    guest_svn = parse_int(svn, "--svn", 32)
    pol = parse_int(snp_policy, "--policy", 64)
    idk = read_p384_key(id_key, "--id-key", private=True)
    authk = read_p384_key(author_key, "--author-key", private=True) if author_key is not None else None
    files = make_id_block(read_file(image, "image"), parse_size(mem), cbitpos, pol, idk, authk,
                          family_id=fam, image_id=img, guest_svn=guest_svn)
    written = write_outputs(out_dir, {"id_block.bin": files.id_block, "id_auth.bin": files.id_auth})
    author = files.author_key_digest.hex() if files.author_key_digest else None
    _emit(as_json, {"files": written, "digest": files.ld.hex(), "policy": pol,
                    "family_id": fam.hex(), "image_id": img.hex(), "guest_svn": guest_svn,
                    "id_key_digest": files.id_key_digest.hex(), "author_key_digest": author},
          [f"launch digest {files.ld.hex()}", f"id key digest {files.id_key_digest.hex()}"]
          + ([f"author key digest {author}"] if author else [])
          + [f"wrote {path}" for path in written])


def main() -> None:  # pragma: no cover - convenience for `python -m hv.owner.cli`
    owner(prog_name="hv owner")


if __name__ == "__main__":  # pragma: no cover
    main()

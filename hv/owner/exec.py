"""`python -m hv.owner.exec`: the guest owner's side of `hv run --owner-exec CMD`.

SEV and SEV-ES (`--tk FILE --image IMG|--digest HEX|--kernel BZIMAGE [--initrd FILE] [--append
CMDLINE] --secret FILE`): reads one JSON request from stdin, {"measurement": hex32, "mnonce":
hex16, "api_major": int, "api_minor": int, "build": int, "policy": int}, and answers with a
LAUNCH_SECRET packet {"header": hex52, "data": hex} for the expected launch (`respond`). The
expected digest comes from --image or --kernel (via hv.boot, as `hv owner measure`) or --digest.
From --image or --kernel it covers the initial VMSA when the policy has the ES bit: --policy's,
or without --policy the launch's own (which its measurement proves).

SEV-SNP (`--snp --chain DIR --image IMG|--measurement HEX --secret FILE [--policy P]
[--id-key PEM]`): reads
one JSON request {"report": hex} (the guest's 1184-byte attestation report) and, when the report
verifies against the certificates in DIR (ark.cert, ask.cert and vcek.der from `hv psp export`,
or cert_chain.pem and vcek.pem: see `hv owner verify-report --chain`) and carries the
expected measurement (from --image via hv.boot, or --measurement: 48 bytes), policy and (with
--id-key) the owner's ID key from the ID block checked at SNP_LAUNCH_FINISH, answers
{"owner_pub": hex32, "iv": hex12, "ciphertext": hex, "tag": hex16}: the secret encrypted to the
X25519 key in the report's report_data (`release_secret`, docs/guest-abi.md).

Either way the answer is one JSON object on stdout: the secret (exit 0), {"refuse": reason}
(exit 1: not the expected guest) or {"refuse": "bad request: ..."} (exit 2). Unusable
command-line options or files are one line on stderr and exit 2 before stdin is read.
"""

from __future__ import annotations

import json
import sys

import click

import sevwire
from hv.owner._digest import image_digest, kernel_files_digest, snp_measurement
from hv.owner._errors import OwnerError, OwnerInputError
from hv.owner._id_block import key_digest, read_p384_key
from hv.owner._inputs import DEFAULT_CBITPOS, DEFAULT_MEM, parse_hex, parse_int, parse_size, read_file, read_tk
from hv.owner._release import SNP_MAX_SECRET, release_secret
from hv.owner._respond import respond
from hv.owner._snp_report import read_snp_chain

__all__ = ["main", "parse_snp_request"]


def _answer(payload: dict, code: int) -> None:
    click.echo(json.dumps(payload))
    sys.exit(code)


def parse_snp_request(request: object) -> bytes:
    """The report of an SNP release request {"report": hex}; OwnerInputError otherwise."""
    if not isinstance(request, dict):
        raise OwnerInputError("request must be a JSON object")
    if "report" not in request:
        raise OwnerInputError("request is missing report")
    if not isinstance(request["report"], str):
        raise OwnerInputError("request report must be a hex string")
    return parse_hex(request["report"], sevwire.SNP_REPORT_SIZE, "request report")


@click.command()
@click.option("--snp", is_flag=True, help="Release to an SEV-SNP guest's attestation report instead.")
@click.option("--tk", "tk_path", default=None, type=click.Path(dir_okay=False),
              help="tmp_tk.bin (TEK||TIK); SEV and SEV-ES.")
@click.option("--chain", "chain_dir", default=None, type=click.Path(file_okay=False),
              help="With --snp: the directory holding ark.cert, ask.cert and vcek.der (`hv psp export`), "
                   "or cert_chain.pem and vcek.pem.")
@click.option("--image", default=None, type=click.Path(dir_okay=False), help="The image the guest must run.")
@click.option("--digest", default=None, help="Or (SEV, SEV-ES): the expected launch digest (32 bytes, hex).")
@click.option("--measurement", default=None, help="Or (--snp): the expected measurement (48 bytes, hex).")
@click.option("--kernel", default=None, type=click.Path(dir_okay=False),
              help="Or (SEV, SEV-ES): the Linux bzImage the guest must run (`hv run --kernel`).")
@click.option("--initrd", default=None, type=click.Path(dir_okay=False), help="With --kernel: its initrd.")
@click.option("--append", default=None, help="With --kernel: the command line after hv's own.")
@click.option("--secret", "secret_path", required=True, type=click.Path(dir_okay=False), help="Secret to release.")
@click.option("--mem", default=None,
              help=f"Guest memory size [default: {DEFAULT_MEM >> 20}M for an image, 256M for a kernel].")
@click.option("--cbitpos", default=DEFAULT_CBITPOS, show_default=True, type=int, help="C-bit position.")
@click.option("--policy", default=None, help="Refuse guests launched under any other policy.")
@click.option("--id-key", "id_key", default=None, type=click.Path(dir_okay=False),
              help="(--snp) Refuse guests not launched with an ID block signed by this P-384 key (PEM).")
def main(snp: bool, tk_path: str | None, chain_dir: str | None, image: str | None, digest: str | None,
         measurement: str | None, kernel: str | None, initrd: str | None, append: str | None,
         secret_path: str, mem: str | None, cbitpos: int, policy: str | None, id_key: str | None) -> None:
    """Answer one request on stdin (a launch measurement, or with --snp an attestation report)
    with the secret for the expected guest, or a refusal."""
    try:
        if kernel is None and (initrd is not None or append is not None):
            raise OwnerInputError("--initrd and --append go with --kernel")
        if snp:
            if kernel is not None:
                raise OwnerInputError("--kernel does not work with --snp yet")
            answer_request = _snp_mode(tk_path, chain_dir, image, digest, measurement, secret_path,
                                       mem or DEFAULT_MEM, cbitpos, policy, id_key)
        else:
            if id_key is not None:
                raise OwnerInputError("--id-key checks SEV-SNP reports: add --snp")
            cbit_given = click.get_current_context().get_parameter_source("cbitpos") is not (
                click.core.ParameterSource.DEFAULT)
            kernel_files = None if kernel is None else (kernel, initrd, append, cbitpos if cbit_given else None)
            answer_request = _sev_mode(tk_path, chain_dir, image, digest, measurement, kernel_files,
                                       secret_path, mem, cbitpos, policy)
    except (OwnerError, sevwire.SevWireError) as exc:
        click.echo(f"hv owner exec: {exc}", err=True)
        sys.exit(2)
    try:
        answer = answer_request(json.loads(sys.stdin.read()))
    except (ValueError, OwnerError) as exc:  # json.JSONDecodeError is a ValueError
        _answer({"refuse": f"bad request: {exc}"}, 2)
    _answer(answer, 1 if "refuse" in answer else 0)


def _sev_mode(tk_path, chain_dir, image, digest, measurement, kernel_files, secret_path, mem, cbitpos,
              policy):
    """`kernel_files`: (kernel, initrd, append, an explicit --cbitpos or None), or None."""
    if tk_path is None:
        raise OwnerInputError("--tk is required (or --snp for an SEV-SNP guest)")
    if chain_dir is not None or measurement is not None:
        raise OwnerInputError("--chain and --measurement are for SEV-SNP reports: add --snp")
    if sum(x is not None for x in (image, digest, kernel_files)) != 1:
        raise OwnerInputError("give exactly one of --image, --digest and --kernel")
    expected_policy = None if policy is None else int(sevwire.parse_policy(policy))
    tk = read_tk(tk_path)
    secret = read_file(secret_path, "secret")
    es_digest = None
    if digest is not None:
        expected = parse_hex(digest, 32, "--digest")
    elif kernel_files is not None:
        kernel, initrd, append, cbit = kernel_files
        expected, es_digest = _expected_digests(
            lambda pol: kernel_files_digest(kernel, initrd, append, mem, pol, cbit).digest, expected_policy)
    else:
        data = read_file(image, "image")
        expected, es_digest = _expected_digests(
            lambda pol: image_digest(data, parse_size(mem or DEFAULT_MEM), cbitpos, pol).digest, expected_policy)
    return lambda request: respond(request, tk.tek + tk.tik, expected, secret,
                                   expected_policy=expected_policy, es_digest=es_digest)


def _expected_digests(digest_of, policy: int | None) -> tuple[bytes, bytes | None]:
    """The digest to expect and the one to expect of an SEV-ES launch instead (None: the same).
    With --policy the owner names the launch, ES or not; without, the launch's policy picks
    between its SEV digest and its SEV-ES one (its initial VMSA measured too)."""
    if policy is not None:
        return digest_of(policy), None
    return digest_of(0), digest_of(int(sevwire.Policy.ES))


def _snp_mode(tk_path, chain_dir, image, digest, measurement, secret_path, mem, cbitpos, policy, id_key):
    if tk_path is not None or digest is not None:
        raise OwnerInputError("--tk and --digest are for SEV launches; with --snp give --chain and "
                              "--image or --measurement")
    if chain_dir is None:
        raise OwnerInputError("--snp needs --chain DIR (ark.cert, ask.cert, vcek.der from `hv psp export`)")
    if (image is None) == (measurement is None):
        raise OwnerInputError("give exactly one of --image and --measurement")
    expected_policy = None if policy is None else parse_int(policy, "--policy", 64)
    chain = read_snp_chain(chain_dir)
    secret = read_file(secret_path, "secret")
    if not 1 <= len(secret) <= SNP_MAX_SECRET:
        raise OwnerInputError(f"secret {secret_path}: {len(secret)} bytes; a released secret is "
                              f"1..{SNP_MAX_SECRET} bytes")
    if measurement is not None:
        expected = parse_hex(measurement, 48, "--measurement")
    else:
        expected = snp_measurement(read_file(image, "image"), parse_size(mem), cbitpos)
    id_digest = key_digest(read_p384_key(id_key, "--id-key")) if id_key is not None else None
    return lambda request: release_secret(parse_snp_request(request), chain, expected, secret,
                                          expected_policy=expected_policy, id_key_digest=id_digest)


if __name__ == "__main__":
    main()

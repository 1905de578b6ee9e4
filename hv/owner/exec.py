"""`python -m hv.owner.exec`: the guest owner's side of `hv run --sev --owner-exec CMD`.

Reads one JSON request from stdin: {"measurement": hex32, "mnonce": hex16, "api_major": int,
"api_minor": int, "build": int, "policy": int}, and writes one JSON answer to stdout:
{"header": hex52, "data": hex} (exit 0), {"refuse": reason} (exit 1: the launch is not the
expected one) or {"refuse": "bad request: ..."} (exit 2). Unusable command-line files are one
line on stderr and exit 2 before stdin is read. The expected digest comes from --image (via
hv.boot) or --digest.
"""

from __future__ import annotations

import json
import sys

import click

import sevwire
from hv.owner._digest import image_digest
from hv.owner._errors import OwnerError, OwnerInputError
from hv.owner._inputs import DEFAULT_CBITPOS, DEFAULT_MEM, parse_hex, parse_size, read_file, read_tk
from hv.owner._respond import respond

__all__ = ["main"]


def _answer(payload: dict, code: int) -> None:
    click.echo(json.dumps(payload))
    sys.exit(code)


@click.command()
@click.option("--tk", "tk_path", required=True, type=click.Path(dir_okay=False), help="tmp_tk.bin (TEK||TIK).")
@click.option("--image", default=None, type=click.Path(dir_okay=False), help="The image the guest must run.")
@click.option("--digest", default=None, help="Or: the expected launch digest (hex).")
@click.option("--secret", "secret_path", required=True, type=click.Path(dir_okay=False), help="Secret to release.")
@click.option("--mem", default=str(DEFAULT_MEM >> 20) + "M", show_default=True, help="Guest memory size.")
@click.option("--cbitpos", default=DEFAULT_CBITPOS, show_default=True, type=int, help="C-bit position.")
@click.option("--policy", default=None, help="Refuse launches under any other policy.")
def main(tk_path: str, image: str | None, digest: str | None, secret_path: str, mem: str, cbitpos: int,
         policy: str | None) -> None:
    """Answer one launch-measurement request on stdin with a LAUNCH_SECRET packet or a refusal."""
    try:
        if (image is None) == (digest is None):
            raise OwnerInputError("give exactly one of --image and --digest")
        expected_policy = None if policy is None else int(sevwire.parse_policy(policy))
        tk = read_tk(tk_path)
        secret = read_file(secret_path, "secret")
        if digest is not None:
            expected = parse_hex(digest, 32, "--digest")
        else:
            expected = image_digest(read_file(image, "image"), parse_size(mem), cbitpos,
                                    expected_policy or 0).digest
    except (OwnerError, sevwire.SevWireError) as exc:
        click.echo(f"hv owner exec: {exc}", err=True)
        sys.exit(2)
    try:
        request = json.loads(sys.stdin.read())
        answer = respond(request, tk.tek + tk.tik, expected, secret, expected_policy=expected_policy)
    except (ValueError, OwnerError) as exc:  # json.JSONDecodeError is a ValueError
        _answer({"refuse": f"bad request: {exc}"}, 2)
    _answer(answer, 1 if "refuse" in answer else 0)


if __name__ == "__main__":
    main()

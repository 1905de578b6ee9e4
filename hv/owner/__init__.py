"""The guest owner's offline tools (trusted domain): chain checks, launch session, expected
measurement, LAUNCH_SECRET packets, SEV-SNP report checks, ID blocks and secret release, from
files alone.
Never imports the VMM, the hypervisor, the hardware model or the firmware; the wire formats come
from `sevwire`, the launch layout from the pure `hv.boot`.

The CLI group is `hv.owner.cli.owner`; the VMM's `--owner-exec` protocol is `respond` for SEV and
SEV-ES launches and `release_secret` for SEV-SNP guests (both behind `python -m hv.owner.exec`).
"""

from hv.owner._chain import CHAIN_FILES, ChainReport, Link, verify_chain
from hv.owner._digest import ImageDigest, image_digest
from hv.owner._errors import OwnerCheckFailed, OwnerError, OwnerInputError
from hv.owner._id_block import IdBlockFiles, make_id_block
from hv.owner._local import LocalOwner
from hv.owner._release import RELEASE_ANSWER_FIELDS, SNP_MAX_SECRET, release_key, release_secret
from hv.owner._respond import MAX_SECRET, REQUEST_FIELDS, respond
from hv.owner._snp_report import ReportCheck, SnpChain, read_snp_chain, verify_snp_report_chain

__all__ = [
    "make_id_block",
    "IdBlockFiles",
    "respond",
    "LocalOwner",
    "release_secret",
    "release_key",
    "RELEASE_ANSWER_FIELDS",
    "SNP_MAX_SECRET",
    "verify_snp_report_chain",
    "read_snp_chain",
    "SnpChain",
    "ReportCheck",
    "REQUEST_FIELDS",
    "MAX_SECRET",
    "verify_chain",
    "CHAIN_FILES",
    "ChainReport",
    "Link",
    "image_digest",
    "ImageDigest",
    "OwnerError",
    "OwnerInputError",
    "OwnerCheckFailed",
]

"""The guest owner's offline tools (trusted domain): chain checks, launch session, expected
measurement and LAUNCH_SECRET packets, from files alone. Never imports the VMM, the hypervisor,
the hardware model or the firmware; the wire formats come from `sevwire`, the launch layout from
the pure `hv.boot`.

The CLI group is `hv.owner.cli.owner`; the VMM's `--owner-exec` protocol is `respond` (and
`python -m hv.owner.exec`).
"""

from hv.owner._chain import CHAIN_FILES, ChainReport, Link, verify_chain
from hv.owner._digest import ImageDigest, image_digest
from hv.owner._errors import OwnerCheckFailed, OwnerError, OwnerInputError
from hv.owner._respond import MAX_SECRET, REQUEST_FIELDS, respond

__all__ = [
    "respond",
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

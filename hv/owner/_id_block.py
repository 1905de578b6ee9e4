"""The guest owner's SNP ID block (es-snp-reference 3.6), made offline.

The owner predicts the launch digest of the image (as `measure --snp` does), puts it with the
policy, a family and image ID and the guest SVN into the 0x60-byte ID block, signs the block
with its ID key and, optionally, the ID key with an author key (ECDSA P-384/SHA-384 both). The
hypervisor hands both to SNP_LAUNCH_FINISH (`hv run --sev-snp --id-block DIR`); the PSP launches
the guest only if the block names the digest and policy it measured and the signatures hold, and
every report of that guest then carries the keys' digests and the block's IDs and SVN, which
`verify-report --id-key/--author-key/--family-id/--image-id/--svn` checks.
"""

from __future__ import annotations

import dataclasses
import os

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

import sevwire
from hv.owner._digest import snp_measurement
from hv.owner._errors import OwnerInputError
from hv.owner._inputs import read_file

__all__ = ["IdBlockFiles", "make_id_block", "read_p384_key", "key_digest"]


@dataclasses.dataclass(frozen=True)
class IdBlockFiles:
    """What `hv owner id-block` writes, and the digests the reports will carry."""

    id_block: bytes  # id_block.bin, 0x60 bytes
    id_auth: bytes  # id_auth.bin, 4 KiB
    ld: bytes
    id_key_digest: bytes
    author_key_digest: bytes | None


def read_p384_key(path: str | os.PathLike, what: str, private: bool = False):
    """An ECDSA P-384 key from a PEM (or DER) file: a private key when `private`, else a public
    key or the public part of a private key. OwnerInputError for anything else."""
    raw = read_file(path, what)
    key = None
    for load in (serialization.load_pem_private_key, serialization.load_der_private_key):
        try:
            key = load(raw, password=None)
            break
        except TypeError:
            raise OwnerInputError(f"{what} {path}: the key is encrypted; give an unencrypted "
                                  f"key") from None
        except (ValueError, UnsupportedAlgorithm):
            continue
    if key is None and not private:
        for load in (serialization.load_pem_public_key, serialization.load_der_public_key):
            try:
                key = load(raw)
                break
            except (ValueError, UnsupportedAlgorithm):
                continue
    if key is None:
        raise OwnerInputError(f"{what} {path}: not a PEM or DER {'private key' if private else 'key'}")
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) \
            or key.curve.name != "secp384r1":
        raise OwnerInputError(f"{what} {path}: not an ECDSA P-384 (secp384r1) key")
    return key


def key_digest(key) -> bytes:
    """SHA-384 of the key's 0x404-byte SNP key structure (ID_KEY_DIGEST / AUTHOR_KEY_DIGEST)."""
    return sevwire.snp_id_key_digest(sevwire.snp_id_key(key))


def make_id_block(image: bytes, mem_size: int, cbitpos: int, policy: int,
                  id_key: ec.EllipticCurvePrivateKey,
                  author_key: ec.EllipticCurvePrivateKey | None = None, *,
                  family_id: bytes = bytes(16), image_id: bytes = bytes(16),
                  guest_svn: int = 0) -> IdBlockFiles:
    """The ID block for `image` launched with `policy`, and its signed authentication structure."""
    ld = snp_measurement(image, mem_size, cbitpos)
    block = sevwire.SnpIdBlock(ld, family_id, image_id, sevwire.ID_BLOCK_VERSION, guest_svn,
                               policy).encode()
    auth = sevwire.make_snp_id_auth(block, id_key, author_key)
    return IdBlockFiles(block, auth.encode(), ld, sevwire.snp_id_key_digest(auth.id_key),
                        None if author_key is None else sevwire.snp_id_key_digest(auth.author_key))

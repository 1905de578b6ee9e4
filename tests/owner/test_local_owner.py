"""hv.owner.LocalOwner: the guest owner in the hypervisor's process, reached only through its two
messages (a launch session, the answer to a measurement), its transport keys in no attribute."""

import hashlib
import hmac
import os

import pytest

import sevwire as sw
from hv.owner import LocalOwner

API = (0, 24, 15)
MNONCE = bytes(range(16))
POLICY = 0x1


def _request(tik: bytes, digest: bytes) -> dict:
    """A LAUNCH_MEASURE result as the PSP computes it (sev-reference: HMAC-SHA256 under TIK of
    0x04 || API_MAJOR || API_MINOR || BUILD || POLICY || LD || MNONCE), computed here by hand."""
    msg = bytes([0x04, *API]) + POLICY.to_bytes(4, "little") + digest + MNONCE
    return {"measurement": hmac.new(tik, msg, hashlib.sha256).hexdigest(), "mnonce": MNONCE.hex(),
            "api_major": API[0], "api_minor": API[1], "build": API[2], "policy": POLICY}


def test_the_owner_answers_its_own_image_only(platform):
    """Scenario: the PSP side opens the session the owner made; a measurement of the expected
    image gets the secret (it opens with TEK), any other image a refusal."""
    secret, digest = os.urandom(32), hashlib.sha256(b"the owner's image").digest()
    owner = LocalOwner(secret, digest)
    godh, blob = owner.start(platform["certs"]["pdh"], POLICY)
    keys = sw.open_session(blob, godh, platform["keys"]["pdh"], POLICY)
    answer = owner.answer(_request(keys.tik, digest))
    assert set(answer) == {"header", "data"} and len(bytes.fromhex(answer["data"])) == len(secret)
    assert bytes.fromhex(answer["data"]) != secret               # wrapped under TEK, not in the clear
    refused = owner.answer(_request(keys.tik, hashlib.sha256(b"a permuted image").digest()))
    assert set(refused) == {"refuse"} and "does not match" in refused["refuse"]


def test_the_channel_holds_no_key_in_an_attribute(platform):
    """Scenario: the hypervisor holds the owner object; it has two methods and no state to read."""
    owner = LocalOwner(b"s" * 32, bytes(32))
    assert owner.answer({})["refuse"] == "no launch session was made with this owner"
    owner.start(platform["certs"]["pdh"], POLICY)
    assert not hasattr(owner, "__dict__")
    assert type(owner).__slots__ == ("start", "answer") and callable(owner.start) and callable(owner.answer)
    with pytest.raises(RuntimeError, match="already made its launch session"):
        owner.start(platform["certs"]["pdh"], POLICY)

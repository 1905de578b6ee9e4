"""The guest owner in the hypervisor's process, behind a narrow channel.

`hv run --sev --secret-file` and the attack lab let hv play the guest owner locally. The owner's
transport keys (TEK and TIK, which wrap and authenticate the secret) and the secret itself then
live in the same process as the hypervisor; what keeps them out of the hypervisor's objects is
this channel: the hypervisor may ask it for a launch session (`start`) and send it the launch
measurement (`answer`), exactly the two messages that cross between owner and platform in SEV's
launch, and nothing else. The keys sit in the channel's closures, not in attributes, and the
owner answers only a measurement of the image it expects. A separate process
(`hv run --owner-exec`) is the stronger form of the same boundary.
"""

from __future__ import annotations

from typing import Callable

from sevwire import build_session

from hv.owner._respond import respond

__all__ = ["LocalOwner"]


class LocalOwner:
    """A guest owner that expects the launch digest `expected_digest` and will release `secret`
    to it. One session per owner: a second `start` is refused, as a real owner's session is
    made for one launch."""

    __slots__ = ("start", "answer")

    def __init__(self, secret: bytes, expected_digest: bytes, *,
                 expected_policy: int | None = None):
        transport: list[bytes] = []   # TEK||TIK once a session exists; only these closures see it
        secret, digest = bytes(secret), bytes(expected_digest)

        def start(pdh_cert: bytes, policy: int) -> tuple[bytes, bytes]:
            """(GODH certificate, session blob) for LAUNCH_START on the platform whose PDH
            certificate is `pdh_cert`, under `policy`."""
            if transport:
                raise RuntimeError("this owner already made its launch session")
            session = build_session(pdh_cert, policy)
            transport.append(session.tek + session.tik)
            return session.godh_cert, session.blob

        def answer(request: dict) -> dict:
            """The owner's answer to LAUNCH_MEASURE's result (hv.owner.respond's request):
            {"header", "data"} for LAUNCH_SECRET, or {"refuse": reason}."""
            if not transport:
                return {"refuse": "no launch session was made with this owner"}
            return respond(request, transport[0], digest, secret, expected_policy=expected_policy)

        self.start: Callable[[bytes, int], tuple[bytes, bytes]] = start
        self.answer: Callable[[dict], dict] = answer

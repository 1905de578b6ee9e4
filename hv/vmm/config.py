"""What a VMM run is asked to do (VmmConfig), and the checks that refuse a configuration before
anything is built: an ID block without its authentication structure, options of one SEV mode
given to another, a secret that does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sevwire import ID_AUTH_SIZE, ID_BLOCK_SIZE

from hv import boot
from hv.hw.machine import TweakMode
from hv.kvm import Mode

__all__ = ["LaunchError", "VmmConfig", "check_config", "check_release_secret", "check_secret"]


class LaunchError(Exception):
    """The measured launch did not complete (firmware error or the owner refused)."""


@dataclass
class VmmConfig:
    image: bytes
    mem_size: int = 64 << 20
    vm_type: Mode | str = Mode.PLAIN
    policy: int | None = None
    cbitpos: int | None = None
    tweak: TweakMode = TweakMode.XEX_RANDOM
    tsme: bool = False
    max_insns: int | None = None
    timeout: float | None = None
    secret: bytes | None = None          # SEV-SNP: released after attestation (port 0x502)
    session_dir: str | None = None       # owner's launch_blob.bin + godh.cert (not SEV-SNP)
    owner_exec: str | None = None        # command answering the measurement (SEV-SNP: the report)
    id_block: bytes | None = None        # SEV-SNP: the owner's ID block and ID authentication
    id_auth: bytes | None = None         # structure, checked at SNP_LAUNCH_FINISH
    psp_state: str | None = None
    serial_out: Callable[[bytes], None] | None = None
    image_name: str = "guest"
    # Called with (vmm, exit) at every exit before the VMM handles it: the seam where a
    # malicious hypervisor (the attack lab) or a tracer looks at and changes what it may.
    # Returning True means "handled": the VMM resumes the guest without looking at the exit.
    on_exit: Callable[[Any, object], None] | None = None  # (the Vmm, the exit)


def check_config(config: VmmConfig) -> None:
    """Raise LaunchError for options that do not go together or do not fit."""
    if (config.id_block is None) != (config.id_auth is None):
        raise LaunchError("an ID block and its ID authentication structure go together")
    if config.id_block is not None:
        if config.vm_type != Mode.SEV_SNP:
            raise LaunchError("an ID block is for SEV-SNP launches")
        if len(config.id_block) != ID_BLOCK_SIZE or len(config.id_auth) != ID_AUTH_SIZE:
            raise LaunchError(f"the ID block is {ID_BLOCK_SIZE} bytes and the ID "
                              f"authentication structure {ID_AUTH_SIZE}")
    if config.vm_type == Mode.SEV_SNP:
        if config.session_dir is not None:
            raise LaunchError("--session is for SEV and SEV-ES launches: SEV-SNP has no launch "
                              "session blob (the owner releases the secret after attestation)")
        if config.secret is not None and config.owner_exec:
            raise LaunchError("under SEV-SNP give --secret-file (hv plays the owner) or "
                              "--owner-exec, not both")
        if config.secret is not None:
            check_release_secret(config.secret)


def check_secret(secret: bytes) -> None:
    """A secret written in (plain) or injected with LAUNCH_SECRET (SEV, SEV-ES): one page."""
    if len(secret) > boot.SECRET_MAX:
        raise LaunchError(f"secret is {len(secret)} bytes; the secret page holds {boot.SECRET_MAX}")


def check_release_secret(secret: bytes) -> None:
    """A secret released after attestation (SEV-SNP): what the owner's packet carries."""
    from hv.owner import SNP_MAX_SECRET

    if not 1 <= len(secret) <= SNP_MAX_SECRET:
        raise LaunchError(f"secret is {len(secret)} bytes; an SEV-SNP guest is released "
                          f"1..{SNP_MAX_SECRET} bytes")

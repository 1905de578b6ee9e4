"""The Linux tier: Debian's stock kernel and the project's busybox initramfs from build/linux/
(python tools/linux.py fetch). Without them these tests skip, saying so; .ci/run fetches them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINUX = REPO / "build" / "linux"


@pytest.fixture(scope="session")
def kernel_files() -> tuple[Path, Path]:
    kernel, initrd = LINUX / "vmlinuz", LINUX / "initrd.cpio.gz"
    if not (kernel.is_file() and initrd.is_file()):
        pytest.skip("no Debian kernel in build/linux: run python tools/linux.py fetch")
    return kernel, initrd


@pytest.fixture(scope="session")
def hv_command() -> list[str]:
    return [sys.executable, "-m", "hv"]

"""Fixtures for the PSP firmware tests.

The emulated chip identity (two RSA-4096 keys) is made once per test session; every firmware
instance gets its own owner identity (OCA/PEK/PDH, fast P-384 keys) and its own state file.
"""

from __future__ import annotations

import pytest

from firmware import ChipIdentity, Firmware, new_chip_identity
from fw_support import Mailbox, MemPort


@pytest.fixture(scope="session")
def chip() -> ChipIdentity:
    return new_chip_identity()


@pytest.fixture()
def port() -> MemPort:
    return MemPort()


@pytest.fixture()
def nv_path(tmp_path):
    return tmp_path / "psp-nv.json"


@pytest.fixture()
def fw(port, nv_path, chip) -> Firmware:
    return Firmware(port, nv_path, chip=chip)


@pytest.fixture()
def mb(fw, port) -> Mailbox:
    return Mailbox(fw, port)

"""The security tier: every attack against every mode, from real runs against real guests.

The PSP's chip identity (RSA-4096 keys) is made once and kept in a state file: one per test
session, in a temporary directory, so no test touches the user's own."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def psp_state(tmp_path_factory):
    path = tmp_path_factory.mktemp("psp") / "psp-state.json"
    old = os.environ.get("HV_PSP_STATE")
    os.environ["HV_PSP_STATE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HV_PSP_STATE", None)
    else:
        os.environ["HV_PSP_STATE"] = old

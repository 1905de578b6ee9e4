"""Shared fixtures. The PSP's platform identity (two RSA-4096 keys) is made once per test session
in a state file, as the PSP's non-volatile storage would keep it across boots."""

import pytest


@pytest.fixture(scope="session")
def psp_state(tmp_path_factory):
    from hv.hw.machine import Machine, MachineConfig

    path = tmp_path_factory.mktemp("psp") / "psp-state.json"
    Machine(MachineConfig(dram_size=4 << 20, psp_state=str(path))).psp_firmware  # noqa: B018
    return str(path)


# Tiers of their own, left out of the default run (which must fit CI's 10 minutes on 2 cores)
# and run by .ci/run after it: marker -> (option, what it runs).
_OWN_TIERS = {
    "linux": ("--linux", "boot the Debian kernel (python tools/linux.py fetch first)"),
    "fuzz": ("--fuzz", "run the PSP mailbox fuzzer's 10,000 cases per command"),
}


def pytest_addoption(parser):
    for option, what in _OWN_TIERS.values():
        parser.addoption(option, action="store_true", help=f"Also {what} (.ci/run does).")


def pytest_collection_modifyitems(config, items):
    """Tests marked with a tier of its own run only with that tier's option."""
    left_out = {marker for marker, (option, _what) in _OWN_TIERS.items()
                if not config.getoption(option)}
    kept = [item for item in items
            if not any(item.get_closest_marker(m) is not None for m in left_out)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        items[:] = kept


# The run ends with os._exit once pytest has reported: the interpreter's own teardown frees the
# remaining Unicorn instances and the host buffers they map in an arbitrary order, which has been
# seen to crash the process after a fully passed run (status 139 instead of 0). Tests never depend
# on that teardown; the status pytest computed is the one the process exits with.
_exit_status = {}


def pytest_sessionfinish(session, exitstatus):
    _exit_status["status"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import os
    import sys

    if "status" in _exit_status and not hasattr(config, "workerinput"):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_exit_status["status"])
